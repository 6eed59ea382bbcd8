//! Runs the controller: the Pipeline watch, the children's watches feeding their caches and
//! the Strimzi `Kafka` watch when that API is served. The autoscaler runs beside it, not
//! inside: its reconcile requests come in as a stream.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::context::Context;
use super::reconcile::{error_policy, reconcile};
use super::{build, dereference, triggers};
use crate::crd::Pipeline;

/// Reconciles in flight at once, across all Pipelines.
const RECONCILE_CONCURRENCY: u16 = 16;

/// Runs the controller until `shutdown` is cancelled. With `namespace`, it watches only that
/// namespace, which needs only namespaced RBAC. `scale_requests` are Pipelines the
/// autoscaler wants reconciled because a stage's desired replicas changed.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: CancellationToken,
    scale_requests: impl Stream<Item = ObjectRef<Pipeline>> + Send + 'static,
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
    let (deployment_writer, config_map_writer) = take_once(&ctx.child_writers)?;
    let store_writer = take_once(&ctx.pipeline_writer)?;
    let store = ctx.pipelines();
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

    controller
        .reconcile_on(scale_requests)
        .graceful_shutdown_on(shutdown.cancelled_owned())
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

/// A writer the context hands out once: the controller owns it from then on.
fn take_once<T>(slot: &std::sync::Mutex<Option<T>>) -> anyhow::Result<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| anyhow::anyhow!("the controller of this context already ran"))
}
