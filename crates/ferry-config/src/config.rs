//! The worker's configuration: the one contract between the operator, which renders it into
//! a ConfigMap, and the worker, which loads it at start.
//!
//! Secrets never appear here. The config names the environment variable that carries a
//! secret (filled from a Secret by the pod spec), never the secret itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// Environment variables starting with this prefix override config keys:
/// `FERRY__KAFKA__BOOTSTRAP_SERVERS=host:9092` sets `kafka.bootstrap_servers`.
pub const ENV_OVERRIDE_PREFIX: &str = "FERRY__";
/// The environment variable the pod spec fills from the Redis password Secret.
pub const REDIS_PASSWORD_ENV: &str = "FERRY_REDIS_PASSWORD";
/// The environment variable the pod spec fills from the Kafka SASL password Secret.
pub const KAFKA_SASL_PASSWORD_ENV: &str = "FERRY_KAFKA_SASL_PASSWORD";
/// Where the operator mounts Secret-provided TLS material inside worker pods.
pub const TLS_MOUNT_DIR: &str = "/etc/ferry/tls";
/// The receiver's stage name, in checkpoint keys; no processor may take it.
pub const RECEIVER_STAGE: &str = "receiver";

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The Pipeline this worker belongs to, for logs and metrics labels.
    pub pipeline: String,
    /// The data set's epoch: the Pipeline's UID when the operator writes the config. Stored
    /// offsets carry it in their commit metadata, so a group whose commits name this epoch
    /// while Redis holds no checkpoint means Redis lost data (the partition is replayed), and
    /// commits of another epoch mean a new data set reusing the group (docs/exactly-once.md).
    /// Absent: the data set's identity (key prefix, stage, topic) stands in for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub format: RecordFormat,
    #[serde(default)]
    pub http: HttpConfig,
    /// Written `stage: {receiver: ...}`: serde_yaml 0.9 wants `!receiver` tags otherwise.
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "StageConfig")]
    pub stage: StageConfig,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// Ferry's compact binary data-source record; see `record::dsdata`.
    #[default]
    Dsdata,
    /// `{"ts": <ms since epoch>, "values": [floats], "text": "..."}`.
    Json,
    /// Opaque bytes, stored as received; the Kafka record timestamp is the record's time.
    Raw,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

impl OffsetReset {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    /// The consumer group of this stage; each stage has its own so it scales by its own lag.
    pub consumer_group: String,
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// With `latest`, a new data set starts at the first record at or after this time (ms
    /// since the epoch; the operator writes the Pipeline's creation time), not at the log
    /// end when the stage first runs: records produced while its pods start are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_from_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
}

/// TLS material as files mounted from Secrets.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA bundle to verify the server; the system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Name of the environment variable holding the password.
    pub password_env: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` for TLS. Never carries a password.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Name of the environment variable holding the password, when Redis needs AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Every key Ferry writes starts with this prefix and a colon.
    pub key_prefix: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serves `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The read API's binary in the worker image, whose entrypoint is `ferry-worker`: the API's
/// pods name it as their command.
pub const API_COMMAND: &str = "/usr/local/bin/ferry-api";

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_HTTP_PORT)),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StageConfig {
    Receiver(ReceiverConfig),
    Processor(ProcessorConfig),
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub storage: StorageConfig,
    /// Records older than this are dead-lettered and counted instead of stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    pub batch: BatchConfig,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Newest first, trimmed to the history depth.
    #[default]
    List,
    /// `XADD ... MAXLEN ~ historyDepth`.
    Stream,
    /// The latest value per key.
    Hash,
    /// Scored by record timestamp, trimmed by rank to the history depth.
    Zset,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(rename = "type")]
    pub kind: StorageKind,
    pub history_depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// How a record's value is stored. Left out of a rendered config at its default, so a
    /// worker older than the operator still loads it.
    #[serde(default, skip_serializing_if = "StorageEncoding::is_bytes")]
    pub encoding: StorageEncoding,
}

/// How the receiver stores a record's value (docs/read-api.md).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageEncoding {
    /// The value's bytes exactly as received, in the Pipeline's `format`.
    #[default]
    Bytes,
    /// A UTF-8 JSON string `{"ts": <ms>, "values": [floats], "text": "..."}`, whatever the
    /// `format`, so any language reads it with a plain Redis client. Not for `format: raw`,
    /// which has no fields to write.
    Json,
}

