//! Shared harness of the receiver tests: the real stack, random names, a producer that
//! remembers where it wrote, `ferry-worker receive` child processes, and the oracle's
//! check of a receiver's keys ([`crate::oracle`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_worker::config::{RecordFormat, StorageKind};
use ferry_worker::record::{DataRecord, dsdata};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub struct Stack {
    pub kafka: String,
    pub redis: String,
}

/// `KAFKA_BOOTSTRAP` and `REDIS_URL` of the local stack; fails (never skips) without them.
pub fn stack() -> Stack {
    Stack {
        kafka: ferry_test_support::require_stack_var("KAFKA_BOOTSTRAP"),
        redis: ferry_test_support::require_stack_var("REDIS_URL"),
    }
}

pub use ferry_test_support::{checkpoint_offset, unique};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Creates `topic`, retrying while a deletion of the same name finishes.
pub async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    ferry_test_support::create_topics(&stack.kafka, &[(topic, partitions)]).await;
}

pub fn producer(stack: &Stack) -> FutureProducer {
    producer_compressing(stack, "none")
}

/// A producer whose batches use `codec` (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
pub fn producer_compressing(stack: &Stack, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.codec", codec)
        .create()
        .expect("producer")
}

/// What a producer sent: how many records per key, and the last offset per partition (to
/// wait for). What Redis must hold is the oracle's to say, from the topic itself.
#[derive(Default, Debug)]
pub struct Produced {
    pub per_key: HashMap<String, usize>,
    pub last_offsets: BTreeMap<i32, i64>,
}

impl Produced {
    pub fn total(&self) -> usize {
        self.per_key.values().sum()
    }
}

/// The value a test sends: dsdata whose text names key and sequence number.
pub fn value(key: &str, sequence: usize, timestamp_ms: i64) -> Vec<u8> {
    dsdata::encode(&DataRecord {
        timestamp_ms,
        values: vec![sequence as f64, 0.5],
        text: format!("{key}#{sequence}"),
    })
    .unwrap()
}

/// Produces `count` records round robin over `keys` keys.
pub async fn produce_keyed(stack: &Stack, topic: &str, keys: usize, count: usize) -> Produced {
    produce_paced(stack, topic, keys, count, 0.0).await
}

/// Produces `count` records round robin over `keys` keys at about `rate` a second (0: as
/// fast as it can), each with its own scrambled timestamp (payload and Kafka record alike).
/// Retries through a full queue or a broker that is down.
pub async fn produce_paced(
    stack: &Stack,
    topic: &str,
    keys: usize,
    count: usize,
    rate: f64,
) -> Produced {
    produce_sequences(stack, topic, keys, 0..count, rate).await
}

/// Produces the records numbered `sequences` (so a second call continues a first one with
/// distinct values), at about `rate` a second (0: as fast as it can).
pub async fn produce_sequences(
    stack: &Stack,
    topic: &str,
    keys: usize,
    sequences: std::ops::Range<usize>,
    rate: f64,
) -> Produced {
    produce_with(&producer(stack), topic, keys, sequences, rate).await
}

