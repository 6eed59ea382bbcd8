//! Redis writes: how records map to keys and commands, and the transaction that applies a
//! batch together with its checkpoints.
//!
//! # Keys
//! A record from source `S` lives at `{key_prefix}:{storage}:{S}`, e.g. `ferry:list:src-0042`:
//! - `list`: values newest first, trimmed to `history_depth` (`LPUSH` + `LTRIM`);
//! - `stream`: one entry per record with fields `ts` (ms) and `v` (the value), capped by
//!   `XADD MAXLEN ~ history_depth`;
//! - `hash`: fields `ts` and `v` of the last record applied;
//! - `zset`: members are values scored by record timestamp; the `history_depth` highest
//!   scores kept. Two byte-identical records are one member, as sets go.
//!
//! Values are stored exactly as received. With a TTL each touched key gets `EXPIRE`.
//!
//! # Exactly once
//! Each partition has a checkpoint key ([`WorkerConfig::checkpoint_key`]) holding the last
//! offset applied and the Kafka timestamp of the record there ([`Checkpoint`]). A batch is
//! applied by [`RedisSink`] on a connection no one else uses: `WATCH` + `GET` the
//! checkpoints, drop records at or below them, then one `MULTI … EXEC` with the data, the
//! new checkpoints and the `PUBLISH` of the batch event. If any checkpoint changed in
//! between (another worker took the partition), `EXEC` aborts and the batch is re-filtered
//! and retried. So whoever writes, whenever, each offset is applied once; a lost `EXEC`
//! reply is harmless, since the retry finds its checkpoint.
//!
//! The `WATCH` + `GET` of the next batch rides on the round trip of this one's `EXEC`
//! ([`RedisSink::transaction`] with `watch_next`): the checkpoints are read right after
//! `EXEC`, under a `WATCH` that stays set until the next `EXEC`, so the next batch filters
//! by them and goes out in one round trip ([`RedisSink::take_standing`]). Only while
//! nothing else ran on the connection: any other command on it, a failure or a reconnect
//! drops the standing watch, and the next batch reads under a fresh `WATCH` first.
//!
//! Redis rolls nothing back: a command failing inside `EXEC` (`WRONGTYPE` on a key someone
//! else wrote with another type) would leave the checkpoint applied and its record skipped
//! for good. So the first round trip also `WATCH`es the keys the batch writes and checks
//! their `TYPE` ([`RedisSink::watch_and_check`]); a mismatch stops the batch before `MULTI`
//! (the stage goes unready, naming the key) and a type change after the check aborts `EXEC`.
//! Checking under `WATCH` rather than in a script keeps the writes native commands; a key
//! met before is not checked again (`consume::pipeline`), so its batches keep to one round
//! trip.
//!
//! [`WorkerConfig::checkpoint_key`]: crate::config::WorkerConfig::checkpoint_key

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, Value};

use crate::config::{RedisConfig, StorageConfig, StorageKind};

/// How the receiver's storage maps onto Redis.
#[derive(Debug, Clone)]
pub struct StorageLayout {
    pub key_prefix: String,
    pub kind: StorageKind,
    pub history_depth: u32,
    pub ttl: Option<Duration>,
}

impl StorageLayout {
    pub fn new(key_prefix: &str, storage: &StorageConfig) -> Self {
        Self {
            key_prefix: key_prefix.to_owned(),
            kind: storage.kind,
            history_depth: storage.history_depth.max(1),
            ttl: storage.ttl.map(|ttl| ttl.as_duration()),
        }
    }

    /// `{key_prefix}:{storage}:{source}`.
    pub fn data_key(&self, source: &str) -> String {
        format!("{}:{}:{source}", self.key_prefix, storage_name(self.kind))
    }

    /// Where each batch's event is published.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.key_prefix)
    }
}

pub const fn storage_name(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::List => "list",
        StorageKind::Stream => "stream",
        StorageKind::Hash => "hash",
        StorageKind::Zset => "zset",
    }
}

/// One record to store, in partition order. The source id and the value share one
/// allocation: the receiver makes one of these per record, so it is the hot path.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// The source id's bytes, then the value's.
    bytes: Box<[u8]>,
    source_len: usize,
}

