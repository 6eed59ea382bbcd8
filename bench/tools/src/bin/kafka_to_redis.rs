//! The latency limit for this job: a bare consumer that writes each record to Redis as
//! soon as it is read. No decoding, no transaction, no checkpoint, no offset commits: per
//! record `LPUSH ferry:list:<kafka key> <value>` and `LTRIM … 0 depth-1`, sent the moment
//! librdkafka has nothing more to hand over (whatever it already holds goes in the same
//! write, so it keeps up with a backlog), without waiting for the previous write's replies
//! (another thread reads them). Consumer settings are the receiver's own prefetch settings
//! (`ferry_worker::consume::apply_fetch_tuning`, copied here). Runs until killed.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

use ferry_bench_tools::{Args, Value, die, encode, read_value};

const USAGE: &str = "bench-kafka-to-redis --bootstrap HOST:PORT --topic T --group G \
                     --redis HOST:PORT [--db 9] [--prefix ferry:list:] [--depth 100] \
                     [--max-batch 2000] [--max-in-flight 20000] [--rdkafka k=v,k=v]";

fn main() {
    let args = Args::parse(USAGE);
    let bootstrap = args.str("bootstrap", None);
    let topic = args.str("topic", None);
    let group = args.str("group", None);
    let addr = args.str("redis", None);
    let db: u32 = args.num("db", Some("9"));
    let prefix = args.str("prefix", Some("ferry:list:"));
    let depth: u64 = args.num("depth", Some("100"));
    let max_batch: u64 = args.num("max-batch", Some("2000"));
    let max_in_flight: u64 = args.num("max-in-flight", Some("20000"));

    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .set("fetch.queue.backoff.ms", "20");
    // Experiments (bench/README.md, "Latency settings"): librdkafka settings to try.
    for pair in args.opt("rdkafka").unwrap_or_default().split(',') {
        if let Some((key, value)) = pair.split_once('=') {
            config.set(key, value);
        }
    }
    let consumer: BaseConsumer = config
        .create()
        .unwrap_or_else(|e| die(&format!("consumer: {e}")));
    consumer
        .subscribe(&[&topic])
        .unwrap_or_else(|e| die(&format!("subscribe: {e}")));

    // Replies are read on their own thread, so writing never waits for a round trip; the
    // records written and not yet answered stay under --max-in-flight.
    let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| die(&format!("redis: {e}")));
    stream.set_nodelay(true).unwrap_or_else(|e| die(&format!("redis: {e}")));
    let replies = stream.try_clone().unwrap_or_else(|e| die(&format!("redis: {e}")));
    let answered = Arc::new(AtomicU64::new(0));
    let mut out = Vec::with_capacity(1 << 20);
    let db = db.to_string();
    encode(&mut out, &[b"SELECT", db.as_bytes()]);
    stream.write_all(&out).unwrap_or_else(|e| die(&format!("redis write: {e}")));
    out.clear();
    {
        let answered = Arc::clone(&answered);
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, replies);
            // SELECT's reply, then two per record.
            let mut replies = 0u64;
            loop {
                match read_value(&mut reader) {
                    Ok(Value::Error(e)) => die(&format!("redis: {e}")),
                    Ok(_) => {}
                    Err(e) => die(&format!("redis read: {e}")),
                }
                replies += 1;
                if replies > 1 && replies % 2 == 1 {
                    answered.fetch_add(1, Ordering::Release);
                }
            }
        });
    }

    let stop = depth.saturating_sub(1).to_string();
    let mut key = Vec::new();
    let mut written = 0u64;
    loop {
        let mut pending = 0u64;
        let mut wait = Duration::from_millis(100);
        while pending < max_batch {
            match consumer.poll(wait) {
                Some(Ok(message)) => {
                    key.clear();
                    key.extend_from_slice(prefix.as_bytes());
                    key.extend_from_slice(message.key().unwrap_or_default());
                    let value = message.payload().unwrap_or_default();
                    encode(&mut out, &[b"LPUSH", &key, value]);
                    encode(&mut out, &[b"LTRIM", &key, b"0", stop.as_bytes()]);
                    pending += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(error)) => eprintln!("bench-kafka-to-redis: {error}"),
                None => break,
            }
        }
        if pending == 0 {
            continue;
        }
        while written - answered.load(Ordering::Acquire) > max_in_flight {
            std::thread::sleep(Duration::from_micros(100));
        }
        stream
            .write_all(&out)
            .unwrap_or_else(|e| die(&format!("redis write: {e}")));
        out.clear();
        written += pending;
    }
}
