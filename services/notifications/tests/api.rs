//! Black-box tests of the notifications service: events in through a real bus, HTTP out, and
//! email through a real SMTP server (`python3 -m aiosmtpd`, writing a Maildir we count).
//!
//! Where a test must know that one event was handled before it looks for the absence of an
//! effect, it uses a *barrier*: a later event with the same key (handled strictly after, since
//! the router keeps per-key order) or a later email (sent after every earlier one), never a
//! sleep.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    Currency, DocumentClassified, DocumentFailed, Money, NotificationPreferencesChanged, OrderCancelled,
    OrderCompleted, OrderCreated, Preferences, UserRegistered, topics,
};
use weir_core::RouterOptions;
use weir_notifications::{Config, DeliveryPolicy, Service, SmtpConfig};
use weir_testkit::app::{PATIENCE, TestWorld, serve};

// ---------------------------------------------------------------------------------------------
// A real SMTP server.

/// `aiosmtpd` on a loopback port, delivering into a Maildir. Killed when dropped.
struct SmtpServer {
    child: Child,
}

impl SmtpServer {
    async fn start(port: u16, maildir: &Path) -> Self {
        let probe = Command::new("python3").args(["-c", "import aiosmtpd"]).output();
        match probe {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "these tests need a real SMTP server: the Python package aiosmtpd is missing. \
                 Install it with `pip install aiosmtpd` (python3 must be on PATH), then rerun."
            ),
        }
        // The Maildir must not exist yet: aiosmtpd creates it with its new/cur/tmp folders.
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        let server = Self { child };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not listen on port {port} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One delivered email, as the Maildir holds it.
#[derive(Debug, Clone)]
struct Mail {
    /// The envelope recipient (aiosmtpd's `X-RcptTo`).
    to: String,
    message_id: String,
    subject: String,
    body: String,
}

fn read_maildir(maildir: &Path) -> Vec<Mail> {
    let mut mails = Vec::new();
    for folder in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(folder)) else { continue };
        for entry in entries.flatten() {
            let raw = std::fs::read_to_string(entry.path()).expect("a readable mail").replace("\r\n", "\n");
            mails.push(parse_mail(&raw));
        }
    }
    mails
}

fn parse_mail(raw: &str) -> Mail {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    // Unfold continuation lines, then read the headers we need.
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let body = match header("Content-Transfer-Encoding").to_ascii_lowercase().as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.to_owned(),
    };
    Mail { to: header("X-RcptTo"), message_id: header("Message-ID"), subject: header("Subject"), body }
}

