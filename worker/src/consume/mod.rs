//! Kafka plumbing every stage shares: client settings (TLS, SASL), a consumer context that
//! hands rebalances to the stage in order with its records, and the shutdown signal.
//!
//! The model is Vector's Kafka source: auto commit on, auto offset store off, offsets stored
//! only once the stage has made their records durable. The consumer task forwards records,
//! in chunks of what librdkafka has ready, and rebalance events through one bounded channel, so
//! - memory stays flat under any backlog (the consumer waits when the channel is full);
//! - a revoke reaches the writer after every record consumed before it: records are staged
//!   in the context ([`StageContext::stage`]) and a rebalance callback sends what is staged
//!   ahead of its own event. The callback runs on the consumer's thread: it waits (up to a
//!   deadline) until the writer has drained the revoked partitions and stored their
//!   offsets, then commits synchronously.
//!
//! [`pipeline`] is the one consumption pipeline built on it; [`receiver`] and the
//! processors (`crate::process`) are stage kinds on that pipeline.

pub mod pipeline;
pub mod position;
pub mod receiver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::metrics::{Metrics, PartitionLabel};
use position::{KafkaFacts, epoch_of};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("environment variable {var} (kafka.sasl.password_env) is not set")]
    MissingSaslPassword { var: String },
    #[error("cannot create the Kafka {role}: {source}")]
    CreateClient {
        role: &'static str,
        source: KafkaError,
    },
    #[error("cannot subscribe to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("the writer task failed: {0}")]
    WriterTask(String),
}

/// Connection and security settings shared by consumers and producers. The SASL password
/// is read from the environment variable the config names and never logged.
pub fn kafka_client_config(kafka: &KafkaConfig) -> Result<ClientConfig, ConsumeError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    let protocol = match (&kafka.tls, &kafka.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    if let Some(tls) = &kafka.tls {
        if let Some(ca) = &tls.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(cert) = &tls.cert_file {
            config.set("ssl.certificate.location", cert.display().to_string());
        }
        if let Some(key) = &tls.key_file {
            config.set("ssl.key.location", key.display().to_string());
        }
    }
    if let Some(sasl) = &kafka.sasl {
        let password =
            std::env::var(&sasl.password_env).map_err(|_| ConsumeError::MissingSaslPassword {
                var: sasl.password_env.clone(),
            })?;
        config
            .set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", password);
    }
    Ok(config)
}

/// Consumer settings: group membership, at-least-once offset handling, bounded prefetch.
pub fn consumer_config(
    kafka: &KafkaConfig,
    session_timeout: Duration,
) -> Result<ClientConfig, ConsumeError> {
    let mut config = kafka_client_config(kafka)?;
    config
        .set("group.id", &kafka.consumer_group)
        // Every partition is placed at an explicit offset when assigned (`position::plan`
        // applies `autoOffsetReset`); librdkafka's own reset only runs when a position falls
        // out of the log, and then only the start loses nothing.
        .set("auto.offset.reset", "earliest")
        // How soon a deleted, re-created or grown topic is noticed (300 s by default).
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Offsets are stored by the stage once their records are durable, never on receipt.
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000");
    apply_fetch_tuning(&mut config);
    Ok(config)
}

/// How the consumer prefetches: bounded, so memory stays flat under any backlog, and
/// refilled quickly, so a full prefetch queue does not idle the consumer.
///
/// librdkafka postpones a partition's next fetch by `fetch.queue.backoff.ms` (1000 ms by
/// default) whenever its local queue is over `queued.min.messages` or
/// `queued.max.messages.kbytes`. A stage that drains its queue in well under a second then
/// waits out the rest of it: on the benchmark's topic the default held a bare consumer to
/// ~250k records/s, 20 ms let it read ~1.3M (bench/README.md).
pub fn apply_fetch_tuning(config: &mut ClientConfig) {
    config
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .set("fetch.queue.backoff.ms", "20");
}

