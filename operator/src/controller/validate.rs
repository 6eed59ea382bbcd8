//! Stage 2: the raw spec, plus what `dereference` fetched, becomes a typed, checked
//! `ValidatedPipeline`. Synchronous and pure: the schema already rejected most bad input at
//! admission; this catches what only the operator can know.

use std::collections::BTreeMap;

use ferry_config::config::{
    BatchConfig, DeadLetterConfig, EnrichConfig, HttpConfig, KAFKA_SASL_PASSWORD_ENV, KafkaConfig,
    OutputConfig, ProcessorConfig, ProcessorKind, REDIS_PASSWORD_ENV, ReceiverConfig, RecordFormat,
    RedisConfig, SaslConfig, StageConfig, StatsConfig, StorageConfig, TLS_MOUNT_DIR, TlsFiles,
    ValidateConfig, ValidationRule, WorkerConfig,
};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use super::dereference::{Bootstrap, Dereferenced};
use crate::crd::{
    ApiSpec, BatchSpec, DeletionPolicy, Pipeline, PipelineSpec, ProcessorSpec, ScalingMode,
    ScalingSpec, SecretKeyRef, StageInputSpec, TlsSpec,
};
use crate::scaling::DesiredReplicas;

pub const DEFAULT_REDIS_PORT: i32 = 6379;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("Pipeline has no {field}; it must come from the API server")]
    MissingMetadata { field: &'static str },
    #[error("the rendered worker config for stage {stage} is invalid: {source}")]
    WorkerConfig {
        stage: String,
        source: ferry_config::config::ConfigError,
    },
    #[error(
        "spec.processors[].name {name:?} is reserved: the receiver's Deployment uses that suffix"
    )]
    ReservedProcessorName { name: String },
    #[error("{field}: {message}")]
    InvalidGraph { field: String, message: String },
    #[error(
        "spec.receiver.image {image:?} is not in the operator's allow-list of worker images ({allowed}); ask the cluster admin, or leave spec.receiver.image out for the default"
    )]
    ImageNotAllowed { image: String, allowed: String },
    #[error(
        "spec.api.enabled: this operator does not deploy the read API: it would create a ServiceAccount, Role and RoleBinding per Pipeline, which the cluster admin has not allowed (chart value readApi.enabled, operator flag --read-api)"
    )]
    ReadApiNotEnabled,
}

/// The operator's own settings that a Pipeline inherits.
#[derive(Debug, Clone)]
pub struct OperatorDefaults {
    pub worker_image: String,
    /// Which images a Pipeline may name in `spec.receiver.image`.
    pub allowed_images: ImageAllowList,
    /// The `app.kubernetes.io/version` the children's metadata carries (never their pods).
    pub operator_version: String,
    /// Whether a Pipeline may ask for the read API (`spec.api`): it makes the operator
    /// write RBAC objects, so the cluster admin opts in.
    pub read_api: bool,
}

impl OperatorDefaults {
    /// Defaults with `worker_image` as the only allowed image and this build's version.
    pub fn new(worker_image: impl Into<String>) -> Self {
        Self {
            worker_image: worker_image.into(),
            allowed_images: ImageAllowList::default(),
            operator_version: env!("CARGO_PKG_VERSION").to_owned(),
            read_api: false,
        }
    }
}

/// The worker images a Pipeline may run, besides the operator's default one (always
/// allowed). An entry is an exact image reference, or a prefix ending in `*`
/// (`registry.example/ferry/worker:*`); `*` alone allows any image. Empty: only the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageAllowList {
    pub entries: Vec<String>,
}

impl ImageAllowList {
    pub fn new(entries: impl IntoIterator<Item = String>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// Whether a Pipeline may run `image`, the operator's default being `default`.
    pub fn allows(&self, image: &str, default: &str) -> bool {
        image == default
            || self
                .entries
                .iter()
                .any(|entry| match entry.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => entry == image,
                })
    }

