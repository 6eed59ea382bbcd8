//! The operator against a real API server, etcd and controller-manager (the local stack).
//! Each test runs its own operator process, watching its own fresh namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use ferry_config::config::{StageConfig, WorkerConfig};
use ferry_operator::crd::Pipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use support::{OperatorProcess, TestNamespace, eventually, install_crds, kubectl};

const WAIT: Duration = Duration::from_secs(60);

fn sample(name: &str) -> Pipeline {
    let mut pipeline: Pipeline =
        serde_yaml::from_str(include_str!("../../examples/pipeline.yaml")).unwrap();
    pipeline.metadata.name = Some(name.to_owned());
    // A topic of its own: lag on a shared topic would make the autoscaler, rightly, move
    // the replicas these tests pin through minReplicas.
    pipeline.spec.kafka.topic = format!("cluster-{}", support::random_suffix());
    pipeline
}

async fn setup(test: &str) -> (Client, TestNamespace, OperatorProcess) {
    install_crds();
    let namespace = TestNamespace::new(test);
    let operator = OperatorProcess::start(&namespace.name);
    (support::client().await, namespace, operator)
}

async fn deployment_names(api: &Api<Deployment>, pipeline: &str) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={pipeline}")))
        .await
        .map(|list| list.items.iter().map(ResourceExt::name_any).collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn receiver_config(api: &Api<ConfigMap>, name: &str) -> Option<WorkerConfig> {
    let config_map = api.get_opt(&format!("{name}-config")).await.ok()??;
    let yaml = config_map.data?.get("receiver.yaml")?.clone();
    WorkerConfig::from_yaml(&yaml).ok()
}

#[tokio::test]
async fn applying_a_pipeline_creates_owned_children() {
    let (client, ns, _operator) = setup("creates-children").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let created = pipelines
        .create(&PostParams::default(), &sample("sensors"))
        .await
        .unwrap();
    let uid = created.uid().unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let names = eventually(WAIT, "three Deployments", || async {
        let names = deployment_names(&deployments, "sensors").await;
        (names.len() == 3).then_some(names)
    })
    .await;
    assert_eq!(
        names,
        ["sensors-receiver", "sensors-stats", "sensors-validate"]
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config_map = config_maps.get("sensors-config").await.unwrap();
    for meta in std::iter::once(&config_map.metadata).chain(
        deployments
            .list(&ListParams::default().labels("app.kubernetes.io/instance=sensors"))
            .await
            .unwrap()
            .items
            .iter()
            .map(|d| &d.metadata)
            .collect::<Vec<_>>()
            .into_iter(),
    ) {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, uid);
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            meta.managed_fields.as_ref().unwrap()[0].manager.as_deref(),
            Some("ferry-operator")
        );
    }

    let status = eventually(WAIT, "a status with observedGeneration", || async {
        let pipeline = pipelines.get("sensors").await.ok()?;
        let status = pipeline.status?;
        (status.observed_generation == pipeline.metadata.generation).then_some(status)
    })
    .await;
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Progressing", "Degraded"]);
    assert_eq!(status.stages.len(), 3);
    assert_eq!(
        status.bootstrap_servers.as_deref(),
        Some("10.244.0.1:19092")
    );
}