/// What the consumer task sends the stage's writer, in consumption order.
#[derive(Debug)]
pub enum ConsumerEvent<T> {
    /// Records in consumption order: one per `recv`, sent as a chunk to spare the channel
    /// and the writer's wakeups a round per record. `drained`: librdkafka had nothing
    /// more to hand over when the chunk was cut, so the writer need not wait for more.
    Items { items: Vec<T>, drained: bool },
    /// These partitions are now this worker's (the whole assignment: eager rebalancing),
    /// with what Kafka says about them. The writer answers where each starts; the
    /// consumer is placed there before it fetches anything.
    Assigned {
        facts: Vec<KafkaFacts>,
        starts: oneshot::Sender<Vec<(i32, i64)>>,
    },
    /// The seek the writer asked for is done (or failed): records of the partition sent
    /// after this are read from the new position.
    Sought { partition: i32, done: bool },
    /// These partitions go away: finish their records and store their offsets by
    /// `deadline`, then answer on `done`.
    Revoked {
        partitions: Vec<i32>,
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
    /// Shutting down: finish everything by `deadline`, then answer on `done` and stop.
    Stop {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// The consumer context: forwards rebalances in band, reports lag from librdkafka
/// statistics, and logs client errors.
pub struct StageContext<T> {
    events: mpsc::Sender<ConsumerEvent<T>>,
    /// Records consumed but not yet sent; a rebalance callback sends them before its event.
    staged: Mutex<Vec<T>>,
    runtime: tokio::runtime::Handle,
    drain_timeout: Duration,
    metrics: Metrics,
    topic: String,
    closing: AtomicBool,
    shutdown: Shutdown,
    /// With `latest`: a new data set's start time (see `KafkaConfig::latest_from_ms`).
    latest_from_ms: Option<i64>,
}

impl<T> std::fmt::Debug for StageContext<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("topic", &self.topic)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl<T: Send + 'static> StageContext<T> {
    /// Must be created inside a multi-threaded tokio runtime: the rebalance callback blocks
    /// its thread with `block_in_place` while the writer drains.
    pub fn new(
        events: mpsc::Sender<ConsumerEvent<T>>,
        drain_timeout: Duration,
        metrics: Metrics,
        topic: &str,
        shutdown: Shutdown,
        latest_from_ms: Option<i64>,
    ) -> Self {
        Self {
            events,
            staged: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            drain_timeout,
            metrics,
            topic: topic.to_owned(),
            closing: AtomicBool::new(false),
            shutdown,
            latest_from_ms,
        }
    }

    /// Keeps a consumed record until [`StageContext::take_staged`] (or a rebalance) sends it.
    pub fn stage(&self, item: T) {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
    }

    /// The records staged since the last call, in consumption order.
    pub fn take_staged(&self) -> Vec<T> {
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        // The next chunk is likely as long: one allocation instead of a growth series.
        let capacity = staged.capacity();
        std::mem::replace(&mut *staged, Vec::with_capacity(capacity))
    }

    /// Sends what is staged ahead of a rebalance or seek event, keeping consumption order.
    async fn send_with_staged(
        events: mpsc::Sender<ConsumerEvent<T>>,
        staged: Vec<T>,
        event: ConsumerEvent<T>,
    ) -> bool {
        // Not drained: the event that follows decides what happens to the batch.
        if !staged.is_empty() {
            let items = ConsumerEvent::Items {
                items: staged,
                drained: false,
            };
            if events.send(items).await.is_err() {
                return false;
            }
        }
        events.send(event).await.is_ok()
    }

    /// From now on revokes do not wait for the writer (it has finished): set before closing
    /// the consumer.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Runs `future` to completion from a librdkafka callback, which is synchronous and may
    /// run on a runtime worker (inside `recv`) or outside the runtime (while closing).
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.runtime.block_on(future))
        } else {
            self.runtime.block_on(future)
        }
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect()
    }
}

impl<T: Send + 'static> ClientContext for StageContext<T> {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            // librdkafka reports -1 for partitions it does not consume.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabel {
                        partition: *partition,
                    })
                    .set(stats.consumer_lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_error("client");
        warn!(%error, reason, "kafka client error");
    }
}