    fn describe(&self, default: &str) -> String {
        std::iter::once(default)
            .chain(self.entries.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A Pipeline that passed every check, with names resolved and worker configs rendered.
#[derive(Debug, Clone)]
pub struct ValidatedPipeline {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    pub owner: OwnerReference,
    pub config_map_name: String,
    pub stages: Vec<ValidatedStage>,
    pub secrets: SecretRefs,
    pub paused: bool,
    /// The Strimzi `KafkaTopic` to create, when `spec.kafka.createTopic` asks for it.
    pub kafka_topic: Option<ValidatedTopic>,
    /// The `KafkaTopic`s of stage outputs (`output.create` with Strimzi); the `topics`
    /// stage fills them in, since their partitions may come from Kafka's metadata.
    pub output_topics: Vec<ValidatedTopic>,
    /// The `app.kubernetes.io/version` of the children's metadata.
    pub operator_version: String,
    /// The read API and dashboard, when `spec.api.enabled`.
    pub api: Option<ValidatedApi>,
}

/// What the API's children are built from. Every one of them is named `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedApi {
    pub name: String,
    pub replicas: i32,
    pub image: String,
    /// The receiver's config key: `ferry-api` reads Redis as the receiver writes it.
    pub config_key: String,
    pub token: Option<SecretKeyRef>,
    /// Processor names by what `ferry-api` reads of them (`--stats`, `--validate`,
    /// `--processor`).
    pub stats: Vec<String>,
    pub validate: Vec<String>,
    pub other_processors: Vec<String>,
    /// 0 when the Pipeline is paused, like every stage.
    pub paused: bool,
}

/// A `KafkaTopic` for Strimzi's Topic Operator, which watches the Kafka cluster's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedTopic {
    pub resource_name: String,
    pub namespace: String,
    pub cluster: String,
    pub topic_name: String,
    pub partitions: i32,
    /// `None` leaves it to the Kafka cluster's `default.replication.factor`.
    pub replicas: Option<i32>,
    pub config: std::collections::BTreeMap<String, String>,
    /// The Pipeline's namespace, which the topic's labels name: the topic may live in the
    /// Kafka's namespace, where another namespace's Pipeline may have the same name.
    pub pipeline_namespace: String,
    /// The stage whose output it is; `None` for the source topic.
    pub stage: Option<String>,
}

/// Where the `KafkaTopic` of `spec.kafka.createTopic` lives: `(namespace, name)`. Needs no
/// dereference, so a Pipeline being deleted finds it with its Kafka gone.
pub fn kafka_topic_location(pipeline: &Pipeline) -> Option<(String, String)> {
    let kafka = &pipeline.spec.kafka;
    let strimzi = kafka.strimzi.as_ref()?;
    kafka.create_topic.as_ref()?;
    let name = pipeline.metadata.name.as_deref()?;
    let namespace = strimzi
        .namespace
        .clone()
        .or_else(|| pipeline.metadata.namespace.clone())?;
    Some((namespace, kafka_topic_name(name)))
}

fn kafka_topic_name(pipeline: &str) -> String {
    format!("{pipeline}-topic")
}

/// Whether deleting `pipeline` must delete topics first, through the finalizer: its
/// `KafkaTopic`, or output topics it asks for or created.
pub fn deletes_topic(pipeline: &Pipeline) -> bool {
    let creates_outputs = pipeline
        .spec
        .processors
        .iter()
        .any(|p| p.output.as_ref().is_some_and(|o| o.create.is_some()));
    let created = pipeline
        .status
        .as_ref()
        .is_some_and(|s| !s.created_topics.is_empty());
    pipeline.spec.deletion_policy == DeletionPolicy::Delete
        && (kafka_topic_location(pipeline).is_some() || creates_outputs || created)
}

/// Where Secret material comes from; it reaches pods only through references.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretRefs {
    pub redis_password: Option<SecretKeyRef>,
    pub kafka_sasl_password: Option<SecretKeyRef>,
    /// Secret volumes: (volume name, Secret name, mount directory).
    pub tls_volumes: Vec<SecretVolume>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretVolume {
    pub volume: String,
    pub secret: String,
    pub mount_dir: String,
    /// The only keys of the Secret the pod gets, each as a file of that name.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRole {
    Receiver,
    Processor,
}

impl StageRole {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Receiver => "receiver",
            Self::Processor => "processor",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidatedStage {
    /// `receiver` or the processor's name; unique within the Pipeline.
    pub name: String,
    pub role: StageRole,
    pub deployment_name: String,
    /// The key of this stage's file in the Pipeline's ConfigMap.
    pub config_key: String,
    pub worker_config: WorkerConfig,
    pub scaling: ScalingSpec,
    /// Replicas without the autoscaler: 0 when paused, the manual count, or minReplicas.
    pub replicas: i32,
    /// Auto mode and not paused: the autoscaler's desired count decides the replicas.
    pub autoscaled: bool,
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    /// The topic this stage reads (also `worker_config.kafka.topic`).
    pub input_topic: String,
    /// The topic this stage writes, if any.
    pub output_topic: Option<String>,
}

pub use ferry_config::config::RECEIVER_STAGE;

impl ValidatedStage {
    /// The replicas this round applies: for an autoscaled stage the desired count published
    /// for it, within its bounds (minReplicas until the autoscaler has one); otherwise
    /// validate's number.
    pub fn replicas_with(&self, desired: &DesiredReplicas) -> i32 {
        if !self.autoscaled {
            return self.replicas;
        }
        let min = self.scaling.min_replicas.max(0);
        let max = self.scaling.max_replicas.max(min);
        desired
            .get(&self.name)
            .unwrap_or(self.replicas)
            .clamp(min, max)
    }
}

/// The receiver's default group, `ferry:<namespace>:<name>`: a colon is in no namespace,
/// Pipeline or processor name, and in no `spec.kafka.consumerGroup` (its pattern), so two
/// stages get one group only if two Pipelines set the same `consumerGroup`.
pub fn default_group(namespace: &str, name: &str) -> String {
    format!("ferry:{namespace}:{name}")
}

/// A processor's group: its receiver's, a colon, its name.
pub fn processor_group(receiver_group: &str, processor: &str) -> String {
    format!("{receiver_group}:{processor}")
}

pub fn validate(
    pipeline: &Pipeline,
    dereferenced: &Dereferenced,
    defaults: &OperatorDefaults,
) -> Result<ValidatedPipeline, ValidateError> {
    let name = pipeline
        .metadata
        .name
        .clone()
        .ok_or(ValidateError::MissingMetadata {
            field: "metadata.name",
        })?;
    let namespace = pipeline
        .metadata
        .namespace
        .clone()
        .ok_or(ValidateError::MissingMetadata {
            field: "metadata.namespace",
        })?;
    let owner = pipeline
        .controller_owner_ref(&())
        .ok_or(ValidateError::MissingMetadata {
            field: "metadata.uid",
        })?;
    let spec = &pipeline.spec;
    let bootstrap_servers = match &dereferenced.bootstrap {
        Bootstrap::Resolved(servers) => servers.clone(),
    };
    let receiver_group = spec
        .kafka
        .consumer_group
        .clone()
        .unwrap_or_else(|| default_group(&namespace, &name));

    let mut secrets = SecretRefs::default();
    let kafka_tls = spec
        .kafka
        .tls
        .as_ref()
        .map(|tls| mount_tls(tls, "kafka", &mut secrets));
    let redis_tls = spec
        .redis
        .tls
        .as_ref()
        .map(|tls| mount_tls(tls, "redis", &mut secrets));
    let sasl = spec.kafka.sasl.as_ref().map(|sasl| {
        secrets.kafka_sasl_password = Some(sasl.password_secret_ref.clone());
        SaslConfig {
            mechanism: sasl.mechanism,
            username: sasl.username.clone(),
            password_env: KAFKA_SASL_PASSWORD_ENV.to_owned(),
        }
    });
    secrets.redis_password = spec.redis.password_secret_ref.clone();

    let redis = RedisConfig {
        url: redis_url(spec),
        username: spec.redis.username.clone(),
        password_env: secrets
            .redis_password
            .as_ref()
            .map(|_| REDIS_PASSWORD_ENV.to_owned()),
        tls: redis_tls,
        key_prefix: spec.redis.key_prefix.clone(),
    };
    // `latest` keeps what was produced from the Pipeline's creation on, while pods start.
    let created_ms = pipeline
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|created| created.0.as_millisecond());
    let chain = resolve_chain(spec)?;
    let kafka_for_group = |group: String, topic: String| KafkaConfig {
        bootstrap_servers: bootstrap_servers.clone(),
        topic,
        consumer_group: group,
        auto_offset_reset: spec.kafka.auto_offset_reset,
        latest_from_ms: created_ms,
        tls: kafka_tls.clone(),
        sasl: sasl.clone(),
    };
    // The data set's epoch: a Pipeline created again under the same name is a new one.
    let epoch = pipeline.metadata.uid.clone();
    let worker_config = |group: String, input: &ResolvedInput, stage: StageConfig| WorkerConfig {
        pipeline: name.clone(),
        epoch: epoch.clone(),
        kafka: kafka_for_group(group, input.topic.clone()),
        redis: redis.clone(),
        format: input.format,
        http: HttpConfig::default(),
        stage,
    };
    let image = spec
        .receiver
        .image
        .clone()
        .unwrap_or_else(|| defaults.worker_image.clone());
    // The operator writes the Deployment with its own rights: the image is the cluster
    // admin's choice, not the Pipeline author's.
    if !defaults
        .allowed_images
        .allows(&image, &defaults.worker_image)
    {
        return Err(ValidateError::ImageNotAllowed {
            allowed: defaults.allowed_images.describe(&defaults.worker_image),
            image,
        });
    }