#[tokio::test]
async fn a_spec_change_updates_the_children() {
    let (client, ns, _operator) = setup("spec-change").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &sample("sensors"))
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let depth = |config: &WorkerConfig| match &config.stage {
        StageConfig::Receiver(r) => r.storage.history_depth,
        StageConfig::Processor(_) => 0,
    };
    eventually(WAIT, "the first config", || async {
        receiver_config(&config_maps, "sensors")
            .await
            .filter(|c| depth(c) == 100)
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let hash_of = |d: &Deployment| {
        support::pod_template_meta(d).annotations.as_ref().unwrap()["ferry.dev/config-hash"].clone()
    };
    // The ConfigMap is applied before the Deployments, so wait for the receiver too.
    let receiver = eventually(WAIT, "the receiver Deployment", || async {
        deployments.get_opt("sensors-receiver").await.ok()?
    })
    .await;
    let before = hash_of(&receiver);

    let patch = json!({"spec": {"receiver": {"storage": {"historyDepth": 250}, "scaling": {"minReplicas": 2}}}});
    pipelines
        .patch("sensors", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    eventually(WAIT, "historyDepth 250 in the rendered config", || async {
        receiver_config(&config_maps, "sensors")
            .await
            .filter(|c| depth(c) == 250)
    })
    .await;
    let receiver = eventually(WAIT, "the receiver at 2 replicas", || async {
        let d = deployments.get("sensors-receiver").await.ok()?;
        (d.spec.as_ref()?.replicas == Some(2)).then_some(d)
    })
    .await;
    assert_ne!(
        hash_of(&receiver),
        before,
        "a config change must roll the pods"
    );
}

#[tokio::test]
async fn removing_a_processor_deletes_its_deployment() {
    let (client, ns, _operator) = setup("remove-processor").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &sample("sensors"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(WAIT, "three Deployments", || async {
        (deployment_names(&deployments, "sensors").await.len() == 3).then_some(())
    })
    .await;

    // A merge patch replaces the whole list, and unlike get-then-replace it cannot
    // conflict with the operator's concurrent status writes.
    let remaining = json!({"spec": {"processors": [{
        "name": "validate",
        "validate": {"rules": [{"name": "in-range", "expression": "values[0] IN RANGE 11 29 AND text NOT NULL"}]},
        "deadLetter": {"topic": "sensors-invalid"}
    }]}});
    pipelines
        .patch(
            "sensors",
            &PatchParams::default(),
            &Patch::Merge(&remaining),
        )
        .await
        .unwrap();

    let names = eventually(WAIT, "the stats Deployment to go", || async {
        let names = deployment_names(&deployments, "sensors").await;
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(names, ["sensors-receiver", "sensors-validate"]);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let keys = eventually(WAIT, "the stats config to go", || async {
        let data = config_maps.get("sensors-config").await.ok()?.data?;
        (!data.contains_key("processor-stats.yaml")).then_some(data.into_keys().collect::<Vec<_>>())
    })
    .await;
    assert_eq!(keys, ["processor-validate.yaml", "receiver.yaml"]);
}

#[tokio::test]
async fn deleting_the_pipeline_garbage_collects_everything() {
    let (client, ns, _operator) = setup("garbage-collect").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &sample("sensors"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually(WAIT, "three Deployments", || async {
        (deployment_names(&deployments, "sensors").await.len() == 3).then_some(())
    })
    .await;

    pipelines
        .delete("sensors", &DeleteParams::foreground())
        .await
        .unwrap();
    // The real controller-manager's garbage collector removes the owned objects.
    eventually(WAIT, "every child to be collected", || async {
        let left = deployment_names(&deployments, "sensors").await;
        let config_left = config_maps.get_opt("sensors-config").await.ok()?.is_some();
        (left.is_empty() && !config_left).then_some(())
    })
    .await;
    eventually(WAIT, "the Pipeline to be gone", || async {
        pipelines
            .get_opt("sensors")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn pausing_scales_every_stage_to_zero_and_keeps_the_objects() {
    let (client, ns, _operator) = setup("pause").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &sample("sensors"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(WAIT, "three Deployments", || async {
        (deployment_names(&deployments, "sensors").await.len() == 3).then_some(())
    })
    .await;
    pipelines
        .patch(
            "sensors",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "every stage at 0 replicas", || async {
        let list = deployments
            .list(&ListParams::default().labels("app.kubernetes.io/instance=sensors"))
            .await
            .ok()?;
        (list.items.len() == 3
            && list
                .items
                .iter()
                .all(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(0)))
        .then_some(())
    })
    .await;
    let ready = eventually(WAIT, "Ready=False reason Paused", || async {
        let status = pipelines.get("sensors").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "Paused")
    })
    .await;
    assert_eq!(ready.status, "False");
}

/// Every file in examples/invalid is refused by the real API server through `kubectl apply`,
/// with a message naming the field and saying what is wrong.
#[tokio::test]
async fn invalid_pipelines_are_rejected_at_admission_with_the_field_named() {
    install_crds();
    let ns = TestNamespace::new("invalid");
    let dir = support::repo_root().join("examples/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "expected at least 30 invalid examples, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = |tag: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {tag}: ")))
                .unwrap_or_else(|| panic!("{} lacks a `# {tag}:` line", file.display()))
                .to_owned()
        };
        let (field, phrase) = (expect("expect-field"), expect("expect"));
        let out = kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains(&field) || !stderr.contains(&phrase) {
            failures.push(format!(
                "{}: expected a rejection naming {field:?} with {phrase:?}, got: {stderr}",
                file.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} not rejected as expected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn strimzi_kafka(namespace: &str) -> serde_json::Value {
    let path = support::StrimziCrds::chosen().example_kafka();
    let example = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let kafka: serde_json::Value = serde_yaml::Deserializer::from_str(&example)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .map(|doc| serde_json::to_value(doc).unwrap())
        .find(|doc| doc["kind"] == "Kafka")
        .expect("the example holds a Kafka");
    let mut kafka = kafka;
    kafka["metadata"]["namespace"] = json!(namespace);
    kafka
}

fn strimzi_pipeline(name: &str) -> Pipeline {
    let yaml = include_str!("../../examples/pipeline.yaml").replace(
        "bootstrapServers: 10.244.0.1:19092",
        "strimzi: {cluster: my-cluster, listener: plain}",
    );
    let mut pipeline: Pipeline = serde_yaml::from_str(&yaml).unwrap();
    pipeline.metadata.name = Some(name.to_owned());
    pipeline
}

async fn ready_condition(
    pipelines: &Api<Pipeline>,
    name: &str,
) -> Option<ferry_operator::crd::Condition> {
    pipelines
        .get(name)
        .await
        .ok()?
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
}

/// Strimzi's CRDs (real or minimal); the test plays the Strimzi operator by writing the Kafka status.
#[tokio::test]
async fn strimzi_bootstrap_resolves_from_the_kafka_status_and_follows_listener_changes() {
    support::install_strimzi_crds();
    let (client, ns, _operator) = setup("strimzi-resolve").await;
    let kafka_api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_api_resource(),
    );
    let kafka: kube::api::DynamicObject = serde_json::from_value(strimzi_kafka(&ns.name)).unwrap();
    kafka_api
        .create(&PostParams::default(), &kafka)
        .await
        .unwrap();
    let kafka_status = |servers: &str| {
        json!({"status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "listeners": [
                {"name": "plain", "bootstrapServers": servers},
                {"name": "tls", "bootstrapServers": "my-cluster-kafka-bootstrap.kafka.svc:9093"}
            ]
        }})
    };
    kafka_api
        .patch_status(
            "my-cluster",
            &PatchParams::default(),
            &Patch::Merge(&kafka_status("my-cluster-kafka-bootstrap.kafka.svc:9092")),
        )
        .await
        .unwrap();

    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &strimzi_pipeline("sensors"))
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        WAIT,
        "the Strimzi listener's address in the worker config",
        || async {
            receiver_config(&config_maps, "sensors").await.filter(|c| {
                c.kafka.bootstrap_servers == "my-cluster-kafka-bootstrap.kafka.svc:9092"
            })
        },
    )
    .await;
    // Status is written after the children are applied.
    eventually(WAIT, "the resolved address in status", || async {
        let status = pipelines.get("sensors").await.ok()?.status?;
        (status.bootstrap_servers.as_deref() == Some("my-cluster-kafka-bootstrap.kafka.svc:9092"))
            .then_some(())
    })
    .await;

    // A listener change reaches the workers through the Kafka watch, not a resync.
    kafka_api
        .patch_status(
            "my-cluster",
            &PatchParams::default(),
            &Patch::Merge(&kafka_status("new-bootstrap.kafka.svc:9092")),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the new listener address in the worker config",
        || async {
            receiver_config(&config_maps, "sensors")
                .await
                .filter(|c| c.kafka.bootstrap_servers == "new-bootstrap.kafka.svc:9092")
        },
    )
    .await;
}

#[tokio::test]
async fn a_strimzi_kafka_without_status_is_reported_in_a_condition() {
    support::install_strimzi_crds();
    let (client, ns, _operator) = setup("strimzi-waiting").await;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);

    // No Kafka resource at all.
    pipelines
        .create(&PostParams::default(), &strimzi_pipeline("sensors"))
        .await
        .unwrap();
    let condition = eventually(WAIT, "a StrimziKafkaNotFound condition", || async {
        ready_condition(&pipelines, "sensors")
            .await
            .filter(|c| c.reason == "StrimziKafkaNotFound")
    })
    .await;
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("my-cluster"),
        "{}",
        condition.message
    );

    // The Kafka exists but Strimzi hasn't written its status yet.
    let kafka_api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_api_resource(),
    );
    let kafka: kube::api::DynamicObject = serde_json::from_value(strimzi_kafka(&ns.name)).unwrap();
    kafka_api
        .create(&PostParams::default(), &kafka)
        .await
        .unwrap();
    let condition = eventually(WAIT, "a StrimziKafkaNoStatus condition", || async {
        ready_condition(&pipelines, "sensors")
            .await
            .filter(|c| c.reason == "StrimziKafkaNoStatus")
    })
    .await;
    assert!(
        condition.message.contains("no status yet"),
        "{}",
        condition.message
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployment_names(&deployments, "sensors").await.is_empty(),
        "nothing is built without a bootstrap address"
    );

    // Not Ready yet.
    kafka_api
        .patch_status(
            "my-cluster",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"conditions": [{"type": "NotReady", "status": "True"}]}}),
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, "a StrimziKafkaNotReady condition", || async {
        ready_condition(&pipelines, "sensors")
            .await
            .filter(|c| c.reason == "StrimziKafkaNotReady")
    })
    .await;
}

#[tokio::test]
async fn create_topic_makes_a_labelled_kafka_topic_and_waits_for_it_to_be_ready() {
    support::install_strimzi_crds();
    let (client, ns, _operator) = setup("strimzi-topic").await;
    let kafka_api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_api_resource(),
    );
    let kafka: kube::api::DynamicObject = serde_json::from_value(strimzi_kafka(&ns.name)).unwrap();
    kafka_api
        .create(&PostParams::default(), &kafka)
        .await
        .unwrap();
    let ready_kafka = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "listeners": [{"name": "plain", "bootstrapServers": "my-cluster-kafka-bootstrap:9092"}]
    }});
    kafka_api
        .patch_status(
            "my-cluster",
            &PatchParams::default(),
            &Patch::Merge(&ready_kafka),
        )
        .await
        .unwrap();

    let mut pipeline = strimzi_pipeline("sensors");
    pipeline.spec.kafka.create_topic = Some(ferry_operator::crd::CreateTopicSpec {
        partitions: 12,
        replicas: Some(1),
        config: [("retention.ms".to_owned(), "3600000".to_owned())].into(),
    });
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let created = pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();

    let topics: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_topic_api_resource(),
    );
    let topic = eventually(WAIT, "the KafkaTopic", || async {
        topics.get_opt("sensors-topic").await.ok()?
    })
    .await;
    assert_eq!(topic.data["spec"]["topicName"], "sensors");
    assert_eq!(topic.data["spec"]["partitions"], 12);
    assert_eq!(
        topic.metadata.labels.as_ref().unwrap()["strimzi.io/cluster"],
        "my-cluster"
    );
    // Labelled, never owned: the garbage collector must not delete it with the Pipeline.
    assert!(topic.owner_references().is_empty());
    assert_eq!(
        topic.labels()["app.kubernetes.io/instance"],
        created.name_any()
    );

    // Until Strimzi's Topic Operator marks it Ready, the Pipeline says so.
    eventually(WAIT, "a KafkaTopicNotReady condition", || async {
        ready_condition(&pipelines, "sensors")
            .await
            .filter(|c| c.reason == "KafkaTopicNotReady")
    })
    .await;
    topics
        .patch_status(
            "sensors-topic",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(45),
        "the topic condition to clear",
        || async {
            ready_condition(&pipelines, "sensors")
                .await
                .filter(|c| c.reason != "KafkaTopicNotReady")
        },
    )
    .await;
}

