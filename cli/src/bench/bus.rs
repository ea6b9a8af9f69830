//! `weir bench bus`: the kernel's moving parts — the SQLite log and the event stores.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;

use super::{latency_histogram, ms, per_second, progress, table};
use weir_core::{
    Db, Event, Publisher, Subscriber,
    bus::Message,
    store::{
        self,
        event_store::{self, ExpectedVersion},
    },
};

#[derive(Args)]
pub struct BusArgs {
    /// Messages to push through the SQLite log.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Messages per publish call (each call is one durable commit, or part of one).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Events to append to each event store.
    #[arg(long, default_value_t = 100_000)]
    appends: u64,
    /// Events per append transaction.
    #[arg(long, default_value_t = 100)]
    append_batch: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 8)]
    writers: u64,
    /// PostgreSQL server for the append benchmark (a scratch database is created and dropped).
    #[arg(long, env = "WEIR_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Leave PostgreSQL out.
    #[arg(long)]
    no_postgres: bool,
    /// Directory for the SQLite files (default: a temporary directory on the same disk as /tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct Row {
    what: String,
    count: u64,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
}

pub async fn run(args: BusArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let mut rows = vec![sqlite_log(&args, tmp.path()).await?];
    let sqlite: Db = Arc::new(weir_store_sqlite::SqliteDatabase::open(tmp.path().join("events.db"))?);
    rows.push(appends("event store append (SQLite)", sqlite, &args).await?);
    if !args.no_postgres {
        let name = format!("weir_bench_{}", uuid::Uuid::now_v7().simple());
        weir_store_postgres::create_database(&args.postgres_url, &name).await.with_context(|| {
            format!(
                "PostgreSQL at {} is not reachable: start it, point --postgres-url at another, or pass --no-postgres",
                args.postgres_url
            )
        })?;
        let url =
            format!("{}/{name}", args.postgres_url.rsplit_once('/').context("--postgres-url needs a database path")?.0);
        let pg: Db = Arc::new(weir_store_postgres::PgDatabase::connect(&url).await?);
        let row = appends("event store append (PostgreSQL)", pg.clone(), &args).await;
        drop(pg);
        let _ = weir_store_postgres::drop_database(&args.postgres_url, &name).await;
        rows.push(row?);
    }
    print_table(&rows);
    Ok(())
}

/// Publishes `messages` in batches while one consumer acks them; latency is publish call → ack.
async fn sqlite_log(args: &BusArgs, dir: &std::path::Path) -> anyhow::Result<Row> {
    let log = weir_store_sqlite::SqliteLog::open(dir.join("bus.db"), Default::default())?;
    let topic = "bench";
    let mut subscription = log.subscribe(topic, "bench-consumer").await?;
    let origin = Instant::now();
    let total = args.messages;
    let bar = progress(total, "SQLite log publish→ack");
    let consumer = tokio::spawn({
        let bar = bar.clone();
        async move {
            let mut latency = latency_histogram();
            let mut received = 0u64;
            while received < total {
                let Some(d) = subscription.next().await else { break };
                let sent = u64::from_le_bytes(d.message.payload[..8].try_into().unwrap());
                d.ack().await?;
                let now = origin.elapsed().as_micros() as u64;
                latency.saturating_record(now.saturating_sub(sent).max(1));
                received += 1;
                if received.is_multiple_of(1000) {
                    bar.set_position(received);
                }
            }
            anyhow::Ok((received, latency))
        }
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let filler = vec![b'x'; args.payload.saturating_sub(8)];
    while sent < total {
        let n = (args.batch as u64).min(total - sent);
        let stamp = (origin.elapsed().as_micros() as u64).to_le_bytes();
        let batch: Vec<Message> = (0..n)
            .map(|i| {
                let mut payload = Vec::with_capacity(args.payload.max(8));
                payload.extend_from_slice(&stamp);
                payload.extend_from_slice(&filler);
                Message::new(format!("key-{}", (sent + i) % 64), payload)
            })
            .collect();
        log.publish(topic, batch).await?;
        sent += n;
    }
    let (received, latency) = consumer.await??;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    anyhow::ensure!(received == total, "only {received} of {total} messages came back");
    Ok(Row { what: "SQLite log publish→consume→ack".into(), count: total, elapsed, latency: Some(latency) })
}

/// Concurrent writers append `append_batch` events per transaction to their own streams.
async fn appends(what: &str, db: Db, args: &BusArgs) -> anyhow::Result<Row> {
    store::install(db.as_ref()).await?;
    let per_writer = args.appends / args.writers.max(1);
    let bar = progress(per_writer * args.writers, what);
    let data = serde_json::json!({ "sku": "sku-1", "qty": 2, "price": 1999 });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (db, bar, data, batch) = (db.clone(), bar.clone(), data.clone(), args.append_batch.max(1));
        tasks.push(tokio::spawn(async move {
            let mut latency = latency_histogram();
            let mut done = 0u64;
            let mut stream_no = 0;
            while done < per_writer {
                let n = batch.min(per_writer - done);
                let stream = format!("bench-{w}-{stream_no}");
                stream_no += 1;
                let events: Vec<Event> =
                    (0..n).map(|_| Event::new("bench", "item_added", &stream, &data)).collect::<Result<_, _>>()?;
                let t = Instant::now();
                let mut tx = db.begin().await?;
                event_store::append(tx.as_mut(), db.dialect(), &stream, ExpectedVersion::NoStream, &events).await?;
                tx.commit().await?;
                latency.saturating_record(t.elapsed().as_micros() as u64);
                done += n;
                bar.inc(n);
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency = latency_histogram();
    for t in tasks {
        latency.add(t.await??)?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let stored = event_store::read_all(db.as_ref(), 0, i64::MAX).await?.len() as u64;
    anyhow::ensure!(
        stored == per_writer * args.writers,
        "stored {stored} events, expected {}",
        per_writer * args.writers
    );
    Ok(Row {
        what: format!("{what}, {} per commit", args.append_batch),
        count: stored,
        elapsed,
        latency: Some(latency),
    })
}

fn print_table(rows: &[Row]) {
    let mut table = table(&["benchmark", "events", "seconds", "events/s", "p50", "p99"]);
    for r in rows {
        let (p50, p99) = r.latency.as_ref().map_or(("-".into(), "-".into()), |h| (ms(h, 0.5), ms(h, 0.99)));
        table.add_row([
            r.what.clone(),
            r.count.to_string(),
            format!("{:.2}", r.elapsed.as_secs_f64()),
            per_second(r.count, r.elapsed),
            p50,
            p99,
        ]);
    }
    println!("{table}");
    println!("Latency: SQLite log = publish call → ack; appends = begin → durable commit of one batch.");
}
