//! The one consumption pipeline every stage kind runs on:
//! consume → decode → batch → transact → store offsets.
//!
//! - **consume and decode** run on the consumer task: each Kafka message becomes the
//!   kind's record ([`Decode`]) or a [`Rejected`] one, and travels through the bounded
//!   channel of [`StageContext`] in consumption order, rebalance events in band.
//! - **place**: when partitions are assigned, the writer reads their checkpoints and the
//!   consumer is placed at the offsets [`position::plan`] decides: Redis is the source of
//!   truth for position, Kafka's committed offset only counts for a data set Redis has never
//!   seen, and a checkpoint of another incarnation of the topic counts as none.
//! - **batch**: one writer task gathers records (`batch.maxRecords` / `batch.maxWait`) and
//!   drops replays ([`Partition::admit`]). A batch is cut at every rebalance (the writer
//!   commits it before it handles the event), so it never spans two assignments, and a
//!   revoke waits until the revoked partitions' records are committed.
//! - **transact**: `WATCH` the batch's checkpoints and every key it writes, read the
//!   checkpoints and the keys' types (for a batch of keys met before, the previous `EXEC`'s
//!   round trip did this for the owned partitions' checkpoints: one round trip a batch,
//!   [`RedisSink::take_standing`]); a checkpoint below what this writer knows Redis held
//!   (Redis lost acknowledged writes) seeks its partition back to it; drop what is at or
//!   below a checkpoint now (another worker got there first); the kind computes its commands and what it produces
//!   ([`StageKind::effects`]); the produced and dead-lettered records are sent and
//!   acknowledged; then one `MULTI`: the kind's commands, the checkpoints, the batch event;
//!   `EXEC`. A moved checkpoint aborts `EXEC` ([`Metrics::transaction_conflicts`]) and the
//!   batch starts again at `WATCH`.
//! - **store offsets** for the next Kafka commit, only after `EXEC`.
//!
//! Key types are checked under `WATCH` before `MULTI` rather than in a script: Redis
//! applies the rest of a transaction when one command fails in it, checkpoint included, so
//! a `WRONGTYPE` inside `EXEC` would skip the records for good. A key of another type
//! blocks the stage instead (unready, `ferry_stage_blocked`, the key in `/readyz`) until it
//! is removed. Each key is checked (and watched) the first time the writer meets it, until a
//! batch that wrote it commits: checking every key of every batch cost a fifth of the
//! receiver's throughput (bench/README.md). A command that still fails inside `EXEC` (a key
//! some other client turned into another type later, a counter field that is not a number)
//! halts the stage the same way and stores no more offsets: Redis has applied the rest of
//! that transaction, checkpoint included, so the halt is what says the failed command's
//! effect is missing.
//!
//! A stage kind supplies only how it decodes ([`Decode`]) and what a batch writes and
//! produces ([`StageKind`]); retries, backoff, fencing and the dead-letter topic are here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::position::{self, Admit, KafkaFacts, Partition, PlanInput, PositionEvent};
use super::{
    ConsumeError, ConsumerEvent, Shutdown, StageContext, commit_stored, consumer_config,
    kafka_client_config,
};
use crate::backoff::Backoff;
use crate::config::{BatchConfig, OffsetReset, WorkerConfig};
use crate::http::{self, Problem, Readiness};
use crate::metrics::{BlockedLabel, Metrics, ReasonLabel};
use crate::record::RejectReason;
use crate::sink::{self, Checkpoint, FastHash, RedisSink, SinkError, TransactionOutcome};
use crate::status::Reason;

/// Headers of every record a stage produces (output and dead-letter topics alike): where
/// it came from, so a reader can drop the duplicates a crash between produce and `EXEC`
/// makes. Dead letters also carry why.
pub const HEADER_SOURCE_TOPIC: &str = "ferry-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "ferry-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "ferry-source-offset";
pub const HEADER_REASON: &str = "ferry-reason";
pub const HEADER_DETAIL: &str = "ferry-detail";

/// Process-level knobs of a stage; the pipeline's own settings are in the config.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// How long a revoke waits for the revoked partitions' records to reach Redis.
    pub drain_timeout: Duration,
    /// How long the stage has from SIGTERM (not from when it got round to it) to drain
    /// in-flight records, commit and leave the group.
    pub shutdown_timeout: Duration,
    /// Kafka group session timeout: how soon a crashed worker's partitions move.
    pub session_timeout: Duration,
    /// Redis response timeout; a slower reply counts as a failure and is retried.
    pub redis_timeout: Duration,
    /// The largest record a produced topic takes where its `max.message.bytes` cannot be
    /// read (no DescribeConfigs right): bigger dead letters go out as stubs.
    pub max_message_bytes: usize,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(10),
            redis_timeout: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// librdkafka's producer default `message.max.bytes`, a little under Kafka's topic default
/// of 1,048,588: where a topic's own limit cannot be read, dead letters above it are stubs.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Produce attempts in a row that make the stage unready naming the record.
const PRODUCE_FAILURES_UNREADY: u32 = 3;

/// How long the start waits between rights probes while Redis refuses a right.
const PROBE_RETRY: Duration = Duration::from_secs(5);

/// Where a record sits in its topic.
pub trait Positioned {
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// The bytes the record holds (key and value), for `batch.max_bytes`.
    fn bytes(&self) -> usize;
}

/// Why a record goes to the dead-letter topic (its `ferry-reason` header).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It does not decode, or fails the receiver's checks.
    Record(RejectReason),
    /// A validate rule failed: the rule's name.
    Rule(String),
    /// Enrich found no reference version at the record's time.
    NoReference,
}

impl Refusal {
    /// The `ferry-reason` header.
    pub fn header(&self) -> &str {
        match self {
            Self::Record(reason) => reason.as_str(),
            Self::Rule(rule) => rule,
            Self::NoReference => crate::process::enrich::NO_REFERENCE,
        }
    }

    /// The `reason` label of `ferry_records_dead_lettered_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Self::Rule(rule) => format!("rule:{rule}"),
            other => other.header().to_owned(),
        }
    }
}

/// A refused record, kept whole for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub reason: Refusal,
    pub detail: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Positioned for Rejected {
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// A record for the stage's output topic.
#[derive(Debug, Clone)]
pub struct Output {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A decoded record, or a refused one (boxed: refusals are rare, records are the hot path).
pub type Decoded<R> = Result<R, Box<Rejected>>;

/// The consumer side of a stage kind: what a Kafka message becomes. Runs on the consumer
/// task, once per record: the hot path.
pub trait Decode: Send + 'static {
    type Record: Positioned + Send + Sync + 'static;

    fn decode(&self, message: &BorrowedMessage<'_>, now_ms: i64) -> Decoded<Self::Record>;

    /// Whether [`Decode::decode`] reads `now_ms` (a clock read per chunk otherwise saved).
    fn needs_clock(&self) -> bool {
        false
    }
}

/// The fresh part of a batch: neither applied before nor fenced off.
#[derive(Debug)]
pub struct Fresh<'a, R> {
    pub records: &'a [&'a R],
    pub refused: &'a [&'a Rejected],
}

/// What a batch writes and produces, as the stage kind computed it.
#[derive(Debug, Default)]
pub struct Effects {
    /// Commands for the batch transaction, before its checkpoints.
    pub commands: Vec<redis::Cmd>,
    pub outputs: Vec<Output>,
    /// Records the kind refuses (a failed rule, no reference data).
    pub dead_letters: Vec<Rejected>,
    /// Records that took effect in Redis.
    pub written: u64,
    /// Data keys the commands touch (for the batch event).
    pub keys_touched: usize,
    /// The source ids the batch event names (the receiver's; up to
    /// [`sink::EVENT_SOURCES_LIMIT`] are sent).
    pub sources: Vec<String>,
}

/// A failure of the stage kind's own work (its reads); the batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("Redis {operation}: {source}")]
    Redis {
        operation: &'static str,
        source: redis::RedisError,
    },
}

impl KindError {
    pub fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { operation, source }
    }

    fn operation(&self) -> &'static str {
        match self {
            Self::Redis { operation, .. } => operation,
        }
    }
}

/// The writer side of a stage kind: what a batch does in Redis and produces.
pub trait StageKind: Send + 'static {
    type Record: Positioned + Send + Sync + 'static;

    /// Every key a batch of `records` may write, with the Redis type it writes there;
    /// watched and type-checked before `MULTI`.
    fn written_keys(&self, records: &[Self::Record]) -> Vec<(String, &'static str)>;

    /// The commands and produced records for the fresh part of a batch. Called on every
    /// attempt (a retry computes again from what Redis holds then).
    fn effects<'a>(
        &'a mut self,
        fresh: Fresh<'a, Self::Record>,
    ) -> impl Future<Output = Result<Effects, KindError>> + Send + 'a;

    /// The channel each committed batch's event is published on, inside the transaction.
    fn events_channel(&self) -> Option<String> {
        None
    }

    /// The commands a batch runs, on keys like the ones it writes, for the rights probe at
    /// start: queued in `MULTI` and discarded, never run.
    fn probe_commands(&self) -> Vec<redis::Cmd> {
        Vec::new()
    }
}

/// What the rights probe queues: the kind's commands, the checkpoint's read, type check
/// and write, the batch event's `PUBLISH`; and the key it `WATCH`es first.
struct RightsProbe {
    watch: String,
    commands: Vec<redis::Cmd>,
}

fn rights_probe<K: StageKind>(kind: &K, checkpoint_key: &str, events: Option<&str>) -> RightsProbe {
    let mut commands = kind.probe_commands();
    let mut mget = redis::cmd("MGET");
    mget.arg(checkpoint_key);
    let mut type_ = redis::cmd("TYPE");
    type_.arg(checkpoint_key);
    let mut set = redis::cmd("SET");
    set.arg(checkpoint_key).arg(-1);
    // The data set's marker is read with EXISTS and written with SET NX (like this).
    let mut exists = redis::cmd("EXISTS");
    exists.arg(checkpoint_key);
    // Dead letters are counted with HINCRBY (on their own key, under the same prefix).
    let mut count = redis::cmd("HINCRBY");
    count.arg(checkpoint_key).arg("probe").arg(1);
    commands.extend([mget, type_, set, exists, count]);
    if let Some(channel) = events {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(channel).arg("{}");
        commands.push(publish);
    }
    RightsProbe {
        watch: checkpoint_key.to_owned(),
        commands,
    }
}

