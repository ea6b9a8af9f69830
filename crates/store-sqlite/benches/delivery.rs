//! The database work of handled deliveries on the embedded store, with its durable settings
//! (WAL, `synchronous=FULL`): what the router does in one transaction for each delivery —
//! record the event in the inbox, change the service's state, put the output event in the
//! outbox — then one commit.
//!
//! - `alone`: one delivery, one transaction (a quiet service: the fsync dominates);
//! - `batch of 64`: one transaction for 64 deliveries, as the router batches a backlog;
//! - `64 concurrent`: 64 single-delivery transactions at once, which group commit shares
//!   between fsyncs (what separate routes and services see).
//!
//! Criterion reports deliveries per second. The database lives in a temporary directory; set
//! `TMPDIR` to measure another disk.
//!
//! `cargo bench -p weir-store-sqlite --bench delivery`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use weir_core::{
    db::{Database, Transaction},
    event::Event,
    signing::Keyring,
    store::{self, inbox, outbox::Outbox},
};
use weir_store_sqlite::SqliteDatabase;

/// A delivery's work inside its transaction: inbox, state change, output.
async fn handle(tx: &mut dyn Transaction, outbox: &Outbox, events: &[Event]) {
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    let fresh = inbox::record_many(tx, "bench", &ids).await.expect("inbox");
    assert_eq!(fresh.len(), events.len(), "every event is new");
    let mut outputs = Vec::with_capacity(events.len());
    for event in events {
        tx.execute(
            "INSERT INTO reservations (order_id, quantity) VALUES ($1, 1)
             ON CONFLICT (order_id) DO UPDATE SET quantity = quantity + 1",
            &[event.subject.as_str().into()],
        )
        .await
        .expect("state change");
        outputs.push(incoming().caused_by(event));
    }
    outbox.enqueue(tx, "inventory", outputs).await.expect("outbox");
}

async fn deliver(db: &SqliteDatabase, outbox: &Outbox, events: &[Event]) {
    let mut tx = db.begin().await.expect("begin");
    handle(tx.as_mut(), outbox, events).await;
    tx.commit().await.expect("commit");
}

fn incoming() -> Event {
    let order = uuid::Uuid::now_v7().to_string();
    Event::new("weir/payments", "payment_successful", &order, &serde_json::json!({"order_id": order, "amount": 3399}))
        .expect("plain JSON serialises")
}

fn delivery(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = SqliteDatabase::open(dir.path().join("bench.db")).expect("open");
    runtime.block_on(async {
        store::install(&db).await.expect("kernel tables");
        let mut tx = db.begin().await.expect("begin");
        tx.execute("CREATE TABLE reservations (order_id TEXT PRIMARY KEY, quantity BIGINT NOT NULL)", &[])
            .await
            .expect("table");
        tx.commit().await.expect("commit");
    });
    let outbox = Arc::new(Outbox::new(Keyring::generate("bench")));

    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(1));
    group.bench_function("alone", |b| {
        b.to_async(&runtime).iter_batched(
            || vec![incoming()],
            |events| {
                let (db, outbox) = (&db, &outbox);
                async move { deliver(db, outbox, &events).await }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("batch of 64", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..64).map(|_| incoming()).collect::<Vec<_>>(),
            |events| {
                let (db, outbox) = (&db, &outbox);
                async move { deliver(db, outbox, &events).await }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("64 concurrent", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..64).map(|_| vec![incoming()]).collect::<Vec<_>>(),
            |deliveries| {
                let (db, outbox) = (db.clone(), outbox.clone());
                async move {
                    let tasks = deliveries.into_iter().map(|events| {
                        let (db, outbox) = (db.clone(), outbox.clone());
                        tokio::spawn(async move { deliver(&db, &outbox, &events).await })
                    });
                    for task in join_all(tasks).await {
                        task.expect("delivery task");
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, delivery);
criterion_main!(benches);
