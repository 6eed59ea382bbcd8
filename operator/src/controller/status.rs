//! Stage 5: the Pipeline's status, computed from what was applied, then written with
//! server-side apply to the status subresource.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::apply::FIELD_MANAGER;
use super::topics::TopicsOutcome;
use super::validate::{RECEIVER_STAGE, ValidatedPipeline};
use crate::crd::{Condition, Pipeline, PipelineStatus, StageStatus};
use crate::scaling::DesiredReplicas;
use crate::worker_status::{PodReason, StageReports, describe};

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
                input: Some(stage.input_topic.clone()),
                output: stage.output_topic.clone(),
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
        stage_count: i32::try_from(stages.len()).ok(),
        stages,
        // The `topics` stage's to say ([`fill_topics`]); kept until it does.
        created_topics: previous
            .map(|p| p.created_topics.clone())
            .unwrap_or_default(),
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

/// Reasons the `topics` stage puts into the conditions.
pub const INPUT_TOPIC_MISSING: &str = "InputTopicMissing";
pub const TOPIC_ADMIN_FAILED: &str = "TopicAdminFailed";
pub const TOPICS_NOT_MANAGED: &str = "TopicsNotManaged";

/// The message of a waiting Pipeline: each stage and the topic it waits for.
pub fn missing_inputs_message(missing: &[(String, String)]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|(stage, topic)| {
            format!("stage {stage} reads topic {topic}, which does not exist yet")
        })
        .collect();
    format!(
        "{}; its Deployment runs and its workers wait for the topic",
        each.join("; ")
    )
}

/// Puts what the `topics` stage found into `status`: the topics Ferry created, and
/// - a stage waiting for its input topic: `Ready=False` and `Progressing=True`, reason
///   `InputTopicMissing`, naming each stage and topic (unless paused: nothing runs then);
/// - a failed admin call: `Degraded=True`, reason `TopicAdminFailed`, naming the topic;
/// - topics asked for on a cluster the operator cannot write to: `Degraded=True`, reason
///   `TopicsNotManaged`.
///
/// Each clears on the first round that no longer finds it.
pub fn fill_topics(
    status: &mut PipelineStatus,
    pipeline: &ValidatedPipeline,
    outcome: &TopicsOutcome,
    previous: Option<&PipelineStatus>,
    now: &str,
) {
    status.created_topics = outcome.created.clone();
    let mut changed = Vec::new();
    if !outcome.missing_inputs.is_empty() && !pipeline.paused {
        let message = missing_inputs_message(&outcome.missing_inputs);
        let ready_reason = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.reason.clone());
        // A pending KafkaTopic says more: the input is missing because of it.
        if ready_reason.as_deref() != Some("KafkaTopicNotReady") {
            changed.push(condition(
                READY,
                false,
                INPUT_TOPIC_MISSING,
                message.clone(),
            ));
        }
        changed.push(condition(PROGRESSING, true, INPUT_TOPIC_MISSING, message));
    }
    if !outcome.failures.is_empty() {
        changed.push(condition(
            DEGRADED,
            true,
            TOPIC_ADMIN_FAILED,
            outcome.failures.join("; "),
        ));
    } else if let Some(unsupported) = &outcome.unsupported {
        changed.push(condition(
            DEGRADED,
            true,
            TOPICS_NOT_MANAGED,
            unsupported.clone(),
        ));
    }
    for condition in stamp(changed, previous, pipeline.generation, now) {
        match status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(slot) => *slot = condition,
            None => status.conditions.push(condition),
        }
    }
}

/// The longest `Degraded` message built from worker reports.
const MAX_WORKER_MESSAGE: usize = 2048;

