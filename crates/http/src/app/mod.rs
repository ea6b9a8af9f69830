//! The application: every service's routes on one listener, behind one middleware stack, with
//! the operator routes (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`).
//!
//! ```no_run
//! # async fn example(orders: utoipa_axum::router::OpenApiRouter, tokens: weir_http::Tokens) -> std::io::Result<()> {
//! use weir_http::app::{App, AppOptions};
//! let router = App::new(AppOptions::default())
//!     .routes(orders)
//!     .readiness("bus", || async { Ok(()) })
//!     .build(tokens, Some(weir_http::telemetry::install_metrics()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! weir_http::app::serve(listener, router, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod ops;
mod problems;
mod rate_limit;
mod red_metrics;
mod request_id;
mod span;
mod timeout;
mod trace_context;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Router,
    extract::DefaultBodyLimit,
    middleware::{from_fn, from_fn_with_state},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;

pub use ops::{CheckFuture, Health, ReadinessCheck, Ready};
pub(crate) use red_metrics::{REQUEST_DURATION, REQUESTS_TOTAL};
pub use request_id::{REQUEST_ID, RequestId};

use crate::Tokens;

/// The `route` label and span field of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// Routes polled by machines; they are logged at debug and never rate limited.
fn is_probe(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
}

/// Two services' OpenAPI documents define one schema name differently.
#[derive(Debug, thiserror::Error)]
#[error("two services define the OpenAPI schema `{0}` differently; give one another name (`#[schema(as = ...)]`)")]
pub struct SchemaClash(pub String);

/// How the application treats every request.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// The largest request body an extractor reads; more is 413. A route that needs more (an
    /// upload) layers its own `axum::extract::DefaultBodyLimit::max(n)`. Default 64 KiB.
    pub body_limit_bytes: usize,
    /// Requests per caller (user, or IP address without a valid token). Default 200/s, burst 400.
    pub rate_limit: RateLimit,
    /// How long a request may take before the caller gets a 504 problem. Default 30 s.
    pub request_timeout: Duration,
    /// How long each readiness check may take before it counts as down. Default 2 s.
    pub readiness_timeout: Duration,
    /// The OpenAPI document's title. Default `Weir`.
    pub title: String,
    /// The OpenAPI document's version. Default this crate's version.
    pub version: String,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            rate_limit: RateLimit::default(),
            request_timeout: Duration::from_secs(30),
            readiness_timeout: Duration::from_secs(2),
            title: "Weir".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// A token bucket per caller: `burst` requests at once, refilled at `per_second`.
/// `per_second == 0` turns rate limiting off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_second: 200, burst: 400 }
    }
}

/// Assembles the application; see the module docs.
pub struct App {
    options: AppOptions,
    routes: OpenApiRouter,
    checks: Vec<(String, Arc<dyn ReadinessCheck>)>,
}

impl App {
    pub fn new(options: AppOptions) -> Self {
        Self { options, routes: OpenApiRouter::new(), checks: Vec::new() }
    }

    /// Merges a service's routes (state applied) and their OpenAPI paths. Paths must not
    /// overlap another service's or the operator routes (axum panics on overlaps), and a
    /// service must not set its own fallback.
    ///
    /// # Panics
    /// On a [`SchemaClash`] (see [`try_routes`](Self::try_routes)).
    pub fn routes(self, routes: OpenApiRouter) -> Self {
        self.try_routes(routes).unwrap_or_else(|clash| panic!("{clash}"))
    }

    /// [`routes`](Self::routes), refusing routes whose OpenAPI document names a schema as
    /// routes merged before did, with another definition: the merged document would keep one
    /// of them and describe the other service's answers wrongly.
    pub fn try_routes(mut self, routes: OpenApiRouter) -> Result<Self, SchemaClash> {
        let (merged, added) = (&self.routes.get_openapi().components, &routes.get_openapi().components);
        if let (Some(merged), Some(added)) = (merged, added)
            && let Some((name, _)) = added
                .schemas
                .iter()
                .find(|(name, schema)| merged.schemas.get(*name).is_some_and(|kept| kept != *schema))
        {
            return Err(SchemaClash(name.clone()));
        }
        self.routes = self.routes.merge(routes);
        Ok(self)
    }

    /// Adds a check `/readyz` runs; `name` names it in the answer (e.g. `orders-db`, `bus`).
    pub fn readiness(mut self, name: impl Into<String>, check: impl ReadinessCheck) -> Self {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// The OpenAPI document `/openapi.json` will serve (for `weir openapi` and tests).
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        let mut openapi = self.routes.get_openapi().clone();
        openapi.merge(ops::probes().into_openapi());
        ops::decorate(&mut openapi, &self.options.title, &self.options.version);
        ops::document_stack_answers(&mut openapi, self.options.rate_limit.per_second > 0);
        openapi
    }

    /// The router to serve (with [`serve`], so the rate limiter sees client addresses).
    /// `metrics` is what `/metrics` renders; without it `/metrics` is a 404 problem.
    pub fn build(self, tokens: Tokens, metrics: Option<PrometheusHandle>) -> Router {
        let openapi = self.openapi();
        let Self { options, routes, checks } = self;
        let ops = Arc::new(ops::Ops { checks, check_timeout: options.readiness_timeout, metrics });
        let (probes, _) = ops::probes().with_state(ops).split_for_parts();
        let (services, _) = routes.split_for_parts();

        let mut api =
            services.merge(ops::documentation(&openapi)).method_not_allowed_fallback(problems::method_not_allowed);
        if options.rate_limit.per_second > 0 {
            // Only the API is limited: probes must answer however busy a client is, or the
            // orchestrator would take a healthy process for a dead one.
            let state = rate_limit::RateLimitState {
                limiter: Arc::new(rate_limit::Limiter::new(rate_limit::Quota::new(options.rate_limit))),
                tokens: tokens.clone(),
                limit: options.rate_limit,
            };
            api = api.layer(from_fn_with_state(state, rate_limit::limit));
        }
        let router =
            api.merge(probes.method_not_allowed_fallback(problems::method_not_allowed)).fallback(problems::not_found);

        // The stack, outermost first. Its order is part of the contract.
        let stack = ServiceBuilder::new()
            // Request id first: every layer below and every log line can name the request.
            .layer(from_fn(request_id::assign))
            // Trace context next: the span below and the handlers' TraceContext share one trace.
            .layer(from_fn(trace_context::propagate))
            // The span wraps everything below, so refusals, timeouts and panics log inside it.
            .layer(from_fn(span::instrument))
            // RED metrics count every outcome below, including refusals, timeouts and panics.
            .layer(from_fn(red_metrics::record))
            // A panic below becomes a 500 problem; the process and the connection live on.
            .layer(CatchPanicLayer::custom(problems::panicked))
            // A deadline for everything below: a stuck handler cannot hold a connection forever.
            .layer(from_fn_with_state(options.request_timeout, timeout::deadline))
            // Framework rejections (plain text: 413 from the body limit, 405...) become problems.
            .layer(from_fn(problems::plain_errors_to_problems))
            // The default body limit of every extractor; a route may raise it for itself.
            .layer(DefaultBodyLimit::max(options.body_limit_bytes))
            // AuthUser verifies bearer tokens with these keys.
            .layer(Extension(tokens));
        // Innermost, on API routes only (above): the per-caller rate limit.
        router.layer(stack)
    }
}

/// Serves `router` on `listener` until `shutdown`, then finishes in-flight requests. Client
/// addresses reach the rate limiter through `ConnectInfo`; serving the router another way
/// makes every anonymous caller share one bucket.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
