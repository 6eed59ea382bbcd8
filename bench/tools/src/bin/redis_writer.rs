//! The Redis limit for this job: no Kafka, only the writes. Per record one
//! `LPUSH key value` and one `LTRIM key 0 depth-1`, keys round robin, pipelined a batch
//! at a time (one round trip per batch, as Ferry's receiver does), no MULTI. Values are
//! dsdata records of the same size as the topic's. Prints one JSON line.

use std::time::Instant;

use ferry_bench_tools::{Args, Resp, Value, die, dsdata_encode};

const USAGE: &str = "bench-redis-writer --redis HOST:PORT [--db 9] [--prefix ferry:list:] \
                     [--records 2000000] [--keys 1000] [--batch 500] [--depth 100] [--floats 4] \
                     [--text-bytes 8]";

fn main() {
    let args = Args::parse(USAGE);
    let addr = args.str("redis", None);
    let db: u32 = args.num("db", Some("9"));
    let prefix = args.str("prefix", Some("ferry:list:"));
    let records: u64 = args.num("records", Some("2000000"));
    let keys: u64 = args.num("keys", Some("1000"));
    let batch: u64 = args.num("batch", Some("500"));
    let depth: u64 = args.num("depth", Some("100"));
    let floats: usize = args.num("floats", Some("4"));
    let text_bytes: usize = args.num("text-bytes", Some("8"));

    let mut conn = Resp::connect(&addr, db).unwrap_or_else(|e| die(&format!("redis: {e}")));
    let key_names: Vec<Vec<u8>> = (0..keys)
        .map(|k| format!("{prefix}src-{k:04}").into_bytes())
        .collect();
    let text = "x".repeat(text_bytes);
    let values: Vec<f64> = (0..floats).map(|i| i as f64 * 0.5).collect();
    let stop = (depth.saturating_sub(1)).to_string();
    let mut value = Vec::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < records {
        let n = batch.min(records - sent);
        let ts = i64::try_from(started.elapsed().as_millis()).unwrap_or(0) + 1_700_000_000_000;
        for i in 0..n {
            let key = &key_names[((sent + i) % keys) as usize];
            dsdata_encode(ts, &values, &text, &mut value);
            conn.push(&[b"LPUSH", key, &value]);
            conn.push(&[b"LTRIM", key, b"0", stop.as_bytes()]);
        }
        conn.flush().unwrap_or_else(|e| die(&format!("redis write: {e}")));
        for _ in 0..2 * n {
            if let Value::Error(e) = conn.read().unwrap_or_else(|e| die(&format!("redis read: {e}"))) {
                die(&format!("redis: {e}"));
            }
        }
        sent += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {sent}, \"seconds\": {seconds:.3}, \"records_per_s\": {:.0}, \"value_bytes\": {}}}",
        sent as f64 / seconds,
        value.len()
    );
}
