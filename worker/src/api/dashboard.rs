//! The dashboard: three static files compiled into the binary and served as they are, so
//! the page needs no build step and no network. Everything it shows it reads from the
//! API's own routes, with the same bearer token (docs/read-api.md, "The dashboard").

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The page's routes. They hold no data, so they are served without the token: the page
/// asks for one when the API answers 401.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new worker image brings a new page: never serve a stale copy.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