fn decode_quoted_printable(text: &str) -> String {
    let text = text.replace("=\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("a UTF-8 body")
}

/// A loopback port nothing listens on (yet).
use weir_testkit::free_port;

// ---------------------------------------------------------------------------------------------
// The service under test.

/// Where the service keeps its state.
enum Store {
    Sqlite,
    Postgres,
}

struct App {
    world: TestWorld,
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    service: Option<tokio::task::JoinHandle<()>>,
    maildir: PathBuf,
    smtp_port: u16,
}

impl App {
    /// The service with email to `127.0.0.1:<port>` (whether or not anything listens there).
    async fn with_smtp_port(port: u16) -> Self {
        Self::spawn(Some(port), Duration::from_secs(5)).await
    }

    /// Like [`with_smtp`](Self::with_smtp), with the service's state in PostgreSQL.
    async fn on_postgres_with_smtp() -> (Self, SmtpServer) {
        let app = Self::spawn_on(Store::Postgres, Some(free_port()), Duration::from_secs(5)).await;
        let server = app.start_smtp().await;
        (app, server)
    }

    /// The service with an SMTP server already running.
    async fn with_smtp() -> (Self, SmtpServer) {
        let app = Self::with_smtp_port(free_port()).await;
        let server = app.start_smtp().await;
        (app, server)
    }

    /// The service without SMTP: in-app only.
    async fn in_app_only() -> Self {
        Self::spawn(None, Duration::from_secs(5)).await
    }

    async fn spawn(smtp_port: Option<u16>, smtp_timeout: Duration) -> Self {
        Self::spawn_on(Store::Sqlite, smtp_port, smtp_timeout).await
    }

    async fn spawn_on(store: Store, smtp_port: Option<u16>, smtp_timeout: Duration) -> Self {
        let world = TestWorld::new();
        let maildir = world.dir.path().join("maildir");
        let kernel = match store {
            Store::Sqlite => world.kernel("notifications").await,
            Store::Postgres => world.postgres_kernel().await,
        };
        let smtp = smtp_port.map(|port| SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            from: "Weir <weir@test.invalid>".into(),
            timeout: smtp_timeout,
        });
        let config = Config { sealer: world.sealer.clone(), smtp, router: RouterOptions::default() };
        let service = Service::build(kernel, config).await.expect("the service builds").with_delivery(DeliveryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            poll_interval: Duration::from_millis(100),
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_millis(300),
            ..DeliveryPolicy::default()
        });
        let (router, _openapi) = service.routes().split_for_parts();
        let (url, _stop) = serve(router, &world.tokens).await;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let service = tokio::spawn(async move { service.run(stop).await.expect("the service runs") });
        Self {
            world,
            url,
            http: reqwest::Client::new(),
            shutdown,
            service: Some(service),
            maildir,
            smtp_port: smtp_port.unwrap_or(0),
        }
    }

    async fn start_smtp(&self) -> SmtpServer {
        SmtpServer::start(self.smtp_port, &self.maildir).await
    }

    async fn register(&self, email: &str, preferences: Preferences) -> Uuid {
        let user_id = Uuid::now_v7();
        self.world
            .publish("users", &UserRegistered { user_id, email_sealed: self.world.sealer.seal(email), preferences })
            .await;
        user_id
    }

    async fn complete(&self, order_id: Uuid, user_id: Uuid, cents: i64) -> weir_core::Event {
        self.world
            .publish("orders", &OrderCompleted { order_id, user_id, total: Money::new(cents, Currency::EUR) })
            .await
    }

    async fn cancel(&self, order_id: Uuid, user_id: Uuid, reason: &str) -> weir_core::Event {
        self.world.publish("orders", &OrderCancelled { order_id, user_id, reason: reason.into() }).await
    }

    fn token(&self, user: Uuid) -> String {
        self.world.tokens.issue(user).token
    }

    async fn get(&self, user: Uuid, query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/notifications{query}", self.url))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("GET /v1/notifications")
    }

    async fn list(&self, user: Uuid, query: &str) -> Value {
        let response = self.get(user, query).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("a JSON page")
    }

    async fn items(&self, user: Uuid) -> Vec<Value> {
        self.list(user, "").await["items"].as_array().expect("items").clone()
    }

    /// Polls the caller's notifications until there are `n`, failing after [`PATIENCE`].
    async fn wait_for_items(&self, user: Uuid, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let items = self.items(user).await;
            if items.len() >= n {
                return items;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} notifications within {PATIENCE:?}, got {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn mails(&self) -> Vec<Mail> {
        read_maildir(&self.maildir)
    }

    /// Polls the Maildir until a mail to `to` arrives, failing after [`PATIENCE`]; returns every mail.
    async fn wait_for_mail_to(&self, to: &str, n: usize) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mails = self.mails();
            if mails.iter().filter(|m| m.to == to).count() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} mails to {to} within {PATIENCE:?}, got {mails:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn mark_read(&self, user: Option<Uuid>, id: &str) -> reqwest::Response {
        let mut request = self.http.post(format!("{}/v1/notifications/{id}/read", self.url));
        if let Some(user) = user {
            request = request.bearer_auth(self.token(user));
        }
        request.send().await.expect("POST read")
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(service) = self.service.take() {
            tokio::time::timeout(PATIENCE, service).await.expect("the service stops in time").expect("no panic");
        }
    }
}

fn both() -> Preferences {
    Preferences { email: true, in_app: true }
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, mentions: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("a problem body");
    assert_eq!(body["status"], status.as_u16());
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains(mentions), "{detail:?} should mention {mentions:?}");
    body
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn a_completed_order_is_notified_in_app_and_by_email() {
    let (app, _smtp) = App::with_smtp().await;
    let ada = app.register("ada@example.com", both()).await;
    let order = Uuid::now_v7();
    // order_created is not an outcome: nothing for it.
    app.world
        .publish(
            "orders",
            &OrderCreated { order_id: order, user_id: ada, items: vec![], total: Money::new(3998, Currency::EUR) },
        )
        .await;
    app.complete(order, ada, 3998).await;

    let items = app.wait_for_items(ada, 1).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let n = &items[0];
    assert_eq!(n["order_id"], order.to_string());
    assert_eq!(n["kind"], "order_completed");
    assert_eq!(n["title"], "Order completed");
    assert_eq!(n["body"], format!("Order {order} completed — total 39.98 EUR."));
    assert!(n["read_at"].is_null());
    let id = n["id"].as_str().unwrap().to_owned();

    let mails = app.wait_for_mail_to("ada@example.com", 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].message_id, format!("<{id}@weir>"), "the Message-ID comes from the notification");
    assert_eq!(mails[0].subject, "Order completed");
    assert!(mails[0].body.contains(&format!("Order {order} completed — total 39.98 EUR.")), "{}", mails[0].body);

    // Read it: gone from the unread list, dated in the full list; reading again is harmless.
    assert_eq!(app.mark_read(Some(ada), &id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.mark_read(Some(ada), &id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.list(ada, "?unread=true").await["items"], serde_json::json!([]));
    let items = app.items(ada).await;
    assert!(items[0]["read_at"].is_string(), "{items:?}");
    // Someone else sees none of it.
    assert_eq!(app.items(Uuid::now_v7()).await.len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_ready_document_is_notified_once_with_its_label_and_a_failed_one_with_its_reason() {
    let (app, _smtp) = App::with_smtp().await;
    let ada = app.register("ada@example.com", both()).await;
    let (ready, failed) = (Uuid::now_v7(), Uuid::now_v7());
    let classified = DocumentClassified {
        document_id: ready,
        user_id: ada,
        filename: "march.pdf".into(),
        label: "invoice".into(),
        confidence: 0.97,
        model_version: "m1".into(),
    };
    // Delivered twice (a lost ack): still one notification.
    app.world.publish("classification", &classified).await;
    app.world.publish("classification", &classified).await;
    let failure = DocumentFailed {
        document_id: failed,
        user_id: ada,
        filename: "bomb.png".into(),
        stage: "processing".into(),
        reason: "the image is 100000×100000 pixels, more than the 40 megapixel limit".into(),
    };
    app.world.publish("processing", &failure).await;

    let items = app.wait_for_items(ada, 2).await;
    let mails = app.wait_for_mail_to("ada@example.com", 2).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let (n_failed, n_ready) = (&items[0], &items[1]);
    assert_eq!(n_ready["document_id"], ready.to_string());
    assert!(n_ready.get("order_id").is_none(), "{n_ready}");
    assert_eq!(n_ready["kind"], "document_classified");
    assert_eq!(n_ready["title"], "Your document is ready");
    assert_eq!(n_ready["body"], "march.pdf is ready: classified as invoice (97% confidence).");
    assert_eq!(n_failed["document_id"], failed.to_string());
    assert_eq!(n_failed["kind"], "document_failed");
    assert!(n_failed["body"].as_str().unwrap().contains("more than the 40 megapixel limit"), "{n_failed}");
    let mut subjects: Vec<_> = mails.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort();
    assert_eq!(subjects, ["Your document could not be read", "Your document is ready"]);

    // `doc.classified` carries one kind only, so no same-key barrier exists here; exactly-once
    // per (subject, kind) is proven with a barrier for orders above. A restated classification
    // (another label, same document) is not a second outcome either.
    app.world.publish("classification", &DocumentClassified { label: "receipt".into(), ..classified }).await;
    app.cancel(Uuid::now_v7(), ada, "a later outcome").await;
    let items = app.wait_for_items(ada, 3).await;
    assert_eq!(items.iter().filter(|i| i["document_id"] == ready.to_string()).count(), 1, "{items:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_order_is_notified_with_its_reason() {
    let (app, _smtp) = App::with_smtp().await;
    let bob = app.register("bob@example.com", both()).await;
    let order = Uuid::now_v7();
    app.cancel(order, bob, "out of stock").await;

    let items = app.wait_for_items(bob, 1).await;
    assert_eq!(items[0]["kind"], "order_cancelled");
    assert_eq!(items[0]["title"], "Order cancelled");
    assert_eq!(items[0]["body"], format!("Order {order} cancelled: out of stock."));
    let mails = app.wait_for_mail_to("bob@example.com", 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].subject, "Order cancelled");
    assert!(mails[0].body.contains("cancelled: out of stock."), "{}", mails[0].body);
    app.stop().await;
}

#[tokio::test]
async fn preferences_choose_the_channels() {
    let (app, _smtp) = App::with_smtp().await;
    let in_app_only = app.register("quiet@example.com", Preferences { email: false, in_app: true }).await;
    let email_only = app.register("mail@example.com", Preferences { email: true, in_app: false }).await;
    let (order_a, order_b) = (Uuid::now_v7(), Uuid::now_v7());
    app.complete(order_a, in_app_only, 100).await;
    app.complete(order_b, email_only, 200).await;

    // in_app only: listed; and (barrier) a later email to someone else arrives while none
    // went to this user.
    let items = app.wait_for_items(in_app_only, 1).await;
    assert_eq!(items[0]["order_id"], order_a.to_string());
    let witness = app.register("witness@example.com", both()).await;
    app.complete(Uuid::now_v7(), witness, 300).await;
    app.wait_for_mail_to("witness@example.com", 1).await;
    // email only: mailed, never listed.
    let mails = app.wait_for_mail_to("mail@example.com", 1).await;
    assert!(mails.iter().all(|m| m.to != "quiet@example.com"), "email=false got mail: {mails:?}");
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert_eq!(app.items(email_only).await.len(), 0, "in_app=false must not be listed");

    // A change of preferences applies to later outcomes: the email-only user now wants
    // in-app only. The change travels on `users`, outcomes on `orders`, so keep sending
    // outcomes until one is listed, then check that it was not mailed.
    app.world
        .publish(
            "users",
            &NotificationPreferencesChanged {
                user_id: email_only,
                preferences: Preferences { email: false, in_app: true },
            },
        )
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let listed = loop {
        app.complete(Uuid::now_v7(), email_only, 400).await;
        let mut found = None;
        for _ in 0..10 {
            if let Some(item) = app.items(email_only).await.first().cloned() {
                found = Some(item);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(item) = found {
            break item;
        }
        assert!(tokio::time::Instant::now() < deadline, "the preference change never took effect");
    };
    // Barrier: a later email to the witness; by then an email for `listed` would have gone out.
    app.complete(Uuid::now_v7(), witness, 500).await;
    let mails = app.wait_for_mail_to("witness@example.com", 2).await;
    let listed_id = format!("<{}@weir>", listed["id"].as_str().unwrap());
    assert!(mails.iter().all(|m| m.message_id != listed_id), "an in-app-only notification was mailed: {mails:?}");
    app.stop().await;
}

#[tokio::test]
async fn each_outcome_is_notified_once_whatever_the_deliveries() {
    let (app, _smtp) = App::with_smtp().await;
    let cy = app.register("cy@example.com", both()).await;
    let order = Uuid::now_v7();
    // The same event twice, and a second, distinct event with the same meaning.
    let event = app.complete(order, cy, 1234).await;
    app.world.publish_event(topics::ORDERS, event.clone()).await;
    app.world.publish_event(topics::ORDERS, event).await;
    app.complete(order, cy, 1234).await;
    // Barrier: a later event with the same key (the order), handled after all of those.
    app.cancel(order, cy, "changed my mind").await;

    let items = app.wait_for_items(cy, 2).await;
    let mails = app.wait_for_mail_to("cy@example.com", 2).await;
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["order_cancelled", "order_completed"], "newest first, one per outcome");
    let mut subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort();
    assert_eq!(subjects, ["Order cancelled", "Order completed"], "one email per outcome: {mails:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_outcome_before_the_user_is_delivered_when_the_user_arrives() {
    let (app, _smtp) = App::with_smtp().await;
    let late = Uuid::now_v7();
    let order = Uuid::now_v7();
    app.complete(order, late, 999).await;
    // Barrier: another outcome of the same order (same key) for a known user; once it is
    // listed, the first outcome has been handled while its user was still unknown.
    let other = app.register("other@example.com", both()).await;
    app.cancel(order, other, "duplicate order").await;
    app.wait_for_items(other, 1).await;
    assert_eq!(app.items(late).await.len(), 0);

    app.world
        .publish(
            "users",
            &UserRegistered {
                user_id: late,
                email_sealed: app.world.sealer.seal("late@example.com"),
                preferences: both(),
            },
        )
        .await;
    let items = app.wait_for_items(late, 1).await;
    assert_eq!(items[0]["order_id"], order.to_string());
    assert_eq!(items[0]["kind"], "order_completed");
    let mails = app.wait_for_mail_to("late@example.com", 1).await;
    assert_eq!(mails.iter().filter(|m| m.to == "late@example.com").count(), 1);
    assert_eq!(
        mails.iter().find(|m| m.to == "late@example.com").unwrap().message_id,
        format!("<{}@weir>", items[0]["id"].as_str().unwrap())
    );
    app.stop().await;
}

#[tokio::test]
async fn email_is_retried_until_the_smtp_server_answers() {
    // At first the SMTP port takes connections and never answers (a hung server), so each
    // attempt times out; we count the attempts, then replace it with a real server.
    let port = free_port();
    let hung = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the hung server");
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let hung_server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let app = App::spawn(Some(port), Duration::from_millis(300)).await;
    let dee = app.register("dee@example.com", both()).await;
    app.complete(Uuid::now_v7(), dee, 500).await;
    app.wait_for_items(dee, 1).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while attempts.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the sender did not retry against the hung server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.mails().is_empty());
    hung_server.abort();
    let _ = hung_server.await;

    let _smtp = app.start_smtp().await;
    let mails = app.wait_for_mail_to("dee@example.com", 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    app.stop().await;
}

#[tokio::test]
async fn without_smtp_notifications_are_in_app_and_pages_follow_cursors() {
    let app = App::in_app_only().await;
    let eve = app.register("eve@example.com", both()).await;
    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        app.complete(*order, eve, 100).await;
    }
    app.wait_for_items(eve, 3).await;

    let first = app.list(eve, "?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let second = app.list(eve, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let ids: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first, "newest first");
    let all: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(all.len(), 3, "no item twice across pages");
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_are_answered_with_problems() {
    let app = App::in_app_only().await;
    let owner = app.register("fay@example.com", both()).await;
    app.complete(Uuid::now_v7(), owner, 100).await;
    let id = app.wait_for_items(owner, 1).await[0]["id"].as_str().unwrap().to_owned();
    let stranger = Uuid::now_v7();

    // No token.
    let response = app.http.get(format!("{}/v1/notifications", app.url)).send().await.unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED, "Authorization").await;
    assert_problem(app.mark_read(None, &id).await, StatusCode::UNAUTHORIZED, "Authorization").await;
    // A bad token.
    let response = app.http.get(format!("{}/v1/notifications", app.url)).bearer_auth("nonsense").send().await.unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED, "token").await;

    // Another user's notification, an unknown one, and a malformed id.
    assert_problem(app.mark_read(Some(stranger), &id).await, StatusCode::NOT_FOUND, &id).await;
    let unknown = Uuid::now_v7().to_string();
    assert_problem(app.mark_read(Some(owner), &unknown).await, StatusCode::NOT_FOUND, &unknown).await;
    let body = assert_problem(app.mark_read(Some(owner), "42").await, StatusCode::BAD_REQUEST, "UUID").await;
    assert_eq!(body["errors"][0]["field"], "id");
    // The stranger's attempt changed nothing.
    assert!(app.items(owner).await[0]["read_at"].is_null());

    // Bad query parameters, each named.
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?cursor=page-2", "cursor"),
        ("?unread=yes", "unread"),
    ] {
        let body = assert_problem(app.get(owner, query).await, StatusCode::BAD_REQUEST, field).await;
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    assert_problem(app.get(owner, "?colour=blue").await, StatusCode::BAD_REQUEST, "limit, cursor and unread").await;
    assert_problem(app.get(owner, "?limit=1&limit=2").await, StatusCode::BAD_REQUEST, "limit, cursor and unread").await;
    app.stop().await;
}

#[tokio::test]
async fn the_whole_flow_runs_on_postgresql() {
    // The same SQL on the other engine: parking, dedup, channels, email, paging, reading.
    let (app, _smtp) = App::on_postgres_with_smtp().await;
    let gus = Uuid::now_v7();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let event = app.complete(first, gus, 2500).await;
    app.world.publish_event(topics::ORDERS, event).await;
    // Barrier (same order key): once hal's notification is listed, gus's outcome is parked.
    let hal = app.register("hal@example.com", both()).await;
    app.cancel(first, hal, "duplicate order").await;
    app.wait_for_items(hal, 1).await;
    app.world
        .publish(
            "users",
            &UserRegistered {
                user_id: gus,
                email_sealed: app.world.sealer.seal("gus@example.com"),
                preferences: both(),
            },
        )
        .await;
    app.cancel(second, gus, "payment declined").await;

    let items = app.wait_for_items(gus, 2).await;
    let mails = app.wait_for_mail_to("gus@example.com", 2).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let mails: Vec<Mail> = mails.into_iter().filter(|m| m.to == "gus@example.com").collect();
    assert_eq!(mails.len(), 2, "{mails:?}");
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(mails.iter().all(|m| ids.iter().any(|id| m.message_id == format!("<{id}@weir>"))), "{mails:?}");

    let page = app.list(gus, "?limit=1").await;
    let cursor = page["next_cursor"].as_str().expect("a second page").to_owned();
    assert_eq!(page["items"][0]["id"], ids[0]);
    let rest = app.list(gus, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(rest["items"][0]["id"], ids[1]);
    assert!(rest["next_cursor"].is_null());

    assert_eq!(app.mark_read(Some(gus), ids[0]).await.status(), StatusCode::NO_CONTENT);
    let unread = app.list(gus, "?unread=true").await;
    assert_eq!(unread["items"].as_array().unwrap().len(), 1);
    assert_eq!(unread["items"][0]["id"], ids[1]);
    assert_problem(app.mark_read(Some(Uuid::now_v7()), ids[1]).await, StatusCode::NOT_FOUND, ids[1]).await;
    app.stop().await;
}
