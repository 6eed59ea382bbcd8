//! End-to-end latency, produce to visible in Redis, on a sample of keys.
//!
//! Method: Redis keyspace notifications (`notify-keyspace-events` gets `K` and `l` for the
//! run and its old value back afterwards) tell the moment a sampled key's list changes;
//! the tool then reads the list head (`LRANGE key 0 199`) and, for every value not seen
//! before, takes `notification time − the record's own dsdata timestamp`, which the
//! simulator sets to the wall clock when it creates the record. Same machine, same clock.
//! Records stamped before `--from-ms` (warm-up, group join) are skipped. Prints one JSON
//! line with the percentiles in milliseconds.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::Duration;

use ferry_bench_tools::{Args, Resp, Value, die, dsdata_timestamp_ms, now_ms_f64, percentile};

const USAGE: &str = "bench-latency --redis HOST:PORT --from-ms EPOCH_MS --duration-s S [--db 9] \
                     [--prefix ferry:list:] [--keys 20] [--key-space 1000]";

fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Bulk(Some(b)) => Some(b),
        _ => None,
    }
}

fn main() {
    let args = Args::parse(USAGE);
    let addr = args.str("redis", None);
    let db: u32 = args.num("db", Some("9"));
    let prefix = args.str("prefix", Some("ferry:list:"));
    let from_ms: f64 = args.num("from-ms", None);
    let duration_s: f64 = args.num("duration-s", None);
    let sample: u32 = args.num("keys", Some("20"));
    let key_space: u32 = args.num("key-space", Some("1000"));
    let until_ms = from_ms + duration_s * 1000.0;

    let mut conn = Resp::connect(&addr, db).unwrap_or_else(|e| die(&format!("redis: {e}")));
    let old_flags = match conn.call(&[b"CONFIG", b"GET", b"notify-keyspace-events"]) {
        Ok(Value::Array(Some(items))) if items.len() == 2 => {
            String::from_utf8_lossy(bulk(&items[1]).unwrap_or_default()).into_owned()
        }
        other => die(&format!("CONFIG GET notify-keyspace-events: {other:?}")),
    };
    let mut flags = old_flags.clone();
    for flag in ['K', 'l'] {
        if !flags.contains(flag) && !flags.contains('A') {
            flags.push(flag);
        }
    }
    conn.call(&[b"CONFIG", b"SET", b"notify-keyspace-events", flags.as_bytes()])
        .unwrap_or_else(|e| die(&format!("CONFIG SET: {e}")));

    let channel_prefix = format!("__keyspace@{db}__:");
    let stride = (key_space / sample.max(1)).max(1);
    let keys: Vec<String> = (0..sample)
        .map(|i| format!("{prefix}src-{:04}", i * stride))
        .collect();
    let mut sub = Resp::connect(&addr, 0).unwrap_or_else(|e| die(&format!("redis: {e}")));
    let mut subscribe: Vec<Vec<u8>> = vec![b"SUBSCRIBE".to_vec()];
    subscribe.extend(keys.iter().map(|k| format!("{channel_prefix}{k}").into_bytes()));
    let parts: Vec<&[u8]> = subscribe.iter().map(Vec::as_slice).collect();
    sub.push(&parts);
    sub.flush().unwrap_or_else(|e| die(&format!("SUBSCRIBE: {e}")));
    sub.set_read_timeout(Some(Duration::from_millis(500)));

    let mut last: HashMap<String, i64> = HashMap::new();
    let mut samples: Vec<f64> = Vec::with_capacity(200_000);
    let mut notifications = 0u64;
    let mut failure: Option<String> = None;
    while now_ms_f64() < until_ms + 2000.0 {
        let message = match sub.read() {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                failure = Some(format!("subscription: {e}"));
                break;
            }
        };
        let seen_ms = now_ms_f64();
        let Value::Array(Some(items)) = message else { continue };
        if items.len() != 3 || bulk(&items[0]) != Some(b"message") {
            continue;
        }
        let event = bulk(&items[2]).unwrap_or_default();
        if event != b"lpush" && event != b"rpush" {
            continue;
        }
        let channel = String::from_utf8_lossy(bulk(&items[1]).unwrap_or_default()).into_owned();
        let Some(key) = channel.strip_prefix(&channel_prefix) else { continue };
        notifications += 1;
        let values = match conn.call(&[b"LRANGE", key.as_bytes(), b"0", b"199"]) {
            Ok(Value::Array(Some(values))) => values,
            other => {
                failure = Some(format!("LRANGE {key}: {other:?}"));
                break;
            }
        };
        let seen_before = last.get(key).copied().unwrap_or(i64::MIN);
        let mut newest = seen_before;
        for value in &values {
            let Some(ts) = bulk(value).and_then(dsdata_timestamp_ms) else { continue };
            if ts > seen_before {
                newest = newest.max(ts);
                let ts_f = ts as f64;
                if ts_f >= from_ms && ts_f < until_ms {
                    samples.push(seen_ms - ts_f);
                }
            }
        }
        last.insert(key.to_owned(), newest);
    }
    let _ = conn.call(&[b"CONFIG", b"SET", b"notify-keyspace-events", old_flags.as_bytes()]);
    if let Some(failure) = failure {
        die(&failure);
    }
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    println!(
        "{{\"samples\": {}, \"notifications\": {notifications}, \"keys\": {}, \"p50_ms\": {:.2}, \
         \"p90_ms\": {:.2}, \"p99_ms\": {:.2}, \"p999_ms\": {:.2}, \"max_ms\": {:.2}, \"mean_ms\": {mean:.2}}}",
        samples.len(),
        keys.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        percentile(&samples, 99.9),
        samples.last().copied().unwrap_or(f64::NAN),
    );
}
