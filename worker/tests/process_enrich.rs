//! `ferry-worker process` with an enrich stage, against the real local stack.

mod oracle;
mod process_support;

use std::time::Duration;

use process_support::*;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread")]
async fn joins_the_version_valid_at_each_record_time() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("enriched"), unique("dead"));
    let prefix = unique("ferry");
    create_topics(&stack, &[(&input, 2), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let reference = format!("{prefix}:ref");
    // s1 has two versions (from 1000 and from 2000); s2 one from 5000; s3 none.
    for (hash, fields) in [
        (
            format!("{reference}:v:s1:1"),
            [("site", "north"), ("unit", "C")],
        ),
        (
            format!("{reference}:v:s1:2"),
            [("site", "south"), ("unit", "F")],
        ),
        (
            format!("{reference}:v:s2:1"),
            [("site", "east"), ("unit", "K")],
        ),
    ] {
        let _: () = redis.hset_multiple(&hash, &fields).await.unwrap();
    }
    let _: () = redis
        .zadd_multiple(
            format!("{reference}:s1"),
            &[
                (1000, format!("{reference}:v:s1:1")),
                (2000, format!("{reference}:v:s1:2")),
            ],
        )
        .await
        .unwrap();
    let _: () = redis
        .zadd(
            format!("{reference}:s2"),
            format!("{reference}:v:s2:1"),
            5000,
        )
        .await
        .unwrap();

    let records = vec![
        ("s1".to_owned(), json_record(999, &[1.0], "early")), // before any version
        ("s1".to_owned(), json_record(1000, &[2.0], "first")), // version 1, inclusive
        ("s1".to_owned(), json_record(1999, &[3.0], "first")),
        ("s1".to_owned(), json_record(2500, &[4.0], "second")),
        ("s2".to_owned(), json_record(6000, &[5.0, 6.0], "")),
        ("s3".to_owned(), json_record(6000, &[7.0], "orphan")),
    ];
    produce(&producer(&stack), &input, &records).await;
    let stage = format!(
        r#"    name: join
    output: {{topic: {output}}}
    dead_letter: {{topic: {dead}}}
    kind:
      enrich:
        reference_key: {reference}
        fields: [site]
"#
    );
    let config = processor_config(&stack, &input, &unique("group"), &prefix, &stage);
    let mut worker = Worker::start(&config);

    let enriched = read_topic(
        &stack,
        &output,
        4,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    worker.assert_running();
    let mut rows: Vec<serde_json::Value> = enriched
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    rows.sort_by_key(|row| {
        (
            row["key"].as_str().unwrap_or_default().to_owned(),
            row["ts"].as_i64(),
        )
    });
    let expected = serde_json::json!([
        {"key": "s1", "ts": 1000, "values": [2.0], "text": "first", "ref": {"site": "north"},
         "ref_version": format!("{reference}:v:s1:1"), "ref_valid_from": 1000},
        {"key": "s1", "ts": 1999, "values": [3.0], "text": "first", "ref": {"site": "north"},
         "ref_version": format!("{reference}:v:s1:1"), "ref_valid_from": 1000},
        {"key": "s1", "ts": 2500, "values": [4.0], "text": "second", "ref": {"site": "south"},
         "ref_version": format!("{reference}:v:s1:2"), "ref_valid_from": 2000},
        {"key": "s2", "ts": 6000, "values": [5.0, 6.0], "text": "", "ref": {"site": "east"},
         "ref_version": format!("{reference}:v:s2:1"), "ref_valid_from": 5000},
    ]);
    assert_eq!(serde_json::Value::Array(rows), expected);
    for record in &enriched {
        assert!(record.headers.contains_key("ferry-source-offset"));
        // The json format reads enriched records, so stages chain.
        ferry_worker::record::decode(
            ferry_worker::config::RecordFormat::Json,
            &record.payload,
            None,
        )
        .expect("enriched records decode as json");
    }

    let dead_lettered = read_topic(
        &stack,
        &dead,
        2,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let mut reasons: Vec<(String, String)> = dead_lettered
        .into_iter()
        .map(|r| {
            (
                r.key,
                r.headers.get("ferry-reason").cloned().unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("s1".to_owned(), "no-reference".to_owned()),
            ("s3".to_owned(), "no-reference".to_owned()),
        ]
    );
    worker.stop();
}
