//! The order pipeline end to end through `weir up`'s public HTTP API, as a user meets it.

mod common;

use std::time::Duration;

use common::{Weir, assert_problem, data_dir};
use serde_json::{Value, json};

/// The product with the least stock (the demo catalog has one with a handful of units).
async fn scarce_product(client: &common::Client) -> Value {
    client.products().await.into_iter().min_by_key(|p| p["available"].as_i64().unwrap()).unwrap()
}

async fn plentiful_product(client: &common::Client) -> Value {
    client.products().await.into_iter().max_by_key(|p| p["available"].as_i64().unwrap()).unwrap()
}

fn count(ledger: &Value, field: &str) -> i64 {
    ledger[field].as_i64().unwrap_or_else(|| panic!("ledger has no {field}: {ledger}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_completes_an_order_and_notifies_once() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let product_id = product["product_id"].as_str().unwrap();
    let before = client.product(product_id).await;

    let order_id = client.place_order(&ada, product_id, 2).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["status"], "COMPLETED", "{view}");
    let unit = product["price"]["amount"].as_i64().unwrap();
    assert_eq!(view["total"]["amount"].as_i64().unwrap(), 2 * unit, "priced by inventory, not the client");

    let notifications = client.wait_for_notifications(&ada.token, 1).await;
    assert_eq!(notifications.len(), 1, "{notifications:?}");
    assert_eq!(notifications[0]["order_id"], order_id.as_str());

    let after = client.product(product_id).await;
    assert_eq!(after["stock"]["sold"].as_i64().unwrap(), before["stock"]["sold"].as_i64().unwrap() + 2, "{after}");
    let ledger = weir.ledger().await;
    assert_eq!(count(&ledger, "charges"), 1, "{ledger}");
    assert_eq!(count(&ledger, "refunds"), 0, "{ledger}");

    // The caller's list holds the order; another user sees neither it nor its notification.
    let list = client.get_json(&ada.token, "/v1/orders").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let bob = client.register("bob@example.com").await;
    assert_problem(client.order(&bob.token, &order_id).await, 404).await;
    assert!(client.notifications(&bob.token).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_charges_nothing() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &["--payment-decline-rate", "1.0"]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let order_id = client.place_order(&ada, product["product_id"].as_str().unwrap(), 1).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["status"], "CANCELLED");
    assert!(view["reason"].as_str().unwrap().contains("declined"), "{view}");
    assert_eq!(client.wait_for_notifications(&ada.token, 1).await.len(), 1);
    assert_eq!(count(&weir.ledger().await, "charged_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_stock_refunds_the_charge_and_cancels() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let scarce = scarce_product(&client).await;
    let id = scarce["product_id"].as_str().unwrap();
    let available = scarce["available"].as_i64().unwrap();
    let order_id = client.place_order(&ada, id, available as u32 + 1).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["status"], "CANCELLED");
    assert!(view["reason"].as_str().unwrap().contains("stock"), "{view}");
    // Charged, then refunded in full.
    let ledger = weir.ledger().await;
    assert_eq!(count(&ledger, "charges"), 1, "{ledger}");
    assert_eq!(count(&ledger, "refunds"), 1, "{ledger}");
    assert_eq!(count(&ledger, "charged_total"), count(&ledger, "refunded_total"));
    let stock = &client.product(id).await["stock"];
    assert_eq!(stock["available"].as_i64().unwrap(), available, "nothing reserved: {stock}");
    assert_eq!(stock["reserved"].as_i64().unwrap(), 0);
    assert_eq!(client.wait_for_notifications(&ada.token, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_provider_opens_the_breaker_times_out_and_charges_nothing() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &["--payment-failure-rate", "1.0", "--payment-timeout-ms", "2000"]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let order_id = client.place_order(&ada, product["product_id"].as_str().unwrap(), 1).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["status"], "CANCELLED");
    assert!(view["reason"].as_str().unwrap().contains("timed out"), "{view}");
    let metrics = reqwest::get(format!("{}/metrics", weir.url)).await.unwrap().text().await.unwrap();
    let breaker = metrics
        .lines()
        .find(|l| l.starts_with("weir_circuit_state") && !l.ends_with(" 0"))
        .unwrap_or_else(|| panic!("the breaker never left closed:\n{metrics}"));
    assert!(breaker.ends_with(" 2") || breaker.ends_with(" 1"), "{breaker}");
    assert_eq!(count(&weir.ledger().await, "charged_total"), 0);
    assert_eq!(client.wait_for_notifications(&ada.token, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_still_charges_and_notifies_once() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &["--fault-duplicate-deliveries"]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let plentiful = plentiful_product(&client).await;
    let scarce = scarce_product(&client).await;
    let completed = client.place_order(&ada, plentiful["product_id"].as_str().unwrap(), 1).await;
    let too_many = scarce["available"].as_i64().unwrap() as u32 + 1;
    let cancelled = client.place_order(&ada, scarce["product_id"].as_str().unwrap(), too_many).await;
    assert_eq!(client.wait_for_outcome(&ada.token, &completed).await["status"], "COMPLETED");
    assert_eq!(client.wait_for_outcome(&ada.token, &cancelled).await["status"], "CANCELLED");
    client.wait_for_notifications(&ada.token, 2).await;
    // Give any duplicate time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let notifications = client.notifications(&ada.token).await;
    assert_eq!(notifications.len(), 2, "{notifications:?}");
    let ledger = weir.ledger().await;
    assert_eq!(count(&ledger, "charges"), 2, "{ledger}");
    assert_eq!(count(&ledger, "refunds"), 1, "{ledger}");
    let stock = &client.product(plentiful["product_id"].as_str().unwrap()).await["stock"];
    assert_eq!(stock["reserved"].as_i64().unwrap(), 0, "{stock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problems_and_writes_nothing() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let product_id = product["product_id"].as_str().unwrap();
    let orders = format!("{}/v1/orders", weir.url);

    let unknown = json!({ "items": [{ "product_id": uuid::Uuid::now_v7(), "quantity": 1 }] });
    assert_problem(client.place_order_raw(&ada.token, unknown).await, 422).await;
    for quantity in [json!(0), json!(1_000_000), json!(-1), json!(1e30), json!("two")] {
        let body = json!({ "items": [{ "product_id": product_id, "quantity": quantity }] });
        let status = client.place_order_raw(&ada.token, body).await.status();
        assert_eq!(status, 422, "quantity {quantity}");
    }
    assert_problem(client.place_order_raw(&ada.token, json!({ "items": [] })).await, 422).await;
    let malformed = client
        .http
        .post(&orders)
        .bearer_auth(&ada.token)
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400).await;

    // Tokens: missing, forged (another key), expired (the real key, long ago).
    let body = json!({ "items": [{ "product_id": product_id, "quantity": 1 }] });
    assert_problem(client.http.post(&orders).json(&body).send().await.unwrap(), 401).await;
    let forged = weir_http::Tokens::new(&[9u8; 32], Duration::from_secs(60)).issue(ada.id.parse().unwrap()).token;
    assert_problem(client.place_order_raw(&forged, body.clone()).await, 401).await;
    let key = std::fs::read(data.join("keys/tokens.key")).unwrap();
    let expired =
        weir_http::Tokens::new(&key, Duration::from_secs(60)).issue_at(ada.id.parse().unwrap(), 1_000_000).token;
    let problem = assert_problem(client.place_order_raw(&expired, body.clone()).await, 401).await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");

    // Nothing was written by any of it.
    let list: Value = client.http.get(&orders).bearer_auth(&ada.token).send().await.unwrap().json().await.unwrap();
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(count(&weir.ledger().await, "charges"), 0);

    // Another user's order is not found, and a malformed id is a 400.
    let order_id = client.place_order(&ada, product_id, 1).await;
    let bob = client.register("bob@example.com").await;
    assert_problem(client.order(&bob.token, &order_id).await, 404).await;
    assert_problem(client.order(&ada.token, "not-a-uuid").await, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_a_restart_continues() {
    let (_dir, data) = data_dir();
    let mut weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let first = client.place_order(&ada, product["product_id"].as_str().unwrap(), 1).await;
    client.wait_for_outcome(&ada.token, &first).await;
    let status = weir.interrupt();
    assert!(status.success(), "exit {status:?}; log:\n{}", weir.log_tail());

    let weir = weir.restart().await;
    let client = weir.client();
    // The same keys: the old token still works, the old order is still there.
    assert_eq!(client.order(&ada.token, &first).await.status(), 200);
    let second = client.place_order(&ada, product["product_id"].as_str().unwrap(), 1).await;
    assert_eq!(client.wait_for_outcome(&ada.token, &second).await["status"], "COMPLETED");
    // The demo catalog was not added twice.
    let products = client.products().await;
    let mut skus: Vec<_> = products.iter().map(|p| p["sku"].as_str().unwrap().to_owned()).collect();
    skus.dedup();
    assert_eq!(skus.len(), products.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_about_an_order_carries_its_trace_id() {
    let (_dir, data) = data_dir();
    // Debug for the router: one line per handled delivery, in every service's consumer group.
    let weir = Weir::start_logged(&data, &[], "info,weir_core::router=debug").await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = plentiful_product(&client).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client
        .http
        .post(format!("{}/v1/orders", weir.url))
        .bearer_auth(&ada.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "items": [{ "product_id": product["product_id"], "quantity": 1 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let order_id = response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
    client.wait_for_outcome(&ada.token, &order_id).await;
    client.wait_for_notifications(&ada.token, 1).await;

    let log = std::fs::read_to_string(&weir.log).unwrap();
    let mut groups = std::collections::BTreeSet::new();
    let mut lines_about_order = 0;
    for line in log.lines() {
        // Every line, the start-up banner's too: a log shipper takes the whole stream as JSON.
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if !line.contains(&order_id) {
            continue;
        }
        lines_about_order += 1;
        assert!(line.contains(trace_id), "a line about the order without its trace id: {line}");
        if let Some(group) = find_field(&value, "group") {
            groups.insert(group);
        }
    }
    assert!(lines_about_order > 0);
    for service in ["payments", "inventory", "saga", "notifications", "orders"] {
        assert!(groups.contains(service), "no log line from {service} about the order; saw {groups:?}");
    }
}

/// A field of the event or of any of its spans.
fn find_field(line: &Value, name: &str) -> Option<String> {
    let spans = line.get("spans").and_then(Value::as_array).into_iter().flatten();
    std::iter::once(line).chain(spans).find_map(|p| p.get(name)).and_then(Value::as_str).map(str::to_owned)
}

/// Runs `weir bench orders` with `bench_args` against a `weir up` started with `up_args`;
/// returns its table once it has succeeded.
async fn bench_orders_table(up_args: &[&str], bench_args: &'static [&'static str]) -> String {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, up_args).await;
    let url = weir.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["bench", "orders", "--url", &url])
            .args(bench_args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{table}\n{}", String::from_utf8_lossy(&output.stderr));
    table
}

/// The value of the row of `table` whose measure contains `measure`.
fn measured(table: &str, measure: &str) -> String {
    let line = table.lines().find(|l| l.contains(measure)).unwrap_or_else(|| panic!("no {measure:?} in\n{table}"));
    line.rsplit('┆').next().unwrap().trim_matches(|c: char| c == '│' || c.is_whitespace()).to_owned()
}

/// `weir bench orders` against a running `weir up`: every order it places ends, and its table
/// names each figure with a value (rates, latencies, the server's CPU per order and RSS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_orders_prints_its_table() {
    let table =
        bench_orders_table(&[], &["--users", "2", "--concurrency", "4", "--seconds", "2", "--rate", "20"]).await;
    let value = |measure: &str| measured(&table, measure);
    let accepted: u64 = value("orders accepted").parse().unwrap();
    assert!(accepted >= 20, "paced at 20/s for 2 s: {table}");
    assert_eq!(value("completed / cancelled"), format!("{accepted} / 0"), "{table}");
    assert_eq!(value("errors"), "0", "{table}");
    let cpu: f64 = value("server CPU per order").trim_end_matches(" ms").parse().unwrap();
    assert!(cpu > 0.0, "{table}");
    assert!(value("RSS idle").ends_with("MiB"), "{table}");
}

/// Load shedding as the benchmark meets it: refusals (503 with `Retry-After`) are counted apart
/// from errors, and the client waits before it tries again, so it does not hammer the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_orders_counts_refusals_apart_from_errors() {
    let table =
        bench_orders_table(&["--max-pending-orders", "1"], &["--users", "2", "--concurrency", "8", "--seconds", "2"])
            .await;
    let value = |measure: &str| -> u64 { measured(&table, measure).parse().unwrap() };
    let refused = value("refused with 503");
    assert!(refused > 0, "one order pending at most: eight clients are refused: {table}");
    // Each refusal costs its client the 1 s the server asks for: two seconds of eight clients
    // cannot be refused more than about sixteen times.
    assert!(refused <= 24, "the clients waited their Retry-After: {table}");
    assert_eq!(value("errors"), 0, "{table}");
}
