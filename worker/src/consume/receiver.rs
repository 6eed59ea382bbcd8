//! The receive stage: Kafka records into Redis, exactly once in effect.
//!
//! A consumer task validates each record (see [`crate::record`]) and forwards it through a
//! bounded channel to one writer task, which batches records (`batch.max_records` /
//! `batch.max_wait`) and applies each batch with its checkpoints in one Redis transaction
//! ([`crate::sink`]). Only then are the batch's offsets stored for the next Kafka commit.
//! Refused records (undecodable, too old) travel in the same batches: they are
//! dead-lettered (or counted and logged) before the batch commits, so their offsets advance
//! with the checkpoint and they never stop the worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{
    ConsumeError, ConsumerEvent, Shutdown, StageContext, commit_stored, consumer_config,
    kafka_client_config,
};
use crate::backoff::Backoff;
use crate::config::{RecordFormat, StageConfig, WorkerConfig};
use crate::http::{self, Readiness};
use crate::metrics::{BlockedLabel, Metrics};
use crate::record::{self, RejectReason};
use crate::sink::{
    self, FastHash, RedisSink, SinkError, StorageCommands, StorageLayout, StoredRecord,
    TransactionOutcome,
};

/// Process-level knobs of the receiver; the pipeline's own settings are in the config.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// How long a revoke waits for the revoked partitions' records to reach Redis.
    pub drain_timeout: Duration,
    /// How long SIGTERM waits for in-flight records before leaving the group.
    pub shutdown_timeout: Duration,
    /// Kafka group session timeout: how soon a crashed worker's partitions move.
    pub session_timeout: Duration,
    /// Redis response timeout; a slower reply counts as a failure and is retried.
    pub redis_timeout: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(10),
            redis_timeout: Duration::from_secs(5),
        }
    }
}

/// A consumed record after validation: to store, or refused.
#[derive(Debug)]
pub enum ConsumedRecord {
    Store(StoredRecord),
    Reject(Rejected),
}

impl ConsumedRecord {
    pub fn partition(&self) -> i32 {
        match self {
            Self::Store(record) => record.partition,
            Self::Reject(rejected) => rejected.partition,
        }
    }

    pub fn offset(&self) -> i64 {
        match self {
            Self::Store(record) => record.offset,
            Self::Reject(rejected) => rejected.offset,
        }
    }
}

/// A refused record, kept whole for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub reason: RejectReason,
    pub detail: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// With `max_age` set, how far ahead of the receiver's clock a record's timestamp may be:
/// clock skew between sources and workers. A record further ahead is refused as
/// `future_timestamp`; it would otherwise count as fresh for as long as it likes (a year
/// ahead passes any `max_age`) and sort above every real record in a `zset`.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// Decides per record: store it, or refuse it with a reason.
#[derive(Debug, Clone)]
pub struct Validator {
    pub format: RecordFormat,
    pub max_age_ms: Option<i64>,
}

impl Validator {
    pub fn check(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        kafka_timestamp_ms: Option<i64>,
        now_ms: i64,
    ) -> ConsumedRecord {
        let reject = |reason: RejectReason, detail: String| {
            ConsumedRecord::Reject(Rejected {
                partition,
                offset,
                reason,
                detail,
                key: key.map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
            })
        };
        let source = match record::source_id(key) {
            Ok(source) => source,
            Err(err) => return reject(err.reason(), err.to_string()),
        };
        let value = payload.unwrap_or_default();
        let timestamp_ms = match record::validate(self.format, value, kafka_timestamp_ms) {
            Ok(timestamp_ms) => timestamp_ms,
            Err(err) => return reject(err.reason(), err.to_string()),
        };
        if let Some(max_age_ms) = self.max_age_ms {
            let age_ms = now_ms.saturating_sub(timestamp_ms);
            if age_ms > max_age_ms {
                return reject(
                    RejectReason::TooOld,
                    format!("record is {age_ms} ms old, max_age is {max_age_ms} ms"),
                );
            }
            if age_ms < -MAX_FUTURE_SKEW_MS {
                return reject(
                    RejectReason::FutureTimestamp,
                    format!(
                        "record is {} ms ahead of the receiver's clock, more than the {MAX_FUTURE_SKEW_MS} ms allowed",
                        age_ms.saturating_neg()
                    ),
                );
            }
        }
        ConsumedRecord::Store(StoredRecord::new(
            partition,
            offset,
            source,
            timestamp_ms,
            value,
        ))
    }

