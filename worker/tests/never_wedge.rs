//! A stage never wedges in silence: faults a worker cannot get past by retrying, through the
//! real `ferry-worker` against the local Kafka and Redis.
//!
//! - A dead letter bigger than the dead-letter topic takes (1,100,000 bytes against Kafka's
//!   default `max.message.bytes` of 1,048,588) goes out as a stub: the headers, the first
//!   bytes and `ferry-truncated`; every partition keeps flowing.
//! - A dead-letter topic that does not exist is reported at start (`TopicMissing` in
//!   `/status`), and a record that must go there makes the stage unready with a
//!   `RecordUndeliverable` reason naming its partition and offset; once the topic exists
//!   the record goes out and the stage is ready again.
//! - A Redis user without the channel right Ferry needs (Redis 7: a new ACL user has no
//!   channel rights) is reported at start by the side-effect-free probe, naming `PUBLISH`
//!   and the channel; granting the right clears it and records flow.
//!
//! Needs the local stack (`make stack-up`); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use receiver_support::*;

/// The oversize record: keyed, not dsdata (so it is dead-lettered as `bad_magic`), and
/// over Kafka's default `max.message.bytes` (1,048,588) and librdkafka's producer default
/// `message.max.bytes` (1,000,000).
const OVERSIZE: usize = 1_100_000;

/// Kills a worker the test did not stop (a failed assertion), so no orphan outlives it.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

async fn create_topic_with(stack: &Stack, topic: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create()
        .unwrap();
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        new = new.set(key, value);
    }
    for result in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

fn big_producer(stack: &Stack) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap()
}

/// Sends one record to `partition`; returns its offset.
async fn send_to(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
) -> i64 {
    let delivered = producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    delivered.offset
}

/// Every record of `topic` within `timeout` (stops early once `want` are read).
fn read_all(stack: &Stack, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.detach());
        }
    }
    out
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `/status` as JSON, `None` when it does not answer with a JSON document.
fn status(port: u16) -> Option<serde_json::Value> {
    let (_, body) = oracle::http_get(port, "/status")?;
    serde_json::from_str(&body).ok()
}