impl StorageEncoding {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Json => "json",
        }
    }

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
    fn is_bytes(&self) -> bool {
        *self == Self::Bytes
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub topic: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: u32,
    pub max_wait: HumanDuration,
    /// The most record bytes (keys and values) a batch holds, and about as many again the
    /// channel before it: what bounds a stage's memory when records are large.
    /// Left out of a rendered config at its default, so a worker older than the operator
    /// still loads it.
    #[serde(
        default = "default_batch_max_bytes",
        skip_serializing_if = "is_default_batch_max_bytes"
    )]
    pub max_bytes: u32,
}

/// 16 MiB: a batch of the largest valid dsdata records (36,880 bytes) is cut at about 450.
pub const DEFAULT_BATCH_MAX_BYTES: u32 = 16 * 1024 * 1024;

fn default_batch_max_bytes() -> u32 {
    DEFAULT_BATCH_MAX_BYTES
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_default_batch_max_bytes(value: &u32) -> bool {
    *value == DEFAULT_BATCH_MAX_BYTES
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 2000,
            max_wait: HumanDuration::from_millis(50),
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub name: String,
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "ProcessorKind")]
    pub kind: ProcessorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    #[serde(default)]
    pub batch: BatchConfig,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorKind {
    Stats(StatsConfig),
    Validate(ValidateConfig),
    Enrich(EnrichConfig),
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// How many of a key's most recent values the rolling statistics cover.
    pub window: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    pub rules: Vec<ValidationRule>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidationRule {
    pub name: String,
    /// An expression in the rule language, e.g. `values[0] IN RANGE 0 100 AND text NOT NULL`.
    pub expression: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Reference data lives at `{reference_key}:{source key}`: a sorted set of versions
    /// scored by their valid-from timestamp, each naming a hash of fields.
    pub reference_key: String,
    /// The reference fields copied into the enriched record; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub topic: String,
}

/// A config problem, reported as one line that names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: `{key}`: {message}")]
    Parse {
        origin: String,
        key: String,
        message: String,
    },
    #[error("config override {var}: {message}")]
    Override { var: String, message: String },
    #[error("config: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl WorkerConfig {
    /// Reads the file, applies `FERRY__*` environment overrides, then checks the values.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_with_overrides(&text, &path.display().to_string(), std::env::vars())
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with_overrides(text, "text", std::iter::empty())
    }

    pub fn from_yaml_with_overrides(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|err| ConfigError::Parse {
                origin: origin.to_owned(),
                key: err
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column()))
                    .unwrap_or_else(|| "(document)".to_owned()),
                message: err.to_string(),
            })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_OVERRIDE_PREFIX))
            .collect();
        overrides.sort();
        for (var, raw) in overrides {
            apply_override(&mut value, &var, &raw)?;
        }
        let config: WorkerConfig =
            serde_path_to_error::deserialize(value).map_err(|err| ConfigError::Parse {
                origin: origin.to_owned(),
                key: err.path().to_string(),
                message: err.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }

    /// Checks what the types alone cannot. The CRD enforces the same bounds at admission;
    /// this guards hand-written configs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers", "must not be empty");
        }
        if self.kafka.topic.trim().is_empty() {
            return invalid("kafka.topic", "must not be empty");
        }
        if self.kafka.consumer_group.trim().is_empty() {
            return invalid("kafka.consumer_group", "must not be empty");
        }
        if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://")) {
            return invalid("redis.url", "must start with redis:// or rediss://");
        }
        if url_has_password(&self.redis.url) {
            return invalid(
                "redis.url",
                "must not embed a password; set redis.password_env instead",
            );
        }
        if let Some(problem) = redis_url_problem(&self.redis.url) {
            return invalid("redis.url", problem);
        }
        match &self.stage {
            StageConfig::Receiver(receiver) => {
                if receiver.storage.history_depth == 0 {
                    return invalid("stage.receiver.storage.history_depth", "must be at least 1");
                }
                if receiver.batch.max_records == 0 {
                    return invalid("stage.receiver.batch.max_records", "must be at least 1");
                }
                if receiver.storage.encoding == StorageEncoding::Json
                    && self.format == RecordFormat::Raw
                {
                    return invalid(
                        "stage.receiver.storage.encoding",
                        "`json` needs a format with fields (dsdata or json), not raw",
                    );
                }
            }
            StageConfig::Processor(processor) => {
                // The name is a part of the stage's keys (`{prefix}:counters:{name}:{key}`):
                // a colon or the receiver's name would let two stages share keys.
                if processor.name.is_empty()
                    || processor.name == RECEIVER_STAGE
                    || processor.name.contains(':')
                {
                    return invalid(
                        "stage.processor.name",
                        "must be non-empty, without a colon, and not `receiver`",
                    );
                }
                if processor.batch.max_records == 0 {
                    return invalid("stage.processor.batch.max_records", "must be at least 1");
                }
                match &processor.kind {
                    ProcessorKind::Stats(stats) if stats.window == 0 => {
                        return invalid("stage.processor.kind.stats.window", "must be at least 1");
                    }
                    ProcessorKind::Validate(validate) if validate.rules.is_empty() => {
                        return invalid(
                            "stage.processor.kind.validate.rules",
                            "must hold at least one rule",
                        );
                    }
                    // The operator refuses a broken rule at reconcile, as the worker would at
                    // start: both use this crate's parser.
                    ProcessorKind::Validate(validate) => {
                        for (index, rule) in validate.rules.iter().enumerate() {
                            if let Err(err) = crate::rules::parse(&rule.expression) {
                                return Err(ConfigError::Invalid {
                                    key: format!(
                                        "stage.processor.kind.validate.rules[{index}].expression"
                                    ),
                                    message: format!(
                                        "rule `{}` does not parse {err}: {}",
                                        rule.name, rule.expression
                                    ),
                                });
                            }
                        }
                    }
                    ProcessorKind::Enrich(enrich) if enrich.reference_key.is_empty() => {
                        return invalid(
                            "stage.processor.kind.enrich.reference_key",
                            "must not be empty",
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The stage's name: `receiver`, or the processor's name (which may not be `receiver`).
    pub fn stage_name(&self) -> &str {
        match &self.stage {
            StageConfig::Receiver(_) => RECEIVER_STAGE,
            StageConfig::Processor(processor) => &processor.name,
        }
    }

    /// The checkpoint key of one partition, written in the same transaction as the data:
    /// `{prefix}:ckpt:{stage}:{topic}:{partition}`. Keyed by the data set (the keys a stage
    /// writes from a topic), not by consumer group: renaming a group, or two groups writing
    /// one data set, cannot apply a record twice. Neither a stage name nor a topic name can
    /// hold a colon, so no two data sets share a key.
    pub fn checkpoint_key(&self, partition: i32) -> String {
        format!("{}:{partition}", self.checkpoint_key_base())
    }

    /// Marks that the data set exists in Redis (holds the epoch that started it): a
    /// partition without a checkpoint in an existing data set starts at its beginning.
    pub fn data_set_key(&self) -> String {
        format!("{}:data-set", self.checkpoint_key_base())
    }

    /// The stage's dead-letter counts, a hash of reason label to count, incremented in the
    /// batch transaction: `{prefix}:dead-letters:{stage}`.
    pub fn dead_letters_key(&self) -> String {
        dead_letters_key(&self.redis.key_prefix, self.stage_name())
    }

    fn checkpoint_key_base(&self) -> String {
        format!(
            "{}:ckpt:{}:{}",
            self.redis.key_prefix,
            self.stage_name(),
            self.kafka.topic
        )
    }

    /// The epoch stored offsets carry (see [`WorkerConfig::epoch`]).
    pub fn data_set_epoch(&self) -> String {
        self.epoch.clone().unwrap_or_else(|| {
            format!(
                "{}/{}/{}",
                self.redis.key_prefix,
                self.stage_name(),
                self.kafka.topic
            )
        })
    }
}

/// `{prefix}:dead-letters:{stage}`: see [`WorkerConfig::dead_letters_key`].
pub fn dead_letters_key(key_prefix: &str, stage: &str) -> String {
    format!("{key_prefix}:dead-letters:{stage}")
}

/// True when a Redis URL carries `user:password@` credentials.
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// What is wrong with the shape of a `redis://` or `rediss://` URL, if anything: it needs
/// a host, a numeric port when one is given, and a numeric database when one is given.
/// Checked here so a typo fails at start as a config error, not later as a connect error.
fn redis_url_problem(url: &str) -> Option<&'static str> {
    let rest = url
        .strip_prefix("rediss://")
        .or_else(|| url.strip_prefix("redis://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Some("has an unclosed `[` in its host"),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Some("has no host; write redis://host:port/db");
    }
    if port.is_some_and(|port| !port.parse::<u16>().is_ok_and(|port| port != 0)) {
        return Some("port must be a number from 1 to 65535");
    }
    let database = path.split('?').next().unwrap_or_default();
    if !database.is_empty() && database.parse::<u32>().is_err() {
        return Some("database (the path) must be a number, as in redis://host:6379/0");
    }
    None
}

fn apply_override(root: &mut serde_yaml::Value, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_OVERRIDE_PREFIX.len()..]
        .split("__")
        .map(str::to_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Override {
            var: var.to_owned(),
            message: "empty key segment; use FERRY__SECTION__KEY".to_owned(),
        });
    }
    // A scalar parsed as YAML, so numbers and booleans keep their type.
    let parsed: serde_yaml::Value =
        serde_yaml::from_str(raw).unwrap_or_else(|_| serde_yaml::Value::String(raw.to_owned()));
    let mut node = root;
    for (depth, segment) in path.iter().enumerate() {
        let map = match node {
            serde_yaml::Value::Mapping(map) => map,
            _ => {
                return Err(ConfigError::Override {
                    var: var.to_owned(),
                    message: format!("`{}` is not a section", path[..depth].join(".")),
                });
            }
        };
        let key = serde_yaml::Value::String(segment.clone());
        if depth + 1 == path.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        node = map
            .entry(key)
            .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVER: &str = r#"
pipeline: demo
kafka:
  bootstrap_servers: 127.0.0.1:19092
  topic: sensors
  consumer_group: demo-receiver
redis:
  url: redis://127.0.0.1:16379/0
  key_prefix: ferry
format: dsdata
stage:
  receiver:
    storage: {type: list, history_depth: 100}
    batch: {max_records: 500, max_wait: 50ms}
"#;

    #[test]
    fn loads_a_receiver_config_with_defaults() {
        let config = WorkerConfig::from_yaml(RECEIVER).unwrap();
        assert_eq!(config.kafka.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(config.http.listen.port(), DEFAULT_HTTP_PORT);
        assert_eq!(config.checkpoint_key(3), "ferry:ckpt:receiver:sensors:3");
        assert_eq!(
            config.data_set_key(),
            "ferry:ckpt:receiver:sensors:data-set"
        );
        assert_eq!(config.data_set_epoch(), "ferry/receiver/sensors");
        let StageConfig::Receiver(receiver) = &config.stage else {
            panic!("expected a receiver stage");
        };
        assert_eq!(receiver.batch.max_wait, HumanDuration::from_millis(50));
    }

    #[test]
    fn round_trips_through_yaml() {
        let config = WorkerConfig::from_yaml(RECEIVER).unwrap();
        let again = WorkerConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn env_overrides_replace_nested_keys_and_keep_types() {
        let env = [
            (
                "FERRY__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "broker:9092".to_owned(),
            ),
            (
                "FERRY__STAGE__RECEIVER__BATCH__MAX_RECORDS".to_owned(),
                "42".to_owned(),
            ),
            (
                "FERRY_REDIS_PASSWORD".to_owned(),
                "not-an-override".to_owned(),
            ),
        ];
        let config = WorkerConfig::from_yaml_with_overrides(RECEIVER, "test", env).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "broker:9092");
        let StageConfig::Receiver(receiver) = &config.stage else {
            panic!("expected a receiver stage");
        };
        assert_eq!(receiver.batch.max_records, 42);
    }

    #[test]
    fn errors_name_the_key() {
        let broken = RECEIVER.replace("history_depth: 100", "history_depth: lots");
        let err = WorkerConfig::from_yaml(&broken).unwrap_err().to_string();
        assert!(
            err.contains("stage.receiver.storage.history_depth"),
            "{err}"
        );

        let unknown = RECEIVER.replace("topic: sensors", "topic: sensors\n  topik: typo");
        let err = WorkerConfig::from_yaml(&unknown).unwrap_err().to_string();
        assert!(err.contains("kafka") && err.contains("topik"), "{err}");

        let zero = RECEIVER.replace("history_depth: 100", "history_depth: 0");
        let err = WorkerConfig::from_yaml(&zero).unwrap_err().to_string();
        assert!(
            err.contains("stage.receiver.storage.history_depth"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn rejects_passwords_in_redis_urls() {
        assert!(url_has_password("redis://user:secret@host:6379/0"));
        assert!(url_has_password("rediss://:secret@host"));
        assert!(!url_has_password("redis://user@host:6379/0"));
        assert!(!url_has_password("redis://host:6379/0"));
        let leaky = RECEIVER.replace("redis://127.0.0.1", "redis://:hunter2@127.0.0.1");
        let err = WorkerConfig::from_yaml(&leaky).unwrap_err().to_string();
        assert!(
            err.contains("redis.url") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn checks_the_shape_of_redis_urls() {
        for good in [
            "redis://127.0.0.1:16379/0",
            "redis://host",
            "rediss://user@host:6380/2",
            "redis://[::1]:6379/0?protocol=resp3",
            "redis://host/",
        ] {
            assert_eq!(redis_url_problem(good), None, "{good}");
        }
        for bad in [
            "redis://",
            "redis://:6379/0",
            "redis://host:port/0",
            "redis://host:0",
            "redis://host:99999",
            "redis://host:6379/zero",
            "redis://[::1/0",
        ] {
            assert!(redis_url_problem(bad).is_some(), "{bad}");
        }
    }
}
