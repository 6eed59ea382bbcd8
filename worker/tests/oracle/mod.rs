//! The oracle of the worker's tests: a checker derived from history, not from totals.
//!
//! It reads the source topic back from Kafka (every record up to the high watermarks),
//! derives from it what each Redis key must hold, reads the keys, and reports per key what
//! was lost, duplicated, misordered, or is there unexplained. A loss and a duplicate never
//! cancel: each key's history is compared record by record.
//!
//! What a key must hold, per stage:
//! - receiver `list`: its newest `depth` values, newest first;
//! - receiver `stream`: at least its newest `depth` entries (`ts`, `v`) in order, and any
//!   older entry still there (`MAXLEN ~` trims lazily) must be the next older one, no gap;
//! - receiver `hash`: `ts` and `v` of its last record;
//! - receiver `zset`: the `depth` highest-scored distinct values (score = record time;
//!   ties by value, as Redis orders them), each with its last record's time;
//! - validate: per key `valid`/`invalid` counts, and `_total` with `undecodable`;
//! - stats: the window (every finite value, newest first, `window` kept) and the stats
//!   hash computed from it, with `updated_ts` the time of the key's last record.
//!
//! A key's records are applied in partition order, so the oracle relies on each key
//! living on one partition, as Kafka's keyed partitioning places it; the test producers
//! key every record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_worker::config::{RecordFormat, StorageKind};
use ferry_worker::process::stats::RollingWindow;
use ferry_worker::record::{self, DataRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The worker binary the tests start: `FERRY_WORKER_BIN` when set (to pin one build: the
/// target directory's `ferry-worker` is shared by every worktree building into it), else
/// the one cargo built for this test. Looked up at compile time only when present: the
/// operator's tests include this module too, and cargo names no other package's binary.
pub fn worker_bin() -> std::path::PathBuf {
    std::env::var_os("FERRY_WORKER_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_ferry-worker").map(std::path::PathBuf::from))
        .expect("FERRY_WORKER_BIN is not set and this test crate has no ferry-worker binary")
}

/// The read API binary the tests start: `FERRY_API_BIN` when set, else the one cargo built
/// for this test (as [`worker_bin`]).
pub fn api_bin() -> std::path::PathBuf {
    std::env::var_os("FERRY_API_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_ferry-api").map(std::path::PathBuf::from))
        .expect("FERRY_API_BIN is not set and this test crate has no ferry-api binary")
}

/// Starts `ferry-worker` with `args`, `RUST_LOG=info` unless `env` sets it, and `env`; its
/// stderr goes to `log`.
pub fn spawn_worker(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> std::process::Child {
    spawn(&worker_bin(), args, env, log)
}

/// Starts `binary` with `args`, `RUST_LOG=info` unless `env` sets it, and `env`; its stderr
/// goes to `log`.
pub fn spawn(
    binary: &std::path::Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(binary)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the worker's log"))
        .spawn()
        .expect("spawn ferry-worker")
}

/// A distinct, non-monotonic timestamp for the `sequence`-th record a test sends: `base`
/// minus a bijection of the sequence onto 0..2^24 ms (about 4.7 hours), so no two records
/// share a time and order by time is not order by offset.
pub fn scrambled_ts(base_ms: i64, sequence: usize) -> i64 {
    let spread = (sequence as u64).wrapping_mul(2_654_435_761) & ((1 << 24) - 1);
    base_ms - spread as i64
}

/// One record of the source topic, as Kafka holds it.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub kafka_timestamp_ms: Option<i64>,
    /// Its headers, values as UTF-8 (lossy): a stage's output names its source in them.
    pub headers: BTreeMap<String, String>,
}

impl SourceRecord {
    /// The source id and decoded record, if the stage can read it.
    pub fn decode(&self, format: RecordFormat) -> Option<(&str, DataRecord)> {
        let key = record::source_id(self.key.as_deref()).ok()?;
        let decoded = record::decode(format, &self.payload, self.kafka_timestamp_ms).ok()?;
        Some((key, decoded))
    }

    /// The source id and timestamp, if a receiver stores it (no `max_age` judged here).
    pub fn stored(&self, format: RecordFormat) -> Option<(&str, i64)> {
        let key = record::source_id(self.key.as_deref()).ok()?;
        let ts = record::validate(format, &self.payload, self.kafka_timestamp_ms).ok()?;
        Some((key, ts))
    }
}

