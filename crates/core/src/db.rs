//! The database port: transactions over portable SQL.
//!
//! Every service owns one [`Database`] (a SQLite file in embedded mode, a PostgreSQL database
//! when distributed). The kernel's stores — event store, outbox, inbox, checkpoints, sagas —
//! and the service's own tables live in it, so that a handler's state change, its inbox record
//! and its output events commit in **one** [`Transaction`].
//!
//! SQL handed to this port is *portable*: parameters are written `$1, $2, …` (adapters rewrite
//! them for their engine), and statements keep to the common ground of SQLite ≥ 3.35 and
//! PostgreSQL ≥ 13 (`INSERT … ON CONFLICT`, `RETURNING`, `BIGINT`, `TEXT`). Where the two differ
//! — mostly DDL — a [`Migration`] carries one text per [`Dialect`].
//!
//! # Contract
//! - `Database` is `Send + Sync` and cheap to share behind an `Arc`.
//! - A `Transaction` sees its own writes; others see them only after [`Transaction::commit`]
//!   returns, and then durably. Dropping an uncommitted transaction rolls it back.
//! - Dropping the future of `commit` may leave the outcome unknown (as with any database);
//!   callers that must know re-read.
//! - Adapters may serialise writers (SQLite) and may batch several transactions into one
//!   physical commit; each `commit` still returns only once its own writes are durable.

use std::{fmt, sync::Arc};

use async_trait::async_trait;

/// Which SQL engine a [`Database`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row; columns by position, in `SELECT` order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn column(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| Error::Decode(format!("no column {i} in a row of {}", self.0.len())))
    }

    pub fn i64(&self, i: usize) -> Result<i64> {
        match self.column(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(Error::Decode(format!("column {i}: expected an integer, found {other:?}"))),
        }
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.column(i)? {
            Value::Null => Ok(None),
            _ => self.i64(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> Result<&str> {
        match self.column(i)? {
            Value::Text(v) => Ok(v),
            other => Err(Error::Decode(format!("column {i}: expected text, found {other:?}"))),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<&str>> {
        match self.column(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub fn blob(&self, i: usize) -> Result<&[u8]> {
        match self.column(i)? {
            Value::Blob(v) => Ok(v),
            other => Err(Error::Decode(format!("column {i}: expected a blob, found {other:?}"))),
        }
    }

    pub fn opt_blob(&self, i: usize) -> Result<Option<&[u8]>> {
        match self.column(i)? {
            Value::Null => Ok(None),
            _ => self.blob(i).map(Some),
        }
    }
}

/// Database errors, classified so callers can act on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A unique or primary-key constraint was violated.
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    /// The database cannot be reached or the connection broke; retrying may help.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A row did not have the shape the caller expected.
    #[error("unexpected row shape: {0}")]
    Decode(String),
    /// Any other database error (bad SQL, constraint other than unique, …).
    #[error("database error: {0}")]
    Other(String),
}

impl Error {
    /// Whether retrying the whole transaction may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database owned by one service.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;

    /// Begins a read-write transaction.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// Runs a read-only statement outside any transaction; sees committed data.
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
}

/// A read-write transaction. Dropping it without [`commit`](Self::commit) rolls it back.
#[async_trait]
pub trait Transaction: Send {
    /// Runs a statement; returns the number of rows changed.
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;

    /// Runs one statement once per parameter row (pipelined where the engine allows);
    /// returns the total number of rows changed.
    async fn execute_many(&mut self, sql: &str, rows: &[Vec<Value>]) -> Result<u64>;

    /// Runs a statement that returns rows.
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Commits; returns once the transaction is durable.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A schema change, written once per dialect.
#[derive(Clone, Copy)]
pub struct Migration {
    /// Unique and increasing within one owner's list.
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Migration({} {})", self.version, self.name)
    }
}

/// Applies the migrations of `owner` that are not yet applied, each in its own transaction,
/// in version order. Several processes may run this at once: PostgreSQL serialises them with
/// an advisory lock, SQLite with its single writer.
pub async fn migrate(db: &dyn Database, owner: &str, migrations: &[Migration]) -> Result<()> {
    let mut tx = db.begin().await?;
    // Lock before the first DDL: concurrent `CREATE TABLE IF NOT EXISTS` races on PostgreSQL.
    if db.dialect() == Dialect::Postgres {
        tx.query("SELECT pg_advisory_xact_lock(7365726979)", &[]).await?;
    }
    tx.execute(
        "CREATE TABLE IF NOT EXISTS weir_migrations (
            owner TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL,
            PRIMARY KEY (owner, version))",
        &[],
    )
    .await?;
    let applied: Vec<i64> = tx
        .query("SELECT version FROM weir_migrations WHERE owner = $1", &[owner.into()])
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect::<Result<_>>()?;
    let mut pending: Vec<&Migration> = migrations.iter().filter(|m| !applied.contains(&m.version)).collect();
    pending.sort_by_key(|m| m.version);
    for m in pending {
        let sql = match db.dialect() {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            tx.execute(statement, &[])
                .await
                .map_err(|e| Error::Other(format!("migration {owner}/{} {}: {e}", m.version, m.name)))?;
        }
        tx.execute(
            "INSERT INTO weir_migrations (owner, version, name) VALUES ($1, $2, $3)",
            &[owner.into(), m.version.into(), m.name.into()],
        )
        .await?;
    }
    tx.commit().await
}

/// A shared handle to a database.
pub type Db = Arc<dyn Database>;
