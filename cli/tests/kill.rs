//! `weir up` killed with SIGKILL under load, again and again, then restarted: every accepted
//! order ends COMPLETED or CANCELLED, nobody is charged twice or left charged for a cancelled
//! order, stock is conserved, and each outcome is notified exactly once (ARCHITECTURE.md, "services").

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Client, PATIENCE, User, Weir};
use rand::Rng;
use serde_json::{Value, json};

const ORDERS: usize = 300;
const KILLS: usize = 3;

struct Placed {
    order_id: String,
    user: usize,
    product_id: String,
    quantity: i64,
}

/// Places one order, retrying through crashes with the same idempotency key until the server
/// answers: an order whose request died with the process is then either found or made once.
async fn place(client: &Client, user: &User, product_id: &str, quantity: i64) -> Option<String> {
    let key = uuid::Uuid::now_v7().to_string();
    let body = json!({ "items": [{ "product_id": product_id, "quantity": quantity }] });
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let sent = client
            .http
            .post(format!("{}/v1/orders", client.url))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", &key)
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => {
                return Some(r.json::<Value>().await.unwrap()["order_id"].as_str()?.to_owned());
            }
            Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                panic!("order refused: {}", r.text().await.unwrap())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("an order could not be placed within {PATIENCE:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut weir = Weir::start(&data, &["--payment-decline-rate", "0.1"]).await;
    let client = weir.client();
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(client.register(&format!("user{n}@example.com")).await);
    }
    let users = Arc::new(users);
    let products = client.products().await;
    let initial: HashMap<String, i64> = products
        .iter()
        .map(|p| {
            let id = p["product_id"].as_str().unwrap().to_owned();
            (id, p["available"].as_i64().unwrap())
        })
        .collect();
    let product_ids: Arc<Vec<String>> = Arc::new(initial.keys().cloned().collect());

    // Load: four concurrent customers, each placing orders one after another.
    let placed = Arc::new(Mutex::new(Vec::<Placed>::new()));
    let mut load = tokio::task::JoinSet::new();
    for user in 0..users.len() {
        let (client, users, product_ids, placed) = (client.clone(), users.clone(), product_ids.clone(), placed.clone());
        load.spawn(async move {
            for _ in 0..ORDERS / 4 {
                let (product_id, quantity) = {
                    let mut rng = rand::rng();
                    (product_ids[rng.random_range(0..product_ids.len())].clone(), rng.random_range(1..=3))
                };
                if let Some(order_id) = place(&client, &users[user], &product_id, quantity).await {
                    placed.lock().unwrap().push(Placed { order_id, user, product_id, quantity });
                }
            }
        });
    }
    for _ in 0..KILLS {
        let pause = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        weir.kill();
        weir = weir.restart().await;
    }
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
    let placed = std::mem::take(&mut *placed.lock().unwrap());
    assert_eq!(placed.len(), ORDERS);

    // Every order ends COMPLETED or CANCELLED.
    let mut outcome = HashMap::new();
    for order in &placed {
        let view = client.wait_for_outcome(&users[order.user].token, &order.order_id).await;
        outcome.insert(order.order_id.clone(), view["status"].as_str().unwrap().to_owned());
    }
    let completed = outcome.values().filter(|s| *s == "COMPLETED").count();
    assert!(completed > 0, "some orders must complete");

    // Stock is conserved and sold stock matches completed orders, once every reservation settles.
    let mut sold: HashMap<&str, i64> = HashMap::new();
    for order in placed.iter().filter(|o| outcome[&o.order_id] == "COMPLETED") {
        *sold.entry(order.product_id.as_str()).or_default() += order.quantity;
    }
    let deadline = Instant::now() + PATIENCE;
    for (product_id, initial) in &initial {
        loop {
            let stock = client.product(product_id).await["stock"].clone();
            let (available, reserved, sold_now) = (
                stock["available"].as_i64().unwrap(),
                stock["reserved"].as_i64().unwrap(),
                stock["sold"].as_i64().unwrap(),
            );
            assert_eq!(available + reserved + sold_now, *initial, "stock not conserved for {product_id}: {stock}");
            let expected_sold = sold.get(product_id.as_str()).copied().unwrap_or(0);
            if reserved == 0 && sold_now == expected_sold {
                break;
            }
            assert!(Instant::now() < deadline, "{product_id}: {stock}, expected sold {expected_sold}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Money: a completed order is charged and not refunded; a cancelled order that was charged
    // is refunded in full. The gateway keys its ledger by idempotency key, one per order and
    // operation, so a second charge of one order would have needed a second key: count those too.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ledger: Value =
            reqwest::get(format!("{}/v1/ledger?by_key=true", weir.gateway)).await.unwrap().json().await.unwrap();
        let by_key = ledger["by_key"].as_object().unwrap_or_else(|| panic!("no by_key in the ledger: {ledger}"));
        let succeeded = |key: String| by_key.get(&key).is_some_and(|k| k["status"] == 201);
        let mut unsettled = Vec::new();
        for order in &placed {
            let id = &order.order_id;
            let keys_for_order = by_key.keys().filter(|k| k.contains(id.as_str())).count();
            assert!(keys_for_order <= 2, "order {id} has {keys_for_order} gateway operations");
            let (charged, refunded) = (succeeded(format!("charge-{id}")), succeeded(format!("refund-{id}")));
            match outcome[id].as_str() {
                "COMPLETED" => {
                    assert!(charged && !refunded, "completed order {id}: charged {charged}, refunded {refunded}")
                }
                _ if charged != refunded => unsettled.push(id.as_str()),
                _ => {}
            }
        }
        if unsettled.is_empty() {
            assert!(ledger["charged_total"].as_i64().unwrap() >= ledger["refunded_total"].as_i64().unwrap());
            break;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&weir.log).unwrap_or_default();
            let story: Vec<&str> = log.lines().filter(|l| l.contains(unsettled[0])).collect();
            panic!("cancelled orders left charged: {unsettled:?}; the log of the first:\n{}", story.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each outcome is notified exactly once.
    for (n, user) in users.iter().enumerate() {
        let theirs: Vec<&Placed> = placed.iter().filter(|o| o.user == n).collect();
        client.wait_for_notifications(&user.token, theirs.len()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, user) in users.iter().enumerate() {
        let mut per_order: HashMap<String, usize> = HashMap::new();
        for notification in client.notifications(&user.token).await {
            *per_order.entry(notification["order_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        for order in placed.iter().filter(|o| o.user == n) {
            assert_eq!(per_order.get(&order.order_id), Some(&1), "order {} notified wrongly", order.order_id);
        }
    }
}
