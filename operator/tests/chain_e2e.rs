//! Chained stages end to end on the local cluster (issue 18): the real operator, real worker
//! pods, the shared Kafka and Redis under random names. The tests create the intermediate
//! topics themselves.
//!
//! - raw dsdata → `enrich` (reference data in Redis) → `check` (rules on the enriched `ref.`
//!   fields) → the receiver, in one Pipeline: every source record is on the enriched topic
//!   at least once (by its `ferry-source-*` headers), every valid one on the validated topic
//!   and every invalid one on the check's dead-letter topic, and the oracle
//!   (`worker/tests/oracle`) finds Redis holding exactly the valid records, per key, newest
//!   first, trimmed;
//! - a processor added to a running Pipeline joins without disturbing the others (their pod
//!   UIDs, pod-template hashes, group members and assignment counts unchanged); removed, its
//!   Deployment and status entry go and its output topic stays;
//! - a small CPU limit on the middle stage's pods makes only its input lag, and the
//!   autoscaler scales that stage alone.
//!
//! Sizes: `FERRY_CHAIN_RECORDS` (the chain's records), `FERRY_CHAIN_LOAD_RATE` and
//! `FERRY_CHAIN_LOAD_SECS` (the scaling test's load). Needs the local stack with the worker
//! image (`make stack-up`, `e2e/local/images.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "../../worker/tests/oracle/mod.rs"]
mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferry_config::config::{RecordFormat, StorageKind};
use ferry_config::record::json;
use ferry_operator::crd::{Pipeline, ProcessorSpec};
use ferry_worker::record::{DataRecord, dsdata};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use oracle::SourceRecord;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::{OperatorProcess, StackEnv, TestNamespace, eventually, install_crds, random_suffix};

const PARTITIONS: i32 = 3;
const KEYS: usize = 12;
/// Every key's `ref.limit`; `check` passes `values[0]` in 0..=LIMIT of the `fx` desk.
const LIMIT: f64 = 60.0;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn bootstrap() -> String {
    StackEnv::load().get("KAFKA_BOOTSTRAP").to_owned()
}

fn redis_url() -> String {
    StackEnv::load().get("REDIS_URL").to_owned()
}

fn key_name(index: usize) -> String {
    format!("src-{index:02}")
}

/// Even keys are on the `fx` desk, odd ones on `rates`.
fn desk(key: &str) -> &'static str {
    let index: usize = key.trim_start_matches("src-").parse().unwrap();
    if index.is_multiple_of(2) {
        "fx"
    } else {
        "rates"
    }
}

