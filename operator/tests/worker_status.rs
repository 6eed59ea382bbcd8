//! The status channel end to end on the local cluster: real worker pods report what stops
//! them on `/status`, the real operator reads it from the pods and the Pipeline's `Degraded`
//! condition (and a Warning Event) names the stage, the reason and, for a wedged record,
//! its partition and offset. Read back from the real API server.
//!
//! - a Redis ACL user without channel rights: `RedisPermissionDenied`, naming `PUBLISH`
//!   and the channel, at start, before any record;
//! - a dead-letter topic that does not exist and a record that must go there:
//!   `RecordUndeliverable` with the record's partition and offset.
//!
//! Needs the whole local stack and the worker image built from this tree
//! (`bash e2e/local/images.sh worker "$CARGO_TARGET_DIR/release/ferry-worker"`).

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
    let env = StackEnv::load();
    serde_yaml::from_str(&format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata:
  name: {name}
spec:
  kafka:
    bootstrapServers: {bootstrap}
    topic: {topic}
    consumerGroup: {name}-{prefix}
  redis:
    host: {host}
    port: {port}
    keyPrefix: {prefix}
{redis_extra}
  format: dsdata
  receiver:
    storage:
      type: list
      historyDepth: 1000
{receiver_extra}
    scaling:
      mode: manual
      minReplicas: 1
      maxReplicas: 1
"#,
        bootstrap = env.get("KAFKA_BOOTSTRAP"),
        host = env.pod_host(),
        port = env.redis_port(),
    ))
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

    // Granting the channel clears the ACL Pipeline's condition.
    redis_cli(&["ACL", "SETUSER", &user, &format!("&{acl_prefix}:events")]);
    eventually(Duration::from_secs(90), "Degraded=False on acl", || async {
        let c = degraded(&pipelines.get("acl").await.ok()?)?;
        (c.status == "False").then_some(())
    })
    .await;
}

/// Deletes the test's ACL user from the shared Redis, pass or fail.
struct AclGuard(String);

impl Drop for AclGuard {
    fn drop(&mut self) {
        redis_cli(&["ACL", "DELUSER", &self.0]);
    }
}
