//! Memory is bounded in bytes, not only in records: a backlog of the largest valid dsdata
//! records (4096 floats and a 4096-byte text: 36,880 bytes each) through a receiver at the
//! default batch settings must keep the worker's peak RSS under the pods' default memory
//! limit (256 MiB), with `stream` storage (every record's `XADD` in the transaction). Peak
//! RSS is the kernel's `VmHWM` of the worker process.
//!
//! Needs the local stack (`make stack-up`); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::time::{Duration, Instant};

use ferry_worker::record::{DataRecord, MAX_FLOATS, MAX_TEXT_BYTES, dsdata};
use rdkafka::producer::FutureRecord;
use receiver_support::*;

/// The pods' default memory limit (operator/src/controller/build.rs).
const LIMIT_MIB: f64 = 256.0;
const RECORDS: usize = 6000;
const KEYS: usize = 20;

/// Kills the worker when the test ends, pass or fail.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

/// The kernel's peak resident set of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_largest_records_at_default_batch_sizes_stay_under_the_memory_limit() {
    let stack = stack();
    let topic = unique("largest");
    create_topic(&stack, &topic, 3).await;
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format: "dsdata",
            // A stream keeps every record's XADD in the batch's commands: the most a
            // batch can weigh on its way into Redis.
            storage: "stream",
            depth: 100,
            max_records: 2000,
            extra: "",
        },
    );
    // The default batch: 2000 records, 50 ms.
    let config = std::fs::read_to_string(&receiver.config)
        .unwrap()
        .replace("max_wait: 20ms", "max_wait: 50ms");
    std::fs::write(&receiver.config, config).unwrap();

    let producer = producer(&stack);
    let text: String = "x".repeat(MAX_TEXT_BYTES);
    let mut pending = Vec::with_capacity(RECORDS);
    let mut last = std::collections::BTreeMap::new();
    for i in 0..RECORDS {
        let values: Vec<f64> = (0..MAX_FLOATS).map(|j| (i * j) as f64 * 0.5).collect();
        let payload = dsdata::encode(&DataRecord {
            timestamp_ms: now_ms() + i as i64,
            values,
            text: text.clone(),
        })
        .unwrap();
        assert_eq!(payload.len(), 36_880, "the largest valid dsdata record");
        let key = format!("big-{:02}", i % KEYS);
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        pending.push(ferry_test_support::enqueue(&producer, record).await);
    }
    for delivery in pending {
        let delivered = delivery.await.unwrap().expect("delivered");
        let offset = last.entry(delivered.partition).or_insert(-1);
        *offset = delivered.offset.max(*offset);
    }

    let worker = receiver.start();
    let pid = worker.child.id();
    let _reap = Reap(pid);
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    let deadline = started + Duration::from_secs(240);
    while !receiver.try_wait_applied(&last, Duration::from_millis(100)) {
        if let Some(rss) = peak_rss_mib(pid) {
            peak = peak.max(rss);
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain; logs in {}",
            receiver.dir.display()
        );
    }
    if let Some(rss) = peak_rss_mib(pid) {
        peak = peak.max(rss);
    }
    println!(
        "{RECORDS} records of 36,880 bytes ({:.0} MiB) drained in {:.1} s; worker peak RSS {peak:.1} MiB (limit {LIMIT_MIB} MiB)",
        (RECORDS * 36_880) as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    );
    // What the test wrote into the shared Redis goes again.
    let mut redis = receiver.redis();
    for k in 0..KEYS {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(format!("{}:stream:big-{k:02}", receiver.prefix))
            .query(&mut redis);
    }
    // And the 211 MiB topic, so runs do not fill the stack's disk.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka)
            .create()
            .unwrap();
    let _ = admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await;
    assert!(
        peak < LIMIT_MIB,
        "peak RSS {peak:.1} MiB is over the {LIMIT_MIB} MiB limit"
    );
}