    fn check_message(&self, message: &BorrowedMessage<'_>, now_ms: i64) -> ConsumedRecord {
        self.check(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
            message.timestamp().to_millis(),
            now_ms,
        )
    }

    /// The clock the checks need: read only when `max_age` is set, since it costs a
    /// syscall-sized slice of every record otherwise.
    fn now_ms(&self) -> i64 {
        if self.max_age_ms.is_some() {
            now_ms()
        } else {
            0
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

type ReceiverConsumer = StreamConsumer<StageContext<ConsumedRecord>>;

/// The most records the consumer sends the writer at once (fewer if a batch is smaller).
const MAX_CHUNK: usize = 256;

/// Runs the receive stage until `shutdown`, then drains, commits and leaves the group.
pub async fn run(
    config: WorkerConfig,
    options: ReceiveOptions,
    mut shutdown: Shutdown,
) -> Result<(), ConsumeError> {
    let StageConfig::Receiver(receiver) = &config.stage else {
        return Err(ConsumeError::WriterTask(
            "the config's stage is not `receiver`".to_owned(),
        ));
    };
    let metrics = Metrics::new(&config.pipeline);
    let readiness = Readiness::default();
    let http_task = http::spawn(config.http.listen, metrics.clone(), readiness.clone()).await?;
    info!(listen = %config.http.listen, "serving /metrics, /healthz, /readyz");

    let sink = RedisSink::new(&config.redis, options.redis_timeout)?;
    let dead_letters = match &receiver.dead_letter {
        Some(dead_letter) => Some(DeadLetters::new(
            &config,
            &dead_letter.topic,
            options.redis_timeout,
        )?),
        None => None,
    };
    // Twice a batch, in chunks: the writer commits one batch while the next one queues.
    let max_records = receiver.batch.max_records as usize;
    let chunk_limit = max_records.clamp(1, MAX_CHUNK);
    let capacity = max_records.saturating_mul(2).div_ceil(chunk_limit).max(4);
    let (events, events_rx) = mpsc::channel(capacity);
    let context = StageContext::new(
        events.clone(),
        options.drain_timeout,
        metrics.clone(),
        &config.kafka.topic,
    );
    let consumer: Arc<ReceiverConsumer> = Arc::new(
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
        storage = sink::storage_name(receiver.storage.kind),
        "receiver started"
    );

    let writer = Writer {
        layout: StorageLayout::new(&config.redis.key_prefix, &receiver.storage),
        checkpoint_keys: CheckpointKeys(config.clone()),
        topic: config.kafka.topic.clone(),
        sink,
        dead_letters,
        consumer: Arc::clone(&consumer),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        max_records: receiver.batch.max_records as usize,
        max_wait: receiver.batch.max_wait.as_duration(),
        owned: HashSet::default(),
        highest_taken: HashMap::default(),
        batch: PendingBatch::default(),
        backoff: Backoff::DEFAULT,
        reject_log: RateLimitedLog::new(Duration::from_secs(10)),
    };
    let mut writer_task = tokio::spawn(writer.run(events_rx));

    let validator = Validator {
        format: config.format,
        max_age_ms: receiver
            .max_age
            .map(|age| i64::try_from(age.as_duration().as_millis()).unwrap_or(i64::MAX)),
    };
    let mut backoff = Backoff::DEFAULT;
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            received = consumer.recv() => received,
        };
        let now_ms = validator.now_ms();
        match received {
            Ok(message) => {
                backoff.reset();
                consumer
                    .context()
                    .stage(validator.check_message(&message, now_ms));
            }
            Err(error) => {
                metrics.kafka_error("consume");
                let delay = backoff.next_delay();
                warn!(%error, retry_in = ?delay, "kafka consume error");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        }
        // Whatever librdkafka already has joins the chunk.
        let mut chunk_len = 1;
        while chunk_len < chunk_limit {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => {
                    consumer
                        .context()
                        .stage(validator.check_message(&message, now_ms));
                    chunk_len += 1;
                }
                Some(Err(error)) => {
                    metrics.kafka_error("consume");
                    warn!(%error, "kafka consume error");
                    break;
                }
                None => break,
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
            sent = events.send(ConsumerEvent::Items(chunk)) => if sent.is_err() { break },
        }
        if writer_task.is_finished() {
            break;
        }
    }

    info!("stopping: draining in-flight records");
    let deadline = Instant::now() + options.shutdown_timeout;
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
    http_task.abort();
    info!("receiver stopped");
    writer_outcome
}

/// Builds checkpoint keys; a wrapper so the writer needs no whole-config access elsewhere.
struct CheckpointKeys(WorkerConfig);

impl CheckpointKeys {
    fn key(&self, partition: i32) -> String {
        self.0.checkpoint_key(partition)
    }
}

/// Records taken since the last commit, in partition order.
#[derive(Debug, Default)]
struct PendingBatch {
    started: Option<Instant>,
    records: Vec<StoredRecord>,
    rejects: Vec<Rejected>,
    /// The highest offset taken per partition, including records skipped as already applied.
    last_offsets: BTreeMap<i32, i64>,
    taken: usize,
}

impl PendingBatch {
    fn is_empty(&self) -> bool {
        self.taken == 0
    }

    fn note(&mut self, partition: i32, offset: i64) {
        self.started.get_or_insert_with(Instant::now);
        self.taken += 1;
        let last = self.last_offsets.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// Empties the batch, keeping its buffers for the next one.
    fn clear(&mut self) {
        self.started = None;
        self.records.clear();
        self.rejects.clear();
        self.last_offsets.clear();
        self.taken = 0;
    }
}

/// Why one attempt to commit a batch failed.
#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Redis(#[from] SinkError),
    #[error("dead-letter produce failed: {0}")]
    DeadLetter(KafkaError),
    #[error("a checkpoint changed during the transaction")]
    Conflict,
    /// Writing would fail inside `EXEC` and the checkpoint would land regardless: the
    /// batch stops here, unapplied, until the key is fixed.
    #[error("batch blocked: {0}")]
    WrongType(sink::WrongType),
}

struct Writer {
    layout: StorageLayout,
    checkpoint_keys: CheckpointKeys,
    topic: String,
    sink: RedisSink,
    dead_letters: Option<DeadLetters>,
    consumer: Arc<ReceiverConsumer>,
    metrics: Metrics,
    readiness: Readiness,
    max_records: usize,
    max_wait: Duration,
    owned: HashSet<i32, FastHash>,
    /// Per owned partition, the highest offset known applied or already in the batch:
    /// anything at or below it is a replay.
    highest_taken: HashMap<i32, i64, FastHash>,
    batch: PendingBatch,
    backoff: Backoff,
    reject_log: RateLimitedLog,
}

impl Writer {
    async fn run(mut self, mut events: mpsc::Receiver<ConsumerEvent<ConsumedRecord>>) {
        loop {
            let flush_at = self.batch.started.map(|started| started + self.max_wait);
            if flush_at.is_some_and(|at| at <= Instant::now()) {
                self.flush(None).await;
                continue;
            }
            let event = match flush_at {
                None => events.recv().await,
                Some(at) => tokio::select! {
                    biased;
                    event = events.recv() => event,
                    _ = tokio::time::sleep_until(at) => continue,
                },
            };
            match event {
                Some(ConsumerEvent::Items(records)) => {
                    for record in records {
                        self.take(record);
                        if self.batch.taken >= self.max_records {
                            self.flush(None).await;
                        }
                    }
                }
                Some(ConsumerEvent::Assigned { partitions }) => {
                    // Only left over if a revoke timed out; the fencing keeps it safe.
                    self.flush(Some(
                        Instant::now() + self.max_wait.max(Duration::from_secs(5)),
                    ))
                    .await;
                    self.assign(partitions).await;
                }
                Some(ConsumerEvent::Revoked {
                    partitions,
                    deadline,
                    done,
                }) => {
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

    fn take(&mut self, record: ConsumedRecord) {
        let (partition, offset) = (record.partition(), record.offset());
        if !self.owned.contains(&partition) {
            debug!(
                partition,
                offset, "dropping a record of a partition not owned"
            );
            return;
        }
        let highest = self.highest_taken.get(&partition).copied().unwrap_or(-1);
        self.batch.note(partition, offset);
        if offset <= highest {
            self.metrics.records_skipped.inc();
            return;
        }
        self.highest_taken.insert(partition, offset);
        match record {
            ConsumedRecord::Store(stored) => self.batch.records.push(stored),
            ConsumedRecord::Reject(rejected) => self.batch.rejects.push(rejected),
        }
    }

    /// Reads the new partitions' checkpoints, so records already applied are skipped.
    async fn assign(&mut self, partitions: Vec<i32>) {
        self.owned = partitions.iter().copied().collect();
        self.highest_taken.clear();
        self.readiness.set_assigned(true);
        if partitions.is_empty() {
            return;
        }
        let keys: Vec<String> = partitions
            .iter()
            .map(|p| self.checkpoint_keys.key(*p))
            .collect();
        loop {
            match self.sink.read_checkpoints(&keys).await {
                Ok(checkpoints) => {
                    self.readiness.set_redis_connected(true);
                    self.backoff.reset();
                    for (partition, checkpoint) in partitions.iter().zip(checkpoints) {
                        if let Some(checkpoint) = checkpoint {
                            self.highest_taken.insert(*partition, checkpoint);
                        }
                        info!(
                            partition,
                            checkpoint, "resuming after the checkpoint (none: from Kafka's offset)"
                        );
                    }
                    return;
                }
                Err(error) => {
                    // Not fatal: the write path re-checks checkpoints under WATCH anyway.
                    self.redis_failed(&error);
                    let delay = self.backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "cannot read checkpoints");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.owned.remove(partition);
            self.highest_taken.remove(partition);
        }
        if self.owned.is_empty() {
            self.readiness.set_assigned(false);
        }
    }

    /// Unready, with the key in `/readyz`, the metrics and the log, until a batch commits.
    fn block(&self, wrong: &sink::WrongType) {
        self.readiness.set_blocked(Some(wrong.to_string()));
        self.metrics
            .blocked
            .get_or_create(&BlockedLabel {
                reason: "wrong_type".to_owned(),
                key: wrong.key.clone(),
            })
            .set(1);
        error!(
            key = %wrong.key,
            found = %wrong.found,
            expected = wrong.expected,
            "batch blocked: a key it writes holds another type; remove or rename the key"
        );
    }

    fn redis_failed(&mut self, error: &SinkError) {
        self.metrics.redis_error(error.operation());
        self.readiness.set_redis_connected(false);
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
                    self.backoff.reset();
                    self.readiness.set_redis_connected(true);
                    if self.readiness.blocked().is_some() {
                        info!("the blocking key is fixed; committing again");
                        self.readiness.set_blocked(None);
                        self.metrics.blocked.clear();
                    }
                    break;
                }
                Err(FlushError::Conflict) => {
                    self.metrics.transaction_conflicts.inc();
                    info!("checkpoint changed under the batch (partition moved?); re-filtering");
                    continue;
                }
                Err(error) => {
                    match &error {
                        FlushError::Redis(sink_error) => self.redis_failed(sink_error),
                        FlushError::DeadLetter(_) => self.metrics.kafka_error("dead_letter"),
                        FlushError::Conflict => {}
                        FlushError::WrongType(wrong) => self.block(wrong),
                    }
                    let delay = self.backoff.next_delay();
                    if deadline.is_some_and(|deadline| Instant::now() + delay > deadline) {
                        warn!(%error, "giving up on the batch at the drain deadline");
                        for partition in self.batch.last_offsets.keys() {
                            self.highest_taken.remove(partition);
                        }
                        self.batch.clear();
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

    async fn try_flush(&mut self) -> Result<(), FlushError> {
        let partitions: Vec<i32> = self.batch.last_offsets.keys().copied().collect();
        let keys: Vec<String> = partitions
            .iter()
            .map(|p| self.checkpoint_keys.key(*p))
            .collect();
        // Every key the batch may write, with the type it writes there.
        let expected_type = sink::redis_type(self.layout.kind);
        let mut sources: HashSet<&[u8], FastHash> = HashSet::default();
        let data_keys: Vec<(String, &'static str)> = self
            .batch
            .records
            .iter()
            .filter(|r| sources.insert(r.source()))
            .map(|r| {
                let source = String::from_utf8_lossy(r.source());
                (self.layout.data_key(&source), expected_type)
            })
            .collect();
        let watched = self.sink.watch_and_check(&keys, &data_keys).await?;
        if let Some(wrong) = watched.wrong_types.into_iter().next() {
            self.sink.unwatch().await?;
            return Err(FlushError::WrongType(wrong));
        }
        let checkpoints: HashMap<i32, i64> = partitions
            .iter()
            .copied()
            .zip(watched.checkpoints)
            .map(|(partition, checkpoint)| (partition, checkpoint.unwrap_or(-1)))
            .collect();
        let is_new = |partition: i32, offset: i64| {
            offset > checkpoints.get(&partition).copied().unwrap_or(-1)
        };
        let records: Vec<&StoredRecord> = self
            .batch
            .records
            .iter()
            .filter(|r| is_new(r.partition, r.offset))
            .collect();
        let rejects: Vec<&Rejected> = self
            .batch
            .rejects
            .iter()
            .filter(|r| is_new(r.partition, r.offset))
            .collect();
        let advanced: BTreeMap<i32, i64> = self
            .batch
            .last_offsets
            .iter()
            .filter(|(partition, last)| is_new(**partition, **last))
            .map(|(partition, last)| (*partition, *last))
            .collect();
        let already_applied = self.batch.records.len() - records.len();
        if advanced.is_empty() {
            self.sink.unwatch().await?;
            self.metrics.records_skipped.inc_by(already_applied as u64);
            self.metrics.records_fenced.inc_by(already_applied as u64);
            return Ok(());
        }

        // Refused records reach the dead-letter topic before their offsets are checkpointed.
        if !rejects.is_empty() {
            match &self.dead_letters {
                Some(dead_letters) => dead_letters
                    .send_all(&rejects)
                    .await
                    .map_err(FlushError::DeadLetter)?,
                None => {
                    for rejected in &rejects {
                        self.reject_log.warn(rejected);
                    }
                }
            }
        }

        let StorageCommands {
            mut commands,
            keys_touched,
        } = sink::storage_commands(&self.layout, &records);
        for (partition, offset) in &advanced {
            let mut set = redis::cmd("SET");
            set.arg(self.checkpoint_keys.key(*partition)).arg(*offset);
            commands.push(set);
        }
        let event = sink::batch_event(keys_touched, records.len(), rejects.len(), &advanced);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.layout.events_channel()).arg(event);
        commands.push(publish);

        match self.sink.transaction(commands).await? {
            TransactionOutcome::Aborted => Err(FlushError::Conflict),
            TransactionOutcome::Committed { failed_commands } => {
                if !failed_commands.is_empty() {
                    self.metrics.redis_error("command");
                    error!(
                        ?failed_commands,
                        "commands failed inside the transaction; the rest was applied"
                    );
                }
                self.metrics.batches.inc();
                self.metrics.records_written.inc_by(records.len() as u64);
                self.metrics.records_skipped.inc_by(already_applied as u64);
                self.metrics.records_fenced.inc_by(already_applied as u64);
                for rejected in &rejects {
                    self.metrics.dead_lettered(rejected.reason).inc();
                }
                if let Some(started) = self.batch.started {
                    self.metrics.observe_batch(started.elapsed());
                }
                Ok(())
            }
        }
    }

    /// Stores each owned partition's next offset, for the next (auto or revoke) commit.
    fn store_offsets(&self) {
        let mut offsets = TopicPartitionList::new();
        for (partition, last) in &self.batch.last_offsets {
            if self.owned.contains(partition) {
                let _ =
                    offsets.add_partition_offset(&self.topic, *partition, Offset::Offset(last + 1));
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

/// The dead-letter topic's producer.
struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    timeout: Duration,
}

impl DeadLetters {
    fn new(config: &WorkerConfig, topic: &str, timeout: Duration) -> Result<Self, ConsumeError> {
        let mut client = kafka_client_config(&config.kafka)?;
        client
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        let producer = client
            .create()
            .map_err(|source| ConsumeError::CreateClient {
                role: "dead-letter producer",
                source,
            })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            source_topic: config.kafka.topic.clone(),
            timeout: timeout.max(Duration::from_secs(30)),
        })
    }

    /// Produces every refused record with its reason and origin in headers, and waits for
    /// the broker to acknowledge them all.
    async fn send_all(&self, rejects: &[&Rejected]) -> Result<(), KafkaError> {
        let sends = rejects.iter().map(|rejected| {
            let partition = rejected.partition.to_string();
            let offset = rejected.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ferry-reason",
                    value: Some(rejected.reason.as_str()),
                })
                .insert(Header {
                    key: "ferry-detail",
                    value: Some(rejected.detail.as_str()),
                })
                .insert(Header {
                    key: "ferry-source-topic",
                    value: Some(self.source_topic.as_str()),
                })
                .insert(Header {
                    key: "ferry-source-partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "ferry-source-offset",
                    value: Some(offset.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = &rejected.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &rejected.payload {
                record = record.payload(payload.as_slice());
            }
            self.producer.send(record, self.timeout)
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.map_err(|(error, _)| error)?;
        }
        Ok(())
    }
}

/// Logs refused records when there is no dead-letter topic: the first of each reason at
/// once, then at most one line per reason per interval with how many were not logged.
struct RateLimitedLog {
    interval: Duration,
    last: HashMap<RejectReason, (Instant, u64)>,
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
                    reason = rejected.reason.as_str(),
                    detail = %rejected.detail,
                    partition = rejected.partition,
                    offset = rejected.offset,
                    not_logged_since_last = suppressed,
                    "record refused and skipped (no dead-letter topic configured)"
                );
                self.last.insert(rejected.reason, (now, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DataRecord;

    fn validator(max_age_ms: Option<i64>) -> Validator {
        Validator {
            format: RecordFormat::Dsdata,
            max_age_ms,
        }
    }

    fn dsdata(timestamp_ms: i64) -> Vec<u8> {
        record::dsdata::encode(&DataRecord {
            timestamp_ms,
            values: vec![1.0],
            text: "t".to_owned(),
        })
        .unwrap()
    }

    fn reason(record: ConsumedRecord) -> Option<RejectReason> {
        match record {
            ConsumedRecord::Store(_) => None,
            ConsumedRecord::Reject(rejected) => Some(rejected.reason),
        }
    }

    #[test]
    fn stores_valid_records_as_received() {
        let bytes = dsdata(1_000);
        let ConsumedRecord::Store(stored) =
            validator(None).check(2, 7, Some(b"src-1"), Some(&bytes), None, 5_000)
        else {
            panic!("expected a stored record");
        };
        assert_eq!(stored.value(), bytes);
        assert_eq!(
            (stored.partition, stored.offset, stored.timestamp_ms),
            (2, 7, 1_000)
        );
        assert_eq!(stored.source(), b"src-1");
    }

    #[test]
    fn refuses_old_keyless_and_broken_records() {
        let bytes = dsdata(1_000);
        let check = |max_age, key: Option<&[u8]>, payload: Option<&[u8]>| {
            reason(validator(max_age).check(0, 0, key, payload, None, 10_000))
        };
        assert_eq!(check(Some(9_000), Some(b"k"), Some(&bytes)), None);
        assert_eq!(
            check(Some(8_999), Some(b"k"), Some(&bytes)),
            Some(RejectReason::TooOld)
        );
        assert_eq!(
            check(None, None, Some(&bytes)),
            Some(RejectReason::MissingKey)
        );
        assert_eq!(
            check(None, Some(b"k"), Some(&bytes[..20])),
            Some(RejectReason::Truncated)
        );
        assert_eq!(check(None, Some(b"k"), None), Some(RejectReason::Truncated));
    }

    #[test]
    fn refuses_timestamps_too_far_ahead_only_with_max_age() {
        let now = 1_700_000_000_000;
        let at = |max_age, timestamp_ms| {
            let bytes = dsdata(timestamp_ms);
            reason(validator(max_age).check(0, 0, Some(b"k"), Some(&bytes), None, now))
        };
        assert_eq!(at(Some(60_000), now + MAX_FUTURE_SKEW_MS), None);
        assert_eq!(
            at(Some(60_000), now + MAX_FUTURE_SKEW_MS + 1),
            Some(RejectReason::FutureTimestamp)
        );
        assert_eq!(
            at(Some(60_000), i64::MAX),
            Some(RejectReason::FutureTimestamp)
        );
        assert_eq!(at(Some(60_000), i64::MIN), Some(RejectReason::TooOld));
        // Without max_age the receiver does not judge time at all.
        assert_eq!(at(None, i64::MAX), None);
        assert_eq!(at(None, i64::MIN), None);
    }

    #[test]
    fn batches_track_the_highest_offset_per_partition() {
        let mut batch = PendingBatch::default();
        assert!(batch.is_empty());
        batch.note(0, 5);
        batch.note(1, 9);
        batch.note(0, 6);
        assert_eq!(batch.last_offsets, BTreeMap::from([(0, 6), (1, 9)]));
        assert_eq!(batch.taken, 3);
        batch.clear();
        assert!(batch.is_empty() && batch.started.is_none());
    }
}
