//! Prometheus metrics of a worker, served as text on `/metrics` by [`crate::http`].
//!
//! Every series carries the `pipeline` label. Names start with `ferry_`. The processor
//! registers its own series on [`Metrics::registry`] next to these.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::record::RejectReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

/// A stage blocked on one Redis key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabel {
    pub reason: String,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

/// The worker's series. Cheap to clone: every field is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Records read from Kafka, whatever became of them.
    pub records_in: Counter,
    /// Records written to Redis.
    pub records_written: Counter,
    /// Records seen again after a restart or rebalance and skipped, being already in Redis.
    pub records_skipped: Counter,
    /// Of those, records dropped at commit time because the checkpoint read under `WATCH`
    /// had passed them: another writer applied them first (the fence).
    pub records_fenced: Counter,
    /// Transactions aborted because a watched key changed before `EXEC`; each is retried.
    pub transaction_conflicts: Counter,
    /// 1 while the stage cannot commit its batch because of this key; gone once it can.
    pub blocked: Family<BlockedLabel, Gauge>,
    /// Records refused, by reason; dead-lettered when a dead-letter topic is configured.
    pub records_dead_lettered: Family<ReasonLabel, Counter>,
    /// Batches committed to Redis.
    pub batches: Counter,
    /// From a batch's first record to its `EXEC` acknowledgement.
    pub batch_duration: Histogram,
    /// High watermark minus position, per assigned partition, as librdkafka sees it.
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Failed Redis calls, by operation; each is retried.
    pub redis_errors: Family<OperationLabel, Counter>,
    /// Kafka errors: consume, commit and dead-letter produce failures.
    pub kafka_errors: Family<OperationLabel, Counter>,
    /// Position events by reason (`consume::position::PositionEvent`): a re-created topic,
    /// Redis that lost or rewound checkpoints, a retention gap, negative lag.
    pub position_events: Family<ReasonLabel, Counter>,
    /// Records between a checkpoint and the log start that retention removed from Kafka
    /// before this stage read them.
    pub retention_gap_records: Counter,
    /// Times a partition was held because a record of it could not go out.
    pub partitions_held: Counter,
    registry: std::sync::Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new(pipeline: &str) -> Self {
        let registry = Registry::with_prefix_and_labels(
            "ferry",
            [("pipeline".into(), pipeline.to_owned().into())].into_iter(),
        );
        let metrics = Self {
            records_in: Counter::default(),
            records_written: Counter::default(),
            records_skipped: Counter::default(),
            records_fenced: Counter::default(),
            transaction_conflicts: Counter::default(),
            blocked: Family::default(),
            records_dead_lettered: Family::default(),
            batches: Counter::default(),
            batch_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            consumer_lag: Family::default(),
            redis_errors: Family::default(),
            kafka_errors: Family::default(),
            position_events: Family::default(),
            retention_gap_records: Counter::default(),
            partitions_held: Counter::default(),
            registry: std::sync::Arc::new(Mutex::new(registry)),
        };
        let mut registry = metrics
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registry.register(
            "records_in",
            "Records read from Kafka",
            metrics.records_in.clone(),
        );
        registry.register(
            "records_written",
            "Records written to Redis",
            metrics.records_written.clone(),
        );
        registry.register(
            "records_skipped",
            "Records already in Redis, skipped after a restart or rebalance",
            metrics.records_skipped.clone(),
        );
        registry.register(
            "records_fenced",
            "Records dropped at commit time: the checkpoint read under WATCH had passed them",
            metrics.records_fenced.clone(),
        );
        registry.register(
            "transaction_conflicts",
            "Transactions aborted because a watched key changed before EXEC",
            metrics.transaction_conflicts.clone(),
        );
        registry.register(
            "stage_blocked",
            "1 while a batch cannot commit because of this key, by reason",
            metrics.blocked.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Records refused, by reason",
            metrics.records_dead_lettered.clone(),
        );
        registry.register(
            "position_events",
            "Partition position events, by reason: topic_recreated, redis_lost_checkpoint, redis_rewound, retention_gap, committed_above_log_end, offsets_went_back",
            metrics.position_events.clone(),
        );
        registry.register(
            "retention_gap_records",
            "Records retention removed from Kafka between a checkpoint and the log start",
            metrics.retention_gap_records.clone(),
        );
        registry.register(
            "partitions_held",
            "Times a partition was held (paused and retried later) because a record of it could not go out",
            metrics.partitions_held.clone(),
        );
        registry.register(
            "batches",
            "Batches committed to Redis",
            metrics.batches.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "From a batch's first record to Redis acknowledging it",
            metrics.batch_duration.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the high watermark, per assigned partition",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "redis_errors",
            "Failed Redis calls, by operation",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "kafka_errors",
            "Kafka errors, by operation",
            metrics.kafka_errors.clone(),
        );
        // Zeroes for every reason, so alerts see the series before the first bad record.
        for reason in RejectReason::ALL {
            let _ = metrics.dead_lettered(reason.as_str());
        }
        drop(registry);
        metrics
    }

    /// The registry, for callers adding their own series.
    pub fn registry(&self) -> &Mutex<Registry> {
        &self.registry
    }

    pub fn dead_lettered(&self, reason: &str) -> Counter {
        self.records_dead_lettered
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .clone()
    }

    pub fn redis_error(&self, operation: &str) {
        self.redis_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }

    pub fn kafka_error(&self, operation: &str) {
        self.kafka_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }

    pub fn observe_batch(&self, duration: Duration) {
        self.batch_duration.observe(duration.as_secs_f64());
    }

    /// The Prometheus text exposition of every registered series.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = match self.registry.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_series_with_the_pipeline_label() {
        let metrics = Metrics::new("demo");
        metrics.records_in.inc_by(3);
        metrics
            .dead_lettered(RejectReason::Truncated.as_str())
            .inc();
        metrics.observe_batch(Duration::from_millis(2));
        metrics
            .consumer_lag
            .get_or_create(&PartitionLabel { partition: 4 })
            .set(17);
        let text = metrics.encode();
        assert!(
            text.contains("ferry_records_in_total{pipeline=\"demo\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_records_dead_lettered_total{pipeline=\"demo\",reason=\"truncated\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_records_dead_lettered_total{pipeline=\"demo\",reason=\"too_old\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_consumer_lag{pipeline=\"demo\",partition=\"4\"} 17"),
            "{text}"
        );
        assert!(
            text.contains("ferry_batch_duration_seconds_count{pipeline=\"demo\"} 1"),
            "{text}"
        );
    }
}
