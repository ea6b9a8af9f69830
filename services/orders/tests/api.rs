//! Black-box tests of the orders service: it runs on a real SQLite bus and database, and the
//! tests speak to it only through HTTP and the bus (plus one look at the read-model table to
//! check that a rebuild reproduces it byte for byte).

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    CancelOrder, CompleteOrder, Contract, Currency, Money, OrderCancelled, OrderCompleted, OrderCreated, ProductAdded,
    ProductPriceChanged, topics,
};
use weir_core::{
    Kernel, Subscriber,
    bus::dead_letter_topic,
    router::dead_letter,
    store::{checkpoints, projection},
};
use weir_orders::{Config, OrderViews, Service};
use weir_testkit::app::{PATIENCE, TestWorld, Watch, serve};

/// How long a test listens to make sure something does *not* happen, after a barrier has
/// already shown that the service handled everything sent before.
const QUIET: Duration = Duration::from_millis(300);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The catalog every test starts with.
struct Catalog {
    apple: Uuid,
    pear: Uuid,
    /// Priced in USD, unlike the others.
    dollar: Uuid,
    /// So expensive that three of them overflow a total.
    huge: Uuid,
}

/// Where the service keeps its state.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    /// The distributed setup's store.
    Postgres,
    /// PostgreSQL with a pool of one connection: a handler that queries outside its
    /// transaction waits for itself.
    PostgresOneConnection,
}

struct App {
    world: TestWorld,
    kernel: Kernel,
    url: String,
    http: reqwest::Client,
    catalog: Catalog,
    stop: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    /// Builds and runs the service, publishes the catalog as inventory would, and waits until
    /// orders accepts every product.
    async fn spawn() -> App {
        App::spawn_on(Store::Sqlite).await
    }

    async fn spawn_on(store: Store) -> App {
        App::spawn_with(store, Config::default()).await
    }

    async fn spawn_with(store: Store, config: Config) -> App {
        let world = TestWorld::new();
        let kernel = match store {
            Store::Sqlite => world.kernel("orders").await,
            Store::Postgres => world.postgres_kernel().await,
            Store::PostgresOneConnection => {
                world.postgres_kernel_with(weir_store_postgres::Options { pool_size: 1, ..Default::default() }).await
            }
        };
        let service = Service::build(kernel.clone(), config).await.expect("the service builds");
        let (router, _openapi) = service.routes().split_for_parts();
        let (url, stop) = serve(router, &world.tokens).await;
        let running = stop.clone();
        tokio::spawn(async move { service.run(running).await.expect("the service runs") });

        let catalog =
            Catalog { apple: Uuid::now_v7(), pear: Uuid::now_v7(), dollar: Uuid::now_v7(), huge: Uuid::now_v7() };
        let products = [
            (catalog.apple, "APPLE", Money::new(250, Currency::EUR)),
            (catalog.pear, "PEAR", Money::new(120, Currency::EUR)),
            (catalog.dollar, "DOLLAR", Money::new(100, Currency::USD)),
            (catalog.huge, "HUGE", Money::new(i64::MAX / 2, Currency::EUR)),
        ];
        for (product_id, sku, price) in products {
            let added = ProductAdded { product_id, sku: sku.into(), name: sku.to_lowercase(), price };
            let event = world.publish("inventory", &added).await;
            // A duplicate delivery of a catalog event is harmless.
            world.publish_event(topics::INVENTORY, event).await;
        }
        let app = App { world, kernel, url, http: reqwest::Client::new(), catalog, stop };
        // A throwaway customer orders each product until orders knows them all.
        let probe = &app.token(Uuid::now_v7());
        let this = &app;
        for product in [app.catalog.apple, app.catalog.pear, app.catalog.dollar, app.catalog.huge] {
            this.eventually(|| async move {
                let response = this.place(probe, &json!({"items": [{"product_id": product, "quantity": 1}]})).await;
                (response.status() == StatusCode::ACCEPTED).then_some(())
            })
            .await;
        }
        app
    }

