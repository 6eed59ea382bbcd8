//! The processors as stage kinds of the one consumption pipeline
//! ([`crate::consume::pipeline`]): each decodes its input and says what a batch writes to
//! Redis and produces; fencing, retries, the dead-letter topic and offsets are the
//! pipeline's. See the module docs of [`crate::process`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use redis::aio::MultiplexedConnection;

use crate::config::{ProcessorConfig, ProcessorKind, RecordFormat, StageConfig, WorkerConfig};
use crate::consume::pipeline::{
    self, Decode, Decoded, Effects, Fresh, KindError, Output, Positioned, ProducedTopics, Refusal,
    Rejected, StageKind, StageOptions, StageSpec,
};
use crate::consume::{ConsumeError, Shutdown};
use crate::record::{self, DataRecord};
use crate::sink::SinkError;

use super::enrich::{self, EnrichedRecord, Version};
use super::rules::{LookupSource, RecordView};
use super::stats;
use super::validate::{RuleError, RuleSet, TOTAL_COUNTERS};

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
}

/// Runs the processor of `config` until `shutdown` is triggered.
pub async fn run(
    config: WorkerConfig,
    options: StageOptions,
    shutdown: Shutdown,
) -> Result<(), ProcessError> {
    let StageConfig::Processor(processor_config) = &config.stage else {
        return Err(ProcessError::NotAProcessor);
    };
    // Rules parse before anything connects, so a bad rule fails the start at once.
    let compute = Compute::new(processor_config)?;
    tracing::info!(processor = %processor_config.name, "processor");
    let stage = Processor {
        compute,
        keys: ProcessorKeys::new(&config.redis.key_prefix, &processor_config.name),
        forwards: processor_config.output.is_some(),
        reads: ReadConnection {
            client: crate::sink::redis_client(&config.redis)?,
            connection: None,
            timeout: options.redis_timeout,
        },
    };
    let spec = StageSpec {
        name: "processor",
        batch: processor_config.batch.clone(),
        topics: ProducedTopics {
            output: processor_config.output.as_ref().map(|o| o.topic.clone()),
            dead_letter: processor_config
                .dead_letter
                .as_ref()
                .map(|d| d.topic.clone()),
        },
    };
    let decoder = SourceDecoder {
        format: config.format,
    };
    pipeline::run(&config, spec, &options, shutdown, decoder, stage).await?;
    Ok(())
}

/// A decoded input record, with what its outputs and dead letter need of the original.
#[derive(Debug)]
pub struct SourceRecord {
    partition: i32,
    offset: i64,
    kafka_timestamp_ms: Option<i64>,
    /// The source id: the Kafka key, checked UTF-8.
    key: Box<str>,
    record: DataRecord,
    /// The `ref` fields of a `json` record an upstream enrich stage wrote; empty otherwise.
    reference: record::json::Reference,
    payload: Box<[u8]>,
}

impl Positioned for SourceRecord {
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn bytes(&self) -> usize {
        // The decoded floats and text are about the payload's size again.
        self.key.len() + 2 * self.payload.len()
    }
}

impl RecordView for SourceRecord {
    fn key(&self) -> &str {
        &self.key
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
    fn reference(&self, field: &str) -> Option<&str> {
        self.reference.get(field).map(String::as_str)
    }
}

impl SourceRecord {
    /// Passes the record on to the output topic as it came.
    fn output(&self, payload: Vec<u8>) -> Output {
        Output {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.kafka_timestamp_ms,
            key: self.key.as_bytes().to_vec(),
            payload,
        }
    }

    fn refused(&self, reason: Refusal, detail: String) -> Rejected {
        Rejected {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.kafka_timestamp_ms,
            reason,
            detail,
            key: Some(self.key.as_bytes().to_vec()),
            payload: Some(self.payload.to_vec()),
        }
    }
}

/// Decodes a processor's input in its stage's input format (`json` downstream of enrich).
struct SourceDecoder {
    format: RecordFormat,
}

impl Decode for SourceDecoder {
    type Record = SourceRecord;

    fn decode(&self, message: &BorrowedMessage<'_>, _now_ms: i64) -> Decoded<SourceRecord> {
        let payload = message.payload().unwrap_or_default();
        let kafka_timestamp_ms = message.timestamp().to_millis();
        let decoded = record::source_id(message.key()).and_then(|key| {
            let (record, reference) = match self.format {
                RecordFormat::Json => record::json::decode_enriched(payload)?,
                format => (
                    record::decode(format, payload, kafka_timestamp_ms)?,
                    record::json::Reference::new(),
                ),
            };
            Ok((key, record, reference))
        });
        match decoded {
            Ok((key, record, reference)) => Ok(SourceRecord {
                partition: message.partition(),
                offset: message.offset(),
                kafka_timestamp_ms,
                key: key.into(),
                record,
                reference,
                payload: payload.into(),
            }),
            Err(err) => Err(Box::new(Rejected {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: kafka_timestamp_ms,
                reason: Refusal::Record(err.reason()),
                detail: err.to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            })),
        }
    }
}

/// What the processor computes, built once at start.
enum Compute {
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

impl Compute {
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

/// The processor stage kind.
struct Processor {
    compute: Compute,
    keys: ProcessorKeys,
    /// Whether an output topic is configured.
    forwards: bool,
    /// Lookups and reference data, on a connection of their own (the pipeline's holds
    /// `WATCH`).
    reads: ReadConnection,
}

/// The processor's read connection, made on first use and after a failure.
struct ReadConnection {
    client: redis::Client,
    /// Dropped after any Redis error so the next attempt reconnects.
    connection: Option<MultiplexedConnection>,
    timeout: std::time::Duration,
}

impl ReadConnection {
    async fn connection(&mut self) -> Result<MultiplexedConnection, KindError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(KindError::redis("connect"))?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    fn reset(&mut self) {
        self.connection = None;
    }
}

impl StageKind for Processor {
    type Record = SourceRecord;

