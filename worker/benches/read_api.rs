//! The read API's benchmark (not a timed test; `make bench-api` runs it through
//! bench/api.sh, which starts `ferry-api` and passes its address).
//!
//! One source's 100-value history, at 1, 50 and 500 concurrent clients: requests/s and
//! p50/p99 through the API (`GET /v1/sources/{id}/history?limit=100`, each client on its
//! own keep-alive HTTP/1.1 connection), beside a direct redis-rs `LRANGE key 0 99` of the
//! same keys at the same concurrency (one multiplexed connection, as the API itself reads),
//! in the same run, each as fast as its clients go (closed loop: the throughput ratio).
//! Then both again at one offered rate, the same for both, `FERRY_BENCH_LOAD` (default 0.5)
//! of the API's closed-loop rate at that client count, each client sending on its own
//! schedule (open loop): their p50/p99 at the same load. A closed loop's p99 at saturation
//! is its queue, about clients ÷ throughput, so it restates the throughput ratio; the
//! open-loop run compares what a request costs when both serve the same traffic.
//! Each level is run in `FERRY_BENCH_ROUNDS` slices (default 5), every path once a slice in
//! an order that turns each slice, and pooled: on a noisy machine a drift in load then
//! lands on all paths alike. Beside each ratio, the lowest and highest slice's.
//! Then the event delay: from a batch-shaped `MULTI … PUBLISH … EXEC` sent to the SSE
//! client's receipt of it.
//!
//! With `FERRY_BENCH_FLOOR` (host:port) each level also runs against the floor: this same
//! binary started with `FERRY_BENCH_FLOOR_SERVE=host:port`, an HTTP/1.1 server with no
//! framework that answers each history request with one `LRANGE` on a multiplexed
//! connection and the values as they are, no decoding, no JSON. It is what any HTTP API in
//! front of Redis pays on this machine (the second round trip and a server process), so
//! floor ÷ direct bounds the API's ratio and API ÷ floor is what Ferry's own code costs.
//!
//! Environment: `FERRY_BENCH_API` (host:port of serve), `REDIS_URL`, `FERRY_BENCH_PREFIX`
//! (the key prefix serve reads), `FERRY_BENCH_SOURCES` (how many sources hold data),
//! `FERRY_BENCH_SECONDS` (per path and level, default 5), `FERRY_BENCH_ROUNDS`,
//! `FERRY_BENCH_LEVELS` (the client counts, default `1,50,500`), `FERRY_BENCH_LOAD` (the
//! open-loop rate as a fraction of the API's closed-loop rate, default 0.5),
//! `FERRY_BENCH_FLOOR`.
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

