//! End to end on the local cluster: a burst above one receiver's rate scales the receiver
//! Deployment up to at least 3 replicas, the backlog drains, the Deployment returns to
//! minReplicas after the (short) stabilization window, and Redis holds every record exactly
//! once.
//!
//! Needs the whole local stack (Kafka, Redis, Kubernetes with the worker image) and the
//! worker binary: `cargo build -p ferry-worker`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_operator::crd::Pipeline;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use support::{OperatorProcess, StackEnv, TestNamespace, eventually, install_crds, random_suffix};

const PARTITIONS: i32 = 6;
const SOURCES: u64 = 100;
const RECORDS: u64 = 300_000;

fn pipeline(name: &str, topic: &str, prefix: &str) -> Pipeline {
    let receiver = format!(
        "    scaling:\n      minReplicas: 1\n      maxReplicas: {PARTITIONS}\n      \
         lagThreshold: 5000\n      scaleDownStabilization: 10s\n      pollInterval: 1s"
    );
    support::StackPipeline {
        history_depth: 1_000_000,
        receiver_extra: &receiver,
        ..support::StackPipeline::new(name, topic, prefix)
    }
    .build()
}

async fn spec_replicas(api: &Api<Deployment>, name: &str) -> Option<i32> {
    api.get_opt(name).await.ok()??.spec?.replicas
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_scales_the_receiver_up_then_back_down_without_loss_or_duplicates() {
    let env = StackEnv::load();
    let bootstrap = env.get("KAFKA_BOOTSTRAP").to_owned();
    let redis_url = env.get("REDIS_URL").to_owned();
    let worker_bin = support::worker_binary();
    assert!(
        worker_bin.exists(),
        "{} is missing: cargo build -p ferry-worker",
        worker_bin.display()
    );
    install_crds();
    let ns = TestNamespace::new("scaling-e2e");
    let _operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;

    let suffix = random_suffix();
    let topic = format!("scale-{suffix}");
    let prefix = format!("scale{suffix}");
    support::create_topic(&bootstrap, &topic, PARTITIONS).await;

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &pipeline("burst", &topic, &prefix))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    support::wait_ready(&deployments, "burst-receiver", 1).await;

    // The burst: as fast as the broker takes.
    let started = Instant::now();
    let status = Command::new(&worker_bin)
        .args([
            "simulate",
            "--bootstrap-servers",
            &bootstrap,
            "--topic",
            &topic,
            "--sources",
            &SOURCES.to_string(),
            "--rate",
            "0",
            "--count",
            &RECORDS.to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "the simulator failed");

    let peak = eventually(
        Duration::from_secs(60),
        "the receiver to scale to >= 3",
        || async {
            spec_replicas(&deployments, "burst-receiver")
                .await
                .filter(|r| *r >= 3)
        },
    )
    .await;
    println!("scaled to {peak} after {:?}", started.elapsed());

    eventually(Duration::from_secs(180), "the backlog to drain", || async {
        let status = pipelines.get("burst").await.ok()?.status?;
        (status.lag == Some(0)).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(90),
        "the receiver back at minReplicas",
        || async {
            spec_replicas(&deployments, "burst-receiver")
                .await
                .filter(|r| *r == 1)
        },
    )
    .await;
    println!("back to 1 replica after {:?}", started.elapsed());

    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:list:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0_u64;
    for key in &keys {
        let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let distinct: BTreeSet<&Vec<u8>> = values.iter().collect();
        assert_eq!(distinct.len(), values.len(), "duplicates in {key}");
        total += u64::try_from(values.len()).unwrap();
    }
    assert_eq!(keys.len(), usize::try_from(SOURCES).unwrap());
    assert_eq!(total, RECORDS, "records lost (or duplicated) in Redis");
}