    let receiver = &spec.receiver;
    let mut stages = vec![ValidatedStage {
        name: RECEIVER_STAGE.to_owned(),
        role: StageRole::Receiver,
        deployment_name: format!("{name}-{RECEIVER_STAGE}"),
        config_key: format!("{RECEIVER_STAGE}.yaml"),
        worker_config: worker_config(
            receiver_group.clone(),
            &chain.receiver,
            StageConfig::Receiver(ReceiverConfig {
                storage: StorageConfig {
                    kind: receiver.storage.kind,
                    history_depth: positive_u32(receiver.storage.history_depth),
                    ttl: receiver.storage.ttl,
                    encoding: receiver.storage.encoding,
                },
                max_age: receiver.max_age,
                dead_letter: receiver.dead_letter.as_ref().map(|d| DeadLetterConfig {
                    topic: d.topic.clone(),
                }),
                batch: batch_config(&receiver.batch),
            }),
        ),
        scaling: receiver.scaling.clone(),
        replicas: initial_replicas(&receiver.scaling, spec.paused),
        autoscaled: autoscaled(&receiver.scaling, spec.paused),
        image: image.clone(),
        resources: receiver.resources.clone(),
        input_topic: chain.receiver.topic.clone(),
        output_topic: None,
    }];
    for (processor, input) in spec.processors.iter().zip(&chain.processors) {
        if processor.name == RECEIVER_STAGE || processor.name == "config" {
            return Err(ValidateError::ReservedProcessorName {
                name: processor.name.clone(),
            });
        }
        stages.push(ValidatedStage {
            name: processor.name.clone(),
            role: StageRole::Processor,
            deployment_name: format!("{name}-{}", processor.name),
            config_key: format!("processor-{}.yaml", processor.name),
            worker_config: worker_config(
                processor_group(&receiver_group, &processor.name),
                input,
                StageConfig::Processor(processor_config(processor)),
            ),
            scaling: processor.scaling.clone(),
            replicas: initial_replicas(&processor.scaling, spec.paused),
            autoscaled: autoscaled(&processor.scaling, spec.paused),
            image: image.clone(),
            resources: processor.resources.clone(),
            input_topic: input.topic.clone(),
            output_topic: processor.output.as_ref().map(|o| o.topic.clone()),
        });
    }
    for stage in &stages {
        stage
            .worker_config
            .validate()
            .map_err(|source| ValidateError::WorkerConfig {
                stage: stage.name.clone(),
                source,
            })?;
    }

