//! `ferry-worker receive` against the real local stack (Kafka and Redis): start it with
//! `bash e2e/local/stack.sh up kafka redis`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use receiver_support::*;

fn spec<'a>(topic: &'a str, redis_url: &'a str, depth: u32) -> ReceiverSpec<'a> {
    ReceiverSpec {
        topic,
        redis_url,
        format: "dsdata",
        storage: "list",
        depth,
        max_records: 500,
        extra: "",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_records_keep_their_newest_history_newest_first() {
    let stack = stack();
    let topic = unique("keyed");
    create_topic(&stack, &topic, 3).await;
    let oracle = produce_keyed(&stack, &topic, 50, 5_000).await;
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, 20));
    let worker = receiver.start();
    receiver.wait_applied(&oracle.last_offsets, Duration::from_secs(60));
    assert!(worker.terminate().success());
    receiver.assert_exact();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let stack = stack();
    let topic = unique("sigkill");
    create_topic(&stack, &topic, 6).await;
    // 200 keys × 1000 records, history 1000: each list holds its key's whole sequence, so
    // any lost or duplicated record shows.
    let oracle = produce_keyed(&stack, &topic, 200, 200_000).await;
    let mut spec = spec(&topic, &stack.redis, 1000);
    spec.max_records = 300;
    let mut receiver = Receiver::new(&stack, spec);
    for round in 0..4 {
        let worker = receiver.start();
        let wait = Duration::from_millis(1_500 + rand::random::<u64>() % 2_500);
        tokio::time::sleep(wait).await;
        worker.sigkill();
        eprintln!(
            "round {round}: killed after {wait:?}, checkpoints {:?}",
            receiver.checkpoints(&[0, 1, 2, 3, 4, 5])
        );
    }
    let worker = receiver.start();
    receiver.wait_applied(&oracle.last_offsets, Duration::from_secs(150));
    let log = worker.log.clone();
    // On a fast machine the killed rounds may already have applied everything, so the last
    // worker could get SIGTERM before it installed its handler; wait until it has.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("receiver started")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the last worker never started; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = worker.terminate();
    assert!(
        status.success(),
        "SIGTERM ended the worker with {status}; log {}",
        log.display()
    );
    receiver.assert_exact();
}

#[tokio::test(flavor = "multi_thread")]
async fn receivers_joining_and_sharing_a_group_apply_each_record_once() {
    let stack = stack();
    let topic = unique("group");
    create_topic(&stack, &topic, 6).await;
    let oracle = produce_keyed(&stack, &topic, 100, 100_000).await;
    let mut spec = spec(&topic, &stack.redis, 1000);
    spec.max_records = 200;
    let mut receiver = Receiver::new(&stack, spec);
    let first = receiver.start();
    let second = receiver.start();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let third = receiver.start();
    receiver.wait_applied(&oracle.last_offsets, Duration::from_secs(150));
    for worker in [first, second, third] {
        assert!(worker.terminate().success());
    }
    receiver.assert_exact();
}

