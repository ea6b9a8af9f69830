//! The W3C trace context of a request: read or start it once, share it with handlers, echo it.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};

use crate::TraceContext;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The middleware: the [`TraceContext`] extractor of every handler then sees this same context
/// (it reads request extensions first), so events a request causes carry the trace the span
/// and the response name.
pub(crate) async fn propagate(mut request: Request, next: Next) -> Response {
    let trace = TraceContext::from_headers(request.headers());
    let value = HeaderValue::from_str(&trace.traceparent).ok();
    request.extensions_mut().insert(trace);
    let mut response = next.run(request).await;
    if let Some(value) = value {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}
