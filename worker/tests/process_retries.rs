//! A processor that retries a batch does not produce its outputs again, and says why it
//! retries. The fault: the processor's Redis ACL user loses `HINCRBY` while records flow,
//! so every batch transaction is discarded (`NOPERM` when the command is queued, then
//! `EXECABORT`) after its outputs were produced and acknowledged; the right comes back a
//! few seconds later. Every input record must reach the output topic once: before the fix
//! each retry produced the whole batch again.
//!
//! Needs the local stack (`make stack-up`); fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod process_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use process_support::*;

fn acl(stack: &Stack, args: &[&str]) {
    let mut connection = redis::Client::open(stack.redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: redis::Value = redis::cmd("ACL").arg(args).query(&mut connection).unwrap();
}

/// Deletes the test's ACL user, pass or fail.
struct AclUser<'a>(&'a Stack, String);

impl Drop for AclUser<'_> {
    fn drop(&mut self) {
        acl(self.0, &["DELUSER", &self.1]);
    }
}

/// Kills the worker, pass or fail.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_batch_does_not_produce_its_outputs_again() {
    let stack = stack();
    let (input, output, dead) = (unique("in"), unique("out"), unique("dead"));
    let prefix = unique("ferry");
    let group = unique("group");
    create_topics(&stack, &[(&input, 2), (&output, 1), (&dead, 1)]).await;
    let user = unique("ferry-acl");
    acl(
        &stack,
        &["SETUSER", &user, "on", ">retry-pw", "~*", "&*", "+@all"],
    );
    let _user = AclUser(&stack, user.clone());

    let stage = r#"    name: check
    output: {topic: OUTPUT}
    dead_letter: {topic: DEAD}
    batch: {max_records: 50, max_wait: 20ms}
    kind:
      validate:
        rules:
          - name: in-range
            expression: values[0] IN RANGE 0 1000000
"#
    .replace("OUTPUT", &output)
    .replace("DEAD", &dead);
    let config = processor_config(&stack, &input, &group, &prefix, &stage).replace(
        &format!("  key_prefix: {prefix}\n"),
        &format!(
            "  key_prefix: {prefix}\n  username: {user}\n  password_env: FERRY_REDIS_PASSWORD\n"
        ),
    );
    assert!(config.contains("password_env"), "{config}");
    let port: u16 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: 127.0.0.1:"))
        .unwrap()
        .parse()
        .unwrap();
    let dir = std::env::temp_dir().join(unique("retries"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), &config).unwrap();
    let log = dir.join("worker.log");
    let config_path = dir.join("config.yaml");
    let args = ["process", "--config"].map(std::ffi::OsStr::new);
    let _worker = Child(oracle::spawn_worker(
        &[&args[..], &[config_path.as_os_str()]].concat(),
        &[("FERRY_REDIS_PASSWORD", "retry-pw")],
        &log,
    ));
    let mut redis = redis(&stack).await;
    let producer = producer(&stack);
    let batch = |from: usize| -> Vec<(String, Vec<u8>)> {
        (from..from + 100)
            .map(|i| {
                (
                    format!("s{}", i % 7),
                    json_record(1000 + i as i64, &[i as f64], "t"),
                )
            })
            .collect()
    };
    let wait_applied = |last: BTreeMap<i32, i64>, what: &'static str| {
        let mut redis = redis.clone();
        let (prefix, input, log) = (prefix.clone(), input.clone(), log.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Checkpoints are keyed by the stage: the processor's name.
            while !all_applied(&mut redis, &prefix, "check", &input, &last).await {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not applied; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let first = produce(&producer, &input, &batch(0)).await;
    wait_applied(first, "the first records").await;

    // The fault: HINCRBY refused, so each batch transaction is discarded after its outputs
    // went out; six seconds of retries, then the right is back.
    acl(&stack, &["SETUSER", &user, "-hincrby"]);
    let second = produce(&producer, &input, &batch(100)).await;
    let denied_until = Instant::now() + Duration::from_secs(6);
    let mut reported = None;
    while Instant::now() < denied_until {
        if let Some((_, body)) = oracle::http_get(port, "/status")
            && body.contains("RedisPermissionDenied")
        {
            reported = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    acl(&stack, &["SETUSER", &user, "+hincrby"]);
    wait_applied(second, "the records after the fault").await;

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let retries = text.matches("batch not committed; retrying").count();
    let outputs = read_topic(
        &stack,
        &output,
        200,
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    let mut per_source: BTreeMap<(String, String), usize> = BTreeMap::new();
    for record in &outputs {
        let position = (
            record
                .headers
                .get("ferry-source-partition")
                .cloned()
                .unwrap_or_default(),
            record
                .headers
                .get("ferry-source-offset")
                .cloned()
                .unwrap_or_default(),
        );
        *per_source.entry(position).or_default() += 1;
    }
    let repeated: Vec<_> = per_source.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} outputs for {} input records ({} distinct); {} produced more than once; {retries} \
         batch retries; /status while refused: {reported:?}",
        outputs.len(),
        200,
        per_source.len(),
        repeated.len(),
    );
    assert!(retries > 0, "the fault landed: batches were retried");
    assert_eq!(per_source.len(), 200, "every input record has its output");
    assert!(
        repeated.is_empty(),
        "outputs produced again by retries: {} of 200, e.g. {:?}",
        repeated.len(),
        repeated.first()
    );
    let reported = reported.expect("/status named the refused right while it was refused");
    assert!(reported.contains("HINCRBY"), "{reported}");
    let _ = &mut redis;
}