    fn written_keys(&self, records: &[SourceRecord]) -> Vec<(String, &'static str)> {
        let sources: BTreeSet<&str> = records.iter().map(|r| &*r.key).collect();
        let keys = &self.keys;
        match &self.compute {
            Compute::Stats { .. } => sources
                .into_iter()
                .flat_map(|key| [(keys.stats_window(key), "list"), (keys.stats(key), "hash")])
                .collect(),
            Compute::Validate { .. } => sources
                .into_iter()
                .chain([TOTAL_COUNTERS])
                .map(|key| (keys.counters(key), "hash"))
                .collect(),
            Compute::Enrich { .. } => Vec::new(),
        }
    }

    /// What a batch writes, on the keys of source `ferry-probe`: the stats script with its
    /// two keys, or the counters' `HINCRBY`; enrich writes nothing but the checkpoint.
    fn probe_commands(&self) -> Vec<redis::Cmd> {
        let source = crate::consume::receiver::PROBE_SOURCE;
        let mut commands = Vec::new();
        for (key, _) in self.written_keys_of(source) {
            let mut type_ = redis::cmd("TYPE");
            type_.arg(key);
            commands.push(type_);
        }
        match &self.compute {
            Compute::Stats { window } => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(stats::UPDATE_SCRIPT)
                    .arg(2)
                    .arg(self.keys.stats_window(source))
                    .arg(self.keys.stats(source))
                    .arg(*window)
                    .arg(0)
                    .arg(stats::script_values(&[0.0]).collect::<Vec<_>>());
                commands.push(eval);
            }
            Compute::Validate { .. } => {
                let mut incr = redis::cmd("HINCRBY");
                incr.arg(self.keys.counters(source)).arg("valid").arg(1);
                commands.push(incr);
            }
            Compute::Enrich { .. } => {}
        }
        commands
    }

    async fn effects<'a>(
        &'a mut self,
        fresh: Fresh<'a, SourceRecord>,
    ) -> Result<Effects, KindError> {
        let mut effects = Effects::default();
        let result = match &self.compute {
            Compute::Stats { window } => {
                self.stats(*window, fresh.records, &mut effects);
                Ok(())
            }
            Compute::Validate { rules } => {
                let mut redis = self.reads.connection().await?;
                self.validate(rules, &fresh, &mut redis, &mut effects).await
            }
            Compute::Enrich {
                reference_key,
                fields,
            } => {
                let mut redis = self.reads.connection().await?;
                self.enrich(
                    reference_key,
                    fields,
                    fresh.records,
                    &mut redis,
                    &mut effects,
                )
                .await
            }
        };
        if result.is_err() {
            self.reads.reset();
        }
        result.map(|()| effects)
    }
}

/// The keys a processor writes: `{prefix}:{kind}:{processor}:{key}`. The processor's name
/// (no colon in it) keeps two processors of one kind in one Pipeline apart.
#[derive(Debug, Clone)]
pub struct ProcessorKeys {
    prefix: String,
    processor: String,
}

impl ProcessorKeys {
    pub fn new(prefix: &str, processor: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            processor: processor.to_owned(),
        }
    }

    /// A stats processor's rolling statistics of `key` (a hash).
    pub fn stats(&self, key: &str) -> String {
        format!("{}:stats:{}:{key}", self.prefix, self.processor)
    }

    /// A stats processor's window of `key` (a list, newest first).
    pub fn stats_window(&self, key: &str) -> String {
        format!("{}:stats-window:{}:{key}", self.prefix, self.processor)
    }

    /// A validate processor's counters of `key` (or of `_total`).
    pub fn counters(&self, key: &str) -> String {
        format!("{}:counters:{}:{key}", self.prefix, self.processor)
    }
}

impl Processor {
    /// The keys (and types) a batch with records of `source` writes.
    fn written_keys_of(&self, source: &str) -> Vec<(String, &'static str)> {
        match &self.compute {
            Compute::Stats { .. } => vec![
                (self.keys.stats_window(source), "list"),
                (self.keys.stats(source), "hash"),
            ],
            Compute::Validate { .. } => vec![(self.keys.counters(source), "hash")],
            Compute::Enrich { .. } => Vec::new(),
        }
    }

