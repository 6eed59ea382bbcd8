//! The status channel end to end on the local cluster: real worker pods report what stops
//! them on `/status`, the real operator reads it from the pods and the Pipeline's `Degraded`
//! condition (and a Warning Event) names the stage, the reason and, for a wedged record,
//! its partition and offset. Read back from the real API server.
//!
//! - a Redis ACL user without channel rights: `RedisPermissionDenied`, naming `PUBLISH`
//!   and the channel, at start, before any record;
//! - a dead-letter topic that does not exist and a record that must go there:
//!   `RecordUndeliverable` with the record's partition and offset;
//! - a list key that another client made a string: `KeyWrongType` naming the key;
//! - a validation counter field that is not an integer (HINCRBY fails inside EXEC):
//!   `CommandFailedInExec` on the processor, naming the command;
//! - a Redis port nothing listens on: `RedisUnavailable`;
//! - a record batch damaged on the broker's disk (a codec no client knows):
//!   `ConsumeFailing`, naming librdkafka's error;
//! - a source topic that does not exist: `TopicMissing` naming it;
//! - the source topic deleted and created again under the running receiver (the fault that
//!   once lost every new record while the Pipeline showed Ready): `OffsetsWentBack` (read
//!   on, when librdkafka resets the position) or `TopicRecreated` (at a placement), and the
//!   new record stored.
//!
//! Needs the whole local stack and the worker image built from this tree
//! (`bash e2e/local/images.sh worker "$CARGO_TARGET_DIR/release/ferry-worker" "$CARGO_TARGET_DIR/release/ferry-api"`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use ferry_operator::crd::{Condition, Pipeline};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{
    OperatorProcess, StackEnv, TestNamespace, eventually, install_crds, kubectl_ok, random_suffix,
};

fn pipeline(
    name: &str,
    topic: &str,
    prefix: &str,
    redis_extra: &str,
    receiver_extra: &str,
) -> Pipeline {
    pipeline_with(name, topic, prefix, redis_extra, receiver_extra, "", None)
}

/// [`pipeline`] with `spec_extra` appended to the spec (processors) and another Redis port.
fn pipeline_with(
    name: &str,
    topic: &str,
    prefix: &str,
    redis_extra: &str,
    receiver_extra: &str,
    spec_extra: &str,
    redis_port: Option<u16>,
) -> Pipeline {
    let receiver = format!(
        "{receiver_extra}\n    scaling:\n      mode: manual\n      minReplicas: 1\n      \
         maxReplicas: 1"
    );
    support::StackPipeline {
        redis_extra,
        receiver_extra: &receiver,
        spec_extra,
        redis_port,
        ..support::StackPipeline::new(name, topic, prefix)
    }
    .build()
}

/// A valid dsdata record for `key`.
fn good_record(key: &str) -> Vec<u8> {
    ferry_config::record::dsdata::encode(&ferry_config::record::DataRecord {
        timestamp_ms: 1_700_000_000_000,
        values: vec![1.0],
        text: format!("{key} is fine"),
    })
    .unwrap()
}

fn degraded(pipeline: &Pipeline) -> Option<Condition> {
    pipeline
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
}

