//! Shared harness for the processor integration tests: the real local stack (Kafka and
//! Redis from `e2e/local/stack.sh up kafka redis`), random topic and group names per test,
//! and the real `ferry-worker` binary.
// Test-only helpers: failing loudly is their job.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct Stack {
    pub kafka: String,
    pub redis_url: String,
}

/// The local stack's addresses; fails (never skips) without them.
pub fn stack() -> Stack {
    Stack {
        kafka: ferry_test_support::require_stack_var("KAFKA_BOOTSTRAP"),
        redis_url: ferry_test_support::require_stack_var("REDIS_URL"),
    }
}

pub use ferry_test_support::{checkpoint_offset, free_port};

/// A name no other test run uses.
pub fn unique(label: &str) -> String {
    ferry_test_support::unique(&format!("t-{label}"))
}

pub async fn create_topics(stack: &Stack, topics: &[(&str, i32)]) {
    ferry_test_support::create_topics(&stack.kafka, topics).await;
}

pub fn producer(stack: &Stack) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// A JSON record, as the `json` format reads it.
pub fn json_record(ts: i64, values: &[f64], text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"ts": ts, "values": values, "text": text})).unwrap()
}

/// Produces `records` and returns the last offset written per partition.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> BTreeMap<i32, i64> {
    let sends = records.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key.as_bytes()).payload(payload),
            Duration::from_secs(10),
        )
    });
    let mut last = BTreeMap::new();
    for delivery in futures::future::join_all(sends).await {
        let delivered = delivery.expect("delivered");
        let offset = last.entry(delivered.partition).or_insert(-1);
        *offset = delivered.offset.max(*offset);
    }
    last
}

/// `{prefix}:ckpt:{stage}:{topic}:{partition}`, as the worker names it.
pub fn checkpoint_key(prefix: &str, stage: &str, topic: &str, partition: i32) -> String {
    format!("{prefix}:ckpt:{stage}:{topic}:{partition}")
}

/// Each partition's checkpoint (`None` before the first batch).
pub async fn checkpoints(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    stage: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Option<i64>> {
    let keys: Vec<String> = (0..partitions)
        .map(|p| checkpoint_key(prefix, stage, topic, p))
        .collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(redis)
        .await
        .unwrap_or_else(|_| vec![None; keys.len()]);
    let offsets = values
        .into_iter()
        .map(|value| value.as_deref().and_then(checkpoint_offset));
    (0..partitions).zip(offsets).collect()
}

/// True once every partition's checkpoint reached its last offset.
pub async fn all_applied(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    stage: &str,
    topic: &str,
    last_offsets: &BTreeMap<i32, i64>,
) -> bool {
    let partitions = last_offsets.keys().max().map_or(0, |p| p + 1);
    let now = checkpoints(redis, prefix, stage, topic, partitions).await;
    last_offsets
        .iter()
        .all(|(p, last)| now.get(p).copied().flatten().is_some_and(|c| c >= *last))
}

/// A record read back from an output topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the start until `expected` records arrived (or `timeout`), then
/// keeps reading for `settle` to catch extras.
pub fn read_topic(
    stack: &Stack,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut received = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || settle_until.is_some_and(|until| now > until) {
            break;
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            received.push(Received {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        if received.len() >= expected && settle_until.is_none() {
            settle_until = Some(Instant::now() + settle);
        }
    }
    received
}

pub async fn redis(stack: &Stack) -> redis::aio::MultiplexedConnection {
    redis::Client::open(stack.redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// A running `ferry-worker process`; killed when dropped.
pub struct Worker {
    child: Child,
    pub log: PathBuf,
    /// Its HTTP port (`/metrics`, `/readyz`), read from the config.
    pub port: Option<u16>,
    _dir: PathBuf,
}

impl Worker {
    /// Writes `config` (YAML) to a file and starts the binary on it, on an HTTP port of its
    /// own: two workers started from one config must not share one.
    pub fn start(config_yaml: &str) -> Self {
        let config_yaml: String = config_yaml
            .lines()
            .map(|line| match line.split_once("listen: 127.0.0.1:") {
                Some((indent, _)) => format!("{indent}listen: 127.0.0.1:{}\n", free_port()),
                None => format!("{line}\n"),
            })
            .collect();
        let dir = std::env::temp_dir().join(unique("worker"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::File::create(&config)
            .unwrap()
            .write_all(config_yaml.as_bytes())
            .unwrap();
        let log = dir.join("worker.log");
        let args = ["--log-format", "pretty", "process", "--config"].map(std::ffi::OsStr::new);
        let child = crate::oracle::spawn_worker(
            &[&args[..], &[config.as_os_str()]].concat(),
            &[("RUST_LOG", "info,ferry_worker=debug")],
            &log,
        );
        let port = config_yaml
            .lines()
            .find_map(|line| line.trim().strip_prefix("listen: 127.0.0.1:"))
            .and_then(|port| port.trim().parse().ok());
        Self {
            child,
            log,
            port,
            _dir: dir,
        }
    }

    /// One series of its `/metrics`, summed over labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::oracle::metric(self.port?, name)
    }

    /// SIGSTOP: frozen, with its sessions open.
    pub fn sigstop(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    pub fn sigcont(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the worker exited: it should run until stopped.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("ferry-worker exited with {status}:\n{}", self.log_text());
        }
    }

    /// SIGKILL: a crash, with no chance to commit anything.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferry-worker did not stop on SIGTERM:\n{}", self.log_text());
    }

    pub fn wait_exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, self.log_text());
            }
            if Instant::now() > deadline {
                panic!("ferry-worker did not exit:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A processor config; `stage` is the YAML of `stage.processor` indented by four spaces.
pub fn processor_config(
    stack: &Stack,
    topic: &str,
    group: &str,
    prefix: &str,
    processor: &str,
) -> String {
    format!(
        r#"pipeline: test
kafka:
  bootstrap_servers: {kafka}
  topic: {topic}
  consumer_group: {group}
redis:
  url: {redis}
  key_prefix: {prefix}
format: json
http:
  listen: 127.0.0.1:{port}
stage:
  processor:
{processor}
"#,
        kafka = stack.kafka,
        redis = stack.redis_url,
        port = free_port(),
    )
}

/// Polls `check` until it returns Some, failing with the worker's log after `timeout`.
pub async fn eventually<T, F, Fut>(worker: &mut Worker, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        worker.assert_running();
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "condition not met within {timeout:?}; worker log:\n{}",
                worker.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