    fn token(&self, user: Uuid) -> String {
        self.world.tokens.issue(user).token
    }

    async fn place(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http.post(format!("{}/v1/orders", self.url)).bearer_auth(token).json(body).send().await.expect("POST")
    }

    /// Places a valid order and returns its id.
    async fn place_ok(&self, token: &str, items: Value) -> Uuid {
        let response = self.place(token, &json!({ "items": items })).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.expect("GET")
    }

    async fn order(&self, token: &str, order_id: Uuid) -> Value {
        let response = self.get(token, &format!("/v1/orders/{order_id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Every order of the caller, following the cursor page by page.
    async fn all_orders(&self, token: &str, limit: u32) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("/v1/orders?limit={limit}&cursor={c}"),
                None => format!("/v1/orders?limit={limit}"),
            };
            let response = self.get(token, &query).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page: Value = response.json().await.unwrap();
            let page_items = page["items"].as_array().unwrap();
            assert!(page_items.len() <= limit as usize);
            items.extend(page_items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// Polls `probe` until it yields a value, failing after the testkit's patience.
    async fn eventually<T, F, Fut>(&self, probe: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "the condition did not hold within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status_becomes(&self, token: &str, order_id: Uuid, status: &str) -> Value {
        self.eventually(|| async move {
            let order = self.order(token, order_id).await;
            (order["status"] == status).then_some(order)
        })
        .await
    }

    /// Returns once the service has settled every command sent so far about `order_id`: it
    /// sends a command keyed by that order (so it is handled after them) that names an order
    /// that does not exist, and waits for its dead letter.
    async fn barrier(&self, order_id: Uuid) {
        let mut probe = CompleteOrder { order_id: Uuid::now_v7() }.to_event("saga");
        probe.subject = order_id.to_string();
        self.world.publish_event(topics::ORDER_COMMANDS, probe.clone()).await;
        let reason = self.dead_letter(probe.id).await;
        assert!(reason.contains("unknown order"), "{reason}");
    }

    /// Waits for the dead letter of event `id` on `orders.commands` and returns its reason.
    async fn dead_letter(&self, id: Uuid) -> String {
        let dlq = dead_letter_topic(topics::ORDER_COMMANDS);
        let group = format!("test-{}", Uuid::now_v7().simple());
        let mut letters = self.world.log.subscribe(&dlq, &group).await.unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let delivery = tokio::time::timeout_at(deadline, letters.next())
                .await
                .expect("the dead letter arrives")
                .expect("the subscription stays open");
            let headers = &delivery.message.headers;
            if headers.get("ce-id").map(String::as_str) == Some(id.to_string().as_str()) {
                return headers[dead_letter::REASON].clone();
            }
            delivery.ack().await.unwrap();
        }
    }
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, field: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
    assert!(!problem["detail"].as_str().unwrap().is_empty());
    if let Some(field) = field {
        let errors = problem["errors"].as_array().unwrap_or_else(|| panic!("no field errors in {problem}"));
        assert!(errors.iter().any(|e| e["field"] == field), "{field} not named in {problem}");
    }
    problem
}

/// The `OrderCreated`s of `user` seen on `orders` while listening for [`QUIET`].
async fn created_for(watch: &mut Watch, user: Uuid) -> usize {
    let seen = watch.drain(QUIET).await;
    seen.iter().filter_map(|e| OrderCreated::decode(e)?.ok()).filter(|c| c.user_id == user).count()
}

#[tokio::test]
async fn an_order_is_accepted_priced_by_the_catalog_and_traced() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;

    let response = app
        .http
        .post(format!("{}/v1/orders", app.url))
        .bearer_auth(&token)
        .header("traceparent", TRACEPARENT)
        .json(&json!({"items": [
            {"product_id": app.catalog.apple, "quantity": 3},
            {"product_id": app.catalog.pear, "quantity": 1},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "PENDING");
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(location, format!("/v1/orders/{order_id}"));

    let (created, event) = orders.expect::<OrderCreated>(|c| c.order_id == order_id).await;
    assert_eq!(created.user_id, user);
    assert_eq!(created.total, Money::new(3 * 250 + 120, Currency::EUR));
    let prices: Vec<(Uuid, u32, i64)> =
        created.items.iter().map(|l| (l.product_id, l.quantity, l.unit_price.amount)).collect();
    assert_eq!(prices, [(app.catalog.apple, 3, 250), (app.catalog.pear, 1, 120)]);
    assert_eq!(event.source, "orders");
    assert!(event.traceparent.as_deref().unwrap().contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{event:?}");

    let order = app.order(&token, order_id).await;
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total"], json!({"amount": 870, "currency": "EUR"}));
    assert_eq!(
        order["items"][0],
        json!({"product_id": app.catalog.apple, "quantity": 3,
        "unit_price": {"amount": 250, "currency": "EUR"}})
    );
    assert!(order.get("reason").is_none());
    assert_eq!(order["created_at"], order["updated_at"]);
}

#[tokio::test]
async fn an_order_can_be_read_right_after_it_is_placed() {
    let app = App::spawn().await;
    let token = app.token(Uuid::now_v7());
    for quantity in 1..=5 {
        let order_id = app.place_ok(&token, json!([{"product_id": app.catalog.pear, "quantity": quantity}])).await;
        // No polling: read-your-writes means the first GET finds it.
        let order = app.order(&token, order_id).await;
        assert_eq!(order["status"], "PENDING");
        assert_eq!(order["items"][0]["quantity"], quantity);
    }
}

#[tokio::test]
async fn completing_is_done_once_however_often_it_is_asked() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let order_id = app.place_ok(&token, json!([{"product_id": app.catalog.apple, "quantity": 2}])).await;

    let command = app.world.publish("saga", &CompleteOrder { order_id }).await;
    app.world.publish_event(topics::ORDER_COMMANDS, command.clone()).await; // the same event again
    app.world.publish("saga", &CompleteOrder { order_id }).await; // the same meaning, another event
    let (completed, event) = orders.expect::<OrderCompleted>(|c| c.order_id == order_id).await;
    assert_eq!((completed.user_id, completed.total), (user, Money::new(500, Currency::EUR)));
    assert_eq!(event.correlation_id, command.correlation_id);
    let order = app.status_becomes(&token, order_id, "COMPLETED").await;
    assert_ne!(order["updated_at"], order["created_at"]);

    // A cancel after completion changes nothing.
    app.world.publish("saga", &CancelOrder { order_id, reason: "too late".into() }).await;
    app.barrier(order_id).await;
    let seen = orders.drain(QUIET).await;
    let completions =
        seen.iter().filter(|e| OrderCompleted::decode(e).is_some_and(|c| c.unwrap().order_id == order_id));
    assert_eq!(completions.count(), 1);
    assert!(!seen.iter().any(OrderCancelled::matches));
    let order = app.order(&token, order_id).await;
    assert_eq!(order["status"], "COMPLETED");
    assert!(order.get("reason").is_none());
}

#[tokio::test]
async fn cancelling_records_the_reason_and_is_final() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let order_id = app.place_ok(&token, json!([{"product_id": app.catalog.pear, "quantity": 1}])).await;

    let cancel = app.world.publish("saga", &CancelOrder { order_id, reason: "payment declined".into() }).await;
    app.world.publish_event(topics::ORDER_COMMANDS, cancel).await;
    let (cancelled, _) = orders.expect::<OrderCancelled>(|c| c.order_id == order_id).await;
    assert_eq!((cancelled.user_id, cancelled.reason.as_str()), (user, "payment declined"));
    let order = app.status_becomes(&token, order_id, "CANCELLED").await;
    assert_eq!(order["reason"], "payment declined");

    app.world.publish("saga", &CompleteOrder { order_id }).await;
    app.world.publish("saga", &CancelOrder { order_id, reason: "again".into() }).await;
    app.barrier(order_id).await;
    let seen = orders.drain(QUIET).await;
    assert!(!seen.iter().any(OrderCompleted::matches));
    let cancellations = seen.iter().filter(|e| OrderCancelled::matches(e));
    assert_eq!(cancellations.count(), 1);
    assert_eq!(app.order(&token, order_id).await["reason"], "payment declined");
}

#[tokio::test]
async fn a_command_for_an_unknown_order_is_dead_lettered_with_its_reason() {
    let app = App::spawn().await;
    let unknown = Uuid::now_v7();
    let command = app.world.publish("saga", &CompleteOrder { order_id: unknown }).await;
    let reason = app.dead_letter(command.id).await;
    assert!(reason.contains(&format!("unknown order {unknown}")), "{reason}");
}

#[tokio::test]
async fn lists_show_only_the_callers_orders_newest_first_across_pages() {
    let app = App::spawn().await;
    let (alice, bob) = (app.token(Uuid::now_v7()), app.token(Uuid::now_v7()));
    let mut placed = Vec::new();
    for quantity in 1..=5 {
        placed.push(app.place_ok(&alice, json!([{"product_id": app.catalog.apple, "quantity": quantity}])).await);
    }
    let bobs = app.place_ok(&bob, json!([{"product_id": app.catalog.pear, "quantity": 1}])).await;

    let first: Value = app.get(&alice, "/v1/orders?limit=2").await.json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert!(first["next_cursor"].is_string());

    let listed: Vec<Uuid> =
        app.all_orders(&alice, 2).await.iter().map(|o| o["order_id"].as_str().unwrap().parse().unwrap()).collect();
    placed.reverse();
    assert_eq!(listed, placed);
    let everything: Vec<Value> = app.all_orders(&alice, 100).await;
    assert_eq!(everything.len(), 5);
    assert!(everything.iter().all(|o| o["status"] == "PENDING"));

    let bobs_list: Vec<Value> = app.all_orders(&bob, 20).await;
    assert_eq!(bobs_list.len(), 1);
    assert_eq!(bobs_list[0]["order_id"], bobs.to_string());

    // The default page is 20, and a last page has no cursor.
    let default: Value = app.get(&alice, "/v1/orders").await.json().await.unwrap();
    assert_eq!(default["items"].as_array().unwrap().len(), 5);
    assert!(default["next_cursor"].is_null());
}

#[tokio::test]
async fn another_users_order_is_not_found() {
    let app = App::spawn().await;
    let (alice, bob) = (app.token(Uuid::now_v7()), app.token(Uuid::now_v7()));
    let order_id = app.place_ok(&alice, json!([{"product_id": app.catalog.apple, "quantity": 1}])).await;

    assert_problem(app.get(&bob, &format!("/v1/orders/{order_id}")).await, StatusCode::NOT_FOUND, None).await;
    assert_problem(app.get(&alice, &format!("/v1/orders/{}", Uuid::now_v7())).await, StatusCode::NOT_FOUND, None).await;
    assert_problem(app.get(&alice, "/v1/orders/not-a-uuid").await, StatusCode::BAD_REQUEST, Some("id")).await;
    assert_eq!(app.order(&alice, order_id).await["order_id"], order_id.to_string());
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_order() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let body = json!({"items": [{"product_id": app.catalog.apple, "quantity": 1}]});
    let place = |token: String, key: &'static str| {
        let (http, url, body) = (app.http.clone(), app.url.clone(), body.clone());
        async move {
            let response = http
                .post(format!("{url}/v1/orders"))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(location, format!("/v1/orders/{}", body["order_id"].as_str().unwrap()));
            body["order_id"].as_str().unwrap().to_owned()
        }
    };

    let first = place(token.clone(), "key-1").await;
    assert_eq!(place(token.clone(), "key-1").await, first);
    // Concurrent repeats agree too.
    let (a, b) = tokio::join!(place(token.clone(), "key-2"), place(token.clone(), "key-2"));
    assert_eq!(a, b);
    assert_ne!(a, first);
    // Keys belong to their user.
    let other = place(app.token(Uuid::now_v7()), "key-1").await;
    assert_ne!(other, first);

    assert_eq!(app.all_orders(&token, 100).await.len(), 2);
    assert_eq!(created_for(&mut orders, user).await, 2);

    let too_long = "k".repeat(256);
    let response = app
        .http
        .post(format!("{}/v1/orders", app.url))
        .bearer_auth(&token)
        .header("Idempotency-Key", too_long)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, Some("Idempotency-Key")).await;
}

#[tokio::test]
async fn bad_input_is_a_clear_problem_and_writes_nothing() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let c = &app.catalog;
    let line = |product: Uuid, quantity: Value| json!({"product_id": product, "quantity": quantity});
    let many: Vec<Value> = (0..51).map(|_| line(Uuid::now_v7(), json!(1))).collect();
    let unknown = Uuid::now_v7();

