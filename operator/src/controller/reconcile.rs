//! One reconcile of one Pipeline through the stages, and what follows a failed one.
//!
//! Status has one writer, the `status` stage, and it is called only from inside a reconcile,
//! never from a detached task. The controller runs one reconcile of a Pipeline at a time, so
//! the status of a failed round is written before the next round starts, and that round's
//! status lands after it: a stale `Degraded=True` can't overwrite a newer success.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, instrument, warn};

use super::context::Context;
use super::dereference::{self, Bootstrap};
use super::error::{Error, Recovery};
use super::validate::ValidatedPipeline;
use super::{apply, build, status, topics, validate};
use crate::autoscale::StageTarget;
use crate::crd::{DeletionPolicy, Pipeline, PipelineStatus};
use crate::lag::{ClusterConfig, LagQuery};
use crate::scaling::ScalingPolicy;

/// How long a Pipeline waiting on Strimzi waits before the next look, besides the watch.
pub const WAITING_REQUEUE: Duration = Duration::from_secs(15);
/// How soon a Pipeline with a stage waiting for its input topic looks again.
pub const INPUT_WAIT_REQUEUE: Duration = Duration::from_secs(5);
/// A healthy Pipeline is looked at again at least this often.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Held by a Pipeline with `deletionPolicy: delete` and `createTopic`, so that deleting it
/// waits until the operator deleted the `KafkaTopic` it created.
pub const TOPIC_FINALIZER: &str = "ferry.dev/delete-kafka-topic";

#[instrument(skip_all, fields(pipeline = %pipeline.name_any(), namespace = pipeline.namespace().unwrap_or_default()))]
pub async fn reconcile(pipeline: Arc<Pipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    ctx.metrics.count_reconcile();
    let key = ObjectRef::from_obj(pipeline.as_ref());
    // The cached status may not show the last round's write yet; when that round failed,
    // the cache can't tell whether the status already says so.
    let last_round_failed = ctx.failures(&key) > 0;
    match reconcile_stages(&pipeline, &ctx, last_round_failed).await {
        Ok(action) => {
            ctx.clear_failures(&key);
            Ok(action)
        }
        Err(error) => {
            let failures = ctx.record_failure(&key);
            warn!(pipeline = %key, error = %error, failures, "reconcile failed");
            record_problem(&pipeline, &error, &ctx, !last_round_failed).await;
            Err(error)
        }
    }
}

