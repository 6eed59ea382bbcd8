//! `ferry-worker serve` (the read API) against data written by real receivers and
//! processors on the local stack (Kafka and Redis: `bash e2e/local/stack.sh up kafka redis`).
//! What each answer must hold is derived from the topic as Kafka holds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod process_support;
mod read_api_support;
mod receiver_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferry_worker::config::{RecordFormat, StorageKind};
use read_api_support::{EventStream, Reap, Serve, api_records, encode, expected_histories};
use receiver_support::*;

const DEPTH: u32 = 20;

fn receiver(stack: &Stack, topic: &str, kind: &str, encoding: &str, format: &str) -> Receiver {
    let mut receiver = Receiver::new(
        stack,
        ReceiverSpec {
            topic,
            redis_url: &stack.redis,
            format,
            storage: &format!("{kind}, encoding: {encoding}"),
            depth: DEPTH,
            max_records: 500,
            extra: "",
        },
    );
    receiver.storage = match kind {
        "stream" => StorageKind::Stream,
        "hash" => StorageKind::Hash,
        "zset" => StorageKind::Zset,
        _ => StorageKind::List,
    };
    receiver
}

/// Every storage type in both encodings, and `raw` records, from one topic: each source's
/// history, `since`, slices, the sources listed page by page, stats and totals (the
/// receiver's dead letters counted per reason), the batch events naming every source, and
/// the errors.
#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_matches_the_topic_for_every_storage_and_encoding() {
    let stack = stack();
    let topic = unique("api-read");
    create_topic(&stack, &topic, 3).await;
    let mut produced = produce_keyed(&stack, &topic, 30, 900).await;
    // Values no dsdata receiver stores: each counts as a dead letter of its reason.
    let bad: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("bad-{i}"), b"not dsdata".to_vec()))
        .collect();
    let bad_reason = ferry_worker::record::dsdata::decode(&bad[0].1)
        .unwrap_err()
        .reason()
        .as_str();
    let support = process_support::stack();
    let bad_last =
        process_support::produce(&process_support::producer(&support), &topic, &bad).await;
    for (partition, offset) in bad_last {
        let last = produced.last_offsets.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }
    let mut receivers = Vec::new();
    for kind in ["list", "stream", "hash", "zset"] {
        for encoding in ["bytes", "json"] {
            receivers.push(receiver(&stack, &topic, kind, encoding, "dsdata"));
        }
    }
    receivers.push(receiver(&stack, &topic, "list", "bytes", "raw"));
    // Each API subscribed to its Pipeline's events before its receiver writes anything.
    let serves: Vec<Serve> = receivers
        .iter()
        .map(|receiver| Serve::start(&receiver.config, &[]))
        .collect();
    let mut streams: Vec<EventStream> = serves.iter().map(|s| EventStream::open(s.port)).collect();
    let workers: Vec<Worker> = receivers.iter_mut().map(Receiver::start).collect();
    let _reap: Vec<Reap> = workers.iter().map(|w| Reap(w.child.id())).collect();
    for receiver in &receivers {
        receiver.wait_applied(&produced.last_offsets, Duration::from_secs(90));
    }
    for worker in workers {
        assert!(worker.terminate().success());
    }
    let source = oracle::read_source(&stack.kafka, &topic);
    let mut compared = 0;
    for ((receiver, serve), events) in receivers.iter().zip(&serves).zip(&mut streams) {
        let what = format!(
            "{:?} {}",
            receiver.storage,
            std::fs::read_to_string(&receiver.config)
                .unwrap()
                .lines()
                .find(|l| l.contains("storage:"))
                .unwrap()
                .trim()
        );
        // The events of the receiver's batches name every source it wrote, within 30 s.
        let mut stored: BTreeSet<String> = (0..30).map(|i| format!("src-{i:04}")).collect();
        if receiver.format == RecordFormat::Raw {
            stored.extend(bad.iter().map(|(key, _)| key.clone()));
        }
        let mut named = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stored.is_subset(&named) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = events.next_batch(left) else {
                break;
            };
            let sources = event["sources"].as_array().unwrap();
            assert_eq!(
                event["keys"].as_u64().unwrap(),
                sources.len() as u64 + event["more_sources"].as_u64().unwrap(),
                "{what} {event}"
            );
            named.extend(sources.iter().map(|s| s.as_str().unwrap().to_owned()));
        }
        assert_eq!(
            named, stored,
            "{what}: the sources its events named within 30 s"
        );
        // Totals: what the receiver dead-lettered, per reason; a raw receiver stores all.
        let totals = serve.ok("/v1/totals");
        let dead: BTreeMap<String, i64> =
            serde_json::from_value(totals["dead_letters"]["receiver"].clone()).unwrap();
        let want_dead: BTreeMap<String, i64> = if receiver.format == RecordFormat::Raw {
            BTreeMap::new()
        } else {
            BTreeMap::from([(bad_reason.to_owned(), 3)])
        };
        assert_eq!(dead, want_dead, "{what} {totals}");
        assert_eq!(totals["pipeline"], "test", "{what}");
        // A stored source has stats (none without processors); an unknown one is a 404.
        let stats = serve.ok("/v1/sources/src-0001/stats");
        assert_eq!(
            (&stats["source"], &stats["stats"], &stats["validation"]),
            (
                &"src-0001".into(),
                &serde_json::json!({}),
                &serde_json::json!({})
            ),
            "{what}"
        );
        let (status, body) = serve.get("/v1/sources/none-such/stats");
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &"unknown_source".into()),
            "{what}"
        );
        // Sources, 7 a page through the cursor: every stored source.
        let mut listed = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let page = serve.ok(&match &cursor {
                Some(cursor) => format!("/v1/sources?limit=7&cursor={cursor}"),
                None => "/v1/sources?limit=7".to_owned(),
            });
            let ids = page["sources"].as_array().unwrap();
            assert!(ids.len() <= 7 + 10, "{what}: a page of {}", ids.len());
            listed.extend(ids.iter().map(|id| id.as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        // SCAN may return a key twice, never miss one.
        let listed: BTreeSet<String> = listed.into_iter().collect();
        assert_eq!(listed, stored, "{what}: the sources listed");
        if receiver.format == RecordFormat::Raw {
            // Raw: the bytes as base64, no time in a list.
            let history = serve.ok(&format!("/v1/sources/src-0003/history?limit={DEPTH}"));
            let records = history["records"].as_array().unwrap();
            assert_eq!(records.len(), DEPTH as usize, "{what}");
            let newest = source
                .iter()
                .rev()
                .find(|r| r.key.as_deref() == Some(b"src-0003"))
                .unwrap();
            use base64::Engine;
            assert_eq!(
                records[0]["raw"],
                base64::engine::general_purpose::STANDARD.encode(&newest.payload)
            );
            assert!(records[0]["ts"].is_null());
            continue;
        }
        let expected = expected_histories(
            &source,
            RecordFormat::Dsdata,
            receiver.storage,
            DEPTH as usize,
        );
        assert_eq!(expected.len(), 30);
        for (key, history) in &expected {
            let body = serve.ok(&format!(
                "/v1/sources/{}/history?limit={DEPTH}",
                encode(key)
            ));
            assert_eq!(&api_records(&body["records"]), history, "{what} {key}");
            compared += 1;
        }
        // since: only records at or after it, newest first still.
        let (key, history) = expected.iter().next().unwrap();
        let mut times: Vec<i64> = history.iter().filter_map(|r| r.0).collect();
        times.sort_unstable();
        let since = times[times.len() / 2];
        let body = serve.ok(&format!(
            "/v1/sources/{key}/history?limit={DEPTH}&since={since}"
        ));
        // A stream trims lazily (`MAXLEN ~`): it may hold older entries than the depth.
        let stored =
            api_records(&serve.ok(&format!("/v1/sources/{key}/history?limit=10000"))["records"]);
        let want: Vec<_> = stored
            .iter()
            .filter(|r| r.0.is_some_and(|ts| ts >= since))
            .take(DEPTH as usize)
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(api_records(&body["records"]), want, "{what} since");
        // Several sources, sliced as LRANGE counts; an unknown one is null, not an error.
        for (start, stop) in [(2i64, 5i64), (-3, -1), (0, 0), (-25, -18), (1, -2), (5, 2)] {
            let body = serve.ok(&format!(
                "/v1/slices?source=src-0001&source=src-0002&source=nope&start={start}&stop={stop}"
            ));
            let slices = body["sources"].as_array().unwrap();
            assert_eq!(slices.len(), 3);
            for (slice, key) in slices.iter().zip(["src-0001", "src-0002"]) {
                // What the key holds: a stream may keep more than the depth (its first
                // `DEPTH` were compared with the topic above).
                let history = &api_records(
                    &serve.ok(&format!("/v1/sources/{key}/history?limit=10000"))["records"],
                );
                assert_eq!(history[..expected[key].len()], expected[key][..]);
                let range = ferry_worker::api::decode::slice_range(start, stop, history.len());
                assert_eq!(
                    api_records(&slice["records"]),
                    history[range].to_vec(),
                    "{what} slice {start}..{stop} of {key}"
                );
            }
            if receiver.storage == StorageKind::List {
                // As LRANGE itself slices the list.
                let stored: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(format!("{}:list:src-0001", receiver.prefix))
                    .arg(start)
                    .arg(stop)
                    .query(&mut receiver.redis())
                    .unwrap();
                assert_eq!(
                    slices[0]["records"].as_array().unwrap().len(),
                    stored.len(),
                    "{what} LRANGE {start} {stop}"
                );
            }
            assert!(slices[2]["records"].is_null());
            assert_eq!(slices[2]["error"], "unknown_source");
        }
        // Errors: JSON, a stable code, the parameter named.
        let (status, body) = serve.get("/v1/sources/nope/history");
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &"unknown_source".into())
        );
        let (status, body) = serve.get("/v1/sources/src-0001/history?limit=lots");
        assert_eq!(
            (status, &body["error"]["parameter"]),
            (400, &"limit".into())
        );
        let (status, body) = serve.get("/v1/sources/src-0001/history?since=yesterday");
        assert_eq!(
            (status, &body["error"]["parameter"]),
            (400, &"since".into())
        );
        let (status, body) = serve.get("/v1/sources/src-0001/history?limt=3");
        assert_eq!((status, &body["error"]["parameter"]), (400, &"limt".into()));
        let (status, body) = serve.get("/v1/slices?start=0");
        assert_eq!(
            (status, &body["error"]["parameter"]),
            (400, &"source".into())
        );
        let (status, body) = serve.get("/v2/nothing");
        assert_eq!((status, &body["error"]["code"]), (404, &"not_found".into()));
        let openapi = serve.ok("/openapi.json");
        assert_eq!(openapi["openapi"], "3.1.0");
    }
    assert_eq!(compared, 8 * 30);
}

