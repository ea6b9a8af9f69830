//! Black-box tests of the payments service: it runs on a `TestWorld` (real SQLite database,
//! real SQLite-log bus) against the simulated gateway on a real loopback port, reached through
//! `HttpProvider`. The tests speak to the service only through the bus (publishing orders and
//! commands, watching `payments`) and read what the gateway did from its ledger.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    Contract, Currency, Money, OrderCreated, PaymentFailed, PaymentRefunded, PaymentSuccessful, PricedLine,
    RefundPayment, topics,
};
use weir_core::{
    Db, Event, RouterOptions,
    resilience::{BreakerConfig, CircuitState},
    router::RetryPolicy,
};
use weir_payments::{
    CANCELLED_BEFORE_CHARGE_REASON, ChargeRequest, Config, HttpProvider, HttpProviderConfig, LATE_CHARGE_REASON,
    PaymentProvider, ProviderError, Service, Simulator, SimulatorConfig, start_simulator,
};
use weir_store_sqlite::SqliteDatabase;
use weir_testkit::app::{PATIENCE, TestWorld, Watch};

/// How long a test watches to be sure that something does *not* happen.
const QUIET: Duration = Duration::from_millis(1500);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a socket address")
}

fn open_db(path: &std::path::Path) -> Db {
    Arc::new(SqliteDatabase::open(path).expect("the gateway database opens"))
}

/// Quick redeliveries that never give up, so a test can watch an order wait for the gateway.
fn router_options() -> RouterOptions {
    RouterOptions {
        concurrency: 16,
        attempt_timeout: Duration::from_secs(15),
        retry: RetryPolicy {
            immediate_attempts: 1,
            immediate_delay: Duration::from_millis(10),
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_deliveries: 100_000,
        },
        drain_timeout: Duration::from_secs(2),
        ..RouterOptions::default()
    }
}

fn provider_config(url: String) -> HttpProviderConfig {
    HttpProviderConfig {
        timeout: Duration::from_secs(5),
        retries: 1,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        breaker: BreakerConfig { failure_threshold: 3, cool_down: Duration::from_millis(300) },
        ..HttpProviderConfig::new(url)
    }
}

/// Where the service keeps its state (the simulated gateway keeps its own in SQLite).
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    /// The distributed setup's store.
    Postgres,
}

