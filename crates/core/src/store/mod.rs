//! The kernel's stores, written once over the portable [`Database`](crate::db::Database) port,
//! so that every one of them runs on SQLite and PostgreSQL alike and shares a transaction with
//! the service's own tables.
//!
//! | store | table(s) | what it guarantees |
//! |---|---|---|
//! | [`event_store`] | `weir_events`, `weir_snapshots` | append with an expected version; global positions, read without ever skipping one |
//! | [`outbox`] | `weir_outbox` | events leave only if the transaction that wrote them committed; the relay retries until published |
//! | [`inbox`] | `weir_inbox` | a `(consumer, event id)` is handled once per transaction that records it |
//! | [`checkpoints`] | `weir_checkpoints` | a read model and its position move together |
//! | [`sagas`] | `weir_sagas`, `weir_timers` | saga state with optimistic concurrency; durable timers fire through the outbox |
//! | [`lease`] | `weir_leases` | one active worker (relay, timer scheduler) per database |

pub mod checkpoints;
pub mod event_store;
pub mod inbox;
pub mod lease;
pub mod outbox;
pub mod projection;
pub mod sagas;

use crate::db::{self, Database, Migration};

/// Errors of the stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: someone else wrote first.
    /// `actual` is the version found, or `None` when a concurrent writer got in between the
    /// check and the write.
    #[error("conflict on {what}: expected version {expected}, {}",
        .actual.map_or_else(|| "but a concurrent writer got there first".to_owned(), |v| format!("found {v}")))]
    Conflict { what: String, expected: String, actual: Option<i64> },
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error("stored event is unreadable: {0}")]
    Decode(#[from] crate::event::DecodeError),
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Creates or upgrades the kernel's tables. Idempotent; run it on start.
pub async fn install(db: &dyn Database) -> db::Result<()> {
    db::migrate(db, "weir-kernel", MIGRATIONS).await
}

/// Milliseconds since the Unix epoch: how the stores keep instants.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "kernel tables",
        sqlite: "
        CREATE TABLE weir_events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            stream TEXT NOT NULL,
            version BIGINT NOT NULL,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            envelope BLOB NOT NULL,
            UNIQUE (stream, version));
        CREATE TABLE weir_snapshots (
            stream TEXT PRIMARY KEY, version BIGINT NOT NULL, state BLOB NOT NULL);
        CREATE TABLE weir_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, envelope BLOB NOT NULL);
        CREATE TABLE weir_inbox (
            consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, event_id));
        CREATE TABLE weir_checkpoints (projection TEXT PRIMARY KEY, position BIGINT NOT NULL);
        CREATE TABLE weir_sagas (
            saga_type TEXT NOT NULL, id TEXT NOT NULL, state BLOB NOT NULL, version BIGINT NOT NULL,
            done BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (saga_type, id));
        CREATE TABLE weir_timers (
            id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, due_at BIGINT NOT NULL,
            topic TEXT NOT NULL, envelope BLOB NOT NULL);
        CREATE INDEX weir_timers_due ON weir_timers (due_at);
        CREATE TABLE weir_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until BIGINT NOT NULL)",
        postgres: "
        CREATE TABLE weir_events (
            position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream TEXT NOT NULL,
            version BIGINT NOT NULL,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            envelope BYTEA NOT NULL,
            UNIQUE (stream, version));
        CREATE TABLE weir_snapshots (
            stream TEXT PRIMARY KEY, version BIGINT NOT NULL, state BYTEA NOT NULL);
        CREATE TABLE weir_outbox (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic TEXT NOT NULL, envelope BYTEA NOT NULL);
        CREATE TABLE weir_inbox (
            consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, event_id));
        CREATE TABLE weir_checkpoints (projection TEXT PRIMARY KEY, position BIGINT NOT NULL);
        CREATE TABLE weir_sagas (
            saga_type TEXT NOT NULL, id TEXT NOT NULL, state BYTEA NOT NULL, version BIGINT NOT NULL,
            done BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (saga_type, id));
        CREATE TABLE weir_timers (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key TEXT NOT NULL UNIQUE,
            due_at BIGINT NOT NULL, topic TEXT NOT NULL, envelope BYTEA NOT NULL);
        CREATE INDEX weir_timers_due ON weir_timers (due_at);
        CREATE TABLE weir_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until BIGINT NOT NULL)",
    },
    Migration { version: 2, name: "finished sagas by age", sqlite: FINISHED_SAGAS, postgres: FINISHED_SAGAS },
];

/// What [`sagas::prune`] looks up: only finished instances are in it, so a running saga's
/// saves do not maintain it.
const FINISHED_SAGAS: &str = "CREATE INDEX weir_sagas_finished ON weir_sagas (updated_at) WHERE done = 1";
