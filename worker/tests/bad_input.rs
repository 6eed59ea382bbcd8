//! Malformed records through the real stack: a deterministic corpus of well over a thousand
//! broken records (truncated, oversized, wrong types, invalid UTF-8, NaN and infinite
//! floats, ancient and future timestamps, huge, empty and missing keys, empty values,
//! wrong magic, version and flags...) interleaved with valid ones on a fresh topic, then
//! the real `ferry-worker receive` with a dead-letter topic and `max_age: 1h`.
//!
//! Every malformed record must come out of the dead-letter topic once, byte for byte, with
//! the `ferry-reason` its category predicts; every valid record must be in Redis exactly
//! once, in the order sent per key. Needs the local stack (`make stack-up`); fails, never
//! skips, without it.
//!
//! "Future timestamp" means more than `MAX_FUTURE_SKEW_MS` (5 minutes) ahead of the
//! receiver's clock when `max_age` is set: such a record would count as fresh for as long
//! as it likes, so it is refused as `future_timestamp`. A record a few minutes ahead (clock
//! skew) is stored. Without `max_age` the receiver does not judge time at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_worker::config::RecordFormat;
use ferry_worker::consume::receiver::MAX_FUTURE_SKEW_MS;
use ferry_worker::record::{DataRecord, MAX_FLOATS, MAX_KEY_BYTES, MAX_TEXT_BYTES, dsdata, json};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use receiver_support::*;

const HOUR_MS: i64 = 3_600_000;

/// Deterministic xorshift: the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One record to send: `reason` is `None` for a valid record.
#[derive(Clone)]
struct Sent {
    category: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: Option<&'static str>,
}

fn bad(category: &'static str, reason: &'static str, key: &[u8], value: Vec<u8>) -> Sent {
    Sent {
        category,
        key: Some(key.to_vec()),
        value: Some(value),
        reason: Some(reason),
    }
}

fn encode(timestamp_ms: i64, values: Vec<f64>, text: &str) -> Vec<u8> {
    dsdata::encode(&DataRecord {
        timestamp_ms,
        values,
        text: text.to_owned(),
    })
    .unwrap()
}

/// The header of a dsdata record by hand, for counts the encoder refuses to write.
fn raw_dsdata(timestamp_ms: i64, floats: &[u64], text: &[u8], count: u16, len: u16) -> Vec<u8> {
    let mut out = b"FD\x01\x00".to_vec();
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for bits in floats {
        out.extend_from_slice(&bits.to_le_bytes());
    }
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text);
    out
}

const INVALID_UTF8: [&[u8]; 8] = [
    b"\xff",
    b"abc\x80",
    b"\xc0\x80",         // overlong NUL
    b"\xed\xa0\x80",     // UTF-16 surrogate
    b"\xf4\x90\x80\x80", // above U+10FFFF
    b"ok\xe2\x82",       // cut inside a character
    b"\xfe\xfe\xff\xff",
    b"caf\xe9", // Latin-1, not UTF-8
];

