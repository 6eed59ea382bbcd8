//! The operator's Prometheus metrics, served on `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    reconciliations: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
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
        Self {
            registry,
            reconciliations,
            failures,
            duration,
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
}