/// The test's own statement of `check`'s rules, judged on the raw record.
fn passes(key: &str, record: &DataRecord) -> bool {
    desk(key) == "fx"
        && record
            .values
            .first()
            .is_some_and(|v| (0.0..=LIMIT).contains(v))
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

/// Sends records `first..first + count`, keyed round robin over [`KEYS`], each with a
/// distinct text (`key#sequence`), a value off the limit (x.5) and a scrambled timestamp.
async fn produce(producer: &FutureProducer, topic: &str, first: usize, count: usize) {
    let base = now_ms();
    let mut pending = Vec::with_capacity(count);
    for sequence in first..first + count {
        let key = key_name(sequence % KEYS);
        let payload = dsdata::encode(&DataRecord {
            timestamp_ms: oracle::scrambled_ts(base, sequence),
            values: vec![((sequence * 37) % 100) as f64 + 0.5],
            text: format!("{key}#{sequence}"),
        })
        .unwrap();
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(ferry_test_support::enqueue(producer, record).await);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    for delivery in pending {
        delivery.await.unwrap().expect("delivered");
    }
}

/// Reference data for every key at `<reference>:<key>`: one version valid from 0.
async fn write_reference(reference: &str) {
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    for index in 0..KEYS {
        let key = key_name(index);
        let hash = format!("{reference}:v:{key}");
        let () = redis::cmd("HSET")
            .arg(&hash)
            .arg("desk")
            .arg(desk(&key))
            .arg("limit")
            .arg(LIMIT)
            .query_async(&mut conn)
            .await
            .unwrap();
        let () = redis::cmd("ZADD")
            .arg(format!("{reference}:{key}"))
            .arg(0)
            .arg(&hash)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn offsets_consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// The sum of `topic`'s high watermarks.
fn high_watermarks(consumer: &BaseConsumer, topic: &str) -> Option<i64> {
    let mut sum = 0;
    for partition in 0..PARTITIONS {
        sum += consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .ok()?
            .1;
    }
    Some(sum)
}

/// `group`'s committed lag on `topic` (a partition without a commit counts from 0).
fn lag(group: &str, topic: &str) -> Option<i64> {
    support::committed_lag(
        &offsets_consumer(group),
        topic,
        PARTITIONS,
        Duration::from_secs(5),
    )
}

/// Where a stage's output record came from: its `ferry-source-*` headers, which must name
/// `topic`.
fn source_of(record: &SourceRecord, topic: &str) -> (i32, i64) {
    let header = |name: &str| {
        record.headers.get(name).unwrap_or_else(|| {
            panic!(
                "{}@{} has no {name}: {:?}",
                record.partition, record.offset, record.headers
            )
        })
    };
    assert_eq!(header("ferry-source-topic"), topic);
    (
        header("ferry-source-partition").parse().unwrap(),
        header("ferry-source-offset").parse().unwrap(),
    )
}

/// How often each source position appears on an output topic.
fn copies_by_source(output: &[SourceRecord], source_topic: &str) -> BTreeMap<(i32, i64), usize> {
    let mut copies = BTreeMap::new();
    for record in output {
        *copies.entry(source_of(record, source_topic)).or_default() += 1;
    }
    copies
}

/// The topic names of one test, all fresh.
struct Topics {
    raw: String,
    enriched: String,
    no_ref: String,
    validated: String,
    invalid: String,
}

impl Topics {
    fn new(suffix: &str) -> Self {
        let name = |role: &str| format!("chain-{suffix}-{role}");
        Self {
            raw: name("raw"),
            enriched: name("enriched"),
            no_ref: name("no-ref"),
            validated: name("validated"),
            invalid: name("invalid"),
        }
    }

    async fn create(&self) {
        ferry_test_support::create_topics(
            &bootstrap(),
            &[
                (&self.raw, PARTITIONS),
                (&self.enriched, PARTITIONS),
                (&self.no_ref, 1),
                (&self.validated, PARTITIONS),
                (&self.invalid, 1),
            ],
        )
        .await;
    }
}

/// One stage of the chain's YAML at a fixed replica count.
const ONE_REPLICA: &str = "scaling: {minReplicas: 1, maxReplicas: 1}";

/// raw → enrich → check → receiver, each stage at one replica.
fn chain_pipeline(name: &str, topics: &Topics, prefix: &str, depth: usize) -> Pipeline {
    let receiver = format!("    input: {{from: check}}\n    {ONE_REPLICA}");
    let processors = format!(
        "  processors:\n\
         \x20   - name: enrich\n\
         \x20     enrich: {{referenceKey: \"{prefix}:ref\", fields: [desk, limit]}}\n\
         \x20     output: {{topic: {enriched}}}\n\
         \x20     deadLetter: {{topic: {no_ref}}}\n\
         \x20     {ONE_REPLICA}\n\
         \x20   - name: check\n\
         \x20     input: {{from: enrich}}\n\
         \x20     validate:\n\
         \x20       rules:\n\
         \x20         - {{name: fx-desk, expression: \"ref.desk EQ 'fx'\"}}\n\
         \x20         - {{name: within-limit, expression: \"values[0] IN RANGE 0 ref.limit\"}}\n\
         \x20     output: {{topic: {validated}}}\n\
         \x20     deadLetter: {{topic: {invalid}}}\n\
         \x20     {ONE_REPLICA}",
        enriched = topics.enriched,
        no_ref = topics.no_ref,
        validated = topics.validated,
        invalid = topics.invalid,
    );
    support::StackPipeline {
        history_depth: depth,
        receiver_extra: &receiver,
        spec_extra: &processors,
        ..support::StackPipeline::new(name, &topics.raw, prefix)
    }
    .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_stage_chain_carries_every_record_and_stores_only_the_validated_ones() {
    let records = env_number("FERRY_CHAIN_RECORDS", 2400);
    let depth = 30;
    install_crds();
    let ns = TestNamespace::new("chain-e2e");
    let operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let suffix = random_suffix();
    let topics = Topics::new(&suffix);
    let prefix = format!("chain{suffix}");
    topics.create().await;
    write_reference(&format!("{prefix}:ref")).await;
    let started = Instant::now();
    produce(&producer(), &topics.raw, 0, records).await;

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(
            &PostParams::default(),
            &chain_pipeline("chain", &topics, &prefix, depth),
        )
        .await
        .unwrap();
    let raw = oracle::read_source(&bootstrap(), &topics.raw);
    assert_eq!(raw.len(), records, "the raw topic holds what was sent");
    let valid: BTreeSet<(i32, i64)> = raw
        .iter()
        .filter(|r| {
            let (key, decoded) = r.decode(RecordFormat::Dsdata).unwrap();
            passes(key, &decoded)
        })
        .map(|r| (r.partition, r.offset))
        .collect();
    let (valid_count, invalid_count) = (
        i64::try_from(valid.len()).unwrap(),
        i64::try_from(records - valid.len()).unwrap(),
    );

    let group = format!("chain-{prefix}");
    eventually(
        Duration::from_secs(150),
        "every record through the chain, the receiver's group at the validated topic's end",
        || async {
            let consumer = offsets_consumer("chain-e2e-watermarks");
            let done = high_watermarks(&consumer, &topics.enriched)?
                >= i64::try_from(records).ok()?
                && high_watermarks(&consumer, &topics.validated)? >= valid_count
                && consumer
                    .fetch_watermarks(&topics.invalid, 0, Duration::from_secs(5))
                    .ok()?
                    .1
                    >= invalid_count
                // Offsets are committed after each stage's EXEC: its Redis effects are in.
                && lag(&format!("{group}:enrich"), &topics.raw)? == 0
                && lag(&format!("{group}:check"), &topics.enriched)? == 0
                && lag(&group, &topics.validated)? == 0;
            done.then_some(())
        },
    )
    .await;
    println!(
        "chain: {records} records through enrich, check and the receiver after {:?}",
        started.elapsed()
    );

    // Each intermediate topic, judged by where its records came from.
    let enriched = oracle::read_source(&bootstrap(), &topics.enriched);
    let on_enriched = copies_by_source(&enriched, &topics.raw);
    let raw_positions: BTreeSet<(i32, i64)> = raw.iter().map(|r| (r.partition, r.offset)).collect();
    let missing: Vec<_> = raw_positions
        .iter()
        .filter(|p| !on_enriched.contains_key(p))
        .collect();
    let unexplained: Vec<_> = on_enriched
        .keys()
        .filter(|p| !raw_positions.contains(p))
        .collect();
    let extra: usize = on_enriched.values().map(|c| c - 1).sum();
    println!(
        "enriched topic: {} records, {} of {} sources, {extra} extra copies, {} missing, {} unexplained",
        enriched.len(),
        on_enriched.len(),
        raw.len(),
        missing.len(),
        unexplained.len()
    );
    assert!(
        missing.is_empty() && unexplained.is_empty(),
        "enriched: missing {missing:?}, unexplained {unexplained:?}"
    );
    let no_ref = oracle::read_source(&bootstrap(), &topics.no_ref);
    assert!(
        no_ref.is_empty(),
        "every key has reference data: {no_ref:?}"
    );

    let enriched_source: BTreeMap<(i32, i64), (i32, i64)> = enriched
        .iter()
        .map(|r| ((r.partition, r.offset), source_of(r, &topics.raw)))
        .collect();
    let to_raw = |records: &[SourceRecord]| -> BTreeMap<(i32, i64), Vec<SourceRecord>> {
        let mut by_raw: BTreeMap<(i32, i64), Vec<SourceRecord>> = BTreeMap::new();
        for record in records {
            let at = source_of(record, &topics.enriched);
            let raw_at = *enriched_source
                .get(&at)
                .unwrap_or_else(|| panic!("{at:?} is not on the enriched topic"));
            by_raw.entry(raw_at).or_default().push(record.clone());
        }
        by_raw
    };
    let validated = to_raw(&oracle::read_source(&bootstrap(), &topics.validated));
    let invalid = to_raw(&oracle::read_source(&bootstrap(), &topics.invalid));
    let should_fail: BTreeSet<(i32, i64)> = raw_positions.difference(&valid).copied().collect();
    let passed: BTreeSet<(i32, i64)> = validated.keys().copied().collect();
    let failed: BTreeSet<(i32, i64)> = invalid.keys().copied().collect();
    println!(
        "validated topic: {} of {} valid sources ({} extra copies); invalid topic: {} of {} invalid sources",
        passed.len(),
        valid.len(),
        validated.values().map(|c| c.len() - 1).sum::<usize>(),
        failed.len(),
        should_fail.len()
    );
    assert_eq!(
        passed.symmetric_difference(&valid).count(),
        0,
        "the validated topic holds exactly the valid sources"
    );
    assert_eq!(
        failed.symmetric_difference(&should_fail).count(),
        0,
        "the invalid topic holds exactly the invalid sources"
    );

    // Redis: what the receiver must hold derives from the raw history (which records pass,
    // in which order per key); the bytes are check's output, enrich's JSON passed through.
    let mut expected = Vec::with_capacity(valid.len());
    for record in raw
        .iter()
        .filter(|r| valid.contains(&(r.partition, r.offset)))
    {
        let copy = &validated[&(record.partition, record.offset)][0];
        let (enriched_record, reference) = json::decode_enriched(&copy.payload).unwrap();
        let (_, raw_record) = record.decode(RecordFormat::Dsdata).unwrap();
        assert_eq!(enriched_record.text, raw_record.text);
        assert_eq!(
            reference.get("desk").map(String::as_str),
            Some("fx"),
            "{reference:?}"
        );
        expected.push(SourceRecord {
            payload: copy.payload.clone(),
            kafka_timestamp_ms: copy.kafka_timestamp_ms,
            headers: BTreeMap::new(),
            ..record.clone()
        });
    }
    let verdict = oracle::check_storage(
        &redis_url(),
        &prefix,
        StorageKind::List,
        depth,
        RecordFormat::Json,
        &expected,
    );
    println!("{verdict}");
    verdict.assert_exact(&operator.log);
    let counters = oracle::check_counters(
        &redis_url(),
        &prefix,
        "check",
        RecordFormat::Dsdata,
        &raw,
        &|key, record| passes(key, record),
    );
    println!("{counters}");
    counters.assert_exact(&operator.log);
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    for index in (1..KEYS).step_by(2) {
        let key = format!("{prefix}:list:{}", key_name(index));
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{key}: the rates desk never passes check");
    }
    println!("chain test took {:?}", started.elapsed());
}

// ------------------------------------------------------------ a stage added and removed

/// What must not change for a stage while another joins or leaves.
#[derive(Debug, PartialEq, Eq)]
struct StageSnapshot {
    /// (pod UID, `pod-template-hash`) of each of its running pods.
    pods: BTreeSet<(String, String)>,
    /// `partitions assigned` lines in its pods' logs: one per rebalance the pod took part in.
    assignments: usize,
    /// Its consumer group's member ids and state.
    members: BTreeSet<String>,
    state: String,
}

async fn stage_pods(pods: &Api<Pod>, pipeline: &str, stage: &str) -> Vec<Pod> {
    let selector = format!("app.kubernetes.io/instance={pipeline},ferry.dev/stage={stage}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn snapshot(pods: &Api<Pod>, pipeline: &str, stage: &str, group: &str) -> StageSnapshot {
    let mut snapshot = StageSnapshot {
        pods: BTreeSet::new(),
        assignments: 0,
        members: BTreeSet::new(),
        state: String::new(),
    };
    for pod in stage_pods(pods, pipeline, stage).await {
        let name = pod.metadata.name.clone().unwrap();
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .cloned()
            .unwrap_or_default();
        snapshot
            .pods
            .insert((pod.metadata.uid.clone().unwrap(), hash));
        let namespace = pod.metadata.namespace.clone().unwrap();
        // Not yet started, a pod has no log: it counts none.
        let logs = support::kubectl(&["logs", "-n", &namespace, &name]).stdout;
        snapshot.assignments += String::from_utf8_lossy(&logs)
            .matches("partitions assigned")
            .count();
    }
    let groups = offsets_consumer("chain-e2e-describe")
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    let info = groups.groups().first().expect("the group is described");
    snapshot.state = info.state().to_owned();
    snapshot.members = info.members().iter().map(|m| m.id().to_owned()).collect();
    snapshot
}

fn tally_processor(input_from: &str, output: &str) -> ProcessorSpec {
    serde_yaml::from_str(&format!(
        "name: tally\ninput: {{from: {input_from}}}\nstats: {{window: 10}}\n\
         output: {{topic: {output}}}\n{ONE_REPLICA}"
    ))
    .unwrap()
}

async fn set_processors(api: &Api<Pipeline>, name: &str, processors: &[ProcessorSpec]) {
    let patch = serde_json::json!({ "spec": { "processors": processors } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_added_to_a_running_pipeline_joins_without_disturbing_the_others() {
    install_crds();
    let ns = TestNamespace::new("chain-grow");
    let _operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let suffix = random_suffix();
    let topics = Topics::new(&suffix);
    let tally_out = format!("chain-{suffix}-tally");
    let prefix = format!("grow{suffix}");
    topics.create().await;
    ferry_test_support::create_topics(&bootstrap(), &[(&tally_out, PARTITIONS)]).await;
    write_reference(&format!("{prefix}:ref")).await;
    let producer = producer();
    produce(&producer, &topics.raw, 0, 240).await;

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pipeline = chain_pipeline("grow", &topics, &prefix, 100);
    let before_processors = pipeline.spec.processors.clone();
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();
    let group = format!("grow-{prefix}");
    let stages = [
        ("receiver", group.clone(), topics.validated.clone()),
        ("enrich", format!("{group}:enrich"), topics.raw.clone()),
        ("check", format!("{group}:check"), topics.enriched.clone()),
    ];
    let all_caught_up = |stages: Vec<(String, String)>| async move {
        for (group, topic) in &stages {
            let consumer = offsets_consumer("chain-e2e-watermarks");
            if high_watermarks(&consumer, topic)? == 0 || lag(group, topic)? != 0 {
                return None;
            }
        }
        Some(())
    };
    let watched: Vec<(String, String)> = stages
        .iter()
        .map(|(_, group, topic)| (group.clone(), topic.clone()))
        .collect();
    eventually(
        Duration::from_secs(120),
        "every stage caught up on its input",
        || all_caught_up(watched.clone()),
    )
    .await;
    let mut before = BTreeMap::new();
    for (stage, group, _) in &stages {
        before.insert(*stage, snapshot(&pods, "grow", stage, group).await);
    }
    println!("before: {before:#?}");

    // A stats stage on the enriched topic joins.
    let started = Instant::now();
    let mut processors = before_processors.clone();
    processors.push(tally_processor("enrich", &tally_out));
    set_processors(&pipelines, "grow", &processors).await;
    support::wait_ready(&deployments, "grow-tally", 1).await;
    let tally_group = format!("{group}:tally");
    let mut with_tally = watched.clone();
    with_tally.push((tally_group.clone(), topics.enriched.clone()));
    produce(&producer, &topics.raw, 240, 240).await;
    eventually(
        Duration::from_secs(90),
        "tally and every other stage caught up",
        || all_caught_up(with_tally.clone()),
    )
    .await;
    eventually(Duration::from_secs(30), "tally in the status", || async {
        let status = pipelines.get("grow").await.ok()?.status?;
        status
            .stages
            .iter()
            .any(|s| s.name == "tally" && s.ready_replicas == 1)
            .then_some(())
    })
    .await;
    println!("tally joined and caught up after {:?}", started.elapsed());
    for (stage, group, _) in &stages {
        let after = snapshot(&pods, "grow", stage, group).await;
        assert_eq!(
            before[stage], after,
            "{stage} was disturbed by a stage joining"
        );
    }

    // Removed again: its Deployment and status entry go, its output topic stays.
    let started = Instant::now();
    set_processors(&pipelines, "grow", &before_processors).await;
    eventually(
        Duration::from_secs(60),
        "tally's Deployment and status entry gone",
        || async {
            let gone = deployments.get_opt("grow-tally").await.ok()?.is_none();
            let status = pipelines.get("grow").await.ok()?.status?;
            (gone && status.stages.iter().all(|s| s.name != "tally")).then_some(())
        },
    )
    .await;
    println!("tally removed after {:?}", started.elapsed());
    let metadata = offsets_consumer("chain-e2e-describe")
        .fetch_metadata(Some(&tally_out), Duration::from_secs(10))
        .unwrap();
    let topic = &metadata.topics()[0];
    assert!(
        topic.error().is_none() && topic.partitions().len() == PARTITIONS as usize,
        "{tally_out} is retained: {:?}",
        topic.error()
    );
    for (stage, group, _) in &stages {
        let after = snapshot(&pods, "grow", stage, group).await;
        assert_eq!(
            before[stage], after,
            "{stage} was disturbed by a stage leaving"
        );
    }

    // The control: a change to check's own config rolls its pod, and the snapshot sees it.
    let mut changed = before_processors.clone();
    changed[1].batch.max_wait = "60ms".parse().unwrap();
    set_processors(&pipelines, "grow", &changed).await;
    let check_group = format!("{group}:check");
    let rolled = eventually(
        Duration::from_secs(90),
        "check's pod replaced after its own change",
        || async {
            let now = snapshot(&pods, "grow", "check", &check_group).await;
            (now.pods.is_disjoint(&before["check"].pods)
                && now.members.len() == 1
                && now.members != before["check"].members
                && now.state == "Stable")
                .then_some(now)
        },
    )
    .await;
    println!("control: check's own change rolled it: {rolled:?}");
}

// ------------------------------------------------------------ the middle stage scales alone

/// A stage's scaling: one replica at rest, up to three by lag.
fn autoscaled(threshold: i64) -> String {
    format!(
        "scaling: {{minReplicas: 1, maxReplicas: 3, lagThreshold: {threshold}, \
         pollInterval: 1s, scaleDownStabilization: 60s}}"
    )
}

/// The middle stage's CPU: a limit small enough that it cannot keep up with the load that
/// the unlimited stages around it take easily (at 20m one pod kept up with 1000 records/s;
/// at 10m it takes well under the 4000/s of the load). 10m is the kubelet's smallest CFS
/// quota (1 ms per 100 ms).
const MIDDLE_CPU: &str = "10m";

/// raw → first → middle → receiver, the middle one under a small CPU limit.
fn slow_middle_pipeline(name: &str, topics: &Topics, prefix: &str, threshold: i64) -> Pipeline {
    let scaling = autoscaled(threshold);
    let receiver = format!("    input: {{from: middle}}\n    {scaling}");
    let processors = format!(
        "  processors:\n\
         \x20   - name: first\n\
         \x20     validate: {{rules: [{{name: has-text, expression: \"text NOT NULL\"}}]}}\n\
         \x20     output: {{topic: {enriched}}}\n\
         \x20     {scaling}\n\
         \x20   - name: middle\n\
         \x20     input: {{from: first}}\n\
         \x20     validate: {{rules: [{{name: has-value, expression: \"values[0] NOT NULL\"}}]}}\n\
         \x20     output: {{topic: {validated}}}\n\
         \x20     resources:\n\
         \x20       requests: {{cpu: {MIDDLE_CPU}, memory: 64Mi}}\n\
         \x20       limits: {{cpu: {MIDDLE_CPU}, memory: 256Mi}}\n\
         \x20     {scaling}",
        enriched = topics.enriched,
        validated = topics.validated,
    );
    support::StackPipeline {
        history_depth: 10,
        receiver_extra: &receiver,
        spec_extra: &processors,
        ..support::StackPipeline::new(name, &topics.raw, prefix)
    }
    .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_autoscaler_scales_the_middle_stage_alone_when_only_its_input_lags() {
    let rate = env_number("FERRY_CHAIN_LOAD_RATE", 4000);
    let seconds = env_number("FERRY_CHAIN_LOAD_SECS", 20);
    // Five seconds of the load: an unlimited stage lags about one (its commit interval).
    let threshold = 20_000;
    install_crds();
    let ns = TestNamespace::new("chain-scale");
    let _operator = OperatorProcess::start(&ns.name);
    let client = support::client().await;
    let suffix = random_suffix();
    let topics = Topics::new(&suffix);
    let prefix = format!("slow{suffix}");
    topics.create().await;

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(
            &PostParams::default(),
            &slow_middle_pipeline("slow", &topics, &prefix, threshold),
        )
        .await
        .unwrap();
    for deployment in ["slow-first", "slow-middle", "slow-receiver"] {
        support::wait_ready(&deployments, deployment, 1).await;
    }
    for pod in stage_pods(&pods, "slow", "middle").await {
        let limits = pod.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap();
        assert_eq!(
            limits["cpu"].0, MIDDLE_CPU,
            "the middle stage's pods are limited"
        );
    }

    // The load, at `rate` records/s in tenths of a second, while the test watches.
    let load = tokio::spawn({
        let raw = topics.raw.clone();
        async move {
            let producer = producer();
            let tick = Duration::from_millis(100);
            let per_tick = rate / 10;
            let mut next = Instant::now();
            for step in 0..seconds * 10 {
                produce(&producer, &raw, step * per_tick, per_tick).await;
                next += tick;
                tokio::time::sleep_until(next.into()).await;
            }
        }
    });
    let started = Instant::now();
    let mut peak: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let mut last_print = Instant::now();
    let deadline = started + Duration::from_secs(u64::try_from(seconds).unwrap() + 30);
    let middle_scaled = loop {
        let status = pipelines
            .get("slow")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        for stage in &status.stages {
            let entry = peak.entry(stage.name.clone()).or_default();
            entry.0 = entry.0.max(stage.desired_replicas);
            entry.1 = entry.1.max(stage.lag.unwrap_or(0));
            if stage.name != "middle" {
                assert_eq!(
                    stage.desired_replicas, 1,
                    "{} scaled, though only the middle stage's input lags: {:?}",
                    stage.name, status.stages
                );
            }
        }
        for other in ["slow-first", "slow-receiver"] {
            let replicas = deployments.get(other).await.unwrap().spec.unwrap().replicas;
            assert_eq!(replicas, Some(1), "{other} left its minimum");
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let row: Vec<String> = status
                .stages
                .iter()
                .map(|s| format!("{} {}r lag {:?}", s.name, s.desired_replicas, s.lag))
                .collect();
            println!("{:>5.1?}: {}", started.elapsed(), row.join(", "));
        }
        let middle = peak.get("middle").map_or(0, |p| p.0);
        if middle >= 2 && load.is_finished() {
            break middle;
        }
        if Instant::now() > deadline {
            break middle;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("peaks (desired replicas, lag): {peak:?}");
    assert!(
        middle_scaled >= 2,
        "the middle stage did not scale up: {peak:?}"
    );
    let replicas = deployments
        .get("slow-middle")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    println!(
        "the middle stage alone scaled to {middle_scaled} (its Deployment at {replicas:?}) after {:?}",
        started.elapsed()
    );
    assert!(
        replicas >= Some(2),
        "slow-middle's Deployment at {replicas:?}"
    );
}
