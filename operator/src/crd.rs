//! The `Pipeline` custom resource (`ferry.dev/v1alpha1`).
//!
//! The schema carries its own admission checks: bounds and patterns from `schemars`,
//! cross-field rules as CEL (`x-kubernetes-validations`). Every message names the field
//! it is about, because that is what a user sees in `kubectl apply`.

use std::collections::BTreeMap;

use ferry_config::config::{
    OffsetReset, RecordFormat, SaslMechanism, StorageEncoding, StorageKind,
};
use ferry_config::duration::HumanDuration;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "ferry.dev";
pub const VERSION: &str = "v1alpha1";

/// A stream from one Kafka topic into Redis: a receiver stage and optional processors.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    shortname = "pl",
    category = "ferry",
    status = "PipelineStatus",
    derive = "PartialEq",
    doc = "A Ferry Pipeline streams one Kafka topic into Redis through a receiver and optional processors.",
    scale(
        spec_replicas_path = ".spec.receiver.scaling.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.kafka.topic"),
    printcolumn(
        name = "Receivers",
        type_ = "string",
        json_path = ".status.receivers",
        description = "Ready/desired receiver replicas"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Receiver consumer-group lag, in records"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Stages",
        type_ = "integer",
        json_path = ".status.stageCount",
        description = "Stages of the chain: the receiver and each processor",
        priority = 1
    ),
    validation = Rule::new("self.metadata.name.size() <= 40")
        .message("metadata.name must be at most 40 characters: it prefixes the names of the Deployments and consumer groups")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.api) || !self.api.enabled || self.processors.all(p, p.name != 'api')")
        .message("spec.processors[].name must not be api while spec.api is enabled: the API's Deployment is <name>-api")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, self.processors.filter(q, q.name == p.name).size() == 1)")
        .message("spec.processors[].name must be unique within the Pipeline")
        .field_path(".processors"),
    validation = Rule::new("!has(self.receiver.deadLetter) || self.receiver.deadLetter.topic != self.kafka.topic")
        .message("spec.receiver.deadLetter.topic must differ from spec.kafka.topic")
        .field_path(".receiver.deadLetter.topic"),
    validation = Rule::new("self.processors.all(p, !has(p.output) || p.output.topic != self.kafka.topic)")
        .message("spec.processors[].output.topic must differ from spec.kafka.topic, or the processor would consume its own output")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.input) || !has(p.input.from) || p.input.from == p.name || self.processors.exists(q, q.name == p.input.from)) && (!has(self.receiver.input) || !has(self.receiver.input.from) || self.processors.exists(q, q.name == self.receiver.input.from))")
        .message("spec.processors[].input.from and spec.receiver.input.from must name a processor of this Pipeline")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.input) || !has(p.input.from) || p.input.from != p.name)")
        .message("spec.processors[].input.from must not name the processor itself: it would read its own output")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.input) || !has(p.input.from) || self.processors.all(q, q.name != p.input.from || !has(q.input) || !has(q.input.from) || q.input.from != p.name))")
        .message("spec.processors[].input.from must not form a cycle: two processors read each other's output (longer cycles are refused at reconcile)")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.input) || !has(p.input.from) || self.processors.all(q, q.name != p.input.from || has(q.output))) && (!has(self.receiver.input) || !has(self.receiver.input.from) || self.processors.all(q, q.name != self.receiver.input.from || has(q.output)))")
        .message("spec.processors[].input.from and spec.receiver.input.from must name a processor that has an output.topic")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.output) || self.processors.filter(q, has(q.output) && q.output.topic == p.output.topic).size() == 1)")
        .message("spec.processors[].output.topic must be unique: two stages writing one topic would mix their records")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.output) || ((!has(self.receiver.deadLetter) || self.receiver.deadLetter.topic != p.output.topic) && self.processors.all(q, !has(q.deadLetter) || q.deadLetter.topic != p.output.topic)))")
        .message("spec.processors[].output.topic must not be a stage's deadLetter.topic")
        .field_path(".processors"),
    validation = Rule::new("self.processors.all(p, !has(p.input) || !has(p.input.topic) || !has(p.output) || p.input.topic != p.output.topic)")
        .message("spec.processors[].input.topic must differ from its output.topic, or the processor would consume its own output")
        .field_path(".processors"),
    validation = Rule::new("!has(self.kafka.autoOffsetReset) || self.kafka.autoOffsetReset != 'latest' || ((!has(self.receiver.scaling) || !has(self.receiver.scaling.minReplicas) || self.receiver.scaling.minReplicas > 0 || (has(self.receiver.scaling.mode) && self.receiver.scaling.mode == 'manual')) && self.processors.all(p, !has(p.scaling) || !has(p.scaling.minReplicas) || p.scaling.minReplicas > 0 || (has(p.scaling.mode) && p.scaling.mode == 'manual')))")
        .message("spec.kafka.autoOffsetReset latest needs minReplicas of at least 1 in auto scaling: a group that never committed shows no lag, so a stage at zero replicas would never wake, and records produced meanwhile would be skipped")
        .field_path(".kafka.autoOffsetReset"),
)]
pub struct PipelineSpec {
    pub kafka: KafkaSpec,
    pub redis: RedisSpec,
    /// How record values are encoded on the topic.
    #[serde(default)]
    pub format: RecordFormat,
    #[serde(default)]
    pub receiver: ReceiverSpec,
    /// Each processor runs as its own Deployment in its own consumer group.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub processors: Vec<ProcessorSpec>,
    /// Keeps every object but scales all stages to zero.
    #[serde(default)]
    pub paused: bool,
    /// What deleting the Pipeline does to the topics Ferry created: the `KafkaTopic` of
    /// `spec.kafka.createTopic`, and each `output.create` topic (also when its stage is
    /// removed). `retain` (the default) leaves them and their records; `delete` removes them
    /// (for a `KafkaTopic`, Strimzi then deletes the topic and its records).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The read API and dashboard (`ferry-api`) over this Pipeline's data: a
    /// Deployment, a ClusterIP Service, and a ServiceAccount that may only `get` this
    /// Pipeline, all named `<name>-api`. `kubectl port-forward svc/<name>-api 8090:80` opens
    /// the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,
}

