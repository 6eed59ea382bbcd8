//! Stage 1: fetch what the spec refers to. Today that is a Strimzi `Kafka` resource, whose
//! `status.listeners` gives the bootstrap address. Reads only; it never writes.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::crd::{Pipeline, StrimziKafkaRef};

pub const STRIMZI_GROUP: &str = "kafka.strimzi.io";
pub const STRIMZI_VERSION: &str = "v1";

#[derive(Debug, Clone, PartialEq)]
pub enum Bootstrap {
    Resolved(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dereferenced {
    pub bootstrap: Bootstrap,
}

#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    /// The Strimzi cluster isn't usable yet; the Pipeline waits and says why.
    #[error("{message}")]
    StrimziNotReady {
        reason: &'static str,
        message: String,
    },
    #[error("cannot read Strimzi Kafka {namespace}/{name}: {source}")]
    FetchKafka {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

pub fn kafka_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(STRIMZI_GROUP, STRIMZI_VERSION, "Kafka"),
        "kafkas",
    )
}

pub fn kafka_topic_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(STRIMZI_GROUP, STRIMZI_VERSION, "KafkaTopic"),
        "kafkatopics",
    )
}

pub async fn dereference(
    client: &Client,
    pipeline: &Pipeline,
) -> Result<Dereferenced, DereferenceError> {
    let kafka = &pipeline.spec.kafka;
    if let Some(servers) = &kafka.bootstrap_servers {
        return Ok(Dereferenced {
            bootstrap: Bootstrap::Resolved(servers.clone()),
        });
    }
    let Some(strimzi) = &kafka.strimzi else {
        return Err(DereferenceError::StrimziNotReady {
            reason: "NoBootstrap",
            message: "spec.kafka sets neither bootstrapServers nor strimzi".to_owned(),
        });
    };
    let namespace = strimzi_namespace(pipeline, strimzi);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &kafka_api_resource());
    let object = match api.get_opt(&strimzi.cluster).await {
        Ok(Some(object)) => object,
        Ok(None) => {
            return Err(DereferenceError::StrimziNotReady {
                reason: "StrimziKafkaNotFound",
                message: format!(
                    "Strimzi Kafka {namespace}/{} does not exist (spec.kafka.strimzi.cluster)",
                    strimzi.cluster
                ),
            });
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(DereferenceError::StrimziNotReady {
                reason: "StrimziNotInstalled",
                message:
                    "the kafkas.kafka.strimzi.io API is not served: install the Strimzi operator"
                        .to_owned(),
            });
        }
        Err(source) => {
            return Err(DereferenceError::FetchKafka {
                namespace,
                name: strimzi.cluster.clone(),
                source,
            });
        }
    };
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    bootstrap_from_strimzi_status(&status, &strimzi.listener)
        .map(|servers| Dereferenced {
            bootstrap: Bootstrap::Resolved(servers),
        })
        .map_err(|(reason, detail)| DereferenceError::StrimziNotReady {
            reason,
            message: format!("Strimzi Kafka {namespace}/{}: {detail}", strimzi.cluster),
        })
}

pub fn strimzi_namespace(pipeline: &Pipeline, strimzi: &StrimziKafkaRef) -> String {
    strimzi
        .namespace
        .clone()
        .or_else(|| pipeline.namespace())
        .unwrap_or_default()
}

/// Picks the listener's bootstrap address from a Strimzi `Kafka` status, in the shape
/// Strimzi documents. Errors carry a CamelCase reason and a message for the condition.
pub fn bootstrap_from_strimzi_status(
    status: &Value,
    listener: &str,
) -> Result<String, (&'static str, String)> {
    if status.is_null() {
        return Err((
            "StrimziKafkaNoStatus",
            "has no status yet; waiting for the Strimzi operator".to_owned(),
        ));
    }
    let ready = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type") == Some(&Value::from("Ready"))
                && c.get("status") == Some(&Value::from("True"))
        });
    if !ready {
        return Err((
            "StrimziKafkaNotReady",
            "is not Ready yet (no Ready=True condition)".to_owned(),
        ));
    }
    let listeners = status.get("listeners").and_then(Value::as_array);
    let entry = listeners
        .into_iter()
        .flatten()
        .find(|l| l.get("name").and_then(Value::as_str) == Some(listener));
    let Some(entry) = entry else {
        let known: Vec<&str> = listeners
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("name").and_then(Value::as_str))
            .collect();
        return Err((
            "StrimziListenerNotFound",
            format!(
                "has no listener {listener:?} in status.listeners (spec.kafka.strimzi.listener); it has [{}]",
                known.join(", ")
            ),
        ));
    };
    if let Some(servers) = entry.get("bootstrapServers").and_then(Value::as_str)
        && !servers.is_empty()
    {
        return Ok(servers.to_owned());
    }
    // Older statuses list addresses without the joined string.
    let addresses: Vec<String> = entry
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let host = a.get("host")?.as_str()?;
            let port = a.get("port")?.as_u64()?;
            Some(format!("{host}:{port}"))
        })
        .collect();
    if addresses.is_empty() {
        return Err((
            "StrimziListenerNoAddress",
            format!("listener {listener:?} has no bootstrap address yet"),
        ));
    }
    Ok(addresses.join(","))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ready(listeners: Value) -> Value {
        json!({"conditions": [{"type": "Ready", "status": "True"}], "listeners": listeners})
    }

    #[test]
    fn resolves_the_named_listener() {
        let status = ready(json!([
            {"name": "plain", "bootstrapServers": "my-cluster-kafka-bootstrap.kafka.svc:9092"},
            {"name": "tls", "bootstrapServers": "my-cluster-kafka-bootstrap.kafka.svc:9093"}
        ]));
        assert_eq!(
            bootstrap_from_strimzi_status(&status, "tls").unwrap(),
            "my-cluster-kafka-bootstrap.kafka.svc:9093"
        );
    }

    #[test]
    fn falls_back_to_addresses() {
        let status = ready(
            json!([{"name": "plain", "addresses": [{"host": "a", "port": 9092}, {"host": "b", "port": 9092}]}]),
        );
        assert_eq!(
            bootstrap_from_strimzi_status(&status, "plain").unwrap(),
            "a:9092,b:9092"
        );
    }

    #[test]
    fn explains_every_missing_piece() {
        let cases = [
            (Value::Null, "StrimziKafkaNoStatus"),
            (
                json!({"conditions": [{"type": "Ready", "status": "False"}]}),
                "StrimziKafkaNotReady",
            ),
            (
                ready(json!([{"name": "tls", "bootstrapServers": "x:1"}])),
                "StrimziListenerNotFound",
            ),
            (
                ready(json!([{"name": "plain"}])),
                "StrimziListenerNoAddress",
            ),
        ];
        for (status, reason) in cases {
            let (got, message) = bootstrap_from_strimzi_status(&status, "plain").unwrap_err();
            assert_eq!(got, reason, "{message}");
            assert!(!message.is_empty());
        }
        let (_, message) = bootstrap_from_strimzi_status(
            &ready(json!([{"name": "tls", "bootstrapServers": "x:1"}])),
            "plain",
        )
        .unwrap_err();
        assert!(
            message.contains("spec.kafka.strimzi.listener") && message.contains("tls"),
            "{message}"
        );
    }
}
