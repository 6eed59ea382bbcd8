//! What every list head must be once a contender has drained the topic: reads the topic
//! from the beginning to the high watermarks taken at start and writes, per key, the last
//! value (hex) in offset order to `--out FILE`. Also counts records and their average
//! size. (The bare-consumer limit in the table is the worker's own
//! `worker/benches/bare_consume.rs`, not this.) Prints one JSON line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ferry_bench_tools::{Args, die};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const USAGE: &str =
    "bench-last-per-key --bootstrap HOST:PORT --topic T --out FILE [--timeout-s 300]";

fn main() {
    let args = Args::parse(USAGE);
    let bootstrap = args.str("bootstrap", None);
    let topic = args.str("topic", None);
    let last_file = Some(args.str("out", None));
    let timeout = Duration::from_secs(args.num("timeout-s", Some("300")));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("ferry-bench-heads-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .create()
        .unwrap_or_else(|e| die(&format!("consumer: {e}")));
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap_or_else(|e| die(&format!("metadata: {e}")));
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        die(&format!("topic {topic} has no partitions"));
    }
    let mut high: HashMap<i32, i64> = HashMap::new();
    let mut expected: i64 = 0;
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        let (low, hi) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| die(&format!("watermarks: {e}")));
        expected += hi - low;
        if hi > low {
            high.insert(p, hi);
            list.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap_or_else(|e| die(&format!("assign: {e}")));
        }
    }
    consumer
        .assign(&list)
        .unwrap_or_else(|e| die(&format!("assign: {e}")));

    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    let mut last: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    while !high.is_empty() {
        if started.elapsed() > timeout {
            die(&format!("timed out after {count} records"));
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.unwrap_or_else(|e| die(&format!("consume: {e}")));
        first.get_or_insert_with(Instant::now);
        count += 1;
        let payload = message.payload().unwrap_or_default();
        bytes += payload.len() as u64;
        if last_file.is_some() {
            last.insert(
                message.key().unwrap_or_default().to_vec(),
                payload.to_vec(),
            );
        }
        let partition = message.partition();
        if high
            .get(&partition)
            .is_some_and(|&hi| message.offset() + 1 >= hi)
        {
            high.remove(&partition);
        }
    }
    let done = Instant::now();
    let seconds = done.duration_since(started).as_secs_f64();
    let active = first.map_or(0.0, |f| done.duration_since(f).as_secs_f64());
    if let Some(path) = last_file {
        let mut text = String::with_capacity(last.len() * 160);
        let mut keys: Vec<_> = last.keys().cloned().collect();
        keys.sort();
        for key in keys {
            text.push_str(&String::from_utf8_lossy(&key));
            text.push('\t');
            for b in &last[&key] {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }
    println!(
        "{{\"records\": {count}, \"expected\": {expected}, \"value_bytes_avg\": {:.1}, \
         \"seconds\": {seconds:.3}, \"active_seconds\": {active:.3}, \"records_per_s\": {:.0}}}",
        bytes as f64 / count.max(1) as f64,
        count as f64 / active.max(1e-9)
    );
}
