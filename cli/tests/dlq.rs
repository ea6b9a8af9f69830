//! `weir dlq` beside a running `weir up`, as an operator meets it: a forged event that the live
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
use weir_core::{Event, Publisher};
use weir_store_sqlite::{LogOptions, SqliteLog};

async fn dlq(data: &Path, args: &[&str]) -> Output {
    let (data, args): (String, Vec<String>) =
        (data.display().to_string(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("dlq")
            .args(&args)
            .args(["--data-dir", &data])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed; its standard output.
async fn ok(data: &Path, args: &[&str]) -> String {
    let output = dlq(data, args).await;
    assert!(output.status.success(), "weir dlq {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    stdout(&output)
}

/// Runs a command that must fail; its standard error.
async fn refused(data: &Path, args: &[&str]) -> String {
    let output = dlq(data, args).await;
    assert!(!output.status.success(), "weir dlq {args:?} succeeded: {}", stdout(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The ids in the first column of `weir dlq list`'s table.
fn listed_ids(table: &str) -> Vec<i64> {
    table.lines().filter_map(|l| l.trim_start_matches('│').split('┆').next()?.trim().parse().ok()).collect()
}

/// Lists until the letters differ from `before`; the new list's ids.
async fn wait_for_letters_other_than(data: &Path, before: &[i64]) -> (Vec<i64>, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let table = ok(data, &["list"]).await;
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
    assert!(ok(&data, &["list"]).await.contains("No dead letters."));

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
    let shown = ok(&data, &["show", &id]).await;
    for expected in
        ["reason:     bad signature", "group:      orders", "ce-type: product_price_changed", "\"amount\": 1"]
    {
        assert!(shown.contains(expected), "no {expected:?} in\n{shown}");
    }
    assert!(!shown.contains("weir-dlq-"), "the original headers only:\n{shown}");

    // Redriven, the live process receives it again and, the signature still being wrong, gives
    // up on it again: a new letter replaces the old one.
    assert!(ok(&data, &["redrive", &id]).await.contains(&format!("redriven {id} → inventory")));
    let (again, table) = wait_for_letters_other_than(&data, &ids).await;
    assert_eq!(again.len(), 1, "{table}");
    assert!(again[0] > ids[0]);

    // Bad requests say what to do and change nothing.
    let missing = refused(&data, &["redrive", &again[0].to_string(), "999999"]).await;
    assert!(missing.contains("no dead letter 999999") && missing.contains("weir dlq list"), "{missing}");
    assert!(refused(&data, &["show", "999999"]).await.contains("no dead letter 999999"));
    assert!(refused(&data, &["redrive"]).await.contains("--all"), "ids or --all are required");
    let elsewhere = data.with_file_name("nowhere");
    let no_bus = refused(&elsewhere, &["list"]).await;
    assert!(no_bus.contains("no Weir bus") && no_bus.contains("--data-dir"), "{no_bus}");
    assert!(!elsewhere.exists(), "a mistyped --data-dir is not created");
    assert_eq!(listed_ids(&ok(&data, &["list"]).await), again);

    assert!(ok(&data, &["discard", "--all"]).await.contains("1 dead letter(s) discarded."));
    assert!(ok(&data, &["list"]).await.contains("No dead letters."));

    // The forged price never reached the orders it would have priced.
    let ada = client.register("ada@example.com").await;
    let order_id = client.place_order(&ada, &product_id, 1).await;
    let view = client.wait_for_outcome(&ada.token, &order_id).await;
    assert_eq!(view["total"]["amount"], product["price"]["amount"], "{view}");
}
