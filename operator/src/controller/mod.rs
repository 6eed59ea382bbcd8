//! The Pipeline controller. Reconcile is a staged pipeline whose module names are the
//! stage names: `dereference` → `validate` → `build` → `apply` → `status`. Only
//! `dereference` (reads), `apply` and `status` talk to the API server.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod status;
pub mod triggers;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::crd::Pipeline;
use crate::metrics::Metrics;
use dereference::{Bootstrap, DereferenceError};
use status::Problem;
use validate::OperatorDefaults;

/// How long a Pipeline waiting on Strimzi waits before the next look, besides the watch.
const WAITING_REQUEUE: Duration = Duration::from_secs(15);
/// A healthy Pipeline is looked at again at least this often.
const RESYNC: Duration = Duration::from_secs(300);
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Reconciles in flight at once, across all Pipelines.
const RECONCILE_CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
    #[error("invalid Pipeline: {0}")]
    Validate(#[from] validate::ValidateError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
}

impl Error {
    /// A short stable label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Dereference(DereferenceError::StrimziNotReady { .. }) => "strimzi_not_ready",
            Self::Dereference(DereferenceError::FetchKafka { .. }) => "fetch_kafka",
            Self::Validate(_) => "invalid_spec",
            Self::Build(_) => "build",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }

    /// What the Pipeline's conditions say about this error.
    pub fn problem(&self) -> Problem {
        let (reason, user_error) = match self {
            Self::Dereference(DereferenceError::StrimziNotReady { reason, .. }) => (*reason, false),
            Self::Dereference(DereferenceError::FetchKafka { .. }) => ("StrimziFetchFailed", false),
            Self::Validate(_) => ("InvalidSpec", true),
            Self::Build(_) => ("BuildFailed", true),
            Self::Apply(_) => ("ApplyFailed", false),
            Self::Status(_) => ("StatusFailed", false),
        };
        Problem {
            reason: reason.to_owned(),
            message: self.to_string(),
            user_error,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub defaults: OperatorDefaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Desired replicas and lag per stage, owned by the autoscaler, read by every reconcile.
    pub autoscaler: Arc<crate::autoscale::Autoscaler>,
    /// Consecutive failures per Pipeline, for exponential requeue.
    failures: Mutex<HashMap<ObjectRef<Pipeline>, u32>>,
    /// The children's watch caches; `run` feeds them through the writers.
    child_caches: apply::ChildCaches,
    child_writers: Mutex<Option<ChildWriters>>,
}

type ChildWriters = (
    reflector::store::Writer<Deployment>,
    reflector::store::Writer<ConfigMap>,
);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        defaults: OperatorDefaults,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Self {
        let reporter = Reporter {
            controller: apply::FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        };
        let (deployments, deployment_writer) = reflector::store();
        let (config_maps, config_map_writer) = reflector::store();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            metrics,
            autoscaler: Arc::new(crate::autoscale::Autoscaler::new()),
            failures: Mutex::new(HashMap::new()),
            child_caches: apply::ChildCaches {
                deployments,
                config_maps,
            },
            child_writers: Mutex::new(Some((deployment_writer, config_map_writer))),
        }
    }

    fn record_failure(&self, pipeline: &ObjectRef<Pipeline>) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(pipeline.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_failures(&self, pipeline: &ObjectRef<Pipeline>) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(pipeline);
    }

    async fn publish(
        &self,
        pipeline: &Pipeline,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self
            .recorder
            .publish(&event, &pipeline.object_ref(&()))
            .await
        {
            warn!(error = %err, "cannot publish event");
        }
    }
}

fn now_rfc3339() -> String {
    Timestamp::now()
        .round(jiff_second())
        .map_or_else(|_| Timestamp::now().to_string(), |t| t.to_string())
}

fn jiff_second() -> k8s_openapi::jiff::Unit {
    k8s_openapi::jiff::Unit::Second
}

#[instrument(skip_all, fields(pipeline = %pipeline.name_any(), namespace = pipeline.namespace().unwrap_or_default()))]
pub async fn reconcile(pipeline: Arc<Pipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    ctx.metrics.count_reconcile();
    let key = ObjectRef::from_obj(pipeline.as_ref());
    let result = reconcile_stages(&pipeline, &ctx).await;
    if result.is_ok() {
        ctx.clear_failures(&key);
    }
    result
}

