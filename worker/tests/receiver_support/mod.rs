//! Shared harness of the receiver tests: the real stack, random names, a producer that
//! remembers what it sent (the oracle), and `ferry-worker receive` child processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_worker::record::{DataRecord, dsdata};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub struct Stack {
    pub kafka: String,
    pub redis: String,
}

/// `KAFKA_BOOTSTRAP` and `REDIS_URL` from the environment or the stack's env file; fails
/// (never skips) without them.
pub fn stack() -> Stack {
    let dir = std::env::var("FERRY_STACK_DIR").unwrap_or_else(|_| "/tmp/ferry-stack".to_owned());
    let file = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap_or_default();
    let lookup = |name: &str| {
        std::env::var(name).ok().or_else(|| {
            file.lines().find_map(|line| {
                let line = line.trim().trim_start_matches("export ");
                let (key, value) = line.split_once('=')?;
                (key == name).then(|| value.trim_matches('"').to_owned())
            })
        })
    };
    match (lookup("KAFKA_BOOTSTRAP"), lookup("REDIS_URL")) {
        (Some(kafka), Some(redis)) => Stack { kafka, redis },
        _ => panic!(
            "KAFKA_BOOTSTRAP/REDIS_URL not set and not in {dir}/env: start the stack: make stack-up \
             (bash e2e/local/stack.sh up kafka redis)"
        ),
    }
}

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{:x}-{:x}", nanos, rand::random::<u32>())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create()
        .expect("admin client");
    let new = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
}

pub fn producer(stack: &Stack) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// What was sent, per key in order, and the last offset per partition.
#[derive(Default, Debug)]
pub struct Oracle {
    pub per_key: HashMap<String, Vec<Vec<u8>>>,
    pub last_offsets: BTreeMap<i32, i64>,
}

impl Oracle {
    pub fn total(&self) -> usize {
        self.per_key.values().map(Vec::len).sum()
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

/// Produces `count` records round robin over `keys` keys, remembering all of them.
pub async fn produce_keyed(stack: &Stack, topic: &str, keys: usize, count: usize) -> Oracle {
    produce_paced(stack, topic, keys, count, 0.0).await
}

/// Produces `count` records round robin over `keys` keys at about `rate` a second (0: as
/// fast as it can), remembering them all. Retries through a full queue or a broker that is
/// down.
pub async fn produce_paced(
    stack: &Stack,
    topic: &str,
    keys: usize,
    count: usize,
    rate: f64,
) -> Oracle {
    let producer = producer(stack);
    let mut oracle = Oracle::default();
    let mut pending = Vec::with_capacity(count);
    let ts = now_ms();
    let started = Instant::now();
    for sequence in 0..count {
        if sequence % 100 == 0 && rate > 0.0 {
            let due = Duration::from_secs_f64(sequence as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let key = format!("src-{:04}", sequence % keys);
        let payload = value(&key, sequence, ts);
        oracle
            .per_key
            .entry(key.clone())
            .or_default()
            .push(payload.clone());
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
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
}

impl Worker {
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

pub struct Receiver {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topic: String,
    pub group: String,
    pub prefix: String,
    pub redis_url: String,
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
        Self {
            dir,
            config,
            topic: spec.topic.to_owned(),
            group,
            prefix,
            redis_url: spec.redis_url.to_owned(),
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
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-worker"))
            .args(["receive", "--config"])
            .arg(&self.config)
            .args(["--session-timeout", "6s", "--drain-timeout", "5s"])
            .env("FERRY__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn checkpoint_key(&self, partition: i32) -> String {
        format!(
            "{}:ckpt:{}:{}:{}",
            self.prefix, self.group, self.topic, partition
        )
    }

    pub fn checkpoints(&self, partitions: &[i32]) -> Vec<Option<i64>> {
        let keys: Vec<String> = partitions.iter().map(|p| self.checkpoint_key(*p)).collect();
        match redis::cmd("MGET").arg(&keys).query(&mut self.redis()) {
            Ok(values) => values,
            Err(_) => vec![None; partitions.len()],
        }
    }

    /// Waits until every partition's checkpoint reaches its last offset.
    pub fn wait_applied(&self, last_offsets: &BTreeMap<i32, i64>, timeout: Duration) {
        let partitions: Vec<i32> = last_offsets.keys().copied().collect();
        let deadline = Instant::now() + timeout;
        loop {
            let checkpoints = self.checkpoints(&partitions);
            if partitions
                .iter()
                .zip(&checkpoints)
                .all(|(p, c)| c.is_some_and(|c| c >= last_offsets[p]))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not applied in {timeout:?}: checkpoints {checkpoints:?}, expected {last_offsets:?}; logs in {}",
                self.dir.display()
            );
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

    /// Every key's list equals its newest `depth` values, newest first.
    pub fn assert_lists_match(&self, oracle: &Oracle, depth: usize) {
        for (key, sent) in &oracle.per_key {
            let expected: Vec<Vec<u8>> = sent.iter().rev().take(depth).cloned().collect();
            let stored = self.list(key);
            if stored != expected {
                let text = |values: &[Vec<u8>]| -> Vec<String> {
                    values
                        .iter()
                        .map(|v| {
                            dsdata::decode(v)
                                .map(|r| r.text)
                                .unwrap_or_else(|e| e.to_string())
                        })
                        .take(8)
                        .collect()
                };
                panic!(
                    "{key}: stored {} values, expected {}; stored starts {:?}, expected starts {:?}; logs in {}",
                    stored.len(),
                    expected.len(),
                    text(&stored),
                    text(&expected),
                    self.dir.display()
                );
            }
        }
    }
}
