//! Stage 3: pure functions from a `ValidatedPipeline` to the Kubernetes objects it needs.
//! Nothing here talks to the API server, so every object can be asserted on in unit tests.

use std::collections::BTreeMap;

use ferry_config::config::{
    API_COMMAND, DEFAULT_HTTP_PORT, KAFKA_SASL_PASSWORD_ENV, REDIS_PASSWORD_ENV,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use sha2::{Digest, Sha256};

use super::dereference::kafka_topic_api_resource;
use super::validate::{
    SecretRefs, StageRole, ValidatedApi, ValidatedPipeline, ValidatedStage, ValidatedTopic,
};
use crate::crd::SecretKeyRef;
use crate::scaling::DesiredReplicas;

pub const MANAGED_BY: &str = "ferry-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const LABEL_STAGE: &str = "ferry.dev/stage";
/// On a `KafkaTopic`: the namespace of the Pipeline that created it, which may differ from
/// the topic's own (the Kafka's).
pub const LABEL_PIPELINE_NAMESPACE: &str = "ferry.dev/pipeline-namespace";
pub const ANNOTATION_CONFIG_HASH: &str = "ferry.dev/config-hash";
/// Non-root user of the worker image.
pub const WORKER_UID: i64 = 65532;

/// How long a worker pod has between SIGTERM and SIGKILL.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

/// What the worker's shutdown budget leaves of the grace period: the writer's join (1 s),
/// the final synchronous commit and leaving the group.
const SHUTDOWN_MARGIN_SECONDS: i64 = 5;

/// The worker's budget from SIGTERM to leaving the group (`FERRY_SHUTDOWN_TIMEOUT`),
/// derived from the grace period so the two can't drift apart.
pub const SHUTDOWN_TIMEOUT_SECONDS: i64 =
    TERMINATION_GRACE_PERIOD_SECONDS - SHUTDOWN_MARGIN_SECONDS;
const CONFIG_DIR: &str = "/etc/ferry/config";
pub const HTTP_PORT_NAME: &str = "http";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot render the worker config of stage {stage}: {source}")]
    RenderConfig {
        stage: String,
        source: serde_yaml::Error,
    },
}

/// Everything one Pipeline owns. `apply` destructures it without `..`, so a new kind of
/// child that is built but never applied fails to compile.
#[derive(Debug, Clone)]
pub struct Children {
    pub kafka_topic: Option<DynamicObject>,
    /// The `KafkaTopic`s of stage outputs (`output.create` with Strimzi).
    pub output_topics: Vec<DynamicObject>,
    pub config_map: ConfigMap,
    pub deployments: Vec<Deployment>,
    pub api: Option<ApiChildren>,
}

/// The read API's objects, all named `<pipeline>-api`.
#[derive(Debug, Clone)]
pub struct ApiChildren {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub service: Service,
    pub deployment: Deployment,
}

/// Every child of `pipeline`, each stage's Deployment at the replicas `desired` gives it
/// (see [`ValidatedStage::replicas_with`]).
pub fn build(
    pipeline: &ValidatedPipeline,
    desired: &DesiredReplicas,
) -> Result<Children, BuildError> {
    let rendered = render_configs(pipeline)?;
    let config_map = build_config_map(pipeline, &rendered);
    let deployments = pipeline
        .stages
        .iter()
        .map(|stage| {
            let config_yaml = rendered.get(&stage.config_key).map_or("", String::as_str);
            build_deployment(pipeline, stage, config_yaml, stage.replicas_with(desired))
        })
        .collect();
    let api = pipeline.api.as_ref().and_then(|api| {
        let receiver = pipeline
            .stages
            .iter()
            .find(|s| s.role == StageRole::Receiver)?;
        let config_yaml = rendered.get(&api.config_key).map_or("", String::as_str);
        Some(build_api(pipeline, api, receiver, config_yaml))
    });
    Ok(Children {
        api,
        kafka_topic: pipeline
            .kafka_topic
            .as_ref()
            .map(|topic| build_kafka_topic(pipeline, topic)),
        output_topics: pipeline
            .output_topics
            .iter()
            .map(|topic| build_kafka_topic(pipeline, topic))
            .collect(),
        config_map,
        deployments,
    })
}