/// Two Pipelines on one topic with distinct prefixes, one storing bytes and one json: a
/// standard-library Python reader speaking RESP itself reads the json lists and gets what
/// the API serves from either.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_resp_reader_gets_the_json_lists_the_api_serves() {
    let stack = stack();
    let topic = unique("api-resp");
    create_topic(&stack, &topic, 2).await;
    let produced = produce_keyed(&stack, &topic, 5, 200).await;
    let mut bytes = receiver(&stack, &topic, "list", "bytes", "dsdata");
    let mut json = receiver(&stack, &topic, "list", "json", "dsdata");
    let workers = [bytes.start(), json.start()];
    let _reap: Vec<Reap> = workers.iter().map(|w| Reap(w.child.id())).collect();
    bytes.wait_applied(&produced.last_offsets, Duration::from_secs(60));
    json.wait_applied(&produced.last_offsets, Duration::from_secs(60));
    for worker in workers {
        assert!(worker.terminate().success());
    }
    let reader = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/readers/resp_reader.py"
    );
    let url = stack.redis.trim_start_matches("redis://");
    let (host, port) = url.split('/').next().unwrap().split_once(':').unwrap();
    let sources: Vec<String> = (0..5).map(|i| format!("src-{i:04}")).collect();
    let output = std::process::Command::new("python3")
        .arg(reader)
        .args([host, port, &format!("{}:list:", json.prefix)])
        .args(&sources)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let serve_bytes = Serve::start(&bytes.config, &[]);
    let serve_json = Serve::start(&json.config, &[]);
    for source in &sources {
        let from_python = api_records(&read[source]);
        assert_eq!(from_python.len(), DEPTH as usize);
        for serve in [&serve_bytes, &serve_json] {
            let body = serve.ok(&format!("/v1/sources/{source}/history?limit=1000"));
            assert_eq!(api_records(&body["records"]), from_python, "{source}");
        }
    }
}