async fn reconcile_stages(
    pipeline: &Pipeline,
    ctx: &Context,
    last_round_failed: bool,
) -> Result<Action, Error> {
    if pipeline.metadata.deletion_timestamp.is_some() {
        return finalize(pipeline, ctx).await;
    }
    // Before anything is created: a topic made without the finalizer in place could
    // outlive a `deletionPolicy: delete` Pipeline.
    sync_finalizer(pipeline, ctx).await?;
    let dereferenced = dereference::dereference(&ctx.client, pipeline).await?;
    let Bootstrap::Resolved(bootstrap_servers) = &dereferenced.bootstrap;
    let mut validated = validate::validate(pipeline, &dereferenced, &ctx.defaults)?;
    let recorded = ctx.created_topics.recorded(pipeline);
    let topics_outcome = topics::reconcile_topics(
        ctx.topic_admin.clone(),
        &topics::plan(pipeline, &validated),
        &topics::kafka_access(pipeline, bootstrap_servers),
        &recorded,
        &now_rfc3339(),
    )
    .await;
    ctx.created_topics.remember(pipeline, &topics_outcome);
    validated.output_topics = topics_outcome.kafka_topics.clone();
    let desired = ctx.autoscaler.register(
        &validated.namespace,
        &validated.name,
        scale_targets(pipeline, &validated, bootstrap_servers),
    );
    let children = build::build(&validated, &desired)?;
    let previous_replicas = pipeline
        .status
        .as_ref()
        .map(|s| s.stages.clone())
        .unwrap_or_default();
    // Children are orphaned only by a spec change, so a Pipeline whose last round applied
    // this generation cleanly skips the two list calls.
    let prune = match &pipeline.status {
        Some(status) => {
            status.observed_generation != validated.generation
                || last_round_failed
                || status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == status::DEGRADED && c.status == "True")
        }
        // Never reconciled at its first generation: every child ever built came from this
        // very spec, so none can be orphaned; skipping the two lists spares the API server
        // 2 requests per new Pipeline.
        None => validated.generation != Some(1),
    };
    let applied = apply::apply(
        &ctx.client,
        Some(&ctx.child_caches),
        &validated.namespace,
        &validated.name,
        children,
        prune,
    )
    .await?;
    for (topic_namespace, topic) in &topics_outcome.kafka_topics_to_delete {
        apply::delete_kafka_topic(
            &ctx.client,
            topic_namespace,
            topic,
            &validated.namespace,
            &validated.name,
        )
        .await?;
    }
    let topic_pending = validated.kafka_topic.is_some()
        && !applied
            .kafka_topic
            .as_ref()
            .is_some_and(|topic| status::strimzi_ready(&topic.data));
    let mut status = status::healthy_status(
        &validated,
        &desired,
        &applied.deployments,
        applied.kafka_topic.as_ref(),
        bootstrap_servers,
        pipeline.status.as_ref(),
        &now_rfc3339(),
    );
    status::fill_lag(
        &mut status,
        &ctx.autoscaler.lags(&validated.namespace, &validated.name),
    );
    status::fill_topics(
        &mut status,
        &validated,
        &topics_outcome,
        pipeline.status.as_ref(),
        &now_rfc3339(),
    );
    status::fill_worker_reports(
        &mut status,
        &validated,
        &ctx.worker_reports.of(&validated.namespace, &validated.name),
        pipeline.status.as_ref(),
        &now_rfc3339(),
    );
    let first_apply = pipeline
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_none();
    let spec_changed =
        pipeline.status.as_ref().and_then(|s| s.observed_generation) != validated.generation;
    // A wakeup that changed nothing writes nothing; after a failed round the status on the
    // server says Degraded, whatever the cache shows, so it is written.
    if last_round_failed || pipeline.status.as_ref() != Some(&status) {
        status::patch_status(&ctx.client, pipeline, status).await?;
    }

    if first_apply {
        ctx.publish(
            pipeline,
            EventType::Normal,
            "Created",
            "Reconcile",
            format!(
                "created {} Deployment(s) and ConfigMap {}",
                validated.stages.len(),
                validated.config_map_name
            ),
        )
        .await;
    } else if spec_changed {
        ctx.publish(
            pipeline,
            EventType::Normal,
            "Updated",
            "Reconcile",
            format!(
                "applied generation {}",
                validated.generation.unwrap_or_default()
            ),
        )
        .await;
    }
    if !applied.deleted.is_empty() {
        ctx.publish(
            pipeline,
            EventType::Normal,
            "Deleted",
            "Reconcile",
            format!("removed {}", applied.deleted.join(", ")),
        )
        .await;
    }
    for stage in &validated.stages {
        let before = previous_replicas
            .iter()
            .find(|s| s.name == stage.name)
            .map(|s| s.desired_replicas);
        let now = stage.replicas_with(&desired);
        if let Some(before) = before
            && before != now
        {
            info!(stage = %stage.name, from = before, to = now, "replicas changed");
        }
    }
    publish_topic_events(pipeline, &topics_outcome, ctx).await;
    if !topics_outcome.missing_inputs.is_empty() {
        // Nothing in Kubernetes changes when a topic appears: look again soon.
        return Ok(Action::requeue(INPUT_WAIT_REQUEUE));
    }
    if topic_pending || !topics_outcome.failures.is_empty() {
        // Strimzi's Topic Operator fills the KafkaTopic status on its own schedule; a
        // failed admin call is tried again, its condition and Event saying why meanwhile.
        return Ok(Action::requeue(WAITING_REQUEUE));
    }
    Ok(Action::requeue(RESYNC))
}