impl StoredRecord {
    pub fn new(partition: i32, offset: i64, source: &str, timestamp_ms: i64, value: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(source.len() + value.len());
        bytes.extend_from_slice(source.as_bytes());
        bytes.extend_from_slice(value);
        Self {
            partition,
            offset,
            timestamp_ms,
            bytes: bytes.into_boxed_slice(),
            source_len: source.len(),
        }
    }

    /// The source id (UTF-8, checked when the record was made).
    pub fn source(&self) -> &[u8] {
        self.bytes.get(..self.source_len).unwrap_or_default()
    }

    /// The value exactly as received.
    pub fn value(&self) -> &[u8] {
        self.bytes.get(self.source_len..).unwrap_or_default()
    }
}

/// A batch's Redis commands, and how many data keys they touch.
#[derive(Debug)]
pub struct StorageCommands {
    pub commands: Vec<Cmd>,
    pub keys_touched: usize,
}

/// The commands for `records` (already filtered and in order), coalesced per key:
/// - list: one `LPUSH key v1 … vn` (so vn, the newest, ends up first; only the newest
///   `history_depth` are sent) and one `LTRIM key 0 depth-1`;
/// - stream: one `XADD key MAXLEN ~ depth * ts <ms> v <value>` per record;
/// - hash: one `HSET key ts <ms> v <value>` with the key's last record;
/// - zset: one `ZADD key ts1 v1 … tsn vn` with every record (timestamps need not follow
///   offsets, so any of them may rank among the highest) and one
///   `ZREMRANGEBYRANK key 0 -(depth+1)`;
///
/// then `EXPIRE key ttl` per key with a TTL. Keys come in order of first appearance.
pub fn storage_commands(layout: &StorageLayout, records: &[&StoredRecord]) -> StorageCommands {
    // Each record's key group, numbered by first appearance; a stable sort by group makes
    // each group a contiguous slice with its records in order, with no Vec per key.
    let mut group_of: HashMap<&[u8], usize, FastHash> =
        HashMap::with_capacity_and_hasher(records.len(), FastHash::default());
    let mut order: Vec<(usize, &StoredRecord)> = Vec::with_capacity(records.len());
    for record in records {
        let next = group_of.len();
        let group = *group_of.entry(record.source()).or_insert(next);
        order.push((group, record));
    }
    order.sort_by_key(|(group, _)| *group);
    let key_prefix = format!("{}:{}:", layout.key_prefix, storage_name(layout.kind));
    let depth = layout.history_depth as usize;
    let mut commands = Vec::with_capacity(group_of.len() * 2);
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        let Some((_, first)) = group.first() else {
            continue;
        };
        // The newest `depth` records by offset: all that survive a list's trim.
        let newest = &group[group.len().saturating_sub(depth)..];
        let mut key = Vec::with_capacity(key_prefix.len() + first.source().len());
        key.extend_from_slice(key_prefix.as_bytes());
        key.extend_from_slice(first.source());
        match layout.kind {
            StorageKind::List => {
                // Sized up front: grown one value at a time it reallocated per record.
                let data = newest.iter().map(|(_, r)| r.value().len()).sum::<usize>();
                let mut push = redis::Cmd::with_capacity(newest.len() + 2, data + key.len() + 5);
                push.arg("LPUSH").arg(&key);
                for (_, record) in newest {
                    push.arg(record.value());
                }
                commands.push(push);
                let mut trim = redis::cmd("LTRIM");
                trim.arg(&key)
                    .arg(0)
                    .arg(i64::from(layout.history_depth) - 1);
                commands.push(trim);
            }
            StorageKind::Stream => {
                for (_, record) in group {
                    let mut add = redis::cmd("XADD");
                    add.arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(layout.history_depth)
                        .arg("*")
                        .arg("ts")
                        .arg(record.timestamp_ms)
                        .arg("v")
                        .arg(record.value());
                    commands.push(add);
                }
            }
            StorageKind::Hash => {
                if let Some((_, last)) = group.last() {
                    let mut set = redis::cmd("HSET");
                    set.arg(&key)
                        .arg("ts")
                        .arg(last.timestamp_ms)
                        .arg("v")
                        .arg(last.value());
                    commands.push(set);
                }
            }
            StorageKind::Zset => {
                // Every record: the trim ranks by score, which is not offset order. In
                // offset order, so a repeated member ends with its last record's score.
                let mut add = redis::cmd("ZADD");
                add.arg(&key);
                for (_, record) in group {
                    add.arg(record.timestamp_ms).arg(record.value());
                }
                commands.push(add);
                let mut trim = redis::cmd("ZREMRANGEBYRANK");
                trim.arg(&key)
                    .arg(0)
                    .arg(-(i64::from(layout.history_depth) + 1));
                commands.push(trim);
            }
        }
        if let Some(ttl) = layout.ttl {
            // EXPIRE takes whole seconds; round up so a key never outlives less than asked.
            let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            let mut expire = redis::cmd("EXPIRE");
            expire.arg(&key).arg(seconds.max(1));
            commands.push(expire);
        }
    }
    StorageCommands {
        commands,
        keys_touched: group_of.len(),
    }
}

