//! Crash tests: a worker publishing through the outbox and consuming through the inbox is killed
//! with SIGKILL at random moments, many times; after the last restart, counting proves that every
//! committed event was delivered and no handler effect happened twice.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rand::Rng;
use weir_core::{Db, Event};

const WORKER: &str = env!("CARGO_BIN_EXE_crash-worker");
const TOTAL: i64 = 3000;
const KILLS: usize = 12;

fn run_and_kill(args: &[String], secret: &str) {
    let mut rng = rand::rng();
    for _ in 0..KILLS {
        let mut child = Command::new(WORKER)
            .args(args)
            .env("WEIR_CRASH_SECRET", secret)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning the crash worker");
        std::thread::sleep(Duration::from_millis(rng.random_range(50..700)));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
    }
    let started = Instant::now();
    let mut args = args.to_vec();
    args.push("--finish".into());
    let mut child =
        Command::new(WORKER).args(&args).env("WEIR_CRASH_SECRET", secret).stdout(Stdio::null()).spawn().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the final run must finish cleanly, got {status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            child.kill().unwrap();
            panic!("the final run did not finish within 180 s: events were lost or stuck");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn one(db: &Db, sql: &str) -> i64 {
    db.query(sql, &[]).await.unwrap()[0].i64(0).unwrap()
}

async fn assert_exactly_once(db: &Db, subscriber: &dyn weir_core::Subscriber) {
    assert_eq!(one(db, "SELECT COUNT(*) FROM produced").await, TOTAL, "every event was produced once");
    assert_eq!(one(db, "SELECT COUNT(DISTINCT n) FROM effects").await, TOTAL, "every committed event had its effect");
    assert_eq!(one(db, "SELECT COUNT(*) FROM effects").await, TOTAL, "no effect happened twice");
    // Every output reached the bus at least once.
    let mut sub = subscriber.subscribe("crash-done", "verifier").await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while (seen.len() as i64) < TOTAL {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {TOTAL} outputs reached the bus", seen.len()))
            .unwrap();
        let n = Event::from_message(&d.message).unwrap().data::<serde_json::Value>().unwrap()["n"].as_i64().unwrap();
        seen.insert(n);
        d.ack().await.unwrap();
    }
}

fn secret() -> String {
    hex::encode(weir_core::Keyring::random_secret())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite_outbox_and_inbox_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret();
    let args = vec!["sqlite".into(), dir.path().display().to_string(), TOTAL.to_string()];
    tokio::task::spawn_blocking(move || run_and_kill(&args, &secret)).await.unwrap();
    let db: Db = std::sync::Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.path().join("app.db")).unwrap());
    let log = weir_store_sqlite::SqliteLog::open(dir.path().join("bus.db"), Default::default()).unwrap();
    assert_exactly_once(&db, &log).await;
}

/// The worker on PostgreSQL and the bus at `bus_url`, killed again and again; then counted.
async fn crash_distributed(bus_url: &str) {
    let name = format!("weir_crash_{}", uuid::Uuid::now_v7().simple());
    let admin = std::env::var("WEIR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| weir_store_postgres::DEFAULT_TEST_ADMIN_URL.to_owned());
    weir_store_postgres::create_database(&admin, &name).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {admin} is needed (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): {e}")
    });
    let url = format!("{}/{name}", admin.rsplit_once('/').expect("a URL with a database path").0);
    let prefix = format!("crash{}", uuid::Uuid::now_v7().simple());
    let secret = secret();
    let args = vec!["distributed".into(), url.clone(), bus_url.to_owned(), prefix.clone(), TOTAL.to_string()];
    tokio::task::spawn_blocking(move || run_and_kill(&args, &secret)).await.unwrap();
    let db: Db = std::sync::Arc::new(weir_store_postgres::PgDatabase::connect(&url).await.unwrap());
    let settings = weir_bus::Settings { prefix, redelivery: Duration::from_secs(3), member: None };
    let bus = weir_bus::Bus::connect(bus_url, &[], &settings)
        .await
        .unwrap_or_else(|e| panic!("{e} (scripts/services starts the machine's brokers)"));
    assert_exactly_once(&db, bus.transport.subscriber.as_ref()).await;
    bus.close().await;
    let _ = weir_store_postgres::drop_database(&admin, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_and_nats_outbox_and_inbox_survive_sigkill() {
    crash_distributed("nats://127.0.0.1:4222").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_and_kafka_outbox_and_inbox_survive_sigkill() {
    // A broker of the test's own, which outlives every worker it kills.
    let tansu = weir_testkit::server::tansu();
    crash_distributed(&format!("kafka://127.0.0.1:{}?batch_messages=1", tansu.port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_and_rabbitmq_outbox_and_inbox_survive_sigkill() {
    // The broker forgets the test's queues a minute after it ends: soon, so that a run's
    // queues do not expire all together later (hundreds at once stalled RabbitMQ for minutes).
    crash_distributed("amqp://guest:guest@127.0.0.1:5672/%2f?queue_expiry=60").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_and_redis_outbox_and_inbox_survive_sigkill() {
    crash_distributed("redis://127.0.0.1:6379").await;
}
