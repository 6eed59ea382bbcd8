//! Faults of the operator side, end to end on the local cluster (real operator binary, real
//! worker pods, the shared Kafka and Redis under random names):
//!
//! - rebalances: two bursts each make the autoscaler scale the receiver 1 → 4 → 1;
//! - the operator SIGKILLed while it scales, with a second operator in leader election that
//!   takes over through the Lease.
//!
//! Each compares Redis with the oracle of what was produced (history ≥ records per key) and
//! writes a row of `make test-faults`' table. Size: `FERRY_FAULT_RECORDS` (records in all).
//! Needs the local stack with the worker image (`make stack-up`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_operator::crd::Pipeline;
use ferry_worker::record::{DataRecord, dsdata};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::{StackEnv, TestNamespace, eventually, install_crds, random_suffix};

const PARTITIONS: i32 = 6;
const THRESHOLD: i64 = 5_000;

fn records() -> usize {
    std::env::var("FERRY_FAULT_RECORDS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(200_000)
}

fn pipeline(
    name: &str,
    topic: &str,
    prefix: &str,
    depth: usize,
    max: i32,
    threshold: i64,
) -> Pipeline {
    let receiver = format!(
        "    scaling:\n      minReplicas: 1\n      maxReplicas: {max}\n      \
         lagThreshold: {threshold}\n      scaleDownStabilization: 5s\n      pollInterval: 500ms"
    );
    support::StackPipeline {
        history_depth: depth,
        receiver_extra: &receiver,
        ..support::StackPipeline::new(name, topic, prefix)
    }
    .build()
}

async fn create_topic(topic: &str) {
    support::create_topic(StackEnv::load().get("KAFKA_BOOTSTRAP"), topic, PARTITIONS).await;
}

type Oracle = HashMap<String, Vec<Vec<u8>>>;

/// Sends `count` records as fast as the broker takes them, keys `src-NNNN` round robin,
/// numbered from `first`, and adds them to the oracle.
async fn burst(topic: &str, keys: usize, first: usize, count: usize, oracle: &mut Oracle) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", StackEnv::load().get("KAFKA_BOOTSTRAP"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let ts = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let mut pending = Vec::with_capacity(count);
    for sequence in first..first + count {
        let key = format!("src-{:04}", sequence % keys);
        let payload = dsdata::encode(&DataRecord {
            timestamp_ms: ts,
            values: vec![sequence as f64, 0.5],
            text: format!("{key}#{sequence}"),
        })
        .unwrap();
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(ferry_test_support::enqueue(&producer, record).await);
        oracle.entry(key.clone()).or_default().push(payload.clone());
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    for delivery in pending {
        delivery.await.unwrap().expect("delivered");
    }
}

#[derive(Debug, Default)]
struct Tally {
    produced: usize,
    found: usize,
    lost: usize,
    duplicated: usize,
    wrong_keys: usize,
}

/// Every key's list against its newest `depth` values, newest first; then removes the keys.
async fn tally(prefix: &str, oracle: &Oracle, depth: usize) -> Tally {
    let redis = redis::Client::open(StackEnv::load().get("REDIS_URL")).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut tally = Tally::default();
    let mut keys = Vec::new();
    for (key, sent) in oracle {
        let name = format!("{prefix}:list:{key}");
        let list: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&name)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.push(name);
        tally.produced += sent.len();
        let expected: Vec<&Vec<u8>> = sent.iter().rev().take(depth).collect();
        let wanted: HashSet<&Vec<u8>> = expected.iter().copied().collect();
        let mut counts: HashMap<&Vec<u8>, usize> = HashMap::new();
        for value in &list {
            *counts.entry(value).or_default() += 1;
        }
        for value in &expected {
            if counts.contains_key(value) {
                tally.found += 1;
            } else {
                tally.lost += 1;
            }
        }
        tally.duplicated += counts
            .iter()
            .map(|(v, n)| if wanted.contains(v) { n - 1 } else { *n })
            .sum::<usize>();
        if list.len() != expected.len() || list.iter().zip(&expected).any(|(a, b)| a != *b) {
            tally.wrong_keys += 1;
        }
    }
    if tally.lost == 0 && tally.duplicated == 0 {
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut conn).await;
        }
    }
    tally
}

fn report(fault: &str, tally: &Tally, peak_kb: u64, note: &str) {
    let row = format!(
        "{fault}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{note}",
        tally.produced,
        tally.found,
        tally.lost,
        tally.duplicated,
        tally.wrong_keys,
        peak_kb as f64 / 1024.0
    );
    ferry_test_support::report_fault_row(&row);
}

