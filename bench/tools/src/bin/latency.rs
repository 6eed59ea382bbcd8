//! End-to-end latency, produce to visible in Redis, on a sample of keys.
//!
//! Method: Redis keyspace notifications (`notify-keyspace-events` gets `K` and `l` for the
//! run and its old value back afterwards) tell that a sampled key's list changed; the tool
//! then reads the list heads of every key notified so far in one pipelined round
//! (`LRANGE key 0 15`, then `16 199` only if all 16 were new) and, for every value not seen
//! before, takes `time the reply arrived − the record's own dsdata timestamp`, which the
//! simulator sets to the wall clock when it creates the record. Same machine, same clock.
//! The reply time is an upper bound on when a value became visible (by the round's length,
//! well under a millisecond on loopback); one round per key and notification instead fell
//! behind records that each change a list (thousands of notifications a second) and then
//! measured its own queue.
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
    let mut changed: Vec<String> = Vec::new();
    // The newest timestamp of a key whose older values are still to be read.
    let mut heads: HashMap<String, i64> = HashMap::new();
    'watch: while now_ms_f64() < until_ms + 2000.0 {
        // One notification (waiting for it), then every one already received: the keys
        // are read once per round, so the tool keeps up however often they change.
        changed.clear();
        loop {
            let message = match sub.read() {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => {
                    failure = Some(format!("subscription: {e}"));
                    break 'watch;
                }
            };
            if let Value::Array(Some(items)) = message
                && items.len() == 3
                && bulk(&items[0]) == Some(b"message")
                && matches!(bulk(&items[2]), Some(b"lpush" | b"rpush"))
            {
                let channel = String::from_utf8_lossy(bulk(&items[1]).unwrap_or_default());
                if let Some(key) = channel.strip_prefix(&channel_prefix) {
                    notifications += 1;
                    if !changed.iter().any(|k| k == key) {
                        changed.push(key.to_owned());
                    }
                }
            }
            if sub.buffered() == 0 {
                break;
            }
        }
        if changed.is_empty() {
            continue;
        }
        // The newest 16 values of each changed key first; the rest only if all 16 are new.
        let mut pending: Vec<(String, &[u8], &[u8])> =
            changed.iter().map(|k| (k.clone(), &b"0"[..], &b"15"[..])).collect();
        while !pending.is_empty() {
            for (key, from, to) in &pending {
                conn.push(&[b"LRANGE", key.as_bytes(), from, to]);
            }
            if let Err(e) = conn.flush() {
                failure = Some(format!("LRANGE: {e}"));
                break 'watch;
            }
            let mut replies = Vec::with_capacity(pending.len());
            for (key, _, _) in &pending {
                match conn.read() {
                    Ok(Value::Array(Some(values))) => replies.push(values),
                    other => {
                        failure = Some(format!("LRANGE {key}: {other:?}"));
                        break 'watch;
                    }
                }
            }
            // Every value read was visible by now: an upper bound on when it became so.
            let seen_ms = now_ms_f64();
            let mut more = Vec::new();
            for ((key, from, _), values) in pending.iter().zip(replies) {
                let seen_before = last.get(key).copied().unwrap_or(i64::MIN);
                let mut newest = seen_before;
                let mut all_new = !values.is_empty();
                for value in &values {
                    let Some(ts) = bulk(value).and_then(dsdata_timestamp_ms) else { continue };
                    if ts > seen_before {
                        newest = newest.max(ts);
                        let ts_f = ts as f64;
                        if ts_f >= from_ms && ts_f < until_ms {
                            samples.push(seen_ms - ts_f);
                        }
                    } else {
                        all_new = false;
                    }
                }
                if *from == b"0" && all_new && values.len() == 16 {
                    // The older values are read next, against the same `seen_before`.
                    more.push((key.clone(), &b"16"[..], &b"199"[..]));
                    heads.insert(key.clone(), newest);
                } else {
                    let head = heads.remove(key).unwrap_or(newest);
                    last.insert(key.clone(), head.max(newest));
                }
            }
            pending = more;
        }
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
