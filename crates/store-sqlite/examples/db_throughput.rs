//! Measures durable transactions per second of `SqliteDatabase` under concurrency, where group
//! commit shares one fsync among the transactions waiting for it.
//!
//! `cargo run --release -p weir-store-sqlite --example db_throughput -- [transactions] [tasks]`

use std::{sync::Arc, time::Instant};

use weir_core::db::Database;
use weir_store_sqlite::SqliteDatabase;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let tasks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Arc::new(SqliteDatabase::open(dir.path().join("db.sqlite")).expect("open"));
    let mut tx = db.begin().await.expect("begin");
    tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)", &[]).await.expect("create");
    tx.commit().await.expect("commit");

    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in (w..total).step_by(tasks) {
                    let mut tx = db.begin().await.expect("begin");
                    tx.execute(
                        "INSERT INTO t (id, body) VALUES ($1, $2)",
                        &[(i as i64).into(), "x".repeat(100).into()],
                    )
                    .await
                    .expect("insert");
                    tx.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    println!(
        "{total} durable transactions from {tasks} tasks in {elapsed:.2?}: {:.0} transactions/s",
        total as f64 / elapsed.as_secs_f64()
    );
}