/// A fast non-cryptographic hasher for per-batch maps whose keys come from the worker's
/// own input partitioning; SipHash showed in the receiver's profile.
pub type FastHash = foldhash::fast::RandomState;

/// How many source ids a batch event names; past it, the event says how many it left out.
pub const EVENT_SOURCES_LIMIT: usize = 100;

/// The compact event published after a batch (the contract is docs/read-api.md):
/// `{"keys":3,"sources":["a","b","c"],"more_sources":0,"records":10,"dead_lettered":1,
/// "offsets":{"0":41,"2":17}}`: how many data keys the batch changed, the source ids of the
/// first [`EVENT_SOURCES_LIMIT`] of them and how many more there were, and the last offset
/// applied per partition.
pub fn batch_event(
    keys: usize,
    sources: &[String],
    records: usize,
    dead_lettered: usize,
    offsets: &BTreeMap<i32, i64>,
) -> String {
    let offsets: serde_json::Map<String, serde_json::Value> = offsets
        .iter()
        .map(|(partition, offset)| (partition.to_string(), (*offset).into()))
        .collect();
    let named = &sources[..sources.len().min(EVENT_SOURCES_LIMIT)];
    serde_json::json!({
        "keys": keys,
        "sources": named,
        "more_sources": keys.saturating_sub(named.len()),
        "records": records,
        "dead_lettered": dead_lettered,
        "offsets": offsets,
    })
    .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid redis.url {url:?}: {source}")]
    InvalidUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("environment variable {var} (redis.password_env) is not set")]
    MissingPassword { var: String },
    #[error("cannot read {key} {path}: {source}")]
    ReadTlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis {operation} failed: {source}")]
    Command {
        operation: &'static str,
        source: redis::RedisError,
    },
    #[error("checkpoint {key} holds {value:?}, not an offset")]
    CorruptCheckpoint { key: String, value: String },
    #[error("Redis {operation} replied with something else than expected: {detail}")]
    UnexpectedReply {
        operation: &'static str,
        detail: String,
    },
}

impl SinkError {
    /// A short stable label for metrics.
    pub const fn operation(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } | Self::MissingPassword { .. } | Self::ReadTlsFile { .. } => {
                "config"
            }
            Self::Connect { .. } => "connect",
            Self::Command { operation, .. } => operation,
            Self::CorruptCheckpoint { .. } => "checkpoint",
            Self::UnexpectedReply { operation, .. } => operation,
        }
    }

    /// Redis refused a command for want of a right (`NOPERM`), or discarded a transaction
    /// because a command was refused when queued (`EXECABORT`, which a refused right
    /// causes): the rights probe says which.
    pub fn is_permission(&self) -> bool {
        match self {
            Self::Command { source, .. } | Self::Connect { source, .. } => {
                matches!(source.code(), Some("NOPERM" | "EXECABORT"))
                    || source.to_string().contains("NOPERM")
            }
            _ => false,
        }
    }
}

