//! Black-box tests of the users service: it runs on a `TestWorld` (real SQLite database, real
//! SQLite-log bus), and the tests speak to it only over HTTP and by watching the `users` topic.

use std::time::Duration;

use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{NotificationPreferencesChanged, Preferences, UserRegistered, topics};
use weir_http::Tokens;
use weir_testkit::app::{TestWorld, Watch, serve};
use weir_users::{Config, Service};

const PASSWORD: &str = "correct horse battery";

struct App {
    world: TestWorld,
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<JoinHandle<weir_users::Result<()>>>,
    stop_serving: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.stop_serving.cancel();
    }
}

impl App {
    async fn spawn() -> Self {
        Self::spawn_with(2).await
    }

    async fn spawn_with(hash_concurrency: usize) -> Self {
        let world = TestWorld::new();
        let kernel = world.kernel("users").await;
        let config = Config { tokens: world.tokens.clone(), sealer: world.sealer.clone(), hash_concurrency };
        let service = Service::build(kernel, config).await.expect("the users service builds");
        let (router, _api) = service.routes().split_for_parts();
        let (url, stop_serving) = serve(router, &world.tokens).await;
        let shutdown = CancellationToken::new();
        let running = Some(tokio::spawn(service.run(shutdown.clone())));
        Self { world, url, http: reqwest::Client::new(), shutdown, running, stop_serving }
    }

    async fn watch(&self) -> Watch {
        self.world.watch(topics::USERS).await
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.http.post(format!("{}{path}", self.url)).json(&body).send().await.expect("the request is sent")
    }

    async fn register(&self, email: &str, password: &str) -> Response {
        self.post("/v1/users", json!({ "email": email, "password": password })).await
    }

    /// Registers `email` and returns the new user's id.
    async fn registered(&self, email: &str) -> Uuid {
        let response = self.register(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::CREATED, "registering {email}");
        let body: Value = response.json().await.unwrap();
        body["user_id"].as_str().unwrap().parse().unwrap()
    }

    async fn log_in(&self, email: &str, password: &str) -> Response {
        self.post("/v1/auth/token", json!({ "email": email, "password": password })).await
    }

