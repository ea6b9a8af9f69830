//! The routes the application adds for operators: liveness, readiness, metrics, the OpenAPI
//! document and its browsable UI.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        Components, Info, OpenApi,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::Problem;

/// The future a readiness check returns: `Err` says what is wrong, in words for an operator.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Something `/readyz` asks before saying the process can take traffic (a database answers
/// `SELECT 1`, the bus answers). Checks run concurrently on every probe, each under the
/// readiness timeout, so they must be cheap and must not change anything.
///
/// Any `Fn() -> impl Future<Output = Result<(), String>>` is a check:
/// `app.readiness("orders-db", move || { let db = db.clone(); async move { ... } })`.
pub trait ReadinessCheck: Send + Sync + 'static {
    fn check(&self) -> CheckFuture;
}

impl<F, Fut> ReadinessCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn check(&self) -> CheckFuture {
        Box::pin(self())
    }
}

/// The state of the probe routes.
pub(crate) struct Ops {
    pub(crate) checks: Vec<(String, Arc<dyn ReadinessCheck>)>,
    pub(crate) check_timeout: Duration,
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness: every check passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: String,
    /// Each check by name: `ok`.
    pub checks: BTreeMap<String, String>,
}

/// The 503 body of `/readyz`: a problem whose `checks` member says what each check answered.
#[derive(Debug, Serialize)]
struct NotReady {
    #[serde(flatten)]
    problem: Problem,
    checks: BTreeMap<String, String>,
}

/// The documented probe routes; state is applied by the caller.
pub(crate) fn probes() -> OpenApiRouter<Arc<Ops>> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// Liveness: 200 as long as the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is alive", body = Health)))]
async fn healthz() -> crate::Json<Health> {
    crate::Json(Health { status: "ok".into() })
}

/// Readiness: whether every dependency (databases, bus) answers; 503 lists the ones that do not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Every dependency answers", body = Ready),
        (status = 503, description = "Some dependency does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let limit = ops.check_timeout;
    // Spawned, so checks run concurrently and a panicking check is a failed check.
    let running: Vec<_> = ops
        .checks
        .iter()
        .map(|(name, check)| {
            let check = check.check();
            (name.clone(), tokio::spawn(async move { tokio::time::timeout(limit, check).await }))
        })
        .collect();
    let mut checks = BTreeMap::new();
    let mut down = Vec::new();
    for (name, handle) in running {
        let outcome = match handle.await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(reason),
            Ok(Err(_elapsed)) => Err(format!("no answer within {limit:?}")),
            Err(_) => Err("the check panicked".to_owned()),
        };
        match outcome {
            Ok(()) => {
                checks.insert(name, "ok".to_owned());
            }
            Err(reason) => {
                tracing::warn!(check = %name, %reason, "readiness check failed");
                down.push(format!("{name} ({reason})"));
                checks.insert(name, reason);
            }
        }
    }
    if down.is_empty() {
        return crate::Json(Ready { status: "ready".into(), checks }).into_response();
    }
    let problem = Problem::unavailable(format!("not ready: {} not answering", down.join(", ")));
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, crate::Json(NotReady { problem, checks })).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are not enabled", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
            crate::telemetry::render(handle),
        )
            .into_response(),
        None => Problem::not_found("metrics are not enabled in this process").into_response(),
    }
}

/// Gives the merged document its title and version, the `bearer` security scheme that
/// handlers' `security(("bearer" = []))` names, and the problem schema every error uses.
pub(crate) fn decorate(openapi: &mut OpenApi, title: &str, version: &str) {
    openapi.info = Info::new(title, version);
    let components = openapi.components.get_or_insert_with(Components::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("An access token from POST /v1/auth/token"))
                .build(),
        ),
    );
    let mut schemas = vec![(Problem::name().into_owned(), Problem::schema())];
    Problem::schemas(&mut schemas);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
}

/// `GET /openapi.json` (serialised once) and the Swagger UI at `/docs`, which works offline:
/// its files are compiled into the binary.
pub(crate) fn documentation(openapi: &OpenApi) -> Router {
    let json = Bytes::from(serde_json::to_vec(openapi).expect("an OpenAPI document serialises"));
    let serve = get(move || {
        let json = json.clone();
        async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json) }
    });
    Router::new().route("/openapi.json", serve).merge(SwaggerUi::new("/docs").config(Config::from("/openapi.json")))
}