/// Puts what the worker pods report ([`crate::worker_status`]) into the `Degraded`
/// condition: `True`, with the first reported reason (stages in the Pipeline's order) and a
/// message naming each stage, pod, partition and offset, while any stage reports one.
pub fn fill_worker_reports(
    status: &mut PipelineStatus,
    pipeline: &ValidatedPipeline,
    reports: &StageReports,
    previous: Option<&PipelineStatus>,
    now: &str,
) {
    let reported: Vec<(&str, &PodReason)> = pipeline
        .stages
        .iter()
        .filter_map(|stage| reports.get_key_value(&stage.name))
        .flat_map(|(stage, reasons)| reasons.iter().map(move |r| (stage.as_str(), r)))
        .collect();
    let Some((_, first)) = reported.first() else {
        return;
    };
    let mut message = String::new();
    for (stage, reason) in &reported {
        let part = format!("{}: {}", reason.reason, describe(stage, reason));
        if !message.is_empty() {
            message.push_str("; ");
        }
        if message.len() + part.len() > MAX_WORKER_MESSAGE {
            message.push_str("and more (see the Events and each pod's /status)");
            break;
        }
        message.push_str(&part);
    }
    let degraded = condition(DEGRADED, true, &first.reason, message);
    let stamped = stamp(vec![degraded], previous, pipeline.generation, now);
    for condition in stamped {
        match status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(slot) => *slot = condition,
            None => status.conditions.push(condition),
        }
    }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use serde_json::json;

    use super::*;
    use crate::controller::dereference::{Bootstrap, Dereferenced};
    use crate::controller::validate::{OperatorDefaults, validate};

    const SAMPLE: &str = include_str!("../../../examples/pipeline.yaml");
    const NOW: &str = "2026-01-01T00:00:10Z";
    const BEFORE: &str = "2026-01-01T00:00:00Z";

    fn sample(edit: impl FnOnce(&mut Pipeline)) -> ValidatedPipeline {
        let mut pipeline: Pipeline = serde_yaml::from_str(SAMPLE).unwrap();
        pipeline.metadata.namespace = Some("default".to_owned());
        pipeline.metadata.uid = Some("u".to_owned());
        pipeline.metadata.generation = Some(3);
        edit(&mut pipeline);
        let dereferenced = Dereferenced {
            bootstrap: Bootstrap::Resolved("kafka:9092".to_owned()),
        };
        let defaults = OperatorDefaults::new("ferry/worker:test");
        validate(&pipeline, &dereferenced, &defaults).unwrap()
    }

    /// A Deployment as the API server returns it: `ready` of `desired`, rolled out or not.
    fn deployment(name: &str, desired: i32, ready: i32, rolled_out: bool) -> Deployment {
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some(name.to_owned());
        deployment.metadata.generation = Some(2);
        deployment.spec = Some(DeploymentSpec {
            replicas: Some(desired),
            ..DeploymentSpec::default()
        });
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(if rolled_out { 2 } else { 1 }),
            replicas: Some(desired),
            ready_replicas: Some(ready),
            updated_replicas: Some(desired),
            ..DeploymentStatus::default()
        });
        deployment
    }

    fn all_ready() -> Vec<Deployment> {
        ["sensors-receiver", "sensors-stats", "sensors-validate"]
            .into_iter()
            .map(|name| deployment(name, 1, 1, true))
            .collect()
    }

    fn find<'a>(status: &'a PipelineStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn healthy(pipeline: &ValidatedPipeline, deployments: &[Deployment]) -> PipelineStatus {
        healthy_status(
            pipeline,
            &DesiredReplicas::default(),
            deployments,
            None,
            "kafka:9092",
            None,
            NOW,
        )
    }

    #[test]
    fn every_stage_ready_and_rolled_out_is_ready_and_stable() {
        let status = healthy(&sample(|_| {}), &all_ready());
        assert_eq!(find(&status, READY).status, "True");
        assert_eq!(find(&status, READY).reason, "AllStagesReady");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.receivers.as_deref(), Some("1/1"));
        assert_eq!(status.bootstrap_servers.as_deref(), Some("kafka:9092"));
        assert_eq!(
            status.selector.as_deref(),
            Some(
                "app.kubernetes.io/name=ferry,app.kubernetes.io/instance=sensors,ferry.dev/stage=receiver"
            )
        );
        for condition in &status.conditions {
            assert_eq!(condition.last_transition_time.as_deref(), Some(NOW));
            assert_eq!(condition.observed_generation, Some(3));
        }
    }

    #[test]
    fn a_stage_short_of_ready_replicas_or_still_rolling_is_named() {
        let mut deployments = all_ready();
        deployments[1] = deployment("sensors-stats", 1, 0, false);
        let status = healthy(&sample(|_| {}), &deployments);
        assert_eq!(find(&status, READY).reason, "StagesNotReady");
        assert!(find(&status, READY).message.ends_with(": stats"));
        assert_eq!(find(&status, PROGRESSING).reason, "RollingOut");
        assert_eq!(find(&status, PROGRESSING).message, "rolling out: stats");

        // A Deployment the API server did not return counts as not rolled out, 0 ready.
        let status = healthy(&sample(|_| {}), &deployments[..1]);
        assert_eq!(status.stages[2].ready_replicas, 0);
        assert!(find(&status, PROGRESSING).message.contains("validate"));
    }

    #[test]
    fn a_paused_pipeline_says_so() {
        let paused = sample(|p| p.spec.paused = true);
        let status = healthy(&paused, &all_ready());
        assert_eq!(find(&status, READY).reason, "Paused");
        assert!(status.stages.iter().all(|s| s.desired_replicas == 0));
    }

    #[test]
    fn desired_replicas_come_from_the_argument_and_a_change_stamps_the_scale_time() {
        let pipeline = sample(|_| {});
        let first = healthy(&pipeline, &all_ready());
        let desired = [("receiver", 4)].into_iter().collect();
        let scaled = healthy_status(
            &pipeline,
            &desired,
            &all_ready(),
            None,
            "kafka:9092",
            Some(&first),
            "2026-01-01T00:01:00Z",
        );
        let receiver = &scaled.stages[0];
        assert_eq!(receiver.desired_replicas, 4);
        assert_eq!(
            receiver.last_scale_time.as_deref(),
            Some("2026-01-01T00:01:00Z")
        );
        assert_eq!(
            scaled.stages[1].last_scale_time, None,
            "stats did not scale"
        );
        assert_eq!(scaled.receivers.as_deref(), Some("1/4"));
        assert_eq!(find(&scaled, READY).status, "False");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let pipeline = sample(|_| {});
        let mut before = healthy(&pipeline, &all_ready());
        for condition in &mut before.conditions {
            condition.last_transition_time = Some(BEFORE.to_owned());
        }
        let mut deployments = all_ready();
        deployments[0] = deployment("sensors-receiver", 1, 0, true);
        let after = healthy_status(
            &pipeline,
            &DesiredReplicas::default(),
            &deployments,
            None,
            "kafka:9092",
            Some(&before),
            NOW,
        );
        assert_eq!(
            find(&after, READY).last_transition_time.as_deref(),
            Some(NOW)
        );
        assert_eq!(
            find(&after, DEGRADED).last_transition_time.as_deref(),
            Some(BEFORE)
        );
    }

    #[test]
    fn a_pending_kafka_topic_holds_ready() {
        let pipeline = sample(|p| {
            p.spec.kafka.create_topic = Some(serde_json::from_value(json!({})).unwrap());
            p.spec.kafka.strimzi = Some(serde_json::from_value(json!({"cluster": "k"})).unwrap());
        });
        let status = healthy(&pipeline, &all_ready());
        assert_eq!(find(&status, READY).reason, "KafkaTopicNotReady");

        let mut topic = DynamicObject::new(
            "sensors",
            &crate::controller::dereference::kafka_topic_api_resource(),
        );
        topic.data = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let status = healthy_status(
            &pipeline,
            &DesiredReplicas::default(),
            &all_ready(),
            Some(&topic),
            "kafka:9092",
            None,
            NOW,
        );
        assert_eq!(find(&status, READY).reason, "AllStagesReady");
    }

    #[test]
    fn problem_status_says_who_must_act_and_keeps_what_was_there() {
        let before = healthy(&sample(|_| {}), &all_ready());
        let user = Problem {
            reason: "InvalidSpec".to_owned(),
            message: "bad".to_owned(),
            user_error: true,
        };
        let status = problem_status(&user, Some(4), Some(&before), NOW);
        assert_eq!(find(&status, READY).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "True");
        assert_eq!(find(&status, DEGRADED).message, "bad");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(
            find(&status, PROGRESSING).message,
            "waiting for a change to the Pipeline"
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.stages, before.stages, "the stages stay as they were");

        let transient = Problem {
            user_error: false,
            reason: "ApplyFailed".to_owned(),
            ..user
        };
        let status = problem_status(&transient, Some(4), Some(&before), NOW);
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(find(&status, PROGRESSING).status, "True");
        assert_eq!(find(&status, PROGRESSING).message, "retrying");
    }

    #[test]
    fn fill_lag_sets_read_stages_and_the_receivers_lag() {
        let mut status = healthy(&sample(|_| {}), &all_ready());
        status.stages[1].lag = Some(7);
        fill_lag(&mut status, &BTreeMap::from([("receiver".to_owned(), 120)]));
        assert_eq!(status.stages[0].lag, Some(120));
        assert_eq!(status.stages[1].lag, Some(7), "unread: kept");
        assert_eq!(status.stages[2].lag, None);
        assert_eq!(status.lag, Some(120));
    }

    #[test]
    fn worker_reports_make_the_pipeline_degraded_naming_stage_partition_and_offset() {
        let pipeline = sample(|_| {});
        let mut status = healthy(&pipeline, &all_ready());
        let before = status.clone();
        fill_worker_reports(&mut status, &pipeline, &StageReports::new(), None, NOW);
        assert_eq!(status, before, "nothing reported: nothing changes");

        let reason = |reason: &str, partition: Option<i32>| PodReason {
            reason: reason.to_owned(),
            pod: "sensors-receiver-1".to_owned(),
            partition,
            offset: partition.map(|_| 41),
            message: "cannot deliver".to_owned(),
        };
        let reports = StageReports::from([
            ("validate".to_owned(), vec![reason("TopicMissing", None)]),
            (
                "receiver".to_owned(),
                vec![reason("RecordUndeliverable", Some(2))],
            ),
        ]);
        fill_worker_reports(&mut status, &pipeline, &reports, Some(&before), NOW);
        let degraded = find(&status, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(
            degraded.reason, "RecordUndeliverable",
            "the receiver comes first"
        );
        assert_eq!(
            degraded.message,
            "RecordUndeliverable: stage receiver, pod sensors-receiver-1, partition 2 offset 41: \
             cannot deliver; TopicMissing: stage validate, pod sensors-receiver-1: cannot deliver"
        );
        assert_eq!(status.conditions.len(), 3);
        assert_eq!(
            find(&status, READY).status,
            "True",
            "Ready is the Deployments' to say"
        );
    }

    #[test]
    fn strimzi_ready_needs_a_true_ready_condition() {
        assert!(strimzi_ready(
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        ));
        assert!(!strimzi_ready(
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        ));
        assert!(!strimzi_ready(&json!({"spec": {}})));
    }
}