struct App {
    world: TestWorld,
    gateway: Simulator,
    provider: Arc<HttpProvider>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<JoinHandle<weir_payments::Result<()>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl App {
    async fn spawn(gateway: SimulatorConfig) -> Self {
        Self::spawn_on(gateway, Store::Sqlite).await
    }

    async fn spawn_on(gateway: SimulatorConfig, store: Store) -> Self {
        let world = TestWorld::new();
        let kernel = match store {
            Store::Sqlite => world.kernel("payments").await,
            Store::Postgres => world.postgres_kernel().await,
        };
        let gateway = start_simulator(open_db(&world.dir.path().join("gateway.db")), gateway, loopback())
            .await
            .expect("the gateway simulator starts");
        let provider = Arc::new(HttpProvider::new(provider_config(gateway.url())).expect("the HTTP provider builds"));
        let config = Config { provider: provider.clone(), router: router_options() };
        let service = Service::build(kernel, config).await.expect("the service builds");
        let shutdown = CancellationToken::new();
        let running = Some(tokio::spawn(service.run(shutdown.clone())));
        Self { world, gateway, provider, http: reqwest::Client::new(), shutdown, running }
    }

    async fn payments(&self) -> Watch {
        self.world.watch(topics::PAYMENTS).await
    }

    async fn ledger(&self) -> Value {
        ledger(&self.http, &self.gateway).await
    }

    /// Polls the ledger until `accept` holds.
    async fn ledger_until(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ledger = self.ledger().await;
            if accept(&ledger) {
                return ledger;
            }
            assert!(tokio::time::Instant::now() < deadline, "the ledger never showed {what}: {ledger}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.expect("the service task").expect("the service stops cleanly");
        }
    }
}

async fn ledger(http: &reqwest::Client, gateway: &Simulator) -> Value {
    let response = http.get(format!("{}/v1/ledger?by_key=true", gateway.url())).send().await.expect("ledger");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a JSON ledger")
}

fn an_order() -> OrderCreated {
    let eur = |cents| Money::new(cents, Currency::EUR);
    OrderCreated {
        order_id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        items: vec![
            PricedLine { product_id: Uuid::now_v7(), quantity: 2, unit_price: eur(500) },
            PricedLine { product_id: Uuid::now_v7(), quantity: 1, unit_price: eur(999) },
        ],
        total: eur(1999),
    }
}

fn refund_of(order: &OrderCreated, reason: &str) -> RefundPayment {
    RefundPayment { order_id: order.order_id, reason: reason.into() }
}

/// The events of type `C` about `order_id` among `seen`.
fn about<C: Contract>(seen: &[Event], order_id: Uuid) -> Vec<C> {
    seen.iter().filter(|e| e.subject == order_id.to_string()).filter_map(|e| C::decode(e)?.ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_charged_once_and_its_payment_carries_the_lines() {
    let app = App::spawn(SimulatorConfig::instant()).await;
    let mut payments = app.payments().await;
    let order = an_order();
    let created = app.world.publish("orders", &order).await;

    let (paid, event) = payments.expect::<PaymentSuccessful>(|p| p.order_id == order.order_id).await;
    assert_eq!(paid.amount, order.total);
    let lines: Vec<(Uuid, u32)> = paid.items.iter().map(|l| (l.product_id, l.quantity)).collect();
    assert_eq!(lines, order.items.iter().map(|l| (l.product_id, l.quantity)).collect::<Vec<_>>());
    assert_eq!(event.causation_id, Some(created.id), "the payment answers the order");
    assert_eq!(event.correlation_id, created.correlation_id);

    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 1);
    assert_eq!(ledger["charged_total"], 1999);
    let charge = &ledger["by_key"][format!("charge-{}", order.order_id)];
    assert_eq!(charge["status"], 201);
    assert_eq!(charge["response"]["charge_id"], paid.payment_id.as_str());
    assert_eq!(app.provider.breaker().state(), CircuitState::Closed);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_charge_fails_the_payment_and_charges_nothing() {
    let app = App::spawn(SimulatorConfig { decline_rate: 1.0, ..SimulatorConfig::instant() }).await;
    let mut payments = app.payments().await;
    let order = an_order();
    app.world.publish("orders", &order).await;

    let (failed, _) = payments.expect::<PaymentFailed>(|p| p.order_id == order.order_id).await;
    assert!(failed.reason.contains("declined"), "the reason says why: {}", failed.reason);
    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 0);
    assert_eq!(ledger["declines"], 1);
    assert_eq!(app.provider.breaker().state(), CircuitState::Closed, "a decline is not a failure");

    // A refund command for the failed order re-answers with nothing to give back.
    app.world.publish("saga", &refund_of(&order, "payment failed")).await;
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount, Money::zero(Currency::EUR));
    assert_eq!(app.ledger().await["refunds"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_repeated_order_events_charge_once() {
    let app = App::spawn(SimulatorConfig::instant()).await;
    let mut payments = app.payments().await;
    let order = an_order();
    // The same event delivered twice, then a second, distinct event about the same order.
    let event = order.to_event("orders");
    app.world.publish_event(topics::ORDERS, event.clone()).await;
    app.world.publish_event(topics::ORDERS, event).await;
    payments.expect::<PaymentSuccessful>(|p| p.order_id == order.order_id).await;
    app.world.publish("orders", &order).await;

    let seen = payments.drain(QUIET).await;
    assert_eq!(about::<PaymentSuccessful>(seen, order.order_id).len(), 1, "one payment event per order");
    assert!(about::<PaymentFailed>(seen, order.order_id).is_empty());
    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 1);
    assert_eq!(
        ledger["by_key"][format!("charge-{}", order.order_id)]["requests"],
        1,
        "an order already charged is not sent to the gateway again"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_gateway_opens_the_breaker_and_a_void_prevents_any_later_charge() {
    let app = App::spawn(SimulatorConfig { failure_rate: 1.0, ..SimulatorConfig::instant() }).await;
    let mut payments = app.payments().await;
    let order = an_order();
    app.world.publish("orders", &order).await;

    // The router keeps retrying; after three failed calls the breaker opens.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.provider.breaker().state() != CircuitState::Open {
        assert!(tokio::time::Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        payments.drain(Duration::from_millis(500)).await.is_empty(),
        "no payment outcome while the gateway is down"
    );
    assert_eq!(app.ledger().await["charges"], 0);

    // The saga gives up on the payment: the order is voided and answered with nothing refunded.
    app.world.publish("saga", &refund_of(&order, "payment timed out")).await;
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount.amount, 0);

    // The gateway comes back: the waiting order is settled as cancelled, never charged.
    app.gateway.set_config(SimulatorConfig::instant());
    let (failed, _) = payments.expect::<PaymentFailed>(|p| p.order_id == order.order_id).await;
    assert_eq!(failed.reason, CANCELLED_BEFORE_CHARGE_REASON);

    // A new order goes through, which closes the breaker.
    let next = an_order();
    app.world.publish("orders", &next).await;
    payments.expect::<PaymentSuccessful>(|p| p.order_id == next.order_id).await;
    assert_eq!(app.provider.breaker().state(), CircuitState::Closed);

    let seen = payments.drain(QUIET).await;
    assert!(about::<PaymentSuccessful>(seen, order.order_id).is_empty(), "the voided order was never paid");
    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 1, "only the new order was charged: {ledger}");
    assert!(ledger["by_key"].get(format!("charge-{}", order.order_id)).is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_a_charge_gives_the_money_back_once() {
    let app = App::spawn(SimulatorConfig::instant()).await;
    let mut payments = app.payments().await;
    let order = an_order();
    app.world.publish("orders", &order).await;
    payments.expect::<PaymentSuccessful>(|p| p.order_id == order.order_id).await;

    // The same command delivered twice, then a second, distinct command for the same order.
    let command = refund_of(&order, "stock unavailable").to_event("saga");
    app.world.publish_event(topics::PAYMENT_COMMANDS, command.clone()).await;
    app.world.publish_event(topics::PAYMENT_COMMANDS, command.clone()).await;
    let (refunded, event) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount, order.total);
    assert_eq!(event.causation_id, Some(command.id));
    let again = app.world.publish("saga", &refund_of(&order, "stock unavailable")).await;
    let (reanswered, event) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(reanswered.amount, order.total, "a repeated command re-answers with the same amount");
    assert_eq!(event.causation_id, Some(again.id));

    let seen = payments.drain(QUIET).await;
    assert_eq!(about::<PaymentRefunded>(seen, order.order_id).len(), 2, "one answer per distinct command");
    let ledger = app.ledger().await;
    assert_eq!(ledger["refunds"], 1);
    assert_eq!(ledger["refunded_total"], 1999);
    assert_eq!(ledger["by_key"][format!("refund-{}", order.order_id)]["requests"], 1);
    app.stop().await;
}

/// The same service on PostgreSQL: its payments table, inbox and outbox on the other dialect;
/// a duplicate order charges once, a duplicate refund command refunds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_and_refunds_hold_on_postgresql() {
    let app = App::spawn_on(SimulatorConfig::instant(), Store::Postgres).await;
    let mut payments = app.payments().await;
    let order = an_order();
    let event = order.to_event("orders");
    app.world.publish_event(topics::ORDERS, event.clone()).await;
    app.world.publish_event(topics::ORDERS, event).await;
    let (paid, _) = payments.expect::<PaymentSuccessful>(|p| p.order_id == order.order_id).await;
    assert_eq!(paid.amount, order.total);
    let command = refund_of(&order, "stock unavailable").to_event("saga");
    app.world.publish_event(topics::PAYMENT_COMMANDS, command.clone()).await;
    app.world.publish_event(topics::PAYMENT_COMMANDS, command).await;
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount, order.total);

    let seen = payments.drain(QUIET).await;
    assert_eq!(about::<PaymentSuccessful>(seen, order.order_id).len(), 1);
    assert_eq!(about::<PaymentRefunded>(seen, order.order_id).len(), 1);
    let ledger = app.ledger().await;
    assert_eq!((ledger["charges"].as_i64(), ledger["refunds"].as_i64()), (Some(1), Some(1)));
    assert_eq!(ledger["by_key"][format!("charge-{}", order.order_id)]["requests"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_before_the_order_voids_it() {
    let app = App::spawn(SimulatorConfig::instant()).await;
    let mut payments = app.payments().await;
    let order = an_order();
    app.world.publish("saga", &refund_of(&order, "cancelled early")).await;
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount.amount, 0);

    app.world.publish("orders", &order).await;
    let (failed, _) = payments.expect::<PaymentFailed>(|p| p.order_id == order.order_id).await;
    assert_eq!(failed.reason, CANCELLED_BEFORE_CHARGE_REASON);
    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 0);
    assert!(ledger["by_key"].as_object().expect("by_key").is_empty(), "the gateway was never called: {ledger}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_lands_after_a_void_is_refunded() {
    // The gateway records a charge, then takes a second to answer: the void arrives meanwhile.
    let slow = Duration::from_secs(1);
    let app = App::spawn(SimulatorConfig { latency: slow..=slow, ..SimulatorConfig::instant() }).await;
    let mut payments = app.payments().await;
    let mut commands = app.world.watch(topics::PAYMENT_COMMANDS).await;
    let order = an_order();
    app.world.publish("orders", &order).await;
    let key = format!("charge-{}", order.order_id);
    app.ledger_until("the charge", |l| l["by_key"].get(&key).is_some()).await;

    app.world.publish("saga", &refund_of(&order, "payment timed out")).await;
    let (voided, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(voided.amount.amount, 0, "nothing was on record yet: a void");

    let (late, _) =
        commands.expect::<RefundPayment>(|c| c.order_id == order.order_id && c.reason == LATE_CHARGE_REASON).await;
    assert_eq!(late.reason, LATE_CHARGE_REASON);
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount, order.total, "the late charge goes back in full");

    let seen = payments.drain(QUIET).await;
    assert!(about::<PaymentSuccessful>(seen, order.order_id).is_empty(), "a cancelled order is never reported paid");
    let ledger = app.ledger().await;
    assert_eq!((ledger["charges"].as_i64(), ledger["refunds"].as_i64()), (Some(1), Some(1)), "{ledger}");
    assert_eq!(ledger["refunded_total"], ledger["charged_total"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_record_was_lost_is_found_after_a_void_and_refunded() {
    // A member charged the order at the gateway and died before its commit: the gateway holds
    // the charge, the service has no row. The saga gives up and voids; then the order comes back.
    let app = App::spawn(SimulatorConfig::instant()).await;
    let mut payments = app.payments().await;
    let mut commands = app.world.watch(topics::PAYMENT_COMMANDS).await;
    let order = an_order();
    let lost = app
        .provider
        .charge(&ChargeRequest {
            idempotency_key: format!("charge-{}", order.order_id),
            amount: order.total,
            customer: order.user_id,
            traceparent: None,
        })
        .await
        .expect("the gateway charges");

    app.world.publish("saga", &refund_of(&order, "payment timed out")).await;
    let (voided, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(voided.amount.amount, 0, "nothing was on record: a void");

    app.world.publish("orders", &order).await;
    let (late, _) =
        commands.expect::<RefundPayment>(|c| c.order_id == order.order_id && c.reason == LATE_CHARGE_REASON).await;
    assert_eq!(late.order_id, order.order_id);
    let (refunded, _) = payments.expect::<PaymentRefunded>(|p| p.order_id == order.order_id).await;
    assert_eq!(refunded.amount, order.total, "the charge nobody recorded goes back in full");

    let seen = payments.drain(QUIET).await;
    assert!(about::<PaymentSuccessful>(seen, order.order_id).is_empty(), "a cancelled order is never reported paid");
    assert!(
        about::<PaymentFailed>(seen, order.order_id).is_empty(),
        "the charge was found, so it is not 'never charged'"
    );
    let ledger = app.ledger().await;
    assert_eq!((ledger["charges"].as_i64(), ledger["refunds"].as_i64()), (Some(1), Some(1)), "{ledger}");
    assert_eq!(ledger["refunded_total"], ledger["charged_total"]);
    let refund = &ledger["by_key"][format!("refund-{}", order.order_id)]["response"];
    assert_eq!(refund["charge_id"], lost.charge_id.as_str(), "the refund names the lost charge");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_finds_a_charge_by_its_key_without_charging() {
    let app = App::spawn(SimulatorConfig::instant()).await;
    let order = an_order();
    let key = format!("charge-{}", order.order_id);
    assert_eq!(app.provider.find_charge(&key).await.expect("the gateway answers"), None);
    let charge = app
        .provider
        .charge(&ChargeRequest {
            idempotency_key: key.clone(),
            amount: order.total,
            customer: order.user_id,
            traceparent: None,
        })
        .await
        .expect("the gateway charges");
    assert_eq!(app.provider.find_charge(&key).await.expect("the gateway answers"), Some(charge));
    let ledger = app.ledger().await;
    assert_eq!(ledger["charges"], 1, "looking charged nothing: {ledger}");
    assert_eq!(ledger["by_key"][&key]["requests"], 1, "looking is not a request under the key: {ledger}");

    let missing = app.http.get(format!("{}/v1/charges", app.gateway.url())).send().await.expect("sent");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let problem: Value = missing.json().await.expect("a problem body");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("idempotency_key")), "{problem}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_unavailable_and_opens_the_breaker() {
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind(loopback()).await.unwrap().local_addr().unwrap();
    let provider = HttpProvider::new(HttpProviderConfig {
        breaker: BreakerConfig { failure_threshold: 2, cool_down: Duration::from_secs(3600) },
        ..provider_config(format!("http://{closed}"))
    })
    .unwrap();
    let request = |order: &OrderCreated| ChargeRequest {
        idempotency_key: format!("charge-{}", order.order_id),
        amount: order.total,
        customer: order.user_id,
        traceparent: None,
    };
    let order = an_order();
    for _ in 0..2 {
        assert!(matches!(provider.charge(&request(&order)).await, Err(ProviderError::Unavailable(_))));
    }
    assert_eq!(provider.breaker().state(), CircuitState::Open);
    match provider.charge(&request(&order)).await {
        Err(ProviderError::Unavailable(why)) => assert!(why.contains("circuit"), "{why}"),
        other => panic!("an open breaker refuses: {other:?}"),
    }

    // Declines never open it.
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_simulator(
        open_db(&dir.path().join("gateway.db")),
        SimulatorConfig { decline_rate: 1.0, ..SimulatorConfig::instant() },
        loopback(),
    )
    .await
    .unwrap();
    let provider = HttpProvider::new(HttpProviderConfig {
        breaker: BreakerConfig { failure_threshold: 1, cool_down: Duration::from_secs(3600) },
        ..provider_config(gateway.url())
    })
    .unwrap();
    for _ in 0..3 {
        assert!(matches!(provider.charge(&request(&an_order())).await, Err(ProviderError::Declined(_))));
    }
    assert_eq!(provider.breaker().state(), CircuitState::Closed);
    gateway.stop().await;
}

async fn post(http: &reqwest::Client, url: String, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = http.post(url).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("the request is sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_replays_an_earlier_answer_instead_of_charging_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let http = reqwest::Client::new();
    let body = json!({ "amount": 1999, "currency": "EUR", "customer": Uuid::now_v7() });

    let gateway = start_simulator(open_db(&path), SimulatorConfig::instant(), loopback()).await.unwrap();
    let first = post(&http, format!("{}/v1/charges", gateway.url()), Some("order-1"), body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("Idempotent-Replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "succeeded");
    gateway.stop().await;

    // A new process on the same database, now declining everything new.
    let gateway = start_simulator(
        open_db(&path),
        SimulatorConfig { decline_rate: 1.0, ..SimulatorConfig::instant() },
        loopback(),
    )
    .await
    .unwrap();
    let again = post(&http, format!("{}/v1/charges", gateway.url()), Some("order-1"), body.clone()).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("Idempotent-Replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["charge_id"], first["charge_id"], "the same charge, not a new one");

    for _ in 0..2 {
        let declined = post(&http, format!("{}/v1/charges", gateway.url()), Some("order-2"), body.clone()).await;
        assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
        let declined: Value = declined.json().await.unwrap();
        assert_eq!(declined["status"], "declined");
        assert!(declined["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }

    let ledger = ledger(&http, &gateway).await;
    assert_eq!(ledger["charges"], 1, "{ledger}");
    assert_eq!(ledger["declines"], 1);
    assert_eq!(ledger["by_key"]["order-1"]["requests"], 2);
    assert_eq!(ledger["by_key"]["order-2"]["requests"], 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_bad_input_with_problems_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gateway =
        start_simulator(open_db(&dir.path().join("gateway.db")), SimulatorConfig::instant(), loopback()).await.unwrap();
    let http = reqwest::Client::new();
    let charges = format!("{}/v1/charges", gateway.url());
    let refunds = format!("{}/v1/refunds", gateway.url());
    let customer = Uuid::now_v7();
    let good = json!({ "amount": 1999, "currency": "EUR", "customer": customer });

    let created = post(&http, charges.clone(), Some("k-1"), good.clone()).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let charge_id = created.json::<Value>().await.unwrap()["charge_id"].as_str().unwrap().to_owned();

    // (what, URL, key, body, status, a hint the problem's detail must give)
    type Case<'a> = (&'a str, String, Option<&'a str>, Value, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        ("no key", charges.clone(), None, good.clone(), StatusCode::BAD_REQUEST, "Idempotency-Key"),
        ("empty key", charges.clone(), Some(""), good.clone(), StatusCode::BAD_REQUEST, "Idempotency-Key"),
        (
            "amount as text",
            charges.clone(),
            Some("k-2"),
            json!({ "amount": "19.99", "currency": "EUR", "customer": customer }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount",
        ),
        (
            "zero amount",
            charges.clone(),
            Some("k-3"),
            json!({ "amount": 0, "currency": "EUR", "customer": customer }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "positive",
        ),
        (
            "lower-case currency",
            charges.clone(),
            Some("k-4"),
            json!({ "amount": 5, "currency": "eur", "customer": customer }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ISO 4217",
        ),
        (
            "reused key, other amount",
            charges.clone(),
            Some("k-1"),
            json!({ "amount": 2000, "currency": "EUR", "customer": customer }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already used",
        ),
        (
            "reused key on refunds",
            refunds.clone(),
            Some("k-1"),
            json!({ "charge_id": charge_id, "amount": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already used",
        ),
        (
            "refund of an unknown charge",
            refunds.clone(),
            Some("r-1"),
            json!({ "charge_id": "ch_nope", "amount": 1 }),
            StatusCode::NOT_FOUND,
            "no charge",
        ),
        (
            "refund of more than was charged",
            refunds.clone(),
            Some("r-2"),
            json!({ "charge_id": charge_id, "amount": 2000 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "exceeds",
        ),
        (
            "refund without a key",
            refunds.clone(),
            None,
            json!({ "charge_id": charge_id, "amount": 1 }),
            StatusCode::BAD_REQUEST,
            "Idempotency-Key",
        ),
    ];
    for (name, url, key, body, status, hint) in cases {
        let response = post(&http, url, key, body).await;
        assert_eq!(response.status(), status, "{name}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "application/problem+json", "{name}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(hint), "{name}: {problem}");
    }

    // Broken JSON.
    let broken = http
        .post(&charges)
        .header("Idempotency-Key", "k-5")
        .header("content-type", "application/json")
        .body("{\"amount\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);

    let ledger = ledger(&http, &gateway).await;
    assert_eq!((ledger["charges"].as_i64(), ledger["refunds"].as_i64()), (Some(1), Some(0)), "{ledger}");
    assert_eq!(ledger["by_key"].as_object().unwrap().len(), 1, "only the valid request is on record: {ledger}");
    gateway.stop().await;
}
