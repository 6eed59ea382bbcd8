//! Redis as the source of truth for position (exactly-once, part 2): faults that move what
//! Kafka or Redis holds under a running receiver. Each compares Redis with the oracle (what
//! every key must hold, derived from the Kafka log; the depth is above the records per key, so
//! a loss or a duplicate shows) and reports a row of `make test-faults`' table.
//!
//! - the topic deleted and created again: its new records sit at offsets at or below the old
//!   checkpoints, which a bare-offset checkpoint filters for good;
//! - Redis SIGKILLed without persistence, restarted empty, under a running receiver and
//!   again before a receiver starts: Kafka's committed offsets are ahead of what Redis holds;
//! - an asynchronous replica promoted after writes it never received (a proxy moves the
//!   receiver's connection to it, as a Service would);
//! - a partition added to a running topic read with `latest`.
//!
//! Size: `FERRY_FAULT_RECORDS` (small by default, for `make test`; `make test-faults` runs
//! 200,000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod faults_support;
mod oracle;
mod receiver_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use faults_support::*;
use oracle::{SourceRecord, Verdict};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use receiver_support::*;

fn spec<'a>(topic: &'a str, redis_url: &'a str, depth: u32) -> ReceiverSpec<'a> {
    ReceiverSpec {
        topic,
        redis_url,
        format: "dsdata",
        storage: "list",
        depth,
        max_records: 200,
        extra: "",
    }
}

fn admin(stack: &Stack) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create()
        .expect("admin client")
}

/// The oracle's verdict on `receiver`'s keys against `source`.
fn verdict_of(receiver: &Receiver, source: &[SourceRecord]) -> Verdict {
    oracle::check_storage(
        &receiver.redis_url,
        &receiver.prefix,
        receiver.storage,
        receiver.depth,
        receiver.format,
        source,
    )
}