impl<T: Send + 'static> StageContext<T> {
    /// Revoke: the writer finishes the revoked partitions' records and stores their offsets
    /// (up to the drain timeout), then they are committed.
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = self.partitions_of(tpl);
        info!(?partitions, "partitions revoked; draining");
        if !self.closing.load(Ordering::SeqCst) {
            let deadline = Instant::now() + self.drain_timeout;
            let (done, drained) = oneshot::channel();
            let event = ConsumerEvent::Revoked {
                partitions,
                deadline,
                done,
            };
            let events = self.events.clone();
            let staged = self.take_staged();
            let finished = self.block_on(async move {
                tokio::time::timeout_at(deadline, async move {
                    Self::send_with_staged(events, staged, event).await && drained.await.is_ok()
                })
                .await
            });
            if !matches!(finished, Ok(true)) {
                warn!(
                    timeout = ?self.drain_timeout,
                    "revoked partitions not drained in time; their uncommitted records \
                     will be read again by the next owner and skipped if already applied"
                );
            }
        }
        commit_stored(consumer, &self.metrics);
        self.metrics.consumer_lag.clear();
    }

    /// Assign: reads what Kafka says about the partitions, lets the writer decide where
    /// each starts (from its checkpoint in Redis), and sets those offsets in `tpl`.
    fn place(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions = self.partitions_of(tpl);
        info!(?partitions, "partitions assigned");
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let facts = if partitions.is_empty() {
            Vec::new()
        } else {
            match self.kafka_facts(consumer, tpl, &partitions) {
                Some(facts) => facts,
                None => return,
            }
        };
        let (starts, placed) = oneshot::channel();
        let event = ConsumerEvent::Assigned { facts, starts };
        let events = self.events.clone();
        let staged = self.take_staged();
        let mut shutdown = self.shutdown.clone();
        // The writer must see this before any record of the new assignment; the channel
        // keeps that order. It answers once Redis does: without the checkpoints no start is
        // safe, and the stage is unready (Redis unreachable) meanwhile.
        let placed = self.block_on(async move {
            if !Self::send_with_staged(events, staged, event).await {
                return None;
            }
            tokio::select! {
                placed = placed => placed.ok(),
                _ = shutdown.wait() => None,
            }
        });
        let Some(starts) = placed else {
            return;
        };
        for (partition, offset) in starts {
            if let Err(error) =
                tpl.set_partition_offset(&self.topic, partition, Offset::Offset(offset))
            {
                warn!(%error, partition, offset, "cannot set the start offset");
            }
        }
    }

    /// Log start and end, and the group's committed offset with its epoch, per partition;
    /// retried until they come or the stage stops.
    fn kafka_facts(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        partitions: &[i32],
    ) -> Option<Vec<KafkaFacts>> {
        let mut backoff = Backoff::DEFAULT;
        loop {
            match self.try_kafka_facts(consumer, tpl, partitions) {
                Ok(facts) => return Some(facts),
                Err(error) => {
                    self.metrics.kafka_error("assign");
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "cannot read the assigned partitions' offsets");
                    if self.shutdown.is_triggered() {
                        return None;
                    }
                    std::thread::sleep(delay);
                }
            }
        }
    }

    fn try_kafka_facts(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        partitions: &[i32],
    ) -> KafkaResult<Vec<KafkaFacts>> {
        let committed = consumer.committed_offsets(tpl.clone(), KAFKA_FACTS_TIMEOUT)?;
        let since = match self.latest_from_ms {
            Some(from_ms) => {
                let mut times = TopicPartitionList::new();
                for partition in partitions {
                    times.add_partition_offset(&self.topic, *partition, Offset::Offset(from_ms))?;
                }
                Some(consumer.offsets_for_times(times, KAFKA_FACTS_TIMEOUT)?)
            }
            None => None,
        };
        partitions
            .iter()
            .map(|&partition| {
                let (low, high) =
                    consumer.fetch_watermarks(&self.topic, partition, KAFKA_FACTS_TIMEOUT)?;
                let element = committed.find_partition(&self.topic, partition);
                let offset = element.as_ref().and_then(|e| e.offset().to_raw());
                let epoch = element
                    .as_ref()
                    .and_then(|e| epoch_of(e.metadata()).map(str::to_owned));
                // No record that recent: the log end.
                let latest_from = since.as_ref().map(|since| {
                    since
                        .find_partition(&self.topic, partition)
                        .and_then(|e| e.offset().to_raw())
                        .filter(|offset| *offset >= 0)
                        .unwrap_or(high)
                });
                Ok(KafkaFacts {
                    partition,
                    low,
                    high,
                    committed: offset.filter(|offset| *offset >= 0),
                    committed_epoch: epoch,
                    latest_from,
                })
            })
            .collect()
    }
}

