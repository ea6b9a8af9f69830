//! Measures publish → consume → ack throughput of `SqliteLog` with durable settings.
//!
//! `cargo run --release -p weir-store-sqlite --example throughput -- [messages] [dir]`
//!
//! Publishers send batches of 500 messages (64 keys, 100-byte payloads) while one subscription
//! acks every delivery; the clock stops when the last message is acked. The directory defaults
//! to a temporary one; pass a path on the disk you care about.

use std::time::Instant;

use weir_core::bus::{Message, Publisher, Subscriber};
use weir_store_sqlite::{LogOptions, SqliteLog};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = args.next().map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let log = SqliteLog::open(dir.join("throughput.sqlite"), LogOptions::default()).expect("open the log");
    let mut sub = log.subscribe("bench", "bench").await.expect("subscribe");
    let payload = vec![b'x'; 100];

    let started = Instant::now();
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let log = log.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut sent = p * 500;
                while sent < total {
                    let batch: Vec<Message> = (sent..(sent + 500).min(total))
                        .map(|i| Message::new(format!("key-{}", i % 64), payload.clone()))
                        .collect();
                    log.publish("bench", batch).await.expect("publish");
                    sent += 1000;
                }
            })
        })
        .collect();
    for _ in 0..total {
        let delivery = sub.next().await.expect("delivery");
        delivery.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    for p in publishers {
        p.await.expect("publisher");
    }
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("{total} messages published, consumed and acked in {elapsed:.2?}: {rate:.0} messages/s");
    log.close().await;
}