/// The read API and dashboard of one Pipeline. It reads Redis with the receiver's config
/// and Secret references and writes nothing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Deploy the API. Setting it to false (or removing `api`) removes what it deployed.
    #[serde(default)]
    pub enabled: bool,
    /// Replicas of the API Deployment. It is stateless: any number serve alike.
    #[serde(default = "default_api_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    /// A key of a Secret in the Pipeline's namespace holding a bearer token: every data
    /// route then answers 401 without `Authorization: Bearer <token>` (the dashboard asks
    /// for it). Without it, anyone who reaches the Service reads the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

const fn default_api_replicas() -> i32 {
    1
}

/// What deleting a Pipeline does to the data it created.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeletionPolicy {
    /// Keep the topics Ferry created (and so their records).
    #[default]
    Retain,
    /// Delete the topics Ferry created, through a finalizer on the Pipeline; an `output`
    /// topic also when its stage is removed.
    Delete,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.bootstrapServers) != has(self.strimzi)")
        .message("spec.kafka: set exactly one of bootstrapServers or strimzi"),
    validation = Rule::new("!has(self.createTopic) || has(self.strimzi)")
        .message("spec.kafka.createTopic needs spec.kafka.strimzi: topics are created as Strimzi KafkaTopic resources")
        .field_path(".createTopic"),
)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[^\s,]+:[0-9]{1,5}(,[^\s,]+:[0-9]{1,5})*$")
    )]
    pub bootstrap_servers: Option<String>,
    /// Resolve the bootstrap address from a Strimzi `Kafka` resource's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strimzi: Option<StrimziKafkaRef>,
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// The receiver's consumer group; processors use `<group>:<processor name>`.
    /// Defaults to `ferry:<namespace>:<pipeline name>`: the colon is in no Kubernetes name
    /// and in no group set here, so no two stages share a group unless two Pipelines set the
    /// same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub consumer_group: Option<String>,
    /// Where a new data set starts: `earliest` (the log start) or `latest` (the first record
    /// since the Pipeline was created). Only a data set Redis has no checkpoint of, and whose
    /// group has no offset Ferry committed, uses it; `latest` needs minReplicas of at least 1.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// TLS to the brokers. Present (even empty) means TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// Create a Strimzi `KafkaTopic` for `topic`. Deleting the Pipeline leaves it unless
    /// `spec.deletionPolicy` is `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_topic: Option<CreateTopicSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StrimziKafkaRef {
    /// Name of the `kafkas.kafka.strimzi.io` resource.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub cluster: String,
    /// Namespace of the Kafka resource; the Pipeline's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Name of the listener in the Kafka resource's `status.listeners`.
    #[serde(default = "default_listener")]
    #[schemars(length(min = 1, max = 63))]
    pub listener: String,
}