    let kafka_topic = match (&spec.kafka.create_topic, &spec.kafka.strimzi) {
        (Some(create), Some(strimzi)) => {
            let topic_namespace = strimzi
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.clone());
            Some(ValidatedTopic {
                resource_name: kafka_topic_name(&name),
                pipeline_namespace: namespace.clone(),
                namespace: topic_namespace,
                cluster: strimzi.cluster.clone(),
                topic_name: spec.kafka.topic.clone(),
                partitions: create.partitions,
                replicas: create.replicas,
                config: create.config.clone(),
                stage: None,
            })
        }
        _ => None,
    };

    let api = spec.api.as_ref().filter(|api| api.enabled);
    if api.is_some() && !defaults.read_api {
        return Err(ValidateError::ReadApiNotEnabled);
    }
    let api = api.map(|api| validated_api(&name, api, &stages, &image, spec.paused));

    Ok(ValidatedPipeline {
        api,
        kafka_topic,
        output_topics: Vec::new(),
        config_map_name: format!("{name}-config"),
        name,
        namespace,
        generation: pipeline.metadata.generation,
        owner,
        stages,
        secrets,
        paused: spec.paused,
        operator_version: defaults.operator_version.clone(),
    })
}

fn validated_api(
    pipeline: &str,
    api: &ApiSpec,
    stages: &[ValidatedStage],
    image: &str,
    paused: bool,
) -> ValidatedApi {
    let mut validated = ValidatedApi {
        name: format!("{pipeline}-api"),
        replicas: api.replicas,
        image: image.to_owned(),
        config_key: format!("{RECEIVER_STAGE}.yaml"),
        token: api.token_secret_ref.clone(),
        stats: Vec::new(),
        validate: Vec::new(),
        other_processors: Vec::new(),
        paused,
    };
    for stage in stages {
        let StageConfig::Processor(processor) = &stage.worker_config.stage else {
            continue;
        };
        let list = match processor.kind {
            ProcessorKind::Stats(_) => &mut validated.stats,
            ProcessorKind::Validate(_) => &mut validated.validate,
            ProcessorKind::Enrich(_) => &mut validated.other_processors,
        };
        list.push(stage.name.clone());
    }
    validated
}

