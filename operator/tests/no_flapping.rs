//! No flapping: a steady load keeps the receiver's committed lag around half its
//! `lagThreshold` for five minutes, and the autoscaler neither scales (no ScaledUp/ScaledDown
//! event) nor changes the Deployment's `spec.replicas`.
//!
//! The load is the worker's throttled simulator, well within one receiver's rate. The lag
//! one receiver keeps in flight (records between two offset commits) is measured first, and
//! lagThreshold is set to twice its median (raised if needed so the highest sample stays
//! below 80% of it). Takes about 6 minutes, so it is `#[ignore]`d: `make test-faults` runs it
//! (`FERRY_NO_FLAP_SECS` shortens the steady phase). Needs the local stack with the worker
//! image, and `cargo build -p ferry-worker` for the simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_operator::crd::Pipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use support::{OperatorProcess, StackEnv, TestNamespace, install_crds, random_suffix};

const PARTITIONS: i32 = 6;

fn median(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

async fn scale_events(events: &Api<Event>) -> Vec<String> {
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| matches!(e.reason.as_deref(), Some("ScaledUp" | "ScaledDown")))
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes 6 minutes: make test-faults runs it"]
async fn steady_lag_at_half_the_threshold_never_scales() {
    let env = StackEnv::load();
    let bootstrap = env.get("KAFKA_BOOTSTRAP").to_owned();
    let worker_bin = support::worker_binary();
    assert!(
        worker_bin.exists(),
        "{} is missing: cargo build -p ferry-worker",
        worker_bin.display()
    );
    let steady = Duration::from_secs(
        std::env::var("FERRY_NO_FLAP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    install_crds();
    let ns = TestNamespace::new("no-flapping");
    let _operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let suffix = random_suffix();
    let topic = format!("noflap-{suffix}");
    let prefix = format!("noflap{suffix}");
    let group = format!("steady-{prefix}");
    support::create_topic(&bootstrap, &topic, PARTITIONS).await;
    // Measuring first: a threshold no lag reaches.
    let pipeline: Pipeline = support::StackPipeline {
        history_depth: 10,
        receiver_extra: "    scaling:\n      minReplicas: 1\n      maxReplicas: 4\n      \
                         lagThreshold: 100000000\n      scaleDownStabilization: 30s\n      \
                         pollInterval: 1s",
        ..support::StackPipeline::new("steady", &topic, &prefix)
    }
    .build();
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    support::wait_ready(&deployments, "steady-receiver", 1).await;

    // 100 sources × 20 records/s = 2,000 records/s, far below one receiver's rate.
    let mut simulator = Command::new(&worker_bin)
        .args([
            "simulate",
            "--bootstrap-servers",
            &bootstrap,
            "--topic",
            &topic,
            "--sources",
            "100",
            "--rate",
            "20",
            "--duration",
            &format!("{}s", steady.as_secs() + 120),
            "--progress-interval",
            "60s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .create()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut warmup = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        if let Some(lag) =
            support::committed_lag(&consumer, &topic, PARTITIONS, Duration::from_secs(5))
        {
            warmup.push(lag);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let warm_max = *warmup.iter().max().unwrap();
    let warm_median = median(&mut warmup);
    let threshold = (2 * warm_median).max(warm_max * 5 / 4).max(100);
    println!("in-flight lag: median {warm_median}, max {warm_max}; lagThreshold {threshold}");
    pipelines
        .patch(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"receiver": {"scaling": {"lagThreshold": threshold}}}
            })),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let replicas = deployments
        .get("steady-receiver")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    let mut lags = Vec::new();
    let started = Instant::now();
    while started.elapsed() < steady {
        if let Some(lag) =
            support::committed_lag(&consumer, &topic, PARTITIONS, Duration::from_secs(5))
        {
            lags.push(lag);
        }
        let now = deployments
            .get("steady-receiver")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas;
        assert_eq!(
            now,
            replicas,
            "spec.replicas changed after {:?} (lags so far, last 20: {:?})",
            started.elapsed(),
            &lags[lags.len().saturating_sub(20)..]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = simulator.kill();
    let _ = simulator.wait();
    let max = *lags.iter().max().unwrap();
    let med = median(&mut lags);
    let p95 = lags[lags.len() * 95 / 100];
    println!(
        "steady {steady:?}: lag median {med} ({:.0}% of {threshold}), p95 {p95}, max {max} ({:.0}%); replicas {replicas:?} throughout",
        100.0 * med as f64 / threshold as f64,
        100.0 * max as f64 / threshold as f64
    );
    let scaled = scale_events(&events).await;
    assert!(scaled.is_empty(), "scale events: {scaled:?}");
    let fault_report = std::env::var("FERRY_FAULT_REPORT").map_or_else(
        |_| support::repo_root().join("target/fault-report.tsv"),
        std::path::PathBuf::from,
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fault_report)
    {
        use std::io::Write;
        let _ = writeln!(
            file,
            "no flapping: steady lag {:.0}% of lagThreshold {threshold}, {}s\t-\t-\t-\t-\t-\t-\tmedian {med}, p95 {p95}, max {max}; 0 scale events, replicas {replicas:?} throughout",
            100.0 * med as f64 / threshold as f64,
            steady.as_secs()
        );
    }
}
