//! A deadline for every request: past it the handler is dropped and the caller gets a 504
//! problem instead of a hung connection.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::Problem;

/// The middleware. Dropping the handler's future cancels it at its next await; a transaction it
/// held is rolled back, but a write it already committed stays, which the detail tells the caller.
pub(crate) async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
            Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the request did not finish within {:?} and was abandoned; it may or may not have taken \
                     effect, so check before retrying",
                    limit
                ),
            )
            .into_response()
        }
    }
}