/// Waits for `Degraded=True` with `reason` and a message that passes `check`; on timeout the
/// failure shows the condition as it was.
async fn wait_degraded(
    api: &Api<Pipeline>,
    name: &str,
    reason: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> Condition {
    let start = std::time::Instant::now();
    let mut last = None;
    loop {
        if let Ok(pipeline) = api.get(name).await {
            let condition = degraded(&pipeline);
            if let Some(c) = &condition
                && c.status == "True"
                && c.reason == reason
                && check(&c.message)
            {
                return c.clone();
            }
            last = condition;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for Degraded={reason} on {name}; the condition: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn warning_event(events: &Api<Event>, name: &str, reason: &str) -> Option<Event> {
    events
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.involved_object.name.as_deref() == Some(name)
        })
}

fn redis_cli(args: &[&str]) -> String {
    let env = StackEnv::load();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &env.redis_port()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_reasons_reach_the_pipeline_condition_and_events() {
    let env = StackEnv::load();
    let bootstrap = env.get("KAFKA_BOOTSTRAP").to_owned();
    install_crds();
    let ns = TestNamespace::new("worker-status");
    let _operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let suffix = random_suffix();

    // 1. A Redis ACL user without channel rights.
    let user = format!("ferry-status-{suffix}");
    let password = format!("pw-{suffix}");
    assert!(
        redis_cli(&[
            "ACL",
            "SETUSER",
            &user,
            "on",
            &format!(">{password}"),
            "~*",
            "+@all"
        ])
        .contains("OK")
    );
    let _user = AclGuard(user.clone());
    kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "generic",
        "redis-auth",
        &format!("--from-literal=password={password}"),
    ]);
    let acl_topic = format!("status-acl-{suffix}");
    let acl_prefix = format!("acl{suffix}");
    support::create_topic(&bootstrap, &acl_topic, 2).await;
    pipelines
        .create(
            &PostParams::default(),
            &pipeline(
                "acl",
                &acl_topic,
                &acl_prefix,
                &format!(
                    "    username: {user}\n    passwordSecretRef: {{name: redis-auth, key: password}}"
                ),
                "",
            ),
        )
        .await
        .unwrap();

    // 2. A dead-letter topic that does not exist, and a record that must go there.
    let dlq_topic = format!("status-dlq-{suffix}");
    let missing = format!("status-dlq-missing-{suffix}");
    let dlq_prefix = format!("dlq{suffix}");
    support::create_topic(&bootstrap, &dlq_topic, 2).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let bad_offset = producer
        .send(
            FutureRecord::to(&dlq_topic)
                .partition(1)
                .key("src-bad")
                .payload("not dsdata"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap()
        .offset;
    pipelines
        .create(
            &PostParams::default(),
            &pipeline(
                "dlq",
                &dlq_topic,
                &dlq_prefix,
                "",
                &format!("    deadLetter: {{topic: {missing}}}"),
            ),
        )
        .await
        .unwrap();

    // 3. A list key another client made a string.
    let wrong_topic = format!("status-wrong-{suffix}");
    let wrong_prefix = format!("wrong{suffix}");
    let wrong_key = format!("{wrong_prefix}:list:src-wrong");
    support::create_topic(&bootstrap, &wrong_topic, 1).await;
    assert!(redis_cli(&["SET", &wrong_key, "a string"]).contains("OK"));
    send(
        &producer,
        &wrong_topic,
        "src-wrong",
        &good_record("src-wrong"),
    )
    .await;
    pipelines
        .create(
            &PostParams::default(),
            &pipeline("wrongtype", &wrong_topic, &wrong_prefix, "", ""),
        )
        .await
        .unwrap();

    // 4. A validation counter field that is not an integer: HINCRBY fails inside EXEC.
    let exec_topic = format!("status-exec-{suffix}");
    let exec_prefix = format!("exec{suffix}");
    support::create_topic(&bootstrap, &exec_topic, 1).await;
    redis_cli(&[
        "HSET",
        &format!("{exec_prefix}:counters:check:src-a"),
        "valid",
        "not a number",
    ]);
    send(&producer, &exec_topic, "src-a", &good_record("src-a")).await;
    pipelines
        .create(
            &PostParams::default(),
            &pipeline_with(
                "execfail",
                &exec_topic,
                &exec_prefix,
                "",
                "",
                "  processors:\n    - name: check\n      validate:\n        rules:\n          \
                 - name: has-text\n            expression: text NOT NULL\n      scaling:\n        \
                 mode: manual\n        minReplicas: 1\n        maxReplicas: 1",
                None,
            ),
        )
        .await
        .unwrap();

    // 5. A Redis port nothing listens on.
    let down_topic = format!("status-down-{suffix}");
    support::create_topic(&bootstrap, &down_topic, 1).await;
    pipelines
        .create(
            &PostParams::default(),
            &pipeline_with(
                "redisdown",
                &down_topic,
                &format!("down{suffix}"),
                "",
                "",
                "",
                Some(ferry_test_support::free_port()),
            ),
        )
        .await
        .unwrap();

    // 6. A record batch damaged on the broker's disk.
    let corrupt_topic = format!("status-corrupt-{suffix}");
    support::create_topic(&bootstrap, &corrupt_topic, 1).await;
    send(&producer, &corrupt_topic, "src-c", &good_record("src-c")).await;
    ferry_test_support::corrupt_first_batch(&corrupt_topic, 0);
    pipelines
        .create(
            &PostParams::default(),
            &pipeline(
                "corrupt",
                &corrupt_topic,
                &format!("corrupt{suffix}"),
                "",
                "",
            ),
        )
        .await
        .unwrap();

    // 7. A source topic that does not exist.
    let absent_topic = format!("status-absent-{suffix}");
    pipelines
        .create(
            &PostParams::default(),
            &pipeline(
                "nosource",
                &absent_topic,
                &format!("absent{suffix}"),
                "",
                "",
            ),
        )
        .await
        .unwrap();

    // 8. The source topic deleted and created again once the receiver has checkpointed.
    let again_topic = format!("status-again-{suffix}");
    let again_prefix = format!("again{suffix}");
    support::create_topic(&bootstrap, &again_topic, 1).await;
    for n in 0..3 {
        send(
            &producer,
            &again_topic,
            "src-r",
            &good_record(&format!("r{n}")),
        )
        .await;
    }
    pipelines
        .create(
            &PostParams::default(),
            &pipeline("recreated", &again_topic, &again_prefix, "", ""),
        )
        .await
        .unwrap();

    let acl = wait_degraded(
        &pipelines,
        "acl",
        "RedisPermissionDenied",
        Duration::from_secs(150),
        |m| {
            m.contains("receiver")
                && m.contains("PUBLISH")
                && m.contains(&format!("{acl_prefix}:events"))
        },
    )
    .await;
    println!(
        "acl: Degraded={} {}: {}",
        acl.status, acl.reason, acl.message
    );
    assert!(!acl.message.contains(&password), "no secret in status");
    let event = eventually(
        Duration::from_secs(30),
        "a RedisPermissionDenied Event",
        || warning_event(&events, "acl", "RedisPermissionDenied"),
    )
    .await;
    println!("acl event: {:?}", event.message);

    let dlq = wait_degraded(
        &pipelines,
        "dlq",
        "RecordUndeliverable",
        Duration::from_secs(150),
        |m| m.contains("partition 1") && m.contains(&format!("offset {bad_offset}")),
    )
    .await;
    println!(
        "dlq: Degraded={} {}: {}",
        dlq.status, dlq.reason, dlq.message
    );
    let event = eventually(
        Duration::from_secs(30),
        "a RecordUndeliverable Event",
        || warning_event(&events, "dlq", "RecordUndeliverable"),
    )
    .await;
    println!("dlq event: {:?}", event.message);

    for (name, reason, needle) in [
        ("wrongtype", "KeyWrongType", wrong_key.as_str()),
        ("execfail", "CommandFailedInExec", "HINCRBY"),
        ("redisdown", "RedisUnavailable", "receiver"),
        ("corrupt", "ConsumeFailing", "Not implemented"),
        ("nosource", "TopicMissing", absent_topic.as_str()),
    ] {
        let condition = wait_degraded(&pipelines, name, reason, Duration::from_secs(150), |m| {
            m.contains(needle)
        })
        .await;
        println!(
            "{name}: Degraded={} {}: {}",
            condition.status, condition.reason, condition.message
        );
        if name == "execfail" {
            assert!(condition.message.contains("check"), "names the processor");
        }
        let event = eventually(
            Duration::from_secs(30),
            &format!("a {reason} Event on {name}"),
            || warning_event(&events, name, reason),
        )
        .await;
        println!("{name} event: {:?}", event.message);
    }
    redis_cli(&["DEL", &wrong_key]);

    let checkpoint = format!("{again_prefix}:ckpt:receiver:{again_topic}:0");
    eventually(Duration::from_secs(90), "the receiver's checkpoint", || {
        let value = redis_cli(&["GET", &checkpoint]);
        async move { value.starts_with("2@").then_some(()) }
    })
    .await;
    ferry_test_support::recreate_topic(&bootstrap, &again_topic, 1).await;
    send(&producer, &again_topic, "src-r", &good_record("after")).await;
    let recreated = eventually(
        Duration::from_secs(120),
        "Degraded=OffsetsWentBack or TopicRecreated on recreated",
        || async {
            let c = degraded(&pipelines.get("recreated").await.ok()?)?;
            (c.status == "True"
                && ["OffsetsWentBack", "TopicRecreated"].contains(&c.reason.as_str())
                && c.message.contains("partition 0"))
            .then_some(c)
        },
    )
    .await;
    println!(
        "recreated: Degraded={} {}: {}",
        recreated.status, recreated.reason, recreated.message
    );
    let history = format!("{again_prefix}:list:src-r");
    eventually(
        Duration::from_secs(60),
        "the new incarnation's record stored",
        || {
            let held = redis_cli(&["LLEN", &history]);
            async move { (held.trim() == "4").then_some(()) }
        },
    )
    .await;
    println!("recreated: {history} holds the 3 old records and the new one");

    // Granting the channel clears the ACL Pipeline's condition.
    redis_cli(&["ACL", "SETUSER", &user, &format!("&{acl_prefix}:events")]);
    eventually(Duration::from_secs(90), "Degraded=False on acl", || async {
        let c = degraded(&pipelines.get("acl").await.ok()?)?;
        (c.status == "False").then_some(())
    })
    .await;
}

/// Sends one record; fails the test if it is not acknowledged.
async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) -> i64 {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(err, _)| err)
        .unwrap()
        .offset
}

/// Deletes the test's ACL user from the shared Redis, pass or fail.
struct AclGuard(String);

impl Drop for AclGuard {
    fn drop(&mut self) {
        redis_cli(&["ACL", "DELUSER", &self.0]);
    }
}
