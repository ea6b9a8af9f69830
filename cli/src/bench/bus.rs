//! `weir bench bus`: the kernel's moving parts — every transport beside its broker's own client
//! ([`transports`]), and the event stores.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;

use super::{
    latency_histogram, ms, per_second, progress, table,
    transports::{
        self, Adapter, Client, Kind, Sizes,
        raw_kafka::{self, RawKafka},
        raw_nats::{self, RawNats},
        raw_rabbitmq::{self, RawRabbit},
        raw_redis::{self, RawRedis},
    },
};
use weir_core::{
    Db, Event,
    bus::Transport,
    store::{
        self,
        event_store::{self, ExpectedVersion},
    },
};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  weir bench bus                          # every transport, then the event stores\n  \
weir bench bus --transport kafka --transport nats --no-appends\n\
Brokers at their standard ports on 127.0.0.1 unless told otherwise; scripts/tansu builds a \
Kafka-protocol broker to run as one."
)]
pub struct BusArgs {
    /// The transports to measure, each beside its broker's own client (repeat the flag).
    #[arg(long = "transport", value_enum, default_values_t = [Kind::Sqlite, Kind::Nats, Kind::Kafka, Kind::Rabbitmq, Kind::Redis])]
    transports: Vec<Kind>,
    /// Messages each client publishes, then consumes.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Messages per publish call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Single-message publishes of the end-to-end latency run.
    #[arg(long, default_value_t = 2_000)]
    e2e_messages: u64,
    /// Their pace, per second.
    #[arg(long, default_value_t = 500)]
    e2e_rate: u64,
    /// NATS with JetStream.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// A Kafka broker (or a Kafka-protocol one, such as tansu).
    #[arg(long, default_value = "kafka://127.0.0.1:9092")]
    kafka_url: String,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Leave the event-store append benchmarks out.
    #[arg(long)]
    no_appends: bool,
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
    let sizes = Sizes {
        messages: args.messages,
        batch: args.batch.max(1),
        payload: args.payload,
        e2e_messages: args.e2e_messages,
        e2e_rate: args.e2e_rate,
    };
    let mut kinds = args.transports.clone();
    kinds.dedup();
    let mut measured = Vec::new();
    // The brokers' topics of this run are under this prefix, to be deleted after it.
    let prefix = format!("bench{}", uuid::Uuid::now_v7().simple());
    for kind in kinds {
        let (adapter, raw) = clients(kind, &args, &prefix, tmp.path()).await?;
        let label = format!("{kind:?}").to_lowercase();
        let figures = transports::measure(&label, adapter, &sizes).await?;
        measured.push(transports::Row { transport: kind, client: "weir", figures });
        if let Some((name, raw)) = raw {
            let figures = transports::measure(&format!("{label} ({name})"), raw, &sizes).await?;
            measured.push(transports::Row { transport: kind, client: name, figures });
        }
        if kind == Kind::Nats {
            RawNats::connect(&args.nats_url).await?.clean(&[raw_nats::RAW_PREFIX, &prefix]).await?;
        }
        if kind == Kind::Rabbitmq {
            raw_rabbitmq::clean(&args.amqp_url, &prefix).await?;
        }
        if kind == Kind::Redis {
            RawRedis::connect(&args.redis_url).await?.clean(&[raw_redis::RAW_PREFIX, &prefix]).await?;
        }
    }
    transports::print(&measured, &sizes);
    if args.no_appends {
        return Ok(());
    }
    let mut rows = Vec::new();
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

type Named = Option<(&'static str, Arc<dyn Client>)>;

/// The adapter of `kind` and, for a broker, its own client beside it.
async fn clients(
    kind: Kind,
    args: &BusArgs,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn Client>, Named)> {
    let adapter = |transport| -> Arc<dyn Client> { Arc::new(Adapter(transport)) };
    Ok(match kind {
        Kind::Sqlite => {
            let log = weir_store_sqlite::SqliteLog::open(dir.join("bus.db"), Default::default())?;
            (adapter(Transport::of(log)), None)
        }
        Kind::Nats => {
            let bus = crate::bus::connect_one(&args.nats_url, prefix).await?;
            let raw = RawNats::connect(&args.nats_url).await?;
            (adapter(bus), Some(("async-nats", Arc::new(raw) as Arc<dyn Client>)))
        }
        Kind::Kafka => {
            let bus = crate::bus::connect_one(&args.kafka_url, prefix)
                .await
                .with_context(|| raw_kafka::how_to_run_a_broker(&args.kafka_url))?;
            let raw = RawKafka::connect(&args.kafka_url).await?;
            (adapter(bus), Some(("rdkafka", Arc::new(raw) as Arc<dyn Client>)))
        }
        Kind::Rabbitmq => {
            let bus = crate::bus::connect_one(&args.amqp_url, prefix).await?;
            let raw = RawRabbit::connect(&args.amqp_url).await?;
            (
                Arc::new(raw_rabbitmq::Tracked(adapter(bus))) as Arc<dyn Client>,
                Some(("lapin", Arc::new(raw) as Arc<dyn Client>)),
            )
        }
        Kind::Redis => {
            let bus = crate::bus::connect_one(&args.redis_url, prefix).await?;
            let raw = RawRedis::connect(&args.redis_url).await?;
            (adapter(bus), Some(("redis-rs", Arc::new(raw) as Arc<dyn Client>)))
        }
    })
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
    println!("Latency: begin → durable commit of one batch.");
}
