//! The operator's commands beside a running `weir up`, as an operator meets them: `weir events
//! tail` follows an order through every service; with `weir dlq`, a forged event that the live
//! process dead-letters is listed, shown, redriven (and given up on again, since its signature
//! is still wrong) and discarded, and bad requests are clear errors that change nothing.

mod common;

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use common::{PATIENCE, Weir, data_dir};
use serde_json::json;
use weir_core::{Event, Publisher, db::Database};
use weir_store_sqlite::{Browse, LogOptions, SqliteDatabase, SqliteLog};

/// `weir <args> --data-dir <data>`, run to its end — with `RUST_BACKTRACE=1`, as in many a Rust
/// developer's shell, which must not turn an operator's error into a stack trace.
async fn weir_on(data: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    command.args(args).arg("--data-dir").arg(data).env("RUST_BACKTRACE", "1");
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed; its standard output.
async fn ok(data: &Path, args: &[&str]) -> String {
    let output = weir_on(data, args).await;
    assert!(output.status.success(), "weir {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    stdout(&output)
}

/// Runs a command that must fail; its standard error, which says what went wrong in one
/// `error:` line (clap's usage errors add their usage lines), never a backtrace.
async fn refused(data: &Path, args: &[&str]) -> String {
    let output = weir_on(data, args).await;
    assert!(!output.status.success(), "weir {args:?} succeeded: {}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.starts_with("error: ") && !stderr.contains("acktrace"), "weir {args:?}:\n{stderr}");
    stderr
}

/// The ids in the first column of `weir dlq list`'s table.
fn listed_ids(table: &str) -> Vec<i64> {
    table.lines().filter_map(|l| l.trim_start_matches('│').split('┆').next()?.trim().parse().ok()).collect()
}

/// Lists until the letters differ from `before`; the new list's ids.
async fn wait_for_letters_other_than(data: &Path, before: &[i64]) -> (Vec<i64>, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let table = ok(data, &["dlq", "list"]).await;
        let ids = listed_ids(&table);
        if !ids.is_empty() && ids != before {
            return (ids, table);
        }
        assert!(Instant::now() < deadline, "the dead letters stayed {before:?}:\n{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_shows_redrives_and_discards_dead_letters() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    assert!(ok(&data, &["dlq", "list"]).await.contains("No dead letters."));

    // Someone with access to the bus file forges a price change, unsigned.
    let client = weir.client();
    let product = client.products().await.into_iter().next().unwrap();
    let product_id = product["product_id"].as_str().unwrap().to_owned();
    let forged = Event::new(
        "inventory",
        "product_price_changed",
        &product_id,
        &json!({ "product_id": product_id, "price": { "amount": 1, "currency": "EUR" } }),
    )
    .unwrap();
    let bus = SqliteLog::open(data.join("bus.db"), LogOptions::default()).unwrap();
    bus.publish("inventory", vec![forged.to_message()]).await.unwrap();
    bus.close().await;

    // The running orders service refuses it into the dead letters.
    let (ids, table) = wait_for_letters_other_than(&data, &[]).await;
    assert_eq!(ids.len(), 1, "{table}");
    for expected in ["inventory", "orders", "product_price_changed", "bad signature", &product_id] {
        assert!(table.contains(expected), "no {expected:?} in\n{table}");
    }
    let id = ids[0].to_string();
    let shown = ok(&data, &["dlq", "show", &id]).await;
    for expected in
        ["reason:     bad signature", "group:      orders", "ce-type: product_price_changed", "\"amount\": 1"]
    {
        assert!(shown.contains(expected), "no {expected:?} in\n{shown}");
    }
    assert!(!shown.contains("weir-dlq-"), "the original headers only:\n{shown}");

    // Redriven, the live process receives it again and, the signature still being wrong, gives
    // up on it again: a new letter replaces the old one.
    assert!(ok(&data, &["dlq", "redrive", &id]).await.contains(&format!("redriven {id} → inventory")));
    let (again, table) = wait_for_letters_other_than(&data, &ids).await;
    assert_eq!(again.len(), 1, "{table}");
    assert!(again[0] > ids[0]);

    // Bad requests say what to do and change nothing.
    let missing = refused(&data, &["dlq", "redrive", &again[0].to_string(), "999999"]).await;
    assert!(missing.contains("no dead letter 999999") && missing.contains("weir dlq list"), "{missing}");
    assert!(refused(&data, &["dlq", "show", "999999"]).await.contains("no dead letter 999999"));
    assert!(refused(&data, &["dlq", "redrive"]).await.contains("--all"), "ids or --all are required");
    let elsewhere = data.with_file_name("nowhere");
    let no_bus = refused(&elsewhere, &["dlq", "list"]).await;
    assert!(no_bus.contains("no Weir bus") && no_bus.contains("--data-dir"), "{no_bus}");
    assert!(!elsewhere.exists(), "a mistyped --data-dir is not created");
    assert_eq!(listed_ids(&ok(&data, &["dlq", "list"]).await), again);

    assert!(ok(&data, &["dlq", "discard", "--all"]).await.contains("1 dead letter(s) discarded."));
    assert!(ok(&data, &["dlq", "list"]).await.contains("No dead letters."));

    // The forged price never reached the orders it would have priced.
    let ada = client.register("ada@example.com").await;
    let order_id = client.place_order(&ada, &product_id, 1).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["total"]["amount"], product["price"]["amount"], "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follows_an_order_through_every_service_under_one_trace() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = client.products().await.into_iter().max_by_key(|p| p["available"].as_i64().unwrap()).unwrap();

    // After the registration's `user_registered` (the catalog is behind it): the order's five
    // messages. A tail started "from now" a fixed while before the order raced a loaded machine.
    let bus = SqliteLog::open(data.join("bus.db"), LogOptions::default()).unwrap();
    let after = wait_for_registration(&bus).await;
    let tail = tokio::spawn({
        let data = data.clone();
        async move { weir_on(&data, &["events", "tail", "--after", &after.to_string(), "--count", "5", "--json"]).await }
    });
    let product_id = product["product_id"].as_str().unwrap();
    let order_id = client.place_order(&ada, product_id, 1).await;
    let output = tokio::time::timeout(PATIENCE, tail).await.expect("tail stops after --count").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"]["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "order_created", "{kinds:?}");
    assert_eq!(kinds[4], "order_completed", "{kinds:?}");
    for kind in ["payment_successful", "stock_reserved", "complete_order"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let traces: std::collections::HashSet<&str> =
        lines.iter().map(|l| l["event"]["traceparent"].as_str().unwrap().split('-').nth(1).unwrap()).collect();
    assert_eq!(traces.len(), 1, "one trace: {traces:?}");
    assert!(lines.iter().all(|l| l["event"]["subject"] == order_id.as_str()));
    assert!(lines.windows(2).all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64()));

    // The text form: one line per message, position first.
    let text = stdout(&weir_on(&data, &["events", "tail", "--from-start", "--topic", "orders*", "--count", "3"]).await);
    let topics: Vec<&str> = text.lines().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(topics, ["orders", "orders.commands", "orders"], "{text}");
    assert!(text.contains(&format!("trace {}", traces.iter().next().unwrap())), "{text}");

    // Without a start, it follows from now: orders placed until it has printed one show only
    // what was published after it started.
    let before = bus.last_id().await.unwrap();
    let mut follow = tokio::spawn({
        let data = data.clone();
        async move { weir_on(&data, &["events", "tail", "--count", "1"]).await }
    });
    let deadline = Instant::now() + PATIENCE;
    let output = loop {
        client.place_order(&ada, product_id, 1).await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut follow).await {
            break done.unwrap();
        }
        assert!(Instant::now() < deadline, "tail printed nothing while orders were placed");
    };
    let line = stdout(&output);
    let position: i64 = line.split_whitespace().next().and_then(|p| p.parse().ok()).expect("a position");
    assert!(position > before, "{line}");
    bus.close().await;
}

/// Waits until the bus holds a `user_registered`; the last position then.
async fn wait_for_registration(bus: &SqliteLog) -> i64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let users = bus.browse(Browse { topics: Some("users".into()), after: 0, limit: 10 }).await.unwrap();
        if users.iter().any(|s| Event::from_message(&s.message).is_ok_and(|e| e.kind == "user_registered")) {
            return bus.last_id().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no user_registered on the bus");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_forgets_what_every_group_has_handled_after_its_retention() {
    let (_dir, data) = data_dir();
    let weir = Weir::start(&data, &["--bus-retention-hours", "0"]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = client.products().await.into_iter().max_by_key(|p| p["available"].as_i64().unwrap()).unwrap();
    let product_id = product["product_id"].as_str().unwrap();
    let first = client.place_order(&ada, product_id, 1).await;
    assert_eq!(client.wait_for_outcome(&ada.token, &first).await["status"], "COMPLETED");

    // The first prune runs ten seconds after the start.
    let deadline = Instant::now() + PATIENCE;
    let pruned = loop {
        let metrics = reqwest::get(format!("{}/metrics", weir.url)).await.unwrap().text().await.unwrap();
        let pruned = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_bus_pruned_total "))
            .map(|v| v.trim().parse::<f64>().unwrap());
        if let Some(pruned) = pruned {
            break pruned;
        }
        assert!(Instant::now() < deadline, "the bus was never pruned");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The catalog, the registration and the order's five messages, at least.
    assert!(pruned >= 5.0, "{pruned}");

    // Consumers carry on from their positions, and the oldest order message left is the new
    // order's: the first one's are gone.
    let second = client.place_order(&ada, product_id, 1).await;
    assert_eq!(client.wait_for_outcome(&ada.token, &second).await["status"], "COMPLETED");
    assert_eq!(client.wait_for_notifications(&ada.token, 2).await.len(), 2);
    let oldest =
        stdout(&weir_on(&data, &["events", "tail", "--from-start", "--topic", "orders*", "--count", "1"]).await);
    assert!(oldest.contains("order_created") && oldest.contains(&second), "{oldest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_damaged_read_model_of_a_stopped_weir_up() {
    let (_dir, data) = data_dir();
    let mut weir = Weir::start(&data, &[]).await;
    let client = weir.client();
    let ada = client.register("ada@example.com").await;
    let product = client.products().await.into_iter().max_by_key(|p| p["available"].as_i64().unwrap()).unwrap();
    let order_id = client.place_order(&ada, product["product_id"].as_str().unwrap(), 2).await;
    let before = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(before["status"], "COMPLETED");

    // Not while it runs: the read model would be half built under its readers.
    let busy = refused(&data, &["replay", "orders.order_views"]).await;
    assert!(busy.contains("another `weir up`") && busy.contains("stop it first"), "{busy}");
    assert!(weir.interrupt().success());

    // The read model is damaged (say, by a bug in an older version of its projection).
    let db = SqliteDatabase::open(data.join("orders.db")).unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE order_views SET status = 'PENDING', total_amount = 0", &[]).await.unwrap();
    tx.commit().await.unwrap();
    drop(db);

    let unknown = refused(&data, &["replay", "orders.views"]).await;
    assert!(unknown.contains("no projection \"orders.views\"") && unknown.contains("orders.order_views"), "{unknown}");
    let replayed = ok(&data, &["replay", "orders.order_views"]).await;
    assert!(replayed.starts_with("Replayed 2 events into orders.order_views"), "{replayed}");

    let weir = weir.restart().await;
    let after: serde_json::Value = weir.client().order(&ada.token, &order_id).await.json().await.unwrap();
    assert_eq!(after, before, "rebuilt from the events");
}
