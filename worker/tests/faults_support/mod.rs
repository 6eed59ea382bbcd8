//! Plumbing of the fault tests: private Redis and Kafka servers on free loopback ports (the
//! shared stack is never stopped), and the report rows (the oracle's verdict: produced,
//! found, lost, duplicated) that `e2e/faults.sh` prints as one table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::oracle::Verdict;
use crate::receiver_support::{Receiver, unique};

/// Records per fault run: `FERRY_FAULT_RECORDS`, small by default so `make test` stays short.
pub fn records(default: usize) -> usize {
    std::env::var("FERRY_FAULT_RECORDS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Keys and history depth for `records`: depth ≥ records per key, so a lost or duplicated
/// record always shows in the lists.
pub fn keys_and_depth(records: usize) -> (usize, u32) {
    let keys = (records / 500).clamp(20, 1000);
    (keys, u32::try_from(records.div_ceil(keys)).unwrap())
}

pub use ferry_test_support::free_port;

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set (VmHWM) of a live process, in KiB.
pub fn hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:").unwrap_or(0)
}

/// Current resident set (VmRSS) of a live process, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:").unwrap_or(0)
}

// ---------------------------------------------------------------- private Redis

/// A redis-server of this test only, on a free loopback port, killed and removed on drop.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    pub url: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// `extra` e.g. `["--appendonly", "yes", "--appendfsync", "always"]`.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("ferry-fault-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut redis = Self {
            url: format!("redis://127.0.0.1:{port}/0"),
            port,
            dir,
            args,
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts the server again on the same port and dir (after `stop` or `sigkill`).
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(&self.args)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log)
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut conn) = redis::Client::open(self.url.as_str())
                .unwrap()
                .get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis did not start: {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `SHUTDOWN SAVE`: the data goes to disk and comes back on `restart`.
    pub fn stop(&mut self) {
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query::<()>(&mut self.connection());
        if let Some(mut child) = self.child.take() {
            child.wait().unwrap();
        }
        assert!(
            redis::Client::open(self.url.as_str())
                .unwrap()
                .get_connection()
                .is_err(),
            "redis is down"
        );
    }

    /// SIGSTOP or SIGCONT (`-STOP`, `-CONT`): a frozen server keeps its connections open.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal} failed");
        }
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.sigkill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------- private Kafka

/// The cached Kafka jars `e2e/local/kafka.sh` installed.
fn kafka_libs() -> PathBuf {
    let cache = std::env::var("FERRY_CACHE").map_or_else(
        |_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/ferry"),
        PathBuf::from,
    );
    let version = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "4.3.1".to_owned());
    let libs = cache.join(format!("kafka-{version}/libs"));
    assert!(
        libs.is_dir(),
        "{} is missing: `bash e2e/local/stack.sh up kafka` installs the jars",
        libs.display()
    );
    libs
}

/// A single KRaft broker+controller of this test only, on free loopback ports, with its own
/// log dir in a temp folder; killed and removed on drop.
pub struct PrivateKafka {
    pub bootstrap: String,
    pub dir: PathBuf,
    props: PathBuf,
    log4j: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl PrivateKafka {
    pub fn start() -> Self {
        let port = free_port();
        let controller = free_port();
        let dir = std::env::temp_dir().join(unique("ferry-fault-kafka"));
        std::fs::create_dir_all(&dir).unwrap();
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={data}\nnum.partitions=6\ndefault.replication.factor=1\n\
                 min.insync.replicas=1\noffsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=3\ntransaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\ntransaction.state.log.num.partitions=3\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n\
                 num.network.threads=2\nnum.io.threads=2\n",
                data = dir.join("data").display()
            ),
        )
        .unwrap();
        let log4j = dir.join("log4j2.properties");
        std::fs::write(
            &log4j,
            "status = warn\nappender.out.type = Console\nappender.out.name = OUT\n\
             appender.out.layout.type = PatternLayout\n\
             appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = warn\nrootLogger.appenderRef.out.ref = OUT\n",
        )
        .unwrap();
        let libs = kafka_libs();
        let format = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                "MkU3OEVBNTcwNTJENDM2Qk",
                "--config",
            ])
            .arg(&props)
            .output()
            .expect("java on PATH");
        assert!(
            format.status.success(),
            "kafka-storage format failed: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut kafka = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            props,
            log4j,
            child: None,
            starts: 0,
        };
        kafka.restart();
        kafka
    }

    /// Starts the broker on the same ports and log dir; waits for its port.
    pub fn restart(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("kafka-{}.log", self.starts))).unwrap();
        let child = Command::new("java")
            .args([
                "-Xms128m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log4j.display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()))
            .arg("kafka.Kafka")
            .arg(&self.props)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(&self.bootstrap).is_err() {
            assert!(
                Instant::now() < deadline,
                "private kafka did not open {}: {}",
                self.bootstrap,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (a clean broker shutdown), then waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(
            std::net::TcpStream::connect(&self.bootstrap).is_err(),
            "kafka is down"
        );
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------- the report

/// Appends one row to the report `e2e/faults.sh` prints (`FERRY_FAULT_REPORT`, default
/// `target/fault-report.tsv`) and prints it.
/// "duplicated" counts extra copies and entries no record explains; "keys wrong" includes
/// keys out of order.
pub fn report(fault: &str, verdict: &Verdict, peak_rss_kb: u64, note: &str) {
    let row = format!(
        "{fault}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{note}",
        verdict.records,
        verdict.records.saturating_sub(verdict.total.lost),
        verdict.total.lost,
        verdict.total.duplicated + verdict.total.unexpected,
        verdict.wrong.len(),
        peak_rss_kb as f64 / 1024.0
    );
    ferry_test_support::report_fault_row(&row);
}

/// Sum of the checkpoints against the last offsets: records still to apply.
pub fn lag(receiver: &Receiver, last_offsets: &std::collections::BTreeMap<i32, i64>) -> i64 {
    let partitions: Vec<i32> = last_offsets.keys().copied().collect();
    receiver
        .checkpoints(&partitions)
        .iter()
        .zip(&partitions)
        .map(|(c, p)| last_offsets[p] - c.unwrap_or(-1))
        .sum()
}

/// The high watermark of each partition: where producing has got to.
pub fn end_offsets(kafka: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .unwrap();
    // A failed read is retried, never read as 0: a backlog of 0 would pass for a receiver
    // that kept up.
    (0..partitions)
        .map(|p| {
            let mut attempts = 0;
            loop {
                match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(error) if attempts < 3 => {
                        attempts += 1;
                        eprintln!("watermarks of {topic}/{p}: {error}; retrying");
                    }
                    Err(error) => panic!("watermarks of {topic}/{p}: {error}"),
                }
            }
        })
        .collect()
}

/// Records in Kafka the receiver has not applied yet (from its checkpoints in Redis).
pub fn backlog(receiver: &Receiver, kafka: &str, partitions: i32) -> i64 {
    let ends = end_offsets(kafka, &receiver.topic, partitions);
    let ids: Vec<i32> = (0..partitions).collect();
    let checkpoints = receiver.checkpoints(&ids);
    ends.iter()
        .zip(&checkpoints)
        .map(|(end, c)| (end - 1 - c.unwrap_or(-1)).max(0))
        .sum()
}

/// `FERRY_FAULT_OUTAGE_SECS`, 30 by default: how long Redis or Kafka stays down.
pub fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("FERRY_FAULT_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    )
}