/// Where one stage reads, and how what it reads is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedInput {
    pub topic: String,
    pub format: RecordFormat,
}

/// Every stage's input: the receiver's and each processor's, in `spec.processors` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub receiver: ResolvedInput,
    pub processors: Vec<ResolvedInput>,
}

fn graph_error(field: String, message: impl Into<String>) -> ValidateError {
    ValidateError::InvalidGraph {
        field,
        message: message.into(),
    }
}

/// Checks the stage graph and resolves each stage's input topic and format. The schema's
/// CEL rules refuse most bad graphs at admission; cycles through explicit topics need a
/// walk CEL cannot do, and objects written under an older schema get the same checks here.
pub fn resolve_chain(spec: &PipelineSpec) -> Result<Chain, ValidateError> {
    let processors = &spec.processors;
    let field = |i: usize, rest: &str| format!("spec.processors[{i}].{rest}");
    // Who writes which topic.
    let mut writer: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in processors.iter().enumerate() {
        let Some(output) = &p.output else { continue };
        if output.topic == spec.kafka.topic {
            return Err(graph_error(
                field(i, "output.topic"),
                "must differ from spec.kafka.topic, or the processor would consume its own output",
            ));
        }
        if let Some(first) = writer.insert(&output.topic, i) {
            return Err(graph_error(
                field(i, "output.topic"),
                format!(
                    "{} is also spec.processors[{first}].output.topic: two stages writing one topic would mix their records",
                    output.topic
                ),
            ));
        }
    }
    let dead_letters = spec
        .receiver
        .dead_letter
        .iter()
        .map(|d| {
            (
                "spec.receiver.deadLetter.topic".to_owned(),
                d.topic.as_str(),
            )
        })
        .chain(processors.iter().enumerate().filter_map(|(i, p)| {
            p.dead_letter
                .as_ref()
                .map(|d| (field(i, "deadLetter.topic"), d.topic.as_str()))
        }));
    for (dead_letter_field, topic) in dead_letters {
        if let Some(&i) = writer.get(topic) {
            return Err(graph_error(
                field(i, "output.topic"),
                format!(
                    "{topic} is {dead_letter_field}: a stage must not write into a dead-letter topic"
                ),
            ));
        }
    }
    // The topic each stage reads, checked against the stages it names.
    let input_topic = |input: Option<&StageInputSpec>,
                       at: &str,
                       own: Option<&str>|
     -> Result<String, ValidateError> {
        let Some(input) = input else {
            return Ok(spec.kafka.topic.clone());
        };
        match (&input.from, &input.topic) {
            (Some(from), None) => {
                if own == Some(from.as_str()) {
                    return Err(graph_error(
                        format!("{at}.from"),
                        "must not name the processor itself: it would read its own output",
                    ));
                }
                let Some(source) = processors.iter().find(|p| &p.name == from) else {
                    return Err(graph_error(
                        format!("{at}.from"),
                        format!("names no processor of this Pipeline: {from}"),
                    ));
                };
                source
                    .output
                    .as_ref()
                    .map(|o| o.topic.clone())
                    .ok_or_else(|| {
                        graph_error(
                            format!("{at}.from"),
                            format!("names processor {from}, which has no output.topic"),
                        )
                    })
            }
            (None, Some(topic)) => Ok(topic.clone()),
            _ => Err(graph_error(
                at.to_owned(),
                "set exactly one of from or topic",
            )),
        }
    };
    let mut topics = Vec::with_capacity(processors.len());
    for (i, p) in processors.iter().enumerate() {
        let topic = input_topic(p.input.as_ref(), &field(i, "input"), Some(&p.name))?;
        if p.output.as_ref().is_some_and(|o| o.topic == topic) {
            return Err(graph_error(
                field(i, "input"),
                format!("reads {topic}, its own output.topic"),
            ));
        }
        topics.push(topic);
    }
    let receiver_topic = input_topic(spec.receiver.input.as_ref(), "spec.receiver.input", None)?;
    // A processor's upstream is the processor writing its input topic; following it from
    // every processor finds any cycle within as many steps as there are processors.
    let upstream: Vec<Option<usize>> = topics
        .iter()
        .map(|t| writer.get(t.as_str()).copied())
        .collect();
    for start in 0..processors.len() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(next) = upstream[at] {
            if next == start {
                // `path` runs against the flow: each entry reads the next one's output.
                let names: Vec<&str> = std::iter::once(&start)
                    .chain(path.iter().rev())
                    .map(|&i| processors[i].name.as_str())
                    .collect();
                return Err(graph_error(
                    field(start, "input"),
                    format!("the stages {} form a cycle", names.join(" -> ")),
                ));
            }
            if path.len() > processors.len() {
                break;
            }
            path.push(next);
            at = next;
        }
    }
    // Formats, from the source down: a stage reads what its upstream writes, which is JSON
    // after enrich and its own input's format otherwise.
    let declared =
        |input: Option<&StageInputSpec>| input.and_then(|i| i.format).unwrap_or(spec.format);
    let mut formats: Vec<Option<RecordFormat>> = vec![None; processors.len()];
    fn format_of(
        i: usize,
        upstream: &[Option<usize>],
        processors: &[ProcessorSpec],
        declared: &dyn Fn(Option<&StageInputSpec>) -> RecordFormat,
        formats: &mut [Option<RecordFormat>],
    ) -> RecordFormat {
        if let Some(known) = formats[i] {
            return known;
        }
        let format = match upstream[i] {
            Some(up) => output_format(
                &processors[up],
                format_of(up, upstream, processors, declared, formats),
            ),
            None => declared(processors[i].input.as_ref()),
        };
        formats[i] = Some(format);
        format
    }
    let processor_inputs = (0..processors.len())
        .map(|i| ResolvedInput {
            topic: topics[i].clone(),
            format: format_of(i, &upstream, processors, &declared, &mut formats),
        })
        .collect();
    let receiver_format = match writer.get(receiver_topic.as_str()) {
        Some(&up) => output_format(
            &processors[up],
            format_of(up, &upstream, processors, &declared, &mut formats),
        ),
        None => declared(spec.receiver.input.as_ref()),
    };
    Ok(Chain {
        receiver: ResolvedInput {
            topic: receiver_topic,
            format: receiver_format,
        },
        processors: processor_inputs,
    })
}

