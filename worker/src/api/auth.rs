//! Optional bearer-token auth for the API's data routes (`--token-file`, mounted from a
//! Secret). The token is compared in constant time and never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The routes anyone may read: liveness and the page itself, which holds no data.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/", "/dashboard.js", "/dashboard.css"];

/// The expected token; `None` serves every route without one.
#[derive(Clone, Default)]
pub struct BearerToken(pub Option<Arc<str>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

/// Whether an `Authorization` header carries the token.
pub fn authorized(expected: &str, header_value: Option<&HeaderValue>) -> bool {
    let Some(presented) = header_value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(presented.trim().as_bytes().ct_eq(expected.as_bytes()))
}

pub async fn require(State(token): State<BearerToken>, request: Request, next: Next) -> Response {
    let Some(expected) = &token.0 else {
        return next.run(request).await;
    };
    if OPEN_PATHS.contains(&request.uri().path())
        || authorized(expected, request.headers().get(header::AUTHORIZATION))
    {
        return next.run(request).await;
    }
    let body = r#"{"error":{"code":"unauthorized","message":"this API needs Authorization: Bearer <token>"}}"#;
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::WWW_AUTHENTICATE, "Bearer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert!(authorized("s3cret", Some(&header("Bearer s3cret"))));
        assert!(!authorized("s3cret", Some(&header("Bearer s3cre"))));
        assert!(!authorized("s3cret", Some(&header("Bearer s3cret2"))));
        assert!(!authorized("s3cret", Some(&header("Basic s3cret"))));
        assert!(!authorized("s3cret", Some(&header("s3cret"))));
        assert!(!authorized("s3cret", None));
    }

    #[test]
    fn the_token_is_not_printed_in_debug_output() {
        let token = BearerToken(Some(Arc::from("s3cret")));
        assert_eq!(format!("{token:?}"), "BearerToken(set)");
    }
}