/// 10,000 sources, listed a page at a time through the opaque cursor: every one comes.
#[tokio::test(flavor = "multi_thread")]
async fn sources_paginate_over_ten_thousand() {
    let stack = stack();
    let topic = unique("api-pages");
    create_topic(&stack, &topic, 3).await;
    let sources = 10_000;
    let produced = produce_keyed(&stack, &topic, sources, sources).await;
    let mut receiver = receiver(&stack, &topic, "hash", "bytes", "dsdata");
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    receiver.wait_applied(&produced.last_offsets, Duration::from_secs(90));
    assert!(worker.terminate().success());
    let serve = Serve::start(&receiver.config, &[]);
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/sources?limit=500&cursor={cursor}"),
            None => "/v1/sources?limit=500".to_owned(),
        };
        let page = serve.ok(&path);
        pages += 1;
        let ids = page["sources"].as_array().unwrap();
        assert!(ids.len() <= 600, "a page of {} for limit 500", ids.len());
        seen.extend(ids.iter().map(|id| id.as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10_000, "the listing does not end");
    }
    let want: BTreeSet<String> = (0..sources).map(|i| format!("src-{i:04}")).collect();
    assert_eq!(seen, want, "{pages} pages");
    eprintln!("10,000 sources in {pages} pages of at most 500");
    let (status, body) = serve.get("/v1/sources?cursor=bogus");
    assert_eq!(
        (status, &body["error"]["parameter"]),
        (400, &"cursor".into())
    );
    let (status, body) = serve.get("/v1/sources?limit=0");
    assert_eq!(
        (status, &body["error"]["parameter"]),
        (400, &"limit".into())
    );
}