/// The status channel's name of a position event.
const fn position_reason(event: PositionEvent) -> Reason {
    match event {
        PositionEvent::TopicRecreated => Reason::TopicRecreated,
        PositionEvent::RedisLostCheckpoint => Reason::RedisLostCheckpoint,
        PositionEvent::RedisRewound => Reason::RedisRewound,
        PositionEvent::RetentionGap => Reason::RetentionGap,
        PositionEvent::CommittedAboveLogEnd => Reason::CommittedAboveLogEnd,
        PositionEvent::OffsetsWentBack => Reason::OffsetsWentBack,
    }
}

/// Raises [`Reason::RedisPermissionDenied`] naming what Redis refused, or clears it.
fn report_rights(readiness: &Readiness, denied: &[String]) {
    if denied.is_empty() {
        if readiness.is_raised(Reason::RedisPermissionDenied) {
            info!("the Redis user has the rights Ferry needs now");
        }
        readiness.clear_all(Reason::RedisPermissionDenied);
        return;
    }
    let message = format!(
        "the Redis user may not run what Ferry needs (README, \"The Redis ACL Ferry needs\"): {}",
        denied.join("; ")
    );
    error!("{message}");
    readiness.raise(Reason::RedisPermissionDenied, "", Problem::new(message));
}

/// The rights probe at start: `MULTI`, the stage's real commands, `DISCARD`. While Redis
/// refuses one, the stage is unready saying which, and probes again; an unreachable Redis
/// is left to the batches' retries. False when shutdown came first.
async fn probe_until_allowed<K: StageKind>(
    sink: &mut RedisSink,
    kind: &K,
    checkpoint_key: &str,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
) -> bool {
    let probe = rights_probe(kind, checkpoint_key, kind.events_channel().as_deref());
    loop {
        match sink.probe(&probe.watch, &probe.commands).await {
            Ok(denied) => {
                report_rights(readiness, &denied);
                if denied.is_empty() {
                    return true;
                }
            }
            Err(error) => {
                warn!(%error, "cannot probe the Redis user's rights; starting anyway");
                return true;
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return false,
            _ = tokio::time::sleep(PROBE_RETRY) => {}
        }
    }
}

/// The topics a stage produces to; either may be absent.
#[derive(Debug, Clone, Default)]
pub struct ProducedTopics {
    pub output: Option<String>,
    pub dead_letter: Option<String>,
}

/// What the pipeline needs from a stage's config besides its kind.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: &'static str,
    pub batch: BatchConfig,
    pub topics: ProducedTopics,
}

/// A consumed record as the writer gets it: decoded (or refused), with its Kafka timestamp,
/// which checkpoints keep to tell a topic's incarnations apart.
#[derive(Debug)]
struct Consumed<R> {
    timestamp_ms: Option<i64>,
    decoded: Decoded<R>,
}

fn consume<D: Decode>(
    decoder: &D,
    message: &BorrowedMessage<'_>,
    now_ms: i64,
) -> Consumed<D::Record> {
    Consumed {
        timestamp_ms: message.timestamp().to_millis(),
        decoded: decoder.decode(message, now_ms),
    }
}

type StageConsumer<R> = StreamConsumer<StageContext<Consumed<R>>>;

/// A partition to place elsewhere: at `offset`, or at its beginning; `hold` pauses it there
/// (a record of it cannot go out yet), otherwise it is resumed.
#[derive(Debug, Clone, Copy)]
struct SeekRequest {
    partition: i32,
    offset: Option<i64>,
    hold: bool,
}

/// How long a seek may take to reach librdkafka's fetcher.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How many verified data keys a writer remembers before it starts checking all again.
const MAX_VERIFIED_KEYS: usize = 100_000;

/// The most records the consumer sends the writer at once (fewer if a batch is smaller).
const MAX_CHUNK: usize = 256;

/// Runs a stage until `shutdown`, then drains, commits and leaves the group.
pub async fn run<D, K>(
    config: &WorkerConfig,
    spec: StageSpec,
    options: &StageOptions,
    mut shutdown: Shutdown,
    decoder: D,
    kind: K,
) -> Result<(), ConsumeError>
where
    D: Decode,
    K: StageKind<Record = D::Record>,
{
    let metrics = Metrics::new(&config.pipeline);
    let readiness = Readiness::default();
    let http_task = http::spawn(config.http.listen, metrics.clone(), readiness.clone()).await?;
    info!(listen = %config.http.listen, "serving /metrics, /healthz, /readyz");

    let mut sink = RedisSink::new(&config.redis, options.redis_timeout)?;
    let producer = Producer::new(config, &spec.topics, options.max_message_bytes)?;
    let topic_checks = producer.spawn_topic_checks(config, readiness.clone());
    let checkpoint_probe_key = config.checkpoint_key(0);
    if !probe_until_allowed(
        &mut sink,
        &kind,
        &checkpoint_probe_key,
        &readiness,
        &mut shutdown,
    )
    .await
    {
        if let Some(task) = topic_checks {
            task.abort();
        }
        http_task.abort();
        return Ok(());
    }
    // Twice a batch, in chunks: the writer commits one batch while the next one queues.
    let max_records = spec.batch.max_records.max(1) as usize;
    let chunk_limit = max_records.clamp(1, MAX_CHUNK);
    let capacity = max_records.saturating_mul(2).div_ceil(chunk_limit).max(4);
    // And in bytes: the channel holds about one batch's `max_bytes`, a chunk its share.
    let max_bytes = spec.batch.max_bytes.max(1) as usize;
    let chunk_max_bytes = max_bytes.div_ceil(capacity);
    let (events, events_rx) = mpsc::channel(capacity);
    let (seeks, mut seek_requests) = mpsc::unbounded_channel();
    let context = StageContext::new(
        events.clone(),
        options.drain_timeout,
        metrics.clone(),
        &config.kafka.topic,
        shutdown.clone(),
        (config.kafka.auto_offset_reset == OffsetReset::Latest)
            .then_some(config.kafka.latest_from_ms)
            .flatten(),
    );
    let consumer: Arc<StageConsumer<D::Record>> = Arc::new(
        consumer_config(&config.kafka, options.session_timeout)?
            .create_with_context(context)
            .map_err(|source| ConsumeError::CreateClient {
                role: "consumer",
                source,
            })?,
    );
    consumer
        .subscribe(&[&config.kafka.topic])
        .map_err(|source| ConsumeError::Subscribe {
            topic: config.kafka.topic.clone(),
            source,
        })?;
    info!(
        topic = %config.kafka.topic,
        group = %config.kafka.consumer_group,
        format = ?config.format,
        "{} started",
        spec.name
    );

    let events_channel = kind.events_channel();
    let writer = Writer {
        kind,
        checkpoints: CheckpointKeys(config.clone()),
        topic: config.kafka.topic.clone(),
        sink,
        producer,
        events_channel,
        consumer: Arc::clone(&consumer),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        limits: BatchLimits {
            max_records,
            max_bytes,
            max_wait: spec.batch.max_wait.as_duration(),
        },
        source_drained: false,
        positions: HashMap::default(),
        seeks,
        pending_seeks: HashMap::default(),
        rules: PositionRules {
            data_set_key: config.data_set_key(),
            epoch: config.data_set_epoch(),
            reset: config.kafka.auto_offset_reset,
            commit_metadata: position::commit_metadata(&config.data_set_epoch()),
        },
        shutdown: shutdown.clone(),
        verified_keys: HashSet::default(),
        blocked_series: Vec::new(),
        batch: PendingBatch::default(),
        backoff: Backoff::DEFAULT,
        halted: None,
        produce_failures: 0,
        held: HashMap::default(),
    };
    let mut writer_task = tokio::spawn(writer.run(events_rx));

    let mut consume_health = ConsumeHealth::default();
    // One stream for the stage's life: `recv` takes and frees a waker slot, two mutex
    // rounds, per record.
    let mut messages = consumer.stream();
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(request) = seek_requests.recv() => {
                if !seek(&consumer, &config.kafka.topic, request, &events).await {
                    break;
                }
                continue;
            }
            received = messages.next() => match received {
                Some(received) => received,
                None => break,
            },
        };
        let now_ms = if decoder.needs_clock() { now_ms() } else { 0 };
        let mut chunk_bytes;
        match received {
            Ok(message) => {
                chunk_bytes = message_bytes(&message);
                if consume_health.on_record() {
                    info!("consuming again");
                    readiness.set_consume_failing(None);
                    consume_failing_metric(&metrics).set(0);
                }
                consumer
                    .context()
                    .stage(consume(&decoder, &message, now_ms));
            }
            Err(error) => {
                metrics.kafka_error("consume");
                // No pause here: librdkafka paces its own errors, and it queues them ahead of
                // the rebalance that follows an outage. A sleep per error fell behind a
                // burst of "all brokers down" and held the rejoin back for minutes.
                if let Some(suppressed) = consume_health.should_log(Instant::now()) {
                    warn!(%error, suppressed, "kafka consume error");
                }
                // Said once by librdkafka, then the stage waits without another word.
                if matches!(
                    error.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) {
                    readiness.raise(
                        Reason::TopicMissing,
                        &config.kafka.topic,
                        Problem::new(format!(
                            "source topic {} does not exist: the stage waits for it and \
                             starts once it is created",
                            config.kafka.topic
                        )),
                    );
                }
                if let Some(reason) = consume_health.on_error(&error) {
                    error!(%reason, "the stage is unready until consuming works again");
                    readiness.set_consume_failing(Some(reason));
                    consume_failing_metric(&metrics).set(1);
                }
                // Only a client that fails every poll at once (a fatal error) gets here this
                // often: a short breath, not a busy loop.
                if consume_health.errors_in_a_row % CONSUME_ERRORS_PER_PAUSE == 0 {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(CONSUME_ERROR_PAUSE) => {}
                    }
                }
                continue;
            }
        }
        // Whatever librdkafka already has joins the chunk.
        let mut chunk_len = 1;
        let mut drained = false;
        while chunk_len < chunk_limit && chunk_bytes < chunk_max_bytes {
            match messages.next().now_or_never().flatten() {
                Some(Ok(message)) => {
                    chunk_bytes += message_bytes(&message);
                    consumer
                        .context()
                        .stage(consume(&decoder, &message, now_ms));
                    chunk_len += 1;
                }
                Some(Err(error)) => {
                    metrics.kafka_error("consume");
                    if let Some(suppressed) = consume_health.should_log(Instant::now()) {
                        warn!(%error, suppressed, "kafka consume error");
                    }
                    drained = true;
                    break;
                }
                None => {
                    drained = true;
                    break;
                }
            }
        }
        metrics.records_in.inc_by(chunk_len as u64);
        // Empty if a rebalance callback has already sent them ahead of its event.
        let chunk = consumer.context().take_staged();
        if chunk.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            sent = events.send(ConsumerEvent::Items { items: chunk, drained }) => {
                if sent.is_err() { break }
            }
        }
        if writer_task.is_finished() {
            break;
        }
    }

    drop(messages);
    info!("stopping: draining in-flight records");
    let deadline = shutdown.deadline(options.shutdown_timeout);
    let (done, drained) = oneshot::channel();
    let stop = async {
        events
            .send(ConsumerEvent::Stop { deadline, done })
            .await
            .is_ok()
            && drained.await.is_ok()
    };
    if !matches!(tokio::time::timeout_at(deadline, stop).await, Ok(true)) {
        warn!("in-flight records not drained in time; they will be read again after restart");
    }
    let writer_outcome =
        match tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut writer_task).await {
            Ok(joined) => joined.map_err(|err| ConsumeError::WriterTask(err.to_string())),
            Err(_) => {
                writer_task.abort();
                let _ = writer_task.await;
                Ok(())
            }
        };
    commit_stored(&*consumer, &metrics);
    consumer.context().set_closing();
    drop(events);
    // Closing leaves the group; it blocks on librdkafka, so off the runtime threads.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    if let Some(task) = topic_checks {
        task.abort();
    }
    http_task.abort();
    info!("{} stopped", spec.name);
    writer_outcome
}

