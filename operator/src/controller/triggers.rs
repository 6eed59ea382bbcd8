//! What wakes the reconciler: the Pipelines' spec changes, and the changes to their children
//! that the reconcile would act on.
//!
//! Each wakeup costs a reconcile, and unfiltered a new Pipeline woke it four or five times:
//! its own status write, the child creations, and each Deployment status update by the
//! controller-manager. Filtered, 1000 new Pipelines took about two reconciles each
//! (bench/README.md, "The operator at scale").

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, predicates, reflector};
use kube::{Api, Resource};

use crate::crd::Pipeline;

/// Pipelines whose generation changed: spec edits and new Pipelines, not status writes
/// (the reconciler's own included) nor metadata churn.
pub fn pipeline_changes(
    stream: impl Stream<Item = Result<Pipeline, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Pipeline, watcher::Error>> + Send + 'static {
    stream.predicate_filter(predicates::generation, Default::default())
}

/// Children whose relevant state changed (see [`deployment_state`], [`config_map_state`]),
/// and every deletion, so a deleted child is recreated at once. Every event also updates
/// the children's cache through `cache`.
pub fn child_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    state: fn(&K) -> u64,
    slim: fn(&mut K),
    cache: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let mut filter = ChangeFilter::new(state);
    watcher::watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(cache)
        .filter_map(move |event| futures::future::ready(filter.pass(event)))
}

/// Remembers each child's last relevant state by UID.
struct ChangeFilter<K> {
    state: fn(&K) -> u64,
    seen: HashMap<String, u64>,
}

impl<K: Resource> ChangeFilter<K> {
    fn new(state: fn(&K) -> u64) -> Self {
        Self {
            state,
            seen: HashMap::new(),
        }
    }

    fn pass(
        &mut self,
        event: Result<Event<K>, watcher::Error>,
    ) -> Option<Result<K, watcher::Error>> {
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                let uid = object.meta().uid.clone().unwrap_or_default();
                let state = (self.state)(&object);
                (self.seen.insert(uid, state) != Some(state)).then_some(Ok(object))
            }
            Ok(Event::Delete(object)) => {
                if let Some(uid) = &object.meta().uid {
                    self.seen.remove(uid);
                }
                Some(Ok(object))
            }
            Ok(Event::Init | Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        }
    }
}

/// What of a Deployment the reconcile reads: its spec's generation (someone else's edit is
/// drift to undo) and the replica counts status reports.
pub fn deployment_state(deployment: &Deployment) -> u64 {
    let status = deployment.status.as_ref();
    hash_of(&(
        deployment.metadata.generation,
        status.and_then(|s| s.observed_generation),
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.ready_replicas),
        status.and_then(|s| s.updated_replicas),
        status.and_then(|s| s.available_replicas),
    ))
}

/// A ConfigMap's content: an edit by someone else is drift to undo.
pub fn config_map_state(config_map: &ConfigMap) -> u64 {
    hash_of(&(
        &config_map.data,
        &config_map
            .binary_data
            .as_ref()
            .map(|d| d.keys().collect::<Vec<_>>()),
    ))
}

/// What the cache keeps of a Deployment: no pod template (the reconcile builds its own and
/// compares hashes), and of `managedFields` only who wrote (see [`slim_managed_fields`]).
pub fn slim_deployment(deployment: &mut Deployment) {
    if let Some(spec) = &mut deployment.spec {
        spec.template = Default::default();
    }
    slim_managed_fields(&mut deployment.metadata);
}

pub fn slim_config_map(config_map: &mut ConfigMap) {
    slim_managed_fields(&mut config_map.metadata);
}

/// Drops each `managedFields` entry's field set, keeping its manager and subresource: all
/// the unchanged-child check reads.
pub fn slim_managed_fields(meta: &mut ObjectMeta) {
    for entry in meta.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
}

/// The Pipeline cache needs no `managedFields` at all.
pub fn slim_pipeline(pipeline: &mut Pipeline) {
    pipeline.metadata.managed_fields = None;
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use kube::api::ObjectMeta;

    fn deployment(generation: i64, ready: Option<i32>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("orders-receiver".into()),
                uid: Some("u1".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                ready_replicas: ready,
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn only_relevant_changes_and_deletions_pass() {
        let mut filter = ChangeFilter::new(deployment_state);
        let passes =
            |filter: &mut ChangeFilter<Deployment>, event| filter.pass(Ok(event)).is_some();
        assert!(passes(&mut filter, Event::InitApply(deployment(1, None))));
        assert!(!passes(&mut filter, Event::Apply(deployment(1, None))));
        // A condition or annotation change alone does not matter here.
        let mut annotated = deployment(1, None);
        annotated.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(!passes(&mut filter, Event::Apply(annotated)));
        assert!(passes(&mut filter, Event::Apply(deployment(1, Some(1)))));
        assert!(passes(&mut filter, Event::Apply(deployment(2, Some(1)))));
        assert!(passes(&mut filter, Event::Delete(deployment(2, Some(1)))));
        // Recreated with the same state: seen as new.
        assert!(passes(&mut filter, Event::Apply(deployment(2, Some(1)))));
        assert!(!passes(&mut filter, Event::Init));
        assert!(!passes(&mut filter, Event::InitDone));
    }

    #[test]
    fn config_map_state_follows_its_data() {
        let mut config_map = ConfigMap {
            data: Some([("worker.yaml".to_owned(), "a: 1".to_owned())].into()),
            ..ConfigMap::default()
        };
        let before = config_map_state(&config_map);
        config_map.metadata.resource_version = Some("42".into());
        assert_eq!(config_map_state(&config_map), before);
        config_map.data = Some([("worker.yaml".to_owned(), "a: 2".to_owned())].into());
        assert_ne!(config_map_state(&config_map), before);
    }
}