fn default_listener() -> String {
    "plain".to_owned()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateTopicSpec {
    /// Partitions of the topic.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replicas of each partition; the Kafka cluster's `default.replication.factor` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replicas: Option<i32>,
    /// Topic configuration, e.g. `retention.ms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    6
}

/// A key in a Secret in the Pipeline's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) for client authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// CA certificate that signed the server's certificate; system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<TlsSecretRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    pub mechanism: SaslMechanism,
    #[schemars(length(min = 1, max = 256))]
    pub username: String,
    pub password_secret_ref: SecretKeyRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.host)")
        .message("spec.redis: set exactly one of url or host"),
    validation = Rule::new("!has(self.url) || (!has(self.port) && !has(self.database))")
        .message("spec.redis.port and spec.redis.database go with spec.redis.host; with spec.redis.url put them in the URL")
        .field_path(".url"),
    validation = Rule::new("!has(self.url) || !self.url.matches('^[a-z]+://[^/@]*:[^/@]*@')")
        .message("spec.redis.url must not embed a password: use spec.redis.passwordSecretRef")
        .field_path(".url"),
)]
pub struct RedisSpec {
    /// `redis://host:port/db`, or `rediss://` for TLS. Credentials go in `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^rediss?://[^\s]+$"))]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
    )]
    pub host: Option<String>,
    /// Defaults to 6379.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1023))]
    pub database: Option<i32>,
    /// ACL user name, when Redis uses ACLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// TLS to Redis. Present (even empty) means TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Every key Ferry writes starts with `<keyPrefix>:`.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_.{}-]+$"))]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "ferry".to_owned()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// Where the receiver reads: another stage's output (`{from: <processor>}`) or a topic
    /// (`{topic: <name>}`); `spec.kafka.topic` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<StageInputSpec>,
    #[serde(default)]
    pub storage: StorageSpec,
    /// Records older than this are dead-lettered and counted instead of stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    #[serde(default)]
    pub batch: BatchSpec,
    #[serde(default)]
    pub scaling: ScalingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Worker image; the operator's configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(rename = "type", default)]
    pub kind: StorageKind,
    /// How many values are kept per source key.
    #[serde(default = "default_history_depth")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub history_depth: i32,
    /// Expire a key this long after its last write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// How each record is stored: `bytes` (the default) keeps the value exactly as
    /// received, in the Pipeline's `format`; `json` stores it as a UTF-8 JSON string
    /// `{"ts": <ms>, "values": [...], "text": "..."}` that any Redis client reads without
    /// knowing `dsdata`. `json` needs `format` `dsdata` or `json`, not `raw`.
    #[serde(default)]
    pub encoding: StorageEncoding,
}

fn default_history_depth() -> i32 {
    100
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            kind: StorageKind::List,
            history_depth: default_history_depth(),
            ttl: None,
            encoding: StorageEncoding::Bytes,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_records: i32,
    #[serde(default = "default_max_wait")]
    pub max_wait: HumanDuration,
    /// The most record bytes a batch holds (and about as many again queued before it):
    /// what bounds a stage's memory when records are large. Default 16 MiB.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 65_536, max = 1_073_741_824))]
    pub max_bytes: i32,
}

fn default_max_bytes() -> i32 {
    i32::try_from(ferry_config::config::DEFAULT_BATCH_MAX_BYTES).unwrap_or(i32::MAX)
}

/// Large enough that a backlog drains in few transactions (records of one source coalesce
/// into one `LPUSH`): 2000 doubled the benchmark's records/s over 500. `maxWait` still
/// bounds latency when records trickle in.
fn default_max_records() -> i32 {
    2000
}