/// Events for what the `topics` stage did, and for each new reason to wait or fail (not
/// again while the status already says the same).
async fn publish_topic_events(pipeline: &Pipeline, outcome: &topics::TopicsOutcome, ctx: &Context) {
    for entry in outcome.newly_created_entries() {
        let via = match &entry.kafka_topic {
            Some(kafka_topic) => format!("as KafkaTopic {kafka_topic}"),
            None => "through the Kafka admin API".to_owned(),
        };
        ctx.publish(
            pipeline,
            EventType::Normal,
            "TopicCreated",
            "Topics",
            format!(
                "created topic {} (output of stage {}) with {} partitions {via}",
                entry.topic, entry.stage, entry.partitions
            ),
        )
        .await;
    }
    if !outcome.deleted.is_empty() {
        ctx.publish(
            pipeline,
            EventType::Normal,
            "TopicDeleted",
            "Topics",
            format!(
                "deleted topic(s) {} Ferry created for stages that are gone (deletionPolicy: delete)",
                outcome.deleted.join(", ")
            ),
        )
        .await;
    }
    let said = |reason: &str, message: &str| {
        pipeline.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == reason && c.message == message)
        })
    };
    let mut warnings = Vec::new();
    if !outcome.missing_inputs.is_empty() {
        warnings.push((
            status::INPUT_TOPIC_MISSING,
            status::missing_inputs_message(&outcome.missing_inputs),
        ));
    }
    if !outcome.failures.is_empty() {
        warnings.push((status::TOPIC_ADMIN_FAILED, outcome.failures.join("; ")));
    }
    if let Some(unsupported) = &outcome.unsupported {
        warnings.push((status::TOPICS_NOT_MANAGED, unsupported.clone()));
    }
    for (reason, message) in warnings {
        if !said(reason, &message) {
            ctx.publish(pipeline, EventType::Warning, reason, "Topics", message)
                .await;
        }
    }
}

fn holds_finalizer(pipeline: &Pipeline) -> bool {
    pipeline.finalizers().iter().any(|f| f == TOPIC_FINALIZER)
}

/// Adds the topic finalizer when the Pipeline's deletion must delete its topic, and removes
/// it when no longer (the policy went back to `retain`, or `createTopic` was removed).
async fn sync_finalizer(pipeline: &Pipeline, ctx: &Context) -> Result<(), Error> {
    let wanted = validate::deletes_topic(pipeline);
    if wanted == holds_finalizer(pipeline) {
        return Ok(());
    }
    let mut finalizers = pipeline.finalizers().to_vec();
    if wanted {
        finalizers.push(TOPIC_FINALIZER.to_owned());
    } else {
        finalizers.retain(|f| f != TOPIC_FINALIZER);
    }
    patch_finalizers(ctx, pipeline, finalizers).await
}

/// A Pipeline being deleted: with `deletionPolicy: delete`, deletes the `KafkaTopic` it
/// created (never one someone else made), then lets the deletion finish. The garbage
/// collector removes the owned ConfigMap and Deployments.
async fn finalize(pipeline: &Pipeline, ctx: &Context) -> Result<Action, Error> {
    if !holds_finalizer(pipeline) {
        return Ok(Action::await_change());
    }
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    if validate::deletes_topic(pipeline)
        && let Some((topic_namespace, topic)) = validate::kafka_topic_location(pipeline)
    {
        let deleted =
            apply::delete_kafka_topic(&ctx.client, &topic_namespace, &topic, &namespace, &name)
                .await?;
        if deleted {
            info!(pipeline = %name, kafka_topic = %format!("{topic_namespace}/{topic}"), "deleted the KafkaTopic (deletionPolicy: delete)");
            ctx.publish(
                pipeline,
                EventType::Normal,
                "Deleted",
                "Finalize",
                format!("removed KafkaTopic {topic_namespace}/{topic} (deletionPolicy: delete)"),
            )
            .await;
        }
    }
    if pipeline.spec.deletion_policy == DeletionPolicy::Delete {
        delete_created_topics(pipeline, ctx).await?;
    }
    let finalizers = pipeline
        .finalizers()
        .iter()
        .filter(|f| *f != TOPIC_FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, pipeline, finalizers).await?;
    ctx.created_topics.forget(pipeline);
    Ok(Action::await_change())
}

/// Deletes the output topics Ferry created (what the status records, and what it may not show
/// yet): each `KafkaTopic` through the API server, the others through the Kafka admin API.
async fn delete_created_topics(pipeline: &Pipeline, ctx: &Context) -> Result<(), Error> {
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    let recorded = ctx.created_topics.recorded(pipeline);
    let mut deleted = Vec::new();
    for entry in &recorded {
        if let Some((topic_namespace, topic)) =
            entry.kafka_topic.as_deref().and_then(|k| k.split_once('/'))
            && apply::delete_kafka_topic(&ctx.client, topic_namespace, topic, &namespace, &name)
                .await?
        {
            deleted.push(format!("KafkaTopic {topic_namespace}/{topic}"));
        }
    }
    if let Some(bootstrap) = &pipeline.spec.kafka.bootstrap_servers {
        let access = topics::kafka_access(pipeline, bootstrap);
        for topic in topics::delete_created(ctx.topic_admin.clone(), &access, &recorded).await? {
            deleted.push(format!("topic {topic}"));
        }
    }
    if !deleted.is_empty() {
        info!(pipeline = %name, deleted = %deleted.join(", "), "deleted the topics Ferry created (deletionPolicy: delete)");
        ctx.publish(
            pipeline,
            EventType::Normal,
            "Deleted",
            "Finalize",
            format!("removed {} (deletionPolicy: delete)", deleted.join(", ")),
        )
        .await;
    }
    Ok(())
}

