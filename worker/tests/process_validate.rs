//! `ferry-worker process` with a validate stage, against the real local stack.

mod process_support;

use std::collections::HashMap;
use std::time::Duration;

use process_support::*;
use redis::AsyncCommands;

fn validate_stage(output: &str, dead_letter: &str, allowed_set: &str, max_records: u32) -> String {
    format!(
        r#"    name: check
    output: {{topic: {output}}}
    dead_letter: {{topic: {dead_letter}}}
    batch: {{max_records: {max_records}, max_wait: 20ms}}
    kind:
      validate:
        rules:
          - name: known-source
            expression: key LOOKUP {allowed_set}
          - name: in-range
            expression: values[0] IN RANGE 0 100 AND (text NOT NULL OR values[1] EQ 1)
"#
    )
}

#[allow(clippy::expect_used)] // test helper
async fn counters(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    key: &str,
) -> HashMap<String, i64> {
    redis
        .hgetall(format!("{prefix}:counters:{key}"))
        .await
        .expect("read counters")
}

#[tokio::test(flavor = "multi_thread")]
async fn validates_counts_forwards_and_dead_letters() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    create_topics(&stack, &[(&input, 3), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let allowed = format!("{prefix}:allowed");
    let _: () = redis.sadd(&allowed, &["s1", "s2"]).await.unwrap();

    let records = vec![
        ("s1".to_owned(), json_record(1000, &[50.0], "ok")), // valid
        ("s1".to_owned(), json_record(1001, &[150.0], "ok")), // in-range fails
        ("s1".to_owned(), json_record(1002, &[5.0, 1.0], "")), // valid: text NULL but values[1] EQ 1
        ("s2".to_owned(), json_record(1003, &[], "ok")),       // in-range fails: values[0] NULL
        ("s3".to_owned(), json_record(1004, &[1.0], "ok")),    // known-source fails
        ("s2".to_owned(), b"not json".to_vec()),               // undecodable
    ];
    produce(&producer(&stack), &input, &records).await;

    let config = processor_config(
        &stack,
        &input,
        &unique("group"),
        &prefix,
        &validate_stage(&output, &dead, &allowed, 500),
    );
    let mut worker = Worker::start(&config);
    let total = eventually(&mut worker, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let prefix = prefix.clone();
        async move {
            let total = counters(&mut redis, &prefix, "_total").await;
            let seen = total.values().sum::<i64>();
            (seen >= 6).then_some(total)
        }
    })
    .await;
    assert_eq!(total.get("valid"), Some(&2), "{total:?}");
    assert_eq!(total.get("invalid"), Some(&3), "{total:?}");
    assert_eq!(total.get("undecodable"), Some(&1), "{total:?}");
    let s1 = counters(&mut redis, &prefix, "s1").await;
    assert_eq!((s1.get("valid"), s1.get("invalid")), (Some(&2), Some(&1)));
    let s2 = counters(&mut redis, &prefix, "s2").await;
    assert_eq!((s2.get("valid"), s2.get("invalid")), (None, Some(&1)));
    let s3 = counters(&mut redis, &prefix, "s3").await;
    assert_eq!(s3.get("invalid"), Some(&1));

    let valid = read_topic(
        &stack,
        &output,
        2,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(valid.len(), 2, "{valid:?}");
    for record in &valid {
        assert_eq!(record.key, "s1");
        assert!(record.headers.contains_key("ferry-source-partition"));
        assert!(record.headers.contains_key("ferry-source-offset"));
        assert!(!record.headers.contains_key("ferry-reason"));
    }
    let mut reasons: Vec<(String, String)> = read_topic(
        &stack,
        &dead,
        4,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
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
            ("s1".to_owned(), "in-range".to_owned()),
            ("s2".to_owned(), "in-range".to_owned()),
            ("s2".to_owned(), "invalid_json".to_owned()),
            ("s3".to_owned(), "known-source".to_owned()),
        ]
    );
    worker.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_run_does_not_double_count() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(&stack, &[(&input, 4), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let allowed = format!("{prefix}:allowed");
    let _: () = redis.sadd(&allowed, &["a", "b", "c"]).await.unwrap();

    const RECORDS: i64 = 3000;
    let keys = ["a", "b", "c", "d"];
    let records: Vec<(String, Vec<u8>)> = (0..RECORDS)
        .map(|i| {
            let key = keys[(i % 4) as usize].to_owned();
            (key, json_record(i, &[(i % 150) as f64], "t"))
        })
        .collect();
    produce(&producer(&stack), &input, &records).await;
    let expected_valid = (0..RECORDS)
        .filter(|i| i % 4 != 3 && i % 150 <= 100)
        .count() as i64;

    let config = processor_config(
        &stack,
        &input,
        &group,
        &prefix,
        &validate_stage(&output, &dead, &allowed, 7),
    );
    let mut first = Worker::start(&config);
    let seen_at_crash = eventually(&mut first, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let prefix = prefix.clone();
        async move {
            let seen = counters(&mut redis, &prefix, "_total")
                .await
                .values()
                .sum::<i64>();
            (seen >= 300).then_some(seen)
        }
    })
    .await;
    first.crash();
    assert!(seen_at_crash < RECORDS, "the crash should land mid-run");

    let mut second = Worker::start(&config);
    eventually(&mut second, Duration::from_secs(120), || {
        let mut redis = redis.clone();
        let prefix = prefix.clone();
        async move {
            let seen = counters(&mut redis, &prefix, "_total")
                .await
                .values()
                .sum::<i64>();
            (seen >= RECORDS).then_some(())
        }
    })
    .await;
    // Let any duplicate work land before checking nothing was counted twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = counters(&mut redis, &prefix, "_total").await;
    assert_eq!(total.get("valid"), Some(&expected_valid), "{total:?}");
    assert_eq!(
        total.get("invalid"),
        Some(&(RECORDS - expected_valid)),
        "{total:?}"
    );
    let per_key_sum: i64 = {
        let mut sum = 0;
        for key in keys {
            sum += counters(&mut redis, &prefix, key)
                .await
                .values()
                .sum::<i64>();
        }
        sum
    };
    assert_eq!(per_key_sum, RECORDS);
    // Output is at-least-once: every valid record is there, duplicates are recognisable.
    let valid = read_topic(
        &stack,
        &output,
        expected_valid as usize,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let distinct: std::collections::HashSet<(String, String)> = valid
        .iter()
        .map(|r| {
            (
                r.headers["ferry-source-partition"].clone(),
                r.headers["ferry-source-offset"].clone(),
            )
        })
        .collect();
    assert_eq!(distinct.len() as i64, expected_valid);
    second.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_does_not_parse_fails_the_start_naming_it() {
    let stack = stack();
    let stage = r#"    name: check
    kind:
      validate:
        rules:
          - name: fine
            expression: text NOT NULL
          - name: broken-range
            expression: values[0] IN RANGE 0
"#;
    let config = processor_config(&stack, &unique("in"), &unique("group"), "ferry", stage);
    let (status, log) = Worker::start(&config).wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let line = log
        .lines()
        .find(|line| line.contains("broken-range"))
        .unwrap_or_else(|| panic!("no line names the rule:\n{log}"));
    assert!(line.contains("column 21"), "{line}");
}
