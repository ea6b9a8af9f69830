//! Black-box tests of the inventory service: it runs on a `TestWorld` (real SQLite bus and
//! database), and the tests speak to it only through HTTP and the bus. After every scenario
//! each product's stock must still add up: `initial = available + reserved + sold`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    Contract, Currency, LineItem, Money, OrderCompleted, OrderCreated, PaymentSuccessful, ProductAdded, ReleaseStock,
    StockReleased, StockReserved, StockUnavailable, topics,
};
use weir_core::{Event, Kernel};
use weir_inventory::{Config, DEMO_CATALOG, Error, PLENTY, SCARCE_SKU, Service, product_id};
use weir_testkit::app::{PATIENCE, TestWorld, Watch, serve};

/// How long a test listens to be sure that nothing (more) is emitted.
const QUIET: Duration = Duration::from_millis(1500);

struct App {
    world: TestWorld,
    kernel: Kernel,
    /// A clone of the running service, for `stock_of` (the conservation check).
    service: Service,
    url: String,
    http: reqwest::Client,
    /// Everything inventory emits.
    inventory: Watch,
    shutdown: CancellationToken,
    running: JoinHandle<weir_inventory::Result<()>>,
}

async fn spawn_app() -> App {
    let world = TestWorld::new();
    let kernel = world.kernel("inventory").await;
    spawn_app_on(world, kernel, Config::default()).await
}

/// The service with its state in a fresh PostgreSQL database (the distributed setup's store),
/// on the test world's bus.
async fn spawn_app_on_postgres() -> App {
    let world = TestWorld::new();
    let kernel = world.postgres_kernel().await;
    spawn_app_on(world, kernel, Config::default()).await
}

async fn spawn_app_on(world: TestWorld, kernel: Kernel, config: Config) -> App {
    let service = Service::build(kernel.clone(), config).await.expect("the service builds");
    let (url, _stop) = serve(service.routes().into(), &world.tokens).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(service.clone().run(shutdown.clone()));
    let inventory = world.watch(topics::INVENTORY).await;
    App { world, kernel, service, url, http: reqwest::Client::new(), inventory, shutdown, running }
}

fn mug() -> Uuid {
    product_id("MUG-FERRIS")
}

fn book() -> Uuid {
    product_id("BOOK-RUST-2E")
}

fn lamp() -> Uuid {
    product_id(SCARCE_SKU)
}

fn line(product_id: Uuid, quantity: u32) -> LineItem {
    LineItem { product_id, quantity }
}

fn payment(order_id: Uuid, items: Vec<LineItem>) -> PaymentSuccessful {
    PaymentSuccessful {
        order_id,
        payment_id: format!("pay-{}", Uuid::now_v7().simple()),
        amount: Money::new(1000, Currency::EUR),
        items,
    }
}

fn completed(order_id: Uuid) -> OrderCompleted {
    OrderCompleted { order_id, user_id: Uuid::now_v7(), total: Money::new(1000, Currency::EUR) }
}

impl App {
    async fn get(&self, path: &str) -> (StatusCode, Option<String>, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.expect("the request is answered");
        let status = response.status();
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.expect("a JSON body");
        (status, content_type, body)
    }