fn default_max_wait() -> HumanDuration {
    HumanDuration::from_millis(50)
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_wait: default_max_wait(),
            max_bytes: default_max_bytes(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScalingMode {
    /// The operator sets replicas from the consumer group's lag.
    #[default]
    Auto,
    /// Replicas come from `replicas` (the Pipeline's scale subresource), e.g. `kubectl scale`.
    Manual,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("minReplicas must not exceed maxReplicas")
        .field_path(".minReplicas"),
    validation = Rule::new("duration(self.pollInterval) >= duration('500ms')")
        .message("pollInterval must be at least 500ms")
        .field_path(".pollInterval"),
)]
pub struct ScalingSpec {
    #[serde(default)]
    pub mode: ScalingMode,
    /// Replicas in manual mode; `kubectl scale pipeline/<name>` writes it. Ignored in auto mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target lag per replica: desired = ceil(lag / lagThreshold).
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,
    /// From zero replicas, scale to one only when lag exceeds this.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_lag_threshold: i64,
    /// Scale down to the highest recommendation over this window.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: HumanDuration,
    /// How often the consumer group's lag is read.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_max_replicas() -> i32 {
    10
}

fn default_lag_threshold() -> i64 {
    1000
}

fn default_scale_down_stabilization() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration::from_secs(2)
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            mode: ScalingMode::Auto,
            replicas: None,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_threshold: default_lag_threshold(),
            activation_lag_threshold: 0,
            scale_down_stabilization: default_scale_down_stabilization(),
            poll_interval: default_poll_interval(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.stats), has(self.validate), has(self.enrich)].filter(x, x).size() == 1")
        .message("spec.processors[]: set exactly one of stats, validate or enrich"),
    validation = Rule::new("!has(self.deadLetter) || !has(self.output) || self.deadLetter.topic != self.output.topic")
        .message("spec.processors[].deadLetter.topic must differ from spec.processors[].output.topic")
        .field_path(".deadLetter.topic"),
)]
pub struct ProcessorSpec {
    /// A DNS label, unique within the Pipeline; names the Deployment `<pipeline>-<name>`.
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Where the processor reads: another stage's output (`{from: <processor>}`) or a topic
    /// (`{topic: <name>}`); `spec.kafka.topic` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<StageInputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSpec>,
    /// Produce results to this topic, e.g. for a chained processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
    /// Where invalid or unenrichable records go, with the reason in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    #[serde(default)]
    pub batch: BatchSpec,
    #[serde(default)]
    pub scaling: ScalingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsSpec {
    /// How many of a key's newest values the rolling statistics cover.
    #[serde(default = "default_stats_window")]
    #[schemars(range(min = 1, max = 100_000))]
    pub window: i32,
}

fn default_stats_window() -> i32 {
    60
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidateSpec {
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<ValidationRuleSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRuleSpec {
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub name: String,
    /// E.g. `values[0] IN RANGE 0 100 AND text NOT NULL`.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrichSpec {
    /// Reference data at `<referenceKey>:<source key>`: a sorted set of versions scored by
    /// valid-from time (ms), each member naming a hash.
    #[schemars(length(min = 1, max = 256))]
    pub reference_key: String,
    /// Reference fields copied into the enriched record; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub fields: Vec<String>,
}

/// A stage's input: exactly one of `from` or `topic`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.from) != has(self.topic)")
        .message("input: set exactly one of from or topic"),
    validation = Rule::new("!has(self.format) || has(self.topic)")
        .message("input.format goes with input.topic; a stage read with from takes its source's output format")
        .field_path(".format"),
)]
pub struct StageInputSpec {
    /// A processor of this Pipeline: this stage reads its `output.topic`, in the format that
    /// processor writes (`json` after enrich, its input's format otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub from: Option<String>,
    /// A topic written outside this Pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: Option<String>,
    /// How records on `topic` are encoded; `spec.format` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RecordFormat>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// Have the operator create `topic` when it does not exist: a Strimzi `KafkaTopic` with
    /// `spec.kafka.strimzi`, the Kafka admin API otherwise. The topic stays when the stage or
    /// the Pipeline goes away, unless `spec.deletionPolicy` is `delete`; `status.createdTopics`
    /// lists what Ferry created. Absent: the topic must exist (a stage reading it waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<OutputTopicSpec>,
}

/// How the operator creates a stage's output topic. No CEL rule on `config`'s keys: a
/// regex over map keys of unbounded length exceeds the API server's rule cost budget, and
/// Kafka refuses an unknown key itself (the `TopicAdminFailed` condition names it).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutputTopicSpec {
    /// Partitions of the topic; the source topic's (`spec.kafka.topic`) partition count
    /// when absent, so a chained stage can run as many consumers as the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Replicas of each partition; the Kafka cluster's `default.replication.factor` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replicas: Option<i32>,
    /// Topic configuration, e.g. `retention.ms`; at most 64 entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub config: BTreeMap<String, String>,
}

/// What the operator observed. Conditions follow Strimzi's shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One entry per stage: the receiver first, then each processor.
    #[serde(default)]
    pub stages: Vec<StageStatus>,
    /// `ready/desired` receiver replicas, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<String>,
    /// The receiver's consumer-group lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The receiver's replicas, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The receiver pods' label selector, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// How many stages the Pipeline runs: the receiver and each processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_count: Option<i32>,
    /// The bootstrap address in use, after Strimzi resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// The output topics Ferry created (`output.create`). An entry stays after its stage
    /// is removed, as the topic does: only `spec.deletionPolicy: delete` removes both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_topics: Vec<CreatedTopic>,
}

/// One topic the operator created for a stage's output.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTopic {
    /// The Kafka topic's name.
    pub topic: String,
    /// The stage whose `output.topic` it is, at creation.
    pub stage: String,
    /// The partitions it was created with.
    pub partitions: i32,
    /// How it was created.
    pub via: TopicCreator,
    /// The Strimzi `KafkaTopic` (`namespace/name`) when created through Strimzi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
    /// RFC 3339: when Ferry created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// Who holds the topic Ferry created.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicCreator {
    /// A Strimzi `KafkaTopic`, labelled with the Pipeline (never owned by it).
    KafkaTopic,
    /// The Kafka admin API, from the operator.
    AdminApi,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// `receiver`, or the processor's name.
    pub name: String,
    pub deployment: String,
    pub desired_replicas: i32,
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The topic this stage reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The topic this stage writes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Its own group's lag on its input topic, in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
}