/// Every record of `topic`, in partition and offset order, up to the high watermarks at
/// the time of the call.
pub fn read_source(kafka: &str, topic: &str) -> Vec<SourceRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "ferry-oracle")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("oracle consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut next = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            next.insert(partition, low);
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .unwrap();
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(180);
    while ends.iter().any(|(p, end)| next[p] < *end) {
        assert!(
            Instant::now() < deadline,
            "oracle: {topic} not read back in time: at {next:?}, ends {ends:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if message.offset() >= ends[&message.partition()] {
                    continue;
                }
                next.insert(message.partition(), message.offset() + 1);
                records.push(SourceRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    kafka_timestamp_ms: message.timestamp().to_millis(),
                    headers: message.headers().map_or_else(BTreeMap::new, |headers| {
                        headers
                            .iter()
                            .map(|h| {
                                let value = h.value.map(String::from_utf8_lossy);
                                (h.key.to_owned(), value.unwrap_or_default().into_owned())
                            })
                            .collect()
                    }),
                });
            }
            Some(Err(error)) => eprintln!("oracle: consume error {error}, retrying"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// What is wrong with one key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyDiff {
    /// Records the key must hold and does not.
    pub lost: usize,
    /// Extra copies of a record.
    pub duplicated: usize,
    /// Records held out of order (or a hash holding an older record than the last).
    pub misordered: usize,
    /// Entries no record explains: never produced, older than the kept history, a wrong
    /// score, or a summary field that does not match the window.
    pub unexpected: usize,
    pub detail: Vec<String>,
}

impl KeyDiff {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.misordered == 0 && self.unexpected == 0
    }

    fn add(&mut self, other: &KeyDiff) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.misordered += other.misordered;
        self.unexpected += other.unexpected;
    }
}

/// The oracle's finding over every key of one check.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub what: String,
    /// Source records the check derived from.
    pub records: usize,
    pub keys: usize,
    /// Only the keys with something wrong.
    pub wrong: BTreeMap<String, KeyDiff>,
    pub total: KeyDiff,
}

impl Verdict {
    fn new(what: impl Into<String>, records: usize, diffs: BTreeMap<String, KeyDiff>) -> Self {
        let keys = diffs.len();
        let mut total = KeyDiff::default();
        for diff in diffs.values() {
            total.add(diff);
        }
        let wrong = diffs.into_iter().filter(|(_, d)| !d.is_clean()).collect();
        Self {
            what: what.into(),
            records,
            keys,
            wrong,
            total,
        }
    }

    pub fn is_exact(&self) -> bool {
        self.wrong.is_empty()
    }

    /// Fails the test unless every key is exact, naming the first wrong keys.
    pub fn assert_exact(&self, logs: &Path) {
        assert!(self.is_exact(), "{self}\nlogs in {}", logs.display());
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oracle {}: {} records, {} keys: lost {}, duplicated {}, misordered {}, unexpected {}, \
             keys wrong {}",
            self.what,
            self.records,
            self.keys,
            self.total.lost,
            self.total.duplicated,
            self.total.misordered,
            self.total.unexpected,
            self.wrong.len()
        )?;
        for (key, diff) in self.wrong.iter().take(5) {
            write!(
                f,
                "\n  {key}: lost {}, duplicated {}, misordered {}, unexpected {}; {}",
                diff.lost,
                diff.duplicated,
                diff.misordered,
                diff.unexpected,
                diff.detail.join("; ")
            )?;
        }
        Ok(())
    }
}

/// Compares a stored history with the one derived from the source. `expected` holds every
/// entry the key ever got, oldest first, distinct; `stored` is what Redis holds, oldest
/// first. The newest `keep` must be there; with `exact`, nothing older may be.
fn diff_history<T: Eq + Hash + fmt::Debug>(
    expected: &[T],
    stored: &[T],
    keep: usize,
    exact: bool,
) -> KeyDiff {
    let position: HashMap<&T, usize> = expected.iter().enumerate().map(|(i, v)| (v, i)).collect();
    let must_from = expected.len().saturating_sub(keep);
    let mut diff = KeyDiff::default();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut oldest_held = must_from;
    let mut previous: Option<usize> = None;
    for entry in stored {
        match position.get(entry) {
            None => {
                diff.unexpected += 1;
                if diff.detail.len() < 3 {
                    diff.detail.push(format!("unexpected {entry:?}"));
                }
            }
            Some(&at) => {
                let copies = seen.entry(at).or_default();
                *copies += 1;
                if *copies > 1 {
                    diff.duplicated += 1;
                    continue;
                }
                if exact && at < must_from {
                    diff.unexpected += 1;
                    if diff.detail.len() < 3 {
                        diff.detail
                            .push(format!("older than the history: {entry:?}"));
                    }
                    continue;
                }
                oldest_held = oldest_held.min(at);
                if previous.is_some_and(|p| at < p) {
                    diff.misordered += 1;
                }
                previous = Some(at);
            }
        }
    }
    let missing: Vec<usize> = (oldest_held..expected.len())
        .filter(|at| !seen.contains_key(at))
        .collect();
    diff.lost = missing.len();
    if let Some(first) = missing.first() {
        diff.detail.push(format!(
            "first lost {:?} (position {first} of {})",
            expected[*first],
            expected.len()
        ));
    }
    diff
}

