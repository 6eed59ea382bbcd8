//! The standing watch of `RedisSink` against a real Redis: the checkpoints a transaction
//! reads for the next batch right after its `EXEC` are only trusted while the `WATCH` that
//! guards them is still set, so a batch filtered by them can never commit over a checkpoint
//! another writer moved in between (the fence of docs/exactly-once.md, in one round trip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_worker::config::RedisConfig;
use ferry_worker::sink::{Checkpoint, RedisSink, TransactionOutcome};

fn redis_url() -> String {
    ferry_test_support::require_stack_var("REDIS_URL")
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ferry-test-{name}-{nanos}")
}

fn sink(prefix: &str) -> RedisSink {
    let config = RedisConfig {
        url: redis_url(),
        username: None,
        password_env: None,
        tls: None,
        key_prefix: prefix.to_owned(),
    };
    RedisSink::new(&config, Duration::from_secs(5)).expect("sink")
}

fn set(key: &str, value: &str) -> redis::Cmd {
    let mut command = redis::cmd("SET");
    command.arg(key).arg(value);
    command
}

/// Another client, as a second writer that took the partition would be.
async fn other_client() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn checkpoint(offset: i64, timestamp_ms: i64) -> Option<Checkpoint> {
    Some(Checkpoint {
        offset,
        timestamp_ms: Some(timestamp_ms),
    })
}

#[tokio::test]
async fn a_transaction_reads_the_next_batchs_checkpoints_under_a_watch_that_stays_set() {
    let prefix = unique("standing");
    let (first, second) = (format!("{prefix}:cp:0"), format!("{prefix}:cp:1"));
    let watched = [first.clone(), second.clone()];
    let mut sink = sink(&prefix);

    let outcome = sink
        .transaction(vec![set(&first, "5@100")], &watched)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransactionOutcome::Committed {
            failed_commands: vec![]
        }
    );
    assert_eq!(
        sink.take_standing(std::slice::from_ref(&second)),
        Some(vec![None]),
        "the standing read covers every watched key, written or not"
    );
    assert_eq!(sink.take_standing(&watched), None, "taken once");

    // Standing again; another writer moves a checkpoint before the next batch goes out.
    sink.transaction(vec![set(&first, "6@101")], &watched)
        .await
        .unwrap();
    let standing = sink.take_standing(&watched).unwrap();
    assert_eq!(standing, vec![checkpoint(6, 101), None]);
    let mut other = other_client().await;
    let () = redis::cmd("SET")
        .arg(&second)
        .arg("40@200")
        .query_async(&mut other)
        .await
        .unwrap();
    // The batch filtered by the standing read would overwrite the other writer's work:
    // its `EXEC` must abort, and the same round trip reads what the other writer left.
    let outcome = sink
        .transaction(vec![set(&second, "7@102")], &watched)
        .await
        .unwrap();
    assert_eq!(outcome, TransactionOutcome::Aborted);
    assert_eq!(
        sink.take_standing(&watched),
        Some(vec![checkpoint(6, 101), checkpoint(40, 200)])
    );
    let held: String = redis::cmd("GET")
        .arg(&second)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(held, "40@200", "nothing of the aborted batch landed");

    let () = redis::cmd("DEL")
        .arg(&watched)
        .query_async(&mut other)
        .await
        .unwrap();
}

#[tokio::test]
async fn anything_else_on_the_connection_drops_the_standing_read() {
    let prefix = unique("dropped");
    let key = format!("{prefix}:cp:0");
    let watched = [key.clone()];
    let mut sink = sink(&prefix);

    sink.transaction(vec![set(&key, "1@1")], &watched)
        .await
        .unwrap();
    sink.ping().await.unwrap();
    assert_eq!(
        sink.take_standing(&watched),
        None,
        "a command since: read again"
    );

    sink.transaction(vec![set(&key, "2@2")], &watched)
        .await
        .unwrap();
    sink.unwatch().await.unwrap();
    assert_eq!(sink.take_standing(&watched), None, "UNWATCH released it");

    sink.transaction(vec![set(&key, "3@3")], &watched)
        .await
        .unwrap();
    let other_key = format!("{prefix}:cp:1");
    assert_eq!(
        sink.take_standing(&[key.clone(), other_key]),
        None,
        "a key the standing watch does not cover"
    );

    sink.transaction(vec![set(&key, "4@4")], &[]).await.unwrap();
    assert_eq!(sink.take_standing(&watched), None, "nothing asked for");

    // A command refused when queued discards the transaction and is reported, not taken
    // for a commit; no standing read is left behind it.
    let mut wrong = redis::cmd("LPUSH");
    wrong.arg(&key);
    let error = sink
        .transaction(vec![wrong], &watched)
        .await
        .expect_err("LPUSH without a value is refused when queued");
    assert!(error.to_string().contains("transaction"), "{error}");
    assert_eq!(sink.take_standing(&watched), None);

    let mut other = other_client().await;
    let held: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(held, "4@4");
    let () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut other)
        .await
        .unwrap();
}