/// Replaces the Pipeline's finalizers, at the resourceVersion read: a concurrent change to
/// them fails the patch (409) and the round is retried, rather than one of them lost.
async fn patch_finalizers(
    ctx: &Context,
    pipeline: &Pipeline,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().unwrap_or_default();
    let api: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": pipeline.resource_version(),
        }
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing holds it any more.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(apply::ApplyError::PatchFinalizers {
            namespace,
            name,
            source,
        }
        .into()),
    }
}

/// What the autoscaler should poll for each stage, and how it scales. The lag reader gets
/// TLS from the spec; SASL credentials live in a Secret the operator does not read.
fn scale_targets(
    pipeline: &Pipeline,
    validated: &ValidatedPipeline,
    bootstrap_servers: &str,
) -> Vec<StageTarget> {
    let mut cluster = ClusterConfig::plaintext(bootstrap_servers);
    if pipeline.spec.kafka.tls.is_some() {
        cluster
            .properties
            .insert("security.protocol".into(), "ssl".into());
    }
    let unsupported = pipeline
        .spec
        .kafka
        .sasl
        .is_some()
        .then_some("SASL credentials are not available to the operator");
    let recorded = |stage: &str| {
        pipeline
            .status
            .as_ref()
            .and_then(|s| s.stages.iter().find(|s| s.name == stage))
    };
    validated
        .stages
        .iter()
        .map(|stage| StageTarget {
            stage: stage.name.clone(),
            cluster: cluster.clone(),
            query: LagQuery {
                topic: stage.worker_config.kafka.topic.clone(),
                group: stage.worker_config.kafka.consumer_group.clone(),
                offset_reset: stage.worker_config.kafka.auto_offset_reset,
            },
            policy: ScalingPolicy::from_spec(&stage.scaling),
            poll_interval: stage.scaling.poll_interval.as_duration(),
            paused: validated.paused,
            unsupported,
            replicas: stage.replicas,
            recorded_replicas: recorded(&stage.name).map(|s| s.desired_replicas),
            recorded_lag: recorded(&stage.name).and_then(|s| s.lag),
        })
        .collect()
}

/// Writes why the round failed into the status, through the status stage, and a Warning
/// Event. `after_success` forces the write: the cache may still show an older failure with
/// the same conditions, while the server already holds the success that followed it.
async fn record_problem(pipeline: &Pipeline, error: &Error, ctx: &Context, after_success: bool) {
    let problem = error.problem();
    let status = status::problem_status(
        &problem,
        pipeline.metadata.generation,
        pipeline.status.as_ref(),
        &now_rfc3339(),
    );
    let unchanged = !after_success
        && pipeline
            .status
            .as_ref()
            .is_some_and(|s| same_conditions(s, &status));
    if unchanged {
        return;
    }
    if let Err(err) = status::patch_status(&ctx.client, pipeline, status).await {
        warn!(error = %err, "cannot record the failure in status");
    }
    ctx.publish(
        pipeline,
        EventType::Warning,
        &problem.reason,
        "Reconcile",
        problem.message,
    )
    .await;
}

/// What follows a failed reconcile; the reconcile itself already wrote the status.
pub fn error_policy(pipeline: Arc<Pipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_failure(error.label());
    match error.recovery() {
        Recovery::AwaitChange => Action::await_change(),
        Recovery::WaitForStrimzi => Action::requeue(WAITING_REQUEUE),
        Recovery::Retry => {
            let failures = ctx.failures(&ObjectRef::from_obj(pipeline.as_ref()));
            Action::requeue(crate::retry::delay(failures))
        }
    }
}

fn same_conditions(a: &PipelineStatus, b: &PipelineStatus) -> bool {
    a.observed_generation == b.observed_generation
        && a.conditions.len() == b.conditions.len()
        && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

fn now_rfc3339() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| Timestamp::now().to_string(), |t| t.to_string())
}
