//! Everything the framework answers on its own becomes a problem: unknown routes (404), wrong
//! methods (405), panics (500) and the plain-text rejections of axum's extractors (a body over
//! the limit, a bad query string...).

use std::any::Any;

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::Problem;

/// How much of a plain-text error body is read to become the problem's detail.
const MAX_PLAIN_BODY: usize = 4096;

/// The fallback for paths no route matches.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Problem {
    let path: String = uri.path().chars().take(200).collect();
    Problem::not_found(format!("no route matches {method} {path}; the API is described at /docs"))
}

/// The fallback for a known path with a method it does not serve (axum adds `Allow`).
pub(crate) async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("this resource does not accept {method}; the Allow header lists the methods it does"),
    )
}

/// The answer to a handler's panic: logged with its message, never shown to the client.
pub(crate) fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    tracing::error!(panic = %message, "handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an unexpected error occurred; it has been logged")
        .into_response()
}

/// The middleware: an error response that is plain text or empty (axum's own rejections, e.g.
/// 413 from the body limit behind a raw `axum::Json`) is rewritten as a problem. Its headers
/// (`Allow`, `Retry-After`...) are kept. A 4xx keeps axum's text as the detail, since it says
/// what was wrong with the request; a 5xx text may name internals, so it is logged instead.
pub(crate) async fn plain_errors_to_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !is_plain(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_BODY)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let detail = match text {
        Some(text) if status.is_client_error() => text,
        text => {
            if let Some(text) = text {
                tracing::error!(status = status.as_u16(), error = %text, "plain-text server error");
            }
            default_detail(status).to_owned()
        }
    };
    let mut problem = Problem::new(status, kind_of(status), detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().append(name, value.clone());
        }
    }
    problem
}

fn is_plain(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(content_type)) => content_type.starts_with("text/plain"),
        Some(Err(_)) => false,
    }
}

fn kind_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation",
        StatusCode::TOO_MANY_REQUESTS => "rate-limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "client-error",
    }
}

fn default_detail(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than this endpoint accepts",
        StatusCode::METHOD_NOT_ALLOWED => "this resource does not accept that method; see the Allow header",
        s if s.is_server_error() => "an unexpected error occurred; it has been logged",
        _ => "the request was refused",
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    fn response(status: StatusCode, content_type: Option<&'static str>, body: &'static str) -> Response {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        response
    }

    async fn through_guard(make: fn() -> Response) -> (StatusCode, HeaderMap, String) {
        let app = Router::new().route("/", get(move || async move { make() }));
        let app = app.layer(axum::middleware::from_fn(plain_errors_to_problems));
        let response = app.oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    /// (response, status, becomes a problem, text expected in the body)
    type Case = (fn() -> Response, u16, bool, &'static str);

    #[tokio::test]
    async fn plain_errors_become_problems_and_others_pass() {
        let cases: [Case; 5] = [
            (
                || response(StatusCode::PAYLOAD_TOO_LARGE, Some("text/plain; charset=utf-8"), "Length limit exceeded"),
                413,
                true,
                "Length limit exceeded",
            ),
            (|| response(StatusCode::METHOD_NOT_ALLOWED, None, ""), 405, true, "Allow header"),
            (
                || response(StatusCode::INTERNAL_SERVER_ERROR, Some("text/plain"), "Missing extension Foo"),
                500,
                true,
                "has been logged",
            ),
            (|| response(StatusCode::OK, Some("text/plain"), "fine"), 200, false, "fine"),
            (|| response(StatusCode::NOT_FOUND, Some("application/json"), "{\"custom\":1}"), 404, false, "custom"),
        ];
        for (make, status, becomes_problem, text) in cases {
            let (got, headers, body) = through_guard(make).await;
            assert_eq!(got.as_u16(), status);
            let is_problem = headers[header::CONTENT_TYPE] == "application/problem+json";
            assert_eq!(is_problem, becomes_problem, "{status}: {body}");
            assert!(body.contains(text), "{status}: {body}");
            assert!(!body.contains("Missing extension"), "a 5xx text must not reach the client: {body}");
        }
    }

    #[tokio::test]
    async fn headers_of_the_original_response_are_kept() {
        let (status, headers, _) = through_guard(|| {
            let mut r = response(StatusCode::METHOD_NOT_ALLOWED, None, "");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            r
        })
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET,HEAD");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    }
}
