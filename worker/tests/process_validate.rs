//! `ferry-worker process` with a validate stage, against the real local stack.

mod oracle;
mod process_support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_worker::config::RecordFormat;
use ferry_worker::record::DataRecord;
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
        .hgetall(format!("{prefix}:counters:check:{key}"))
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
        ("s1".to_owned(), json_record(1040, &[50.0], "ok")), // valid
        ("s1".to_owned(), json_record(1001, &[150.0], "ok")), // in-range fails
        ("s1".to_owned(), json_record(1032, &[5.0, 1.0], "")), // valid: text NULL but values[1] EQ 1
        ("s2".to_owned(), json_record(1003, &[], "ok")),       // in-range fails: values[0] NULL
        ("s3".to_owned(), json_record(1024, &[1.0], "ok")),    // known-source fails
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
    let verdict = oracle::check_counters(
        &stack.redis_url,
        &prefix,
        "check",
        RecordFormat::Json,
        &oracle::read_source(&stack.kafka, &input),
        &is_valid(&["s1", "s2"]),
    );
    eprintln!("{verdict}");
    verdict.assert_exact(&worker.log);
    worker.stop();
}

/// The test's own statement of `validate_stage`'s rules, for the oracle.
fn is_valid<'a>(allowed: &'a [&'a str]) -> impl Fn(&str, &DataRecord) -> bool + 'a {
    move |key, record| {
        let in_range = record
            .values
            .first()
            .is_some_and(|v| (0.0..=100.0).contains(v));
        let text_or_flag = !record.text.is_empty() || record.values.get(1) == Some(&1.0);
        allowed.contains(&key) && in_range && text_or_flag
    }
}

/// Produces `count` JSON records over `keys` at about `rate` a second, with distinct,
/// scrambled timestamps and distinct values; returns the last offset per partition.
async fn produce_paced(
    stack: &Stack,
    topic: &str,
    keys: &[&str],
    count: usize,
    rate: f64,
) -> BTreeMap<i32, i64> {
    produce_sequences(stack, topic, keys, 0..count, rate).await
}

/// More records after `produce_paced`, as fast as the broker takes them, with values and
/// times distinct from the first ones.
async fn produce_paced_from(
    stack: &Stack,
    topic: &str,
    keys: &[&str],
    sequences: std::ops::Range<usize>,
) -> BTreeMap<i32, i64> {
    produce_sequences(stack, topic, keys, sequences, 100_000.0).await
}

async fn produce_sequences(
    stack: &Stack,
    topic: &str,
    keys: &[&str],
    sequences: std::ops::Range<usize>,
    rate: f64,
) -> BTreeMap<i32, i64> {
    produce_sequences_until(stack, topic, keys, sequences, rate, &AtomicBool::new(false)).await
}

/// [`produce_sequences`], ending early once `stop` is set.
async fn produce_sequences_until(
    stack: &Stack,
    topic: &str,
    keys: &[&str],
    sequences: std::ops::Range<usize>,
    rate: f64,
    stop: &AtomicBool,
) -> BTreeMap<i32, i64> {
    let (first, count) = (sequences.start, sequences.end);
    let producer = producer(stack);
    let base = 1_700_000_000_000;
    let started = Instant::now();
    let mut last = BTreeMap::new();
    for chunk_start in (first..count).step_by(100) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = Duration::from_secs_f64((chunk_start - first) as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let records: Vec<(String, Vec<u8>)> = (chunk_start..(chunk_start + 100).min(count))
            .map(|i| {
                let key = keys[i % keys.len()].to_owned();
                let ts = oracle::scrambled_ts(base, i);
                (
                    key,
                    json_record(ts, &[(i % 150) as f64, i as f64 + 0.5], "t"),
                )
            })
            .collect();
        for (partition, offset) in produce(&producer, topic, &records).await {
            let at = last.entry(partition).or_insert(-1);
            *at = offset.max(*at);
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_sigkilled_holding_uncommitted_records_loses_and_doubles_nothing() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(&stack, &[(&input, 4), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let allowed = format!("{prefix}:allowed");
    let _: () = redis.sadd(&allowed, &["a", "b", "c"]).await.unwrap();
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let config = processor_config(
        &stack,
        &input,
        &group,
        &prefix,
        &validate_stage(&output, &dead, &allowed, 50),
    );

    // Records keep coming while the victim works, so it always has applied records that
    // the next auto-commit has not covered yet.
    let producing = tokio::spawn({
        let stack = Stack {
            kafka: stack.kafka.clone(),
            redis_url: stack.redis_url.clone(),
        };
        let input = input.clone();
        async move { produce_paced(&stack, &input, &keys, 8_000, 1_000.0).await }
    });
    let mut victim = Worker::start(&config);
    // Kill only once it owns partitions and Redis is ahead of the committed offsets.
    let (ahead, at_kill) = eventually(&mut victim, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let (prefix, group, input, kafka) = (
            prefix.clone(),
            group.clone(),
            input.clone(),
            stack.kafka.clone(),
        );
        async move {
            let applied = checkpoints(&mut redis, &prefix, "check", &input, 4).await;
            let committed = oracle::committed_offsets(&kafka, &group, &input, 4);
            let ahead: i64 = applied
                .iter()
                .filter_map(|(p, c)| {
                    let c = (*c)?;
                    let next = committed.get(p).copied().unwrap_or(0);
                    (c >= next).then_some(c + 1 - next)
                })
                .sum();
            (ahead >= 20).then(|| {
                (
                    ahead,
                    format!("applied {applied:?}, committed {committed:?}"),
                )
            })
        }
    })
    .await;
    victim.crash();
    eprintln!("killed holding {ahead} applied but uncommitted records: {at_kill}");

    let mut successor = Worker::start(&config);
    let last_offsets = producing.await.unwrap();
    wait_all_applied(
        &mut successor,
        &stack,
        &prefix,
        "check",
        &input,
        &last_offsets,
    )
    .await;
    let skipped = successor
        .metric("ferry_records_skipped_total")
        .unwrap_or(0.0);
    let source = oracle::read_source(&stack.kafka, &input);
    let verdict = oracle::check_counters(
        &stack.redis_url,
        &prefix,
        "check",
        RecordFormat::Json,
        &source,
        &is_valid(&["a", "b", "c"]),
    );
    eprintln!("replay filter skipped {skipped} records; {verdict}");
    verdict.assert_exact(&successor.log);
    assert!(
        skipped > 0.0,
        "the successor skipped nothing: the kill did not land on uncommitted work"
    );
    // Output is at-least-once: every valid record is there, duplicates are recognisable.
    let expected_valid = source
        .iter()
        .filter(|r| {
            r.decode(RecordFormat::Json)
                .is_some_and(|(key, record)| is_valid(&["a", "b", "c"])(key, &record))
        })
        .count();
    let valid = read_topic(
        &stack,
        &output,
        expected_valid,
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
    assert_eq!(distinct.len(), expected_valid);
    successor.stop();
}

/// Waits until every partition of `input` is checkpointed by `group` up to `last`.
async fn wait_all_applied(
    worker: &mut Worker,
    stack: &Stack,
    prefix: &str,
    stage: &str,
    input: &str,
    last: &BTreeMap<i32, i64>,
) {
    let redis = redis(stack).await;
    eventually(worker, Duration::from_secs(120), || {
        let mut redis = redis.clone();
        let (prefix, stage, input, last) = (
            prefix.to_owned(),
            stage.to_owned(),
            input.to_owned(),
            last.clone(),
        );
        async move {
            all_applied(&mut redis, &prefix, &stage, &input, &last)
                .await
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_and_windows_stay_exact_when_a_processor_joins_and_leaves_mid_stream() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    let (validate_group, stats_group) = (unique("validate"), unique("stats"));
    create_topics(&stack, &[(&input, 6), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let allowed = format!("{prefix}:allowed");
    let _: () = redis
        .sadd(&allowed, &["k0", "k1", "k2", "k3"])
        .await
        .unwrap();
    let keys: Vec<String> = (0..24).map(|k| format!("k{k}")).collect();
    // Long batches, so a rebalance lands inside one: the stage must cut it there.
    let validate = processor_config(
        &stack,
        &input,
        &validate_group,
        &prefix,
        &validate_stage(&output, &dead, &allowed, 5_000).replace("max_wait: 20ms", "max_wait: 4s"),
    );
    let stats = processor_config(
        &stack,
        &input,
        &stats_group,
        &prefix,
        r#"    name: rolling
    batch: {max_records: 5000, max_wait: 4s}
    kind:
      stats: {window: 50}
"#,
    );
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn({
        let stack = Stack {
            kafka: stack.kafka.clone(),
            redis_url: stack.redis_url.clone(),
        };
        let (input, stop) = (input.clone(), stop_producing.clone());
        async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            // Fast enough that records are still coming when each rebalance lands, so the
            // revoke can meet a batch being grown (adaptive batching flushes at once
            // otherwise); it goes on until the rounds below are done.
            produce_sequences_until(&stack, &input, &keys, 0..1_000_000, 15_000.0, &stop).await
        }
    });
    let mut first = [Worker::start(&validate), Worker::start(&stats)];
    // A second processor joins, gets partitions, and leaves, while the first grows a batch.
    // Whether a revoke meets a batch being grown is a race, so the rounds go on until one
    // has (at least 2 rounds, at most 8): that is the fault this test is for.
    let mut cut = 0;
    for round in 0..8 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut second = [Worker::start(&validate), Worker::start(&stats)];
        for worker in &mut second {
            let port = worker.port.unwrap();
            eventually(worker, Duration::from_secs(30), || async move {
                oracle::http_get(port, "/readyz").filter(|(status, _)| *status == 200)
            })
            .await;
        }
        eprintln!("round {round}: the second processors own partitions");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for worker in second {
            worker.stop();
        }
        cut = first
            .iter()
            .map(|worker| revokes_inside_a_batch(&worker.log))
            .sum();
        if round >= 1 && cut > 0 {
            break;
        }
    }
    stop_producing.store(true, Ordering::Relaxed);
    let last = producing.await.unwrap();
    wait_all_applied(&mut first[0], &stack, &prefix, "check", &input, &last).await;
    wait_all_applied(&mut first[1], &stack, &prefix, "rolling", &input, &last).await;
    let source = oracle::read_source(&stack.kafka, &input);
    let counters = oracle::check_counters(
        &stack.redis_url,
        &prefix,
        "check",
        RecordFormat::Json,
        &source,
        &is_valid(&["k0", "k1", "k2", "k3"]),
    );
    let windows = oracle::check_stats(
        &stack.redis_url,
        &prefix,
        "rolling",
        50,
        RecordFormat::Json,
        &source,
    );
    eprintln!("{counters}\n{windows}");
    // Without a revoke inside a batch the exact counters prove nothing about cutting a batch
    // at a rebalance.
    eprintln!("revokes that met a batch being grown: {cut}");
    assert!(
        cut > 0,
        "no rebalance landed inside a batch in 8 rounds; logs {:?}",
        first[0].log
    );
    counters.assert_exact(&first[0].log);
    windows.assert_exact(&first[1].log);
    for worker in first {
        worker.stop();
    }
}

/// How often the worker logging to `log` was revoked while it held records in a batch.
fn revokes_inside_a_batch(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("revoked inside a batch")
        .count()
}

/// Polls the worker until `/readyz` answers 503 naming `readyz_names` and a
/// `ferry_stage_blocked` series names `metric_names`: (that body, the last `/readyz`).
#[allow(clippy::expect_used)] // test helper
async fn wait_blocked(
    worker: &mut Worker,
    readyz_names: &str,
    metric_names: &str,
    timeout: Duration,
) -> (Option<String>, Option<(u16, String)>) {
    let port = worker.port.expect("the worker serves HTTP");
    let deadline = Instant::now() + timeout;
    let mut last_readyz = None;
    while Instant::now() < deadline {
        worker.assert_running();
        last_readyz = oracle::http_get(port, "/readyz");
        let in_metrics = oracle::http_get(port, "/metrics").is_some_and(|(_, body)| {
            body.lines()
                .any(|l| l.starts_with("ferry_stage_blocked{") && l.contains(metric_names))
        });
        if let Some((503, body)) = &last_readyz
            && body.contains(readyz_names)
            && in_metrics
        {
            return (Some(body.clone()), last_readyz);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (None, last_readyz)
}

/// Topics `in`/`valid`/`dead` (the input with `partitions`), a fresh prefix and group, the
/// allowed set holding `allowed`, and the validate config over them.
struct ValidateSetup {
    input: String,
    group: String,
    prefix: String,
    config: String,
    redis: redis::aio::MultiplexedConnection,
}

#[allow(clippy::unwrap_used)] // test setup: a failure here is the test failing
async fn validate_setup(stack: &Stack, partitions: i32, allowed: &[&str]) -> ValidateSetup {
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(stack, &[(&input, partitions), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(stack).await;
    let allowed_set = format!("{prefix}:allowed");
    let _: () = redis.sadd(&allowed_set, allowed).await.unwrap();
    let config = processor_config(
        stack,
        &input,
        &group,
        &prefix,
        &validate_stage(&output, &dead, &allowed_set, 50),
    );
    ValidateSetup {
        input,
        group,
        prefix,
        config,
        redis,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counters_key_of_another_type_blocks_the_processor_until_removed() {
    let stack = stack();
    let ValidateSetup {
        input,
        group: _,
        prefix,
        config,
        mut redis,
    } = validate_setup(&stack, 2, &["a", "b"]).await;
    // A list where the processor keeps a hash of counters.
    let squatted = format!("{prefix}:counters:check:a");
    let _: () = redis.rpush(&squatted, "not a hash").await.unwrap();
    let keys = ["a", "b", "c"];
    let last = produce_paced(&stack, &input, &keys, 300, 10_000.0).await;
    let mut worker = Worker::start(&config);
    let (blocked, last_readyz) =
        wait_blocked(&mut worker, &squatted, &squatted, Duration::from_secs(20)).await;
    let logged = worker.log_text().lines().any(|l| l.contains(&squatted));
    let _: () = redis.del(&squatted).await.unwrap();
    wait_all_applied(&mut worker, &stack, &prefix, "check", &input, &last).await;
    let verdict = oracle::check_counters(
        &stack.redis_url,
        &prefix,
        "check",
        RecordFormat::Json,
        &oracle::read_source(&stack.kafka, &input),
        &is_valid(&["a", "b"]),
    );
    eprintln!(
        "while {squatted} was a list: blocked {blocked:?}, last /readyz {last_readyz:?}, \
         logged {logged}; after DEL: {verdict}"
    );
    assert!(blocked.is_some(), "never unready naming {squatted}");
    assert!(logged, "no log line names {squatted}");
    verdict.assert_exact(&worker.log);
    worker.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processors_on_one_partition_after_a_sigstop_count_each_record_once() {
    // Whether the frozen processor still holds a batch when it resumes depends on timing (a
    // rebalance seen first cuts the batch); a round where the fence did not fire proves
    // nothing, so it is run again, and every round must be exact.
    const ROUNDS: u32 = 3;
    for round in 1..=ROUNDS {
        if sigstop_round().await {
            return;
        }
        eprintln!("round {round}: the resumed processor held nothing to commit; again");
    }
    panic!(
        "the fence never fired in {ROUNDS} rounds: the resumed processor held nothing to commit"
    );
}

/// One SIGSTOP round on fresh topics; true when the resumed processor was fenced.
#[allow(clippy::unwrap_used)] // test setup: a failure here is the test failing
async fn sigstop_round() -> bool {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("valid"), unique("dead"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(&stack, &[(&input, 2), (&output, 1), (&dead, 1)]).await;
    let mut redis = redis(&stack).await;
    let allowed = format!("{prefix}:allowed");
    let _: () = redis.sadd(&allowed, &["a", "b", "c"]).await.unwrap();
    let keys = ["a", "b", "c", "d", "e", "f"];
    let config = processor_config(
        &stack,
        &input,
        &group,
        &prefix,
        &validate_stage(&output, &dead, &allowed, 50),
    );
    // A backlog, so the first processor is mid-batch when it freezes.
    let backlog = produce_paced(&stack, &input, &keys, 20_000, 100_000.0).await;
    let mut frozen = Worker::start(&config);
    eventually(&mut frozen, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let (prefix, input) = (prefix.clone(), input.clone());
        async move {
            let applied: i64 = checkpoints(&mut redis, &prefix, "check", &input, 2)
                .await
                .values()
                .map(|c| c.map_or(0, |c| c + 1))
                .sum();
            (applied > 500).then_some(())
        }
    })
    .await;
    frozen.sigstop();
    let at_stop = checkpoints(&mut redis, &prefix, "check", &input, 2).await;
    // Past the 10 s session the group gives the partitions to the second processor.
    let mut takeover = Worker::start(&config);
    wait_all_applied(&mut takeover, &stack, &prefix, "check", &input, &backlog).await;
    frozen.sigcont();
    let (fenced, conflicts) =
        oracle::wait_fence_fired(|name| frozen.metric(name), Duration::from_secs(30)).await;
    // Both share the group again for the rest.
    let more = produce_paced_from(&stack, &input, &keys, 20_000..24_000).await;
    wait_all_applied(&mut takeover, &stack, &prefix, "check", &input, &more).await;
    let verdict = oracle::check_counters(
        &stack.redis_url,
        &prefix,
        "check",
        RecordFormat::Json,
        &oracle::read_source(&stack.kafka, &input),
        &is_valid(&["a", "b", "c"]),
    );
    eprintln!(
        "stopped at checkpoints {at_stop:?}; after SIGCONT the first processor fenced \
         {fenced} records, {conflicts} EXEC conflicts; {verdict}"
    );
    verdict.assert_exact(&takeover.log);
    frozen.stop();
    takeover.stop();
    fenced + conflicts > 0.0
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

#[tokio::test(flavor = "multi_thread")]
async fn a_command_failing_inside_exec_halts_the_stage_with_its_offsets_unstored() {
    // A counter field that is not an integer: the key is a hash, so the type check under
    // WATCH passes, and HINCRBY fails inside EXEC while Redis applies the rest of the
    // transaction. Such a batch must not count as committed.
    let stack = stack();
    let ValidateSetup {
        input,
        group,
        prefix,
        config,
        mut redis,
    } = validate_setup(&stack, 1, &["a", "b"]).await;
    let poisoned = format!("{prefix}:counters:check:a");
    let _: () = redis
        .hset(&poisoned, "valid", "not a number")
        .await
        .unwrap();
    let last = produce_paced(&stack, &input, &["a", "b"], 400, 10_000.0).await;
    let end = last.values().max().copied().unwrap_or(-1) + 1;
    let mut worker = Worker::start(&config);
    let port = worker.port.unwrap();
    let (halted, last_readyz) = wait_blocked(
        &mut worker,
        "HINCRBY",
        "command_failed",
        Duration::from_secs(30),
    )
    .await;
    // Auto commit runs every second: give it a few to show whether anything moved on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let committed = oracle::committed_offsets(&stack.kafka, &group, &input, 1);
    let still_unready = matches!(oracle::http_get(port, "/readyz"), Some((503, _)));
    eprintln!(
        "halted: {halted:?}; last /readyz {last_readyz:?}; committed {committed:?} of {end}; \
         unready 4 s later: {still_unready}"
    );
    assert!(
        halted.is_some(),
        "the stage never went unready naming the failed command"
    );
    assert!(still_unready, "the halted stage became ready again");
    assert!(
        committed.get(&0).is_none_or(|offset| *offset < end),
        "offsets were committed to the end ({committed:?}): the failed batch counted as done"
    );
    worker.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_validate_processors_in_one_pipeline_each_count_exactly_once() {
    // The same rules twice, as two processors of one Pipeline would run them: each writes
    // its own counters (its name is in their keys) and its own checkpoints.
    let stack = stack();
    let ValidateSetup {
        input,
        group,
        prefix,
        config,
        ..
    } = validate_setup(&stack, 2, &["a", "b"]).await;
    let again = config
        .replace("    name: check\n", "    name: check-again\n")
        .replace(&group, &format!("{group}-again"));
    assert_ne!(again, config);
    let last = produce_paced(&stack, &input, &["a", "b", "c"], 600, 2000.0).await;
    let mut first = Worker::start(&config);
    let mut second = Worker::start(&again);
    wait_all_applied(&mut first, &stack, &prefix, "check", &input, &last).await;
    wait_all_applied(&mut second, &stack, &prefix, "check-again", &input, &last).await;
    let source = oracle::read_source(&stack.kafka, &input);
    for (processor, worker) in [("check", &first), ("check-again", &second)] {
        let verdict = oracle::check_counters(
            &stack.redis_url,
            &prefix,
            processor,
            RecordFormat::Json,
            &source,
            &is_valid(&["a", "b"]),
        );
        eprintln!("{processor}: {verdict}");
        verdict.assert_exact(&worker.log);
    }
    first.stop();
    second.stop();
}

/// A chain of three stages, each its own worker on its own input: raw → enrich (json on
/// `enriched`) → validate with rules naming the enriched fields (`validated`) → a receiver
/// that stores only the validated records. Judged by what lands in Redis.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_stores_only_the_records_validated_on_their_enriched_fields() {
    let stack = stack();
    let (raw, enriched, validated) = (unique("raw"), unique("enriched"), unique("validated"));
    let (no_ref, invalid) = (unique("no-ref"), unique("invalid"));
    let prefix = unique("ferry");
    create_topics(
        &stack,
        &[
            (&raw, 2),
            (&enriched, 2),
            (&validated, 2),
            (&no_ref, 1),
            (&invalid, 1),
        ],
    )
    .await;
    let mut redis = redis(&stack).await;
    let reference = format!("{prefix}:ref");
    for (source, desk) in [("s1", "fx"), ("s2", "rates")] {
        let hash = format!("{reference}:v:{source}");
        let _: () = redis
            .hset_multiple(&hash, &[("desk", desk), ("limit", "100")])
            .await
            .unwrap();
        let _: () = redis
            .zadd(format!("{reference}:{source}"), &hash, 0)
            .await
            .unwrap();
    }
    // s1: desk fx, two within the limit and one above; s2: desk rates; s3: no reference.
    let records = vec![
        ("s1".to_owned(), json_record(1000, &[5.0], "a")),
        ("s1".to_owned(), json_record(2000, &[500.0], "over")),
        ("s1".to_owned(), json_record(3000, &[7.0], "b")),
        ("s2".to_owned(), json_record(1000, &[1.0], "c")),
        ("s3".to_owned(), json_record(1000, &[1.0], "d")),
    ];
    produce(&producer(&stack), &raw, &records).await;

    let enrich = format!(
        "    name: enrich\n    output: {{topic: {enriched}}}\n    dead_letter: {{topic: {no_ref}}}\n    kind:\n      enrich: {{reference_key: {reference}}}\n"
    );
    let check = format!(
        "    name: check\n    output: {{topic: {validated}}}\n    dead_letter: {{topic: {invalid}}}\n    kind:\n      validate:\n        rules:\n          - {{name: fx-desk, expression: \"ref.desk EQ 'fx'\"}}\n          - {{name: within-limit, expression: \"values[0] IN RANGE 0 ref.limit\"}}\n"
    );
    let group = unique("group");
    let mut enrich = Worker::start(&processor_config(
        &stack,
        &raw,
        &format!("{group}:enrich"),
        &prefix,
        &enrich,
    ));
    // What the operator renders for a stage downstream of enrich: its input topic, json.
    let mut check = Worker::start(&processor_config(
        &stack,
        &enriched,
        &format!("{group}:check"),
        &prefix,
        &check,
    ));
    let dir = std::env::temp_dir().join(unique("chain-receiver"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "pipeline: test\nkafka: {{bootstrap_servers: \"{kafka}\", topic: {validated}, consumer_group: {group}}}\nredis: {{url: \"{redis_url}\", key_prefix: {prefix}}}\nformat: json\nhttp: {{listen: \"127.0.0.1:{port}\"}}\nstage:\n  receiver:\n    storage: {{type: list, history_depth: 100}}\n    batch: {{max_records: 100, max_wait: 20ms}}\n",
            kafka = stack.kafka,
            redis_url = stack.redis_url,
            port = free_port(),
        ),
    )
    .unwrap();
    let args = ["receive", "--config"].map(std::ffi::OsStr::new);
    let mut receiver = oracle::spawn_worker(
        &[&args[..], &[config.as_os_str()]].concat(),
        &[("RUST_LOG", "info")],
        &dir.join("worker.log"),
    );

    let s1 = format!("{prefix}:list:s1");
    let stored: Vec<Vec<u8>> = eventually(&mut check, Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let s1 = s1.clone();
        async move {
            let stored: Vec<Vec<u8>> = redis.lrange(&s1, 0, -1).await.ok()?;
            (stored.len() >= 2).then_some(stored)
        }
    })
    .await;
    // Give a stray record time to arrive before judging what is absent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    enrich.assert_running();
    let stored_now: Vec<Vec<u8>> = redis.lrange(&s1, 0, -1).await.unwrap();
    assert_eq!(stored_now.len(), 2, "s1 holds only its two valid records");
    let texts: Vec<(String, String)> = stored
        .iter()
        .map(|bytes| {
            let row: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            (
                row["text"].as_str().unwrap().to_owned(),
                row["ref"]["desk"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            ("b".to_owned(), "fx".to_owned()),
            ("a".to_owned(), "fx".to_owned())
        ],
        "newest first, the enriched records as enrich wrote them"
    );
    for absent in ["s2", "s3"] {
        let exists: bool = redis
            .exists(format!("{prefix}:list:{absent}"))
            .await
            .unwrap();
        assert!(!exists, "{absent} was not valid and must not be stored");
    }
    let counters: HashMap<String, i64> = redis
        .hgetall(format!("{prefix}:counters:check:_total"))
        .await
        .unwrap();
    assert_eq!(counters.get("valid"), Some(&2), "{counters:?}");
    assert_eq!(counters.get("invalid"), Some(&2), "{counters:?}");
    let _ = receiver.kill();
    let _ = receiver.wait();
    check.stop();
    enrich.stop();
}