/// The malformed dsdata corpus, about 1100 records, every category of fault.
fn malformed_dsdata(now: i64) -> Vec<Sent> {
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let key = b"src-bad";
    let good = encode(now, vec![1.0, -2.5, 3.25], "fine ✓");
    let mut out = Vec::new();

    // Truncated at every length, including the empty value.
    for len in 0..good.len() {
        out.push(bad("truncated", "truncated", key, good[..len].to_vec()));
    }
    for _ in 0..150 {
        let record = encode(
            now,
            vec![0.5; 1 + rng.below(40)],
            &"t".repeat(rng.below(200)),
        );
        let cut = rng.below(record.len());
        out.push(bad("truncated", "truncated", key, record[..cut].to_vec()));
    }
    // Float count or text length promising more bytes than there are.
    for _ in 0..40 {
        let count = 1 + rng.below(MAX_FLOATS) as u16;
        out.push(bad(
            "truncated",
            "truncated",
            key,
            raw_dsdata(now, &[0; 1], b"", count, 0),
        ));
        let len = 1 + rng.below(MAX_TEXT_BYTES) as u16;
        out.push(bad(
            "truncated",
            "truncated",
            key,
            raw_dsdata(now, &[], b"ab", 0, len),
        ));
    }
    // Wrong magic: other formats, random bytes, near misses.
    for value in [
        br#"{"ts": 1, "values": [1], "text": "json on a dsdata topic"}"#.to_vec(),
        b"FE\x01\x00".to_vec(),
        b"fd\x01\x00".to_vec(),
        b"DF\x01\x00".to_vec(),
        b"\x00\x00".to_vec(),
        b"\xef\xbb\xbfFD".to_vec(),
    ] {
        out.push(bad("wrong magic", "bad_magic", key, value));
    }
    for _ in 0..120 {
        let mut value = good.clone();
        value[0] = rng.next() as u8;
        value[1] = rng.next() as u8;
        if value[..2] == *b"FD" {
            value[0] = b'X';
        }
        out.push(bad("wrong magic", "bad_magic", key, value));
    }
    // Wrong version and reserved flags.
    for version in (0..=255u8).filter(|v| *v != dsdata::VERSION).step_by(3) {
        let mut value = good.clone();
        value[2] = version;
        out.push(bad("wrong version", "unsupported_version", key, value));
    }
    for flags in (1..=255u8).step_by(4) {
        let mut value = good.clone();
        value[3] = flags;
        out.push(bad("reserved flags", "reserved_flags", key, value));
    }
    // Trailing bytes.
    for extra in 1..=80 {
        let mut value = good.clone();
        value.extend((0..extra).map(|_| rng.next() as u8));
        out.push(bad("trailing bytes", "trailing_bytes", key, value));
    }
    // Invalid UTF-8 text.
    for (index, text) in INVALID_UTF8.iter().cycle().take(80).enumerate() {
        let mut bytes = "x".repeat(index % 7).into_bytes();
        bytes.extend_from_slice(text);
        let value = raw_dsdata(now, &[1f64.to_bits()], &bytes, 1, bytes.len() as u16);
        out.push(bad("invalid UTF-8 text", "invalid_utf8", key, value));
    }
    // NaN and infinities, quiet and signalling, anywhere among the values.
    let non_finite = [
        f64::NAN.to_bits(),
        (-f64::NAN).to_bits(),
        0x7ff0_0000_0000_0001, // signalling NaN
        0x7fff_ffff_ffff_ffff,
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
    ];
    for round in 0..150 {
        let count = 1 + rng.below(12);
        let mut floats: Vec<u64> = (0..count).map(|i| (i as f64).to_bits()).collect();
        let at = rng.below(count);
        floats[at] = non_finite[round % non_finite.len()];
        let value = raw_dsdata(now, &floats, b"nan", count as u16, 3);
        out.push(bad("NaN/inf float", "non_finite_float", key, value));
    }
    // Oversized: counts over the limits, with and without the bytes to back them.
    for count in [MAX_FLOATS + 1, MAX_FLOATS + 2, 10_000, 65_535] {
        out.push(bad(
            "too many floats",
            "too_many_floats",
            key,
            raw_dsdata(now, &[], b"", count as u16, 0),
        ));
    }
    let floats = vec![1f64.to_bits(); MAX_FLOATS + 1];
    out.push(bad(
        "too many floats",
        "too_many_floats",
        key,
        raw_dsdata(now, &floats, b"", floats.len() as u16, 0),
    ));
    for len in [MAX_TEXT_BYTES + 1, 5_000, 65_535] {
        let text = vec![b'a'; len];
        out.push(bad(
            "text too long",
            "text_too_long",
            key,
            raw_dsdata(now, &[], &text, 0, len as u16),
        ));
        out.push(bad(
            "text too long",
            "text_too_long",
            key,
            raw_dsdata(now, &[], b"", 0, len as u16),
        ));
    }
    // Ancient and future timestamps (max_age is 1h, the future allowance 5 minutes).
    for timestamp_ms in [
        i64::MIN,
        -1,
        0,
        1,
        now - 365 * 24 * HOUR_MS,
        now - 2 * HOUR_MS,
        now - HOUR_MS - 60_000,
    ] {
        out.push(bad(
            "ancient timestamp",
            "too_old",
            key,
            encode(timestamp_ms, vec![1.0], "old"),
        ));
    }
    for timestamp_ms in [
        i64::MAX,
        now + 100 * 365 * 24 * HOUR_MS,
        now + 24 * HOUR_MS,
        now + MAX_FUTURE_SKEW_MS + 10 * 60_000,
    ] {
        out.push(bad(
            "future timestamp",
            "future_timestamp",
            key,
            encode(timestamp_ms, vec![1.0], "future"),
        ));
    }
    // Keys: missing, empty, not UTF-8, huge.
    for _ in 0..20 {
        out.push(Sent {
            category: "missing key",
            key: None,
            value: Some(good.clone()),
            reason: Some("missing_key"),
        });
        out.push(bad("empty key", "missing_key", b"", good.clone()));
    }
    for text in INVALID_UTF8.iter().cycle().take(24) {
        out.push(bad("invalid UTF-8 key", "invalid_key", text, good.clone()));
    }
    for len in [MAX_KEY_BYTES + 1, 2_000, 10_000, 100_000] {
        out.push(bad(
            "huge key",
            "key_too_long",
            &vec![b'k'; len],
            good.clone(),
        ));
    }
    // Empty and null values.
    for _ in 0..20 {
        out.push(bad("empty value", "truncated", key, Vec::new()));
        out.push(Sent {
            category: "null value",
            key: Some(key.to_vec()),
            value: None,
            reason: Some("truncated"),
        });
    }
    // Random garbage, labelled by what the decoder must say about it.
    for _ in 0..100 {
        let len = rng.below(64);
        let value: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let reason = match dsdata::DsdataView::parse(&value) {
            Ok(_) => continue,
            Err(err) => err.reason().as_str(),
        };
        out.push(bad("random bytes", reason, key, value));
    }
    out
}

