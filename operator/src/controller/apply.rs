//! Stage 4: server-side apply of the built children under one field manager, then removal
//! of any labelled child this round no longer produced (a removed processor, say).
//!
//! A child the watch cache shows exactly as last applied is not applied again: each applied
//! object carries the hash of what was built ([`APPLIED_HASH`]), and a child nobody else has
//! written since (its `managedFields` name only this operator, bar the status) with the same
//! hash is already what the apply would make. So the wakeups that only refresh status (a
//! Deployment's ready count, the lag) cost no writes; any edit by someone else is undone.
//!
//! Nothing is applied over an object this operator did not create. Forced apply would adopt
//! it (and an owner reference would then delete it with the Pipeline), so before any apply
//! each child that exists is checked for Ferry's labels and field manager; when one lacks
//! them, the round applies nothing and names them all.

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::build::{
    API_COMPONENT, ApiChildren, Children, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY,
    LABEL_PIPELINE_NAMESPACE, MANAGED_BY, owned_children_selector,
};
use super::dereference::kafka_topic_api_resource;

pub const FIELD_MANAGER: &str = "ferry-operator";
/// The hash of the object as built, set on every applied child.
pub const APPLIED_HASH: &str = "ferry.dev/applied-hash";

/// The watch caches of the children, which let an unchanged child go unapplied.
#[derive(Clone, Debug)]
pub struct ChildCaches {
    pub deployments: Store<Deployment>,
    pub config_maps: Store<ConfigMap>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot apply {kind} {namespace}/{name}: {source}")]
    ApplyObject {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot list {kind}s owned by Pipeline {namespace}/{pipeline}: {source}")]
    ListOwned {
        kind: &'static str,
        namespace: String,
        pipeline: String,
        source: kube::Error,
    },
    #[error("cannot delete orphaned {kind} {namespace}/{name}: {source}")]
    DeleteOrphan {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot delete {kind} {namespace}/{name} (deletionPolicy: delete): {source}")]
    DeleteKafkaTopic {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot update the finalizers of Pipeline {namespace}/{name}: {source}")]
    PatchFinalizers {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot read {kind} {namespace}/{name}: {source}")]
    GetObject {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "nothing applied: {} already exist and were not created by this Pipeline (they lack the labels {LABEL_MANAGED_BY}={MANAGED_BY} and {LABEL_INSTANCE}=<pipeline>, or were never written by field manager {FIELD_MANAGER}); Ferry does not take over objects: remove or rename them, or rename the Pipeline",
        objects.join(", ")
    )]
    NotOwned { objects: Vec<String> },
}

/// What the API server returned for each applied child; status reads from these.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The `KafkaTopic` as the API server returned it, status included.
    pub kafka_topic: Option<DynamicObject>,
    /// The output `KafkaTopic`s as the API server returned them.
    pub output_topics: Vec<DynamicObject>,
    pub config_map: ConfigMap,
    pub deployments: Vec<Deployment>,
    pub api: Option<ApiChildren>,
    /// Names of children deleted because this round no longer builds them.
    pub deleted: Vec<String>,
}

pub async fn apply(
    client: &Client,
    caches: Option<&ChildCaches>,
    namespace: &str,
    pipeline: &str,
    children: Children,
    prune: bool,
) -> Result<Applied, ApplyError> {
    let Children {
        kafka_topic,
        output_topics,
        config_map,
        deployments,
        api,
    } = children;
    let topics: Vec<&DynamicObject> = kafka_topic.iter().chain(&output_topics).collect();
    let mut foreign = not_owned(
        client,
        caches,
        namespace,
        pipeline,
        &topics,
        &config_map,
        &deployments,
    )
    .await?;
    if let Some(api) = &api {
        foreign.extend(api_not_owned(client, caches, namespace, pipeline, api).await?);
    }
    if !foreign.is_empty() {
        return Err(ApplyError::NotOwned { objects: foreign });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();

    // The topic first, so workers find it. Removing createTopic later leaves the topic (and
    // its data) alone: deleting a KafkaTopic deletes the topic.
    let kafka_topic = match kafka_topic {
        Some(topic) => Some(apply_kafka_topic(client, &params, topic).await?),
        None => None,
    };
    let mut applied_output_topics = Vec::with_capacity(output_topics.len());
    for topic in output_topics {
        applied_output_topics.push(apply_kafka_topic(client, &params, topic).await?);
    }

    // The ConfigMap first: new pods must find the config their template's hash points at.
    let config_map = apply_one(
        client,
        caches.map(|c| &c.config_maps),
        namespace,
        &params,
        "ConfigMap",
        config_map,
    )
    .await?;
    let mut applied_deployments = Vec::with_capacity(deployments.len());
    for deployment in deployments {
        applied_deployments.push(
            apply_one(
                client,
                caches.map(|c| &c.deployments),
                namespace,
                &params,
                "Deployment",
                deployment,
            )
            .await?,
        );
    }

    let mut keep: BTreeSet<String> = applied_deployments
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let api = match api {
        Some(api) => {
            let applied = apply_api(client, caches, namespace, &params, api).await?;
            keep.insert(applied.deployment.name_any());
            Some(applied)
        }
        None => None,
    };

    let mut deleted = Vec::new();
    if prune {
        deleted =
            delete_orphans::<Deployment>(client, namespace, pipeline, "Deployment", keep).await?;
        deleted.extend(
            delete_orphans::<ConfigMap>(
                client,
                namespace,
                pipeline,
                "ConfigMap",
                BTreeSet::from([config_map.name_any()]),
            )
            .await?,
        );
    }
    Ok(Applied {
        kafka_topic,
        output_topics: applied_output_topics,
        config_map,
        deployments: applied_deployments,
        api,
        deleted,
    })
}

/// The API's objects in dependency order: who it runs as and what that may do, then the
/// Service, then the pods. The ServiceAccount, Role, RoleBinding and Service are in no
/// watch cache, so each round applies them (four small patches, only for a Pipeline with
/// `spec.api`); the Deployment goes through the Deployments' cache like the stages'.
async fn apply_api(
    client: &Client,
    caches: Option<&ChildCaches>,
    namespace: &str,
    params: &PatchParams,
    api: ApiChildren,
) -> Result<ApiChildren, ApplyError> {
    let ApiChildren {
        service_account,
        role,
        role_binding,
        service,
        deployment,
    } = api;
    Ok(ApiChildren {
        service_account: apply_one(
            client,
            None,
            namespace,
            params,
            "ServiceAccount",
            service_account,
        )
        .await?,
        role: apply_one(client, None, namespace, params, "Role", role).await?,
        role_binding: apply_one(client, None, namespace, params, "RoleBinding", role_binding)
            .await?,
        service: apply_one(client, None, namespace, params, "Service", service).await?,
        deployment: apply_one(
            client,
            caches.map(|c| &c.deployments),
            namespace,
            params,
            "Deployment",
            deployment,
        )
        .await?,
    })
}

/// The API's objects that exist but were not created by this Pipeline.
async fn api_not_owned(
    client: &Client,
    caches: Option<&ChildCaches>,
    namespace: &str,
    pipeline: &str,
    api: &ApiChildren,
) -> Result<Vec<String>, ApplyError> {
    let name = api.deployment.name_any();
    let (service_account, role, role_binding, service, deployment) = futures::future::try_join5(
        live_meta::<ServiceAccount>(client, None, namespace, "ServiceAccount", &name),
        live_meta::<Role>(client, None, namespace, "Role", &name),
        live_meta::<RoleBinding>(client, None, namespace, "RoleBinding", &name),
        live_meta::<Service>(client, None, namespace, "Service", &name),
        live_meta(
            client,
            caches.map(|c| &c.deployments),
            namespace,
            "Deployment",
            &name,
        ),
    )
    .await?;
    Ok([
        ("ServiceAccount", service_account),
        ("Role", role),
        ("RoleBinding", role_binding),
        ("Service", service),
        ("Deployment", deployment),
    ]
    .into_iter()
    .filter_map(|(kind, live)| {
        live.filter(|meta| !created_by(meta, namespace, pipeline))
            .map(|_| format!("{kind} {namespace}/{name}"))
    })
    .collect())
}

/// Deletes the API's companions of an API Deployment about to be pruned, before it, so a
/// failure leaves the Deployment for the next round to find. 404 counts as done.
async fn delete_api_companions(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, ApplyError> {
    let mut deleted = Vec::new();
    deleted.extend(delete_named::<Service>(client, namespace, "Service", name).await?);
    deleted.extend(delete_named::<RoleBinding>(client, namespace, "RoleBinding", name).await?);
    deleted.extend(delete_named::<Role>(client, namespace, "Role", name).await?);
    deleted
        .extend(delete_named::<ServiceAccount>(client, namespace, "ServiceAccount", name).await?);
    Ok(deleted)
}

async fn delete_named<K>(
    client: &Client,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<String>, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(Some(format!("{kind}/{name}"))),
        // Someone else removed it first: the goal is reached.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(source) => Err(ApplyError::DeleteOrphan {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

/// The children that exist but were not created by Pipeline `namespace/pipeline`, as
/// `Kind namespace/name`. A child the watch cache holds is checked there; any other is read.
async fn not_owned(
    client: &Client,
    caches: Option<&ChildCaches>,
    namespace: &str,
    pipeline: &str,
    kafka_topics: &[&DynamicObject],
    config_map: &ConfigMap,
    deployments: &[Deployment],
) -> Result<Vec<String>, ApplyError> {
    let mut foreign = Vec::new();
    for topic in kafka_topics {
        let name = topic.name_any();
        let topic_namespace = topic.namespace().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &topic_namespace,
            &kafka_topic_api_resource(),
        );
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| ApplyError::GetObject {
                kind: "KafkaTopic",
                namespace: topic_namespace.clone(),
                name: name.clone(),
                source,
            })?;
        if let Some(live) = live
            && !created_by(&live.metadata, namespace, pipeline)
        {
            foreign.push(format!("KafkaTopic {topic_namespace}/{name}"));
        }
    }
    // Read at once, not one after another: a new Pipeline's children are in no cache yet.
    let config_map_name = config_map.name_any();
    let deployment_names: Vec<String> = deployments.iter().map(ResourceExt::name_any).collect();
    let (config_map_live, deployments_live) = futures::future::try_join(
        live_meta(
            client,
            caches.map(|c| &c.config_maps),
            namespace,
            "ConfigMap",
            &config_map_name,
        ),
        futures::future::try_join_all(deployment_names.iter().map(|name| {
            live_meta(
                client,
                caches.map(|c| &c.deployments),
                namespace,
                "Deployment",
                name,
            )
        })),
    )
    .await?;
    if let Some(live) = config_map_live
        && !created_by(&live, namespace, pipeline)
    {
        foreign.push(format!("ConfigMap {namespace}/{config_map_name}"));
    }
    for (name, live) in deployment_names.iter().zip(deployments_live) {
        if let Some(live) = live
            && !created_by(&live, namespace, pipeline)
        {
            foreign.push(format!("Deployment {namespace}/{name}"));
        }
    }
    Ok(foreign)
}

/// The metadata of `name` as the watch cache holds it, or as the API server returns it when
/// the cache does not (the cache holds only objects labelled as Ferry's).
async fn live_meta<K>(
    client: &Client,
    cache: Option<&Store<K>>,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<ObjectMeta>, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    if let Some(live) = cache.and_then(|c| c.get(&ObjectRef::new(name).within(namespace))) {
        return Ok(Some(live.meta().clone()));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map(|live| live.map(|object| object.meta().clone()))
        .map_err(|source| ApplyError::GetObject {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })
}

/// Whether this operator created the object for Pipeline `namespace/pipeline`: it carries
/// Ferry's labels for that Pipeline and was written by Ferry's field manager. A `KafkaTopic`
/// in another namespace must name the Pipeline's namespace too (a same-named Pipeline of
/// another namespace may share the Kafka); one in the Pipeline's own namespace, made before
/// that label existed, needs not.
pub fn created_by(meta: &ObjectMeta, namespace: &str, pipeline: &str) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    let label = |key: &str| labels.get(key).map(String::as_str);
    let ours =
        label(LABEL_MANAGED_BY) == Some(MANAGED_BY) && label(LABEL_INSTANCE) == Some(pipeline);
    let same_pipeline_namespace = match label(LABEL_PIPELINE_NAMESPACE) {
        Some(labelled) => labelled == namespace,
        None => meta.namespace.as_deref() == Some(namespace),
    };
    let written_by_us = meta
        .managed_fields
        .iter()
        .flatten()
        .any(|entry| entry.manager.as_deref() == Some(FIELD_MANAGER));
    ours && same_pipeline_namespace && written_by_us
}

/// Deletes the `KafkaTopic` `namespace/name` if Pipeline `pipeline_namespace/pipeline` created
/// it; returns whether it deleted one. An object someone else made is left alone.
pub async fn delete_kafka_topic(
    client: &Client,
    namespace: &str,
    name: &str,
    pipeline_namespace: &str,
    pipeline: &str,
) -> Result<bool, ApplyError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kafka_topic_api_resource());
    let live = match api.get_opt(name).await {
        Ok(live) => live,
        // Strimzi's CRDs are gone: so is every KafkaTopic.
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(source) => {
            return Err(ApplyError::GetObject {
                kind: "KafkaTopic",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            });
        }
    };
    let Some(live) = live else {
        return Ok(false);
    };
    if !created_by(&live.metadata, pipeline_namespace, pipeline) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(ApplyError::DeleteKafkaTopic {
            kind: "KafkaTopic",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

async fn apply_kafka_topic(
    client: &Client,
    params: &PatchParams,
    topic: DynamicObject,
) -> Result<DynamicObject, ApplyError> {
    let name = topic.name_any();
    let namespace = topic.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &kafka_topic_api_resource());
    api.patch(&name, params, &Patch::Apply(&topic))
        .await
        .map_err(|source| ApplyError::ApplyObject {
            kind: "KafkaTopic",
            namespace,
            name,
            source,
        })
}

async fn apply_one<K>(
    client: &Client,
    cache: Option<&Store<K>>,
    namespace: &str,
    params: &PatchParams,
    kind: &'static str,
    mut object: K,
) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.name_any();
    let hash = built_hash(&object);
    if let Some(live) = cache.and_then(|c| c.get(&ObjectRef::new(&name).within(namespace)))
        && applied_as_built(live.as_ref(), &hash)
    {
        return Ok(live.as_ref().clone());
    }
    object
        .annotations_mut()
        .insert(APPLIED_HASH.to_owned(), hash);
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    // k8s-openapi types serialize their apiVersion and kind, which apply requires.
    api.patch(&name, params, &Patch::Apply(&object))
        .await
        .map_err(|source| ApplyError::ApplyObject {
            kind,
            namespace: namespace.to_owned(),
            name,
            source,
        })
}

/// The hash of an object as built: SHA-256 of its JSON (serde_json's output is stable: maps
/// are ordered). It is persisted in an annotation and compared by the next operator, maybe
/// built by another Rust release, so it can't be `DefaultHasher`, whose output may change.
fn built_hash<K: Serialize>(object: &K) -> String {
    let json = serde_json::to_vec(object).unwrap_or_default();
    format!("{:x}", Sha256::digest(&json))
}

/// Whether `live` is what applying an object built with `hash` would leave: applied with
/// that hash, and written since by no one but this operator (and status writers).
fn applied_as_built<K: Resource>(live: &K, hash: &str) -> bool {
    let meta = live.meta();
    let same_build = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH))
        .is_some_and(|h| h == hash);
    let only_ours = meta.managed_fields.as_ref().is_some_and(|entries| {
        entries.iter().all(|entry| {
            entry.subresource.as_deref() == Some("status")
                || entry.manager.as_deref() == Some(FIELD_MANAGER)
        })
    });
    same_build && only_ours && meta.deletion_timestamp.is_none()
}