/// What a processor writes: enrich produces JSON; stats and validate pass records on as read.
fn output_format(processor: &ProcessorSpec, input: RecordFormat) -> RecordFormat {
    if processor.enrich.is_some() {
        RecordFormat::Json
    } else {
        input
    }
}

/// Replicas before any lag is known: the floor of the range, or the user's number in manual mode.
fn autoscaled(scaling: &ScalingSpec, paused: bool) -> bool {
    !paused && scaling.mode == ScalingMode::Auto
}

fn initial_replicas(scaling: &ScalingSpec, paused: bool) -> i32 {
    if paused {
        return 0;
    }
    match scaling.mode {
        ScalingMode::Auto => scaling.min_replicas,
        ScalingMode::Manual => scaling.replicas.unwrap_or(scaling.min_replicas),
    }
}

fn redis_url(spec: &crate::crd::PipelineSpec) -> String {
    let scheme = if spec.redis.tls.is_some() {
        "rediss"
    } else {
        "redis"
    };
    match (&spec.redis.url, &spec.redis.host) {
        (Some(url), _) => match url.split_once("://") {
            Some((_, rest)) => format!("{scheme}://{rest}"),
            None => url.clone(),
        },
        (None, host) => format!(
            "{scheme}://{}:{}/{}",
            host.as_deref().unwrap_or("localhost"),
            spec.redis.port.unwrap_or(DEFAULT_REDIS_PORT),
            spec.redis.database.unwrap_or(0)
        ),
    }
}

