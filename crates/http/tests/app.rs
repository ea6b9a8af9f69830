//! Black-box tests of the application: a toy service's routes served by `App` on a real
//! loopback listener, spoken to only over HTTP.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use reqwest::{Response, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_http::{
    AuthUser, Json, Problem, Tokens, TraceContext,
    app::{App, AppOptions, RateLimit, RequestId},
};

// ---- the toy service ------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Note {
    text: String,
}

/// What a handler saw of the request, so tests can compare it with the response headers.
#[derive(Debug, Serialize, ToSchema)]
struct Seen {
    request_id: String,
    traceparent: String,
    user: Option<Uuid>,
}

/// An open route.
#[utoipa::path(get, path = "/v1/open", tag = "toy", responses((status = 200, body = Seen)))]
async fn open(id: RequestId, trace: TraceContext) -> Json<Seen> {
    Json(Seen { request_id: id.0, traceparent: trace.traceparent, user: None })
}

/// A protected route.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "toy",
    security(("bearer" = [])),
    responses((status = 200, body = Seen), (status = 401, body = Problem))
)]
async fn me(user: AuthUser, id: RequestId, trace: TraceContext) -> Json<Seen> {
    Json(Seen { request_id: id.0, traceparent: trace.traceparent, user: Some(user.user_id) })
}

/// A JSON body through weir's extractor.
#[utoipa::path(post, path = "/v1/notes", tag = "toy", request_body = Note, responses((status = 201, body = Note)))]
async fn create_note(Json(note): Json<Note>) -> (StatusCode, Json<Note>) {
    (StatusCode::CREATED, Json(note))
}

/// A JSON body through axum's own extractor, whose rejections are plain text.
#[utoipa::path(post, path = "/v1/raw", tag = "toy", request_body = Note, responses((status = 201, body = Note)))]
async fn create_raw(axum::Json(note): axum::Json<Note>) -> (StatusCode, Json<Note>) {
    (StatusCode::CREATED, Json(note))
}

/// An upload route that raises the body limit for itself.
#[utoipa::path(post, path = "/v1/upload", tag = "toy", request_body = Note, responses((status = 201, body = Note)))]
async fn upload(Json(note): Json<Note>) -> (StatusCode, Json<Note>) {
    (StatusCode::CREATED, Json(note))
}

/// A bug.
#[utoipa::path(get, path = "/v1/panic", tag = "toy", responses((status = 500, body = Problem)))]
async fn boom() -> &'static str {
    panic!("secret internals: password=hunter2")
}

/// A handler stuck on a dependency.
#[utoipa::path(get, path = "/v1/slow", tag = "toy", responses((status = 200)))]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "late"
}

fn toy_routes() -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(open))
        .routes(routes!(me))
        .routes(routes!(create_note))
        .routes(routes!(create_raw))
        .routes(routes!(boom))
        .routes(routes!(slow))
        .merge(OpenApiRouter::new().routes(routes!(upload)).layer(axum::extract::DefaultBodyLimit::max(16 * 1024)))
}

// ---- harness --------------------------------------------------------------------------------

struct TestApp {
    url: String,
    tokens: Tokens,
    client: reqwest::Client,
    /// Whether the `db` readiness check passes.
    db_up: Arc<AtomicBool>,
    _stop: DropGuard,
}

impl TestApp {
    async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.url)).send().await.expect("GET")
    }

    fn token(&self, user: Uuid) -> String {
        self.tokens.issue(user).token
    }
}

async fn spawn(options: AppOptions) -> TestApp {
    spawn_with(options, true).await
}