/// Seeks one partition between chunks: every record consumed before the seek reaches the
/// writer ahead of the `Sought` event, every record after it comes from the new position
/// (librdkafka drops what it fetched for the old one before `seek` returns).
async fn seek<R: Send + Sync + 'static>(
    consumer: &StageConsumer<R>,
    topic: &str,
    request: SeekRequest,
    events: &mpsc::Sender<ConsumerEvent<Consumed<R>>>,
) -> bool {
    let SeekRequest {
        partition,
        offset,
        hold,
    } = request;
    let target = offset.map_or(Offset::Beginning, Offset::Offset);
    let mut only = TopicPartitionList::new();
    only.add_partition(topic, partition);
    // Paused before the seek, so nothing is fetched from the new position while held.
    if hold && let Err(error) = consumer.pause(&only) {
        warn!(%error, partition, "cannot pause the partition");
    }
    let result =
        tokio::task::block_in_place(|| consumer.seek(topic, partition, target, SEEK_TIMEOUT));
    match &result {
        Ok(()) => info!(partition, ?target, hold, "partition sought"),
        Err(error) => warn!(%error, partition, ?target, "seek failed"),
    }
    if !hold && let Err(error) = consumer.resume(&only) {
        warn!(%error, partition, "cannot resume the partition");
    }
    let sought = ConsumerEvent::Sought {
        partition,
        done: result.is_ok(),
    };
    StageContext::send_with_staged(events.clone(), consumer.context().take_staged(), sought).await
}

/// How many consume errors in a row make the stage unready: a partition librdkafka cannot
/// read (a batch it cannot decompress, say) returns the same error without advancing.
const CONSUME_ERRORS_UNREADY: u32 = 5;

/// After this many consume errors in a row the consumer pauses for [`CONSUME_ERROR_PAUSE`]:
/// far more than an outage's queued errors arrive at once, so those are read straight
/// through, and a client that fails every poll does not spin.
const CONSUME_ERRORS_PER_PAUSE: u32 = 1000;
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At most one consume error is logged per this interval; the rest are counted.
const CONSUME_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Counts consume errors in a row, and paces their log lines.
#[derive(Debug, Default)]
struct ConsumeHealth {
    errors_in_a_row: u32,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl ConsumeHealth {
    /// Whether to log this error, with how many were left unlogged since the last line.
    fn should_log(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(at) if now.duration_since(at) < CONSUME_ERROR_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The reason to go unready, once, when errors in a row reach the limit.
    fn on_error(&mut self, error: &KafkaError) -> Option<String> {
        self.errors_in_a_row = self.errors_in_a_row.saturating_add(1);
        (self.errors_in_a_row == CONSUME_ERRORS_UNREADY).then(|| {
            format!("{CONSUME_ERRORS_UNREADY} Kafka consume errors in a row, the last: {error}")
        })
    }

    /// True when a record ends a run of errors that made the stage unready.
    fn on_record(&mut self) -> bool {
        std::mem::take(&mut self.errors_in_a_row) >= CONSUME_ERRORS_UNREADY
    }
}

fn consume_failing_metric(metrics: &Metrics) -> prometheus_client::metrics::gauge::Gauge {
    metrics
        .blocked
        .get_or_create(&BlockedLabel {
            reason: "consume_error".to_owned(),
            key: String::new(),
        })
        .clone()
}

/// What a consumed record weighs: its key and value.
fn message_bytes(message: &BorrowedMessage<'_>) -> usize {
    use rdkafka::Message as _;
    message.payload_len() + message.key().map_or(0, <[u8]>::len)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Builds checkpoint keys; a wrapper so the writer needs no whole-config access elsewhere.
struct CheckpointKeys(WorkerConfig);

impl CheckpointKeys {
    fn key(&self, partition: i32) -> String {
        self.0.checkpoint_key(partition)
    }
}

/// Records taken since the last commit, in partition order.
#[derive(Debug)]
struct PendingBatch<R> {
    started: Option<Instant>,
    records: Vec<R>,
    rejects: Vec<Rejected>,
    /// The highest offset taken per partition (including records skipped as already
    /// applied), with its record's Kafka timestamp.
    last_offsets: BTreeMap<i32, (i64, Option<i64>)>,
    /// The lowest offset taken per partition: where it is read again from if held.
    first_offsets: BTreeMap<i32, i64>,
    taken: usize,
    /// What the records and rejects hold, keys and values ([`Positioned::bytes`]).
    bytes: usize,
}

impl<R> Default for PendingBatch<R> {
    fn default() -> Self {
        Self {
            started: None,
            records: Vec::new(),
            rejects: Vec::new(),
            last_offsets: BTreeMap::new(),
            first_offsets: BTreeMap::new(),
            taken: 0,
            bytes: 0,
        }
    }
}

impl<R: Positioned> PendingBatch<R> {
    /// Drops a partition's records: they are read again from where it is sought to.
    fn drop_partition(&mut self, partition: i32) {
        self.records
            .retain(|record| record.partition() != partition);
        self.rejects
            .retain(|rejected| rejected.partition != partition);
        self.last_offsets.remove(&partition);
        self.first_offsets.remove(&partition);
        if self.last_offsets.is_empty() {
            self.clear();
        }
    }
}

impl<R> PendingBatch<R> {
    fn is_empty(&self) -> bool {
        self.last_offsets.is_empty()
    }

    fn note(&mut self, partition: i32, offset: i64, timestamp_ms: Option<i64>) {
        self.started.get_or_insert_with(Instant::now);
        self.taken += 1;
        let last = self
            .last_offsets
            .entry(partition)
            .or_insert((offset, timestamp_ms));
        if offset >= last.0 {
            *last = (offset, timestamp_ms);
        }
        let first = self.first_offsets.entry(partition).or_insert(offset);
        *first = (*first).min(offset);
    }

    /// Empties the batch, keeping its buffers for the next one.
    fn clear(&mut self) {
        self.started = None;
        self.records.clear();
        self.rejects.clear();
        self.last_offsets.clear();
        self.first_offsets.clear();
        self.taken = 0;
        self.bytes = 0;
    }
}

/// How the writer places partitions and marks what it commits.
#[derive(Debug)]
struct PositionRules {
    data_set_key: String,
    epoch: String,
    reset: OffsetReset,
    /// Stored offsets carry it: the data set's epoch.
    commit_metadata: String,
}

/// Why one attempt to commit a batch failed.
#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Redis(#[from] SinkError),
    #[error(transparent)]
    Kind(#[from] KindError),
    #[error(
        "cannot deliver the record of partition {partition} offset {offset} to topic {topic}: {source}"
    )]
    Produce {
        topic: String,
        partition: i32,
        offset: i64,
        source: KafkaError,
    },
    #[error(
        "the output record of partition {partition} offset {offset} is {size} bytes, over \
         the {limit} topic {topic} takes"
    )]
    Oversize {
        topic: String,
        partition: i32,
        offset: i64,
        size: usize,
        limit: usize,
    },
    #[error("a checkpoint changed during the transaction")]
    Conflict,
    /// Redis holds less than this writer committed: those partitions are sought back.
    #[error("Redis lost checkpoints this writer committed; re-reading those partitions")]
    Rewound,
    /// Writing would fail inside `EXEC` and the checkpoint would land regardless: the
    /// batch stops here, unapplied, until the key is fixed.
    #[error("batch blocked: {0}")]
    WrongType(sink::WrongType),
    /// Commands failed inside `EXEC` (Redis applied the rest): the stage halts.
    #[error("commands failed inside the batch transaction: {}", .0.join("; "))]
    FailedInExec(Vec<String>),
}