/// Labels every child carries; `instance` and `managed-by` are what orphan cleanup and the
/// ownership check select on.
pub fn common_labels(pipeline: &ValidatedPipeline) -> BTreeMap<String, String> {
    let mut labels = stable_labels(pipeline);
    labels.insert(LABEL_VERSION.to_owned(), pipeline.operator_version.clone());
    labels
}

/// The labels that stay the same across operator versions: the only ones a pod template
/// may carry, or an operator upgrade would replace every worker pod (a rebalance each).
fn stable_labels(pipeline: &ValidatedPipeline) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "ferry".to_owned()),
        (LABEL_INSTANCE.to_owned(), pipeline.name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_PART_OF.to_owned(), "ferry".to_owned()),
    ])
}

/// The immutable selector of one stage's pods.
pub fn selector_labels(
    pipeline: &ValidatedPipeline,
    stage: &ValidatedStage,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "ferry".to_owned()),
        (LABEL_INSTANCE.to_owned(), pipeline.name.clone()),
        (LABEL_STAGE.to_owned(), stage.name.clone()),
    ])
}

/// `app.kubernetes.io/instance=<name>,app.kubernetes.io/managed-by=ferry-operator`.
pub fn owned_children_selector(pipeline_name: &str) -> String {
    format!("{LABEL_INSTANCE}={pipeline_name},{LABEL_MANAGED_BY}={MANAGED_BY}")
}