/// How long one read of committed offsets or watermarks may take at assignment.
const KAFKA_FACTS_TIMEOUT: Duration = Duration::from_secs(10);

impl<T: Send + 'static> ConsumerContext for StageContext<T> {
    /// Eager rebalancing (librdkafka's default assignors), with every assigned partition
    /// placed at the offset the writer decided, never at librdkafka's choice.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.place(consumer, tpl);
                if let Err(error) = consumer.assign(tpl) {
                    self.metrics.kafka_error("rebalance");
                    warn!(%error, "cannot take the assignment");
                }
                // A partition held (paused) before a rebalance is placed afresh: never
                // left paused by a writer that no longer remembers it.
                if let Err(error) = consumer.resume(tpl) {
                    warn!(%error, "cannot resume the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, tpl);
                if let Err(error) = consumer.unassign() {
                    self.metrics.kafka_error("rebalance");
                    warn!(%error, "cannot drop the assignment");
                }
            }
            other => {
                self.metrics.kafka_error("rebalance");
                warn!(error = ?RDKafkaErrorCode::from(other), "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics.kafka_error("commit");
                warn!(%error, "offset commit failed; it is retried with the next commit");
            }
        }
    }
}

/// Commits the stored offsets synchronously; "nothing to commit" is fine.
pub fn commit_stored<C: Consumer<X>, X: ConsumerContext>(consumer: &C, metrics: &Metrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            metrics.kafka_error("commit");
            warn!(%error, "synchronous offset commit failed");
        }
    }
}

/// A shutdown signal every task can wait on; [`Shutdown::from_signals`] ties it to
/// SIGTERM and SIGINT.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
    triggered_at: Arc<OnceLock<Instant>>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
    triggered_at: Arc<OnceLock<Instant>>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.triggered_at.set(Instant::now());
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        let triggered_at = Arc::new(OnceLock::new());
        (
            ShutdownTrigger {
                sender,
                triggered_at: Arc::clone(&triggered_at),
            },
            Shutdown {
                receiver,
                triggered_at,
            },
        )
    }

    /// When everything must be done: `budget` after the shutdown was triggered (SIGTERM),
    /// not after the stage got round to it. A revoke drain in progress at SIGTERM holds
    /// the consumer up to its own timeout; counted from SIGTERM, that comes out of the
    /// budget instead of being added to it, so the stage stays inside the pod's grace
    /// period.
    pub fn deadline(&self, budget: Duration) -> Instant {
        self.triggered_at
            .get()
            .copied()
            .unwrap_or_else(Instant::now)
            + budget
    }

    /// A signal triggered by the first SIGTERM or SIGINT (Ctrl-C).
    pub fn from_signals() -> std::io::Result<Shutdown> {
        let (trigger, shutdown) = Self::new();
        #[cfg(unix)]
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            #[cfg(unix)]
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            trigger.trigger();
        });
        Ok(shutdown)
    }

    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means every trigger is gone, which only happens at exit: stop too.
        let _ = self.receiver.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_deadline_counts_from_the_trigger() {
        let (trigger, shutdown) = Shutdown::new();
        let budget = Duration::from_secs(25);
        let untriggered = shutdown.deadline(budget);
        assert!(untriggered >= Instant::now() + budget - Duration::from_secs(1));
        let before = Instant::now();
        trigger.trigger();
        std::thread::sleep(Duration::from_millis(30));
        let deadline = shutdown.deadline(budget);
        assert!(deadline >= before + budget);
        assert!(
            deadline < Instant::now() + budget - Duration::from_millis(20),
            "the time since SIGTERM comes out of the budget"
        );
        trigger.trigger();
        assert_eq!(
            shutdown.clone().deadline(budget),
            deadline,
            "the first trigger counts"
        );
    }
}