async fn reconcile_stages(pipeline: &Pipeline, ctx: &Context) -> Result<Action, Error> {
    let dereferenced = dereference::dereference(&ctx.client, pipeline).await?;
    let Bootstrap::Resolved(bootstrap_servers) = &dereferenced.bootstrap;
    let mut validated = validate::validate(pipeline, &dereferenced, &ctx.defaults)?;
    ctx.autoscaler.sync(
        &mut validated,
        bootstrap_servers,
        pipeline.spec.kafka.tls.is_some(),
        pipeline.spec.kafka.sasl.is_some(),
        pipeline.status.as_ref(),
    );
    let children = build::build(&validated)?;
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
    let topic_pending = validated.kafka_topic.is_some()
        && !applied
            .kafka_topic
            .as_ref()
            .is_some_and(|topic| status::strimzi_ready(&topic.data));
    let mut status = status::healthy_status(
        &validated,
        &applied.deployments,
        applied.kafka_topic.as_ref(),
        bootstrap_servers,
        pipeline.status.as_ref(),
        &now_rfc3339(),
    );
    ctx.autoscaler
        .fill_status(&mut status, &validated.namespace, &validated.name);
    let first_apply = pipeline
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_none();
    let spec_changed =
        pipeline.status.as_ref().and_then(|s| s.observed_generation) != validated.generation;
    // A wakeup that changed nothing writes nothing.
    if pipeline.status.as_ref() != Some(&status) {
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
        if let Some(before) = before
            && before != stage.replicas
        {
            info!(stage = %stage.name, from = before, to = stage.replicas, "replicas changed");
        }
    }
    if topic_pending {
        // Strimzi's Topic Operator fills the KafkaTopic status on its own schedule.
        return Ok(Action::requeue(WAITING_REQUEUE));
    }
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(pipeline: Arc<Pipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_failure(error.label());
    let key = ObjectRef::from_obj(pipeline.as_ref());
    let failures = ctx.record_failure(&key);
    let problem = error.problem();
    warn!(pipeline = %key, error = %error, failures, "reconcile failed");

    // Status and the Event are written in the background: error_policy is synchronous.
    let ctx_bg = ctx.clone();
    let pipeline_bg = pipeline.clone();
    let problem_bg = problem.clone();
    tokio::spawn(async move {
        let status = status::problem_status(
            &problem_bg,
            pipeline_bg.metadata.generation,
            pipeline_bg.status.as_ref(),
            &now_rfc3339(),
        );
        let unchanged = pipeline_bg
            .status
            .as_ref()
            .is_some_and(|s| same_conditions(s, &status));
        if !unchanged {
            if let Err(err) = status::patch_status(&ctx_bg.client, &pipeline_bg, status).await {
                warn!(error = %err, "cannot record the failure in status");
            }
            ctx_bg
                .publish(
                    &pipeline_bg,
                    EventType::Warning,
                    &problem_bg.reason,
                    "Reconcile",
                    problem_bg.message.clone(),
                )
                .await;
        }
    });

    match error {
        // Nothing changes until the user edits the Pipeline; the watch brings that edit.
        Error::Validate(_) | Error::Build(_) => Action::await_change(),
        Error::Dereference(DereferenceError::StrimziNotReady { .. }) => {
            Action::requeue(WAITING_REQUEUE)
        }
        _ => Action::requeue(backoff(failures)),
    }
}

fn same_conditions(a: &crate::crd::PipelineStatus, b: &crate::crd::PipelineStatus) -> bool {
    a.observed_generation == b.observed_generation
        && a.conditions.len() == b.conditions.len()
        && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

/// Exponential requeue for transient errors: 2s, 4s, 8s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

/// Runs the controller until `shutdown` turns true. With `namespace`, it watches only that
/// namespace, which needs only namespaced RBAC.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let pipelines: Api<Pipeline> = scoped_api(&client, namespace);
    // Fail fast with a clear message when the CRD is missing.
    pipelines
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|err| anyhow::anyhow!("cannot list Pipelines (is the CRD installed? kubectl apply -f crds/pipeline.yaml): {err}"))?;

    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        build::LABEL_MANAGED_BY,
        build::MANAGED_BY
    ));
    let Some((deployment_writer, config_map_writer)) = ctx
        .child_writers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        anyhow::bail!("the controller of this context already ran");
    };
    let (store, store_writer) = reflector::store();
    let pipeline_stream = triggers::pipeline_changes(
        watcher(pipelines, watcher::Config::default())
            .default_backoff()
            .modify(triggers::slim_pipeline)
            .reflect(store_writer)
            .touched_objects(),
    );
    let mut controller = Controller::for_stream(pipeline_stream, store)
        // Bounded, so a thousand Pipelines queue up instead of flooding the API server at
        // once (unbounded, the bench saw hundreds of 504s).
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .owns_stream(triggers::child_changes(
            scoped_api::<Deployment>(&client, namespace),
            owned.clone(),
            triggers::deployment_state,
            triggers::slim_deployment,
            deployment_writer,
        ))
        .owns_stream(triggers::child_changes(
            scoped_api::<ConfigMap>(&client, namespace),
            owned,
            triggers::config_map_state,
            triggers::slim_config_map,
            config_map_writer,
        ));

    let kafka_api = |client: &Client| match namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &dereference::kafka_api_resource(),
        ),
        None => Api::<DynamicObject>::all_with(client.clone(), &dereference::kafka_api_resource()),
    };
    if strimzi_served(&kafka_api(&client)).await {
        info!("Strimzi Kafka API found: watching kafkas.kafka.strimzi.io for listener changes");
        let store = controller.store();
        let kafkas = kafka_api(&client);
        controller = controller.watches_with(
            kafkas,
            dereference::kafka_api_resource(),
            watcher::Config::default(),
            move |kafka| {
                let kafka_name = kafka.name_any();
                let kafka_namespace = kafka.namespace().unwrap_or_default();
                store
                    .state()
                    .into_iter()
                    .filter(|pipeline| {
                        pipeline.spec.kafka.strimzi.as_ref().is_some_and(|strimzi| {
                            strimzi.cluster == kafka_name
                                && dereference::strimzi_namespace(pipeline, strimzi)
                                    == kafka_namespace
                        })
                    })
                    .map(|pipeline| ObjectRef::from_obj(pipeline.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    }

    // The autoscaler asks for a reconcile when a stage's desired replicas change.
    let (scale_trigger, scale_requests) = futures::channel::mpsc::unbounded();
    tokio::spawn(crate::autoscale::run(
        ctx.clone(),
        controller.store(),
        scale_trigger,
        shutdown.clone(),
    ));
    controller
        .reconcile_on(scale_requests)
        .graceful_shutdown_on(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile round ended with an error");
            }
        })
        .await;
    Ok(())
}

async fn strimzi_served(api: &Api<DynamicObject>) -> bool {
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .is_ok()
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}

#[cfg(test)]
mod fixture_tests;
