//! Stage 5: the Pipeline's status, computed from what was applied, then written with
//! server-side apply to the status subresource.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::apply::FIELD_MANAGER;
use super::validate::{RECEIVER_STAGE, ValidatedPipeline};
use crate::crd::{Condition, Pipeline, PipelineStatus, StageStatus};
use crate::scaling::DesiredReplicas;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot write the status of Pipeline {namespace}/{name}: {source}")]
    PatchStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// The one-line verdict of a reconcile that could not apply the Pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
    /// True when the user must change something; false when the operator will retry.
    pub user_error: bool,
}

fn condition(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time: None,
        observed_generation: None,
    }
}

/// Status after a successful apply, from the Deployments the API server returned.
pub fn healthy_status(
    pipeline: &ValidatedPipeline,
    desired: &DesiredReplicas,
    deployments: &[Deployment],
    kafka_topic: Option<&DynamicObject>,
    bootstrap_servers: &str,
    previous: Option<&PipelineStatus>,
    now: &str,
) -> PipelineStatus {
    let stages: Vec<StageStatus> = pipeline
        .stages
        .iter()
        .map(|stage| {
            let deployment = deployments
                .iter()
                .find(|d| d.name_any() == stage.deployment_name);
            let observed = deployment.and_then(|d| d.status.as_ref());
            let previous_stage =
                previous.and_then(|p| p.stages.iter().find(|s| s.name == stage.name));
            let replicas = stage.replicas_with(desired);
            let scaled = previous_stage.is_some_and(|s| s.desired_replicas != replicas);
            StageStatus {
                name: stage.name.clone(),
                deployment: stage.deployment_name.clone(),
                desired_replicas: replicas,
                replicas: observed.and_then(|s| s.replicas).unwrap_or(0),
                ready_replicas: observed.and_then(|s| s.ready_replicas).unwrap_or(0),
                lag: previous_stage.and_then(|s| s.lag),
                last_scale_time: if scaled {
                    Some(now.to_owned())
                } else {
                    previous_stage.and_then(|s| s.last_scale_time.clone())
                },
            }
        })
        .collect();

    let rolling: Vec<&str> = pipeline
        .stages
        .iter()
        .filter(|stage| {
            deployments
                .iter()
                .find(|d| d.name_any() == stage.deployment_name)
                .is_none_or(|d| !deployment_settled(d))
        })
        .map(|stage| stage.name.as_str())
        .collect();
    let not_ready: Vec<&str> = stages
        .iter()
        .filter(|s| s.ready_replicas < s.desired_replicas)
        .map(|s| s.name.as_str())
        .collect();

    let topic_waiting = pipeline.kafka_topic.as_ref().and_then(|topic| {
        let ready = kafka_topic.is_some_and(|object| strimzi_ready(&object.data));
        (!ready).then(|| {
            format!(
                "KafkaTopic {}/{} (topic {}) is not Ready yet",
                topic.namespace, topic.resource_name, topic.topic_name
            )
        })
    });
    let ready = if pipeline.paused {
        condition(
            READY,
            false,
            "Paused",
            "spec.paused is true: every stage is scaled to 0",
        )
    } else if let Some(message) = topic_waiting {
        condition(READY, false, "KafkaTopicNotReady", message)
    } else if not_ready.is_empty() {
        condition(
            READY,
            true,
            "AllStagesReady",
            "every stage has its desired replicas ready",
        )
    } else {
        condition(
            READY,
            false,
            "StagesNotReady",
            format!("waiting for ready replicas in: {}", not_ready.join(", ")),
        )
    };
    let progressing = if rolling.is_empty() {
        condition(
            PROGRESSING,
            false,
            "Stable",
            "every Deployment is rolled out",
        )
    } else {
        condition(
            PROGRESSING,
            true,
            "RollingOut",
            format!("rolling out: {}", rolling.join(", ")),
        )
    };
    let degraded = condition(
        DEGRADED,
        false,
        "AsExpected",
        "the last reconcile succeeded",
    );

    let receiver = stages.iter().find(|s| s.name == RECEIVER_STAGE);
    PipelineStatus {
        observed_generation: pipeline.generation,
        conditions: stamp(
            vec![ready, progressing, degraded],
            previous,
            pipeline.generation,
            now,
        ),
        receivers: receiver.map(|r| format!("{}/{}", r.ready_replicas, r.desired_replicas)),
        lag: receiver.and_then(|r| r.lag),
        replicas: receiver.map(|r| r.replicas),
        selector: Some(format!(
            "{}={},{}={},{}={RECEIVER_STAGE}",
            super::build::LABEL_NAME,
            "ferry",
            super::build::LABEL_INSTANCE,
            pipeline.name,
            super::build::LABEL_STAGE,
        )),
        bootstrap_servers: Some(bootstrap_servers.to_owned()),
        stages,
    }
}

/// Puts the lag last read per stage (by stage name) into `status`; a stage without a
/// reading keeps the lag it had. The Pipeline's own `lag` is the receiver's.
pub fn fill_lag(status: &mut PipelineStatus, lags: &BTreeMap<String, i64>) {
    for stage in &mut status.stages {
        if let Some(lag) = lags.get(&stage.name) {
            stage.lag = Some(*lag);
        }
    }
    status.lag = status
        .stages
        .iter()
        .find(|s| s.name == RECEIVER_STAGE)
        .and_then(|s| s.lag);
}

/// Status when the Pipeline could not be applied: what was there stays, the conditions say why.
pub fn problem_status(
    problem: &Problem,
    generation: Option<i64>,
    previous: Option<&PipelineStatus>,
    now: &str,
) -> PipelineStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let progressing = if problem.user_error {
        condition(
            PROGRESSING,
            false,
            &problem.reason,
            "waiting for a change to the Pipeline",
        )
    } else {
        condition(PROGRESSING, true, &problem.reason, "retrying")
    };
    status.conditions = stamp(
        vec![
            condition(READY, false, &problem.reason, problem.message.clone()),
            progressing,
            condition(
                DEGRADED,
                problem.user_error,
                &problem.reason,
                problem.message.clone(),
            ),
        ],
        previous,
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

/// Keeps a condition's transition time while its status stays the same.
fn stamp(
    mut conditions: Vec<Condition>,
    previous: Option<&PipelineStatus>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    for condition in &mut conditions {
        let before =
            previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_));
        condition.last_transition_time = match before {
            Some(old) if old.status == condition.status => old
                .last_transition_time
                .clone()
                .or_else(|| Some(now.to_owned())),
            _ => Some(now.to_owned()),
        };
        condition.observed_generation = generation;
    }
    conditions
}

/// A Strimzi resource's `status.conditions` holds `Ready=True`.
pub fn strimzi_ready(data: &serde_json::Value) -> bool {
    data.pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.get("type").and_then(serde_json::Value::as_str) == Some("Ready")
                    && c.get("status").and_then(serde_json::Value::as_str) == Some("True")
            })
        })
}

fn deployment_settled(deployment: &Deployment) -> bool {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    let generation_seen = status.observed_generation >= deployment.metadata.generation;
    generation_seen
        && status.updated_replicas.unwrap_or(0) >= desired
        && status.replicas.unwrap_or(0) <= desired
}

pub async fn patch_status(
    client: &Client,
    pipeline: &Pipeline,
    status: PipelineStatus,
) -> Result<(), StatusError> {
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        "kind": "Pipeline",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| StatusError::PatchStatus {
        namespace,
        name,
        source,
    })
}
