//! Shared bits of the benchmark tools: argument parsing, a minimal RESP client (the
//! Redis tools need nothing more than pipelined commands and pub/sub, and no client
//! library's own overhead should show up in a "limit" measurement) and the dsdata
//! timestamp.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

/// `--name value` pairs; every flag takes a value.
#[derive(Debug)]
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse(usage: &str) -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                die(&format!("unexpected argument {flag:?}\n{usage}"));
            };
            let Some(value) = it.next() else {
                die(&format!("--{name} needs a value\n{usage}"));
            };
            map.insert(name.to_owned(), value);
        }
        Self(map)
    }

    pub fn str(&self, name: &str, default: Option<&str>) -> String {
        match (self.0.get(name), default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.to_owned(),
            (None, None) => die(&format!("--{name} is required")),
        }
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: Option<&str>) -> T {
        let text = self.str(name, default);
        text.parse()
            .unwrap_or_else(|_| die(&format!("--{name}: not a number: {text:?}")))
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub fn die(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

pub fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The record timestamp of a dsdata value (`FD`, version 1; i64 LE ms at bytes 4..12).
pub fn dsdata_timestamp_ms(value: &[u8]) -> Option<i64> {
    if value.len() < 12 || &value[..3] != b"FD\x01" {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&value[4..12]);
    Some(i64::from_le_bytes(ts))
}

/// A dsdata value with `floats` floats and `text_bytes` of text, valid for Ferry's decoder.
pub fn dsdata_encode(timestamp_ms: i64, floats: &[f64], text: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"FD\x01\x00");
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(floats.len() as u16).to_le_bytes());
    for f in floats {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Percentile (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// One Redis connection speaking RESP2, with explicit write and read so callers pipeline.
#[derive(Debug)]
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub out: Vec<u8>,
}

impl Resp {
    pub fn connect(addr: &str, db: u32) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut conn = Self {
            reader: BufReader::with_capacity(1 << 20, stream),
            writer,
            out: Vec::with_capacity(1 << 20),
        };
        if db != 0 {
            let db = db.to_string();
            conn.call(&[b"SELECT", db.as_bytes()])?;
        }
        Ok(conn)
    }

    /// Appends one command to the output buffer.
    pub fn push(&mut self, parts: &[&[u8]]) {
        encode(&mut self.out, parts);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    pub fn read(&mut self) -> io::Result<Value> {
        read_value(&mut self.reader)
    }

    /// Bytes already received and not yet read: a reply is waiting if this is not 0.
    pub fn buffered(&self) -> usize {
        self.reader.buffer().len()
    }

    /// Sends one command and reads its reply; a server error becomes an `Err`.
    pub fn call(&mut self, parts: &[&[u8]]) -> io::Result<Value> {
        self.push(parts);
        self.flush()?;
        match self.read()? {
            Value::Error(e) => Err(io::Error::other(e)),
            v => Ok(v),
        }
    }
}

pub fn encode(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(parts.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(32);
    reader.read_until(b'\n', &mut line)?;
    if line.len() < 2 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(bytes: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad integer in reply"))
}

pub fn read_value(reader: &mut impl BufRead) -> io::Result<Value> {
    let line = read_line(reader)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| io::Error::other("empty reply line"))?;
    Ok(match kind {
        b'+' => Value::Simple(String::from_utf8_lossy(rest).into_owned()),
        b'-' => Value::Error(String::from_utf8_lossy(rest).into_owned()),
        b':' => Value::Int(parse_int(rest)?),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                Value::Bulk(None)
            } else {
                let mut buf = vec![0u8; len as usize + 2];
                io::Read::read_exact(reader, &mut buf)?;
                buf.truncate(len as usize);
                Value::Bulk(Some(buf))
            }
        }
        b'*' => {
            let len = parse_int(rest)?;
            if len < 0 {
                Value::Array(None)
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_value(reader)?);
                }
                Value::Array(Some(items))
            }
        }
        other => {
            return Err(io::Error::other(format!(
                "unknown reply type {:?}",
                *other as char
            )));
        }
    })
}

impl Resp {
    pub fn set_read_timeout(&mut self, timeout: Option<std::time::Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(timeout);
    }
}
