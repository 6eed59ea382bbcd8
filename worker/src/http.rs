//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! serves), `/readyz` (the stage reports ready: partitions assigned, Redis reachable, and
//! no reason that makes it unready; an unready stage says why in the body) and `/status`
//! (the same state as JSON, every reason named, for the operator: docs/status-channel.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::status::{self, Reason, ReportedReason, StatusDocument};

/// What a reason says: the message, and where in the topic when it is about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// A noted event's end ([`Readiness::note`]); raised reasons last until cleared.
    until: Option<std::time::Instant>,
}

/// How long a noted event stays in `/status`: longer than the operator takes to read it
/// (every 5 s), short enough that the Pipeline is not Degraded for long by what the stage
/// already handled.
pub const NOTE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            partition: None,
            offset: None,
            until: None,
        }
    }

    /// The record the problem is about.
    #[must_use]
    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = Some(partition);
        self.offset = Some(offset);
        self
    }
}

/// The stage's state, set by the stage and read by `/readyz` and `/status`: whether it
/// owns partitions and reaches Redis, and the [`Reason`]s raised, each per subject (a key,
/// a topic, a partition; `""` when there is one of its kind).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    assigned: Arc<AtomicBool>,
    redis_connected: Arc<AtomicBool>,
    problems: Arc<Mutex<BTreeMap<(Reason, String), Problem>>>,
}

impl Readiness {
    /// The reasons raised, without the noted ones that expired.
    fn problems(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Reason, String), Problem>> {
        let mut problems = self.problems.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        problems.retain(|_, problem| problem.until.is_none_or(|until| until > now));
        problems
    }

    /// Raises `reason` for `subject` (replacing what it said before).
    pub fn raise(&self, reason: Reason, subject: &str, problem: Problem) {
        self.problems()
            .insert((reason, subject.to_owned()), problem);
    }

    /// Notes an event the stage handled (a position event): in `/status` for [`NOTE_TTL`],
    /// then gone by itself.
    pub fn note(&self, reason: Reason, subject: &str, mut problem: Problem) {
        problem.until = Some(std::time::Instant::now() + NOTE_TTL);
        self.raise(reason, subject, problem);
    }

    /// Clears `reason` for `subject`.
    pub fn clear(&self, reason: Reason, subject: &str) {
        self.problems().remove(&(reason, subject.to_owned()));
    }

    /// Clears `reason` for the subjects `clear` says.
    pub fn clear_where(&self, reason: Reason, clear: impl Fn(&str) -> bool) {
        self.problems()
            .retain(|(raised, subject), _| *raised != reason || !clear(subject));
    }

    /// Clears `reason` for every subject.
    pub fn clear_all(&self, reason: Reason) {
        self.problems().retain(|(raised, _), _| *raised != reason);
    }

    pub fn is_raised(&self, reason: Reason) -> bool {
        self.problems().keys().any(|(raised, _)| *raised == reason)
    }

    /// `Some(reason)`: consuming keeps failing; `None` clears it.
    pub fn set_consume_failing(&self, reason: Option<String>) {
        match reason {
            Some(message) => self.raise(Reason::ConsumeFailing, "", Problem::new(message)),
            None => self.clear(Reason::ConsumeFailing, ""),
        }
    }

    /// What `/readyz` says when the stage is unready for a reason it knows: the first
    /// reason that makes it unready.
    pub fn reason(&self) -> Option<String> {
        self.problems()
            .iter()
            .find(|((reason, _), _)| reason.unready())
            .map(|((reason, _), problem)| format!("{}: {}", reason.as_str(), problem.message))
    }

    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }

    /// Connected clears [`Reason::RedisUnavailable`]; the failure raises it, with its error.
    pub fn set_redis_connected(&self, connected: bool) {
        self.redis_connected.store(connected, Ordering::Relaxed);
        if connected {
            self.clear(Reason::RedisUnavailable, "");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
            && self.redis_connected.load(Ordering::Relaxed)
            && self.reason().is_none()
    }

    /// The `/status` document.
    pub fn document(&self) -> StatusDocument {
        let ready = self.is_ready();
        let reasons = self
            .problems()
            .iter()
            .map(|((reason, _), problem)| ReportedReason {
                reason: reason.as_str().to_owned(),
                message: status::bounded_message(&problem.message),
                partition: problem.partition,
                offset: problem.offset,
            })
            .collect();
        StatusDocument { ready, reasons }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", {
            let readiness = readiness.clone();
            get(move || {
                // Serializing plain strings and numbers cannot fail; an empty body would say
                // "no document" to the operator rather than a wrong one.
                let body = serde_json::to_string(&readiness.document()).unwrap_or_default();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            })
        })
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                let blocked = readiness.reason();
                async move {
                    match (ready, blocked) {
                        (true, _) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                        (false, Some(reason)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {reason}\n"),
                        )
                            .into_response(),
                        (false, None) => {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                                .into_response()
                        }
                    }
                }
            }),
        )
}

/// Binds `addr` now (so a taken port fails the start) and serves in the background.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
) -> Result<tokio::task::JoinHandle<Result<(), HttpError>>, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let app = router(metrics, readiness);
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .map_err(|source| HttpError::Serve { addr, source })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_kept_per_subject_and_only_unready_ones_fail_readyz() {
        let readiness = Readiness::default();
        readiness.set_assigned(true);
        readiness.set_redis_connected(true);
        readiness.raise(
            Reason::TopicMissing,
            "dlq",
            Problem::new("topic dlq is missing"),
        );
        assert!(
            readiness.is_ready(),
            "a missing topic alone is reported, not unready"
        );
        readiness.raise(
            Reason::RecordUndeliverable,
            "1",
            Problem::new("cannot deliver").at(1, 42),
        );
        readiness.raise(
            Reason::RecordUndeliverable,
            "0",
            Problem::new("also").at(0, 7),
        );
        assert!(!readiness.is_ready());
        assert_eq!(
            readiness.reason().as_deref(),
            Some("RecordUndeliverable: also")
        );
        let doc = readiness.document();
        assert!(!doc.ready);
        assert_eq!(doc.reasons.len(), 3);
        assert_eq!(doc.reasons[0].reason, "TopicMissing");
        assert_eq!(
            (doc.reasons[2].partition, doc.reasons[2].offset),
            (Some(1), Some(42))
        );
        readiness.clear_all(Reason::RecordUndeliverable);
        assert!(readiness.is_ready());
        readiness.set_consume_failing(Some("5 errors".to_owned()));
        assert!(readiness.is_raised(Reason::ConsumeFailing));
        readiness.set_consume_failing(None);
        assert!(!readiness.is_raised(Reason::ConsumeFailing));

        readiness.note(
            Reason::TopicRecreated,
            "0",
            Problem::new("re-created").at(0, 0),
        );
        assert!(
            readiness.is_ready(),
            "a noted event does not make the stage unready"
        );
        let noted = readiness.document();
        assert!(
            noted
                .reasons
                .iter()
                .any(|r| r.reason == "TopicRecreated" && r.partition == Some(0))
        );
        let mut expired = Problem::new("old");
        expired.until = Some(std::time::Instant::now());
        readiness.raise(Reason::RetentionGap, "1", expired);
        assert!(
            !readiness.is_raised(Reason::RetentionGap),
            "an expired note is gone"
        );
    }
}
