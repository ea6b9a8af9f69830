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
        Components, ContentBuilder, Info, OpenApi, Ref, RefOr, ResponseBuilder,
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

/// Documents, on every operation that does not already, the answers the stack gives before or
/// instead of its handler: a request body that is malformed (400), too large (413), of another
/// media type (415) or, for JSON, of another shape (422); a bearer-secured operation's missing,
/// expired or forged token (401); and, when `rate_limited`, a caller over its rate (429) on
/// every operation but the probes.
pub(crate) fn document_stack_answers(openapi: &mut OpenApi, rate_limited: bool) {
    let problem = |description: &str| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(Problem::name()))).build();
        RefOr::T(ResponseBuilder::new().description(description).content("application/problem+json", content).build())
    };
    for (path, item) in &mut openapi.paths.paths {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let mut answers = Vec::new();
            if let Some(body) = &operation.request_body {
                answers.push(("400", "The body is malformed: the problem says where"));
                answers.push(("413", "The body is larger than this operation takes"));
                answers.push(("415", "The body is not of the media type this operation takes"));
                if matches!(body, RefOr::T(body) if body.content.contains_key("application/json")) {
                    answers.push((
                        "422",
                        "The body is JSON of another shape, or holds invalid values: `errors` names them",
                    ));
                }
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                answers.push(("401", "No valid access token: log in again"));
            }
            if rate_limited && !super::is_probe(path) {
                answers.push(("429", "Too many requests from this caller: wait as `Retry-After` says"));
            }
            for (status, description) in answers {
                operation.responses.responses.entry(status.to_owned()).or_insert_with(|| problem(description));
            }
        }
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