/// The SSE stream carries the event of a batch, within 30 s, naming the batch's sources.
#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_names_the_keys_of_each_batch() {
    let stack = stack();
    let topic = unique("api-events");
    create_topic(&stack, &topic, 1).await;
    let mut receiver = receiver(&stack, &topic, "list", "bytes", "dsdata");
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    // The receiver is placed once its first (empty) data set exists: wait for a first batch.
    let first = produce_keyed(&stack, &topic, 1, 1).await;
    receiver.wait_applied(&first.last_offsets, Duration::from_secs(60));
    let serve = Serve::start(&receiver.config, &[]);
    let mut events = EventStream::open(serve.port);
    let produced = produce_sequences(&stack, &topic, 3, 1..7, 0.0).await;
    let mut named = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while named.len() < 3 && Instant::now() < deadline {
        let Some(event) = events.next_batch(deadline.saturating_duration_since(Instant::now()))
        else {
            break;
        };
        assert_eq!(
            event["keys"].as_u64().unwrap(),
            event["sources"].as_array().unwrap().len() as u64
                + event["more_sources"].as_u64().unwrap()
        );
        named.extend(
            event["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned()),
        );
    }
    let want: BTreeSet<String> = produced.per_key.keys().cloned().collect();
    assert_eq!(
        named,
        want,
        "events within 30 s; serve log {}",
        serve.log.display()
    );
    // SIGTERM ends the open event stream, so the graceful shutdown is not held by it.
    let status = serve.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(worker.terminate().success());
}

/// Stats, validation counters and totals, dead letters per reason: what real processors
/// and a receiver wrote, as the API serves it.
/// Real stats and validate processors beside a receiver of each storage type (the
/// encodings alternating): the API serves what they wrote, whatever the data keys hold.
#[tokio::test(flavor = "multi_thread")]
async fn stats_validation_and_dead_letters_are_served() {
    let stack = stack();
    let topic = unique("api-stats");
    create_topic(&stack, &topic, 1).await;
    let support = process_support::stack();
    let producer = process_support::producer(&support);
    let mut records = Vec::new();
    for i in 0..40 {
        let key = format!("src-{}", i % 4);
        let value = if i % 10 == 9 { 500.0 } else { i as f64 };
        records.push((
            key,
            process_support::json_record(now_ms() - 1000 + i, &[value], "t"),
        ));
    }
    records.push(("src-0".to_owned(), b"not json".to_vec()));
    let last = process_support::produce(&producer, &topic, &records).await;
    for (kind, encoding) in [
        ("list", "bytes"),
        ("stream", "json"),
        ("hash", "bytes"),
        ("zset", "json"),
    ] {
        stats_served_for(&stack, &support, &topic, &last, kind, encoding).await;
    }
}