/// Registers the Secret volumes for one TLS endpoint and returns the in-pod file paths.
fn mount_tls(tls: &TlsSpec, endpoint: &str, secrets: &mut SecretRefs) -> TlsFiles {
    let mut files = TlsFiles::default();
    if let Some(ca) = &tls.ca_secret_ref {
        let mount_dir = format!("{TLS_MOUNT_DIR}/{endpoint}-ca");
        files.ca_file = Some(format!("{mount_dir}/{}", ca.key).into());
        secrets.tls_volumes.push(SecretVolume {
            volume: format!("{endpoint}-ca"),
            secret: ca.name.clone(),
            mount_dir,
            keys: vec![ca.key.clone()],
        });
    }
    if let Some(client) = &tls.client_secret_ref {
        let mount_dir = format!("{TLS_MOUNT_DIR}/{endpoint}-client");
        files.cert_file = Some(format!("{mount_dir}/tls.crt").into());
        files.key_file = Some(format!("{mount_dir}/tls.key").into());
        secrets.tls_volumes.push(SecretVolume {
            volume: format!("{endpoint}-client"),
            secret: client.name.clone(),
            mount_dir,
            keys: vec!["tls.crt".to_owned(), "tls.key".to_owned()],
        });
    }
    files
}

fn batch_config(batch: &BatchSpec) -> BatchConfig {
    BatchConfig {
        max_records: positive_u32(batch.max_records),
        max_wait: batch.max_wait,
        max_bytes: positive_u32(batch.max_bytes),
    }
}

/// The schema guarantees a positive value; a hand-edited object that slipped past it gets 1.
fn positive_u32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0).max(1)
}

fn processor_config(processor: &ProcessorSpec) -> ProcessorConfig {
    // The schema's CEL rule guarantees exactly one kind; stats is the fallback only for
    // objects written before the rule existed.
    let kind = if let Some(validate) = &processor.validate {
        ProcessorKind::Validate(ValidateConfig {
            rules: validate
                .rules
                .iter()
                .map(|rule| ValidationRule {
                    name: rule.name.clone(),
                    expression: rule.expression.clone(),
                })
                .collect(),
        })
    } else if let Some(enrich) = &processor.enrich {
        ProcessorKind::Enrich(EnrichConfig {
            reference_key: enrich.reference_key.clone(),
            fields: enrich.fields.clone(),
        })
    } else {
        ProcessorKind::Stats(StatsConfig {
            window: positive_u32(processor.stats.as_ref().map_or(1, |s| s.window)),
        })
    };
    ProcessorConfig {
        name: processor.name.clone(),
        kind,
        output: processor.output.as_ref().map(|o| OutputConfig {
            topic: o.topic.clone(),
        }),
        dead_letter: processor.dead_letter.as_ref().map(|d| DeadLetterConfig {
            topic: d.topic.clone(),
        }),
        batch: batch_config(&processor.batch),
    }
}

#[cfg(test)]
mod tests {
    use super::ImageAllowList;

    #[test]
    fn the_allow_list_takes_exact_images_and_prefixes() {
        let default = "ferry/worker:0.1.0";
        let none = ImageAllowList::default();
        assert!(none.allows(default, default));
        assert!(!none.allows("ferry/worker:latest", default));
        let list = ImageAllowList::new([
            "registry.example/ferry/worker:*".to_owned(),
            " ferry/worker:0.2.0 ".to_owned(),
            String::new(),
        ]);
        assert!(list.allows("registry.example/ferry/worker:1.2.3", default));
        assert!(list.allows("ferry/worker:0.2.0", default));
        assert!(!list.allows("registry.example/other:1", default));
        assert!(!list.allows("ferry/worker:0.2.0-evil", default));
        assert!(ImageAllowList::new(["*".to_owned()]).allows("anything:1", default));
    }
}