    fn forward(&self, effects: &mut Effects, record: &SourceRecord, payload: Vec<u8>) {
        if self.forwards {
            effects.outputs.push(record.output(payload));
        }
    }

    /// One script call per key per batch, with the key's values in record order. Input
    /// records pass through to the output topic unchanged.
    fn stats(&self, window: u32, records: &[&SourceRecord], effects: &mut Effects) {
        let mut per_key: BTreeMap<&str, (Vec<String>, i64)> = BTreeMap::new();
        for record in records {
            let entry = per_key.entry(&record.key).or_default();
            entry.0.extend(stats::script_values(&record.record.values));
            entry.1 = record.record.timestamp_ms;
            self.forward(effects, record, record.payload.to_vec());
        }
        for (key, (values, updated_ts)) in per_key {
            if values.is_empty() {
                continue;
            }
            let mut eval = redis::cmd("EVAL");
            eval.arg(stats::UPDATE_SCRIPT)
                .arg(2)
                .arg(self.keys.stats_window(key))
                .arg(self.keys.stats(key))
                .arg(window)
                .arg(updated_ts)
                .arg(values);
            effects.commands.push(eval);
            effects.keys_touched += 1;
        }
        effects.written = records.len() as u64;
    }

    /// Valid records pass through; invalid ones are dead-lettered with the first failing
    /// rule; counters per key and in total, undecodable ones included.
    async fn validate(
        &self,
        rules: &RuleSet,
        fresh: &Fresh<'_, SourceRecord>,
        redis: &mut MultiplexedConnection,
        effects: &mut Effects,
    ) -> Result<(), KindError> {
        let lookups = BatchLookups::fetch(rules, fresh.records, redis).await?;
        let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        let (mut total_valid, mut total_invalid) = (0i64, 0i64);
        for record in fresh.records {
            let count = counts.entry(&record.key).or_default();
            match rules.first_failure(*record, &lookups) {
                None => {
                    count.0 += 1;
                    total_valid += 1;
                    self.forward(effects, record, record.payload.to_vec());
                }
                Some(rule) => {
                    count.1 += 1;
                    total_invalid += 1;
                    effects.dead_letters.push(record.refused(
                        Refusal::Rule(rule.to_owned()),
                        format!("the record fails rule {rule}"),
                    ));
                }
            }
        }
        let mut increment = |hash: String, field: &str, by: i64| {
            if by > 0 {
                let mut incr = redis::cmd("HINCRBY");
                incr.arg(hash).arg(field).arg(by);
                effects.commands.push(incr);
            }
        };
        for (key, (valid, invalid)) in &counts {
            let hash = self.keys.counters(key);
            increment(hash.clone(), "valid", *valid);
            increment(hash, "invalid", *invalid);
        }
        let total = self.keys.counters(TOTAL_COUNTERS);
        increment(total.clone(), "valid", total_valid);
        increment(total.clone(), "invalid", total_invalid);
        increment(
            total,
            "undecodable",
            i64::try_from(fresh.refused.len()).unwrap_or(i64::MAX),
        );
        effects.keys_touched += counts.len() + 1;
        effects.written = fresh.records.len() as u64;
        Ok(())
    }

    /// Each record joined with the reference version valid at its timestamp, as JSON;
    /// a record with no version at its time is dead-lettered as `no-reference`.
    async fn enrich(
        &self,
        reference_key: &str,
        fields: &[String],
        records: &[&SourceRecord],
        redis: &mut MultiplexedConnection,
        effects: &mut Effects,
    ) -> Result<(), KindError> {
        // The batch's time span per key bounds which versions can matter.
        let mut spans: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for record in records {
            let ts = record.record.timestamp_ms;
            let span = spans.entry(&record.key).or_insert((ts, ts));
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
            .map_err(KindError::redis("read reference versions"))?;
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
        let chosen: Vec<Option<&Version>> = records
            .iter()
            .map(|record| {
                versions
                    .get(&*record.key)
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
                .map_err(KindError::redis("read reference data"))?
        } else {
            let rows: Vec<Vec<Option<String>>> = read
                .query_async(redis)
                .await
                .map_err(KindError::redis("read reference data"))?;
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
        for (record, version) in records.iter().zip(chosen) {
            let Some(version) = version else {
                effects.dead_letters.push(record.refused(
                    Refusal::NoReference,
                    format!(
                        "no version of {reference_key} for key {} at {} ms",
                        record.key, record.record.timestamp_ms
                    ),
                ));
                continue;
            };
            let enriched = EnrichedRecord {
                key: &record.key,
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
            self.forward(effects, record, payload);
            effects.written += 1;
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
        records: &[&SourceRecord],
        redis: &mut MultiplexedConnection,
    ) -> Result<Self, KindError> {
        let mut asked: HashSet<(String, String)> = HashSet::new();
        for record in records {
            rules.for_each_lookup(*record, &mut |key, member| {
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
            .map_err(KindError::redis("read lookup key types"))?;
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
                .map_err(KindError::redis("read lookups"))?
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
