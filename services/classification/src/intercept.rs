//! The interceptors in front of the classifier service, in this order:
//!
//! 1. [`Trace`] — reads the caller's W3C `traceparent` (or starts a trace) and attaches a
//!    [`RequestTrace`] to the request, so the handler's span — and a refusal by the next
//!    interceptor — carries the trace id.
//! 2. [`Authenticate`] — demands `authorization: Bearer <service token>`; anything else is
//!    `UNAUTHENTICATED` before the handler runs.
//!
//! The health and reflection services are mounted without them: probes and tools need no token.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status, service::Interceptor};
use tracing::warn;
use uuid::Uuid;

/// The service token; never printed.
#[derive(Clone)]
pub struct ServiceToken(Arc<str>);

impl ServiceToken {
    /// A token must be non-empty visible ASCII, so that it fits in gRPC metadata.
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then(|| Self(token.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

/// The trace a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    /// The W3C `traceparent`: the caller's when valid, else a new one.
    pub traceparent: String,
    /// Its 32 hex digit trace id.
    pub trace_id: String,
}

impl RequestTrace {
    fn from_metadata(request: &Request<()>) -> Self {
        let given = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|t| weir_core::event::is_traceparent(t));
        let traceparent = match given {
            Some(t) => t.to_owned(),
            None => {
                let span = Uuid::now_v7().simple().to_string();
                format!("00-{}-{}-01", Uuid::now_v7().simple(), &span[16..])
            }
        };
        let trace_id = traceparent[3..35].to_owned();
        Self { traceparent, trace_id }
    }
}

/// Interceptor 1: attaches the request's [`RequestTrace`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace;

impl Interceptor for Trace {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let trace = RequestTrace::from_metadata(&request);
        request.extensions_mut().insert(trace);
        Ok(request)
    }
}

/// Interceptor 2: checks the bearer token in constant time (over SHA-256 digests, so neither
/// the content nor the length of the expected token leaks through timing).
#[derive(Clone)]
pub struct Authenticate {
    expected: [u8; 32],
}

impl Authenticate {
    pub fn new(token: &ServiceToken) -> Self {
        Self { expected: Sha256::digest(token.expose().as_bytes()).into() }
    }

    fn check(&self, request: &Request<()>) -> Result<(), Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata: send the service token",
            ));
        };
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated("the `authorization` metadata must be `Bearer <token>`"));
        };
        let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let difference = given.iter().zip(&self.expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(Status::unauthenticated("the service token is not valid"));
        }
        Ok(())
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&request) {
            Ok(()) => Ok(request),
            Err(status) => {
                let trace_id = request.extensions().get::<RequestTrace>().map(|t| t.trace_id.as_str()).unwrap_or("");
                warn!(trace_id, reason = status.message(), "gRPC call refused");
                Err(status)
            }
        }
    }
}

/// Both interceptors, in the order of the module docs.
#[derive(Clone)]
pub struct Interceptors {
    trace: Trace,
    authenticate: Authenticate,
}

impl Interceptors {
    pub fn new(token: &ServiceToken) -> Self {
        Self { trace: Trace, authenticate: Authenticate::new(token) }
    }
}

impl Interceptor for Interceptors {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let request = self.trace.call(request)?;
        self.authenticate.call(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn request(metadata: &[(&'static str, &str)]) -> Request<()> {
        let mut request = Request::new(());
        for (key, value) in metadata {
            request.metadata_mut().insert(*key, value.parse().expect("ASCII metadata"));
        }
        request
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = ServiceToken::new("s3cret-token").expect("a valid token");
        let mut auth = Authenticate::new(&token);
        assert!(auth.call(request(&[("authorization", "Bearer s3cret-token")])).is_ok());
        let refused = [
            request(&[]),
            request(&[("authorization", "Bearer wrong")]),
            request(&[("authorization", "Bearer s3cret-token-and-more")]),
            request(&[("authorization", "Basic s3cret-token")]),
            request(&[("authorization", "s3cret-token")]),
        ];
        for r in refused {
            let status = auth.call(r).expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
    }

    #[test]
    fn tokens_must_fit_in_metadata() {
        assert!(ServiceToken::new("").is_none());
        assert!(ServiceToken::new("has space").is_none());
        assert!(ServiceToken::new("naïve").is_none());
        assert_eq!(format!("{:?}", ServiceToken::new("abc").expect("valid")), "ServiceToken(<redacted>)");
    }

    #[test]
    fn the_callers_trace_is_kept_or_a_new_one_started() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = Trace.call(request(&[("traceparent", given)])).expect("passes");
        let trace = traced.extensions().get::<RequestTrace>().expect("a trace");
        assert_eq!((trace.traceparent.as_str(), trace.trace_id.as_str()), (given, "4bf92f3577b34da6a3ce929d0e0e4736"));

        for metadata in [&[][..], &[("traceparent", "garbage")][..]] {
            let traced = Trace.call(request(metadata)).expect("passes");
            let trace = traced.extensions().get::<RequestTrace>().expect("a trace");
            assert!(weir_core::event::is_traceparent(&trace.traceparent), "{}", trace.traceparent);
            assert_ne!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn the_trace_is_attached_before_authentication_refuses() {
        let token = ServiceToken::new("t").expect("valid");
        let mut both = Interceptors::new(&token);
        let ok = both.call(request(&[("authorization", "Bearer t")])).expect("passes");
        assert!(ok.extensions().get::<RequestTrace>().is_some());
        assert_eq!(both.call(request(&[])).expect_err("refused").code(), Code::Unauthenticated);
    }
}
