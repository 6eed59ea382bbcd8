//! `/v1/pipeline`: the Pipeline's stages (replicas, lag, topics) and conditions, read from
//! its status on the Kubernetes API. The API pod's ServiceAccount may `get` only its own
//! Pipeline (a Role with `resourceNames`), so this is the one object it can read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// How long one read of the status serves every dashboard: the operator updates it every
/// few seconds at most, and many open dashboards must not each poll the API server.
const FRESH_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PipelineStatusError {
    #[error("serve was started without --pipeline-object: it does not read the Pipeline")]
    NotConfigured,
    #[error("--pipeline-object must be <namespace>/<name>, found {0:?}")]
    BadReference(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot read Pipeline {namespace}/{name}: {}", api_message(source))]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The API server's own message where it answered (`pipelines.ferry.dev "x" not found`),
/// not the whole response's debug form.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// What the dashboard shows of one stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub name: String,
    pub desired_replicas: Option<i64>,
    pub replicas: Option<i64>,
    pub ready_replicas: Option<i64>,
    pub lag: Option<i64>,
    pub input: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PipelineView {
    pub namespace: String,
    pub name: String,
    pub stages: Vec<Stage>,
    pub conditions: Vec<ConditionView>,
}

/// The status as the operator writes it (camelCase), only the fields shown.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct StatusIn {
    stages: Vec<StageIn>,
    conditions: Vec<ConditionView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StageIn {
    name: String,
    desired_replicas: Option<i64>,
    replicas: Option<i64>,
    ready_replicas: Option<i64>,
    lag: Option<i64>,
    input: Option<String>,
    output: Option<String>,
}

/// The view of a Pipeline object's status; an object without status has no stages yet.
pub fn view(namespace: &str, name: &str, status: Option<&serde_json::Value>) -> PipelineView {
    let status: StatusIn = status
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default();
    PipelineView {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        stages: status
            .stages
            .into_iter()
            .map(|s| Stage {
                name: s.name,
                desired_replicas: s.desired_replicas,
                replicas: s.replicas,
                ready_replicas: s.ready_replicas,
                lag: s.lag,
                input: s.input,
                output: s.output,
            })
            .collect(),
        conditions: status.conditions,
    }
}

/// Reads one Pipeline's status, at most once per [`FRESH_FOR`].
#[derive(Debug)]
pub struct PipelineReader {
    api: kube::Api<DynamicObject>,
    namespace: String,
    name: String,
    last: Mutex<Option<(Instant, Arc<PipelineView>)>>,
}

impl PipelineReader {
    /// `reference` is `<namespace>/<name>`; the client is the in-cluster one (or
    /// `KUBECONFIG` outside a cluster).
    pub async fn connect(reference: &str) -> Result<Self, PipelineStatusError> {
        let (namespace, name) = reference
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| PipelineStatusError::BadReference(reference.to_owned()))?;
        let client = kube::Client::try_default()
            .await
            .map_err(PipelineStatusError::Client)?;
        let gvk = GroupVersionKind::gvk("ferry.dev", "v1alpha1", "Pipeline");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "pipelines");
        Ok(Self {
            api: kube::Api::namespaced_with(client, namespace, &resource),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            last: Mutex::new(None),
        })
    }

    pub async fn read(&self) -> Result<Arc<PipelineView>, PipelineStatusError> {
        let mut last = self.last.lock().await;
        if let Some((at, view)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Arc::clone(view));
        }
        let object =
            self.api
                .get(&self.name)
                .await
                .map_err(|source| PipelineStatusError::Read {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    source,
                })?;
        let fresh = Arc::new(view(&self.namespace, &self.name, object.data.get("status")));
        *last = Some((Instant::now(), Arc::clone(&fresh)));
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_stages_in_order_with_what_the_dashboard_shows() {
        let status = serde_json::json!({
            "observedGeneration": 3,
            "stages": [
                {"name": "receiver", "deployment": "p-receiver", "desiredReplicas": 2,
                 "replicas": 2, "readyReplicas": 1, "lag": 40, "input": "orders.validated"},
                {"name": "enrich", "deployment": "p-enrich", "desiredReplicas": 1,
                 "replicas": 1, "readyReplicas": 1, "input": "orders", "output": "orders.enriched"}
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                            "message": "all stages ready", "lastTransitionTime": "2026-12-01T00:00:00Z"}]
        });
        let view = view("team", "orders", Some(&status));
        assert_eq!(view.stages.len(), 2);
        assert_eq!(view.stages[0].name, "receiver");
        assert_eq!(view.stages[0].ready_replicas, Some(1));
        assert_eq!(view.stages[0].lag, Some(40));
        assert_eq!(view.stages[1].output.as_deref(), Some("orders.enriched"));
        assert_eq!(view.stages[1].lag, None);
        assert_eq!(view.conditions[0].reason, "Ready");
    }

    #[test]
    fn a_pipeline_without_status_has_no_stages_yet() {
        let view = view("team", "orders", None);
        assert!(view.stages.is_empty() && view.conditions.is_empty());
    }
}
