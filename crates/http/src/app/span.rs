//! One tracing span per request, and one log line when it ends.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

use super::{UNMATCHED, request_id::RequestId};
use crate::TraceContext;

/// The middleware: every line logged while handling the request sits inside the span, so it
/// carries `request_id` and `trace_id`. Routes are matched paths (`/v1/orders/{id}`), never raw
/// ones, so ids do not leak into span names or dashboards.
pub(crate) async fn instrument(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
    let trace_id = request.extensions().get::<TraceContext>().map(|t| t.trace_id().to_owned()).unwrap_or_default();
    let method = request.method().clone();
    let span = tracing::info_span!("request", %request_id, %trace_id, %method, %route);
    let response = next.run(request).instrument(span.clone()).await;

    let status = response.status().as_u16();
    // Microsecond precision is plenty for a log line.
    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let _entered = span.enter();
    if response.status().is_server_error() {
        tracing::warn!(status, latency_ms, "request failed");
    } else if super::is_probe(&route) {
        // Probes and scrapes arrive every few seconds; at info they would drown the real traffic.
        tracing::debug!(status, latency_ms, "request finished");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
    response
}
