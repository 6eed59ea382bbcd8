//! What the operator's and the worker's integration tests share: the local stack's addresses
//! (`e2e/local/stack.sh` writes them to `$FERRY_STACK_DIR/env`), names no other run uses,
//! free ports and topic creation. The tests run against the real stack and never skip: a
//! missing address fails the test, saying how to start the stack.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// The stack's env file.
pub fn stack_env_file() -> PathBuf {
    let dir = std::env::var("FERRY_STACK_DIR").unwrap_or_else(|_| "/tmp/ferry-stack".to_owned());
    PathBuf::from(dir).join("env")
}

fn stack_file() -> &'static BTreeMap<String, String> {
    static FILE: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        std::fs::read_to_string(stack_env_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                line.strip_prefix("export ").unwrap_or(line).split_once('=')
            })
            .map(|(key, value)| {
                let value = value.trim().trim_matches('"').trim_matches('\'');
                (key.trim().to_owned(), value.to_owned())
            })
            .collect()
    })
}

/// A stack variable (`KAFKA_BOOTSTRAP`, `REDIS_URL`, `KUBECONFIG`, …): the environment's,
/// else the stack's env file's.
pub fn stack_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .or_else(|| stack_file().get(name).cloned())
}

/// [`stack_var`], failing the test (never skipping it) when the stack does not define it.
pub fn require_stack_var(name: &str) -> String {
    stack_var(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set and not in {}: start the local stack first \
             (make stack-up, or bash e2e/local/stack.sh up kafka redis)",
            stack_env_file().display()
        )
    })
}

/// A name no other test or run uses: `{prefix}-{time}-{random}`, lowercase hex, so it is
/// a valid topic, group, key and Kubernetes name part.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{prefix}-{nanos:x}-{:x}", rand::random::<u32>())
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Creates `topics` (name, partitions) with one replica, retrying for up to a minute while
/// the broker is not ready or still finishes deleting a topic of the same name.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<(&str, i32)> = topics.to_vec();
    while !pending.is_empty() {
        let new: Vec<NewTopic<'_>> = pending
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let failed: Vec<(String, RDKafkaErrorCode)> =
            match admin.create_topics(&new, &options).await {
                Ok(results) => results.into_iter().filter_map(Result::err).collect(),
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot create {pending:?}: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
        pending.retain(|(name, _)| failed.iter().any(|(failed, _)| failed == name));
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cannot create {pending:?}: {failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes `topic` and creates it again with `partitions` (retried while the broker still
/// finishes the deletion): a new incarnation whose offsets start at 0 again.
pub async fn recreate_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    for result in admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete topics")
    {
        result.expect("topic deleted");
    }
    create_topics(bootstrap, &[(topic, partitions)]).await;
}

/// The offset of a checkpoint value (`{offset}@{timestamp}`, or a bare `{offset}`).
pub fn checkpoint_offset(value: &str) -> Option<i64> {
    value.split('@').next()?.parse().ok()
}

/// Damages the first record batch of `topic`'s `partition` in the local stack's Kafka log:
/// its compression codec becomes 5, which no client knows, as a damaged disk or a producer
/// newer than the consumer leaves it. A real fault no consumer can read past (librdkafka
/// returns "not implemented" without advancing). Needs the stack's broker on this machine
/// (`$FERRY_STACK_DIR/kafka/data`) and the batch in the partition's first segment.
pub fn corrupt_first_batch(topic: &str, partition: i32) {
    use std::io::{Seek, SeekFrom, Write};
    let dir = stack_env_file()
        .parent()
        .expect("the env file sits in the stack dir")
        .join("kafka/data");
    let segment = dir
        .join(format!("{topic}-{partition}"))
        .join("00000000000000000000.log");
    let bytes =
        std::fs::read(&segment).unwrap_or_else(|error| panic!("{}: {error}", segment.display()));
    // Record batch v2: baseOffset (8), batchLength (4), partitionLeaderEpoch (4), magic (1)
    // at 16, crc (4), attributes (int16) at 21..23 with the codec in its low three bits.
    assert!(
        bytes.len() > 61 && bytes[16] == 2,
        "{}: not a v2 record batch",
        segment.display()
    );
    let attributes_low = (bytes[22] & !7) | 5;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("the segment opens for writing");
    file.seek(SeekFrom::Start(22)).expect("seek");
    file.write_all(&[attributes_low]).expect("write");
}

/// Queues `record` on `producer`, waiting while its queue is full; the delivery to await.
pub async fn enqueue<K, P>(
    producer: &rdkafka::producer::FutureProducer,
    mut record: rdkafka::producer::FutureRecord<'_, K, P>,
) -> rdkafka::producer::DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((_, returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Prints a fault run's result row (`FAULT ROW: …`) and appends it to `$FERRY_FAULT_REPORT`,
/// else to the tested checkout's `target/fault-report.tsv` (`make test-faults` gathers it).
pub fn report_fault_row(row: &str) {
    use std::io::Write;
    println!("FAULT ROW: {row}");
    let path = std::env::var("FERRY_FAULT_REPORT").map_or_else(
        |_| {
            // The test's package dir as cargo runs it (worker/ or operator/), not a path
            // compiled into this crate, which another clone sharing the target dir may have
            // built.
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
                .join("../target/fault-report.tsv")
        },
        PathBuf::from,
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{row}");
    }
}
