//! The baseline for the receiver benchmark: a bare rdkafka StreamConsumer reading a topic
//! and doing nothing with the records. Run by `benches/receiver.sh`:
//! `BENCH_TOPIC=t BENCH_COUNT=1000000 KAFKA_BOOTSTRAP=host:port cargo bench --bench bare_consume`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[tokio::main]
async fn main() {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").expect("KAFKA_BOOTSTRAP");
    let topic = std::env::var("BENCH_TOPIC").expect("BENCH_TOPIC");
    let count: u64 = std::env::var("BENCH_COUNT")
        .expect("BENCH_COUNT")
        .parse()
        .expect("a number");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("bare-consume-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    // The receiver's own prefetch settings: the limit is rdkafka as Ferry configures it.
    ferry_worker::consume::apply_fetch_tuning(&mut config);
    // Experiments: BENCH_RDKAFKA="key=value,key=value" adds librdkafka settings.
    for pair in std::env::var("BENCH_RDKAFKA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((key, value)) = pair.split_once('=') {
            config.set(key, value);
        }
    }
    let consumer: StreamConsumer = config.create().expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut seen = 0u64;
    let mut bytes = 0usize;
    let mut started = None;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                bytes += message.payload().map_or(0, <[u8]>::len);
                seen += 1;
            }
            Ok(Err(error)) => eprintln!("bare_consume: {error}"),
            Err(_) => break,
        }
    }
    let elapsed = started
        .map_or(Duration::ZERO, |s| s.elapsed())
        .as_secs_f64();
    println!(
        "bare_consume: {seen} records ({bytes} bytes) in {elapsed:.2} s: {:.0} records/s",
        seen as f64 / elapsed.max(1e-9)
    );
}