/// One Pipeline of the test above: its own prefix, so its counters are its own.
async fn stats_served_for(
    stack: &Stack,
    support: &process_support::Stack,
    topic: &str,
    last: &BTreeMap<i32, i64>,
    kind: &str,
    encoding: &str,
) {
    let prefix = unique("t");
    // The receiver shares the processors' prefix, as one Pipeline's stages do.
    let mut receiver = receiver(stack, topic, kind, encoding, "json");
    let config = std::fs::read_to_string(&receiver.config)
        .unwrap()
        .replace(&receiver.prefix, &prefix);
    std::fs::write(&receiver.config, config).unwrap();
    receiver.prefix = prefix.clone();
    let stats_stage = "    name: rolling\n    kind: {stats: {window: 5}}";
    let validate_stage = "    name: checks\n    kind:\n      validate:\n        rules:\n          - {name: in-range, expression: \"values[0] IN RANGE 0 100\"}";
    let mut stats = process_support::Worker::start(&process_support::processor_config(
        support,
        topic,
        &unique("g"),
        &prefix,
        stats_stage,
    ));
    let mut validate = process_support::Worker::start(&process_support::processor_config(
        support,
        topic,
        &unique("g"),
        &prefix,
        validate_stage,
    ));
    let worker = receiver.start();
    let _reap = Reap(worker.child.id());
    receiver.wait_applied(last, Duration::from_secs(60));
    let mut redis = process_support::redis(support).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for stage in ["rolling", "checks"] {
        while !process_support::all_applied(&mut redis, &prefix, stage, topic, last).await {
            stats.assert_running();
            validate.assert_running();
            assert!(Instant::now() < deadline, "{stage} did not apply the topic");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let serve = Serve::start(
        &receiver.config,
        &["--stats", "rolling", "--validate", "checks"],
    );
    // Stats and counters of one source, as the processors wrote them.
    let body = serve.ok("/v1/sources/src-1/stats");
    let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:stats:rolling:src-1"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let figures = &body["stats"]["rolling"];
    assert_eq!(
        figures["count"].as_i64(),
        hash["count"].parse().ok(),
        "{kind}/{encoding}: {body}"
    );
    assert_eq!(
        figures["mean"].as_f64(),
        hash["mean"].parse().ok(),
        "{kind}/{encoding}: {body}"
    );
    assert_eq!(
        figures["last"].as_f64(),
        hash["last"].parse().ok(),
        "{kind}/{encoding}: {body}"
    );
    // src-1 got i = 1, 5, 9, …, 37: i = 9, 19, 29, 39 carry 500 (invalid) where i % 10 == 9.
    let expected_invalid = (0..40).filter(|i| i % 4 == 1 && i % 10 == 9).count() as i64;
    assert_eq!(
        body["validation"]["checks"]["invalid"], expected_invalid,
        "{kind}/{encoding}: {body}"
    );
    assert_eq!(
        body["validation"]["checks"]["valid"],
        10 - expected_invalid,
        "{kind}/{encoding}: {body}"
    );
    let (status, body) = serve.get("/v1/sources/none-such/stats");
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &"unknown_source".into())
    );
    // Totals: the validate totals, and dead letters per stage and reason, counted in the
    // batch transactions.
    let totals = serve.ok("/v1/totals");
    for ([section, stage, field], expected) in [
        (["validation", "checks", "valid"], 36),
        (["validation", "checks", "invalid"], 4),
        (["validation", "checks", "undecodable"], 1),
        (["dead_letters", "receiver", "invalid_json"], 1),
        (["dead_letters", "checks", "rule:in-range"], 4),
        (["dead_letters", "checks", "invalid_json"], 1),
        (["dead_letters", "rolling", "invalid_json"], 1),
    ] {
        assert_eq!(
            totals[section][stage][field], expected,
            "{kind}/{encoding} {section}.{stage}.{field}: {totals}"
        );
    }
    assert!(worker.terminate().success());
    stats.stop();
    validate.stop();
}
