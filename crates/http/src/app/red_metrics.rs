//! HTTP RED metrics (rate, errors, duration) through the `metrics` facade.
//!
//! `weir_http_requests_total{method,route,status}` and
//! `weir_http_request_duration_seconds{method,route}`. Labels are bounded: the route is the
//! matched path (or `unmatched`), an unusual method is `OTHER`.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};

use super::UNMATCHED;

pub(crate) const REQUESTS_TOTAL: &str = "weir_http_requests_total";
pub(crate) const REQUEST_DURATION: &str = "weir_http_request_duration_seconds";

/// The middleware: counts and times every request, including the ones the layers below refuse.
pub(crate) async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    metrics::counter!(REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_methods_share_one_label() {
        let cases =
            [(Method::GET, "GET"), (Method::DELETE, "DELETE"), (Method::from_bytes(b"PURGE").unwrap(), "OTHER")];
        for (method, label) in cases {
            assert_eq!(method_label(&method), label);
        }
    }
}
