//! The operator's Prometheus metrics, served on `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// One stage of one Pipeline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub namespace: String,
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub namespace: String,
    pub pipeline: String,
    pub stage: String,
    /// `up` or `down`.
    pub direction: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    reconciliations: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    stage_lag: Family<StageLabels, Gauge>,
    stage_desired_replicas: Family<StageLabels, Gauge>,
    stage_persistent_lag_partitions: Family<StageLabels, Gauge>,
    scale_events: Family<ScaleLabels, Counter>,
    lag_poll_failures: Family<StageLabels, Counter>,
    lag_polls: Counter,
    lag_kafka_calls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciliations = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        // 5 ms up to about 20 s.
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        let mut registry = Registry::with_prefix("ferry_operator");
        registry.register(
            "reconciliations",
            "Reconciles started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error label",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile took",
            duration.clone(),
        );
        let stage_lag = Family::<StageLabels, Gauge>::default();
        registry.register(
            "stage_lag",
            "Consumer-group lag of a Pipeline stage, in records, at the last poll",
            stage_lag.clone(),
        );
        let stage_desired_replicas = Family::<StageLabels, Gauge>::default();
        registry.register(
            "stage_desired_replicas",
            "Replicas the autoscaler wants for a Pipeline stage",
            stage_desired_replicas.clone(),
        );
        let stage_persistent_lag_partitions = Family::<StageLabels, Gauge>::default();
        registry.register(
            "stage_persistent_lag_partitions",
            "Partitions whose committed offset is stuck while their consumer is alive",
            stage_persistent_lag_partitions.clone(),
        );
        let scale_events = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "scale_events",
            "Replica changes made by the autoscaler",
            scale_events.clone(),
        );
        let lag_poll_failures = Family::<StageLabels, Counter>::default();
        registry.register(
            "lag_poll_failures",
            "Lag polls that could not read Kafka",
            lag_poll_failures.clone(),
        );
        let lag_polls = Counter::default();
        registry.register(
            "lag_polls",
            "Stage lag polls made (each reads one consumer group)",
            lag_polls.clone(),
        );
        let lag_kafka_calls = Counter::default();
        registry.register(
            "lag_kafka_calls",
            "Kafka calls the lag polls made: metadata, ListOffsets rounds, group calls",
            lag_kafka_calls.clone(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            stage_lag,
            stage_desired_replicas,
            stage_persistent_lag_partitions,
            scale_events,
            lag_poll_failures,
            lag_polls,
            lag_kafka_calls,
        }
    }
}

impl Metrics {
    pub fn count_reconcile(&self) {
        self.reconciliations.inc();
    }

    pub fn count_failure(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    /// Observes the reconcile's duration when dropped, on every return path.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// What the autoscaler saw and decided for one stage at one poll.
    pub fn observe_stage(
        &self,
        stage: &StageLabels,
        lag: i64,
        desired_replicas: i32,
        persistent_partitions: usize,
    ) {
        self.stage_lag.get_or_create(stage).set(lag);
        self.stage_desired_replicas
            .get_or_create(stage)
            .set(i64::from(desired_replicas));
        self.stage_persistent_lag_partitions
            .get_or_create(stage)
            .set(i64::try_from(persistent_partitions).unwrap_or(i64::MAX));
    }

    pub fn count_scale(&self, stage: &StageLabels, up: bool) {
        self.scale_events
            .get_or_create(&ScaleLabels {
                namespace: stage.namespace.clone(),
                pipeline: stage.pipeline.clone(),
                stage: stage.stage.clone(),
                direction: if up { "up" } else { "down" }.to_owned(),
            })
            .inc();
    }

    /// One batch of lag polls against one cluster and the Kafka calls it took.
    pub fn count_lag_batch(&self, polls: usize, kafka_calls: u64) {
        self.lag_polls.inc_by(polls as u64);
        self.lag_kafka_calls.inc_by(kafka_calls);
    }

    pub fn count_lag_poll_failure(&self, stage: &StageLabels) {
        self.lag_poll_failures.get_or_create(stage).inc();
    }

    /// Drops a removed stage's series so they don't linger at their last value.
    pub fn forget_stage(&self, stage: &StageLabels) {
        self.stage_lag.remove(stage);
        self.stage_desired_replicas.remove(stage);
        self.stage_persistent_lag_partitions.remove(stage);
        self.lag_poll_failures.remove(stage);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[derive(Debug)]
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_failures_and_durations() {
        let metrics = Metrics::default();
        metrics.count_reconcile();
        metrics.count_failure("apply");
        drop(metrics.reconcile_timer());
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("ferry_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_reconcile_failures_total{error=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn encodes_stage_lag_and_desired_replicas() {
        let metrics = Metrics::default();
        let stage = StageLabels {
            namespace: "ns".into(),
            pipeline: "orders".into(),
            stage: "receiver".into(),
        };
        metrics.observe_stage(&stage, 4200, 5, 1);
        metrics.count_scale(&stage, true);
        let text = metrics.encode().unwrap();
        let labels = r#"{namespace="ns",pipeline="orders",stage="receiver"}"#;
        assert!(
            text.contains(&format!("ferry_operator_stage_lag{labels} 4200")),
            "{text}"
        );
        assert!(
            text.contains(&format!("ferry_operator_stage_desired_replicas{labels} 5")),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ferry_operator_scale_events_total{namespace="ns",pipeline="orders",stage="receiver",direction="up"} 1"#
            ),
            "{text}"
        );
        metrics.forget_stage(&stage);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("ferry_operator_stage_lag{"), "{text}");
    }
}