/// Polls until Redis holds exactly what `source` says, or `timeout`: the last verdict.
async fn settle(receiver: &Receiver, source: &[SourceRecord], timeout: Duration) -> Verdict {
    let deadline = Instant::now() + timeout;
    loop {
        let verdict = verdict_of(receiver, source);
        if verdict.is_exact() || Instant::now() >= deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn recreate_topic(stack: &Stack, topic: &str, partitions: i32) {
    ferry_test_support::recreate_topic(&stack.kafka, topic, partitions).await;
}

fn finish(fault: &str, receiver: &Receiver, verdict: &Verdict, worker: Worker, note: &str) {
    let peak = hwm_kb(worker.child.id());
    assert!(worker.terminate().success());
    eprintln!("{verdict}");
    report(fault, verdict, peak, note);
    verdict.assert_exact(&receiver.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_deleted_and_created_again_under_a_running_receiver_stores_every_new_record() {
    let stack = stack();
    let topic = unique("recreated");
    let count = records(1200);
    let (keys, depth) = keys_and_depth(count * 4 / 3);
    create_topic(&stack, &topic, 2).await;
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, depth));
    let worker = receiver.start();
    let first = produce_sequences(&stack, &topic, keys, 0..count, 0.0).await;
    receiver.wait_applied(&first.last_offsets, Duration::from_secs(240));
    let old_log = oracle::read_source(&stack.kafka, &topic);

    recreate_topic(&stack, &topic, 2).await;
    // A third as many: offsets below the old checkpoints.
    let second = produce_sequences(&stack, &topic, keys, count..count * 4 / 3, 0.0).await;
    let new_log = oracle::read_source(&stack.kafka, &topic);
    assert_eq!(new_log.len(), second.total());
    let both: Vec<SourceRecord> = old_log.into_iter().chain(new_log).collect();
    let verdict = settle(&receiver, &both, Duration::from_secs(180)).await;
    let recreated = worker
        .metric("ferry_position_events_total")
        .unwrap_or_default();
    // The status channel names it too, for the Pipeline's condition (docs/status-channel.md).
    let status = worker.status().unwrap_or_default();
    assert!(
        ["TopicRecreated", "OffsetsWentBack"]
            .iter()
            .any(|reason| status.contains(&format!("\"reason\":\"{reason}\""))),
        "/status names the position event: {status}"
    );
    finish(
        "topic deleted and created again under a running receiver",
        &receiver,
        &verdict,
        worker,
        &format!("{recreated} position events"),
    );
    assert!(recreated >= 1.0, "the re-created topic is reported");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_without_persistence_is_refilled_from_kafka_running_and_at_start() {
    let shared = stack();
    let mut redis = PrivateRedis::start(&[]);
    let topic = unique("redis-empty");
    let count = records(2000);
    let (keys, depth) = keys_and_depth(count * 6 / 5);
    create_topic(&shared, &topic, 4).await;
    let stack = Stack {
        kafka: shared.kafka.clone(),
        redis: redis.url.clone(),
    };
    let mut receiver = Receiver::new(&stack, spec(&topic, &redis.url, depth));
    let worker = receiver.start();
    let first = produce_sequences(&stack, &topic, keys, 0..count, 0.0).await;
    receiver.wait_applied(&first.last_offsets, Duration::from_secs(240));

    // Running: Redis comes back empty while the receiver's position is past everything.
    redis.sigkill();
    redis.restart();
    let second = produce_sequences(&stack, &topic, keys, count..count * 6 / 5, 0.0).await;
    let log = oracle::read_source(&stack.kafka, &topic);
    assert_eq!(log.len(), first.total() + second.total());
    let running = settle(&receiver, &log, Duration::from_secs(240)).await;
    eprintln!("after Redis restarted empty under the receiver: {running}");
    let rewinds = worker
        .metric("ferry_position_events_total")
        .unwrap_or_default();
    assert!(worker.terminate().success());
    running.assert_exact(&receiver.dir);

    // At start: Redis empty again, and the group's commits name this data set's epoch.
    redis.sigkill();
    redis.restart();
    let worker = receiver.start();
    let at_start = settle(&receiver, &log, Duration::from_secs(240)).await;
    finish(
        "Redis SIGKILLed without persistence, restarted empty (running, then at start)",
        &receiver,
        &at_start,
        worker,
        &format!("{rewinds} position events while running"),
    );
}

/// A loopback TCP proxy whose target port can move, dropping every open connection when it
/// does: what a Service or a Sentinel-aware address does at a failover.
struct Proxy {
    port: u16,
    target: Arc<AtomicU16>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            target: Arc::new(AtomicU16::new(target)),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let (target, generation) = (Arc::clone(&proxy.target), Arc::clone(&proxy.generation));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (target, generation) = (Arc::clone(&target), Arc::clone(&generation));
                tokio::spawn(async move {
                    let born = generation.load(Ordering::SeqCst);
                    let port = target.load(Ordering::SeqCst);
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let moved = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = moved => {}
                    }
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn move_to(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn replication_offset(redis: &PrivateRedis, field: &str) -> Option<i64> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut redis.connection())
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_asynchronous_replica_has_its_lost_range_replayed() {
    let shared = stack();
    let mut primary = PrivateRedis::start(&[]);
    let primary_port = primary.port.to_string();
    let replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &primary_port]);
    let proxy = Proxy::start(primary.port).await;
    let topic = unique("promoted");
    let count = records(3000);
    let (keys, depth) = keys_and_depth(count * 7 / 6);
    create_topic(&shared, &topic, 4).await;
    let stack = Stack {
        kafka: shared.kafka.clone(),
        redis: proxy.url(),
    };
    let url = proxy.url();
    let mut receiver = Receiver::new(&stack, spec(&topic, &url, depth));
    let worker = receiver.start();
    let half = count / 2;
    let first = produce_sequences(&stack, &topic, keys, 0..half, 0.0).await;
    receiver.wait_applied(&first.last_offsets, Duration::from_secs(240));
    let deadline = Instant::now() + Duration::from_secs(30);
    while replication_offset(&replica, "slave_repl_offset")
        < replication_offset(&primary, "master_repl_offset")
    {
        assert!(Instant::now() < deadline, "the replica does not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The link breaks (the replica now follows a primary it cannot reach, and keeps its
    // data): the primary acknowledges more, then dies. A SIGSTOPped replica would not do:
    // the stream waits in its socket buffer and arrives when it resumes.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(free_port())
        .query(&mut replica.connection())
        .unwrap();
    let second = produce_sequences(&stack, &topic, keys, half..count, 0.0).await;
    receiver.wait_applied(&second.last_offsets, Duration::from_secs(240));
    primary.sigkill();
    let missing: Vec<Option<i64>> = {
        let keys: Vec<String> = (0..4).map(|p| receiver.checkpoint_key(p)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query(&mut replica.connection())
            .unwrap();
        values
            .iter()
            .map(|v| v.as_deref().and_then(checkpoint_offset))
            .collect()
    };
    eprintln!(
        "the replica's checkpoints {missing:?}, the primary had {:?}",
        second.last_offsets
    );
    assert!(
        missing
            .iter()
            .zip(second.last_offsets.values())
            .all(|(replica, last)| replica.is_some_and(|r| r < *last)),
        "the replica must miss the second range"
    );
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica.connection())
        .unwrap();
    proxy.move_to(replica.port);

    let third = produce_sequences(&stack, &topic, keys, count..count * 7 / 6, 0.0).await;
    let log = oracle::read_source(&stack.kafka, &topic);
    assert_eq!(log.len(), first.total() + second.total() + third.total());
    let verdict = settle(&receiver, &log, Duration::from_secs(240)).await;
    let events = worker
        .metric("ferry_position_events_total")
        .unwrap_or_default();
    finish(
        "asynchronous replica promoted after writes it never received",
        &receiver,
        &verdict,
        worker,
        &format!("{events} position events"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_added_to_a_running_topic_read_with_latest_has_its_first_records_stored() {
    let stack = stack();
    let topic = unique("grown");
    let count = records(1200);
    let (keys, depth) = keys_and_depth(count);
    create_topic(&stack, &topic, 2).await;
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, depth));
    receiver.env.push((
        "FERRY__KAFKA__AUTO_OFFSET_RESET".to_owned(),
        "latest".to_owned(),
    ));
    let worker = receiver.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.readyz().is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "the receiver is not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = produce_sequences(&stack, &topic, keys, 0..count / 3, 0.0).await;
    receiver.wait_applied(&first.last_offsets, Duration::from_secs(240));

    let new = [NewPartitions::new(&topic, 4)];
    for result in admin(&stack)
        .create_partitions(&new, &AdminOptions::new())
        .await
        .expect("create partitions")
    {
        result.expect("partitions added");
    }
    // Produced at once: before the receiver notices the new partitions.
    let second = produce_sequences(&stack, &topic, keys, count / 3..count, 0.0).await;
    assert!(
        second.last_offsets.keys().any(|p| *p >= 2),
        "records reached the new partitions: {:?}",
        second.last_offsets
    );
    let log = oracle::read_source(&stack.kafka, &topic);
    let verdict = settle(&receiver, &log, Duration::from_secs(120)).await;
    finish(
        "partitions added to a running topic read with latest",
        &receiver,
        &verdict,
        worker,
        "",
    );
}

/// Produces the records numbered `sequences` over `keys` keys, each stamped with the time it
/// is sent (Kafka record and payload alike), one at a time so times follow offsets.
async fn produce_stamped_now(
    stack: &Stack,
    topic: &str,
    keys: usize,
    sequences: std::ops::Range<usize>,
) -> Produced {
    use rdkafka::producer::FutureRecord;
    let producer = producer(stack);
    let mut produced = Produced::default();
    for sequence in sequences {
        let key = format!("src-{:04}", sequence % keys);
        let timestamp_ms = now_ms();
        let payload = value(&key, sequence, timestamp_ms);
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .timestamp(timestamp_ms);
        let (partition, offset) = producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|delivered| (delivered.partition, delivered.offset))
            .expect("delivered");
        *produced.per_key.entry(key).or_default() += 1;
        let last = produced.last_offsets.entry(partition).or_insert(-1);
        *last = (*last).max(offset);
    }
    produced
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_keeps_what_was_produced_after_the_pipeline_was_created_before_its_pods_ran() {
    let stack = stack();
    let topic = unique("latest-from");
    create_topic(&stack, &topic, 2).await;
    let before = produce_stamped_now(&stack, &topic, 20, 0..200).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The Pipeline is created now; its receiver starts only after more records came.
    let created_ms = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let while_starting = produce_stamped_now(&stack, &topic, 20, 200..400).await;
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, 1_000));
    receiver.env.extend([
        (
            "FERRY__KAFKA__AUTO_OFFSET_RESET".to_owned(),
            "latest".to_owned(),
        ),
        (
            "FERRY__KAFKA__LATEST_FROM_MS".to_owned(),
            created_ms.to_string(),
        ),
    ]);
    let worker = receiver.start();
    let after = produce_stamped_now(&stack, &topic, 20, 400..600).await;
    receiver.wait_applied(&after.last_offsets, Duration::from_secs(60));
    let since_creation: Vec<SourceRecord> = oracle::read_source(&stack.kafka, &topic)
        .into_iter()
        .filter(|record| record.kafka_timestamp_ms >= Some(created_ms))
        .collect();
    assert_eq!(
        since_creation.len(),
        while_starting.total() + after.total(),
        "{} records before the creation",
        before.total()
    );
    let verdict = verdict_of(&receiver, &since_creation);
    finish(
        "latest: records produced between the Pipeline's creation and its first pod",
        &receiver,
        &verdict,
        worker,
        "",
    );
}