/// [`produce_sequences`] through a given producer (say, one that compresses).
pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    keys: usize,
    sequences: std::ops::Range<usize>,
    rate: f64,
) -> Produced {
    let mut oracle = Produced::default();
    let mut pending = Vec::with_capacity(sequences.len());
    // One base for every call of the process, so sequences of different calls never share a
    // time; now, as brokers refuse record times far in the future.
    static BASE_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let ts = *BASE_MS.get_or_init(now_ms);
    let started = Instant::now();
    let first = sequences.start;
    for sequence in sequences {
        if (sequence - first).is_multiple_of(100) && rate > 0.0 {
            let due = Duration::from_secs_f64((sequence - first) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let key = format!("src-{:04}", sequence % keys);
        let timestamp_ms = crate::oracle::scrambled_ts(ts, sequence);
        let payload = value(&key, sequence, timestamp_ms);
        *oracle.per_key.entry(key.clone()).or_default() += 1;
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .timestamp(timestamp_ms);
        pending.push(ferry_test_support::enqueue(producer, record).await);
    }
    producer.flush(Duration::from_secs(240)).unwrap();
    for delivery in pending {
        let delivered = delivery.await.unwrap().expect("delivered");
        let last = oracle.last_offsets.entry(delivered.partition).or_insert(-1);
        *last = (*last).max(delivered.offset);
    }
    oracle
}

pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
    /// Where its `/metrics` and `/readyz` answer.
    pub port: u16,
}

impl Worker {
    /// One counter or gauge of its `/metrics` (summed over labels), `None` when it does not
    /// answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::oracle::metric(self.port, name)
    }

    /// `/readyz`'s status code and body.
    pub fn readyz(&self) -> Option<(u16, String)> {
        crate::oracle::http_get(self.port, "/readyz")
    }

    /// `/status`'s body (the status channel's JSON document).
    pub fn status(&self) -> Option<String> {
        crate::oracle::http_get(self.port, "/status").map(|(_, body)| body)
    }

    /// SIGSTOP: the process freezes, its sessions and connections stay open.
    pub fn sigstop(&self) {
        signal(&self.child, "-STOP");
    }

    pub fn sigcont(&self) {
        signal(&self.child, "-CONT");
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("worker ignored SIGTERM; log {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

pub struct Receiver {
    pub kafka: String,
    pub format: RecordFormat,
    pub storage: StorageKind,
    pub depth: usize,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topic: String,
    pub group: String,
    pub prefix: String,
    pub redis_url: String,
    /// Extra environment of every worker started (`FERRY__…` overrides the config).
    pub env: Vec<(String, String)>,
    started: usize,
}

pub struct ReceiverSpec<'a> {
    pub topic: &'a str,
    pub redis_url: &'a str,
    pub format: &'a str,
    pub storage: &'a str,
    pub depth: u32,
    pub max_records: u32,
    pub extra: &'a str,
}

impl Receiver {
    pub fn new(stack: &Stack, spec: ReceiverSpec<'_>) -> Self {
        let dir = std::env::temp_dir().join(unique("ferry-receiver-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let group = unique("group");
        let prefix = unique("t");
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "pipeline: test\n\
                 kafka: {{bootstrap_servers: \"{kafka}\", topic: {topic}, consumer_group: {group}}}\n\
                 redis: {{url: \"{redis}\", key_prefix: {prefix}}}\n\
                 format: {format}\n\
                 stage:\n  receiver:\n    storage: {{type: {storage}, history_depth: {depth}}}\n    \
                 batch: {{max_records: {max_records}, max_wait: 20ms}}\n{extra}",
                kafka = stack.kafka,
                topic = spec.topic,
                redis = spec.redis_url,
                format = spec.format,
                storage = spec.storage,
                depth = spec.depth,
                max_records = spec.max_records,
                extra = spec.extra,
            ),
        )
        .unwrap();
        let format = match spec.format {
            "json" => RecordFormat::Json,
            "raw" => RecordFormat::Raw,
            _ => RecordFormat::Dsdata,
        };
        let storage = match spec.storage {
            "stream" => StorageKind::Stream,
            "hash" => StorageKind::Hash,
            "zset" => StorageKind::Zset,
            _ => StorageKind::List,
        };
        Self {
            kafka: stack.kafka.clone(),
            format,
            storage,
            depth: spec.depth as usize,
            dir,
            config,
            topic: spec.topic.to_owned(),
            group,
            prefix,
            redis_url: spec.redis_url.to_owned(),
            env: Vec::new(),
            started: 0,
        }
    }

    /// Starts `ferry-worker receive` with this config and a free HTTP port.
    pub fn start(&mut self) -> Worker {
        self.started += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = self.dir.join(format!("worker-{}.log", self.started));
        let listen = format!("127.0.0.1:{port}");
        let mut env = vec![("FERRY__HTTP__LISTEN", listen.as_str())];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let args = ["receive", "--config"].map(std::ffi::OsStr::new);
        let timeouts =
            ["--session-timeout", "6s", "--drain-timeout", "5s"].map(std::ffi::OsStr::new);
        let child = crate::oracle::spawn_worker(
            &[&args[..], &[self.config.as_os_str()], &timeouts[..]].concat(),
            &env,
            &log,
        );
        Worker { child, log, port }
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `{prefix}:ckpt:receiver:{topic}:{partition}`, as the worker names it.
    pub fn checkpoint_key(&self, partition: i32) -> String {
        format!("{}:ckpt:receiver:{}:{}", self.prefix, self.topic, partition)
    }

    /// Each partition's checkpointed offset (`None` before its first batch).
    pub fn checkpoints(&self, partitions: &[i32]) -> Vec<Option<i64>> {
        let keys: Vec<String> = partitions.iter().map(|p| self.checkpoint_key(*p)).collect();
        match redis::cmd("MGET")
            .arg(&keys)
            .query::<Vec<Option<String>>>(&mut self.redis())
        {
            Ok(values) => values
                .iter()
                .map(|value| value.as_deref().and_then(checkpoint_offset))
                .collect(),
            Err(_) => vec![None; partitions.len()],
        }
    }

    /// Waits until every partition's checkpoint reaches its last offset.
    pub fn wait_applied(&self, last_offsets: &BTreeMap<i32, i64>, timeout: Duration) {
        assert!(
            self.try_wait_applied(last_offsets, timeout),
            "not applied in {timeout:?}: checkpoints {:?}, expected {last_offsets:?}; logs in {}",
            self.checkpoints(&last_offsets.keys().copied().collect::<Vec<_>>()),
            self.dir.display()
        );
    }

    /// Whether every partition's checkpoint reached `last_offsets` within `timeout`.
    pub fn try_wait_applied(&self, last_offsets: &BTreeMap<i32, i64>, timeout: Duration) -> bool {
        let partitions: Vec<i32> = last_offsets.keys().copied().collect();
        let deadline = Instant::now() + timeout;
        loop {
            let checkpoints = self.checkpoints(&partitions);
            if partitions
                .iter()
                .zip(&checkpoints)
                .all(|(p, c)| c.is_some_and(|c| c >= last_offsets[p]))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn list(&self, key: &str) -> Vec<Vec<u8>> {
        redis::cmd("LRANGE")
            .arg(format!("{}:list:{key}", self.prefix))
            .arg(0)
            .arg(-1)
            .query(&mut self.redis())
            .unwrap()
    }

    /// The oracle's verdict on this receiver's keys, from the topic as Kafka holds it now.
    pub fn verdict(&self) -> crate::oracle::Verdict {
        let source = crate::oracle::read_source(&self.kafka, &self.topic);
        crate::oracle::check_storage(
            &self.redis_url,
            &self.prefix,
            self.storage,
            self.depth,
            self.format,
            &source,
        )
    }

    /// Fails unless every key holds exactly what the topic says it must.
    pub fn assert_exact(&self) -> crate::oracle::Verdict {
        let verdict = self.verdict();
        eprintln!("{verdict}");
        verdict.assert_exact(&self.dir);
        verdict
    }
}