/// The malformed json corpus: syntax, wrong types, missing fields, limits, time.
fn malformed_json(now: i64) -> Vec<Sent> {
    let key = b"src-bad";
    let mut out = Vec::new();
    let mut push = |category, reason, text: String| {
        out.push(bad(category, reason, key, text.into_bytes()));
    };
    let good = format!(r#"{{"ts": {now}, "values": [1.5, 2], "text": "fine"}}"#);
    for len in 0..good.len() {
        push("truncated JSON", "invalid_json", good[..len].to_owned());
    }
    for text in [
        "null",
        "[]",
        "42",
        "\"text\"",
        "{}",
        "{\"ts\": 1}",
        "not json",
        "{'ts': 1, 'values': [], 'text': ''}",
    ] {
        push("not a record", "invalid_json", text.to_owned());
    }
    for (ts, values, text) in [
        ("\"1\"", "[]", "\"\""),
        ("1.5", "[]", "\"\""),
        ("null", "[]", "\"\""),
        ("1e3", "[]", "\"\""),
        ("9223372036854775808", "[]", "\"\""),
        ("-9223372036854775809", "[]", "\"\""),
        ("1", "{}", "\"\""),
        ("1", "[\"1\"]", "\"\""),
        ("1", "[null]", "\"\""),
        ("1", "[true]", "\"\""),
        ("1", "[[1]]", "\"\""),
        ("1", "1", "\"\""),
        ("1", "[]", "1"),
        ("1", "[]", "null"),
        ("1", "[]", "[\"a\"]"),
        ("1", "[NaN]", "\"\""),
        ("1", "[Infinity]", "\"\""),
        ("1", "[-Infinity]", "\"\""),
        ("1", "[1e999]", "\"\""),
        ("1", "[-1e999]", "\"\""),
        ("1", "[]", "\"\\ud800\""),
    ] {
        push(
            "wrong types",
            "invalid_json",
            format!(r#"{{"ts": {ts}, "values": {values}, "text": {text}}}"#),
        );
    }
    for field in ["ts", "values", "text"] {
        let text = good.replace(&format!("\"{field}\""), "\"other\"");
        push("missing field", "invalid_json", text);
    }
    push(
        "deep nesting",
        "invalid_json",
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
    );
    push("trailing garbage", "invalid_json", format!("{good} {{}}"));
    for bytes in INVALID_UTF8 {
        let mut value = format!(r#"{{"ts": {now}, "values": [], "text": ""#).into_bytes();
        value.extend_from_slice(bytes);
        value.extend_from_slice(b"\"}");
        out.push(bad("invalid UTF-8 text", "invalid_json", key, value));
    }
    let mut push = |category, reason, text: String| {
        out.push(bad(category, reason, key, text.into_bytes()));
    };
    push(
        "too many floats",
        "too_many_floats",
        format!(
            r#"{{"ts": {now}, "values": [{}0], "text": ""}}"#,
            "0,".repeat(MAX_FLOATS)
        ),
    );
    push(
        "text too long",
        "text_too_long",
        format!(
            r#"{{"ts": {now}, "values": [], "text": "{}"}}"#,
            "é".repeat(MAX_TEXT_BYTES / 2 + 1)
        ),
    );
    for ts in [i64::MIN, 0, now - 2 * HOUR_MS] {
        push(
            "ancient timestamp",
            "too_old",
            format!(r#"{{"ts": {ts}, "values": [], "text": ""}}"#),
        );
    }
    for ts in [i64::MAX, now + 24 * HOUR_MS] {
        push(
            "future timestamp",
            "future_timestamp",
            format!(r#"{{"ts": {ts}, "values": [], "text": ""}}"#),
        );
    }
    out.push(Sent {
        category: "missing key",
        key: None,
        value: Some(good.clone().into_bytes()),
        reason: Some("missing_key"),
    });
    out.push(bad(
        "huge key",
        "key_too_long",
        &vec![b'k'; 50_000],
        good.clone().into_bytes(),
    ));
    out.push(bad("empty value", "invalid_json", key, Vec::new()));
    out
}

/// Valid records, including every edge that must still pass.
fn valid(format: &str, now: i64, count: usize) -> Vec<Sent> {
    let mut out = Vec::new();
    let edge_key = "e".repeat(MAX_KEY_BYTES);
    for sequence in 0..count {
        let key = match sequence % 23 {
            21 => "sensör-✓".to_owned(),
            22 => edge_key.clone(),
            n => format!("src-{n:02}"),
        };
        let timestamp_ms = match sequence % 5 {
            // Within max_age, and within the allowance for clock skew.
            3 => now - HOUR_MS / 2,
            4 => now + MAX_FUTURE_SKEW_MS - 60_000,
            _ => now,
        };
        let record = match sequence % 97 {
            // The largest record the limits allow.
            0 => DataRecord {
                timestamp_ms,
                values: (0..MAX_FLOATS).map(|i| i as f64 * 1e300).collect(),
                text: "ü".repeat(MAX_TEXT_BYTES / 2),
            },
            1 => DataRecord {
                timestamp_ms,
                values: vec![f64::MIN, f64::MAX, -0.0, f64::MIN_POSITIVE, 5e-324],
                text: String::new(),
            },
            _ => DataRecord {
                timestamp_ms,
                values: vec![sequence as f64, 0.5],
                text: format!("{key}#{sequence}"),
            },
        };
        let value = match format {
            "dsdata" => dsdata::encode(&record).unwrap(),
            _ => json::encode(&record).unwrap(),
        };
        out.push(Sent {
            category: "valid",
            key: Some(key.into_bytes()),
            value: Some(value),
            reason: None,
        });
    }
    out
}

/// Interleaves `bad` into `good` deterministically, keeping each list's own order.
fn interleave(good: Vec<Sent>, bad: Vec<Sent>) -> Vec<Sent> {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut good, mut bad) = (good.into_iter().peekable(), bad.into_iter().peekable());
    let mut out = Vec::new();
    while good.peek().is_some() || bad.peek().is_some() {
        let take_bad = match (good.peek(), bad.peek()) {
            (Some(_), Some(_)) => rng.below(2) == 0,
            (None, _) => true,
            (_, None) => false,
        };
        out.extend(if take_bad { bad.next() } else { good.next() });
    }
    out
}

struct Letter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

async fn read_dead_letters(stack: &Stack, topic: &str, expected: usize) -> Vec<Letter> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "10485760")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    // Wait for every expected letter, then a little longer to catch any extra ones.
    let mut quiet_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = quiet_until.unwrap_or(deadline);
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, consumer.recv()).await {
            Ok(message) => {
                let message = message.unwrap();
                let mut headers = HashMap::new();
                for header in message.headers().iter().flat_map(|h| h.iter()) {
                    headers.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
                letters.push(Letter {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
                if letters.len() >= expected && quiet_until.is_none() {
                    quiet_until = Some(Instant::now() + Duration::from_secs(2));
                }
            }
            Err(_) => break,
        }
    }
    letters
}

async fn run_corpus(format: &'static str, malformed: fn(i64) -> Vec<Sent>, valid_count: usize) {
    let stack = stack();
    let topic = unique(&format!("bad-input-{format}"));
    let dead_letter_topic = format!("{topic}-dlq");
    create_topic(&stack, &topic, 3).await;
    create_topic(&stack, &dead_letter_topic, 1).await;
    let now = now_ms();
    let bad = malformed(now);
    let sent = interleave(valid(format, now, valid_count), bad);

    // Produce everything and learn where each record landed.
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "1000000")
        .create::<rdkafka::producer::FutureProducer>()
        .unwrap();
    let mut by_offset: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut last_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let deliveries = sent.iter().map(|record| {
        let mut future: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
        // Records without a key go to a fixed partition so their order is defined too.
        if record.key.is_none() {
            future = future.partition(0);
        }
        if let Some(key) = &record.key {
            future = future.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            future = future.payload(value.as_slice());
        }
        producer.send(future, Duration::from_secs(30))
    });
    let delivered = futures::future::join_all(deliveries).await;
    for (index, delivery) in delivered.into_iter().enumerate() {
        let delivery = delivery.unwrap_or_else(|(err, _)| {
            panic!(
                "record {index} ({}) not produced: {err}",
                sent[index].category
            )
        });
        by_offset.insert((delivery.partition, delivery.offset), index);
        let last = last_offsets.entry(delivery.partition).or_insert(-1);
        *last = (*last).max(delivery.offset);
    }
    let malformed_count = sent.iter().filter(|s| s.reason.is_some()).count();
    let valid_count = sent.len() - malformed_count;
    eprintln!(
        "{format}: sent {} records, {malformed_count} malformed, {valid_count} valid, to {topic}",
        sent.len()
    );

    let extra = format!("    max_age: 1h\n    dead_letter: {{topic: {dead_letter_topic}}}\n");
    let mut receiver = Receiver::new(
        &stack,
        ReceiverSpec {
            topic: &topic,
            redis_url: &stack.redis,
            format,
            storage: "list",
            depth: 100_000,
            max_records: 100,
            extra: &extra,
        },
    );
    let worker = receiver.start();
    receiver.wait_applied(&last_offsets, Duration::from_secs(120));
    let letters = read_dead_letters(&stack, &dead_letter_topic, malformed_count).await;
    assert!(
        worker.terminate().success(),
        "logs in {}",
        receiver.dir.display()
    );

    // Every malformed record is dead-lettered once, unchanged, with its category's reason.
    let mut problems = Vec::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut by_category: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for letter in &letters {
        let partition: i32 = letter.headers["ferry-source-partition"].parse().unwrap();
        let offset: i64 = letter.headers["ferry-source-offset"].parse().unwrap();
        assert_eq!(letter.headers["ferry-source-topic"], topic);
        let Some(&index) = by_offset.get(&(partition, offset)) else {
            problems.push(format!(
                "a dead letter for unknown offset {partition}/{offset}"
            ));
            continue;
        };
        *seen.entry(index).or_default() += 1;
        let original = &sent[index];
        let reason = letter.headers.get("ferry-reason").map(String::as_str);
        match original.reason {
            None => problems.push(format!(
                "valid record {index} ({partition}/{offset}) dead-lettered as {reason:?}: {:?}",
                letter.headers.get("ferry-detail")
            )),
            Some(expected) if reason != Some(expected) => problems.push(format!(
                "{} record {index}: reason {reason:?}, expected {expected:?} ({:?})",
                original.category,
                letter.headers.get("ferry-detail")
            )),
            Some(expected) => {
                *by_category
                    .entry((original.category, expected))
                    .or_default() += 1;
            }
        }
        // Null and empty are the same thing to Kafka clients on the way back.
        let empty_is_none = |v: &Option<Vec<u8>>| v.clone().filter(|v| !v.is_empty());
        if empty_is_none(&letter.key) != empty_is_none(&original.key)
            || empty_is_none(&letter.value) != empty_is_none(&original.value)
        {
            problems.push(format!(
                "{} record {index}: dead letter differs from what was sent",
                original.category
            ));
        }
    }
    for (index, record) in sent.iter().enumerate() {
        if record.reason.is_some() && seen.get(&index).copied().unwrap_or(0) != 1 {
            problems.push(format!(
                "{} record {index} dead-lettered {} times",
                record.category,
                seen.get(&index).copied().unwrap_or(0)
            ));
        }
    }
    for ((category, reason), count) in &by_category {
        eprintln!("  {format}: {count:>5} × {category:<20} -> {reason}");
    }

    // Every valid record is stored exactly once, newest first, in the order sent.
    let mut per_key: HashMap<&[u8], Vec<Vec<u8>>> = HashMap::new();
    for record in sent.iter().filter(|s| s.reason.is_none()) {
        per_key
            .entry(record.key.as_deref().unwrap())
            .or_default()
            .push(record.value.clone().unwrap());
    }
    let mut stored_total = 0;
    for (key, values) in &per_key {
        let key = std::str::from_utf8(key).unwrap();
        let stored = receiver.list(key);
        stored_total += stored.len();
        let expected: Vec<Vec<u8>> = values.iter().rev().cloned().collect();
        if stored != expected {
            problems.push(format!(
                "key {}…: {} stored, {} sent valid, or out of order",
                key.chars().take(20).collect::<String>(),
                stored.len(),
                expected.len()
            ));
        }
    }
    // And nothing else was stored: the refused records' keys have no list.
    for key in ["src-bad", &"k".repeat(MAX_KEY_BYTES + 1)] {
        if !receiver.list(key).is_empty() {
            problems.push(format!("refused key {:.20} has a list", key));
        }
    }
    assert!(
        problems.is_empty(),
        "{format}: {} problems (logs in {}):\n{}",
        problems.len(),
        receiver.dir.display(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(letters.len(), malformed_count);
    assert_eq!(stored_total, valid_count);
}

#[test]
fn the_corpora_are_big_deterministic_and_labelled_right() {
    let now = 1_700_000_000_000;
    let corpus = malformed_dsdata(now);
    assert!(
        corpus.len() >= 1000,
        "only {} malformed dsdata records",
        corpus.len()
    );
    let again = malformed_dsdata(now);
    assert!(
        corpus
            .iter()
            .zip(&again)
            .all(|(a, b)| a.key == b.key && a.value == b.value),
        "the corpus is not deterministic"
    );
    // The decoder agrees with every label it can judge on its own; key and time are the
    // receiver's checks, and those records' values must decode.
    for (format, corpus) in [
        (RecordFormat::Dsdata, corpus),
        (RecordFormat::Json, malformed_json(now)),
    ] {
        for record in corpus {
            let expected = record.reason.unwrap();
            let value = record.value.clone().unwrap_or_default();
            let actual = ferry_worker::record::validate(format, &value, None)
                .err()
                .map(|e| e.reason().as_str());
            let receiver_check = matches!(
                expected,
                "too_old" | "future_timestamp" | "missing_key" | "invalid_key" | "key_too_long"
            );
            let predicted = if receiver_check { None } else { Some(expected) };
            assert_eq!(
                actual,
                predicted,
                "{format:?} {}: {:?}",
                record.category,
                String::from_utf8_lossy(&value)
                    .chars()
                    .take(80)
                    .collect::<String>()
            );
        }
    }
    for format in ["dsdata", "json"] {
        let parse = if format == "dsdata" {
            RecordFormat::Dsdata
        } else {
            RecordFormat::Json
        };
        for record in valid(format, now, 200) {
            ferry_worker::record::validate(parse, record.value.as_deref().unwrap(), None).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_dsdata_is_dead_lettered_by_reason_and_valid_records_land_once_in_order() {
    run_corpus("dsdata", malformed_dsdata, 1_200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_dead_lettered_by_reason_and_valid_records_land_once_in_order() {
    run_corpus("json", malformed_json, 300).await;
}
