//! The W3C trace context of a request, to carry into the events it causes.

use axum::{extract::FromRequestParts, http::request::Parts};
use rand::RngCore;

/// The request's `traceparent`: the caller's when it sent a valid one, else a new trace.
/// Put it on the events a request causes so every log line of the business transaction,
/// in every service, carries the same trace id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
}

impl TraceContext {
    /// A new root trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        rng.fill_bytes(&mut trace);
        rng.fill_bytes(&mut span);
        Self { traceparent: format!("00-{}-{}-01", hex::encode(trace), hex::encode(span)) }
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// Reads `traceparent` from request headers, or starts a new trace.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|t| weir_core::event::is_traceparent(t))
            .map(|t| Self { traceparent: t.to_owned() })
            .unwrap_or_else(Self::new_root)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The application's trace layer stores the context it chose; fall back to the headers.
        Ok(parts.extensions.get::<TraceContext>().cloned().unwrap_or_else(|| Self::from_headers(&parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_roots_are_valid_and_callers_are_kept() {
        let root = TraceContext::new_root();
        assert!(weir_core::event::is_traceparent(&root.traceparent), "{}", root.traceparent);
        assert_eq!(root.trace_id().len(), 32);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(TraceContext::from_headers(&headers).trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert_ne!(TraceContext::from_headers(&headers).trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