/// A value as the tests' records carry it: its text (`key#sequence`) when it decodes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Value(pub Vec<u8>);

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ferry_worker::record::dsdata::decode(&self.0) {
            Ok(record) => write!(f, "{}", record.text),
            Err(_) => write!(f, "{:?}", String::from_utf8_lossy(&self.0)),
        }
    }
}

fn connection(redis_url: &str) -> redis::Connection {
    redis::Client::open(redis_url)
        .expect("redis url")
        .get_connection()
        .expect("redis connection")
}

/// Runs one command per key, pipelined in chunks.
fn query_per_key<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    keys: &[String],
    command: impl Fn(&str) -> redis::Cmd,
) -> Vec<T> {
    let mut answers = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(200) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.add_command(command(key));
        }
        let replies: Vec<T> = pipe.query(conn).expect("read keys");
        answers.extend(replies);
    }
    answers
}

/// Checks a receiver's keys `{prefix}:{storage}:{source}` against `source`.
pub fn check_storage(
    redis_url: &str,
    prefix: &str,
    kind: StorageKind,
    depth: usize,
    format: RecordFormat,
    source: &[SourceRecord],
) -> Verdict {
    let mut per_key: BTreeMap<String, Vec<(i64, Value)>> = BTreeMap::new();
    let mut records = 0;
    for record in source {
        if let Some((key, ts)) = record.stored(format) {
            records += 1;
            per_key
                .entry(key.to_owned())
                .or_default()
                .push((ts, Value(record.payload.clone())));
        }
    }
    let storage = match kind {
        StorageKind::List => "list",
        StorageKind::Stream => "stream",
        StorageKind::Hash => "hash",
        StorageKind::Zset => "zset",
    };
    let keys: Vec<String> = per_key
        .keys()
        .map(|k| format!("{prefix}:{storage}:{k}"))
        .collect();
    let mut conn = connection(redis_url);
    let mut diffs = BTreeMap::new();
    match kind {
        StorageKind::List => {
            let lists: Vec<Vec<Vec<u8>>> = query_per_key(&mut conn, &keys, |key| {
                let mut cmd = redis::cmd("LRANGE");
                cmd.arg(key).arg(0).arg(-1);
                cmd
            });
            for ((key, history), list) in per_key.iter().zip(lists) {
                let expected: Vec<Value> = history.iter().map(|(_, v)| v.clone()).collect();
                let stored: Vec<Value> = list.into_iter().rev().map(Value).collect();
                diffs.insert(key.clone(), diff_history(&expected, &stored, depth, true));
            }
        }
        StorageKind::Stream => {
            type Entries = Vec<(String, HashMap<String, Vec<u8>>)>;
            let streams: Vec<Entries> = query_per_key(&mut conn, &keys, |key| {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(key).arg("-").arg("+");
                cmd
            });
            for ((key, history), entries) in per_key.iter().zip(streams) {
                let stored: Vec<(i64, Value)> = entries
                    .into_iter()
                    .map(|(_, fields)| {
                        let ts = fields
                            .get("ts")
                            .and_then(|t| String::from_utf8_lossy(t).parse().ok())
                            .unwrap_or(i64::MIN);
                        (ts, Value(fields.get("v").cloned().unwrap_or_default()))
                    })
                    .collect();
                diffs.insert(key.clone(), diff_history(history, &stored, depth, false));
            }
        }
        StorageKind::Hash => {
            let hashes: Vec<HashMap<String, Vec<u8>>> = query_per_key(&mut conn, &keys, |key| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(key);
                cmd
            });
            for ((key, history), hash) in per_key.iter().zip(hashes) {
                let mut diff = KeyDiff::default();
                let stored = match (hash.get("ts"), hash.get("v")) {
                    (Some(ts), Some(v)) => Some((
                        String::from_utf8_lossy(ts)
                            .parse::<i64>()
                            .unwrap_or(i64::MIN),
                        Value(v.clone()),
                    )),
                    _ => None,
                };
                let last = history.last();
                match stored {
                    None => diff.lost = 1,
                    Some(held) if Some(&held) == last => {}
                    Some(held) if history.contains(&held) => {
                        diff.misordered = 1;
                        diff.detail
                            .push(format!("holds {held:?}, last is {last:?}"));
                    }
                    Some(held) => {
                        diff.unexpected = 1;
                        diff.detail.push(format!("holds {held:?}"));
                    }
                }
                diffs.insert(key.clone(), diff);
            }
        }
        StorageKind::Zset => {
            let zsets: Vec<Vec<(Vec<u8>, f64)>> = query_per_key(&mut conn, &keys, |key| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(key).arg(0).arg(-1).arg("WITHSCORES");
                cmd
            });
            for ((key, history), members) in per_key.iter().zip(zsets) {
                // Byte-identical values are one member, scored by the last one applied.
                let mut score: HashMap<&Value, i64> = HashMap::new();
                for (ts, value) in history {
                    score.insert(value, *ts);
                }
                let mut expected: Vec<(i64, Value)> =
                    score.into_iter().map(|(v, ts)| (ts, v.clone())).collect();
                expected.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.cmp(&b.1.0)));
                let stored: Vec<(i64, Value)> = members
                    .into_iter()
                    .map(|(member, score)| (score as i64, Value(member)))
                    .collect();
                diffs.insert(key.clone(), diff_history(&expected, &stored, depth, true));
            }
        }
    }
    Verdict::new(storage, records, diffs)
}