/// A Redis client as the config says: the URL, the ACL username, the password from the
/// environment variable the config names, and for `rediss://` the CA (and client
/// certificate) files of `redis.tls`. Connects lazily.
pub fn redis_client(config: &RedisConfig) -> Result<Client, SinkError> {
    let invalid = |source| SinkError::InvalidUrl {
        url: config.url.clone(),
        source,
    };
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(config.url.as_str()).map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    if let Some(var) = &config.password_env {
        let password =
            std::env::var(var).map_err(|_| SinkError::MissingPassword { var: var.clone() })?;
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    let Some(tls) = &config.tls else {
        return Client::open(info).map_err(invalid);
    };
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| SinkError::ReadTlsFile {
            key,
            path: path.display().to_string(),
            source,
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("redis.tls.ca_file", path)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls.cert_file", cert)?,
            client_key: read("redis.tls.key_file", key)?,
        }),
        _ => None,
    };
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(invalid)
}

/// The Redis type (as `TYPE` names it) a storage kind writes.
pub const fn redis_type(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::List => "list",
        StorageKind::Stream => "stream",
        StorageKind::Hash => "hash",
        StorageKind::Zset => "zset",
    }
}

/// A key a batch writes that holds another type: its command would fail inside `EXEC`,
/// where Redis applies the rest (checkpoint included) and rolls nothing back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key} holds a {found}, where the stage writes a {expected}")]
pub struct WrongType {
    pub key: String,
    pub found: String,
    pub expected: &'static str,
}

/// The checkpoints read under `WATCH`, and the keys found holding another type.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub checkpoints: Vec<Option<Checkpoint>>,
    pub wrong_types: Vec<WrongType>,
}

/// What became of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionOutcome {
    /// Applied. Redis does not roll back: commands that failed inside it (say, `WRONGTYPE`
    /// on a key someone else wrote) are listed, the rest took effect.
    Committed { failed_commands: Vec<String> },
    /// A watched checkpoint changed; nothing was applied.
    Aborted,
}

/// A Redis connection owned by one writer, reconnecting after any failure.
///
/// It is not shared: `WATCH` is per connection, and the checkpoint fencing relies on no
/// other traffic running a transaction on it.
pub struct RedisSink {
    client: Client,
    url: String,
    config: AsyncConnectionConfig,
    connection: Option<MultiplexedConnection>,
    /// Checkpoints read under a `WATCH` that is still set: see [`Self::take_standing`].
    standing: Option<StandingWatch>,
}

/// Checkpoint keys `WATCH`ed right after an `EXEC` and what `MGET` read of them then, on
/// the connection that has sent nothing since.
#[derive(Debug, Clone)]
struct StandingWatch {
    keys: Vec<String>,
    checkpoints: Vec<Option<Checkpoint>>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("url", &self.url)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl RedisSink {
    /// Builds the client; the password comes from the environment variable the config
    /// names. Connects lazily.
    pub fn new(config: &RedisConfig, response_timeout: Duration) -> Result<Self, SinkError> {
        let client = redis_client(config)?;
        Ok(Self {
            client,
            url: config.url.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(response_timeout)),
            connection: None,
            standing: None,
        })
    }

