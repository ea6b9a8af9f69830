//! Request ids: every request gets one, every log line of it carries it, the response echoes it.
//!
//! A caller's `x-request-id` is kept when it is sane (1–128 characters of `A–Z a–z 0–9 - _ . :`,
//! so it cannot forge log lines or blow up label sets); otherwise the request gets a UUIDv7.

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderName, HeaderValue, request::Parts},
    middleware::Next,
    response::Response,
};
use uuid::Uuid;

/// The request id header, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request. Handlers may extract it (it is always there inside the app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The caller's id when it is sane, else a new UUIDv7.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_sane(id))
            .map(|id| Self(id.to_owned()))
            .unwrap_or_else(|| Self(Uuid::now_v7().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| Self::from_header(parts.headers.get(REQUEST_ID))))
    }
}

/// The middleware: choose the id, store it in extensions and the request header, echo it.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    let id = RequestId::from_header(request.headers().get(REQUEST_ID));
    let value = HeaderValue::from_str(id.as_str()).expect("a sane request id is a valid header value");
    request.headers_mut().insert(REQUEST_ID, value.clone());
    request.extensions_mut().insert(id);
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let long = "a".repeat(129);
        let cases = [
            ("req-42", true),
            ("0190f5d2-7e4b-7c3a-9d7e-1b2c3d4e5f60", true),
            ("trace:abc_1.2", true),
            ("", false),
            ("has space", false),
            ("line\\nbreak", false),
            ("é", false),
            (long.as_str(), false),
        ];
        for (input, kept) in cases {
            let header = HeaderValue::from_str(input).ok();
            let id = RequestId::from_header(header.as_ref());
            assert_eq!(id.0 == input, kept, "{input:?} -> {id}");
            if !kept {
                assert!(Uuid::parse_str(&id.0).is_ok_and(|u| u.get_version_num() == 7), "{id}");
            }
        }
        assert!(Uuid::parse_str(&RequestId::from_header(None).0).is_ok());
    }
}