    /// `(available, reserved, sold)` of a product, read over HTTP.
    async fn stock(&self, product: Uuid) -> (i64, i64, i64) {
        let (status, _, body) = self.get(&format!("/v1/products/{product}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stock = &body["stock"];
        let levels = (
            stock["available"].as_i64().unwrap(),
            stock["reserved"].as_i64().unwrap(),
            stock["sold"].as_i64().unwrap(),
        );
        assert_eq!(body["available"].as_i64(), Some(levels.0), "top-level available mirrors the stock");
        levels
    }

    /// Polls the product's stock until it equals `expected`, failing after the patience.
    async fn await_stock(&self, product: Uuid, expected: (i64, i64, i64)) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.stock(product).await;
            if now == expected {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "stock of {product} stayed {now:?}, expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until inventory has committed its handling of `event` (its inbox record), for
    /// scenarios whose correct outcome is that nothing is emitted.
    async fn await_handled(&self, event: &Event) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let rows = self
                .kernel
                .db
                .query(
                    "SELECT COUNT(*) FROM weir_inbox WHERE consumer = $1 AND event_id = $2",
                    &["inventory".into(), event.id.to_string().into()],
                )
                .await
                .unwrap();
            if rows[0].i64(0).unwrap() == 1 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "inventory never handled {event:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every product's units add up, and the totals are the catalog's.
    async fn assert_conserved(&self) {
        for p in DEMO_CATALOG {
            let stock = self.service.stock_of(product_id(p.sku)).await.unwrap().expect("a catalog product");
            assert!(stock.is_conserved(), "{}: stock not conserved: {stock:?}", p.sku);
            assert_eq!(stock.initial, p.stock, "{}: initial stock changed", p.sku);
        }
    }

    /// Publishes a payment and returns the event.
    async fn pay(&self, order_id: Uuid, items: Vec<LineItem>) -> Event {
        self.world.publish("payments", &payment(order_id, items)).await
    }

    async fn release(&self, order_id: Uuid) -> Event {
        self.world.publish("saga", &ReleaseStock { order_id }).await
    }

    async fn expect_reserved(&mut self, order_id: Uuid) -> (StockReserved, Event) {
        self.inventory.expect::<StockReserved>(|r| r.order_id == order_id).await
    }

    async fn expect_released(&mut self, order_id: Uuid) -> (StockReleased, Event) {
        self.inventory.expect::<StockReleased>(|r| r.order_id == order_id).await
    }

    async fn expect_unavailable(&mut self, order_id: Uuid) -> (StockUnavailable, Event) {
        self.inventory.expect::<StockUnavailable>(|r| r.order_id == order_id).await
    }

    /// Everything about `order_id` inventory emitted (within a quiet period), as event types.
    async fn answers_for(&mut self, order_id: Uuid) -> Vec<(String, Event)> {
        let subject = order_id.to_string();
        self.inventory
            .drain(QUIET)
            .await
            .iter()
            .filter(|e| e.subject == subject)
            .map(|e| (e.kind.clone(), e.clone()))
            .collect()
    }

    /// Waits until every order in `orders` has its first stock answer; returns those answers.
    async fn answers_to(&mut self, orders: &[Uuid]) -> Vec<Event> {
        let subjects: Vec<String> = orders.iter().map(Uuid::to_string).collect();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answers: Vec<Event> = self
                .inventory
                .drain(Duration::from_millis(100))
                .await
                .iter()
                .filter(|e| subjects.contains(&e.subject))
                .filter(|e| e.kind == StockReserved::KIND || e.kind == StockUnavailable::KIND)
                .cloned()
                .collect();
            if answers.len() >= orders.len() {
                assert_eq!(answers.len(), orders.len(), "one answer per order: {answers:?}");
                return answers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {} orders answered",
                answers.len(),
                orders.len()
            );
        }
    }

    /// Stops the service and checks that it shuts down cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(PATIENCE, self.running).await.expect("the service stops in time");
        stopped.expect("the run task does not panic").expect("run returns Ok");
    }
}

#[tokio::test]
async fn the_catalog_is_listed_and_announced_once() {
    let mut app = spawn_app().await;

    let (status, _, body) = app.get("/v1/products").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), DEMO_CATALOG.len());
    let skus: Vec<&str> = items.iter().map(|i| i["sku"].as_str().unwrap()).collect();
    let mut sorted = skus.clone();
    sorted.sort();
    assert_eq!(skus, sorted, "ordered by SKU");
    for item in items {
        let sku = item["sku"].as_str().unwrap();
        let demo = DEMO_CATALOG.iter().find(|p| p.sku == sku).expect("a demo product");
        assert_eq!(item["product_id"], product_id(sku).to_string());
        assert_eq!(item["name"], demo.name);
        assert_eq!(item["price"], serde_json::json!({"amount": demo.price_cents, "currency": "EUR"}));
        assert_eq!(item["available"], demo.stock);
    }
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));
    assert_eq!(app.stock(mug()).await, (PLENTY, 0, 0));

    // Each product is announced with its price, so orders can learn prices from events.
    let mut announced = Vec::new();
    for _ in DEMO_CATALOG {
        announced.push(app.inventory.expect::<ProductAdded>(|_| true).await);
    }
    for demo in DEMO_CATALOG {
        let (added, event) = announced.iter().find(|(p, _)| p.sku == demo.sku).expect("the product is announced");
        assert_eq!(added.product_id, product_id(demo.sku));
        assert_eq!(added.price, Money::new(demo.price_cents, Currency::EUR));
        assert_eq!(added.name, demo.name);
        assert_eq!(event.source, "inventory");
        assert_eq!(event.subject, added.product_id.to_string());
    }

    // Building again on the same database (a restart) seeds and announces nothing.
    let again = Service::build(app.kernel.clone(), Config::default()).await.expect("a second build");
    drop(again);
    let announced = app.inventory.drain(QUIET).await.iter().filter(|e| e.kind == ProductAdded::KIND).count();
    assert_eq!(announced, DEMO_CATALOG.len(), "each product is announced exactly once");
    let (_, _, body) = app.get("/v1/products").await;
    assert_eq!(body["items"].as_array().unwrap().len(), DEMO_CATALOG.len());

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn a_paid_order_reserves_its_lines() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    let paid = app.pay(order_id, vec![line(mug(), 2), line(book(), 1), line(mug(), 1)]).await;
    let (reserved, event) = app.expect_reserved(order_id).await;

    let mut expected = vec![line(mug(), 3), line(book(), 1)];
    expected.sort_by_key(|l| l.product_id);
    assert_eq!(reserved.items, expected, "one line per product, quantities summed");
    assert_eq!(event.causation_id, Some(paid.id), "the answer names its cause");
    assert_eq!(event.correlation_id, paid.correlation_id, "the answer stays in the order's conversation");
    assert_eq!(event.subject, order_id.to_string());
    assert_eq!(app.stock(mug()).await, (PLENTY - 3, 3, 0));
    assert_eq!(app.stock(book()).await, (PLENTY - 1, 1, 0));

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn short_stock_is_unavailable_and_reserves_nothing() {
    let mut app = spawn_app().await;

    let greedy = Uuid::now_v7();
    app.pay(greedy, vec![line(mug(), 1), line(lamp(), 4)]).await;
    let (unavailable, _) = app.expect_unavailable(greedy).await;
    assert_eq!(unavailable.reason, format!("{SCARCE_SKU}: only 3 available"));
    assert_eq!(app.stock(mug()).await, (PLENTY, 0, 0), "all or nothing: the mug is not held either");
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));
    app.assert_conserved().await;

    // Exactly what is left can be had; then nothing more.
    let last_three = Uuid::now_v7();
    app.pay(last_three, vec![line(lamp(), 3)]).await;
    app.expect_reserved(last_three).await;
    assert_eq!(app.stock(lamp()).await, (0, 3, 0));

    let one_more = Uuid::now_v7();
    app.pay(one_more, vec![line(lamp(), 1)]).await;
    let (unavailable, _) = app.expect_unavailable(one_more).await;
    assert_eq!(unavailable.reason, format!("{SCARCE_SKU}: only 0 available"));
    assert_eq!(app.stock(lamp()).await, (0, 3, 0));

    // A repeated payment for the refused order gets the same answer, not a second try.
    app.release(last_three).await;
    app.expect_released(last_three).await;
    app.pay(one_more, vec![line(lamp(), 1)]).await;
    let (again, _) = app.expect_unavailable(one_more).await;
    assert_eq!(again.reason, unavailable.reason, "the same answer as the first time");
    let answers = app.answers_for(one_more).await;
    let kinds: Vec<&str> = answers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["stock_unavailable", "stock_unavailable"]);
    assert_eq!(app.stock(lamp()).await, (3, 0, 0), "stock came back, but the refused order did not take it");

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_product_is_unavailable() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();
    let ghost = Uuid::now_v7();

    app.pay(order_id, vec![line(book(), 1), line(ghost, 1)]).await;
    let (unavailable, _) = app.expect_unavailable(order_id).await;
    assert_eq!(unavailable.reason, format!("{ghost}: no such product"));
    assert_eq!(app.stock(book()).await, (PLENTY, 0, 0));

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn a_release_after_a_reservation_restores_stock() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    app.pay(order_id, vec![line(lamp(), 2), line(mug(), 5)]).await;
    app.expect_reserved(order_id).await;
    assert_eq!(app.stock(lamp()).await, (1, 2, 0));

    let command = app.release(order_id).await;
    let (released, event) = app.expect_released(order_id).await;
    assert!(released.released, "a reservation existed");
    assert_eq!(event.causation_id, Some(command.id));
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));
    assert_eq!(app.stock(mug()).await, (PLENTY, 0, 0));
    app.assert_conserved().await;

    // A second release command re-answers and returns nothing twice.
    app.release(order_id).await;
    let (again, _) = app.expect_released(order_id).await;
    assert!(!again.released);
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));

    // A completion after the release sells nothing.
    let late = app.world.publish("orders", &completed(order_id)).await;
    app.await_handled(&late).await;
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn a_release_before_the_payment_leaves_a_tombstone() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    // The saga timed out and compensated before the payment reached inventory.
    app.release(order_id).await;
    let (released, _) = app.expect_released(order_id).await;
    assert!(!released.released, "nothing was reserved");

    let late = app.pay(order_id, vec![line(lamp(), 1)]).await;
    app.await_handled(&late).await;
    let answers = app.answers_for(order_id).await;
    let kinds: Vec<&str> = answers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["stock_released"], "the late payment is answered with nothing");
    assert_eq!(app.stock(lamp()).await, (3, 0, 0));

    // Releasing again still answers, and still releases nothing.
    app.release(order_id).await;
    let (again, _) = app.inventory.expect::<StockReleased>(|r| r.order_id == order_id).await;
    assert!(!again.released);

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn a_completed_order_sells_its_reservation() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    app.pay(order_id, vec![line(lamp(), 2)]).await;
    app.expect_reserved(order_id).await;
    // Other order events on the topic are none of inventory's business.
    let created = OrderCreated { order_id, user_id: Uuid::now_v7(), items: vec![], total: Money::zero(Currency::EUR) };
    app.world.publish("orders", &created).await;
    app.world.publish("orders", &completed(order_id)).await;
    app.await_stock(lamp(), (1, 0, 2)).await;
    app.assert_conserved().await;

    // A release after the sale touches nothing and says so.
    app.release(order_id).await;
    let (released, _) = app.expect_released(order_id).await;
    assert!(!released.released);
    assert_eq!(app.stock(lamp()).await, (1, 0, 2));

    // A second completion (another event) sells nothing twice.
    let again = app.world.publish("orders", &completed(order_id)).await;
    app.await_handled(&again).await;
    assert_eq!(app.stock(lamp()).await, (1, 0, 2));

    // A completion for an order inventory never reserved does nothing.
    let stranger = app.world.publish("orders", &completed(Uuid::now_v7())).await;
    app.await_handled(&stranger).await;
    assert_eq!(app.stock(lamp()).await, (1, 0, 2));

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_payment_delivered_twice_reserves_once() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    let event = payment(order_id, vec![line(lamp(), 2)]).to_event("payments");
    app.world.publish_event(topics::PAYMENTS, event.clone()).await;
    app.world.publish_event(topics::PAYMENTS, event.clone()).await;
    // A later payment event for the same order (same key, so handled after both copies)
    // tells us when the duplicate has been dealt with.
    let marker = app.pay(order_id, vec![line(lamp(), 2)]).await;
    app.inventory.expect::<StockReserved>(|r| r.order_id == order_id).await;
    let (_, answer) = app.inventory.expect::<StockReserved>(|r| r.order_id == order_id).await;
    assert_eq!(answer.causation_id, Some(marker.id));

    let answers = app.answers_for(order_id).await;
    let causes: Vec<Option<Uuid>> = answers.iter().map(|(_, e)| e.causation_id).collect();
    assert_eq!(causes, [Some(event.id), Some(marker.id)], "one answer for the duplicated event");
    assert_eq!(app.stock(lamp()).await, (1, 2, 0), "reserved once");

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn two_payments_for_one_order_reserve_once() {
    let mut app = spawn_app().await;
    let order_id = Uuid::now_v7();

    app.pay(order_id, vec![line(lamp(), 2)]).await;
    let (first, _) = app.expect_reserved(order_id).await;
    // A different event with the same meaning (payments emitted again after a crash, or a
    // replay) gets the same answer and holds nothing more.
    let second = app.pay(order_id, vec![line(lamp(), 1)]).await;
    let (again, answer) = app.expect_reserved(order_id).await;
    assert_eq!(answer.causation_id, Some(second.id));
    assert_eq!(again.items, first.items, "the same answer as the first time");
    assert_eq!(app.stock(lamp()).await, (1, 2, 0));

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn bad_product_ids_are_problems() {
    let app = spawn_app().await;

    for bad in ["not-a-uuid", "123", "%FF%FE"] {
        let (status, content_type, body) = app.get(&format!("/v1/products/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{bad}");
        assert_eq!(body["status"], 400);
        assert!(
            body["detail"].as_str().unwrap().contains("UUID")
                || body["detail"].as_str().unwrap().contains("unreadable")
        );
    }
    let (_, _, body) = app.get("/v1/products/not-a-uuid").await;
    assert_eq!(body["errors"][0]["field"], "id", "the problem names the field to fix: {body}");

    let ghost = Uuid::now_v7();
    let (status, content_type, body) = app.get(&format!("/v1/products/{ghost}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert!(body["detail"].as_str().unwrap().contains(&ghost.to_string()));

    // Any spelling of a UUID names the product.
    let upper = mug().to_string().to_uppercase();
    let (status, _, body) = app.get(&format!("/v1/products/{upper}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["product_id"], mug().to_string());

    app.assert_conserved().await;
    app.stop().await;
}

#[tokio::test]
async fn products_can_be_added_to_an_empty_catalog() {
    let world = TestWorld::new();
    let kernel = world.kernel("inventory").await;
    let mut app = spawn_app_on(world, kernel, Config { demo_catalog: false, ..Config::default() }).await;

    let (_, _, body) = app.get("/v1/products").await;
    assert_eq!(body["items"], serde_json::json!([]), "no demo catalog when it is turned off");

    let price = Money::new(2999, Currency::EUR);
    let id = app.service.add_product("TEAPOT-418", "  Teapot, short and stout ", price, 5).await.unwrap();
    assert_eq!(id, product_id("TEAPOT-418"));
    let (added, _) = app.inventory.expect::<ProductAdded>(|p| p.product_id == id).await;
    assert_eq!(
        added,
        ProductAdded { product_id: id, sku: "TEAPOT-418".into(), name: "Teapot, short and stout".into(), price }
    );
    let (status, _, body) = app.get(&format!("/v1/products/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Teapot, short and stout");
    assert_eq!(body["stock"], serde_json::json!({"available": 5, "reserved": 0, "sold": 0}));

    // A SKU names one product; bad fields say what to fix; neither writes anything.
    let duplicate = app.service.add_product("TEAPOT-418", "Another teapot", price, 1).await;
    assert!(matches!(duplicate, Err(Error::DuplicateSku(ref sku)) if sku == "TEAPOT-418"), "{duplicate:?}");
    for (sku, name, amount, stock) in
        [("teapot", "Teapot", 1, 1), ("CUP", "", 1, 1), ("CUP", "Cup", -1, 1), ("CUP", "Cup", 1, -1)]
    {
        let invalid = app.service.add_product(sku, name, Money::new(amount, Currency::EUR), stock).await;
        assert!(matches!(invalid, Err(Error::InvalidProduct(_))), "{sku:?} {name:?} {amount} {stock}: {invalid:?}");
    }
    let (_, _, body) = app.get("/v1/products").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let announced = app.inventory.drain(QUIET).await.iter().filter(|e| e.kind == ProductAdded::KIND).count();
    assert_eq!(announced, 1);

    // An added product is reserved like any other.
    let order_id = Uuid::now_v7();
    app.pay(order_id, vec![line(id, 5)]).await;
    app.expect_reserved(order_id).await;
    let stock = app.service.stock_of(id).await.unwrap().unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold, stock.initial), (0, 5, 0, 5));
    assert!(app.service.stock_of(Uuid::now_v7()).await.unwrap().is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_flows_hold_on_postgresql_under_concurrency() {
    let mut app = spawn_app_on_postgres().await;

    // Ten orders race for the three lamps (different keys, so the router handles them
    // concurrently, each in its own PostgreSQL transaction): exactly three win.
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for order_id in &orders {
        app.pay(*order_id, vec![line(lamp(), 1), line(mug(), 1)]).await;
    }
    let answers = app.answers_to(&orders).await;
    let won: Vec<Uuid> =
        answers.iter().filter(|e| e.kind == StockReserved::KIND).map(|e| e.subject.parse().unwrap()).collect();
    let lost = answers.iter().filter(|e| e.kind == StockUnavailable::KIND).count();
    assert_eq!((won.len(), lost), (3, 7));
    assert_eq!(app.stock(lamp()).await, (0, 3, 0));
    assert_eq!(app.stock(mug()).await, (PLENTY - 3, 3, 0), "losers hold no mug either");
    app.assert_conserved().await;

    // One winner completes, one is released, and a release for an unknown order tombstones it.
    app.world.publish("orders", &completed(won[0])).await;
    app.await_stock(lamp(), (0, 2, 1)).await;
    app.release(won[1]).await;
    let (released, _) = app.expect_released(won[1]).await;
    assert!(released.released);
    assert_eq!(app.stock(lamp()).await, (1, 1, 1));
    let late = Uuid::now_v7();
    app.release(late).await;
    assert!(!app.expect_released(late).await.0.released);
    let payment = app.pay(late, vec![line(lamp(), 1)]).await;
    app.await_handled(&payment).await;
    assert_eq!(app.stock(lamp()).await, (1, 1, 1));

    app.assert_conserved().await;
    app.stop().await;
}
