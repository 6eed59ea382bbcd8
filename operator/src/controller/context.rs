//! What every reconcile shares: the client, the operator's defaults, metrics, the Event
//! recorder, the autoscaler's published state and the children's watch caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::{ObjectRef, Store};

use super::apply;
use super::topics::CreatedTopicsMemo;
use super::validate::OperatorDefaults;
use crate::autoscale::{Autoscaler, Peer};
use crate::crd::Pipeline;
use crate::metrics::Metrics;
use crate::topics::{KafkaTopicAdmin, TopicAdmin};
use crate::worker_status::{self, WorkerReports};

pub(super) type ChildWriters = (
    reflector::store::Writer<Deployment>,
    reflector::store::Writer<ConfigMap>,
);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub defaults: OperatorDefaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Desired replicas and lag per stage, owned by the autoscaler, read by every reconcile.
    pub autoscaler: Arc<Autoscaler>,
    /// What each Pipeline's worker pods report on `/status`, owned by the status reader.
    pub worker_reports: Arc<WorkerReports>,
    /// The Kafka admin API, for the topics between chained stages.
    pub topic_admin: Arc<dyn TopicAdmin>,
    /// The topics rounds created that the cached status may not show yet.
    pub(super) created_topics: CreatedTopicsMemo,
    /// Consecutive failed reconciles per Pipeline: the backoff, and whether the last round
    /// failed (its status then differs from what a success writes, whatever the cache says).
    failures: Mutex<HashMap<ObjectRef<Pipeline>, u32>>,
    /// The children's watch caches; `run` feeds them through the writers.
    pub(super) child_caches: apply::ChildCaches,
    pub(super) child_writers: Mutex<Option<ChildWriters>>,
    /// The Pipelines' watch cache, which `run` feeds and the autoscaler reads too.
    pipelines: Store<Pipeline>,
    pub(super) pipeline_writer: Mutex<Option<reflector::store::Writer<Pipeline>>>,
}

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
        let (pipelines, pipeline_writer) = reflector::store();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            metrics,
            autoscaler: Arc::new(Autoscaler::new()),
            worker_reports: Arc::new(WorkerReports::default()),
            topic_admin: Arc::new(KafkaTopicAdmin::default()),
            created_topics: CreatedTopicsMemo::default(),
            failures: Mutex::new(HashMap::new()),
            child_caches: apply::ChildCaches {
                deployments,
                config_maps,
            },
            child_writers: Mutex::new(Some((deployment_writer, config_map_writer))),
            pipelines,
            pipeline_writer: Mutex::new(Some(pipeline_writer)),
        }
    }

    /// The same with another topic admin (the unit tests' in-process fake).
    pub fn with_topic_admin(mut self, admin: Arc<dyn TopicAdmin>) -> Self {
        self.topic_admin = admin;
        self
    }

    /// The Pipelines as the controller's watch sees them.
    pub fn pipelines(&self) -> Store<Pipeline> {
        self.pipelines.clone()
    }

    /// What the autoscaler runs with, beside the controller: the state both share, the
    /// metrics and the Event recorder.
    pub fn autoscaler_peer(&self) -> Peer {
        Peer {
            autoscaler: self.autoscaler.clone(),
            metrics: self.metrics.clone(),
            recorder: self.recorder.clone(),
        }
    }

    /// What the worker status reader runs with: the reports it keeps and the Event recorder.
    pub fn worker_status_peer(&self, namespace: Option<&str>) -> worker_status::Peer {
        worker_status::Peer {
            client: self.client.clone(),
            namespace: namespace.map(str::to_owned),
            reports: self.worker_reports.clone(),
            recorder: self.recorder.clone(),
        }
    }

    /// Counts one more failed reconcile of `pipeline`; returns the count.
    pub(super) fn record_failure(&self, pipeline: &ObjectRef<Pipeline>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(pipeline.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Consecutive failed reconciles of `pipeline`, 0 after a success.
    pub(super) fn failures(&self, pipeline: &ObjectRef<Pipeline>) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pipeline)
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn clear_failures(&self, pipeline: &ObjectRef<Pipeline>) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pipeline);
    }

    /// Publishes an Event about `pipeline`; a failure to publish is logged, never fatal.
    pub(super) async fn publish(
        &self,
        pipeline: &Pipeline,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        crate::events::publish(&self.recorder, pipeline, type_, reason, action, note).await;
    }
}