/// What a validate stage decided for one decoded record.
pub type Classify<'a> = &'a dyn Fn(&str, &DataRecord) -> bool;

/// Checks a validate stage's counters `{prefix}:counters:{processor}:{key}` against `source`;
/// `is_valid` is the test's own statement of its rules.
pub fn check_counters(
    redis_url: &str,
    prefix: &str,
    processor: &str,
    format: RecordFormat,
    source: &[SourceRecord],
    is_valid: Classify<'_>,
) -> Verdict {
    let total_key = ferry_worker::process::validate::TOTAL_COUNTERS;
    let mut expected: BTreeMap<String, BTreeMap<&'static str, i64>> = BTreeMap::new();
    expected.insert(total_key.to_owned(), BTreeMap::new());
    for record in source {
        let field = match record.decode(format) {
            Some((key, decoded)) => {
                let field = if is_valid(key, &decoded) {
                    "valid"
                } else {
                    "invalid"
                };
                *expected
                    .entry(key.to_owned())
                    .or_default()
                    .entry(field)
                    .or_default() += 1;
                field
            }
            None => "undecodable",
        };
        *expected
            .get_mut(total_key)
            .unwrap()
            .entry(field)
            .or_default() += 1;
    }
    let keys: Vec<String> = expected
        .keys()
        .map(|k| ferry_worker::process::validate::counters_key(prefix, processor, k))
        .collect();
    let mut conn = connection(redis_url);
    let stored: Vec<HashMap<String, i64>> = query_per_key(&mut conn, &keys, |key| {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        cmd
    });
    let mut diffs = BTreeMap::new();
    for ((key, want), got) in expected.iter().zip(stored) {
        let mut diff = KeyDiff::default();
        for field in ["valid", "invalid", "undecodable"] {
            let want = want.get(field).copied().unwrap_or(0);
            let got = got.get(field).copied().unwrap_or(0);
            if got < want {
                diff.lost += (want - got) as usize;
            } else if got > want {
                diff.duplicated += (got - want) as usize;
            }
            if got != want {
                diff.detail.push(format!("{field}: {got}, expected {want}"));
            }
        }
        diffs.insert(key.clone(), diff);
    }
    Verdict::new("validate counters", source.len(), diffs)
}

