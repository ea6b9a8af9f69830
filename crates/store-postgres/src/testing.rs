//! Databases for tests and first-run setup: [`connect_or_create`] is how a service meets its
//! database on first start.
//!
//! [`fresh_test_database`] gives every test its own empty database on the local server, so tests
//! run in parallel without seeing each other's rows. It panics — loudly, with the command that
//! fixes it — when the server is not running: a test that needs PostgreSQL never passes by
//! skipping.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use tokio_postgres::{NoTls, error::SqlState};
use tracing::debug;
use weir_core::db::{Error, Result};

use crate::{
    database::{Options, PgDatabase},
    error::from_postgres,
};

/// The server `fresh_test_database` uses unless `WEIR_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_TEST_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of every database `fresh_test_database` creates.
pub const TEST_DATABASE_PREFIX: &str = "weir_test_";

/// Test databases older than this are dropped by the next test run. Generous, so that a
/// concurrent, slow run never loses its database.
const STALE_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// Creates database `name` on the server at `admin_url` (a URL to any database there, usually
/// `postgres`), unless it exists already. Safe to call from several processes at once.
///
/// `name` must be a plain identifier (ASCII letters, digits, `_`), since it cannot be sent as a
/// parameter.
pub async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    create_database_at(parse(admin_url)?, name).await
}

async fn create_database_at(admin: tokio_postgres::Config, name: &str) -> Result<()> {
    check_identifier(name)?;
    let admin = admin_connect_to(admin).await?;
    match admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await {
        Ok(()) => Ok(()),
        // 23505: two sessions raced to create it; the other one won. Either way it exists.
        Err(e) if matches!(e.code(), Some(c) if *c == SqlState::DUPLICATE_DATABASE || *c == SqlState::UNIQUE_VIOLATION) => {
            Ok(())
        }
        Err(e) => Err(from_postgres(e)),
    }
}

/// Drops database `name` on the server at `admin_url` if it exists, disconnecting its sessions.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    check_identifier(name)?;
    let admin = admin_connect(admin_url).await?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.map_err(from_postgres)
}

/// A new, empty database named `weir_test_<uuid>` on the local test server
/// (`WEIR_TEST_POSTGRES_URL`, default [`DEFAULT_TEST_ADMIN_URL`]).
///
/// # Panics
/// When the server cannot be reached or refuses, with a message saying how to start it.
/// This is a test helper: failing loudly is its job.
pub async fn fresh_test_database() -> PgDatabase {
    fresh_test_database_with(Options::default()).await
}

/// Like [`fresh_test_database`], with pool options.
pub async fn fresh_test_database_with(options: Options) -> PgDatabase {
    let admin_url = std::env::var("WEIR_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_ADMIN_URL.to_owned());
    // UUIDv7 starts with a timestamp, which lets a later run tell stale databases apart.
    let name = format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::now_v7().simple());
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if !SWEPT.swap(true, Ordering::SeqCst) {
        drop_stale_test_databases(&admin_url).await;
    }
    if let Err(e) = create_database(&admin_url, &name).await {
        unreachable_server(&admin_url, &e);
    }
    let mut config: tokio_postgres::Config =
        admin_url.parse().unwrap_or_else(|e| panic!("WEIR_TEST_POSTGRES_URL is not a PostgreSQL URL: {e}"));
    config.dbname(&name);
    match PgDatabase::from_config(config, options).await {
        Ok(db) => db,
        Err(e) => unreachable_server(&admin_url, &e),
    }
}

fn unreachable_server(admin_url: &str, error: &Error) -> ! {
    panic!(
        "\n\n*** PostgreSQL is needed by this test and is not usable at {admin_url}: {error}\n\
         *** Start the local server with:\n\
         ***     pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
         *** or point WEIR_TEST_POSTGRES_URL at a server (trust auth, user allowed to CREATE DATABASE).\n\n"
    )
}

/// Best effort: a failure here must not fail the test that triggered it.
async fn drop_stale_test_databases(admin_url: &str) {
    let Ok(admin) = admin_connect(admin_url).await else { return };
    let Ok(rows) = admin.query("SELECT datname::text FROM pg_database WHERE datname LIKE 'weir\\_test\\_%'", &[]).await
    else {
        return;
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|id| uuid::Uuid::try_parse(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (seconds, nanos) = ts.to_unix();
                Duration::new(seconds, nanos)
            });
        if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER) {
            let result = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            debug!(database = %name, ?result, "dropped a stale test database");
        }
    }
}

/// Connects to the database `url` names, creating it first when the server says it does not
/// exist — a service's first run. Creating needs the `CREATEDB` privilege and the server's
/// `postgres` database; the database name must be a plain identifier.
pub async fn connect_or_create(url: &str, options: Options) -> Result<PgDatabase> {
    let config = parse(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Err(Error::Other("the PostgreSQL URL names no database (add /<name> after the host)".into()));
    };
    match PgDatabase::from_config(config.clone(), options.clone()).await {
        Err(Error::Other(message))
            if message.contains(&format!("[SQLSTATE {}]", SqlState::INVALID_CATALOG_NAME.code())) =>
        {
            let mut admin = config.clone();
            admin.dbname("postgres");
            create_database_at(admin, &name).await?;
            PgDatabase::from_config(config, options).await
        }
        connected => connected,
    }
}

fn parse(url: &str) -> Result<tokio_postgres::Config> {
    // The driver's parse error never echoes the URL, so a password cannot leak into logs.
    url.parse().map_err(|e| Error::Other(format!("invalid PostgreSQL URL: {e}")))
}

async fn admin_connect(admin_url: &str) -> Result<tokio_postgres::Client> {
    admin_connect_to(parse(admin_url)?).await
}

async fn admin_connect_to(mut config: tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Options::default().connect_timeout);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(from_postgres)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

fn check_identifier(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if plain { Ok(()) } else { Err(Error::Other(format!("{name:?} is not a plain database name"))) }
}