/// The reasons `/status` lists, as `(reason, whole entry)`.
fn reasons(port: u16) -> Vec<(String, serde_json::Value)> {
    status(port)
        .and_then(|doc| doc.get("reasons")?.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r["reason"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

/// Waits until `check` holds on the worker's reasons; on timeout fails with what `/status`,
/// `/readyz` and the log's last lines said.
fn wait_reasons(
    worker: &Worker,
    what: &str,
    timeout: Duration,
    check: impl Fn(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = reasons(worker.port);
        if check(&found) {
            return found;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n/status: {:?}\n/readyz: {:?}\nlog tail (newest first):\n{}",
                oracle::http_get(worker.port, "/status"),
                worker.readyz(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_dead_letter_goes_out_as_a_stub_and_every_partition_keeps_flowing() {
    let stack = stack();
    let topic = unique("oversize");
    let dead_letters = unique("oversize-dlq");
    // The source takes the big record; the dead-letter topic keeps Kafka's default limit.
    create_topic_with(&stack, &topic, 2, &[("max.message.bytes", "2000000")]).await;
    create_topic_with(&stack, &dead_letters, 1, &[]).await;
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100_000,
            max_records: 200,
            extra: &format!("    dead_letter: {{topic: {dead_letters}}}\n"),
        },
    );
    let big: Vec<u8> = (0..OVERSIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let big_offset = send_to(&big_producer(&stack), &topic, 0, "src-big", &big).await;
    let produced = produce_keyed(&stack, &topic, 20, 1000).await;
    let mut last = produced.last_offsets.clone();
    let zero = last.entry(0).or_insert(big_offset);
    *zero = (*zero).max(big_offset);
    assert_eq!(last.len(), 2, "both partitions hold records: {last:?}");

    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    let flowed = receiver.try_wait_applied(&last, Duration::from_secs(60));
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    let retries = log.matches("batch not committed; retrying").count();
    assert!(
        flowed,
        "the partitions stopped: checkpoints {:?}, expected {last:?}; {retries} batch retries \
         logged, the last: {}",
        receiver.checkpoints(&[0, 1]),
        log.lines()
            .rev()
            .find(|l| l.contains("retrying"))
            .unwrap_or("none")
    );

    let stubs = read_all(&stack, &dead_letters, 1, Duration::from_secs(20));
    assert_eq!(stubs.len(), 1, "one dead letter");
    let stub = &stubs[0];
    let payload = stub.payload().unwrap_or_default();
    println!(
        "dead letter: {} of {OVERSIZE} bytes, key {:?}, ferry-reason {:?}, ferry-truncated {:?}, \
         source offset {:?}; {retries} batch retries",
        payload.len(),
        stub.key().map(String::from_utf8_lossy),
        header(stub, "ferry-reason"),
        header(stub, "ferry-truncated"),
        header(stub, "ferry-source-offset"),
    );
    assert_eq!(header(stub, "ferry-reason").as_deref(), Some("bad_magic"));
    assert_eq!(
        header(stub, "ferry-truncated").as_deref(),
        Some(OVERSIZE.to_string().as_str()),
        "the stub says how big the record was"
    );
    assert_eq!(
        header(stub, "ferry-source-offset"),
        Some(big_offset.to_string())
    );
    assert_eq!(header(stub, "ferry-source-partition").as_deref(), Some("0"));
    assert_eq!(stub.key(), Some(&b"src-big"[..]));
    assert!(!payload.is_empty() && payload.len() < 1_048_588);
    assert_eq!(
        payload,
        &big[..payload.len()],
        "the stub holds the first bytes"
    );
    receiver.assert_exact();
    worker.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dead_letter_topic_is_reported_and_the_wedged_record_named() {
    let stack = stack();
    let topic = unique("no-dlq");
    let dead_letters = unique("no-dlq-missing");
    create_topic_with(&stack, &topic, 2, &[]).await;
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100_000,
            max_records: 200,
            extra: &format!("    dead_letter: {{topic: {dead_letters}}}\n"),
        },
    );
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    let found = wait_reasons(
        &worker,
        "TopicMissing at start",
        Duration::from_secs(30),
        |r| {
            r.iter().any(|(reason, entry)| {
                reason == "TopicMissing"
                    && entry["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&dead_letters))
            })
        },
    );
    println!("at start: {found:?}");

    let producer = big_producer(&stack);
    let bad_offset = send_to(&producer, &topic, 1, "src-bad", b"not dsdata").await;
    let found = wait_reasons(
        &worker,
        "RecordUndeliverable naming partition 1 and the offset",
        Duration::from_secs(60),
        |r| {
            r.iter().any(|(reason, entry)| {
                reason == "RecordUndeliverable"
                    && entry["partition"].as_i64() == Some(1)
                    && entry["offset"].as_i64() == Some(bad_offset)
            })
        },
    );
    println!("wedged: {found:?}");
    let (code, body) = worker.readyz().unwrap();
    println!("/readyz: {code} {body}");
    assert_eq!(code, 503, "a wedged stage is unready");
    assert!(body.contains(&format!("offset {bad_offset}")), "{body}");

    // Only partition 1 waits: records on partition 0 reach Redis while it is wedged.
    let mut last_zero = -1;
    for sequence in 0..50 {
        let payload = value("src-flowing", sequence, now_ms());
        last_zero = send_to(&producer, &topic, 0, "src-flowing", &payload).await;
    }
    let flowing = receiver.try_wait_applied(
        &std::collections::BTreeMap::from([(0, last_zero)]),
        Duration::from_secs(30),
    );
    println!(
        "partition 0 while partition 1 is wedged: applied through {last_zero}: {flowing}; \
         checkpoints {:?}",
        receiver.checkpoints(&[0, 1])
    );
    assert!(
        flowing,
        "partition 0 must keep flowing while partition 1 waits"
    );
    let still = reasons(worker.port);
    assert!(
        still
            .iter()
            .any(|(reason, entry)| reason == "RecordUndeliverable"
                && entry["partition"].as_i64() == Some(1)),
        "partition 1 is still named: {still:?}"
    );

    // The topic appears: the record goes out, the reasons clear, the partition moves on.
    create_topic_with(&stack, &dead_letters, 1, &[]).await;
    let produced = produce_keyed(&stack, &topic, 10, 200).await;
    let mut last = produced.last_offsets.clone();
    let one = last.entry(1).or_insert(bad_offset);
    *one = (*one).max(bad_offset);
    receiver.wait_applied(&last, Duration::from_secs(90));
    wait_reasons(
        &worker,
        "the reasons to clear",
        Duration::from_secs(60),
        |r| r.is_empty(),
    );
    assert_eq!(worker.readyz().map(|(code, _)| code), Some(200));
    let dead = read_all(&stack, &dead_letters, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "ferry-source-offset"),
        Some(bad_offset.to_string())
    );
    receiver.assert_exact();
    worker.terminate();
}

/// A private ACL user on the stack's Redis, deleted when dropped.
struct AclUser {
    redis: String,
    name: String,
}

impl AclUser {
    fn create(redis: &str, rules: &[&str]) -> Self {
        let name = unique("ferry-acl");
        let user = Self {
            redis: redis.to_owned(),
            name,
        };
        user.set(rules);
        user
    }

    fn set(&self, rules: &[&str]) {
        let mut connection = redis::Client::open(self.redis.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(rules)
            .query(&mut connection)
            .unwrap();
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut connection) =
            redis::Client::open(self.redis.as_str()).and_then(|client| client.get_connection())
        {
            let _: Result<i64, _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query(&mut connection);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_user_without_channel_rights_is_reported_at_start_naming_the_right() {
    let stack = stack();
    let topic = unique("acl");
    create_topic_with(&stack, &topic, 2, &[]).await;
    // Redis 7: without `&…` (or `allchannels`) a new user may not PUBLISH anywhere.
    let user = AclUser::create(&stack.redis, &["on", ">probe-password", "~*", "+@all"]);
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100_000,
            max_records: 200,
            extra: "",
        },
    );
    // The harness's config with the ACL user in its redis section.
    let config = std::fs::read_to_string(&receiver.config).unwrap().replace(
        &format!("key_prefix: {}}}", receiver.prefix),
        &format!(
            "key_prefix: {}, username: {}, password_env: FERRY_REDIS_PASSWORD}}",
            receiver.prefix, user.name
        ),
    );
    assert!(config.contains("password_env"), "{config}");
    std::fs::write(&receiver.config, config).unwrap();
    receiver.env.push((
        "FERRY_REDIS_PASSWORD".to_owned(),
        "probe-password".to_owned(),
    ));
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    let channel = format!("{}:events", receiver.prefix);
    let found = wait_reasons(
        &worker,
        "RedisPermissionDenied naming PUBLISH and the channel",
        Duration::from_secs(30),
        |r| {
            r.iter().any(|(reason, entry)| {
                reason == "RedisPermissionDenied"
                    && entry["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("PUBLISH") && m.contains(&channel))
            })
        },
    );
    println!("at start: {found:?}");
    let (code, body) = worker.readyz().unwrap();
    println!("/readyz: {code} {body}");
    assert_eq!(code, 503);
    let text = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert!(
        !text.contains("probe-password"),
        "the password is never logged"
    );

    // Granted the channel: the probe passes and records flow.
    user.set(&[&format!("&{channel}")]);
    let produced = produce_keyed(&stack, &topic, 10, 300).await;
    receiver.wait_applied(&produced.last_offsets, Duration::from_secs(90));
    wait_reasons(
        &worker,
        "the reason to clear",
        Duration::from_secs(30),
        |r| r.is_empty(),
    );
    receiver.assert_exact();
    worker.terminate();
}

/// The least-privilege ACL the README gives for a `list` receiver is enough: read from the
/// README itself (its `keyPrefix: shop` replaced by the test's), the probe passes and every
/// record is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_acl_is_enough_for_a_list_receiver() {
    let stack = stack();
    let topic = unique("acl-readme");
    create_topic_with(&stack, &topic, 2, &[]).await;
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            storage: "list",
            depth: 100_000,
            max_records: 200,
            extra: "",
        },
    );
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let rule = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER ferry on >PASSWORD "))
        .expect("the README's ACL example");
    let prefix = &receiver.prefix;
    let rules: Vec<String> = rule
        .split_whitespace()
        .skip(3)
        .map(|word| match word {
            ">PASSWORD" => ">readme-password".to_owned(),
            "~shop:*" => format!("~{prefix}:*"),
            "&shop:events" => format!("&{prefix}:events"),
            other => other.to_owned(),
        })
        .collect();
    println!("the README's rules, for this prefix: {}", rules.join(" "));
    let user = AclUser::create(
        &stack.redis,
        &rules.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let config = std::fs::read_to_string(&receiver.config).unwrap().replace(
        &format!("key_prefix: {prefix}}}"),
        &format!(
            "key_prefix: {prefix}, username: {}, password_env: FERRY_REDIS_PASSWORD}}",
            user.name
        ),
    );
    std::fs::write(&receiver.config, config).unwrap();
    receiver.env.push((
        "FERRY_REDIS_PASSWORD".to_owned(),
        "readme-password".to_owned(),
    ));
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    let produced = produce_keyed(&stack, &topic, 10, 300).await;
    receiver.wait_applied(&produced.last_offsets, Duration::from_secs(90));
    assert!(
        reasons(worker.port).is_empty(),
        "{:?}",
        reasons(worker.port)
    );
    receiver.assert_exact();
    worker.terminate();
}