async fn spawn_with(options: AppOptions, metrics: bool) -> TestApp {
    let tokens = Tokens::new(&[42u8; 32], Duration::from_secs(900));
    let db_up = Arc::new(AtomicBool::new(true));
    let up = db_up.clone();
    let router = App::new(AppOptions { title: "Toy API".into(), version: "9.9.9".into(), ..options })
        .routes(toy_routes())
        .readiness("db", move || {
            let up = up.clone();
            async move { if up.load(Ordering::SeqCst) { Ok(()) } else { Err("connection refused".to_owned()) } }
        })
        .readiness("bus", || async { Ok(()) })
        .build(tokens.clone(), metrics.then(weir_http::telemetry::install_metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(weir_http::app::serve(listener, router, stop.clone()));
    TestApp { url, tokens, client: reqwest::Client::new(), db_up, _stop: stop.drop_guard() }
}

/// Asserts `response` is a problem with `status` and returns its body.
async fn expect_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json", "{response:?}");
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    body
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn(AppOptions::default()).await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_lists_its_checks_and_answers_503_naming_what_is_down() {
    let app = spawn(AppOptions::default()).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ready", "checks": {"db": "ok", "bus": "ok"}})
    );

    app.db_up.store(false, Ordering::SeqCst);
    let body = expect_problem(app.get("/readyz").await, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("db (connection refused)"), "{body}");
    assert!(!body["detail"].as_str().unwrap().contains("bus"), "{body}");
    assert_eq!(body["checks"], json!({"db": "connection refused", "bus": "ok"}));

    app.db_up.store(true, Ordering::SeqCst);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn a_readiness_check_that_hangs_is_down_after_the_timeout() {
    let tokens = Tokens::new(&[42u8; 32], Duration::from_secs(900));
    let router = App::new(AppOptions { readiness_timeout: Duration::from_millis(200), ..AppOptions::default() })
        .readiness("stuck", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .build(tokens, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    tokio::spawn(weir_http::app::serve(listener, router, stop));

    let started = Instant::now();
    let body = expect_problem(reqwest::get(format!("{url}/readyz")).await.unwrap(), 503).await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(body["checks"]["stuck"].as_str().unwrap().contains("no answer within"), "{body}");
}

#[tokio::test]
async fn metrics_count_requests_by_matched_route() {
    let app = spawn(AppOptions::default()).await;
    let id = Uuid::now_v7();
    assert_eq!(app.get(&format!("/v1/open?x={id}")).await.status(), 200);
    assert_eq!(app.get(&format!("/nowhere/{id}")).await.status(), 404);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    // The recorder is global: other tests' requests are in the text too.
    let counted = |route: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with("weir_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains("method=\"GET\"")
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(counted("/v1/open", "200"), "no counter for GET /v1/open 200 in:\n{text}");
    assert!(counted("unmatched", "404"), "no counter for unmatched 404 in:\n{text}");
    assert!(text.contains("weir_http_request_duration_seconds_bucket{"), "histogram with buckets:\n{text}");
    assert!(!text.contains(&id.to_string()), "raw paths must not become labels");
}

#[tokio::test]
async fn metrics_without_a_handle_are_a_404_problem() {
    let app = spawn_with(AppOptions::default(), false).await;
    expect_problem(app.get("/metrics").await, 404).await;
}

#[tokio::test]
async fn openapi_json_is_3_1_with_the_routes_the_bearer_scheme_and_the_problem_schema() {
    let app = spawn(AppOptions::default()).await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("valid JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "Toy API");
    assert_eq!(doc["info"]["version"], "9.9.9");
    for path in ["/v1/open", "/v1/me", "/v1/notes", "/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from {}", doc["paths"]);
    }
    assert_eq!(doc["paths"]["/v1/me"]["get"]["security"], json!([{"bearer": []}]));
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
    assert!(doc["components"]["schemas"]["Problem"]["properties"]["detail"].is_object(), "{}", doc["components"]);
    assert!(doc["components"]["schemas"]["FieldError"].is_object());
}

#[tokio::test]
async fn openapi_documents_the_answers_the_stack_gives_before_the_handlers() {
    let statuses = |doc: &Value, path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"].as_object().unwrap().keys().cloned().collect()
    };
    let app = spawn(AppOptions::default()).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(statuses(&doc, "/v1/notes", "post"), ["201", "400", "413", "415", "422", "429"]);
    assert_eq!(statuses(&doc, "/v1/me", "get"), ["200", "401", "429"]);
    assert_eq!(statuses(&doc, "/v1/open", "get"), ["200", "429"]);
    assert!(!statuses(&doc, "/healthz", "get").contains(&"429".to_owned()), "probes are never rate limited");
    let malformed = &doc["paths"]["/v1/notes"]["post"]["responses"]["400"];
    assert_eq!(malformed["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem");

    let unlimited =
        spawn(AppOptions { rate_limit: RateLimit { per_second: 0, burst: 0 }, ..AppOptions::default() }).await;
    let doc: Value = unlimited.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(statuses(&doc, "/v1/open", "get"), ["200"]);
}

mod other_service {
    /// A second service's `Note`, unlike the toy's.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct Note {
        pub pages: u32,
    }

    #[utoipa::path(get, path = "/v1/other", tag = "other", responses((status = 200, body = Note)))]
    pub async fn other() -> weir_http::Json<Note> {
        weir_http::Json(Note { pages: 1 })
    }
}

#[test]
#[should_panic(expected = "two services define the OpenAPI schema `Note` differently")]
fn services_may_not_give_one_schema_name_two_meanings() {
    let other = OpenApiRouter::new().routes(routes!(other_service::other));
    let _ = App::new(AppOptions::default()).routes(toy_routes()).routes(other);
}

#[tokio::test]
async fn docs_serve_swagger_ui_pointing_at_openapi_json() {
    let app = spawn(AppOptions::default()).await;
    let response = app.get("/docs").await; // redirects to /docs/
    assert_eq!(response.status(), 200);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(response.text().await.unwrap().contains("swagger-ui"));
    let initializer = app.get("/docs/swagger-initializer.js").await;
    assert_eq!(initializer.status(), 200);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let app = spawn(AppOptions::default()).await;
    let body = expect_problem(app.get("/v1/nothing-here").await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/v1/nothing-here"), "{body}");
}

#[tokio::test]
async fn wrong_methods_are_405_problems_with_allow() {
    let app = spawn(AppOptions::default()).await;
    for path in ["/v1/open", "/healthz"] {
        let response = app.client.delete(format!("{}{path}", app.url)).send().await.unwrap();
        let allow = response.headers().get(header::ALLOW).map(|v| v.to_str().unwrap().to_owned());
        expect_problem(response, 405).await;
        assert!(allow.is_some_and(|a| a.contains("GET")), "{path}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_problems() {
    let app = spawn(AppOptions { body_limit_bytes: 1024, ..AppOptions::default() }).await;
    let small = json!({"text": "hello"});
    let big = json!({"text": "x".repeat(2048)});
    for path in ["/v1/notes", "/v1/raw"] {
        let url = format!("{}{path}", app.url);
        let response = app.client.post(&url).json(&small).send().await.unwrap();
        assert_eq!(response.status(), 201, "{path}");
        let response = app.client.post(&url).json(&big).send().await.unwrap();
        expect_problem(response, 413).await;
    }
    // A route may raise the limit for itself.
    let response = app.client.post(format!("{}/v1/upload", app.url)).json(&big).send().await.unwrap();
    assert_eq!(response.status(), 201);
    // Without Content-Length (chunked) the limit still holds: the body is cut off as it streams in.
    for path in ["/v1/notes", "/v1/raw"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let chunk = format!("{{\"text\":\"{}\"}}", "x".repeat(4096));
        let raw = format!("{head}{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
        let answer = raw_exchange(&app.url, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("application/problem+json"), "{path}: {answer}");
    }
}

/// Sends `request` as raw bytes and reads the whole answer (the request asks to close).
async fn raw_exchange(url: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_input_to_axum_extractors_becomes_a_problem_too() {
    let app = spawn(AppOptions::default()).await;
    let response = app
        .client
        .post(format!("{}/v1/raw", app.url))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let body = expect_problem(response, 400).await;
    assert!(body["detail"].as_str().unwrap().to_lowercase().contains("json"), "{body}");
}

#[tokio::test]
async fn callers_over_their_rate_get_429_with_retry_after_and_other_callers_do_not() {
    const BURST: u32 = 3;
    let burst = BURST;
    let app = spawn(AppOptions { rate_limit: RateLimit { per_second: 1, burst }, ..AppOptions::default() }).await;
    // Counts successes until the first 429; the bucket starts full, so at least `burst` pass,
    // and it refills at 1/s, so a few more at most on a slow machine.
    async fn until_limited(app: &TestApp, token: Option<&str>) -> (u32, Response) {
        for passed in 0..BURST + 5 {
            let mut request = app.client.get(format!("{}/v1/open", app.url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            if response.status() == 429 {
                return (passed, response);
            }
            assert_eq!(response.status(), 200);
        }
        panic!("never rate limited");
    }

    // Anonymous callers are keyed by address.
    let (passed, response) = until_limited(&app, None).await;
    assert!(passed >= burst, "{passed}");
    let retry_after: u64 = response.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    expect_problem(response, 429).await;

    // An invalid token buys nothing: it counts against the same address.
    let response = app.client.get(format!("{}/v1/open", app.url)).bearer_auth("forged").send().await.unwrap();
    assert_eq!(response.status(), 429);

    // Each user has a bucket of their own, untouched by the address's.
    let (alice, bob) = (app.token(Uuid::now_v7()), app.token(Uuid::now_v7()));
    let (passed, _) = until_limited(&app, Some(&alice)).await;
    assert!(passed >= burst, "{passed}");
    let response = app.client.get(format!("{}/v1/me", app.url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // Probes are never limited.
    for _ in 0..burst + 2 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
}

#[tokio::test]
async fn the_auth_extractor_works_behind_the_app() {
    let app = spawn(AppOptions::default()).await;
    expect_problem(app.get("/v1/me").await, 401).await;
    let user = Uuid::now_v7();
    let response = app.client.get(format!("{}/v1/me", app.url)).bearer_auth(app.token(user)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["user"], user.to_string());
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let app = spawn(AppOptions::default()).await;
    // (sent, kept)
    let cases = [(Some("req-42.a:b_c"), true), (None, false), (Some("two words"), false)];
    for (sent, kept) in cases {
        let mut request = app.client.get(format!("{}/v1/open", app.url));
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["request_id"], echoed, "the handler sees the id the response names");
        if kept {
            assert_eq!(Some(echoed.as_str()), sent);
        } else {
            assert_eq!(Uuid::parse_str(&echoed).unwrap().get_version_num(), 7, "{echoed}");
        }
    }
    // Problems carry it too.
    let response =
        app.client.get(format!("{}/nowhere", app.url)).header("x-request-id", "lost-1").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "lost-1");
}

#[tokio::test]
async fn traceparent_is_echoed_and_shared_with_handlers() {
    let app = spawn(AppOptions::default()).await;
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app.client.get(format!("{}/v1/open", app.url)).header("traceparent", theirs).send().await.unwrap();
    assert_eq!(response.headers()["traceparent"], theirs);
    assert_eq!(response.json::<Value>().await.unwrap()["traceparent"], theirs);

    for sent in [None, Some("garbage")] {
        let mut request = app.client.get(format!("{}/v1/open", app.url));
        if let Some(sent) = sent {
            request = request.header("traceparent", sent);
        }
        let response = request.send().await.unwrap();
        let echoed = response.headers()["traceparent"].to_str().unwrap().to_owned();
        assert_ne!(Some(echoed.as_str()), sent);
        assert!(weir_core::event::is_traceparent(&echoed), "{echoed}");
        assert_eq!(response.json::<Value>().await.unwrap()["traceparent"], echoed.as_str());
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_server_keeps_serving() {
    let app = spawn(AppOptions::default()).await;
    for _ in 0..3 {
        let response = app.get("/v1/panic").await;
        assert_eq!(response.status(), 500);
        let text = response.text().await.unwrap();
        assert!(!text.contains("hunter2") && !text.contains("secret"), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], 500);
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/v1/open").await.status(), 200);
}

#[tokio::test]
async fn a_request_over_the_deadline_is_a_504_problem() {
    let app = spawn(AppOptions { request_timeout: Duration::from_millis(300), ..AppOptions::default() }).await;
    let started = Instant::now();
    let body = expect_problem(app.get("/v1/slow").await, 504).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(body["detail"].as_str().unwrap().contains("did not finish"), "{body}");
    assert_eq!(app.get("/v1/open").await.status(), 200);
}
