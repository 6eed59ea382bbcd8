//! Stage 4: server-side apply of the built children under one field manager, then removal
//! of any labelled child this round no longer produced (a removed processor, say).

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::{Children, owned_children_selector};
use super::dereference::kafka_topic_api_resource;

pub const FIELD_MANAGER: &str = "ferry-operator";

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
}

/// What the API server returned for each applied child; status reads from these.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The `KafkaTopic` as the API server returned it, status included.
    pub kafka_topic: Option<DynamicObject>,
    pub config_map: ConfigMap,
    pub deployments: Vec<Deployment>,
    /// Names of children deleted because this round no longer builds them.
    pub deleted: Vec<String>,
}

pub async fn apply(
    client: &Client,
    namespace: &str,
    pipeline: &str,
    children: Children,
    prune: bool,
) -> Result<Applied, ApplyError> {
    let Children {
        kafka_topic,
        config_map,
        deployments,
    } = children;
    let params = PatchParams::apply(FIELD_MANAGER).force();

    // The topic first, so workers find it. Removing createTopic later leaves the topic (and
    // its data) alone: deleting a KafkaTopic deletes the topic.
    let kafka_topic = match kafka_topic {
        Some(topic) => Some(apply_kafka_topic(client, &params, topic).await?),
        None => None,
    };

    // The ConfigMap first: new pods must find the config their template's hash points at.
    let config_map = apply_one(client, namespace, &params, "ConfigMap", config_map).await?;
    let mut applied_deployments = Vec::with_capacity(deployments.len());
    for deployment in deployments {
        applied_deployments
            .push(apply_one(client, namespace, &params, "Deployment", deployment).await?);
    }

    let mut deleted = Vec::new();
    if prune {
        deleted = delete_orphans::<Deployment>(
            client,
            namespace,
            pipeline,
            "Deployment",
            applied_deployments
                .iter()
                .map(ResourceExt::name_any)
                .collect(),
        )
        .await?;
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
        config_map,
        deployments: applied_deployments,
        deleted,
    })
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
    namespace: &str,
    params: &PatchParams,
    kind: &'static str,
    object: K,
) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.name_any();
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
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{kind}/{name}")),
            // Someone else removed it first: the goal is reached.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ApplyError::DeleteOrphan {
                    kind,
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}