/// Real worker pods on the local kubelet: Ready once they joined the group and reached Redis.
#[tokio::test]
async fn status_reaches_ready_when_the_worker_pods_are_ready() {
    let (client, ns, _operator) = setup("ready").await;
    let host = support::StackEnv::load().pod_host();
    let yaml = include_str!("../../examples/pipeline.yaml").replace("10.244.0.1", &host);
    let mut pipeline: Pipeline = serde_yaml::from_str(&yaml).unwrap();
    let topic = format!("ready-{}", support::random_suffix());
    // Workers are ready only once assigned partitions, so the topic must exist.
    let env = support::StackEnv::load();
    let kafka_topics = std::path::Path::new(env.get("FERRY_BIN")).join("kafka-topics");
    let created = std::process::Command::new(kafka_topics)
        .args([
            "--bootstrap-server",
            env.get("KAFKA_BOOTSTRAP"),
            "--create",
            "--topic",
            &topic,
            "--partitions",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    pipeline.spec.kafka.topic = topic;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();

    let status = eventually(Duration::from_secs(180), "Ready=True", || async {
        let status = pipelines.get("sensors").await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(status)
    })
    .await;
    assert_eq!(status.receivers.as_deref(), Some("1/1"));
    for stage in &status.stages {
        assert_eq!(stage.ready_replicas, stage.desired_replicas, "{stage:?}");
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "AllStagesReady");
}

// --- The topics between chained stages (issue 18) ---

/// The conditions of Pipeline `name`, once its status is written.
async fn conditions(
    pipelines: &Api<Pipeline>,
    name: &str,
) -> Option<Vec<ferry_operator::crd::Condition>> {
    Some(pipelines.get(name).await.ok()?.status?.conditions)
}

/// A chain test's surroundings: the operator watching its own namespace, a source topic,
/// and a name for the middle stage's topic.
struct ChainCase {
    client: Client,
    ns: TestNamespace,
    _operator: OperatorProcess,
    bootstrap: String,
    source: String,
    middle: String,
    pipelines: Api<Pipeline>,
}

impl ChainCase {
    async fn start(test: &str, partitions: i32) -> Self {
        let (client, ns, operator) = setup(test).await;
        let bootstrap = support::StackEnv::load().get("KAFKA_BOOTSTRAP").to_owned();
        let source = format!("chain-src-{}", support::random_suffix());
        let middle = format!("chain-mid-{}", support::random_suffix());
        support::create_topic(&bootstrap, &source, partitions).await;
        let pipelines = Api::namespaced(client.clone(), &ns.name);
        Self {
            client,
            ns,
            _operator: operator,
            bootstrap,
            source,
            middle,
            pipelines,
        }
    }
}

async fn gone(pipelines: &Api<Pipeline>, name: &str) {
    eventually(WAIT, "the Pipeline gone", || async {
        pipelines.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// A chain of one validate stage writing `middle`, which the receiver reads.
fn chain_pipeline(name: &str, source: &str, middle: &str, create: &str, extra: &str) -> Pipeline {
    let spec_extra = format!(
        "{extra}  processors:\n  - name: check\n    validate:\n      rules:\n      - name: present\n        expression: text NOT NULL\n    output:\n      topic: {middle}\n{create}"
    );
    let prefix = format!("{name}-{}", support::random_suffix());
    support::StackPipeline {
        receiver_extra: "    input:\n      from: check\n",
        spec_extra: &spec_extra,
        ..support::StackPipeline::new(name, source, &prefix)
    }
    .build()
}

#[tokio::test]
async fn a_stage_whose_input_topic_is_missing_waits_and_says_so_until_it_exists() {
    let case = ChainCase::start("input-missing", 2).await;
    let ChainCase {
        client,
        ns,
        bootstrap,
        source,
        middle,
        pipelines,
        ..
    } = &case;
    pipelines
        .create(
            &PostParams::default(),
            &chain_pipeline("waits", source, middle, "", ""),
        )
        .await
        .unwrap();

    let waiting = eventually(WAIT, "a condition naming the missing input", || async {
        conditions(pipelines, "waits")
            .await?
            .into_iter()
            .find(|c| c.reason == "InputTopicMissing")
    })
    .await;
    assert!(
        waiting.message.contains("receiver") && waiting.message.contains(middle.as_str()),
        "{waiting:?}"
    );
    // The Deployments are there, waiting with the Pipeline.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        deployment_names(&deployments, "waits").await,
        ["waits-check", "waits-receiver"]
    );

    support::create_topic(bootstrap, middle, 2).await;
    eventually(
        Duration::from_secs(30),
        "the waiting reason cleared",
        || async {
            let conditions = conditions(pipelines, "waits").await?;
            conditions
                .iter()
                .all(|c| c.reason != "InputTopicMissing")
                .then_some(())
        },
    )
    .await;
}

/// The partitions of `topic` on the local Kafka, `None` when it does not exist.
fn kafka_partitions(bootstrap: &str, topic: &str) -> Option<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
}

const CREATE: &str = "      create: {}\n";

#[tokio::test]
async fn an_output_topic_is_created_with_the_source_partitions_and_retained_by_default() {
    let case = ChainCase::start("output-create", 3).await;
    let ChainCase {
        bootstrap,
        source,
        middle,
        pipelines,
        ..
    } = &case;
    pipelines
        .create(
            &PostParams::default(),
            &chain_pipeline("made", source, middle, CREATE, ""),
        )
        .await
        .unwrap();

    let created = eventually(WAIT, "status.createdTopics", || async {
        let status = pipelines.get("made").await.ok()?.status?;
        status.created_topics.first().cloned()
    })
    .await;
    assert_eq!(&created.topic, middle);
    assert_eq!(created.stage, "check");
    assert_eq!(created.partitions, 3);
    assert_eq!(created.via, ferry_operator::crd::TopicCreator::AdminApi);
    assert_eq!(
        kafka_partitions(bootstrap, middle),
        Some(3),
        "on the real Kafka"
    );
    // The receiver reads it: nothing waits.
    let conditions = conditions(pipelines, "made").await.unwrap();
    assert!(
        conditions.iter().all(|c| c.reason != "InputTopicMissing"),
        "{conditions:?}"
    );

    // The stage goes (the receiver reads the source again): its topic stays.
    let patch = json!({"spec": {"processors": [], "receiver": {"input": null}}});
    pipelines
        .patch("made", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let status = eventually(WAIT, "the one-stage generation applied", || async {
        let pipeline = pipelines.get("made").await.ok()?;
        let status = pipeline.status?;
        (status.observed_generation == pipeline.metadata.generation && status.stages.len() == 1)
            .then_some(status)
    })
    .await;
    assert_eq!(status.created_topics.len(), 1, "still listed as Ferry's");
    assert_eq!(kafka_partitions(bootstrap, middle), Some(3), "retained");

    // So does the Pipeline's deletion.
    pipelines
        .delete("made", &DeleteParams::default())
        .await
        .unwrap();
    gone(pipelines, "made").await;
    assert_eq!(kafka_partitions(bootstrap, middle), Some(3), "retained");
}

#[tokio::test]
async fn with_deletion_policy_delete_the_created_topic_goes_with_the_pipeline() {
    let case = ChainCase::start("output-delete", 2).await;
    let ChainCase {
        bootstrap,
        source,
        middle,
        pipelines,
        ..
    } = &case;
    pipelines
        .create(
            &PostParams::default(),
            &chain_pipeline(
                "doomed",
                source,
                middle,
                CREATE,
                "  deletionPolicy: delete\n",
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, "the topic created", || async {
        let status = pipelines.get("doomed").await.ok()?.status?;
        (!status.created_topics.is_empty()).then_some(())
    })
    .await;
    assert_eq!(kafka_partitions(bootstrap, middle), Some(2));
    let pipeline = pipelines.get("doomed").await.unwrap();
    assert!(
        pipeline
            .finalizers()
            .iter()
            .any(|f| f == "ferry.dev/delete-kafka-topic"),
        "{:?}",
        pipeline.finalizers()
    );

    pipelines
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    gone(pipelines, "doomed").await;
    eventually(
        Duration::from_secs(30),
        "the topic deleted from Kafka",
        || async { kafka_partitions(bootstrap, middle).is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        kafka_partitions(bootstrap, source),
        Some(2),
        "the source is the user's"
    );
}

/// With Strimzi the output topic is a labelled, never-owned KafkaTopic sized like the source
/// (read from the real Kafka the Kafka resource's status points at); removing its stage
/// under `deletionPolicy: delete` deletes it. The test plays Strimzi's operators.
#[tokio::test]
async fn with_strimzi_an_output_topic_is_a_kafka_topic_sized_like_the_source() {
    support::install_strimzi_crds();
    let case = ChainCase::start("strimzi-output", 3).await;
    let ChainCase {
        client,
        ns,
        bootstrap,
        source,
        middle,
        pipelines,
        ..
    } = &case;
    let kafka_api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_api_resource(),
    );
    let kafka: kube::api::DynamicObject = serde_json::from_value(strimzi_kafka(&ns.name)).unwrap();
    kafka_api
        .create(&PostParams::default(), &kafka)
        .await
        .unwrap();
    let ready_kafka = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "listeners": [{"name": "plain", "bootstrapServers": bootstrap}]
    }});
    kafka_api
        .patch_status(
            "my-cluster",
            &PatchParams::default(),
            &Patch::Merge(&ready_kafka),
        )
        .await
        .unwrap();

    let mut pipeline = chain_pipeline(
        "viakt",
        source,
        middle,
        CREATE,
        "  deletionPolicy: delete\n",
    );
    pipeline.spec.kafka.bootstrap_servers = None;
    pipeline.spec.kafka.strimzi = Some(
        serde_json::from_value(json!({"cluster": "my-cluster", "listener": "plain"})).unwrap(),
    );
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();

    let topics: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ferry_operator::controller::dereference::kafka_topic_api_resource(),
    );
    let topic = eventually(WAIT, "the output KafkaTopic", || async {
        topics.get_opt("viakt-check-output").await.ok()?
    })
    .await;
    assert_eq!(topic.data["spec"]["topicName"], json!(middle));
    assert_eq!(topic.data["spec"]["partitions"], 3, "the source's count");
    assert_eq!(topic.labels()["ferry.dev/stage"], "check");
    assert_eq!(topic.labels()["strimzi.io/cluster"], "my-cluster");
    assert!(topic.owner_references().is_empty(), "labelled, never owned");
    let created = eventually(WAIT, "status.createdTopics", || async {
        let status = pipelines.get("viakt").await.ok()?.status?;
        status.created_topics.first().cloned()
    })
    .await;
    assert_eq!(created.via, ferry_operator::crd::TopicCreator::KafkaTopic);
    assert_eq!(
        created.kafka_topic.as_deref(),
        Some(format!("{}/viakt-check-output", ns.name).as_str())
    );
    // Strimzi has not made the topic: the receiver waits for it, and says so.
    eventually(WAIT, "the receiver waiting for its input", || async {
        conditions(pipelines, "viakt")
            .await?
            .into_iter()
            .find(|c| c.reason == "InputTopicMissing" && c.message.contains(middle.as_str()))
    })
    .await;

    let patch = json!({"spec": {"processors": [], "receiver": {"input": null}}});
    pipelines
        .patch("viakt", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(WAIT, "the KafkaTopic deleted with its stage", || async {
        topics
            .get_opt("viakt-check-output")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let status = pipelines.get("viakt").await.unwrap().status.unwrap();
    assert!(
        status.created_topics.is_empty(),
        "{:?}",
        status.created_topics
    );
}