/// Samples, every 500 ms, the VmHWM of the worker processes of the namespace's pods (found
/// by the pod UID in their cgroup), keeping the highest; and the receiver's spec.replicas,
/// keeping each change.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    replicas: Arc<std::sync::Mutex<Vec<(Duration, i32)>>>,
}

impl Sampler {
    fn start(client: kube::Client, namespace: &str, deployment: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let replicas = Arc::new(std::sync::Mutex::new(Vec::new()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let deployments: Api<Deployment> = Api::namespaced(client, namespace);
        let deployment = deployment.to_owned();
        let (s, p, r) = (stop.clone(), peak_kb.clone(), replicas.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    let uids: Vec<String> = list
                        .items
                        .iter()
                        .filter_map(|pod| pod.metadata.uid.clone())
                        .collect();
                    p.fetch_max(worker_hwm_kb(&uids), Ordering::Relaxed);
                }
                if let Some(n) = spec_replicas(&deployments, &deployment).await {
                    let mut seen = r.lock().unwrap();
                    if seen.last().is_none_or(|(_, last)| *last != n) {
                        seen.push((started.elapsed(), n));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self {
            stop,
            peak_kb,
            replicas,
        }
    }

    fn changes(&self) -> Vec<i32> {
        self.replicas
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| *n)
            .collect()
    }

    fn peak(&self) -> u64 {
        self.peak_kb.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The highest VmHWM among `ferry-worker` processes in the cgroups of these pods.
fn worker_hwm_kb(uids: &[String]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut peak = 0;
    for entry in dir.flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).map_or(true, |c| c.trim() != "ferry-worker") {
            continue;
        }
        let cgroup = std::fs::read_to_string(path.join("cgroup")).unwrap_or_default();
        if !uids
            .iter()
            .any(|uid| cgroup.contains(uid.as_str()) || cgroup.contains(&uid.replace('-', "_")))
        {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
    }
    peak
}

async fn spec_replicas(api: &Api<Deployment>, name: &str) -> Option<i32> {
    api.get_opt(name).await.ok()??.spec?.replicas
}

async fn receiver_lag(pipelines: &Api<Pipeline>, name: &str) -> Option<i64> {
    pipelines.get(name).await.ok()?.status?.lag
}

/// Waits for a scale to exactly `replicas` and returns how long it took.
async fn wait_replicas(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    eventually(
        timeout,
        &format!("{name} at {replicas} replicas"),
        || async { spec_replicas(api, name).await.filter(|r| *r == replicas) },
    )
    .await;
    started.elapsed()
}

fn keys_and_depth(records: usize) -> (usize, usize) {
    let keys = (records / 1_000).clamp(50, 1_000);
    (keys, records.div_ceil(keys))
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_rebalances_scale_1_4_1_twice_without_loss_or_duplicates() {
    install_crds();
    let ns = TestNamespace::new("faults-rebalance");
    let _operator = support::OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let suffix = random_suffix();
    let topic = format!("fault-rebalance-{suffix}");
    let prefix = format!("rebal{suffix}");
    create_topic(&topic).await;
    let count = records();
    let (keys, depth) = keys_and_depth(count);
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(
            &PostParams::default(),
            // A low threshold: a burst the receiver almost keeps up with must still read
            // as lag above 3 thresholds at one poll, or the test would measure the machine.
            &pipeline("rebal", &topic, &prefix, depth, 4, 100),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    support::wait_ready(&deployments, "rebal-receiver", 1).await;
    let sampler = Sampler::start(client.clone(), &ns.name, "rebal-receiver");
    let mut oracle = Oracle::new();
    let started = Instant::now();
    for round in 0..2 {
        let first = round * count / 2;
        burst(&topic, keys, first, count / 2, &mut oracle).await;
        let up = wait_replicas(&deployments, "rebal-receiver", 4, Duration::from_secs(90)).await;
        eventually(Duration::from_secs(240), "the backlog to drain", || async {
            (receiver_lag(&pipelines, "rebal").await == Some(0)).then_some(())
        })
        .await;
        let down = wait_replicas(&deployments, "rebal-receiver", 1, Duration::from_secs(90)).await;
        println!("round {round}: at 4 {up:?} after the burst, back at 1 {down:?} later");
    }
    let changes = sampler.changes();
    let peak = sampler.peak();
    drop(sampler);
    let tally = tally(&prefix, &oracle, depth).await;
    let path: Vec<String> = changes.iter().map(ToString::to_string).collect();
    report(
        "rebalances: autoscaler 1->4->1 twice (worker pods)",
        &tally,
        peak,
        &format!("replicas {} in {:?}", path.join("->"), started.elapsed()),
    );
    assert!(
        tally.lost == 0 && tally.duplicated == 0 && tally.wrong_keys == 0,
        "{tally:?}"
    );
    let ups = changes.windows(2).filter(|w| w[1] == 4 && w[0] < 4).count();
    assert!(ups >= 2, "did not reach 4 replicas twice: {changes:?}");
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ferry-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_operator_sigkilled_while_scaling_the_standby_takes_over() {
    install_crds();
    let ns = TestNamespace::new("faults-operator-kill");
    let mut operators = [
        support::OperatorProcess::start_elected(&ns.name, "a"),
        support::OperatorProcess::start_elected(&ns.name, "b"),
    ];
    let client = support::client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let leader = eventually(Duration::from_secs(60), "a leader", || holder(&leases)).await;
    let suffix = random_suffix();
    let topic = format!("fault-opkill-{suffix}");
    let prefix = format!("opkill{suffix}");
    create_topic(&topic).await;
    let count = records();
    let (keys, depth) = keys_and_depth(count);
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(
            &PostParams::default(),
            &pipeline("opkill", &topic, &prefix, depth, PARTITIONS, THRESHOLD),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    support::wait_ready(&deployments, "opkill-receiver", 1).await;
    let sampler = Sampler::start(client.clone(), &ns.name, "opkill-receiver");
    let mut oracle = Oracle::new();
    burst(&topic, keys, 0, count, &mut oracle).await;
    // Kill the leader as soon as it starts scaling up.
    let scaled = eventually(Duration::from_secs(60), "the first scale up", || async {
        spec_replicas(&deployments, "opkill-receiver")
            .await
            .filter(|r| *r > 1)
    })
    .await;
    let victim = usize::from(leader != "a");
    operators[victim].sigkill();
    let killed_at = Instant::now();
    let standby = if victim == 0 { "b" } else { "a" };
    println!("killed leader {leader} at {scaled} replicas; waiting for {standby}");
    eventually(
        Duration::from_secs(60),
        "the standby to take the Lease",
        || async { (holder(&leases).await.as_deref() == Some(standby)).then_some(()) },
    )
    .await;
    let takeover = killed_at.elapsed();
    // One poll (1 s) and its reconcile later, the Deployment has what the new leader
    // decided, which starts from the recorded desired replicas rather than minReplicas.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pipeline = pipelines.get("opkill").await.unwrap();
    let status = pipeline.status.clone().unwrap_or_default();
    let desired = status
        .stages
        .iter()
        .find(|s| s.name == "receiver")
        .map(|s| s.desired_replicas);
    let applied = spec_replicas(&deployments, "opkill-receiver").await;
    let lag = status.lag.unwrap_or(0);
    println!(
        "takeover after {takeover:?}: spec.replicas {applied:?}, status desired {desired:?}, lag {lag}"
    );
    assert_eq!(
        applied, desired,
        "the Deployment differs from the new leader's desired replicas one poll after takeover"
    );
    let needed = i32::try_from((lag + THRESHOLD - 1) / THRESHOLD)
        .unwrap()
        .clamp(1, PARTITIONS);
    assert!(
        applied.unwrap_or(0) >= needed,
        "the new leader left {applied:?} replicas for lag {lag} (needs {needed})"
    );
    eventually(Duration::from_secs(240), "the backlog to drain", || async {
        (receiver_lag(&pipelines, "opkill").await == Some(0)).then_some(())
    })
    .await;
    wait_replicas(&deployments, "opkill-receiver", 1, Duration::from_secs(90)).await;
    let changes = sampler.changes();
    let peak = sampler.peak();
    drop(sampler);
    let tally = tally(&prefix, &oracle, depth).await;
    let path: Vec<String> = changes.iter().map(ToString::to_string).collect();
    report(
        "operator leader SIGKILLed while scaling (2 operators, Lease)",
        &tally,
        peak,
        &format!(
            "{standby} took over in {:.1}s; replicas {}",
            takeover.as_secs_f64(),
            path.join("->")
        ),
    );
    assert!(
        tally.lost == 0 && tally.duplicated == 0 && tally.wrong_keys == 0,
        "{tally:?}"
    );
    let seen: BTreeSet<i32> = changes.into_iter().collect();
    assert!(seen.len() > 1, "never scaled");
}

#[path = "../../bench/scaling/driver.rs"]
mod scaling_bench;

/// `make bench-scaling`: figures, not a timed test.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: make bench-scaling"]
async fn bench_scaling_reaction() {
    scaling_bench::run().await;
}