/// A batch's caps: `batch.maxRecords`, `batch.maxBytes` and `batch.maxWait`.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    max_records: usize,
    /// A batch is committed once its records hold this many bytes.
    max_bytes: usize,
    max_wait: Duration,
}

/// What the writer does with the pending batch before it takes more records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// No batch pending.
    Nothing,
    /// Commit it.
    Now,
    /// Take what the consumer sends next, committing by this instant at the latest.
    GrowUntil(Instant),
}

impl BatchLimits {
    fn full<R>(&self, batch: &PendingBatch<R>) -> bool {
        batch.taken >= self.max_records || batch.bytes >= self.max_bytes
    }

    /// Adaptive batching: a batch grows only while records keep coming, so a record that
    /// arrives alone goes out at once and a backlog still fills batches to the caps.
    /// `drained`: the consumer had nothing more to hand over after the last records.
    fn decide<R>(&self, batch: &PendingBatch<R>, drained: bool, now: Instant) -> Flush {
        let Some(started) = batch.started.filter(|_| !batch.is_empty()) else {
            return Flush::Nothing;
        };
        let deadline = started + self.max_wait;
        if drained || self.full(batch) || deadline <= now {
            Flush::Now
        } else {
            Flush::GrowUntil(deadline)
        }
    }
}

struct Writer<K: StageKind> {
    kind: K,
    checkpoints: CheckpointKeys,
    topic: String,
    sink: RedisSink,
    producer: Producer,
    events_channel: Option<String>,
    consumer: Arc<StageConsumer<K::Record>>,
    metrics: Metrics,
    readiness: Readiness,
    limits: BatchLimits,
    /// The last records came with nothing more behind them (in librdkafka or the
    /// channel): the pending batch goes out now instead of waiting to grow.
    source_drained: bool,
    /// The owned partitions.
    positions: HashMap<i32, Partition, FastHash>,
    seeks: mpsc::UnboundedSender<SeekRequest>,
    /// Seeks asked for and not yet done, by partition.
    pending_seeks: HashMap<i32, Option<i64>, FastHash>,
    rules: PositionRules,
    shutdown: Shutdown,
    /// Data keys found holding the right type (or none) and written since: not checked
    /// again.
    verified_keys: HashSet<String, FastHash>,
    /// The `ferry_stage_blocked` series this writer set, removed when a batch commits.
    blocked_series: Vec<BlockedLabel>,
    batch: PendingBatch<K::Record>,
    backoff: Backoff,
    /// Set when a command failed inside `EXEC`: the stage takes no more records (their
    /// offsets stay unstored) and stays unready until restarted.
    halted: Option<String>,
    /// Attempts in a row whose produce failed.
    produce_failures: u32,
    /// Partitions held because a record of theirs cannot go out: the rest go on.
    held: HashMap<i32, Held, FastHash>,
}

/// A partition held at `offset`, the first record of it the writer gave up on for now;
/// read again from there at `retry_at` (`None`: it is being read again).
#[derive(Debug, Clone, Copy)]
struct Held {
    offset: i64,
    retry_at: Option<Instant>,
    attempts: u32,
}

/// How long a held partition waits before its records are tried again: 5 s, doubling to
/// a minute.
fn hold_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(4);
    Duration::from_secs(5 << doublings).min(Duration::from_secs(60))
}

impl<K: StageKind> Writer<K> {
    async fn run(mut self, mut events: mpsc::Receiver<ConsumerEvent<Consumed<K::Record>>>) {
        loop {
            self.retry_held();
            let flush_at =
                match self
                    .limits
                    .decide(&self.batch, self.source_drained, Instant::now())
                {
                    Flush::Now => {
                        self.flush(None).await;
                        continue;
                    }
                    Flush::GrowUntil(at) => Some(at),
                    Flush::Nothing => None,
                };
            let retry_at = self.held.values().filter_map(|held| held.retry_at).min();
            let event = match flush_at.into_iter().chain(retry_at).min() {
                None => events.recv().await,
                Some(at) => tokio::select! {
                    biased;
                    event = events.recv() => event,
                    _ = tokio::time::sleep_until(at) => continue,
                },
            };
            match event {
                Some(ConsumerEvent::Items { items, drained }) => {
                    for record in items {
                        self.take(record);
                        if self.limits.full(&self.batch) {
                            self.flush(None).await;
                        }
                    }
                    // A chunk already queued behind this one: the batch keeps growing.
                    self.source_drained = drained && events.is_empty();
                }
                Some(ConsumerEvent::Assigned { facts, starts }) => {
                    // Only left over if a revoke timed out; the fencing keeps it safe.
                    self.flush(Some(
                        Instant::now() + self.limits.max_wait.max(Duration::from_secs(5)),
                    ))
                    .await;
                    if let Some(placed) = self.assign(facts).await {
                        let _ = starts.send(placed);
                    }
                }
                Some(ConsumerEvent::Sought { partition, done }) => {
                    self.sought(partition, done).await;
                }
                Some(ConsumerEvent::Revoked {
                    partitions,
                    deadline,
                    done,
                }) => {
                    if !self.batch.is_empty() {
                        // The rebalance tests look for this: the case they are about.
                        info!(
                            records = self.batch.taken,
                            ?partitions,
                            "revoked inside a batch: committing it before the partitions go"
                        );
                    }
                    self.flush(Some(deadline)).await;
                    self.revoke(&partitions);
                    let _ = done.send(());
                }
                Some(ConsumerEvent::Stop { deadline, done }) => {
                    self.flush(Some(deadline)).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    self.flush(None).await;
                    return;
                }
            }
        }
    }

    fn take(&mut self, consumed: Consumed<K::Record>) {
        let Consumed {
            timestamp_ms,
            decoded,
        } = consumed;
        let (partition, offset) = match &decoded {
            Ok(record) => (record.partition(), record.offset()),
            Err(rejected) => (rejected.partition, rejected.offset),
        };
        let waiting = self
            .held
            .get(&partition)
            .is_some_and(|held| held.retry_at.is_some());
        let position = match self.positions.get_mut(&partition) {
            Some(position) if self.halted.is_none() && !waiting => position,
            _ => {
                debug!(
                    partition,
                    offset, "dropping a record of a partition not owned (or the stage halted)"
                );
                return;
            }
        };
        match position.admit(offset, timestamp_ms) {
            Admit::Take => {}
            Admit::TakeReporting(event) => self.report(partition, event, offset),
            Admit::Skip => {
                self.batch.note(partition, offset, timestamp_ms);
                self.metrics.records_skipped.inc();
                return;
            }
            Admit::Stale => return,
            Admit::Seek {
                offset: target,
                event,
            } => {
                self.report(partition, event, offset);
                self.request_seek(partition, target);
                return;
            }
        }
        self.batch.note(partition, offset, timestamp_ms);
        match decoded {
            Ok(record) => {
                self.batch.bytes += record.bytes();
                self.batch.records.push(record);
            }
            Err(rejected) => {
                self.batch.bytes += rejected.bytes();
                self.batch.rejects.push(*rejected);
            }
        }
    }

    /// Counts and logs a position event; `offset` is where it was seen.
    fn report(&self, partition: i32, event: PositionEvent, offset: i64) {
        self.metrics
            .position_events
            .get_or_create(&ReasonLabel {
                reason: event.as_str().to_owned(),
            })
            .inc();
        warn!(
            partition,
            offset,
            reason = event.as_str(),
            "{}",
            event.explain()
        );
        self.readiness.note(
            position_reason(event),
            &partition.to_string(),
            Problem::new(event.explain()).at(partition, offset),
        );
    }

    /// Asks the consumer task to place `partition` at `offset` (`None`: its beginning);
    /// its records are skipped until the seek is done.
    fn request_seek(&mut self, partition: i32, offset: Option<i64>) {
        self.seek_partition(partition, offset, false);
    }

    /// Drops the partition's records from the batch and asks the consumer task to place it
    /// at `offset`, paused there when `hold`.
    fn seek_partition(&mut self, partition: i32, offset: Option<i64>, hold: bool) {
        self.batch.drop_partition(partition);
        self.pending_seeks.insert(partition, offset);
        let _ = self.seeks.send(SeekRequest {
            partition,
            offset,
            hold,
        });
    }

    /// Holds a partition a record of which cannot go out: its records leave the batch,
    /// it is paused at the first of them, and the rest of the batch goes on. It is read
    /// again from there after [`hold_delay`]; its reason stays raised until it commits.
    /// False if the batch holds no record of it (nothing to hold).
    fn hold(&mut self, partition: i32) -> bool {
        let Some(offset) = self.batch.first_offsets.get(&partition).copied() else {
            return false;
        };
        let Some(position) = self.positions.get_mut(&partition) else {
            return false;
        };
        position.rewind(offset);
        let held = self.held.entry(partition).or_insert(Held {
            offset,
            retry_at: None,
            attempts: 0,
        });
        held.offset = offset;
        held.attempts = held.attempts.saturating_add(1);
        let delay = hold_delay(held.attempts);
        held.retry_at = Some(Instant::now() + delay);
        warn!(
            partition,
            offset,
            retry_in = ?delay,
            "holding the partition: a record of it cannot go out; the others go on"
        );
        self.metrics.partitions_held.inc();
        self.seek_partition(partition, Some(offset), true);
        true
    }

    /// Reads the held partitions whose wait is over again, from where they were held.
    fn retry_held(&mut self) {
        let now = Instant::now();
        let due: Vec<(i32, i64)> = self
            .held
            .iter_mut()
            .filter(|(_, held)| held.retry_at.is_some_and(|at| at <= now))
            .map(|(partition, held)| {
                held.retry_at = None;
                (*partition, held.offset)
            })
            .collect();
        for (partition, offset) in due {
            let Some(position) = self.positions.get_mut(&partition) else {
                self.held.remove(&partition);
                continue;
            };
            info!(partition, offset, "trying the held partition again");
            position.rewind(offset);
            self.request_seek(partition, Some(offset));
        }
    }