    /// The live connection, made on first use or after a failure. Cloning one is cheap.
    async fn connection(&mut self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|source| SinkError::Connect {
                url: self.url.clone(),
                source,
            })?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        operation: &'static str,
        pipeline: &Pipeline,
    ) -> Result<T, SinkError> {
        // Whatever this sends may release or dirty the standing watch.
        self.standing = None;
        let mut connection = self.connection().await?;
        match pipeline.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(source) => {
                // A fresh connection next time: this one may be broken or mid-transaction.
                self.connection = None;
                Err(SinkError::Command { operation, source })
            }
        }
    }

    pub async fn ping(&mut self) -> Result<(), SinkError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("PING");
        self.query::<Vec<Value>>("ping", &pipeline).await.map(drop)
    }

    /// The checkpoints of `keys` (`None` where none was written yet) and the data set's
    /// marker (`data_set_key`), without watching.
    pub async fn read_checkpoints(
        &mut self,
        keys: &[String],
        data_set_key: &str,
    ) -> Result<(Vec<Option<Checkpoint>>, bool), SinkError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("MGET").arg(keys);
        pipeline.cmd("EXISTS").arg(data_set_key);
        let (values, exists): (Vec<Option<String>>, i64) =
            self.query("read_checkpoints", &pipeline).await?;
        Ok((parse_checkpoints(keys, values)?, exists > 0))
    }

    /// Writes what a new data set starts from, unless someone else did first: the marker
    /// with the epoch, and the given partitions' checkpoints (`SET NX`).
    pub async fn start_data_set(
        &mut self,
        data_set_key: &str,
        epoch: &str,
        checkpoints: &[(String, Checkpoint)],
    ) -> Result<(), SinkError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(data_set_key)
            .arg(epoch)
            .arg("NX")
            .ignore();
        for (key, checkpoint) in checkpoints {
            pipeline
                .cmd("SET")
                .arg(key)
                .arg(checkpoint.encode())
                .arg("NX")
                .ignore();
        }
        self.query::<Vec<Value>>("start_data_set", &pipeline)
            .await
            .map(drop)
    }

    /// `WATCH`es the checkpoints and the keys the batch will write, reads the checkpoints
    /// and checks each key's type, in one round trip. A key that holds another type than
    /// the one given (`none` is fine) is reported, so the batch can stop before `MULTI`;
    /// being watched, a key that changes type after the check aborts the next
    /// [`Self::transaction`] instead of failing inside it.
    pub async fn watch_and_check(
        &mut self,
        checkpoint_keys: &[String],
        data_keys: &[(String, &'static str)],
    ) -> Result<Watched, SinkError> {
        let operation = "watch_checkpoints";
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("WATCH")
            .arg(checkpoint_keys)
            .arg(data_keys.iter().map(|(key, _)| key).collect::<Vec<_>>())
            .ignore();
        pipeline.cmd("MGET").arg(checkpoint_keys);
        let typed = checkpoint_keys
            .iter()
            .map(|key| (key, "string"))
            .chain(data_keys.iter().map(|(key, expected)| (key, *expected)));
        for (key, _) in typed.clone() {
            pipeline.cmd("TYPE").arg(key);
        }
        let mut replies: Vec<Value> = self.query(operation, &pipeline).await?;
        let unexpected = |detail: String| SinkError::UnexpectedReply { operation, detail };
        if replies.is_empty() {
            return Err(unexpected("no reply to MGET".to_owned()));
        }
        let types = replies.split_off(1);
        let values: Vec<Option<String>> = replies
            .pop()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|err| unexpected(err.to_string()))?
            .unwrap_or_default();
        let mut wrong_types = Vec::new();
        for ((key, expected), found) in typed.zip(types) {
            let found: String =
                redis::from_redis_value(found).map_err(|err| unexpected(err.to_string()))?;
            if found != "none" && found != expected {
                wrong_types.push(WrongType {
                    key: key.clone(),
                    found,
                    expected,
                });
            }
        }
        Ok(Watched {
            checkpoints: parse_checkpoints(checkpoint_keys, values)?,
            wrong_types,
        })
    }

    /// Whether this user may run `commands`, without running them: `WATCH` and `UNWATCH`
    /// of `watch_key`, then `MULTI`, the commands, `DISCARD`. Redis checks a command's ACL
    /// (command, keys, channel) when it is queued and answers `NOPERM` then; `DISCARD`
    /// drops the queue, so nothing is written or published. `ACL DRYRUN` would say the
    /// same but is an admin command a least-privileged user may not run. Returns what was
    /// refused, each as `COMMAND first-argument: Redis's answer`.
    pub async fn probe(
        &mut self,
        watch_key: &str,
        commands: &[Cmd],
    ) -> Result<Vec<String>, SinkError> {
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        pipeline.cmd("WATCH").arg(watch_key);
        pipeline.cmd("UNWATCH");
        pipeline.cmd("MULTI");
        for command in commands {
            pipeline.add_command(command.clone());
        }
        pipeline.cmd("DISCARD");
        let replies: Vec<Value> = self.query("probe", &pipeline).await?;
        Ok(replies
            .iter()
            .zip(pipeline.cmd_iter())
            .filter_map(|(reply, command)| match reply {
                Value::ServerError(err) if err.code() == "NOPERM" => Some(format!(
                    "{} {}: NOPERM {}",
                    command_name(command),
                    first_argument(command),
                    err.details().unwrap_or_default()
                )),
                _ => None,
            })
            .collect())
    }

    pub async fn unwatch(&mut self) -> Result<(), SinkError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("UNWATCH");
        self.query::<Vec<Value>>("unwatch", &pipeline)
            .await
            .map(drop)
    }

    /// The checkpoints of `keys`, in their order, if the last [`Self::transaction`] left
    /// all of them watched and nothing has been sent since: they are what Redis held after
    /// that `EXEC`, and any change to them since aborts the next `EXEC`, so a batch may
    /// filter by them as by a fresh `WATCH` + `MGET`. Taken once; `None` otherwise.
    pub fn take_standing(&mut self, keys: &[String]) -> Option<Vec<Option<Checkpoint>>> {
        let standing = self.standing.take()?;
        keys.iter()
            .map(|key| {
                let at = standing.keys.iter().position(|watched| watched == key)?;
                Some(standing.checkpoints[at])
            })
            .collect()
    }

    /// Runs `commands` as one pipelined `MULTI … EXEC`; then, in the same round trip,
    /// `WATCH`es `watch_next` and reads them, for [`Self::take_standing`]. An aborted
    /// `EXEC` leaves them watched and read too, so its retry is one round trip as well.
    pub async fn transaction(
        &mut self,
        commands: Vec<Cmd>,
        watch_next: &[String],
    ) -> Result<TransactionOutcome, SinkError> {
        let operation = "transaction";
        let queued = commands.len();
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        pipeline.cmd("MULTI");
        for command in commands {
            pipeline.add_command(command);
        }
        pipeline.cmd("EXEC");
        if !watch_next.is_empty() {
            pipeline.cmd("WATCH").arg(watch_next);
            pipeline.cmd("MGET").arg(watch_next);
        }
        let mut replies: Vec<Value> = self.query(operation, &pipeline).await?;
        let unexpected = |detail: String| SinkError::UnexpectedReply { operation, detail };
        if replies.len() != pipeline.len() {
            return Err(unexpected(format!(
                "{} replies to {} commands",
                replies.len(),
                pipeline.len()
            )));
        }
        let next = replies.split_off(queued + 2);
        let exec = replies.pop();
        // A command refused when queued (`NOPERM`) discards the transaction: report the
        // refusal itself, as the rights probe names it.
        if let Some(Value::ServerError(refused)) = replies
            .iter()
            .find(|reply| matches!(reply, Value::ServerError(_)))
        {
            return Err(SinkError::Command {
                operation,
                source: refused.clone().into(),
            });
        }
        let outcome = match exec {
            Some(Value::Nil) => TransactionOutcome::Aborted,
            Some(Value::Array(results)) => TransactionOutcome::Committed {
                failed_commands: results
                    .iter()
                    .zip(pipeline.cmd_iter().skip(1))
                    .filter_map(|(reply, command)| match reply {
                        Value::ServerError(err) => {
                            Some(format!("{}: {err:?}", command_name(command)))
                        }
                        _ => None,
                    })
                    .collect(),
            },
            Some(Value::ServerError(err)) => {
                return Err(SinkError::Command {
                    operation,
                    source: err.into(),
                });
            }
            other => return Err(unexpected(format!("EXEC answered {other:?}"))),
        };
        let mut next = next.into_iter();
        if let (Some(Value::Okay), Some(read)) = (next.next(), next.next())
            && let Ok(values) = redis::from_redis_value::<Vec<Option<String>>>(read)
            && let Ok(checkpoints) = parse_checkpoints(watch_next, values)
        {
            self.standing = Some(StandingWatch {
                keys: watch_next.to_vec(),
                checkpoints,
            });
        }
        Ok(outcome)
    }
}