async fn delete_orphans<K>(
    client: &Client,
    namespace: &str,
    pipeline: &str,
    kind: &'static str,
    keep: BTreeSet<String>,
) -> Result<Vec<String>, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let owned = api
        .list_metadata(&ListParams::default().labels(&owned_children_selector(pipeline)))
        .await
        .map_err(|source| ApplyError::ListOwned {
            kind,
            namespace: namespace.to_owned(),
            pipeline: pipeline.to_owned(),
            source,
        })?;
    let mut deleted = Vec::new();
    for object in owned.items {
        let name = object.name_any();
        if keep.contains(&name) {
            continue;
        }
        if object.labels().get(LABEL_COMPONENT).map(String::as_str) == Some(API_COMPONENT) {
            deleted.extend(delete_api_companions(client, namespace, &name).await?);
        }
        deleted.extend(delete_named::<K>(client, namespace, kind, &name).await?);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn live(hash: &str, managers: &[(&str, Option<&str>)]) -> ConfigMap {
        let mut config_map = ConfigMap::default();
        config_map.metadata.annotations = Some([(APPLIED_HASH.to_owned(), hash.to_owned())].into());
        config_map.metadata.managed_fields = Some(
            managers
                .iter()
                .map(|(manager, subresource)| ManagedFieldsEntry {
                    manager: Some((*manager).to_owned()),
                    subresource: subresource.map(str::to_owned),
                    ..ManagedFieldsEntry::default()
                })
                .collect(),
        );
        config_map
    }

    #[test]
    fn an_unchanged_child_needs_no_apply() {
        let ours = [(FIELD_MANAGER, None)];
        assert!(applied_as_built(&live("h1", &ours), "h1"));
        // Built differently now.
        assert!(!applied_as_built(&live("h1", &ours), "h2"));
        // Status writers do not count as drift.
        assert!(applied_as_built(
            &live(
                "h1",
                &[
                    (FIELD_MANAGER, None),
                    ("kube-controller-manager", Some("status"))
                ]
            ),
            "h1"
        ));
        // Someone else edited it (kubectl edit; kubectl scale writes through /scale).
        assert!(!applied_as_built(
            &live("h1", &[(FIELD_MANAGER, None), ("kubectl-edit", None)]),
            "h1"
        ));
        assert!(!applied_as_built(
            &live("h1", &[(FIELD_MANAGER, None), ("kubectl", Some("scale"))]),
            "h1"
        ));
        // Never applied by us, or being deleted.
        assert!(!applied_as_built(&ConfigMap::default(), "h1"));
        let mut deleting = live("h1", &ours);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!applied_as_built(&deleting, "h1"));
    }

    fn meta(namespace: &str, labels: &[(&str, &str)], manager: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some(manager.to_owned()),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_what_this_pipeline_created_is_its_own() {
        let ours = [(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_INSTANCE, "orders")];
        assert!(created_by(
            &meta("apps", &ours, FIELD_MANAGER),
            "apps",
            "orders"
        ));
        // Someone else's object, or ours for another Pipeline.
        assert!(!created_by(
            &meta("apps", &[], "kubectl-create"),
            "apps",
            "orders"
        ));
        assert!(!created_by(
            &meta("apps", &ours, FIELD_MANAGER),
            "apps",
            "billing"
        ));
        // Ferry's labels, but never written by the operator.
        assert!(!created_by(
            &meta("apps", &ours, "kubectl-edit"),
            "apps",
            "orders"
        ));
        // A KafkaTopic beside the Kafka: the labelled Pipeline namespace decides.
        let topic = [
            (LABEL_MANAGED_BY, MANAGED_BY),
            (LABEL_INSTANCE, "orders"),
            (LABEL_PIPELINE_NAMESPACE, "apps"),
        ];
        assert!(created_by(
            &meta("kafka", &topic, FIELD_MANAGER),
            "apps",
            "orders"
        ));
        assert!(!created_by(
            &meta("kafka", &topic, FIELD_MANAGER),
            "shop",
            "orders"
        ));
        // Without that label, only an object in the Pipeline's own namespace is its own.
        assert!(!created_by(
            &meta("kafka", &ours, FIELD_MANAGER),
            "apps",
            "orders"
        ));
    }

    #[test]
    fn the_build_hash_follows_the_object() {
        let mut a = ConfigMap::default();
        a.metadata.name = Some("x".into());
        let b = a.clone();
        assert_eq!(built_hash(&a), built_hash(&b));
        a.data = Some([("k".to_owned(), "v".to_owned())].into());
        assert_ne!(built_hash(&a), built_hash(&b));
    }

    /// Pinned: an operator upgrade must not see every child as changed.
    #[test]
    fn the_build_hash_is_sha256_of_the_json() {
        let mut config_map = ConfigMap::default();
        config_map.metadata.name = Some("x".into());
        assert_eq!(
            serde_json::to_string(&config_map).unwrap(),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#
        );
        assert_eq!(
            built_hash(&config_map),
            "ee2607eb175b8b6e2a3f1b71a1c41b85e1e623229bc678d980017dd7389bff6a"
        );
    }
}