    // (what, raw body, status, field at fault)
    let cases: Vec<(&str, String, StatusCode, Option<&str>)> = vec![
        ("no items", json!({"items": []}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, Some("items")),
        ("items left out", json!({}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, Some("items")),
        ("too many lines", json!({"items": many}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, Some("items")),
        (
            "zero",
            json!({"items": [line(c.apple, json!(0))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "too many",
            json!({"items": [line(c.apple, json!(1001))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "negative",
            json!({"items": [line(c.apple, json!(-1))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "fraction",
            json!({"items": [line(c.apple, json!(1.5))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "beyond u64",
            format!(r#"{{"items": [{{"product_id": "{}", "quantity": 99999999999999999999999}}]}}"#, c.apple),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "beyond u32",
            json!({"items": [line(c.apple, json!(4_294_967_297u64))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].quantity"),
        ),
        (
            "beyond f64",
            format!(r#"{{"items": [{{"product_id": "{}", "quantity": 1e400}}]}}"#, c.apple),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "quantity as text",
            json!({"items": [line(c.apple, json!("2"))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "same product twice",
            json!({"items": [line(c.apple, json!(1)), line(c.apple, json!(2))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[1].product_id"),
        ),
        (
            "unknown product",
            json!({"items": [line(c.apple, json!(1)), line(unknown, json!(1))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[1].product_id"),
        ),
        (
            "not a product id",
            json!({"items": [{"product_id": "apple", "quantity": 1}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].product_id"),
        ),
        (
            "mixed currencies",
            json!({"items": [line(c.apple, json!(1)), line(c.dollar, json!(1))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items"),
        ),
        (
            "total overflows",
            json!({"items": [line(c.huge, json!(3))]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items"),
        ),
        ("malformed JSON", r#"{"items": ["#.into(), StatusCode::BAD_REQUEST, None),
        ("wrong shape", json!({"items": {"product_id": c.apple}}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, None),
        (
            "misspelt field",
            json!({"items": [{"product_id": c.apple, "qty": 1}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
    ];
    for (what, body, status, field) in cases {
        let response = app
            .http
            .post(format!("{}/v1/orders", app.url))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{what}");
        let problem = assert_problem(response, status, field).await;
        if what == "unknown product" {
            let message = problem["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(&format!("unknown product {unknown}")), "{message}");
            assert!(message.contains("GET /v1/products"), "{message}");
        }
    }
    let response = app
        .http
        .post(format!("{}/v1/orders", app.url))
        .bearer_auth(&token)
        .body(json!({"items": [line(c.apple, json!(1))]}).to_string())
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, None).await;

    // The bad list and read requests.
    for query in ["limit=0", "limit=101", "limit=ten", "limit=-1", "cursor=nope", "limit=5&limit=6"] {
        let response = app.get(&token, &format!("/v1/orders?{query}")).await;
        assert_problem(response, StatusCode::BAD_REQUEST, None).await;
    }

    assert!(app.all_orders(&token, 100).await.is_empty());
    assert_eq!(created_for(&mut orders, user).await, 0);
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let app = App::spawn().await;
    let user = Uuid::now_v7();
    let order_id = app.place_ok(&app.token(user), json!([{"product_id": app.catalog.apple, "quantity": 1}])).await;
    let expired = app.world.tokens.issue_at(user, 1_000_000).token;
    let forged = weir_http::Tokens::new(&[9u8; 32], Duration::from_secs(900)).issue(user).token;
    let body = json!({"items": [{"product_id": app.catalog.apple, "quantity": 1}]});

    for auth in [
        None,
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {forged}")),
        Some("Bearer abc".into()),
        Some("Basic dXNlcjpwdw==".into()),
    ] {
        let requests = [
            app.http.post(format!("{}/v1/orders", app.url)).json(&body),
            app.http.get(format!("{}/v1/orders", app.url)),
            app.http.get(format!("{}/v1/orders/{order_id}", app.url)),
        ];
        for request in requests {
            let request = match &auth {
                Some(value) => request.header(header::AUTHORIZATION, value),
                None => request,
            };
            assert_problem(request.send().await.unwrap(), StatusCode::UNAUTHORIZED, None).await;
        }
    }
    assert_eq!(app.all_orders(&app.token(user), 100).await.len(), 1);
}

#[tokio::test]
async fn price_changes_apply_to_new_orders_only() {
    let app = &App::spawn().await;
    let token = &app.token(Uuid::now_v7());
    let before = app.place_ok(token, json!([{"product_id": app.catalog.pear, "quantity": 1}])).await;
    app.world
        .publish(
            "inventory",
            &ProductPriceChanged { product_id: app.catalog.pear, price: Money::new(99, Currency::EUR) },
        )
        .await;
    app.eventually(|| async move {
        let order_id = app.place_ok(token, json!([{"product_id": app.catalog.pear, "quantity": 2}])).await;
        (app.order(token, order_id).await["total"]["amount"] == 198).then_some(())
    })
    .await;
    assert_eq!(app.order(token, before).await["items"][0]["unit_price"]["amount"], 120);
}

#[tokio::test]
async fn the_read_model_rebuilds_to_the_same_table() {
    let app = App::spawn().await;
    let token = app.token(Uuid::now_v7());
    let mut ids = Vec::new();
    for product in [app.catalog.apple, app.catalog.pear, app.catalog.dollar] {
        ids.push(app.place_ok(&token, json!([{"product_id": product, "quantity": 2}])).await);
    }
    app.world.publish("saga", &CompleteOrder { order_id: ids[0] }).await;
    app.world.publish("saga", &CancelOrder { order_id: ids[1], reason: "no stock".into() }).await;
    app.status_becomes(&token, ids[0], "COMPLETED").await;
    app.status_becomes(&token, ids[1], "CANCELLED").await;

    let table = || async {
        let rows = app.kernel.db.query("SELECT * FROM order_views ORDER BY order_id", &[]).await.unwrap();
        assert!(!rows.is_empty());
        rows
    };
    let (listed, rows) = (app.all_orders(&token, 100).await, table().await);
    let replayed = projection::rebuild(app.kernel.db.as_ref(), &OrderViews, 2).await.unwrap().applied;
    assert!(replayed >= ids.len() + 2, "replayed only {replayed} events");
    assert_eq!(table().await, rows);
    assert_eq!(app.all_orders(&token, 100).await, listed);
    let statuses: Vec<&str> = listed.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["PENDING", "CANCELLED", "COMPLETED"]);
}

/// The read model changes in the transaction of each append, and its checkpoint follows within
/// a second or so, so a start has little to catch up; what the checkpoint had not passed, or an
/// earlier version's projector had left unapplied, is applied when the service starts, and
/// applying an event again changes nothing.
#[tokio::test]
async fn the_read_model_is_current_at_once_and_caught_up_at_start() {
    let app = App::spawn().await;
    let token = app.token(Uuid::now_v7());
    let placed = app.place_ok(&token, json!([{"product_id": app.catalog.apple, "quantity": 1}])).await;
    assert_eq!(app.order(&token, placed).await["status"], "PENDING");
    let db = app.kernel.db.as_ref();
    let last = db.query("SELECT MAX(position) FROM weir_events", &[]).await.unwrap()[0].i64(0).unwrap();
    app.eventually(|| async { (checkpoints::load(db, OrderViews::NAME).await.unwrap() == last).then_some(()) }).await;

    // Stopped, as a start finds it (the checkpoint task stops with the service).
    app.stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let table = || async { db.query("SELECT * FROM order_views ORDER BY order_id", &[]).await.unwrap() };
    let before = table().await;
    assert!(before.iter().any(|row| row.text(0).unwrap() == placed.to_string()));
    let reset = |views: bool| async move {
        let mut tx = db.begin().await.unwrap();
        if views {
            tx.execute("DELETE FROM order_views", &[]).await.unwrap();
        }
        checkpoints::save(tx.as_mut(), OrderViews::NAME, 0).await.unwrap();
        tx.commit().await.unwrap();
    };

    // After a crash the checkpoint is behind what appends applied: applied again, no change.
    reset(false).await;
    Service::build(app.kernel.clone(), Config::default()).await.expect("the service builds again");
    assert_eq!(table().await, before);
    assert_eq!(checkpoints::load(db, OrderViews::NAME).await.unwrap(), last);

    // As an earlier version's projector could leave it when stopped: behind the event store.
    reset(true).await;
    assert!(table().await.is_empty());
    Service::build(app.kernel.clone(), Config::default()).await.expect("the service builds again");
    assert_eq!(table().await, before);
    assert_eq!(checkpoints::load(db, OrderViews::NAME).await.unwrap(), last);
}

/// Past `max_pending` orders still pending, a new order is refused with a 503 problem and
/// `Retry-After`, and nothing is written; once one is decided, orders come in again.
#[tokio::test]
async fn past_its_limit_of_pending_orders_the_service_sheds_load() {
    // Spawning leaves one pending order per catalog product (4); one more fills the limit.
    let app = App::spawn_with(Store::Sqlite, Config { max_pending: 5, ..Config::default() }).await;
    let token = app.token(Uuid::now_v7());
    let line = json!({"items": [{"product_id": app.catalog.apple, "quantity": 1}]});
    let db = app.kernel.db.as_ref();
    let views = || async { db.query("SELECT COUNT(*) FROM order_views", &[]).await.unwrap()[0].i64(0).unwrap() };

    // The count is taken again at most every 100 ms, so a few more may get in first.
    let refused = app
        .eventually(|| async {
            let response = app.place(&token, &line).await;
            (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
        })
        .await;
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    let problem = assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(problem["detail"].as_str().unwrap().contains("retry"), "{problem}");
    let before = views().await;
    assert_eq!(app.place(&token, &line).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(views().await, before, "a refused order writes nothing");

    // Once the saga decides them, orders come in again.
    let pending = db.query("SELECT order_id FROM order_views WHERE status = 'PENDING'", &[]).await.unwrap();
    for row in &pending {
        let order_id = Uuid::parse_str(row.text(0).unwrap()).unwrap();
        app.world.publish("saga", &CompleteOrder { order_id }).await;
    }
    app.eventually(|| async { (app.place(&token, &line).await.status() == StatusCode::ACCEPTED).then_some(()) }).await;
}

/// The same service on PostgreSQL: its event store (appends, optimistic concurrency), the read
/// model with read-your-writes and its rebuild, inbox and outbox all run on the other dialect.
#[tokio::test]
async fn the_order_flow_holds_on_postgresql() {
    let app = App::spawn_on(Store::Postgres).await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let to_complete = app.place_ok(&token, json!([{"product_id": app.catalog.apple, "quantity": 2}])).await;
    assert_eq!(app.order(&token, to_complete).await["status"], "PENDING", "read-your-writes");
    let to_cancel = app.place_ok(&token, json!([{"product_id": app.catalog.pear, "quantity": 1}])).await;

    let command = app.world.publish("saga", &CompleteOrder { order_id: to_complete }).await;
    app.world.publish_event(topics::ORDER_COMMANDS, command).await; // delivered twice
    app.world.publish("saga", &CancelOrder { order_id: to_cancel, reason: "no stock".into() }).await;
    let (completed, _) = orders.expect::<OrderCompleted>(|c| c.order_id == to_complete).await;
    assert_eq!((completed.user_id, completed.total), (user, Money::new(500, Currency::EUR)));
    orders.expect::<OrderCancelled>(|c| c.order_id == to_cancel).await;
    app.status_becomes(&token, to_complete, "COMPLETED").await;
    assert_eq!(app.status_becomes(&token, to_cancel, "CANCELLED").await["reason"], "no stock");
    app.barrier(to_complete).await;
    let seen = orders.drain(QUIET).await;
    let completions =
        seen.iter().filter(|e| OrderCompleted::decode(e).is_some_and(|c| c.unwrap().order_id == to_complete));
    assert_eq!(completions.count(), 1, "the duplicate command changed nothing");

    let listed = app.all_orders(&token, 1).await;
    assert_eq!(listed.len(), 2);
    let replayed = projection::rebuild(app.kernel.db.as_ref(), &OrderViews, 2).await.unwrap();
    assert!(replayed.applied >= 4, "replayed only {replayed:?}");
    assert_eq!(app.all_orders(&token, 1).await, listed);
}

/// A command's handler reads the order inside its own transaction: with one connection in the
/// pool, reading it through the pool instead waited for the transaction's own connection until
/// every attempt timed out and the command was dead-lettered — with replicas of orders on a
/// small pool, batches of commands stalled the same way under load.
#[tokio::test]
async fn commands_read_the_order_inside_their_transaction() {
    let app = App::spawn_on(Store::PostgresOneConnection).await;
    let user = Uuid::now_v7();
    let token = app.token(user);
    let mut orders = app.world.watch(topics::ORDERS).await;
    let first = app.place_ok(&token, json!([{"product_id": app.catalog.apple, "quantity": 1}])).await;
    let second = app.place_ok(&token, json!([{"product_id": app.catalog.pear, "quantity": 1}])).await;
    app.world.publish("saga", &CompleteOrder { order_id: first }).await;
    app.world.publish("saga", &CompleteOrder { order_id: second }).await;
    orders.expect::<OrderCompleted>(|c| c.order_id == first).await;
    orders.expect::<OrderCompleted>(|c| c.order_id == second).await;
}

#[tokio::test]
async fn the_routes_are_documented_and_the_config_is_checked() {
    let world = TestWorld::new();
    let kernel = world.kernel("orders").await;
    let service = Service::build(kernel.clone(), Config::default()).await.unwrap();
    let openapi = serde_json::to_value(service.routes().into_openapi()).unwrap();
    for (path, method) in [("/v1/orders", "post"), ("/v1/orders", "get"), ("/v1/orders/{id}", "get")] {
        let operation = &openapi["paths"][path][method];
        assert_eq!(operation["tags"][0], "orders", "{method} {path}");
        assert!(operation["security"][0].get("bearer").is_some(), "{method} {path}");
    }
    let zero = Config { max_quantity: 0, ..Config::default() };
    assert!(Service::build(kernel, zero).await.is_err());
}
