//! Harness of the read API tests: `ferry-api` child processes, JSON requests,
//! a server-sent-events reader, and what a source's history must be, derived from the
//! topic as Kafka holds it ([`crate::oracle::read_source`]), not from Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ferry_worker::config::{RecordFormat, StorageKind};

use crate::oracle::SourceRecord;

/// A running `ferry-api`; killed when dropped.
pub struct Serve {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `ferry-api` on `config` (a receiver's) with `extra` arguments (`--stats NAME`, …),
    /// and waits until it answers `/healthz`.
    pub fn start(config: &Path, extra: &[&str]) -> Self {
        let port = ferry_test_support::free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = config.with_file_name(format!("serve-{port}.log"));
        let mut args = vec![std::ffi::OsStr::new("--config")];
        args.push(config.as_os_str());
        args.extend(["--listen", listen.as_str()].map(std::ffi::OsStr::new));
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let child = crate::oracle::spawn(&crate::oracle::api_bin(), &args, &[], &log);
        let serve = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while crate::oracle::http_get(port, "/healthz").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "ferry-api did not answer; log {}",
                serve.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// `GET path`: status and JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = crate::oracle::http_get(self.port, path)
            .unwrap_or_else(|| panic!("no answer to {path}; log {}", self.log.display()));
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{path}: not JSON ({err}): {body}"));
        (status, json)
    }

    /// `GET path`, which must answer 200.
    pub fn ok(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Serve {
    /// SIGTERM, then the exit status within `timeout` (failing past it).
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ferry-api did not exit on SIGTERM within {timeout:?}; log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child process by id when dropped, so a failing test leaves no worker behind
/// (one would keep the test's inherited file descriptors, the build lock among them).
pub struct Reap(pub u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // Only a ferry-worker still running: a reaped child's id may belong to another.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("ferry-worker") {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An open `/v1/events` stream: the response headers came, so the API is subscribed.
pub struct EventStream {
    reader: BufReader<std::net::TcpStream>,
}

impl EventStream {
    pub fn open(port: u16) -> Self {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        write!(
            stream,
            "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => panic!("events stream closed before its headers"),
                Ok(_) if status.is_empty() => status = line,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
                Err(_) => assert!(Instant::now() < deadline, "no events headers"),
            }
        }
        assert!(status.contains(" 200 "), "events: {status}");
        Self { reader }
    }

    /// The next `data:` of an `event: batch` within `timeout` (chunk-size lines of the
    /// chunked encoding are skipped: they never start with `data:`).
    pub fn next_batch(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    if let Some(data) = line.trim_end().strip_prefix("data: ") {
                        return serde_json::from_str(data).ok();
                    }
                }
                Err(_) => {}
            }
        }
        None
    }
}

/// One record as the API returns it, for comparison: (ts, values, text).
pub type Expected = (Option<i64>, Vec<f64>, String);

/// The API's records as [`Expected`].
pub fn api_records(records: &serde_json::Value) -> Vec<Expected> {
    records
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {records}"))
        .iter()
        .map(|r| {
            (
                r["ts"].as_i64(),
                r["values"]
                    .as_array()
                    .map(|v| v.iter().map(|x| x.as_f64().unwrap()).collect())
                    .unwrap_or_default(),
                r["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// What each source's history must be, newest first, from the topic: a list's and a
/// stream's newest `depth` records by offset (each key lives on one partition), a hash's
/// last record, a zset's `depth` highest timestamps.
pub fn expected_histories(
    source: &[SourceRecord],
    format: RecordFormat,
    kind: StorageKind,
    depth: usize,
) -> BTreeMap<String, Vec<Expected>> {
    let mut per_key: HashMap<String, Vec<Expected>> = HashMap::new();
    for record in source {
        if let Some((key, decoded)) = record.decode(format) {
            per_key.entry(key.to_owned()).or_default().push((
                Some(decoded.timestamp_ms),
                decoded.values,
                decoded.text,
            ));
        }
    }
    per_key
        .into_iter()
        .map(|(key, mut records)| {
            let history = match kind {
                StorageKind::List | StorageKind::Stream => {
                    records.reverse();
                    records.truncate(depth);
                    records
                }
                StorageKind::Hash => records.pop().into_iter().collect(),
                StorageKind::Zset => {
                    records.sort_by_key(|(ts, _, _)| std::cmp::Reverse(*ts));
                    records.truncate(depth);
                    records
                }
            };
            (key, history)
        })
        .collect()
}