    async fn token(&self, email: &str) -> String {
        let response = self.log_in(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn me(&self, token: Option<&str>) -> Response {
        let mut request = self.http.get(format!("{}/v1/users/me", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn put_preferences(&self, token: &str, body: Value) -> Response {
        self.http
            .put(format!("{}/v1/users/me/preferences", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts that `response` is a problem+json with `status` and a detail; returns its body.
async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("a JSON problem body");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "no detail in {body}");
    body
}

fn count_registrations(watch: &Watch, user_id: Option<Uuid>) -> usize {
    watch
        .seen()
        .iter()
        .filter(|e| e.kind == "user_registered")
        .filter(|e| user_id.is_none_or(|id| e.data::<UserRegistered>().unwrap().user_id == id))
        .count()
}

#[tokio::test]
async fn registration_announces_a_sealed_email_and_log_in_issues_a_valid_token() {
    let app = App::spawn().await;
    let mut watch = app.watch().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let response = app
        .http
        .post(format!("{}/v1/users", app.url))
        .header("traceparent", traceparent)
        .json(&json!({ "email": "  Ada.Lovelace@Example.COM ", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers().get(header::LOCATION).unwrap(), "/v1/users/me");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["email"], "ada.lovelace@example.com");
    let user_id: Uuid = body["user_id"].as_str().unwrap().parse().unwrap();

    let (registered, event) = watch.expect::<UserRegistered>(|r| r.user_id == user_id).await;
    let data = String::from_utf8(event.data.to_vec()).unwrap();
    assert!(!data.to_lowercase().contains("lovelace"), "the email is in clear in {data}");
    assert_eq!(app.world.sealer.open(&registered.email_sealed).unwrap(), "ada.lovelace@example.com");
    assert_eq!(registered.preferences, Preferences::default());
    assert_eq!(event.source, "users");
    assert_eq!(event.subject, user_id.to_string());
    assert_eq!(event.traceparent.as_deref(), Some(traceparent), "the request's trace goes on the event");

    // Log-in matches the email case-insensitively, as registration normalised it.
    let response = app.log_in("ADA.LOVELACE@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(app.world.tokens.verify(token).expect("the world's tokens accept it").sub, user_id);

    let response = app.me(Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(
        me,
        json!({
            "user_id": user_id,
            "email": "ada.lovelace@example.com",
            "preferences": { "email": true, "in_app": true },
        })
    );
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401() {
    let app = App::spawn().await;
    app.registered("ada@example.com").await;

    let wrong_password =
        problem(app.log_in("ada@example.com", "not the password").await, StatusCode::UNAUTHORIZED).await;
    let unknown_user = problem(app.log_in("bob@example.com", PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    let not_an_email = problem(app.log_in("bob", PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong_password, unknown_user);
    assert_eq!(wrong_password, not_an_email);
    assert!(!wrong_password.to_string().contains("ada"), "the answer repeats the email: {wrong_password}");

    let response = app.log_in("ada@example.com", "").await;
    assert_eq!(response.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    assert_eq!(problem(response, StatusCode::UNAUTHORIZED).await, wrong_password);
}

#[tokio::test]
async fn a_taken_email_in_any_case_is_409_and_announced_once() {
    let app = App::spawn().await;
    let mut watch = app.watch().await;
    let ada = app.registered("ada@example.com").await;

    for again in ["ada@example.com", "ADA@Example.com", "  ada@EXAMPLE.COM  "] {
        let body = problem(app.register(again, "another password").await, StatusCode::CONFLICT).await;
        assert_eq!(body["errors"][0]["field"], "email");
    }
    // The first registration's password still works: the duplicates changed nothing.
    app.token("ada@example.com").await;

    // Two sign-ups racing for one new email: the database, not the pre-check, decides.
    let (first, second) =
        tokio::join!(app.register("eve@example.com", PASSWORD), app.register("EVE@example.com", PASSWORD));
    let mut statuses = [first.status(), second.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);

    // The outbox publishes in commit order: once a later registration is seen, anything the
    // refused ones could have emitted would have been seen before it.
    let barrier = app.registered("zed@example.com").await;
    watch.expect::<UserRegistered>(|r| r.user_id == barrier).await;
    assert_eq!(count_registrations(&watch, Some(ada)), 1);
    assert_eq!(count_registrations(&watch, None), 3, "ada, eve and zed, once each");
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_and_writes_nothing() {
    let app = App::spawn().await;
    let mut watch = app.watch().await;

    let body = problem(app.register("not-an-email", PASSWORD).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        body["errors"],
        json!([{ "field": "email", "message": "an email address looks like name@example.com" }])
    );

    let body = problem(app.register("short@example.com", "1234567").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "password");
    assert!(!body.to_string().contains("1234567"), "the answer repeats the password: {body}");

    let body = problem(app.register("a@b", "short").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["email", "password"]);

    let long = format!("{}@example.com", "a".repeat(250));
    problem(app.register(&long, PASSWORD).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    problem(app.register("long@example.com", &"x".repeat(129)).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    problem(app.post("/v1/users", json!({ "email": "missing@example.com" })).await, StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    problem(app.post("/v1/users", json!({ "email": 7, "password": PASSWORD })).await, StatusCode::UNPROCESSABLE_ENTITY)
        .await;

    let malformed = app
        .http
        .post(format!("{}/v1/users", app.url))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"email": "json@example.com", "password": "#)
        .send()
        .await
        .unwrap();
    problem(malformed, StatusCode::BAD_REQUEST).await;

    let no_content_type = app
        .http
        .post(format!("{}/v1/users", app.url))
        .body(json!({ "email": "plain@example.com", "password": PASSWORD }).to_string())
        .send()
        .await
        .unwrap();
    problem(no_content_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let malformed_login = app
        .http
        .post(format!("{}/v1/auth/token", app.url))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    problem(malformed_login, StatusCode::BAD_REQUEST).await;

    // Nothing was written: the emails refused above are still free, and the only events are
    // those of the registrations below.
    let short = app.registered("short@example.com").await;
    let plain = app.registered("plain@example.com").await;
    watch.expect::<UserRegistered>(|r| r.user_id == plain).await;
    assert_eq!(count_registrations(&watch, Some(short)), 1);
    assert_eq!(count_registrations(&watch, None), 2);
}

#[tokio::test]
async fn me_refuses_missing_malformed_forged_and_expired_tokens() {
    let app = App::spawn().await;
    let user_id = app.registered("ada@example.com").await;

    let missing = problem(app.me(None).await, StatusCode::UNAUTHORIZED).await;
    assert!(missing["detail"].as_str().unwrap().contains("Authorization"));

    let basic = app.http.get(format!("{}/v1/users/me", app.url)).basic_auth("ada", Some("pw")).send().await.unwrap();
    problem(basic, StatusCode::UNAUTHORIZED).await;
    problem(app.me(Some("not.a.token")).await, StatusCode::UNAUTHORIZED).await;

    let forger = Tokens::new(&[42u8; 32], Duration::from_secs(900));
    let forged = problem(app.me(Some(&forger.issue(user_id).token)).await, StatusCode::UNAUTHORIZED).await;
    assert!(forged["detail"].as_str().unwrap().contains("signature"), "{forged}");

    let expired = app.world.tokens.issue_at(user_id, 1_000_000_000).token;
    let expired = problem(app.me(Some(&expired)).await, StatusCode::UNAUTHORIZED).await;
    assert!(expired["detail"].as_str().unwrap().contains("expired"), "{expired}");

    // A genuine token for nobody: 404, the resource does not exist.
    let nobody = app.world.tokens.issue(Uuid::now_v7()).token;
    problem(app.me(Some(&nobody)).await, StatusCode::NOT_FOUND).await;

    let token = app.token("ada@example.com").await;
    assert_eq!(app.me(Some(&token)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_preferences_change_is_announced_and_visible() {
    let app = App::spawn().await;
    let mut watch = app.watch().await;
    let user_id = app.registered("ada@example.com").await;
    let token = app.token("ada@example.com").await;

    let response = app.put_preferences(&token, json!({ "email": false, "in_app": true })).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "email": false, "in_app": true }));
    let (changed, event) = watch.expect::<NotificationPreferencesChanged>(|c| c.user_id == user_id).await;
    assert_eq!(changed.preferences, Preferences { email: false, in_app: true });
    assert_eq!(event.subject, user_id.to_string());

    let me: Value = app.me(Some(&token)).await.json().await.unwrap();
    assert_eq!(me["preferences"], json!({ "email": false, "in_app": true }));

    // The same preferences again change nothing, so announce nothing; the next real change is
    // announced, and arrives right after the first.
    let response = app.put_preferences(&token, json!({ "email": false, "in_app": true })).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.put_preferences(&token, json!({ "email": false, "in_app": false })).await.status(), StatusCode::OK);
    let (next, _) = watch.expect::<NotificationPreferencesChanged>(|c| c.user_id == user_id).await;
    assert_eq!(next.preferences, Preferences { email: false, in_app: false });
    assert_eq!(watch.seen().iter().filter(|e| e.kind == "notification_preferences_changed").count(), 2);
    let me: Value = app.me(Some(&token)).await.json().await.unwrap();
    assert_eq!(me["preferences"], json!({ "email": false, "in_app": false }));

    // Refused changes: not authenticated, or not the expected shape.
    let anonymous = app
        .http
        .put(format!("{}/v1/users/me/preferences", app.url))
        .json(&json!({ "email": true, "in_app": true }))
        .send()
        .await
        .unwrap();
    problem(anonymous, StatusCode::UNAUTHORIZED).await;
    problem(
        app.put_preferences(&token, json!({ "email": "yes", "in_app": true })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(app.put_preferences(&token, json!({ "email": true })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let me: Value = app.me(Some(&token)).await.json().await.unwrap();
    assert_eq!(me["preferences"], json!({ "email": false, "in_app": false }));
}

#[tokio::test]
async fn a_burst_of_sign_ups_through_one_hash_permit_all_succeed() {
    let app = App::spawn_with(1).await;
    let mut watch = app.watch().await;
    let emails: Vec<String> = (0..6).map(|i| format!("user{i}@example.com")).collect();
    let responses = futures::future::join_all(emails.iter().map(|email| app.register(email, PASSWORD))).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["user_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    // Commit order, not request order: collect all six, then compare.
    let mut announced = Vec::new();
    for _ in 0..ids.len() {
        announced.push(watch.expect::<UserRegistered>(|_| true).await.0.user_id);
    }
    ids.sort();
    announced.sort();
    assert_eq!(announced, ids);
    app.token("user3@example.com").await;
}

#[tokio::test]
async fn run_relays_until_shutdown_and_then_returns_promptly() {
    let mut app = App::spawn().await;
    let mut watch = app.watch().await;
    let user_id = app.registered("ada@example.com").await;
    watch.expect::<UserRegistered>(|r| r.user_id == user_id).await;
    let running = app.running.take().unwrap();
    assert!(!running.is_finished(), "run returned before shutdown");

    app.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), running).await;
    stopped.expect("run returns within 5 s of shutdown").unwrap().expect("run ends cleanly");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = App::spawn().await;
    let kernel = app.world.kernel("users-openapi").await;
    let config = Config::new(app.world.tokens.clone(), app.world.sealer.clone());
    assert!(config.hash_concurrency >= 1);
    let api = Service::build(kernel, config).await.unwrap().routes().into_openapi();
    let api = serde_json::to_value(&api).unwrap();
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/auth/token", "post"),
        ("/v1/users/me", "get"),
        ("/v1/users/me/preferences", "put"),
    ] {
        let operation = &api["paths"][path][method];
        assert_eq!(operation["tags"], json!(["users"]), "{method} {path}");
    }
    assert_eq!(api["paths"]["/v1/users/me"]["get"]["security"], json!([{ "bearer": [] }]));
}
