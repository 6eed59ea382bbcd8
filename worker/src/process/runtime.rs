//! The processor's Kafka and Redis loop; see the module docs of [`crate::process`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::MultiplexedConnection;

use crate::backoff::Backoff;
use crate::config::{KafkaConfig, ProcessorConfig, ProcessorKind, StageConfig, WorkerConfig};
use crate::consume::{self, ConsumeError, Shutdown};
use crate::http::{self, HttpError, Readiness};
use crate::metrics::Metrics;
use crate::record::{self, DataRecord};
use crate::sink::{RedisSink, SinkError, TransactionOutcome, WrongType};

use super::enrich::{self, EnrichedRecord, Version};
use super::rules::{LookupSource, RecordView};
use super::stats;
use super::validate::{self, RuleError, RuleSet, TOTAL_COUNTERS};

pub const HEADER_SOURCE_PARTITION: &str = "ferry-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "ferry-source-offset";
pub const HEADER_REASON: &str = "ferry-reason";

/// How long produced records may wait for delivery before the batch is retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka group session timeout: how soon a crashed processor's partitions move.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Redis replies slower than this fail the attempt, which is retried.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that stop the processor. Transient batch failures are retried, not returned.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("`ferry-worker process` needs a `stage.processor` config, found a receiver stage")]
    NotAProcessor,
    #[error(transparent)]
    ParseRule(#[from] RuleError),
    #[error(transparent)]
    Kafka(#[from] ConsumeError),
    #[error(transparent)]
    Redis(#[from] SinkError),
    #[error("cannot create the Kafka {role}: {source}")]
    CreateKafkaClient {
        role: &'static str,
        source: KafkaError,
    },
    #[error("cannot subscribe to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// A failed attempt at a batch; the batch is retried.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("Redis {operation}: {source}")]
    Redis {
        operation: &'static str,
        source: redis::RedisError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("produce to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    /// Writing would fail inside `EXEC` while the checkpoint lands: the batch stops,
    /// unapplied, until the key is fixed.
    #[error("batch blocked: {0}")]
    WrongType(WrongType),
}

impl BatchError {
    fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { operation, source }
    }
}

/// Runs the processor of `config` until `shutdown` is triggered.
pub async fn run(config: WorkerConfig, mut shutdown: Shutdown) -> Result<(), ProcessError> {
    let StageConfig::Processor(processor_config) = &config.stage else {
        return Err(ProcessError::NotAProcessor);
    };
    // Rules parse before anything connects, so a bad rule fails the start at once.
    let processor = Processor::new(processor_config)?;
    let metrics = Metrics::new(&config.pipeline);
    let readiness = Readiness::default();
    let _http = http::spawn(config.http.listen, metrics.clone(), readiness.clone()).await?;
    let mut sink = RedisSink::new(&config.redis, REDIS_TIMEOUT)?;
    // `/readyz` needs Redis too, and a processor on a quiet topic writes no batch to prove it.
    if !wait_for_redis(&mut sink, &readiness, &mut shutdown).await {
        return Ok(());
    }
    let reader = redis_reader(&config)?;
    let consumer = create_consumer(&config.kafka, readiness.clone())?;
    let producer = create_producer(&config.kafka)?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .map_err(|source| ProcessError::Subscribe {
            topic: config.kafka.topic.clone(),
            source,
        })?;
    tracing::info!(
        pipeline = %config.pipeline,
        processor = %processor_config.name,
        topic = %config.kafka.topic,
        group = %config.kafka.consumer_group,
        "processor started"
    );
    let mut stage = Stage {
        checkpoint_keys: CheckpointKeys(config.clone()),
        config: processor_config.clone(),
        key_prefix: config.redis.key_prefix.clone(),
        format: config.format,
        topic: config.kafka.topic.clone(),
        processor,
        consumer,
        producer,
        sink,
        reader,
        reads: None,
        metrics,
        readiness,
    };
    stage.run(shutdown).await;
    Ok(())
}

/// Pings Redis with backoff until it answers; false when shutdown came first.
async fn wait_for_redis(
    sink: &mut RedisSink,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
) -> bool {
    let mut backoff = Backoff::DEFAULT;
    loop {
        match sink.ping().await {
            Ok(()) => {
                readiness.set_redis_connected(true);
                return true;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "Redis is not reachable yet");
                tokio::select! {
                    biased;
                    () = shutdown.wait() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

struct CheckpointKeys(WorkerConfig);

impl CheckpointKeys {
    fn key(&self, partition: i32) -> String {
        self.0.checkpoint_key(partition)
    }
}

/// What the processor computes, built once at start.
enum Processor {
    Stats {
        window: u32,
    },
    Validate {
        rules: RuleSet,
    },
    Enrich {
        reference_key: String,
        fields: Vec<String>,
    },
}

impl Processor {
    fn new(config: &ProcessorConfig) -> Result<Self, RuleError> {
        Ok(match &config.kind {
            ProcessorKind::Stats(stats) => Self::Stats {
                window: stats.window,
            },
            ProcessorKind::Validate(validate) => Self::Validate {
                rules: RuleSet::compile(&validate.rules)?,
            },
            ProcessorKind::Enrich(enrich) => Self::Enrich {
                reference_key: enrich.reference_key.clone(),
                fields: enrich.fields.clone(),
            },
        })
    }
}

struct Stage {
    checkpoint_keys: CheckpointKeys,
    config: ProcessorConfig,
    key_prefix: String,
    format: crate::config::RecordFormat,
    topic: String,
    processor: Processor,
    consumer: StreamConsumer<RebalanceContext>,
    producer: FutureProducer,
    /// Checkpoints and the batch transaction, on a connection nothing else uses (WATCH).
    sink: RedisSink,
    /// Lookups and reference data, on a second connection.
    reader: redis::Client,
    /// Dropped after any Redis error so the next attempt reconnects.
    reads: Option<MultiplexedConnection>,
    metrics: Metrics,
    readiness: Readiness,
}

/// A decoded record with its source position.
struct Decoded<'a> {
    message: &'a OwnedMessage,
    key: &'a str,
    record: DataRecord,
}

impl RecordView for Decoded<'_> {
    fn key(&self) -> &str {
        self.key
    }
    fn timestamp_ms(&self) -> i64 {
        self.record.timestamp_ms
    }
    fn values(&self) -> &[f64] {
        &self.record.values
    }
    fn text(&self) -> Option<&str> {
        Some(&self.record.text)
    }
}

/// A record to produce, and where it came from.
struct Outgoing<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: Vec<u8>,
    source: &'a OwnedMessage,
    reason: Option<String>,
}

/// What one attempt at a batch decided, before it is produced and committed.
#[derive(Default)]
struct Effects<'a> {
    outgoing: Vec<Outgoing<'a>>,
    /// Commands for the batch transaction.
    transaction: Vec<redis::Cmd>,
    written: u64,
}

enum Attempt {
    Committed,
    /// A watched checkpoint moved: another consumer wrote this partition meanwhile.
    Conflict,
}

impl Stage {
    async fn run(&mut self, mut shutdown: Shutdown) {
        let max_records = self.config.batch.max_records.max(1) as usize;
        let max_wait = self.config.batch.max_wait.as_duration();
        let mut carry = None;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let batch = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                batch = collect_batch(&self.consumer, &self.metrics, max_records, max_wait, &mut carry) => batch,
            };
            if batch.is_empty() {
                continue;
            }
            if !self.process_until_done(&batch, &mut shutdown).await {
                break;
            }
        }
        // Offsets stored so far are committed now rather than at the next auto-commit.
        consume::commit_stored(&self.consumer, &self.metrics);
        tracing::info!("processor stopped");
    }

    /// Retries the batch until it commits. False when shutdown interrupted it.
    async fn process_until_done(
        &mut self,
        batch: &[OwnedMessage],
        shutdown: &mut Shutdown,
    ) -> bool {
        let started = Instant::now();
        let mut backoff = Backoff::DEFAULT;
        loop {
            match self.attempt(batch).await {
                Ok(Attempt::Committed) => {
                    self.metrics.observe_batch(started.elapsed());
                    self.metrics.batches.inc();
                    if self.readiness.blocked().is_some() {
                        tracing::info!("the blocking key is fixed; committing again");
                        self.readiness.set_blocked(None);
                        self.metrics.blocked.clear();
                    }
                    return true;
                }
                Ok(Attempt::Conflict) => {
                    self.metrics.transaction_conflicts.inc();
                    tracing::info!("a checkpoint moved during the batch; re-reading it");
                }
                Err(err) => {
                    match &err {
                        BatchError::Redis { operation, .. } => {
                            self.reads = None;
                            self.metrics.redis_error(operation);
                        }
                        BatchError::Sink(err) => {
                            self.readiness.set_redis_connected(false);
                            self.metrics.redis_error(err.operation());
                        }
                        BatchError::Produce { .. } => self.metrics.kafka_error("produce"),
                        BatchError::WrongType(wrong) => {
                            self.readiness.set_blocked(Some(wrong.to_string()));
                            self.metrics
                                .blocked
                                .get_or_create(&crate::metrics::BlockedLabel {
                                    reason: "wrong_type".to_owned(),
                                    key: wrong.key.clone(),
                                })
                                .set(1);
                        }
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "batch failed; retrying");
                    tokio::select! {
                        biased;
                        () = shutdown.wait() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn read_connection(&mut self) -> Result<MultiplexedConnection, BatchError> {
        if let Some(connection) = &self.reads {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let connection = self
            .reader
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(BatchError::redis("connect"))?;
        self.reads = Some(connection.clone());
        Ok(connection)
    }

    async fn attempt(&mut self, batch: &[OwnedMessage]) -> Result<Attempt, BatchError> {
        let mut redis = self.read_connection().await?;

        // 1. Checkpoints, watched until EXEC.
        let mut last_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        for message in batch {
            let last = last_offsets.entry(message.partition()).or_insert(-1);
            *last = (*last).max(message.offset());
        }
        let keys: Vec<String> = last_offsets
            .keys()
            .map(|partition| self.checkpoint_keys.key(*partition))
            .collect();
        // A WATCH left by a failed attempt must not fence this one.
        self.sink.unwatch().await?;
        let data_keys = self.written_keys(batch);
        let watched = self.sink.watch_and_check(&keys, &data_keys).await?;
        if let Some(wrong) = watched.wrong_types.into_iter().next() {
            self.sink.unwatch().await?;
            return Err(BatchError::WrongType(wrong));
        }
        let checkpoints = watched.checkpoints;
        self.readiness.set_redis_connected(true);
        let checkpoint_of: HashMap<i32, i64> = last_offsets
            .keys()
            .zip(&checkpoints)
            .filter_map(|(partition, checkpoint)| checkpoint.map(|c| (*partition, c)))
            .collect();
        let fresh = fresh_records(batch, &checkpoint_of);
        let skipped = batch.len() - fresh.len();

        // 2. Compute and produce.
        let (mut commands, written) = if fresh.is_empty() {
            (Vec::new(), 0)
        } else {
            let mut effects = Effects::default();
            self.compute(&fresh, &mut redis, &mut effects).await?;
            self.produce_all(&effects.outgoing).await?;
            (effects.transaction, effects.written)
        };

        // 3. Effects and checkpoints in one transaction.
        for (partition, last) in &last_offsets {
            // Never move a checkpoint backwards (the whole batch may be below it).
            let next = (*last).max(checkpoint_of.get(partition).copied().unwrap_or(-1));
            let mut set = redis::cmd("SET");
            set.arg(self.checkpoint_keys.key(*partition)).arg(next);
            commands.push(set);
        }
        match self.sink.transaction(commands).await? {
            TransactionOutcome::Aborted => return Ok(Attempt::Conflict),
            TransactionOutcome::Committed { failed_commands } => {
                // Redis applies the rest of a transaction regardless; say loudly what failed.
                for failed in failed_commands {
                    self.metrics.redis_error("transaction_command");
                    tracing::error!(command = %failed, "a command in the batch transaction failed");
                }
            }
        }
        self.metrics.records_skipped.inc_by(skipped as u64);
        // Every processor skip is decided by the checkpoint read under WATCH: the fence.
        self.metrics.records_fenced.inc_by(skipped as u64);
        self.metrics.records_written.inc_by(written);

        // 4. Kafka offsets, only after EXEC. A partition revoked meanwhile refuses the
        //    store; its next owner skips these records by the checkpoint.
        for (partition, last) in &last_offsets {
            if let Err(err) = self.consumer.store_offset(&self.topic, *partition, *last) {
                self.metrics.kafka_error("store_offset");
                tracing::info!(partition, error = %err, "offset not stored (partition revoked?)");
            }
        }
        Ok(Attempt::Committed)
    }

    /// The keys this processor's transaction writes for `batch`, with the type it writes.
    fn written_keys(&self, batch: &[OwnedMessage]) -> Vec<(String, &'static str)> {
        let sources: std::collections::BTreeSet<&str> = batch
            .iter()
            .filter_map(|m| record::source_id(m.key()).ok())
            .collect();
        let prefix = &self.key_prefix;
        match &self.processor {
            Processor::Stats { .. } => sources
                .into_iter()
                .flat_map(|key| {
                    [
                        (format!("{prefix}:stats-window:{key}"), "list"),
                        (format!("{prefix}:stats:{key}"), "hash"),
                    ]
                })
                .collect(),
            Processor::Validate { .. } => sources
                .into_iter()
                .chain([TOTAL_COUNTERS])
                .map(|key| (validate::counters_key(prefix, key), "hash"))
                .collect(),
            Processor::Enrich { .. } => Vec::new(),
        }
    }

    /// Decodes the fresh records and fills in what to produce and what to write.
    async fn compute<'a>(
        &'a self,
        fresh: &[&'a OwnedMessage],
        redis: &mut MultiplexedConnection,
        effects: &mut Effects<'a>,
    ) -> Result<(), BatchError> {
        let mut decoded = Vec::with_capacity(fresh.len());
        let mut undecodable = 0u64;
        for message in fresh {
            let result = record::source_id(message.key()).and_then(|key| {
                let record = record::decode(
                    self.format,
                    message.payload().unwrap_or_default(),
                    message.timestamp().to_millis(),
                )?;
                Ok(Decoded {
                    message,
                    key,
                    record,
                })
            });
            match result {
                Ok(record) => decoded.push(record),
                Err(err) => {
                    undecodable += 1;
                    self.metrics.dead_lettered(err.reason()).inc();
                    tracing::debug!(partition = message.partition(), offset = message.offset(), error = %err, "undecodable record");
                    self.dead_letter(effects, message, err.reason().as_str());
                }
            }
        }
        match &self.processor {
            Processor::Stats { window } => self.compute_stats(*window, &decoded, effects),
            Processor::Validate { rules } => {
                self.compute_validate(rules, &decoded, undecodable, redis, effects)
                    .await?;
            }
            Processor::Enrich {
                reference_key,
                fields,
            } => {
                self.compute_enrich(reference_key, fields, &decoded, redis, effects)
                    .await?;
            }
        }
        Ok(())
    }

    fn dead_letter<'a>(
        &'a self,
        effects: &mut Effects<'a>,
        message: &'a OwnedMessage,
        reason: &str,
    ) {
        if let Some(dead_letter) = &self.config.dead_letter {
            effects.outgoing.push(Outgoing {
                topic: &dead_letter.topic,
                key: message.key(),
                payload: message.payload().unwrap_or_default().to_vec(),
                source: message,
                reason: Some(reason.to_owned()),
            });
        }
    }

    fn forward<'a>(
        &'a self,
        effects: &mut Effects<'a>,
        message: &'a OwnedMessage,
        payload: Vec<u8>,
    ) {
        if let Some(output) = &self.config.output {
            effects.outgoing.push(Outgoing {
                topic: &output.topic,
                key: message.key(),
                payload,
                source: message,
                reason: None,
            });
        }
    }

    /// One script call per key per batch, with the key's values in record order. Input
    /// records pass through to the output topic unchanged.
    fn compute_stats<'a>(
        &'a self,
        window: u32,
        decoded: &[Decoded<'a>],
        effects: &mut Effects<'a>,
    ) {
        let mut per_key: BTreeMap<&str, (Vec<String>, i64)> = BTreeMap::new();
        for record in decoded {
            let entry = per_key.entry(record.key).or_default();
            entry.0.extend(stats::script_values(&record.record.values));
            entry.1 = record.record.timestamp_ms;
            self.forward(
                effects,
                record.message,
                record.message.payload().unwrap_or_default().to_vec(),
            );
        }
        for (key, (values, updated_ts)) in per_key {
            if values.is_empty() {
                continue;
            }
            let mut eval = redis::cmd("EVAL");
            eval.arg(stats::UPDATE_SCRIPT)
                .arg(2)
                .arg(format!("{}:stats-window:{key}", self.key_prefix))
                .arg(format!("{}:stats:{key}", self.key_prefix))
                .arg(window)
                .arg(updated_ts)
                .arg(values);
            effects.transaction.push(eval);
        }
        effects.written = decoded.len() as u64;
    }

    async fn compute_validate<'a>(
        &'a self,
        rules: &RuleSet,
        decoded: &[Decoded<'a>],
        undecodable: u64,
        redis: &mut MultiplexedConnection,
        effects: &mut Effects<'a>,
    ) -> Result<(), BatchError> {
        let lookups = BatchLookups::fetch(rules, decoded, redis).await?;
        let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        let (mut total_valid, mut total_invalid) = (0i64, 0i64);
        for record in decoded {
            let count = counts.entry(record.key).or_default();
            match rules.first_failure(record, &lookups) {
                None => {
                    count.0 += 1;
                    total_valid += 1;
                    self.forward(
                        effects,
                        record.message,
                        record.message.payload().unwrap_or_default().to_vec(),
                    );
                }
                Some(rule) => {
                    count.1 += 1;
                    total_invalid += 1;
                    self.metrics
                        .records_dead_lettered
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: format!("rule:{rule}"),
                        })
                        .inc();
                    self.dead_letter(effects, record.message, rule);
                }
            }
        }
        let mut increment = |hash: String, field: &str, by: i64| {
            if by > 0 {
                let mut incr = redis::cmd("HINCRBY");
                incr.arg(hash).arg(field).arg(by);
                effects.transaction.push(incr);
            }
        };
        for (key, (valid, invalid)) in counts {
            let hash = validate::counters_key(&self.key_prefix, key);
            increment(hash.clone(), "valid", valid);
            increment(hash, "invalid", invalid);
        }
        let total = validate::counters_key(&self.key_prefix, TOTAL_COUNTERS);
        increment(total.clone(), "valid", total_valid);
        increment(total.clone(), "invalid", total_invalid);
        increment(total, "undecodable", undecodable as i64);
        effects.written = decoded.len() as u64;
        Ok(())
    }

    async fn compute_enrich<'a>(
        &'a self,
        reference_key: &str,
        fields: &[String],
        decoded: &[Decoded<'a>],
        redis: &mut MultiplexedConnection,
        effects: &mut Effects<'a>,
    ) -> Result<(), BatchError> {
        // The batch's time span per key bounds which versions can matter.
        let mut spans: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for record in decoded {
            let ts = record.record.timestamp_ms;
            let span = spans.entry(record.key).or_insert((ts, ts));
            span.0 = span.0.min(ts);
            span.1 = span.1.max(ts);
        }
        let mut query = redis::pipe();
        for (key, (earliest, latest)) in &spans {
            let zset = enrich::versions_key(reference_key, key);
            query
                .cmd("ZREVRANGEBYSCORE")
                .arg(&zset)
                .arg(*earliest)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .cmd("ZRANGEBYSCORE")
                .arg(&zset)
                .arg(format!("({earliest}"))
                .arg(*latest)
                .arg("WITHSCORES");
        }
        let answers: Vec<Vec<(String, f64)>> = query
            .query_async(redis)
            .await
            .map_err(BatchError::redis("read reference versions"))?;
        let mut versions: HashMap<&str, Vec<Version>> = HashMap::new();
        for (key, pair) in spans.keys().zip(answers.chunks(2)) {
            versions.insert(
                key,
                pair.iter()
                    .flatten()
                    .map(|(hash_key, score)| Version {
                        hash_key: hash_key.clone(),
                        valid_from_ms: *score,
                    })
                    .collect(),
            );
        }
        let chosen: Vec<Option<&Version>> = decoded
            .iter()
            .map(|record| {
                versions
                    .get(record.key)
                    .and_then(|v| enrich::choose_version(v, record.record.timestamp_ms))
            })
            .collect();
        let wanted: Vec<&str> = chosen
            .iter()
            .flatten()
            .map(|v| v.hash_key.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut read = redis::pipe();
        for hash_key in &wanted {
            if fields.is_empty() {
                read.cmd("HGETALL").arg(*hash_key);
            } else {
                read.cmd("HMGET").arg(*hash_key).arg(fields);
            }
        }
        let hashes: Vec<BTreeMap<String, String>> = if wanted.is_empty() {
            Vec::new()
        } else if fields.is_empty() {
            read.query_async(redis)
                .await
                .map_err(BatchError::redis("read reference data"))?
        } else {
            let rows: Vec<Vec<Option<String>>> = read
                .query_async(redis)
                .await
                .map_err(BatchError::redis("read reference data"))?;
            rows.into_iter()
                .map(|row| {
                    fields
                        .iter()
                        .zip(row)
                        .filter_map(|(name, value)| value.map(|v| (name.clone(), v)))
                        .collect()
                })
                .collect()
        };
        let reference_of: HashMap<&str, BTreeMap<String, String>> = wanted
            .into_iter()
            .zip(hashes)
            .map(|(hash_key, hash)| (hash_key, enrich::select_fields(hash, fields)))
            .collect();
        let empty = BTreeMap::new();
        for (record, version) in decoded.iter().zip(chosen) {
            let Some(version) = version else {
                self.metrics
                    .records_dead_lettered
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: enrich::NO_REFERENCE.to_owned(),
                    })
                    .inc();
                self.dead_letter(effects, record.message, enrich::NO_REFERENCE);
                continue;
            };
            let enriched = EnrichedRecord {
                key: record.key,
                ts: record.record.timestamp_ms,
                values: &record.record.values,
                text: &record.record.text,
                reference: reference_of
                    .get(version.hash_key.as_str())
                    .unwrap_or(&empty),
                ref_version: &version.hash_key,
                ref_valid_from: version.valid_from_ms as i64,
            };
            // Plain strings and finite floats: serialising cannot fail.
            let payload = serde_json::to_vec(&enriched).unwrap_or_default();
            self.forward(effects, record.message, payload);
            effects.written += 1;
        }
        Ok(())
    }

    /// Sends every record and waits for all deliveries.
    async fn produce_all(&self, outgoing: &[Outgoing<'_>]) -> Result<(), BatchError> {
        let deliveries = outgoing.iter().map(|out| {
            let partition = out.source.partition().to_string();
            let offset = out.source.offset().to_string();
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_SOURCE_PARTITION,
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_OFFSET,
                    value: Some(offset.as_bytes()),
                });
            if let Some(reason) = &out.reason {
                headers = headers.insert(Header {
                    key: HEADER_REASON,
                    value: Some(reason.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(out.topic)
                .payload(out.payload.as_slice())
                .headers(headers);
            if let Some(key) = out.key {
                record = record.key(key);
            }
            if let Some(ts) = out.source.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            let send = self.producer.send(record, DELIVERY_TIMEOUT);
            async move {
                send.await.map_err(|(source, _)| BatchError::Produce {
                    topic: out.topic.to_owned(),
                    source,
                })
            }
        });
        for delivery in futures::future::join_all(deliveries).await {
            delivery?;
        }
        Ok(())
    }
}

/// LOOKUP answers for one batch, fetched in two round trips: the key types, then the
/// memberships (`SISMEMBER` for sets, `HEXISTS` for hashes; other types answer false).
struct BatchLookups {
    found: HashSet<(String, String)>,
}

impl BatchLookups {
    async fn fetch(
        rules: &RuleSet,
        decoded: &[Decoded<'_>],
        redis: &mut MultiplexedConnection,
    ) -> Result<Self, BatchError> {
        let mut asked: HashSet<(String, String)> = HashSet::new();
        for record in decoded {
            rules.for_each_lookup(record, &mut |key, member| {
                asked.insert((key.to_owned(), member));
            });
        }
        if asked.is_empty() {
            return Ok(Self {
                found: HashSet::new(),
            });
        }
        let keys: Vec<&str> = asked
            .iter()
            .map(|(key, _)| key.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut type_query = redis::pipe();
        for key in &keys {
            type_query.cmd("TYPE").arg(*key);
        }
        let types: Vec<String> = type_query
            .query_async(redis)
            .await
            .map_err(BatchError::redis("read lookup key types"))?;
        let type_of: HashMap<&str, &str> = keys
            .iter()
            .copied()
            .zip(types.iter().map(String::as_str))
            .collect();
        let mut member_query = redis::pipe();
        let mut asked_in_order = Vec::new();
        for (key, member) in &asked {
            let command = match type_of.get(key.as_str()).copied() {
                Some("set") => "SISMEMBER",
                Some("hash") => "HEXISTS",
                _ => continue,
            };
            member_query.cmd(command).arg(key).arg(member);
            asked_in_order.push((key.clone(), member.clone()));
        }
        let answers: Vec<bool> = if asked_in_order.is_empty() {
            Vec::new()
        } else {
            member_query
                .query_async(redis)
                .await
                .map_err(BatchError::redis("read lookups"))?
        };
        Ok(Self {
            found: asked_in_order
                .into_iter()
                .zip(answers)
                .filter_map(|(pair, found)| found.then_some(pair))
                .collect(),
        })
    }
}

impl LookupSource for BatchLookups {
    fn contains(&self, redis_key: &str, member: &str) -> bool {
        self.found
            .contains(&(redis_key.to_owned(), member.to_owned()))
    }
}

/// The records of `batch` not applied yet: above their partition's checkpoint, and above
/// every earlier record of the partition in the batch. A partition revoked and assigned
/// again is read again from its committed offset, so one batch can hold an offset twice;
/// counting both would double it.
fn fresh_records<'a>(
    batch: &'a [OwnedMessage],
    checkpoint_of: &HashMap<i32, i64>,
) -> Vec<&'a OwnedMessage> {
    let mut highest: HashMap<i32, i64> = checkpoint_of.clone();
    batch
        .iter()
        .filter(|m| {
            let highest = highest.entry(m.partition()).or_insert(-1);
            let fresh = m.offset() > *highest;
            *highest = (*highest).max(m.offset());
            fresh
        })
        .collect()
}

/// Waits for a first record, then gathers more until the batch is full, `max_wait` has
/// passed since the first, or a rebalance happened: a batch never spans two assignments.
/// A record read after the rebalance waits in `carry` for the next batch.
async fn collect_batch(
    consumer: &StreamConsumer<RebalanceContext>,
    metrics: &Metrics,
    max_records: usize,
    max_wait: Duration,
    carry: &mut Option<OwnedMessage>,
) -> Vec<OwnedMessage> {
    let generation = consumer.context().generation.load(Ordering::SeqCst);
    let mut batch = Vec::new();
    let mut deadline = None;
    if let Some(message) = carry.take() {
        batch.push(message);
        deadline = Some(tokio::time::Instant::now() + max_wait);
    }
    while batch.len() < max_records {
        let next = match deadline {
            None => consumer.recv().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        match next {
            Ok(message) => {
                metrics.records_in.inc();
                let message = message.detach();
                if !batch.is_empty()
                    && consumer.context().generation.load(Ordering::SeqCst) != generation
                {
                    *carry = Some(message);
                    break;
                }
                batch.push(message);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_wait);
            }
            Err(err) => {
                metrics.kafka_error("consume");
                tracing::warn!(error = %err, "Kafka consume error");
                if !batch.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    batch
}

/// Reports partition assignment to `/readyz`.
struct RebalanceContext {
    readiness: Readiness,
    /// Counts rebalances, so a batch being collected can see one happened.
    generation: AtomicU64,
}

impl ClientContext for RebalanceContext {
    /// The shared consumer settings ask for statistics (the receiver turns them into lag
    /// metrics); rdkafka's default would log each one at info level.
    fn stats(&self, _statistics: rdkafka::Statistics) {}
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(err) = rebalance {
            tracing::warn!(error = %err, "rebalance error");
        }
        let assigned = consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false);
        tracing::info!(?rebalance, assigned, "rebalanced");
        self.readiness.set_assigned(assigned);
    }
}

fn create_consumer(
    kafka: &KafkaConfig,
    readiness: Readiness,
) -> Result<StreamConsumer<RebalanceContext>, ProcessError> {
    consume::consumer_config(kafka, SESSION_TIMEOUT)?
        .create_with_context(RebalanceContext {
            readiness,
            generation: AtomicU64::new(0),
        })
        .map_err(|source| ProcessError::CreateKafkaClient {
            role: "consumer",
            source,
        })
}

fn create_producer(kafka: &KafkaConfig) -> Result<FutureProducer, ProcessError> {
    consume::kafka_client_config(kafka)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .map_err(|source| ProcessError::CreateKafkaClient {
            role: "producer",
            source,
        })
}

/// A client for reads, with the same credentials and TLS settings the sink uses.
fn redis_reader(config: &WorkerConfig) -> Result<redis::Client, ProcessError> {
    Ok(crate::sink::redis_client(&config.redis)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "in".to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn an_offset_read_twice_in_one_batch_is_fresh_once() {
        // Partition 0 rewound to 5 after a revoke and re-assign; partition 1 is at its
        // checkpoint 7.
        let batch: Vec<OwnedMessage> = [(0, 5), (0, 6), (1, 7), (0, 5), (0, 6), (0, 7), (1, 8)]
            .into_iter()
            .map(|(p, o)| message(p, o))
            .collect();
        let checkpoints = HashMap::from([(1, 7)]);
        let fresh: Vec<(i32, i64)> = fresh_records(&batch, &checkpoints)
            .into_iter()
            .map(|m| (m.partition(), m.offset()))
            .collect();
        assert_eq!(fresh, [(0, 5), (0, 6), (0, 7), (1, 8)]);
    }
}