fn command_name(command: &Cmd) -> String {
    match command.args_iter().next() {
        Some(redis::Arg::Simple(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => "?".to_owned(),
    }
}

/// A command's first argument (its key or channel), cut short for a message.
fn first_argument(command: &Cmd) -> String {
    match command.args_iter().nth(1) {
        Some(redis::Arg::Simple(bytes)) => {
            let text = String::from_utf8_lossy(bytes);
            text.chars().take(200).collect()
        }
        _ => String::new(),
    }
}

/// What a checkpoint key holds: the last offset of its partition that a transaction
/// applied, and the Kafka timestamp of the record at that offset. The timestamp tells the
/// topic's incarnations apart: after a topic is deleted and created again, the record at the
/// same offset (if there is one) has another timestamp (docs/exactly-once.md).
///
/// Written `{offset}@{timestamp}`; a bare `{offset}` (an earlier layout, or a start position
/// no record is known at) carries no timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

impl Checkpoint {
    pub fn encode(&self) -> String {
        match self.timestamp_ms {
            Some(timestamp) => format!("{}@{timestamp}", self.offset),
            None => self.offset.to_string(),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (offset, timestamp_ms) = match text.split_once('@') {
            Some((offset, timestamp)) => (offset, Some(timestamp.parse().ok()?)),
            None => (text, None),
        };
        Some(Self {
            offset: offset.parse().ok()?,
            timestamp_ms,
        })
    }
}

fn parse_checkpoints(
    keys: &[String],
    values: Vec<Option<String>>,
) -> Result<Vec<Option<Checkpoint>>, SinkError> {
    keys.iter()
        .zip(values)
        .map(|(key, value)| match value {
            None => Ok(None),
            Some(text) => {
                Checkpoint::parse(&text)
                    .map(Some)
                    .ok_or_else(|| SinkError::CorruptCheckpoint {
                        key: key.clone(),
                        value: text,
                    })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;

    #[test]
    fn checkpoints_round_trip_with_and_without_a_timestamp() {
        for checkpoint in [
            Checkpoint {
                offset: 41,
                timestamp_ms: Some(1_700_000_000_123),
            },
            Checkpoint {
                offset: 7,
                timestamp_ms: None,
            },
            Checkpoint {
                offset: -1,
                timestamp_ms: Some(-1),
            },
        ] {
            assert_eq!(Checkpoint::parse(&checkpoint.encode()), Some(checkpoint));
        }
        assert_eq!(Checkpoint::parse("12").map(|c| c.offset), Some(12));
        assert_eq!(Checkpoint::parse("12@x"), None);
        assert_eq!(Checkpoint::parse("x"), None);
    }

    fn layout(kind: StorageKind, depth: u32, ttl: Option<u64>) -> StorageLayout {
        StorageLayout::new(
            "ferry",
            &StorageConfig {
                kind,
                history_depth: depth,
                ttl: ttl.map(HumanDuration::from_millis),
                encoding: crate::config::StorageEncoding::Bytes,
            },
        )
    }

    fn record(offset: i64, source: &str, value: &str) -> StoredRecord {
        StoredRecord::new(0, offset, source, 1000 + offset, value.as_bytes())
    }

    /// The commands for `records`, as text.
    fn render(layout: &StorageLayout, records: &[StoredRecord]) -> Vec<String> {
        let records: Vec<&StoredRecord> = records.iter().collect();
        let storage = storage_commands(layout, &records);
        assert_eq!(
            storage.keys_touched,
            records
                .iter()
                .map(|r| r.source())
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
        storage
            .commands
            .iter()
            .map(|cmd| {
                cmd.args_iter()
                    .map(|arg| match arg {
                        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                        _ => "<cursor>".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn batch() -> Vec<StoredRecord> {
        vec![
            record(1, "a", "a1"),
            record(2, "b", "b1"),
            record(3, "a", "a2"),
            record(4, "a", "a3"),
        ]
    }

    #[test]
    fn a_stored_record_splits_back_into_source_and_value() {
        let record = StoredRecord::new(3, 7, "src-0042", 5, b"\x00value");
        assert_eq!(
            (record.source(), record.value()),
            (&b"src-0042"[..], &b"\x00value"[..])
        );
        let empty = StoredRecord::new(0, 0, "k", 0, b"");
        assert_eq!((empty.source(), empty.value()), (&b"k"[..], &b""[..]));
    }

    #[test]
    fn list_pushes_once_per_key_newest_last_and_trims() {
        assert_eq!(
            render(&layout(StorageKind::List, 100, None), &batch()),
            [
                "LPUSH ferry:list:a a1 a2 a3",
                "LTRIM ferry:list:a 0 99",
                "LPUSH ferry:list:b b1",
                "LTRIM ferry:list:b 0 99",
            ]
        );
    }

    #[test]
    fn list_sends_only_what_survives_the_trim() {
        assert_eq!(
            render(&layout(StorageKind::List, 2, Some(1500)), &batch()),
            [
                "LPUSH ferry:list:a a2 a3",
                "LTRIM ferry:list:a 0 1",
                "EXPIRE ferry:list:a 2",
                "LPUSH ferry:list:b b1",
                "LTRIM ferry:list:b 0 1",
                "EXPIRE ferry:list:b 2",
            ]
        );
    }

    #[test]
    fn stream_adds_every_record() {
        assert_eq!(
            render(&layout(StorageKind::Stream, 10, None), &batch()[..2]),
            [
                "XADD ferry:stream:a MAXLEN ~ 10 * ts 1001 v a1",
                "XADD ferry:stream:b MAXLEN ~ 10 * ts 1002 v b1",
            ]
        );
    }

    #[test]
    fn hash_keeps_the_last_value() {
        assert_eq!(
            render(&layout(StorageKind::Hash, 1, Some(60_000)), &batch()),
            [
                "HSET ferry:hash:a ts 1004 v a3",
                "EXPIRE ferry:hash:a 60",
                "HSET ferry:hash:b ts 1002 v b1",
                "EXPIRE ferry:hash:b 60",
            ]
        );
    }

    #[test]
    fn zset_scores_by_timestamp_and_trims_by_rank() {
        assert_eq!(
            render(&layout(StorageKind::Zset, 5, None), &batch()),
            [
                "ZADD ferry:zset:a 1001 a1 1003 a2 1004 a3",
                "ZREMRANGEBYRANK ferry:zset:a 0 -6",
                "ZADD ferry:zset:b 1002 b1",
                "ZREMRANGEBYRANK ferry:zset:b 0 -6",
            ]
        );
    }

    #[test]
    fn zset_adds_every_record_of_the_batch_whatever_its_timestamp() {
        // Newest by offset is not highest by score: a1 (offset 1) outranks a3.
        let records = vec![
            StoredRecord::new(0, 1, "a", 9_000, b"a1"),
            StoredRecord::new(0, 2, "a", 1_000, b"a2"),
            StoredRecord::new(0, 3, "a", 2_000, b"a3"),
        ];
        assert_eq!(
            render(&layout(StorageKind::Zset, 1, None), &records),
            [
                "ZADD ferry:zset:a 9000 a1 1000 a2 2000 a3",
                "ZREMRANGEBYRANK ferry:zset:a 0 -2",
            ]
        );
    }

    #[test]
    fn event_is_compact_json() {
        let offsets = BTreeMap::from([(0, 41), (2, 17)]);
        let sources = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(
            batch_event(3, &sources, 10, 1, &offsets),
            r#"{"dead_lettered":1,"keys":3,"more_sources":0,"offsets":{"0":41,"2":17},"records":10,"sources":["a","b","c"]}"#
        );
    }

    #[test]
    fn event_names_sources_up_to_the_limit_then_counts() {
        let sources: Vec<String> = (0..250).map(|i| format!("s{i}")).collect();
        let event: serde_json::Value =
            serde_json::from_str(&batch_event(250, &sources, 250, 0, &BTreeMap::new())).unwrap();
        assert_eq!(
            event["sources"].as_array().unwrap().len(),
            EVENT_SOURCES_LIMIT
        );
        assert_eq!(event["more_sources"], 150);
    }
}
