//! The fault injectors do what they claim, so tests that rely on them can fail.

use std::{sync::Arc, time::Duration};

use weir_core::{
    bus::{Message, Publisher, Subscriber},
    fault::DuplicateDeliveries,
};
use weir_store_sqlite::{LogOptions, SqliteLog};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_deliver_each_message_twice_and_ack_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path().join("bus.db"), LogOptions::default()).unwrap();
    let messages = (0..3).map(|n| Message::new("k", format!("m{n}").into_bytes())).collect();
    log.publish("t", messages).await.unwrap();

    let doubled = DuplicateDeliveries::new(Arc::new(log.clone()));
    let mut subscription = doubled.subscribe("t", "g").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.unwrap().unwrap();
        seen.push(String::from_utf8(delivery.message.payload.to_vec()).unwrap());
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen, ["m0", "m0", "m1", "m1", "m2", "m2"]);
    assert!(tokio::time::timeout(Duration::from_millis(300), subscription.next()).await.is_err(), "nothing more");
    drop(subscription);

    // Only the second delivery's ack reached the log: a new member of the group sees nothing.
    let mut again = log.subscribe("t", "g").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(700), again.next()).await.is_err(), "all acked");
}