/// One path's requests in one slice of a level: each one's latency, and the slice's time.
#[derive(Debug, Default)]
struct Sample {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Sample {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// A path's slices of a level, pooled: throughput over their total time, percentiles over
/// all their requests.
fn pooled(samples: &[Sample]) -> Level {
    summarize(
        samples
            .iter()
            .flat_map(|sample| sample.latencies.iter().copied())
            .collect(),
        samples.iter().map(|sample| sample.elapsed).sum(),
    )
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

/// Time for an open-loop level's clients to connect before the first turn, so that no
/// request waits behind 500 connection setups.
const OPEN_LOOP_SETTLE: Duration = Duration::from_millis(500);

/// When a client sends: as soon as its last answer is in (closed loop), or every `interval`
/// from `first` (open loop; a client whose answer comes late sends its next at once).
#[derive(Clone, Copy)]
enum Pace {
    Closed,
    Open { first: Instant, interval: Duration },
}

impl Pace {
    /// `rate` requests/s in all, spread over `clients`, phases staggered.
    fn open(rate: f64, clients: usize, client: usize, start: Instant) -> Self {
        let interval = Duration::from_secs_f64(clients as f64 / rate);
        let first = start + interval.mul_f64(client as f64 / clients as f64);
        Self::Open { first, interval }
    }

    /// Whether the `n`th request is due within the level's `deadline`.
    fn more(self, n: u32, started: Instant, deadline: Duration) -> bool {
        match self {
            Self::Closed => started.elapsed() < deadline,
            Self::Open { interval, .. } => interval * n < deadline,
        }
    }

    /// Waits for the `n`th request's turn. The latency is timed from the actual send, so
    /// the timer's millisecond grain lands on neither path.
    async fn wait(self, n: u32) {
        if let Self::Open { first, interval } = self {
            tokio::time::sleep_until((first + interval * n).into()).await;
        }
    }
}

/// One client's way of reading source `i` (mod the sources).
trait Reader: Send {
    fn read(&mut self, i: usize) -> impl std::future::Future<Output = ()> + Send;
}

/// Through the API, on its own keep-alive connection.
struct ApiReader {
    http: HttpClient,
    sources: usize,
}

impl Reader for ApiReader {
    async fn read(&mut self, i: usize) {
        let path = format!("/v1/sources/src-{:04}/history?limit=100", i % self.sources);
        self.http.get(&path).await;
    }
}

/// Straight from Redis, on the shared multiplexed connection.
struct DirectReader {
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    sources: usize,
}

impl Reader for DirectReader {
    async fn read(&mut self, i: usize) {
        let key = format!("{}:list:src-{:04}", self.prefix, i % self.sources);
        let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(99)
            .query_async(&mut self.redis)
            .await
            .unwrap();
        assert_eq!(values.len(), 100);
    }
}

/// The floor server: for each `GET /v1/sources/{id}/history…` on a keep-alive connection,
/// one `LRANGE key 0 99` and the values back to back as the body. Nothing else is parsed:
/// the benchmark's own client is the only caller.
async fn floor_serve(address: &str, redis: redis::aio::MultiplexedConnection, prefix: String) {
    // ferry-api's accept queue, so that 500 clients connecting at once queue alike.
    let listener = ferry_worker::api::listen(address.parse().unwrap()).unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut redis = redis.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            let mut answer = Vec::new();
            loop {
                line.clear();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let id = line
                    .split_once("/v1/sources/")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map(|(id, _)| id.to_owned())
                    .unwrap_or_default();
                // The headers, up to the blank line.
                while line != "\r\n" {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(format!("{prefix}:list:{id}"))
                    .arg(0)
                    .arg(99)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                let length: usize = values.iter().map(Vec::len).sum();
                answer.clear();
                answer.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n").as_bytes(),
                );
                for value in &values {
                    answer.extend_from_slice(value);
                }
                if stream.get_mut().write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One client's requests, paced by `pace` until `deadline`. Returns each one's latency.
async fn client_loop(
    pace: Pace,
    client: usize,
    clients: usize,
    deadline: Duration,
    mut reader: impl Reader,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut i = client;
    let mut n = 0;
    while pace.more(n, started, deadline) {
        pace.wait(n).await;
        let at = Instant::now();
        reader.read(i).await;
        latencies.push(at.elapsed());
        i += clients;
        n += 1;
    }
    latencies
}

/// The pace of `client` of `clients`: closed loop, or its share of an open loop's rate.
fn pace_of(load: Option<(f64, Instant)>, clients: usize, client: usize) -> Pace {
    load.map_or(Pace::Closed, |(rate, start)| {
        Pace::open(rate, clients, client, start)
    })
}

/// A level of `clients`, each reading with what `connect` makes (connected inside the
/// client's task), closed loop or at `load`'s rate from its start. The rate is over the
/// time from that start (the open loop's first turn) or from the level's.
async fn level<R, F, Fut>(
    clients: usize,
    deadline: Duration,
    load: Option<(f64, Instant)>,
    connect: F,
) -> Sample
where
    R: Reader + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let started = load.map_or_else(Instant::now, |(_, start)| start);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let pace = pace_of(load, clients, client);
            let reader = connect();
            tokio::spawn(
                async move { client_loop(pace, client, clients, deadline, reader.await).await },
            )
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Sample {
        latencies,
        elapsed: started.elapsed(),
    }
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
    if let Ok(address) = std::env::var("FERRY_BENCH_FLOOR_SERVE") {
        floor_serve(&address, redis, prefix).await;
        return;
    }
    let floor = std::env::var("FERRY_BENCH_FLOOR")
        .ok()
        .filter(|address| !address.is_empty());
    preload(&mut redis.clone(), &prefix, sources).await;

    // Check once that both paths read the same 100 values.
    let mut probe = HttpClient::connect(&api).await;
    probe.get("/v1/sources/src-0000/history?limit=100").await;
    let body: serde_json::Value = serde_json::from_slice(&probe.body).unwrap();
    assert_eq!(body["records"].as_array().unwrap().len(), 100, "{body}");

    let levels: Vec<usize> = env("FERRY_BENCH_LEVELS", "1,50,500")
        .split(',')
        .map(|level| level.trim().parse().unwrap())
        .collect();
    let load: f64 = env("FERRY_BENCH_LOAD", "0.5").parse().unwrap();
    let deadline = Duration::from_secs_f64(seconds);
    let rounds: u32 = env("FERRY_BENCH_ROUNDS", "5").parse().unwrap();
    let header = || {
        println!(
            "{:>8}  {:>12} {:>9} {:>9}  {:>12} {:>9} {:>9}  {:>7} {:>11} {:>13}{}",
            "clients",
            "api req/s",
            "api p50",
            "api p99",
            "LRANGE /s",
            "p50",
            "p99",
            "ratio",
            "by slice",
            "p99 delta",
            if floor.is_some() {
                format!(
                    "  {:>12} {:>9} {:>9}  {:>12} {:>10}",
                    "floor req/s", "p50", "p99", "floor/direct", "api/floor"
                )
            } else {
                String::new()
            }
        );
    };
    // The ratio is of the pooled slices; beside it, the lowest and highest slice's ratio.
    let row = |clients: usize, samples: &[Vec<Sample>; 3]| {
        let [api, direct, floor] = samples;
        let by_slice: Vec<f64> = api
            .iter()
            .zip(direct)
            .map(|(api, direct)| api.per_second() / direct.per_second())
            .collect();
        let low = by_slice.iter().copied().fold(f64::INFINITY, f64::min);
        let high = by_slice.iter().copied().fold(0.0, f64::max);
        let (api, direct) = (pooled(api), pooled(direct));
        let floor = (!floor.is_empty()).then(|| pooled(floor));
        println!(
            "{clients:>8}  {:>12.0} {:>7.0}us {:>7.0}us  {:>12.0} {:>7.0}us {:>7.0}us  {:>6.2}x {:>11} {:>+11.0}us{}",
            api.per_second,
            api.p50_us,
            api.p99_us,
            direct.per_second,
            direct.p50_us,
            direct.p99_us,
            api.per_second / direct.per_second,
            format!("{low:.2}-{high:.2}x"),
            api.p99_us - direct.p99_us,
            floor.map_or_else(String::new, |floor| format!(
                "  {:>12.0} {:>7.0}us {:>7.0}us  {:>11.2}x {:>9.2}x",
                floor.per_second,
                floor.p50_us,
                floor.p99_us,
                floor.per_second / direct.per_second,
                api.per_second / floor.per_second,
            )),
        );
    };
    let http_reader = |address: &str| {
        let address = address.to_owned();
        move || {
            let address = address.clone();
            async move {
                let http = HttpClient::connect(&address).await;
                ApiReader { http, sources }
            }
        }
    };
    let api_reader = http_reader(&api);
    let floor_reader = floor.as_deref().map(http_reader);
    let direct_reader = || {
        let reader = DirectReader {
            redis: redis.clone(),
            prefix: prefix.clone(),
            sources,
        };
        async move { reader }
    };
    // Each level is split into `rounds` slices, each path in turn within a slice and the
    // order turned by one each slice: a drift of the machine's load lands on every path
    // alike instead of on whichever ran last.
    let paths = if floor_reader.is_some() { 3 } else { 2 };
    let slice = deadline / rounds;
    let run_level = async |clients: usize, rate: Option<f64>| {
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 0..rounds as usize {
            for turn in 0..paths {
                let path = (round + turn) % paths;
                let load = rate.map(|rate| (rate, Instant::now() + OPEN_LOOP_SETTLE));
                let sample = match (path, &floor_reader) {
                    (0, _) => level(clients, slice, load, &api_reader).await,
                    (1, _) => level(clients, slice, load, direct_reader).await,
                    (_, Some(floor)) => level(clients, slice, load, floor).await,
                    (_, None) => unreachable!("no floor path without a floor"),
                };
                samples[path].push(sample);
            }
        }
        samples
    };
    println!("-- closed loop: each client sends when its last answer is in");
    header();
    let mut closed_rates = Vec::new();
    for &clients in &levels {
        let samples = run_level(clients, None).await;
        row(clients, &samples);
        closed_rates.push(pooled(&samples[0]).per_second);
    }
    println!(
        "-- open loop at one rate for both: {load} x the API's closed-loop req/s at that client count"
    );
    header();
    for (&clients, &closed) in levels.iter().zip(&closed_rates) {
        let samples = run_level(clients, Some(closed * load)).await;
        row(clients, &samples);
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