/// Checks a stats stage's windows `{prefix}:stats-window:{processor}:{key}` and hashes
/// `{prefix}:stats:{processor}:{key}` against `source`. The test's values must be distinct per key, so
/// the window shows each loss or duplicate.
pub fn check_stats(
    redis_url: &str,
    prefix: &str,
    processor: &str,
    window: u32,
    format: RecordFormat,
    source: &[SourceRecord],
) -> Verdict {
    // Per key: every finite value ever pushed (oldest first), the reference window and the
    // last record's time.
    let mut per_key: BTreeMap<String, (Vec<u64>, RollingWindow, i64)> = BTreeMap::new();
    let mut records = 0;
    for record in source {
        let Some((key, decoded)) = record.decode(format) else {
            continue;
        };
        records += 1;
        let entry = per_key
            .entry(key.to_owned())
            .or_insert_with(|| (Vec::new(), RollingWindow::new(window), 0));
        entry.0.extend(
            decoded
                .values
                .iter()
                .filter(|v| v.is_finite())
                .map(|v| v.to_bits()),
        );
        entry.1.push_record(&decoded.values);
        entry.2 = decoded.timestamp_ms;
    }
    let names: Vec<&String> = per_key.keys().collect();
    let window_keys: Vec<String> = names
        .iter()
        .map(|k| format!("{prefix}:stats-window:{processor}:{k}"))
        .collect();
    let hash_keys: Vec<String> = names
        .iter()
        .map(|k| format!("{prefix}:stats:{processor}:{k}"))
        .collect();
    let mut conn = connection(redis_url);
    let windows: Vec<Vec<String>> = query_per_key(&mut conn, &window_keys, |key| {
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(-1);
        cmd
    });
    let hashes: Vec<HashMap<String, String>> = query_per_key(&mut conn, &hash_keys, |key| {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        cmd
    });
    let mut diffs = BTreeMap::new();
    for (((key, (pushed, reference, updated_ts)), list), hash) in
        per_key.iter().zip(windows).zip(hashes)
    {
        let stored: Vec<u64> = list
            .iter()
            .rev()
            .map(|v| v.parse::<f64>().map_or(u64::MAX, f64::to_bits))
            .collect();
        let mut diff = diff_history(pushed, &stored, window as usize, true);
        if let Some(summary) = reference.summary() {
            let number = |field: &str| hash.get(field).and_then(|v| v.parse::<f64>().ok());
            let fields = [
                ("count", summary.count as f64),
                ("min", summary.min),
                ("max", summary.max),
                ("mean", summary.mean),
                ("last", summary.last),
                ("updated_ts", *updated_ts as f64),
            ];
            for (field, want) in fields {
                if number(field) != Some(want) {
                    diff.unexpected += 1;
                    diff.detail
                        .push(format!("{field}: {:?}, expected {want}", hash.get(field)));
                }
            }
        }
        diffs.insert(key.clone(), diff);
    }
    Verdict::new("stats windows", records, diffs)
}

// ---------------------------------------------------------------- knowing the fault landed

/// A plain HTTP/1.0 GET on the worker's port: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// The sum over labels of the series `name` (e.g. `ferry_records_skipped_total`) on the
/// worker's `/metrics`; `None` when it does not answer.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    Some(
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// After a frozen writer resumes: waits (up to `timeout`) until its fence fired, and
/// returns (records fenced, `EXEC` conflicts) as its `metric` reader reports them.
pub async fn wait_fence_fired(
    metric: impl Fn(&str) -> Option<f64>,
    timeout: Duration,
) -> (f64, f64) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let fenced = metric("ferry_records_fenced_total").unwrap_or(0.0);
        let conflicts = metric("ferry_transaction_conflicts_total").unwrap_or(0.0);
        if fenced + conflicts > 0.0 || std::time::Instant::now() > deadline {
            return (fenced, conflicts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The group's committed offset per partition (the next offset it would read), without
/// joining the group.
pub fn committed_offsets(
    kafka: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets consumer");
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    // An error is not "nothing committed": a fault test would misjudge where its kill landed.
    let mut attempt = 0;
    let committed = loop {
        attempt += 1;
        match consumer.committed_offsets(wanted.clone(), Duration::from_secs(10)) {
            Ok(committed) => break committed,
            Err(error) if attempt < 5 => {
                eprintln!("reading {group}'s committed offsets failed ({error}); again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => panic!("cannot read {group}'s committed offsets: {error}"),
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_and_a_duplicate_do_not_cancel() {
        let diff = diff_history(&[1, 2, 3, 4], &[1, 2, 2, 4], 4, true);
        assert_eq!((diff.lost, diff.duplicated, diff.misordered), (1, 1, 0));
    }

    #[test]
    fn a_stream_may_keep_older_entries_without_gaps() {
        assert!(diff_history(&[1, 2, 3, 4], &[2, 3, 4], 2, false).is_clean());
        assert_eq!(diff_history(&[1, 2, 3, 4], &[1, 3, 4], 2, false).lost, 1);
        assert_eq!(
            diff_history(&[1, 2, 3, 4], &[2, 3, 4], 2, true).unexpected,
            1
        );
        assert_eq!(diff_history(&[1, 2, 3], &[1, 3, 2], 3, true).misordered, 1);
    }

    #[test]
    fn scrambled_timestamps_are_distinct_and_not_monotonic() {
        let ts: Vec<i64> = (0..10_000).map(|s| scrambled_ts(1 << 40, s)).collect();
        let distinct: std::collections::HashSet<_> = ts.iter().collect();
        assert_eq!(distinct.len(), ts.len());
        assert!(ts.windows(2).any(|w| w[0] < w[1]) && ts.windows(2).any(|w| w[0] > w[1]));
    }
}
