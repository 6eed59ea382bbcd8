//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (the stage reports ready: partitions assigned, Redis reachable,
//! and no batch blocked; a blocked stage says why in the body).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness, set by the stage and read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    assigned: Arc<AtomicBool>,
    redis_connected: Arc<AtomicBool>,
    /// Why the stage cannot commit its batch, while it cannot (e.g. a key of another type).
    blocked: Arc<Mutex<Option<String>>>,
    /// Why the stage cannot read its topic, while it cannot (repeated consume errors).
    consume_failing: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// `Some(reason)`: the stage stops committing until it clears; `None` clears it.
    pub fn set_blocked(&self, reason: Option<String>) {
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    pub fn blocked(&self) -> Option<String> {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `Some(reason)`: consuming keeps failing; `None` clears it.
    pub fn set_consume_failing(&self, reason: Option<String>) {
        *self
            .consume_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// What `/readyz` says when the stage is unready for a reason it knows.
    pub fn reason(&self) -> Option<String> {
        self.blocked().or_else(|| {
            self.consume_failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }

    pub fn set_redis_connected(&self, connected: bool) {
        self.redis_connected.store(connected, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
            && self.redis_connected.load(Ordering::Relaxed)
            && self.reason().is_none()
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