async fn dead_letters(
    stack: &Stack,
    topic: &str,
    expected: usize,
) -> Vec<(String, HashMap<String, String>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < expected {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {expected} dead letters arrived: {found:?}",
                    found.len()
                )
            })
            .unwrap();
        let mut headers = HashMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        found.push((key, headers));
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_are_dead_lettered_with_reasons_while_the_rest_flows() {
    let stack = stack();
    let producer = producer(&stack);
    let mut checks = Vec::new();
    for format in ["dsdata", "json"] {
        let topic = unique(&format!("poison-{format}"));
        let dead_letter_topic = format!("{topic}-dlq");
        create_topic(&stack, &topic, 2).await;
        create_topic(&stack, &dead_letter_topic, 1).await;
        let now = now_ms();
        let good = |key: &str, n: usize| -> Vec<u8> {
            match format {
                // Distinct, not monotonic, and all within the hour of `max_age`.
                "dsdata" => value(key, n, now - (n as i64 * 7_919) % 1_000),
                _ => {
                    let ts = now - (n as i64 * 7_919) % 1_000;
                    format!(r#"{{"ts": {ts}, "values": [{n}], "text": "{key}#{n}"}}"#).into_bytes()
                }
            }
        };
        let old = |key: &str| -> Vec<u8> {
            match format {
                "dsdata" => value(key, 0, now - 7_200_000),
                _ => format!(
                    r#"{{"ts": {}, "values": [], "text": "old"}}"#,
                    now - 7_200_000
                )
                .into_bytes(),
            }
        };
        let broken = |key: &str| -> Vec<u8> {
            match format {
                "dsdata" => value(key, 1, now)[..20].to_vec(),
                _ => b"{\"ts\": 1, \"values\": [".to_vec(),
            }
        };
        let mut sent: Vec<(String, Vec<u8>, Option<&str>)> = Vec::new();
        for n in 0..300 {
            let key = format!("src-{}", n % 10);
            let (payload, reason) = match n % 50 {
                7 => (
                    broken(&key),
                    Some(if format == "dsdata" {
                        "truncated"
                    } else {
                        "invalid_json"
                    }),
                ),
                13 => (old(&key), Some("too_old")),
                _ => (good(&key, n), None),
            };
            sent.push((key, payload, reason));
        }
        for (key, payload, _) in &sent {
            producer
                .send(
                    FutureRecord::to(&topic).key(key).payload(payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let extra = format!("    max_age: 1h\n    dead_letter: {{topic: {dead_letter_topic}}}\n");
        let mut receiver = Receiver::new(
            &stack,
            ReceiverSpec {
                topic: &topic,
                redis_url: &stack.redis,
                format,
                storage: "list",
                depth: 100,
                max_records: 50,
                extra: &extra,
            },
        );
        let worker = receiver.start();
        checks.push((receiver, worker, topic, dead_letter_topic, sent));
    }
    for (receiver, worker, topic, dead_letter_topic, sent) in checks {
        let expected: Vec<&str> = sent.iter().filter_map(|(_, _, reason)| *reason).collect();
        let letters = dead_letters(&stack, &dead_letter_topic, expected.len()).await;
        let mut reasons: Vec<String> = letters
            .iter()
            .map(|(_, h)| h["ferry-reason"].clone())
            .collect();
        reasons.sort();
        let mut expected_sorted: Vec<String> = expected.iter().map(|r| (*r).to_owned()).collect();
        expected_sorted.sort();
        assert_eq!(reasons, expected_sorted);
        for (_, headers) in &letters {
            assert_eq!(headers["ferry-source-topic"], topic);
            assert!(headers["ferry-source-partition"].parse::<i32>().is_ok());
            assert!(headers["ferry-source-offset"].parse::<i64>().is_ok());
        }
        // Every good record is stored, newest first; the refused ones are not.
        let mut per_key: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
        for (key, payload, reason) in &sent {
            if reason.is_none() {
                per_key.entry(key).or_default().push(payload.clone());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (key, values) in per_key {
            let expected: Vec<Vec<u8>> = values.into_iter().rev().collect();
            loop {
                let stored = receiver.list(key);
                if stored == expected {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{key}: {} stored, {} expected",
                    stored.len(),
                    expected.len()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // And the oracle agrees, from the topic: every record younger than `max_age` kept.
        let fresh: Vec<oracle::SourceRecord> = oracle::read_source(&stack.kafka, &topic)
            .into_iter()
            .filter(|r| {
                r.stored(receiver.format)
                    .is_some_and(|(_, ts)| ts > now_ms() - 3_600_000)
            })
            .collect();
        let verdict = oracle::check_storage(
            &receiver.redis_url,
            &receiver.prefix,
            receiver.storage,
            receiver.depth,
            receiver.format,
            &fresh,
        );
        eprintln!("{verdict}");
        verdict.assert_exact(&receiver.dir);
        assert!(worker.terminate().success());
    }
}

/// A private redis-server on a free port, persisted to `dir` so a restart keeps the data.
fn start_redis(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

fn wait_redis(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::Client::open(url).unwrap().get_connection().is_err() {
        assert!(Instant::now() < deadline, "private redis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_mid_run_loses_nothing() {
    let stack = stack();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(unique("ferry-redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut redis_server = start_redis(&dir, port);
    wait_redis(&url);

    let topic = unique("outage");
    create_topic(&stack, &topic, 3).await;
    let oracle = produce_keyed(&stack, &topic, 100, 100_000).await;
    let mut spec = spec(&topic, &url, 1000);
    spec.max_records = 100;
    let mut receiver = Receiver::new(&stack, spec);
    let worker = receiver.start();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // SHUTDOWN SAVE writes the data to disk; the restart loads it, as a real outage would.
    let _ = redis::cmd("SHUTDOWN")
        .arg("SAVE")
        .query::<()>(&mut receiver.redis());
    redis_server.wait().unwrap();
    assert!(
        redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .is_err(),
        "redis is down"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis_server = start_redis(&dir, port);
    wait_redis(&url);
    receiver.wait_applied(&oracle.last_offsets, Duration::from_secs(120));
    assert!(worker.terminate().success());
    receiver.assert_exact();
    redis_server.kill().unwrap();
    redis_server.wait().unwrap();
}

/// Produces `count` records over `keys` keys (scrambled timestamps) and returns the last
/// offsets; `produce_keyed` with a name that says the timestamps are the point.
async fn produce_out_of_order(stack: &Stack, topic: &str, keys: usize, count: usize) -> Produced {
    produce_keyed(stack, topic, keys, count).await
}

#[tokio::test(flavor = "multi_thread")]
async fn zset_keeps_the_highest_scores_when_timestamps_are_out_of_order_in_one_batch() {
    let stack = stack();
    let topic = unique("zset-order");
    create_topic(&stack, &topic, 1).await;
    // One key, 40 records whose times are not in offset order, all in one batch, depth 5.
    let produced = produce_out_of_order(&stack, &topic, 1, 40).await;
    let mut spec = spec(&topic, &stack.redis, 5);
    spec.storage = "zset";
    let mut receiver = Receiver::new(&stack, spec);
    let worker = receiver.start();
    receiver.wait_applied(&produced.last_offsets, Duration::from_secs(60));
    assert!(worker.terminate().success());
    receiver.assert_exact();
}

#[tokio::test(flavor = "multi_thread")]
async fn records_in_every_compression_codec_are_stored() {
    // librdkafka returns a batch it cannot decompress as a consume error without advancing,
    // so one codec built out of the client wedges its partition and every record after it.
    let stack = stack();
    let topic = unique("codecs");
    create_topic(&stack, &topic, 2).await;
    let mut last_offsets = std::collections::BTreeMap::new();
    for (i, codec) in ["gzip", "snappy", "lz4", "zstd", "none"]
        .into_iter()
        .enumerate()
    {
        let producer = producer_compressing(&stack, codec);
        let produced = produce_with(&producer, &topic, 20, i * 400..(i + 1) * 400, 0.0).await;
        for (partition, offset) in produced.last_offsets {
            let last = last_offsets.entry(partition).or_insert(-1);
            *last = (*last).max(offset);
        }
    }
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, 100));
    let worker = receiver.start();
    let applied = receiver.try_wait_applied(&last_offsets, Duration::from_secs(30));
    let errors = worker.metric("ferry_kafka_errors_total").unwrap_or(0.0);
    eprintln!(
        "all applied: {applied}; kafka errors {errors}; checkpoints {:?} of {last_offsets:?}",
        receiver.checkpoints(&[0, 1])
    );
    assert!(
        applied,
        "a codec's records were never stored; log {}",
        worker.log.display()
    );
    assert!(worker.terminate().success());
    receiver.assert_exact();
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_hash_and_zset_each_hold_what_the_topic_says() {
    let stack = stack();
    let mut running = Vec::new();
    for storage in ["stream", "hash", "zset"] {
        let topic = unique(&format!("storage-{storage}"));
        create_topic(&stack, &topic, 3).await;
        // 100 records per key against a depth of 20: trimming and out-of-order times matter.
        let produced = produce_out_of_order(&stack, &topic, 30, 3_000).await;
        let mut spec = spec(&topic, &stack.redis, 20);
        spec.storage = storage;
        spec.max_records = 400;
        let mut receiver = Receiver::new(&stack, spec);
        let worker = receiver.start();
        running.push((receiver, worker, produced));
    }
    let mut verdicts = Vec::new();
    for (receiver, worker, produced) in running {
        receiver.wait_applied(&produced.last_offsets, Duration::from_secs(60));
        assert!(worker.terminate().success());
        let verdict = receiver.verdict();
        eprintln!("{verdict}");
        verdicts.push((verdict, receiver.dir.clone()));
    }
    for (verdict, dir) in verdicts {
        verdict.assert_exact(&dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_type_blocks_the_stage_until_removed_and_nothing_is_skipped() {
    let stack = stack();
    let topic = unique("wrongtype");
    create_topic(&stack, &topic, 2).await;
    let mut receiver = Receiver::new(&stack, spec(&topic, &stack.redis, 100));
    // Someone else's string where the receiver will want a list.
    let squatted = format!("{}:list:src-0003", receiver.prefix);
    let _: () = redis::cmd("SET")
        .arg(&squatted)
        .arg("not a list")
        .query(&mut receiver.redis())
        .unwrap();
    let produced = produce_keyed(&stack, &topic, 10, 500).await;
    let worker = receiver.start();

    // The stage must go unready and say which key, in /readyz and in /metrics.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_unready = None;
    let mut last_readyz = None;
    while Instant::now() < deadline {
        last_readyz = worker.readyz();
        let metrics = oracle::http_get(worker.port, "/metrics").map(|(_, body)| body);
        if let (Some((503, body)), Some(metrics)) = (&last_readyz, &metrics)
            && body.contains(&squatted)
            && let Some(line) = metrics
                .lines()
                .find(|l| l.starts_with("ferry_stage_blocked{") && l.contains(&squatted))
        {
            seen_unready = Some((body.clone(), line.to_owned()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let checkpoints_while_blocked = receiver.checkpoints(&[0, 1]);
    let logged = std::fs::read_to_string(&worker.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&squatted))
        .take(1)
        .collect::<String>();

    let _: () = redis::cmd("DEL")
        .arg(&squatted)
        .query(&mut receiver.redis())
        .unwrap();
    receiver.wait_applied(&produced.last_offsets, Duration::from_secs(60));
    let ready_after = worker.readyz();
    assert!(worker.terminate().success());
    let verdict = receiver.verdict();
    eprintln!(
        "while the key was a string: unready {seen_unready:?}, last /readyz {last_readyz:?}, \
         checkpoints {checkpoints_while_blocked:?}, log line {logged:?}; after DEL: /readyz \
         {ready_after:?}; {verdict}"
    );
    assert!(
        seen_unready.is_some(),
        "the stage never went unready naming {squatted}; last /readyz {last_readyz:?}"
    );
    assert!(!logged.is_empty(), "no log line names {squatted}");
    assert!(
        ready_after.is_some_and(|(status, _)| status == 200),
        "not ready again after the key was removed"
    );
    verdict.assert_exact(&receiver.dir);
}