    /// Clears `RecordUndeliverable` for every partition not held.
    fn clear_undeliverable(&self) {
        let held = &self.held;
        self.readiness
            .clear_where(Reason::RecordUndeliverable, |subject| {
                subject
                    .parse::<i32>()
                    .map_or(true, |partition| !held.contains_key(&partition))
            });
    }

    async fn sought(&mut self, partition: i32, done: bool) {
        let Some(target) = self.pending_seeks.remove(&partition) else {
            return;
        };
        let Some(position) = self.positions.get_mut(&partition) else {
            return;
        };
        if done {
            position.sought();
            return;
        }
        // The partition is still this writer's: try again, a little later.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.request_seek(partition, target);
    }

    /// Places the assigned partitions: reads their checkpoints and decides where each
    /// starts ([`position::plan`]). `None` if the stage stops first.
    async fn assign(&mut self, facts: Vec<KafkaFacts>) -> Option<Vec<(i32, i64)>> {
        self.positions.clear();
        self.pending_seeks.clear();
        // Placed from their checkpoints again: a record that still cannot go out is held
        // again when it is met.
        self.held.clear();
        self.readiness.clear_all(Reason::RecordUndeliverable);
        // A new assignment checks every key again, once.
        self.verified_keys.clear();
        self.readiness.set_assigned(true);
        if !facts.is_empty() {
            self.readiness.clear(Reason::TopicMissing, &self.topic);
        }
        if facts.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = facts
            .iter()
            .map(|f| self.checkpoints.key(f.partition))
            .collect();
        let (checkpoints, data_set_exists) = loop {
            let read = tokio::select! {
                read = self.sink.read_checkpoints(&keys, &self.rules.data_set_key) => read,
                _ = self.shutdown.wait() => return None,
            };
            match read {
                Ok(read) => break read,
                Err(error) => {
                    // Without the checkpoints no start is safe: wait for Redis (unready).
                    self.redis_failed(&error);
                    let delay = self.backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "cannot read checkpoints");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.wait() => return None,
                    }
                }
            }
        };
        self.readiness.set_redis_connected(true);
        self.backoff.reset();
        let plans: Vec<_> = facts
            .iter()
            .zip(checkpoints)
            .map(|(facts, checkpoint)| {
                let plan = position::plan(&PlanInput {
                    checkpoint,
                    facts,
                    data_set_exists,
                    epoch: &self.rules.epoch,
                    reset: self.rules.reset,
                });
                (facts, checkpoint, plan)
            })
            .collect();
        let mut initial_written = true;
        if !data_set_exists {
            let initial: Vec<(String, Checkpoint)> = plans
                .iter()
                .filter_map(|(facts, _, plan)| {
                    plan.initial
                        .map(|checkpoint| (self.checkpoints.key(facts.partition), checkpoint))
                })
                .collect();
            if let Err(error) = self
                .sink
                .start_data_set(&self.rules.data_set_key, &self.rules.epoch, &initial)
                .await
            {
                self.redis_failed(&error);
                warn!(%error, "cannot mark the new data set's start; the first batch will");
                initial_written = false;
            }
        }
        let mut starts = Vec::with_capacity(plans.len());
        for (facts, checkpoint, mut plan) in plans {
            let partition = facts.partition;
            for event in &plan.events {
                self.report(partition, *event, plan.start);
            }
            if plan.gap > 0 {
                self.metrics.retention_gap_records.inc_by(plan.gap);
            }
            if !initial_written {
                plan.initial = None;
            }
            info!(
                partition,
                start = plan.start,
                checkpoint = ?checkpoint.map(|c| c.offset),
                log_start = facts.low,
                log_end = facts.high,
                committed = ?facts.committed,
                "placing the partition"
            );
            self.positions
                .insert(partition, Partition::new(&plan, checkpoint));
            starts.push((partition, plan.start));
        }
        Some(starts)
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.positions.remove(partition);
            self.pending_seeks.remove(partition);
            if self.held.remove(partition).is_some() {
                self.readiness
                    .clear(Reason::RecordUndeliverable, &partition.to_string());
            }
        }
        if self.positions.is_empty() {
            self.readiness.set_assigned(false);
        }
    }

    /// Unready, with the reason in `/readyz`, `/status`, the metrics and the log, until a
    /// batch commits.
    fn block(&mut self, reason: Reason, label: &'static str, key: &str, message: String) {
        error!(reason = label, key, "{message}");
        self.readiness.raise(reason, key, Problem::new(message));
        let label = BlockedLabel {
            reason: label.to_owned(),
            key: key.to_owned(),
        };
        self.metrics.blocked.get_or_create(&label).set(1);
        self.blocked_series.push(label);
    }

    fn redis_failed(&mut self, error: &SinkError) {
        self.metrics.redis_error(error.operation());
        self.readiness.set_redis_connected(false);
        self.readiness.raise(
            Reason::RedisUnavailable,
            "",
            Problem::new(format!("{error}; retrying")),
        );
    }

    /// A record that would not go out: after [`PRODUCE_FAILURES_UNREADY`] attempts in a row
    /// (at once when retrying cannot help), the stage is unready naming its partition and
    /// offset, instead of retrying in silence. A missing topic is reported as such too.
    /// Returns the partition to hold when the record is given up on for now.
    fn produce_failed(&mut self, error: &FlushError) -> Option<i32> {
        self.metrics.kafka_error("produce");
        self.produce_failures = self.produce_failures.saturating_add(1);
        let (topic, partition, offset, hopeless) = match error {
            FlushError::Produce {
                topic,
                partition,
                offset,
                source,
            } => {
                let code = source.rdkafka_error_code();
                let missing = matches!(
                    code,
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                );
                if missing {
                    self.readiness.raise(
                        Reason::TopicMissing,
                        topic,
                        Problem::new(format!(
                            "topic {topic} does not exist (Ferry does not create the topics \
                             it produces to): create it; records that must go there wait"
                        )),
                    );
                }
                let hopeless = missing
                    || matches!(
                        code,
                        Some(
                            RDKafkaErrorCode::TopicAuthorizationFailed
                                | RDKafkaErrorCode::MessageSizeTooLarge
                                | RDKafkaErrorCode::InvalidRecord
                        )
                    );
                (topic, *partition, *offset, hopeless)
            }
            FlushError::Oversize {
                topic,
                partition,
                offset,
                ..
            } => (topic, *partition, *offset, true),
            _ => return None,
        };
        if hopeless || self.produce_failures >= PRODUCE_FAILURES_UNREADY {
            if !self.readiness.is_raised(Reason::RecordUndeliverable) {
                error!(
                    %error,
                    topic = %topic,
                    partition,
                    offset,
                    "a record cannot be delivered: its partition is held and retried; \
                     the stage is unready until it goes out"
                );
            }
            self.readiness.raise(
                Reason::RecordUndeliverable,
                &partition.to_string(),
                Problem::new(format!(
                    "{error}; partition {partition} is held from offset {offset} and retried \
                     until it goes out, the other partitions go on"
                ))
                .at(partition, offset),
            );
            return Some(partition);
        }
        None
    }

    /// Runs the rights probe again after Redis refused a command for want of a right (or
    /// discarded a transaction, which a refused right causes); true when a refused right
    /// is what it was.
    async fn redis_refused(&mut self, error: &SinkError) -> bool {
        let probe = rights_probe(
            &self.kind,
            &self.checkpoints.key(0),
            self.events_channel.as_deref(),
        );
        match self.sink.probe(&probe.watch, &probe.commands).await {
            Ok(denied) => report_rights(&self.readiness, &denied),
            Err(error) => debug!(%error, "the rights probe failed"),
        }
        if !self.readiness.is_raised(Reason::RedisPermissionDenied)
            && error.to_string().contains("NOPERM")
        {
            self.readiness.raise(
                Reason::RedisPermissionDenied,
                "",
                Problem::new(format!("Redis refused the batch: {error}")),
            );
        }
        self.readiness.is_raised(Reason::RedisPermissionDenied)
    }

    /// A batch committed: what it was stopped by is gone.
    fn committed(&mut self) {
        self.backoff.reset();
        self.produce_failures = 0;
        let held = &self.held;
        self.producer
            .batch_done(|partition| held.contains_key(&partition));
        self.readiness.set_redis_connected(true);
        if self.readiness.is_raised(Reason::KeyWrongType) {
            info!("the blocking key is fixed; committing again");
        }
        for reason in [Reason::KeyWrongType, Reason::RedisPermissionDenied] {
            self.readiness.clear_all(reason);
        }
        self.clear_undeliverable();
        // Only the writer's own series: the consumer's stay its own.
        for label in self.blocked_series.drain(..) {
            self.metrics.blocked.remove(&label);
        }
    }

    /// Commits the pending batch, retrying with backoff; past `deadline` it gives up and
    /// forgets the batch (its offsets stay unstored, so the records are read again).
    async fn flush(&mut self, deadline: Option<Instant>) {
        if self.batch.is_empty() {
            return;
        }
        loop {
            match self.try_flush().await {
                Ok(()) => {
                    self.committed();
                    break;
                }
                Err(FlushError::Conflict) => {
                    self.metrics.transaction_conflicts.inc();
                    info!("checkpoint changed under the batch (partition moved?); re-filtering");
                    continue;
                }
                Err(FlushError::Rewound) => {
                    if self.batch.is_empty() {
                        return;
                    }
                    continue;
                }
                Err(FlushError::FailedInExec(failed)) => {
                    self.metrics.redis_error("transaction_command");
                    let message = format!(
                        "commands failed inside the batch transaction, which Redis applied \
                         otherwise: {}; the stage halts with these offsets unstored",
                        failed.join("; ")
                    );
                    self.block(
                        Reason::CommandFailedInExec,
                        "command_failed",
                        "",
                        message.clone(),
                    );
                    self.halted = Some(message);
                    self.forget_batch();
                    return;
                }
                Err(error) => {
                    match &error {
                        FlushError::Redis(sink_error) if sink_error.is_permission() => {
                            if self.redis_refused(sink_error).await {
                                self.metrics.redis_error(sink_error.operation());
                            } else {
                                self.redis_failed(sink_error);
                            }
                        }
                        FlushError::Redis(sink_error) => self.redis_failed(sink_error),
                        FlushError::Kind(kind_error) => {
                            self.metrics.redis_error(kind_error.operation());
                        }
                        FlushError::Produce { .. } | FlushError::Oversize { .. } => {
                            if let Some(partition) = self.produce_failed(&error)
                                && self.hold(partition)
                            {
                                self.produce_failures = 0;
                                if self.batch.is_empty() {
                                    return;
                                }
                                continue;
                            }
                        }
                        FlushError::WrongType(wrong) => self.block(
                            Reason::KeyWrongType,
                            "wrong_type",
                            &wrong.key,
                            format!(
                                "batch blocked: {wrong}; remove or rename the key ({} expected)",
                                wrong.expected
                            ),
                        ),
                        FlushError::Conflict
                        | FlushError::Rewound
                        | FlushError::FailedInExec(_) => {}
                    }
                    let delay = self.backoff.next_delay();
                    if deadline.is_some_and(|deadline| Instant::now() + delay > deadline) {
                        warn!(%error, "giving up on the batch at the drain deadline");
                        self.forget_batch();
                        return;
                    }
                    warn!(
                        %error,
                        attempt = self.backoff.attempts(),
                        retry_in = ?delay,
                        "batch not committed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.store_offsets();
        self.batch.clear();
    }

    /// Drops the batch unapplied. Only a drain deadline (a rebalance or a stop, after which
    /// the partitions are placed again from their checkpoints) or a halt gives a batch up.
    fn forget_batch(&mut self) {
        let held = &self.held;
        self.producer
            .batch_done(|partition| held.contains_key(&partition));
        self.produce_failures = 0;
        self.clear_undeliverable();
        self.batch.clear();
    }

    async fn try_flush(&mut self) -> Result<(), FlushError> {
        let partitions: Vec<i32> = self.batch.last_offsets.keys().copied().collect();
        let keys: Vec<String> = partitions
            .iter()
            .map(|p| self.checkpoints.key(*p))
            .collect();
        let mut data_keys = self.kind.written_keys(&self.batch.records);
        data_keys.retain(|(key, _)| !self.verified_keys.contains(key));
        // The last `EXEC`'s round trip read the checkpoints under a `WATCH` still set: a
        // batch of keys met before needs no round trip of its own for them.
        let standing = self.sink.take_standing(&keys);
        let watched = match standing {
            Some(checkpoints) if data_keys.is_empty() => sink::Watched {
                checkpoints,
                wrong_types: Vec::new(),
            },
            _ => self.sink.watch_and_check(&keys, &data_keys).await?,
        };
        if let Some(wrong) = watched.wrong_types.into_iter().next() {
            self.sink.unwatch().await?;
            return Err(FlushError::WrongType(wrong));
        }
        let mut checkpoints: HashMap<i32, i64> = HashMap::with_capacity(partitions.len());
        let mut rewound = Vec::new();
        for (partition, read) in partitions.iter().zip(watched.checkpoints) {
            let Some(position) = self.positions.get_mut(partition) else {
                continue;
            };
            if let Some(target) = position.on_checkpoint_read(read) {
                rewound.push((*partition, target));
            }
            checkpoints.insert(*partition, position.effective(read));
        }
        if !rewound.is_empty() {
            self.sink.unwatch().await?;
            for (partition, target) in rewound {
                self.report(
                    partition,
                    PositionEvent::RedisRewound,
                    target.map_or(-1, |offset| offset - 1),
                );
                self.request_seek(partition, target);
            }
            return Err(FlushError::Rewound);
        }
        let is_new = |partition: i32, offset: i64| {
            offset > checkpoints.get(&partition).copied().unwrap_or(-1)
        };
        let records: Vec<&K::Record> = self
            .batch
            .records
            .iter()
            .filter(|r| is_new(r.partition(), r.offset()))
            .collect();
        let refused: Vec<&Rejected> = self
            .batch
            .rejects
            .iter()
            .filter(|r| is_new(r.partition, r.offset))
            .collect();
        let advanced: BTreeMap<i32, Checkpoint> = self
            .batch
            .last_offsets
            .iter()
            .filter(|(partition, (last, _))| is_new(**partition, *last))
            .map(|(partition, (offset, timestamp_ms))| {
                (
                    *partition,
                    Checkpoint {
                        offset: *offset,
                        timestamp_ms: *timestamp_ms,
                    },
                )
            })
            .collect();
        let already_applied = self.batch.records.len() - records.len();
        if advanced.is_empty() {
            self.sink.unwatch().await?;
            self.metrics.records_skipped.inc_by(already_applied as u64);
            self.metrics.records_fenced.inc_by(already_applied as u64);
            return Ok(());
        }

        let effects = match self
            .kind
            .effects(Fresh {
                records: &records,
                refused: &refused,
            })
            .await
        {
            Ok(effects) => effects,
            Err(error) => {
                self.sink.unwatch().await?;
                return Err(error.into());
            }
        };
        let Effects {
            mut commands,
            outputs,
            dead_letters,
            written,
            keys_touched,
            sources,
        } = effects;
        let dead_letters: Vec<&Rejected> =
            refused.iter().copied().chain(dead_letters.iter()).collect();
        // Dead letters per reason, in the transaction: counted once, as the records are.
        let mut per_reason: BTreeMap<String, i64> = BTreeMap::new();
        for rejected in &dead_letters {
            *per_reason
                .entry(rejected.reason.metric_label())
                .or_default() += 1;
        }
        let dead_letters_key = self.checkpoints.0.dead_letters_key();
        for (reason, by) in per_reason {
            let mut count = redis::cmd("HINCRBY");
            count.arg(&dead_letters_key).arg(reason).arg(by);
            commands.push(count);
        }

        // Produced records are acknowledged before their offsets are checkpointed: at least
        // once on the topics, with their source in headers for readers to drop duplicates.
        if let Err(error) = self.producer.send_all(&outputs, &dead_letters).await {
            self.sink.unwatch().await?;
            return Err(error);
        }

        for (partition, checkpoint) in &advanced {
            let mut set = redis::cmd("SET");
            set.arg(self.checkpoints.key(*partition))
                .arg(checkpoint.encode());
            commands.push(set);
        }
        // The data set's marker, in case Redis lost it since the partitions were placed.
        let mut mark = redis::cmd("SET");
        mark.arg(&self.rules.data_set_key)
            .arg(&self.rules.epoch)
            .arg("NX");
        commands.push(mark);
        if let Some(channel) = &self.events_channel {
            let offsets: BTreeMap<i32, i64> = advanced
                .iter()
                .map(|(partition, checkpoint)| (*partition, checkpoint.offset))
                .collect();
            let event = sink::batch_event(
                keys_touched,
                &sources,
                records.len(),
                dead_letters.len(),
                &offsets,
            );
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(channel).arg(event);
            commands.push(publish);
        }

        // Watched for the next batch from this `EXEC` on: every partition this writer owns.
        let watch_next: Vec<String> = self
            .positions
            .keys()
            .map(|partition| self.checkpoints.key(*partition))
            .collect();
        match self.sink.transaction(commands, &watch_next).await? {
            TransactionOutcome::Aborted => Err(FlushError::Conflict),
            TransactionOutcome::Committed { failed_commands } if !failed_commands.is_empty() => {
                Err(FlushError::FailedInExec(failed_commands))
            }
            TransactionOutcome::Committed { .. } => {
                if self.verified_keys.len() + data_keys.len() > MAX_VERIFIED_KEYS {
                    self.verified_keys.clear();
                }
                self.verified_keys
                    .extend(data_keys.into_iter().map(|(key, _)| key));
                for (partition, checkpoint) in &advanced {
                    if let Some(position) = self.positions.get_mut(partition) {
                        position.committed(*checkpoint);
                    }
                    if self.held.remove(partition).is_some() {
                        info!(partition, "the held partition went out; it flows again");
                    }
                }
                self.metrics.batches.inc();
                self.metrics.records_written.inc_by(written);
                self.metrics.records_skipped.inc_by(already_applied as u64);
                self.metrics.records_fenced.inc_by(already_applied as u64);
                for rejected in &dead_letters {
                    self.metrics
                        .dead_lettered(&rejected.reason.metric_label())
                        .inc();
                }
                if let Some(started) = self.batch.started {
                    self.metrics.observe_batch(started.elapsed());
                }
                Ok(())
            }
        }
    }

    /// Stores each owned partition's next offset, for the next (auto or revoke) commit,
    /// with the data set's epoch in the commit metadata.
    fn store_offsets(&self) {
        let mut offsets = TopicPartitionList::new();
        for (partition, (last, _)) in &self.batch.last_offsets {
            if self.positions.contains_key(partition) {
                let mut element = offsets.add_partition(&self.topic, *partition);
                let _ = element.set_offset(Offset::Offset(last + 1));
                element.set_metadata(self.rules.commit_metadata.as_str());
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.store_offsets(&offsets) {
            self.metrics.kafka_error("store_offsets");
            warn!(%error, "cannot store offsets; the records stay applied and are skipped if read again");
        }
    }
}

/// The one place a stage produces: its output records and its dead letters, with one
/// header set.
///
/// - **Sizes.** A record is checked against the largest record its topic takes: the topic's
///   `max.message.bytes` read with DescribeConfigs (every [`TOPIC_CHECK_INTERVAL`]), or
///   `--max-message-bytes` where the worker may not read the topic's config. A dead letter
///   over it, or one the broker refuses as too large, goes out as a **stub**: its headers,
///   `ferry-truncated` (the original payload's size) and the first [`STUB_BYTES`] of its
///   payload (and of its key, over [`crate::record::MAX_KEY_BYTES`]). An output record is
///   never cut: the next stage would read a wrong record; it is undeliverable instead.
/// - **Retries.** What a batch had acknowledged is remembered until the batch commits or is
///   given up, so a retry of the batch does not produce it again.
/// - **Topics.** Ferry never creates the topics it produces to (`allow.auto.create.topics`
///   off): a missing one is reported ([`Reason::TopicMissing`]) from the start.
struct Producer {
    producer: Option<FutureProducer>,
    topics: ProducedTopics,
    source_topic: String,
    reject_log: RateLimitedLog,
    /// The largest record each produced topic takes, where its config could be read.
    limits: Arc<Mutex<HashMap<String, usize>>>,
    /// Where a topic's limit is unknown.
    default_limit: usize,
    /// What the pending batch already had acknowledged.
    delivered: HashSet<(SentAs, i32, i64)>,
}

/// How long produced records may wait for delivery before the batch is retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a payload (and of an oversize key) a dead-letter stub keeps.
pub const STUB_BYTES: usize = 1024;

/// The header a stub carries: the original payload's size in bytes.
pub const HEADER_TRUNCATED: &str = "ferry-truncated";
/// On a stub whose key was cut too: the original key's size in bytes.
pub const HEADER_TRUNCATED_KEY: &str = "ferry-truncated-key";

/// What a record adds to its size on the wire besides key, payload and headers, with room
/// for the record batch around it.
const RECORD_OVERHEAD: usize = 512;

/// How often the produced topics' existence and limits are read again.
const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How a produced record was sent, to remember it across retries of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SentAs {
    Output,
    DeadLetter,
}

/// One record handed to librdkafka, and what to report if it fails.
struct Pending<'a> {
    as_: SentAs,
    topic: &'a str,
    partition: i32,
    offset: i64,
    /// The dead letter this is (to send again as a stub), `None` for an output.
    rejected: Option<&'a Rejected>,
    stub: bool,
}

impl Producer {
    fn new(
        config: &WorkerConfig,
        topics: &ProducedTopics,
        default_limit: usize,
    ) -> Result<Self, ConsumeError> {
        let producer = if topics.output.is_some() || topics.dead_letter.is_some() {
            let mut client = kafka_client_config(&config.kafka)?;
            client
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set(
                    "message.timeout.ms",
                    DELIVERY_TIMEOUT.as_millis().to_string(),
                )
                // The sizes are checked here, against each topic's own limit.
                .set("message.max.bytes", "100000000")
                .set("allow.auto.create.topics", "false")
                .set("topic.metadata.propagation.max.ms", "5000");
            Some(
                client
                    .create()
                    .map_err(|source| ConsumeError::CreateClient {
                        role: "producer",
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Self {
            producer,
            topics: topics.clone(),
            source_topic: config.kafka.topic.clone(),
            reject_log: RateLimitedLog::new(Duration::from_secs(10)),
            limits: Arc::new(Mutex::new(HashMap::new())),
            default_limit,
            delivered: HashSet::new(),
        })
    }

    /// Checks the produced topics now and every [`TOPIC_CHECK_INTERVAL`]: a missing one
    /// raises [`Reason::TopicMissing`], each one's `max.message.bytes` becomes its limit.
    fn spawn_topic_checks(
        &self,
        config: &WorkerConfig,
        readiness: Readiness,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let producer = self.producer.clone()?;
        let topics: Vec<String> = [&self.topics.output, &self.topics.dead_letter]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let admin: Option<AdminClient<DefaultClientContext>> = kafka_client_config(&config.kafka)
            .ok()
            .and_then(|client| client.create().ok());
        let limits = Arc::clone(&self.limits);
        let default_limit = self.default_limit;
        Some(tokio::spawn(async move {
            loop {
                for topic in &topics {
                    check_topic(
                        &producer,
                        admin.as_ref(),
                        topic,
                        &limits,
                        &readiness,
                        default_limit,
                    )
                    .await;
                }
                tokio::time::sleep(TOPIC_CHECK_INTERVAL).await;
            }
        }))
    }

    fn limit(&self, topic: &str) -> usize {
        self.limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .copied()
            .unwrap_or(self.default_limit)
    }

    /// The batch committed or was given up: a next batch produces everything it has, except
    /// what a held partition already had delivered (it is read again, not produced again).
    fn batch_done(&mut self, held: impl Fn(i32) -> bool) {
        self.delivered.retain(|(_, partition, _)| held(*partition));
    }

    /// Produces `outputs` to the output topic and `dead_letters` to the dead-letter topic
    /// (or logs them, rate-limited, without one), and waits for every acknowledgement. What
    /// this batch already had acknowledged is not sent again. The error names the first
    /// record that could not be delivered.
    async fn send_all(
        &mut self,
        outputs: &[Output],
        dead_letters: &[&Rejected],
    ) -> Result<(), FlushError> {
        if self.topics.dead_letter.is_none() {
            for rejected in dead_letters {
                self.reject_log.warn(rejected);
            }
        }
        let Some(producer) = self.producer.clone() else {
            return Ok(());
        };
        let mut failure: Option<FlushError> = None;
        let mut sends: Vec<(Pending<'_>, _)> =
            Vec::with_capacity(outputs.len() + dead_letters.len());
        if let Some(topic) = &self.topics.output {
            let limit = self.limit(topic);
            for output in outputs {
                if self
                    .delivered
                    .contains(&(SentAs::Output, output.partition, output.offset))
                {
                    continue;
                }
                let headers = source_headers(&self.source_topic, output.partition, output.offset);
                let size = output.key.len() + output.payload.len() + RECORD_OVERHEAD;
                if size > limit {
                    failure.get_or_insert(FlushError::Oversize {
                        topic: topic.clone(),
                        partition: output.partition,
                        offset: output.offset,
                        size,
                        limit,
                    });
                    continue;
                }
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                    .key(output.key.as_slice())
                    .payload(output.payload.as_slice())
                    .headers(headers);
                if let Some(ts) = output.timestamp_ms {
                    record = record.timestamp(ts);
                }
                let send = Pending {
                    as_: SentAs::Output,
                    topic,
                    partition: output.partition,
                    offset: output.offset,
                    rejected: None,
                    stub: false,
                };
                sends.push((send, producer.send(record, DELIVERY_TIMEOUT)));
            }
        }
        if let Some(topic) = &self.topics.dead_letter {
            let limit = self.limit(topic);
            for rejected in dead_letters {
                if self.delivered.contains(&(
                    SentAs::DeadLetter,
                    rejected.partition,
                    rejected.offset,
                )) {
                    continue;
                }
                let stub = dead_letter_size(rejected) > limit;
                let send = Pending {
                    as_: SentAs::DeadLetter,
                    topic,
                    partition: rejected.partition,
                    offset: rejected.offset,
                    rejected: Some(rejected),
                    stub,
                };
                let record = dead_letter_record(topic, &self.source_topic, rejected, stub);
                sends.push((send, producer.send(record, DELIVERY_TIMEOUT)));
            }
        }
        // Two rounds at most: what the broker refused as too large goes again as a stub.
        while !sends.is_empty() {
            let (sent, deliveries): (Vec<Pending<'_>>, Vec<_>) = sends.into_iter().unzip();
            sends = Vec::new();
            for (send, delivery) in sent
                .into_iter()
                .zip(futures::future::join_all(deliveries).await)
            {
                match delivery {
                    Ok(_) => {
                        if send.stub {
                            warn!(
                                topic = send.topic,
                                partition = send.partition,
                                offset = send.offset,
                                "dead letter over the topic's size limit: sent as a stub \
                                 (headers and the first {STUB_BYTES} bytes)"
                            );
                        }
                        self.delivered
                            .insert((send.as_, send.partition, send.offset));
                    }
                    Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                        _,
                    )) if !send.stub && send.rejected.is_some() => {
                        if let Some(rejected) = send.rejected {
                            let record =
                                dead_letter_record(send.topic, &self.source_topic, rejected, true);
                            let again = Pending { stub: true, ..send };
                            sends.push((again, producer.send(record, DELIVERY_TIMEOUT)));
                        }
                    }
                    Err((source, _)) => {
                        failure.get_or_insert(FlushError::Produce {
                            topic: send.topic.to_owned(),
                            partition: send.partition,
                            offset: send.offset,
                            source,
                        });
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// What a dead letter weighs on the wire, about: key, payload, headers.
fn dead_letter_size(rejected: &Rejected) -> usize {
    // Five header names and the three `ferry-source-*` values take under 256 bytes.
    let headers = 256 + rejected.reason.header().len() + rejected.detail.len();
    rejected.key.as_ref().map_or(0, Vec::len)
        + rejected.payload.as_ref().map_or(0, Vec::len)
        + headers
        + RECORD_OVERHEAD
}

/// A dead letter for `topic`: the record as it came, or (`stub`) its headers with
/// `ferry-truncated` and the first [`STUB_BYTES`] of payload and oversize key.
fn dead_letter_record<'a>(
    topic: &'a str,
    source_topic: &str,
    rejected: &'a Rejected,
    stub: bool,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = source_headers(source_topic, rejected.partition, rejected.offset)
        .insert(Header {
            key: HEADER_REASON,
            value: Some(rejected.reason.header()),
        })
        .insert(Header {
            key: HEADER_DETAIL,
            value: Some(rejected.detail.as_str()),
        });
    let key = rejected.key.as_deref();
    let payload = rejected.payload.as_deref();
    let (key, payload) = if stub {
        headers = headers.insert(Header {
            key: HEADER_TRUNCATED,
            value: Some(&payload.map_or(0, <[u8]>::len).to_string()),
        });
        let key = match key {
            Some(key) if key.len() > crate::record::MAX_KEY_BYTES => {
                headers = headers.insert(Header {
                    key: HEADER_TRUNCATED_KEY,
                    value: Some(&key.len().to_string()),
                });
                Some(&key[..STUB_BYTES.min(key.len())])
            }
            other => other,
        };
        (key, payload.map(|p| &p[..STUB_BYTES.min(p.len())]))
    } else {
        (key, payload)
    };
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(ts) = rejected.timestamp_ms {
        record = record.timestamp(ts);
    }
    record
}

/// Whether `topic` exists (raising or clearing [`Reason::TopicMissing`]) and how large a
/// record it takes (its `max.message.bytes`, where the worker may describe its config).
async fn check_topic(
    producer: &FutureProducer,
    admin: Option<&AdminClient<DefaultClientContext>>,
    topic: &str,
    limits: &Mutex<HashMap<String, usize>>,
    readiness: &Readiness,
    default_limit: usize,
) {
    let lookup = {
        let producer = producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map(|t| t.error().map(RDKafkaErrorCode::from))
                })
        })
        .await
    };
    match lookup {
        Ok(Ok(Some(None))) => {
            if readiness.is_raised(Reason::TopicMissing) {
                info!(topic, "the topic exists now");
            }
            readiness.clear(Reason::TopicMissing, topic);
        }
        Ok(Ok(
            Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic))
            | None,
        )) => {
            warn!(topic, "a topic this stage produces to does not exist");
            readiness.raise(
                Reason::TopicMissing,
                topic,
                Problem::new(format!(
                    "topic {topic} does not exist (Ferry does not create the topics it \
                     produces to): create it; records that must go there wait"
                )),
            );
        }
        Ok(Ok(Some(Some(code)))) => {
            debug!(topic, error = %code, "topic metadata has an error");
        }
        Ok(Err(error)) => warn!(topic, %error, "cannot read the topic's metadata"),
        Err(error) => warn!(topic, %error, "topic metadata lookup failed"),
    }
    let Some(admin) = admin else { return };
    let resource = ResourceSpecifier::Topic(topic);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let limit = match admin.describe_configs([&resource], &options).await {
        Ok(results) => results.into_iter().find_map(|result| {
            result
                .ok()?
                .get("max.message.bytes")?
                .value
                .as_deref()?
                .parse::<usize>()
                .ok()
        }),
        Err(error) => {
            debug!(topic, %error, "cannot describe the topic's config; using --max-message-bytes");
            None
        }
    };
    let mut limits = limits.lock().unwrap_or_else(PoisonError::into_inner);
    match limit {
        Some(limit) => {
            if limits.insert(topic.to_owned(), limit) != Some(limit) {
                info!(topic, limit, "the topic's max.message.bytes");
            }
        }
        None => {
            if limits.remove(topic).is_some() {
                info!(topic, default_limit, "the topic's limit is unknown again");
            }
        }
    }
}

/// The `ferry-source-*` headers every produced record carries (librdkafka copies the
/// values, so they need not outlive the call).
fn source_headers(source_topic: &str, partition: i32, offset: i64) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(source_topic),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(&partition.to_string()),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(&offset.to_string()),
        })
}

/// Logs refused records when there is no dead-letter topic: the first of each reason at
/// once, then at most one line per reason per interval with how many were not logged.
struct RateLimitedLog {
    interval: Duration,
    last: HashMap<Refusal, (Instant, u64)>,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    fn warn(&mut self, rejected: &Rejected) {
        let now = Instant::now();
        match self.last.get_mut(&rejected.reason) {
            Some((logged_at, suppressed)) if now.duration_since(*logged_at) < self.interval => {
                *suppressed += 1;
            }
            entry => {
                let suppressed = entry.map_or(0, |(_, suppressed)| *suppressed);
                warn!(
                    reason = rejected.reason.header(),
                    detail = %rejected.detail,
                    partition = rejected.partition,
                    offset = rejected.offset,
                    not_logged_since_last = suppressed,
                    "record refused and skipped (no dead-letter topic configured)"
                );
                self.last.insert(rejected.reason.clone(), (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_partition_waits_five_seconds_doubling_to_a_minute() {
        let delays: Vec<u64> = (1..=7)
            .map(|attempt| hold_delay(attempt).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60, 60]);
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_records: 3,
        max_bytes: 1000,
        max_wait: Duration::from_millis(50),
    };

    fn batch_of(records: usize, bytes: usize) -> PendingBatch<()> {
        let mut batch = PendingBatch::default();
        for offset in 0..records {
            batch.note(0, offset as i64, None);
        }
        batch.bytes = bytes;
        batch
    }

    #[test]
    fn a_lone_record_goes_out_as_soon_as_nothing_follows_it() {
        let batch = batch_of(1, 10);
        let now = Instant::now();
        assert_eq!(LIMITS.decide(&batch, true, now), Flush::Now);
    }

    #[test]
    fn a_batch_grows_while_records_keep_coming_until_max_wait() {
        let batch = batch_of(2, 10);
        let started = batch.started.unwrap();
        let deadline = started + LIMITS.max_wait;
        assert_eq!(
            LIMITS.decide(&batch, false, started),
            Flush::GrowUntil(deadline)
        );
        assert_eq!(LIMITS.decide(&batch, false, deadline), Flush::Now);
    }

    #[test]
    fn max_records_and_max_bytes_cap_a_batch_whatever_keeps_coming() {
        let now = Instant::now();
        assert_eq!(LIMITS.decide(&batch_of(3, 10), false, now), Flush::Now);
        assert_eq!(LIMITS.decide(&batch_of(1, 1000), false, now), Flush::Now);
        assert!(!LIMITS.full(&batch_of(2, 999)));
    }

    #[test]
    fn nothing_pending_is_never_flushed_even_when_drained() {
        let now = Instant::now();
        let empty = PendingBatch::<()>::default();
        assert_eq!(LIMITS.decide(&empty, true, now), Flush::Nothing);
        let mut cleared = batch_of(2, 10);
        cleared.clear();
        assert_eq!(LIMITS.decide(&cleared, true, now), Flush::Nothing);
    }

    #[test]
    fn a_batch_knows_where_each_partition_starts_and_forgets_a_dropped_one() {
        let mut batch = PendingBatch::<Rejected>::default();
        for (partition, offset) in [(0, 5), (1, 9), (0, 4), (1, 12)] {
            batch.note(partition, offset, None);
        }
        assert_eq!(batch.first_offsets, BTreeMap::from([(0, 4), (1, 9)]));
        batch.drop_partition(1);
        assert_eq!(batch.first_offsets, BTreeMap::from([(0, 4)]));
        assert_eq!(batch.last_offsets.keys().copied().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn batches_track_the_highest_offset_per_partition() {
        let mut batch = PendingBatch::<()>::default();
        for (partition, offset) in [(0, 5), (1, 9), (0, 7), (0, 6)] {
            batch.note(partition, offset, Some(offset * 10));
        }
        assert_eq!(batch.taken, 4);
        assert_eq!(
            batch.last_offsets,
            BTreeMap::from([(0, (7, Some(70))), (1, (9, Some(90)))])
        );
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.last_offsets.is_empty());
    }

    #[test]
    fn repeated_consume_errors_make_the_stage_unready_once_until_a_record_comes() {
        let error =
            KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::NotImplemented);
        let mut health = ConsumeHealth::default();
        let reasons: Vec<Option<String>> = (0..CONSUME_ERRORS_UNREADY + 2)
            .map(|_| health.on_error(&error))
            .collect();
        assert_eq!(reasons.iter().flatten().count(), 1);
        assert!(
            reasons[CONSUME_ERRORS_UNREADY as usize - 1]
                .as_deref()
                .is_some_and(|r| r.contains("in a row"))
        );
        assert!(health.on_record(), "a record after the limit clears it");
        assert!(!health.on_record());
        health.on_error(&error);
        assert!(!health.on_record(), "one error is not a run");
    }

    #[test]
    fn consume_errors_are_logged_once_per_interval_with_the_count_left_out() {
        let mut health = ConsumeHealth::default();
        let start = Instant::now();
        assert_eq!(health.should_log(start), Some(0));
        assert_eq!(health.should_log(start + Duration::from_secs(1)), None);
        assert_eq!(health.should_log(start + Duration::from_secs(2)), None);
        assert_eq!(
            health.should_log(start + CONSUME_ERROR_LOG_INTERVAL + Duration::from_secs(1)),
            Some(2)
        );
    }

    #[test]
    fn a_stub_keeps_the_headers_and_the_first_bytes_and_says_how_big_the_record_was() {
        use rdkafka::message::Headers;
        let rejected = Rejected {
            partition: 2,
            offset: 77,
            timestamp_ms: Some(5),
            reason: Refusal::Record(RejectReason::KeyTooLong),
            detail: "key of 3000 bytes".to_owned(),
            key: Some(vec![b'k'; 3000]),
            payload: Some((0..1_100_000u32).map(|i| (i % 251) as u8).collect()),
        };
        assert!(dead_letter_size(&rejected) > DEFAULT_MAX_MESSAGE_BYTES);
        let whole = dead_letter_record("dlq", "src", &rejected, false);
        assert_eq!(whole.payload.map(<[u8]>::len), Some(1_100_000));
        let stub = dead_letter_record("dlq", "src", &rejected, true);
        let payload = stub.payload.unwrap();
        assert_eq!(payload, &rejected.payload.as_ref().unwrap()[..STUB_BYTES]);
        assert_eq!(stub.key.map(<[u8]>::len), Some(STUB_BYTES));
        let headers = stub.headers.as_ref().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(HEADER_TRUNCATED).as_deref(), Some("1100000"));
        assert_eq!(header(HEADER_TRUNCATED_KEY).as_deref(), Some("3000"));
        assert_eq!(header(HEADER_REASON).as_deref(), Some("key_too_long"));
        assert_eq!(header(HEADER_SOURCE_OFFSET).as_deref(), Some("77"));
        assert_eq!(stub.timestamp, Some(5));
    }

    #[test]
    fn refusals_name_their_reason_and_metric_label() {
        assert_eq!(Refusal::Rule("in-range".to_owned()).header(), "in-range");
        assert_eq!(
            Refusal::Rule("in-range".to_owned()).metric_label(),
            "rule:in-range"
        );
        assert_eq!(Refusal::NoReference.header(), "no-reference");
        assert_eq!(
            Refusal::Record(RejectReason::MissingKey).metric_label(),
            RejectReason::MissingKey.as_str()
        );
    }
}
