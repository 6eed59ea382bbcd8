//! Helpers of the data-safety and tenancy tests (operator/tests/security.rs): an operator
//! process with its own settings, Pipelines written as JSON (so a field the API server does
//! not know yet is dropped, not refused), a Strimzi `Kafka` the test marks Ready, and the
//! files the kubelet materialised for a pod's volume.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn pipeline_resource() -> ApiResource {
    ApiResource::erase::<ferry_operator::crd::Pipeline>(&())
}

pub fn pipelines(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &pipeline_resource())
}

pub fn kafka_topics(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ferry_operator::controller::dereference::kafka_topic_api_resource(),
    )
}

/// A small Pipeline on a dead broker and Redis: no pods unless `replicas` says so.
pub fn pipeline(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "kafka": {"bootstrapServers": "127.0.0.1:9", "topic": format!("{name}-{}", super::random_suffix())},
            "redis": {"host": "127.0.0.1", "port": 9, "keyPrefix": name},
            "receiver": {
                "storage": {"type": "list", "historyDepth": 10},
                "scaling": {"mode": "manual", "replicas": replicas, "minReplicas": 0, "maxReplicas": 2}
            }
        }
    })
}

/// `pipeline`, resolving its bootstrap from the Strimzi Kafka `my-cluster` in `kafka_namespace`.
pub fn strimzi_pipeline(name: &str, kafka_namespace: &str) -> Value {
    let mut value = pipeline(name, 0);
    let kafka = &mut value["spec"]["kafka"];
    kafka
        .as_object_mut()
        .expect("an object")
        .remove("bootstrapServers");
    kafka["strimzi"] = json!({"cluster": "my-cluster", "namespace": kafka_namespace});
    value
}

/// Creates a Pipeline from JSON. Without field validation the API server drops a field
/// its CRD does not have yet, which lets a test run against an older operator too.
pub async fn create_pipeline(client: &Client, namespace: &str, value: Value) -> DynamicObject {
    let object: DynamicObject = serde_json::from_value(value).expect("a Pipeline object");
    pipelines(client, namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("the Pipeline is created")
}

/// The condition `type_` of Pipeline `name`, when it has a status.
pub async fn condition(client: &Client, namespace: &str, name: &str, type_: &str) -> Option<Value> {
    let object = pipelines(client, namespace).get_opt(name).await.ok()??;
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Strimzi's `Kafka` `my-cluster` in `namespace`, Ready with a `plain` listener.
pub async fn ready_kafka(client: &Client, namespace: &str) {
    let path = super::StrimziCrds::chosen().example_kafka();
    let example = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut kafka: Value = serde_yaml::Deserializer::from_str(&example)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("YAML"))
        .map(|doc| serde_json::to_value(doc).expect("JSON"))
        .find(|doc| doc["kind"] == "Kafka")
        .expect("the example holds a Kafka");
    kafka["metadata"]["namespace"] = json!(namespace);
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &ferry_operator::controller::dereference::kafka_api_resource(),
    );
    let kafka: DynamicObject = serde_json::from_value(kafka).expect("a Kafka object");
    api.create(&PostParams::default(), &kafka)
        .await
        .expect("the Kafka is created");
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "listeners": [{"name": "plain", "bootstrapServers": "my-cluster-kafka-bootstrap:9092"}]
    }});
    api.patch_status(
        "my-cluster",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("the Kafka status is written");
}

/// The names the kubelet materialised in a pod's Secret volume, without the kubelet's own
/// `..data` bookkeeping; `None` until it has mounted the volume.
pub fn secret_volume_files(pod_uid: &str, volume: &str) -> Option<Vec<String>> {
    let stack_dir = ferry_test_support::stack_var("FERRY_STACK_DIR")
        .unwrap_or_else(|| "/tmp/ferry-stack".to_owned());
    let dir = PathBuf::from(stack_dir)
        .join("k8s/kubelet/pods")
        .join(pod_uid)
        .join("volumes/kubernetes.io~secret")
        .join(volume);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with(".."))
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    Some(names)
}

/// Who wrote an object, from its `managedFields`.
pub fn managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.manager.clone())
        .collect()
}

/// What of an object a takeover would change: its spec's generation, owners, labels and
/// writers (status writers aside: the controller-manager updates a Deployment's status).
pub fn fingerprint<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    let writers: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.as_deref() != Some("status"))
        .filter_map(|entry| entry.manager.clone())
        .collect();
    format!(
        "generation={:?} ownerReferences={:?} labels={:?} annotations={:?} managers={writers:?}",
        meta.generation,
        meta.owner_references
            .iter()
            .flatten()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect::<Vec<_>>(),
        meta.labels,
        meta.annotations,
    )
}

pub const SHORT: Duration = Duration::from_secs(45);
