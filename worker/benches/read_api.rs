//! The read API's benchmark (not a timed test; `make bench-api` runs it through
//! bench/api.sh, which starts `ferry-worker serve` and passes its address).
//!
//! One source's 100-value history, at 1, 50 and 500 concurrent clients: requests/s and
//! p50/p99 through the API (`GET /v1/sources/{id}/history?limit=100`, each client on its
//! own keep-alive HTTP/1.1 connection), beside a direct redis-rs `LRANGE key 0 99` of the
//! same keys at the same concurrency (one multiplexed connection, as the API itself reads),
//! in the same run. Then the event delay: from a batch-shaped `MULTI … PUBLISH … EXEC` sent
//! to the SSE client's receipt of it.
//!
//! Environment: `FERRY_BENCH_API` (host:port of serve), `REDIS_URL`, `FERRY_BENCH_PREFIX`
//! (the key prefix serve reads), `FERRY_BENCH_SOURCES` (how many sources hold data),
//! `FERRY_BENCH_SECONDS` (per level, default 5), `FERRY_BENCH_LEVELS` (the client counts,
//! default `1,50,500`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One keep-alive HTTP/1.1 connection: GET, read the status line, headers and
/// `Content-Length` body.
struct HttpClient {
    stream: BufReader<TcpStream>,
    host: String,
    body: Vec<u8>,
}

impl HttpClient {
    async fn connect(address: &str) -> Self {
        let stream = TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            host: address.to_owned(),
            body: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) -> usize {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        let mut length = 0usize;
        let mut status_seen = false;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if !status_seen {
                assert!(line.contains(" 200 "), "{path}: {line}");
                status_seen = true;
            } else if line == "\r\n" {
                break;
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await.unwrap();
        length
    }
}

#[derive(Debug)]
struct Level {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Level {
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[index].as_secs_f64() * 1e6
    };
    Level {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

/// `clients` tasks made by `make`, each returning its latencies.
async fn run_level<F, Fut>(clients: usize, make: F) -> Level
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| tokio::spawn(make(client)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    summarize(latencies, started.elapsed())
}

/// `sources` lists of 100 dsdata records each, as a receiver with `list` storage and
/// history 100 leaves them.
async fn preload(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, sources: usize) {
    for source in 0..sources {
        let key = format!("{prefix}:list:src-{source:04}");
        let values: Vec<Vec<u8>> = (0..100)
            .map(|i| {
                ferry_worker::record::dsdata::encode(&ferry_worker::record::DataRecord {
                    timestamp_ms: 1_700_000_000_000 + i,
                    values: vec![i as f64, 0.5, -1.25, 3.0],
                    text: format!("src-{source:04}#{i}"),
                })
                .unwrap()
            })
            .collect();
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("LPUSH")
            .arg(&key)
            .arg(values)
            .ignore()
            .query_async(redis)
            .await
            .unwrap();
    }
}

async fn cleanup(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, sources: usize) {
    for source in 0..sources {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{prefix}:list:src-{source:04}"))
            .query_async(redis)
            .await
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let api = env("FERRY_BENCH_API", "127.0.0.1:8090");
    let redis_url = env("REDIS_URL", "redis://127.0.0.1:16379");
    let prefix = env("FERRY_BENCH_PREFIX", "bench");
    let sources: usize = env("FERRY_BENCH_SOURCES", "1000").parse().unwrap();
    let seconds: f64 = env("FERRY_BENCH_SECONDS", "5").parse().unwrap();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    preload(&mut redis.clone(), &prefix, sources).await;

    // Check once that both paths read the same 100 values.
    let mut probe = HttpClient::connect(&api).await;
    probe.get("/v1/sources/src-0000/history?limit=100").await;
    let body: serde_json::Value = serde_json::from_slice(&probe.body).unwrap();
    assert_eq!(body["records"].as_array().unwrap().len(), 100, "{body}");

    println!(
        "{:>8}  {:>12} {:>9} {:>9}  {:>12} {:>9} {:>9}  {:>7} {:>13}",
        "clients",
        "api req/s",
        "api p50",
        "api p99",
        "LRANGE /s",
        "p50",
        "p99",
        "ratio",
        "p99 delta"
    );
    let levels: Vec<usize> = env("FERRY_BENCH_LEVELS", "1,50,500")
        .split(',')
        .map(|level| level.trim().parse().unwrap())
        .collect();
    for clients in levels {
        let deadline = Duration::from_secs_f64(seconds);
        let api_level = run_level(clients, |client| {
            let api = api.clone();
            async move {
                let mut http = HttpClient::connect(&api).await;
                let mut latencies = Vec::new();
                let started = Instant::now();
                let mut i = client;
                while started.elapsed() < deadline {
                    let path = format!("/v1/sources/src-{:04}/history?limit=100", i % sources);
                    let at = Instant::now();
                    http.get(&path).await;
                    latencies.push(at.elapsed());
                    i += clients;
                }
                latencies
            }
        })
        .await;
        let direct = run_level(clients, |client| {
            let mut redis = redis.clone();
            let prefix = prefix.clone();
            async move {
                let mut latencies = Vec::new();
                let started = Instant::now();
                let mut i = client;
                while started.elapsed() < deadline {
                    let key = format!("{prefix}:list:src-{:04}", i % sources);
                    let at = Instant::now();
                    let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(99)
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                    assert_eq!(values.len(), 100);
                    latencies.push(at.elapsed());
                    i += clients;
                }
                latencies
            }
        })
        .await;
        println!(
            "{clients:>8}  {:>12.0} {:>7.0}us {:>7.0}us  {:>12.0} {:>7.0}us {:>7.0}us  {:>6.2}x {:>+11.0}us",
            api_level.per_second,
            api_level.p50_us,
            api_level.p99_us,
            direct.per_second,
            direct.p50_us,
            direct.p99_us,
            api_level.per_second / direct.per_second,
            api_level.p99_us - direct.p99_us,
        );
    }

    // The event delay: a batch-shaped transaction publishes, the SSE client receives.
    let channel = format!("{prefix}:events");
    let mut sse = BufReader::new(TcpStream::connect(&api).await.unwrap());
    sse.get_mut()
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        sse.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut publisher = redis.clone();
    let mut delays = Vec::new();
    for n in 0..300u32 {
        let event = format!(
            r#"{{"keys":1,"sources":["src-{n:04}"],"more_sources":0,"records":1,"dead_lettered":0,"offsets":{{"0":{n}}}}}"#
        );
        let sent = Instant::now();
        let _: Vec<redis::Value> = redis::pipe()
            .atomic()
            .cmd("PUBLISH")
            .arg(&channel)
            .arg(&event)
            .query_async(&mut publisher)
            .await
            .unwrap();
        let wanted = format!("\"0\":{n}}}");
        loop {
            line.clear();
            let read = tokio::time::timeout(Duration::from_secs(5), sse.read_line(&mut line))
                .await
                .expect("an event within 5 s")
                .unwrap();
            assert!(read > 0, "the event stream ended");
            if line.starts_with("data: ") && line.contains(&wanted) {
                break;
            }
        }
        delays.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let summary = summarize(delays, Duration::from_secs(1));
    cleanup(&mut redis.clone(), &prefix, sources).await;
    println!(
        "event delay (EXEC with PUBLISH sent -> SSE data received), 300 events: p50 {:.0}us p99 {:.0}us",
        summary.p50_us, summary.p99_us
    );
}
