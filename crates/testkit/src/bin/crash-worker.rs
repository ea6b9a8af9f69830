//! The process the crash tests kill. It produces `total` numbered events through the outbox
//! (recording each in `produced` in the same transaction), consumes them through the router
//! (recording each in `effects`, deliberately without a unique constraint, so a second effect
//! would show), and emits one output per event to `crash-done`. On restart it continues from
//! what was committed. With `--finish` it exits 0 once every event has had its effect and the
//! outbox is empty.
//!
//! Usage: crash-worker sqlite <dir> <total> [--finish]
//!        crash-worker distributed <postgres-url> <bus-url> <bus-prefix> <total> [--finish]
//! where `<bus-url>` is any transport `weir serve --bus` takes (`nats://`, `kafka://`, `amqp://`,
//! `redis://`), with a redelivery wait of three seconds.
//! The signing secret comes from `WEIR_CRASH_SECRET` (hex), so restarts verify old events.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir_core::{
    Context, Db, Event, Handler, HandlerError, Kernel, Keyring, Outgoing, Router, RouterOptions,
    bus::{Publisher, Subscriber},
    db::{self, Migration},
    store::{self, outbox::Outbox},
};

pub const WORK: &str = "crash-work";
pub const DONE: &str = "crash-done";

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "crash tables",
    sqlite: "CREATE TABLE produced (n BIGINT PRIMARY KEY); CREATE TABLE effects (event_id TEXT NOT NULL, n BIGINT NOT NULL)",
    postgres: "CREATE TABLE produced (n BIGINT PRIMARY KEY); CREATE TABLE effects (event_id TEXT NOT NULL, n BIGINT NOT NULL)",
}];

struct Effect;

#[async_trait]
impl Handler for Effect {
    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let n = event.data::<serde_json::Value>()?["n"].as_i64().ok_or_else(|| HandlerError::permanent("no n"))?;
        ctx.tx()
            .execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &[event.id.to_string().into(), n.into()])
            .await?;
        let out = Event::new("crash-worker", "work_done", &event.subject, &json!({ "n": n })).unwrap();
        Ok(vec![Outgoing::new(DONE, out)])
    }
}

async fn count(db: &Db, sql: &str) -> anyhow::Result<i64> {
    Ok(db.query(sql, &[]).await?.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0))
}

async fn open(args: &[String]) -> anyhow::Result<(Db, Arc<dyn Publisher>, Arc<dyn Subscriber>, i64)> {
    match args.first().map(String::as_str) {
        Some("sqlite") => {
            let dir = std::path::PathBuf::from(args.get(1).context("missing <dir>")?);
            let total = args.get(2).context("missing <total>")?.parse()?;
            let db: Db = Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.join("app.db"))?);
            let log = weir_store_sqlite::SqliteLog::open(dir.join("bus.db"), Default::default())?;
            Ok((db, Arc::new(log.clone()), Arc::new(log), total))
        }
        Some("distributed") => {
            let url = args.get(1).context("missing <postgres-url>")?;
            let bus_url = args.get(2).context("missing <bus-url>")?;
            let prefix = args.get(3).context("missing <bus-prefix>")?;
            let total = args.get(4).context("missing <total>")?.parse()?;
            let db: Db = Arc::new(weir_store_postgres::PgDatabase::connect(url).await?);
            let settings = weir_bus::Settings {
                prefix: prefix.clone(),
                redelivery: Duration::from_secs(3),
                member: Some("crash-worker".to_owned()),
            };
            let bus = weir_bus::Bus::connect(bus_url, &[], &settings).await?;
            Ok((db, bus.transport.publisher, bus.transport.subscriber, total))
        }
        _ => bail!(
            "usage: crash-worker sqlite <dir> <total> | distributed <postgres-url> <bus-url> <bus-prefix> <total> [--finish]"
        ),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let finish = args.iter().any(|a| a == "--finish");
    let secret = hex::decode(std::env::var("WEIR_CRASH_SECRET").context("WEIR_CRASH_SECRET (hex) is required")?)?;
    let (db, publisher, subscriber, total) = open(&args).await?;
    store::install(db.as_ref()).await?;
    db::migrate(db.as_ref(), "crash-worker", MIGRATIONS).await?;

    let outbox = Outbox::new(Keyring::new("crash", secret));
    let kernel = Kernel { db: db.clone(), outbox: outbox.clone(), publisher, subscriber };
    let shutdown = CancellationToken::new();
    let options = RouterOptions { concurrency: 16, ..Default::default() };
    let router =
        tokio::spawn(Router::new(kernel.clone(), options).route(WORK, "crash-consumer", Effect).run(shutdown.clone()));
    let relay = tokio::spawn(outbox.relay(db.clone(), kernel.publisher.clone()).run(shutdown.clone()));

    // Produce the rest, ten per transaction, each recorded with its event.
    loop {
        let next = count(&db, "SELECT COALESCE(MAX(n), 0) + 1 FROM produced").await?;
        if next > total {
            break;
        }
        let mut tx = db.begin().await?;
        let mut events = Vec::new();
        for n in next..=(next + 9).min(total) {
            tx.execute("INSERT INTO produced (n) VALUES ($1)", &[n.into()]).await?;
            events.push(Event::new("crash-worker", "work", format!("key-{}", n % 16), &json!({ "n": n }))?);
        }
        outbox.enqueue(tx.as_mut(), WORK, events).await?;
        outbox.commit(tx).await?;
    }
    println!("PRODUCED {total}");

    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let effects = count(&db, "SELECT COUNT(DISTINCT n) FROM effects").await?;
        let backlog = store::outbox::backlog(db.as_ref()).await?;
        if finish && effects == total && backlog == 0 {
            break;
        }
    }
    shutdown.cancel();
    router.await??;
    relay.await?;
    println!("DONE");
    Ok(())
}
