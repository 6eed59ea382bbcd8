//! `ferry-worker process` with a stats stage, against the real local stack.

mod oracle;
mod process_support;

use std::collections::HashMap;
use std::time::Duration;

use ferry_worker::process::stats::RollingWindow;
use process_support::*;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread")]
async fn rolling_stats_per_key_survive_a_restart() {
    let stack = stack();
    let (input, output) = (unique("in"), unique("out"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(&stack, &[(&input, 2), (&output, 1)]).await;
    let mut redis = redis(&stack).await;
    let stage = format!(
        r#"    name: rolling
    output: {{topic: {output}}}
    batch: {{max_records: 3, max_wait: 20ms}}
    kind:
      stats: {{window: 4}}
"#
    );
    let config = processor_config(&stack, &input, &group, &prefix, &stage);

    // Per key, the reference the script must agree with.
    let first_half: Vec<(&str, i64, Vec<f64>)> = vec![
        ("a", 30, vec![1.0, 2.0]),
        ("b", 11, vec![-5.5]),
        ("a", 12, vec![3.0]),
        ("b", 43, vec![]),
    ];
    // Times are distinct and not in offset order: `updated_ts` is the last record's.
    let second_half: Vec<(&str, i64, Vec<f64>)> = vec![
        ("a", 20, vec![10.0, 0.25]),
        ("b", 21, vec![4.5, 1.0]),
        ("a", 7, vec![7.0]),
    ];
    let mut windows: HashMap<&str, (RollingWindow, i64)> = HashMap::new();
    for (key, ts, values) in first_half.iter().chain(&second_half) {
        let entry = windows
            .entry(key)
            .or_insert_with(|| (RollingWindow::new(4), 0));
        entry.0.push_record(values);
        entry.1 = *ts;
    }
    let encode = |records: &[(&str, i64, Vec<f64>)]| -> Vec<(String, Vec<u8>)> {
        records
            .iter()
            .map(|(key, ts, values)| ((*key).to_owned(), json_record(*ts, values, "")))
            .collect()
    };

    let producer = producer(&stack);
    produce(&producer, &input, &encode(&first_half)).await;
    let mut worker = Worker::start(&config);
    eventually(&mut worker, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let key = format!("{prefix}:stats:rolling:a");
        async move {
            let count: Option<i64> = redis.hget(&key, "count").await.ok().flatten();
            (count == Some(3)).then_some(())
        }
    })
    .await;
    worker.stop();

    // A new process must continue the windows, not restart them.
    produce(&producer, &input, &encode(&second_half)).await;
    let mut worker = Worker::start(&config);
    eventually(&mut worker, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let key = format!("{prefix}:stats:rolling:a");
        async move {
            let updated: Option<i64> = redis.hget(&key, "updated_ts").await.ok().flatten();
            (updated == Some(7)).then_some(())
        }
    })
    .await;
    eventually(&mut worker, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let key = format!("{prefix}:stats:rolling:b");
        async move {
            let updated: Option<i64> = redis.hget(&key, "updated_ts").await.ok().flatten();
            (updated == Some(21)).then_some(())
        }
    })
    .await;

    for key in ["a", "b"] {
        let (window, updated_ts) = &windows[key];
        let expected = window.summary().unwrap();
        let hash: HashMap<String, String> = redis
            .hgetall(format!("{prefix}:stats:rolling:{key}"))
            .await
            .unwrap();
        let number = |field: &str| -> f64 { hash[field].parse().unwrap() };
        assert_eq!(number("count") as usize, expected.count, "{key}: {hash:?}");
        assert_eq!(number("min"), expected.min, "{key}: {hash:?}");
        assert_eq!(number("max"), expected.max, "{key}: {hash:?}");
        assert_eq!(number("mean"), expected.mean, "{key}: {hash:?}");
        assert_eq!(number("last"), expected.last, "{key}: {hash:?}");
        assert_eq!(hash["updated_ts"], updated_ts.to_string(), "{key}");
        let stored: Vec<f64> = redis
            .lrange(format!("{prefix}:stats-window:rolling:{key}"), 0, -1)
            .await
            .unwrap();
        assert_eq!(stored, window.values().collect::<Vec<_>>(), "{key}");
    }
    // a: [1,2] [3] [10,0.25] [7] → newest four: 7, 0.25, 10, 3.
    let a: HashMap<String, String> = redis
        .hgetall(format!("{prefix}:stats:rolling:a"))
        .await
        .unwrap();
    assert_eq!(
        (
            a["count"].as_str(),
            a["min"].as_str(),
            a["max"].as_str(),
            a["mean"].as_str(),
            a["last"].as_str()
        ),
        ("4", "0.25", "10", "5.0625", "7")
    );

    // Input passes through to the output topic, with its source position.
    let passed = read_topic(
        &stack,
        &output,
        7,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(passed.len(), 7, "{passed:?}");
    let verdict = oracle::check_stats(
        &stack.redis_url,
        &prefix,
        "rolling",
        4,
        ferry_worker::config::RecordFormat::Json,
        &oracle::read_source(&stack.kafka, &input),
    );
    eprintln!("{verdict}");
    verdict.assert_exact(&worker.log);
    worker.stop();
}