fn object_meta(
    pipeline: &ValidatedPipeline,
    name: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(pipeline.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![pipeline.owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn render_configs(pipeline: &ValidatedPipeline) -> Result<BTreeMap<String, String>, BuildError> {
    pipeline
        .stages
        .iter()
        .map(|stage| {
            let yaml =
                stage
                    .worker_config
                    .to_yaml()
                    .map_err(|source| BuildError::RenderConfig {
                        stage: stage.name.clone(),
                        source,
                    })?;
            Ok((stage.config_key.clone(), yaml))
        })
        .collect()
}

/// A Strimzi `KafkaTopic` for the Pipeline's source topic, or a stage's output topic (then
/// labelled with the stage). `spec.topicName` carries the real
/// name, since Kafka topic names may hold characters a Kubernetes name may not.
///
/// Labelled, never owned: an owner reference would let the garbage collector delete it with
/// the Pipeline, and Strimzi would then delete the topic's records. Only
/// `deletionPolicy: delete` removes it, through the Pipeline's finalizer.
pub fn build_kafka_topic(pipeline: &ValidatedPipeline, topic: &ValidatedTopic) -> DynamicObject {
    let mut labels = common_labels(pipeline);
    labels.insert("strimzi.io/cluster".to_owned(), topic.cluster.clone());
    labels.insert(
        LABEL_PIPELINE_NAMESPACE.to_owned(),
        topic.pipeline_namespace.clone(),
    );
    if let Some(stage) = &topic.stage {
        labels.insert(LABEL_STAGE.to_owned(), stage.clone());
    }
    let mut object = DynamicObject::new(&topic.resource_name, &kafka_topic_api_resource())
        .within(&topic.namespace);
    object.metadata.labels = Some(labels);
    let mut spec = serde_json::json!({
        "topicName": topic.topic_name,
        "partitions": topic.partitions,
    });
    // Unset, Strimzi's Topic Operator uses the cluster's default.replication.factor.
    if let Some(replicas) = topic.replicas {
        spec["replicas"] = serde_json::json!(replicas);
    }
    if !topic.config.is_empty() {
        spec["config"] = serde_json::json!(topic.config);
    }
    object.data = serde_json::json!({ "spec": spec });
    object
}

pub fn build_config_map(
    pipeline: &ValidatedPipeline,
    rendered: &BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(pipeline, &pipeline.config_map_name, common_labels(pipeline)),
        data: Some(rendered.clone()),
        ..ConfigMap::default()
    }
}

pub fn build_deployment(
    pipeline: &ValidatedPipeline,
    stage: &ValidatedStage,
    config_yaml: &str,
    replicas: i32,
) -> Deployment {
    let selector = selector_labels(pipeline, stage);
    let mut pod_labels = stable_labels(pipeline);
    pod_labels.extend(selector.clone());
    pod_labels.insert(LABEL_COMPONENT.to_owned(), stage.role.as_str().to_owned());
    let mut labels = common_labels(pipeline);
    labels.extend(pod_labels.clone());

    let config_hash = format!("{:x}", Sha256::digest(config_yaml.as_bytes()));
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: pipeline.config_map_name.clone(),
                items: Some(vec![KeyToPath {
                    key: stage.config_key.clone(),
                    path: "worker.yaml".to_owned(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    for secret in &pipeline.secrets.tls_volumes {
        volumes.push(Volume {
            name: secret.volume.clone(),
            // Only the referenced keys: the Secret may hold more than Ferry needs.
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.secret.clone()),
                default_mode: Some(0o440),
                items: Some(
                    secret
                        .keys
                        .iter()
                        .map(|key| KeyToPath {
                            key: key.clone(),
                            path: key.clone(),
                            mode: None,
                        })
                        .collect(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: secret.volume.clone(),
            mount_path: secret.mount_dir.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let subcommand = match stage.role {
        StageRole::Receiver => "receive",
        StageRole::Processor => "process",
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "worker".to_owned(),
        image: Some(stage.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec![
            subcommand.to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_DIR}/worker.yaml"),
            "--log-format".to_owned(),
            "json".to_owned(),
        ]),
        env: Some(worker_env(&pipeline.secrets)),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.to_owned()),
            container_port: i32::from(DEFAULT_HTTP_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: Some(stage.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    Deployment {
        metadata: object_meta(pipeline, &stage.deployment_name, labels),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_CONFIG_HASH.to_owned(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // Workers never call the Kubernetes API.
                    automount_service_account_token: Some(false),
                    // Long enough to drain in-flight batches and commit on SIGTERM.
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Where the API's token file is mounted.
const API_TOKEN_DIR: &str = "/etc/ferry/api-token";
pub const API_COMPONENT: &str = "api";
/// The Service's port; the pods listen on the worker's HTTP port.
pub const API_SERVICE_PORT: i32 = 80;

/// The read API: the receiver's pod re-pointed at `ferry-api`, so it has the same hardening,
/// config and Secret references by construction; its own ServiceAccount, whose Role may
/// only `get` this one Pipeline (for the stages' replicas and lag), a Service in front.
pub fn build_api(
    pipeline: &ValidatedPipeline,
    api: &ValidatedApi,
    receiver: &ValidatedStage,
    config_yaml: &str,
) -> ApiChildren {
    let replicas = if api.paused { 0 } else { api.replicas };
    let mut deployment = build_deployment(pipeline, receiver, config_yaml, replicas);
    let mut selector = selector_labels(pipeline, receiver);
    selector.insert(LABEL_STAGE.to_owned(), API_COMPONENT.to_owned());
    let retarget = |labels: &mut BTreeMap<String, String>| {
        labels.insert(LABEL_STAGE.to_owned(), API_COMPONENT.to_owned());
        labels.insert(LABEL_COMPONENT.to_owned(), API_COMPONENT.to_owned());
    };
    deployment.metadata.name = Some(api.name.clone());
    if let Some(labels) = deployment.metadata.labels.as_mut() {
        retarget(labels);
    }
    let labels = deployment.metadata.labels.clone().unwrap_or_default();
    if let Some(spec) = deployment.spec.as_mut() {
        spec.selector.match_labels = Some(selector.clone());
        if let Some(labels) = spec
            .template
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
        {
            retarget(labels);
        }
        if let Some(pod) = spec.template.spec.as_mut() {
            // Its one call to the Kubernetes API: get this Pipeline.
            pod.automount_service_account_token = Some(true);
            pod.service_account_name = Some(api.name.clone());
            if let Some(token) = &api.token {
                pod.volumes.get_or_insert_with(Vec::new).push(Volume {
                    name: "api-token".to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(token.name.clone()),
                        default_mode: Some(0o440),
                        items: Some(vec![KeyToPath {
                            key: token.key.clone(),
                            path: "token".to_owned(),
                            mode: None,
                        }]),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                });
            }
            for container in &mut pod.containers {
                container.name = API_COMPONENT.to_owned();
                container.command = Some(vec![API_COMMAND.to_owned()]);
                container.args = Some(api_args(pipeline, api));
                if let Some(probe) = container.readiness_probe.as_mut()
                    && let Some(get) = probe.http_get.as_mut()
                {
                    get.path = Some("/healthz".to_owned());
                }
                if api.token.is_some() {
                    container
                        .volume_mounts
                        .get_or_insert_with(Vec::new)
                        .push(VolumeMount {
                            name: "api-token".to_owned(),
                            mount_path: API_TOKEN_DIR.to_owned(),
                            read_only: Some(true),
                            ..VolumeMount::default()
                        });
                }
            }
        }
    }
    let meta = |name: &str| object_meta(pipeline, name, labels.clone());
    ApiChildren {
        service_account: ServiceAccount {
            metadata: meta(&api.name),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta(&api.name),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["ferry.dev".to_owned()]),
                resources: Some(vec!["pipelines".to_owned()]),
                resource_names: Some(vec![pipeline.name.clone()]),
                verbs: vec!["get".to_owned()],
                ..PolicyRule::default()
            }]),
        },
        role_binding: RoleBinding {
            metadata: meta(&api.name),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "Role".to_owned(),
                name: api.name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: api.name.clone(),
                namespace: Some(pipeline.namespace.clone()),
                ..Subject::default()
            }]),
        },
        service: Service {
            metadata: meta(&api.name),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_owned()),
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    name: Some(HTTP_PORT_NAME.to_owned()),
                    port: API_SERVICE_PORT,
                    target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        deployment,
    }
}

fn api_args(pipeline: &ValidatedPipeline, api: &ValidatedApi) -> Vec<String> {
    let mut args = vec![
        "--config".to_owned(),
        format!("{CONFIG_DIR}/worker.yaml"),
        "--log-format".to_owned(),
        "json".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{DEFAULT_HTTP_PORT}"),
        "--pipeline-object".to_owned(),
        format!("{}/{}", pipeline.namespace, pipeline.name),
    ];
    let named = |flag: &str, names: &[String]| {
        names
            .iter()
            .flat_map(|name| [flag.to_owned(), name.clone()])
            .collect::<Vec<_>>()
    };
    args.extend(named("--stats", &api.stats));
    args.extend(named("--validate", &api.validate));
    args.extend(named("--processor", &api.other_processors));
    if api.token.is_some() {
        args.extend(["--token-file".to_owned(), format!("{API_TOKEN_DIR}/token")]);
    }
    args
}

fn worker_env(secrets: &SecretRefs) -> Vec<EnvVar> {
    let from_secret = |name: &str, secret: &SecretKeyRef| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        EnvVar {
            name: "RUST_LOG".to_owned(),
            value: Some("info".to_owned()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "FERRY_SHUTDOWN_TIMEOUT".to_owned(),
            value: Some(format!("{SHUTDOWN_TIMEOUT_SECONDS}s")),
            ..EnvVar::default()
        },
    ];
    if let Some(secret) = &secrets.redis_password {
        env.push(from_secret(REDIS_PASSWORD_ENV, secret));
    }
    if let Some(secret) = &secrets.kafka_sasl_password {
        env.push(from_secret(KAFKA_SASL_PASSWORD_ENV, secret));
    }
    env
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("256Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}
