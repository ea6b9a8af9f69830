//! [`PgDatabase`]: the [`Database`] port over a deadpool-postgres pool.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Status};
use futures::{TryStreamExt, future::try_join_all};
use tokio_postgres::NoTls;
use tracing::{debug, warn};
use weir_core::db::{Database, Dialect, Error, Result, Row, Transaction, Value};

use crate::{
    error::{from_pool, from_postgres},
    value::{Param, decode_row},
};

/// How a [`PgDatabase`] sizes and times its pool.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most connections open at once; also the most concurrent transactions.
    pub pool_size: usize,
    /// How long to wait for the server when opening a connection, unless the URL sets
    /// `connect_timeout` itself.
    pub connect_timeout: Duration,
    /// How long `begin` or `query` waits for a free connection before reporting
    /// [`Error::Unavailable`].
    pub wait_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { pool_size: 16, connect_timeout: Duration::from_secs(5), wait_timeout: Duration::from_secs(30) }
    }
}

/// Rows per pipelined burst in `execute_many`. One burst already keeps the connection busy
/// back to back; bounding it keeps memory flat when a caller hands over a million rows.
const PIPELINE_DEPTH: usize = 4096;

/// A PostgreSQL database owned by one service. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgDatabase {
    pool: Pool,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase").field("pool", &self.pool.status()).finish()
    }
}

impl PgDatabase {
    /// Connects with default [`Options`], e.g. to `postgres://postgres@127.0.0.1:5432/weir_orders`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Options::default()).await
    }

    /// Connects with the given pool options.
    pub async fn connect_with(url: &str, options: Options) -> Result<Self> {
        // The driver's parse error never echoes the URL, so a password cannot leak into logs.
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| Error::Other(format!("invalid PostgreSQL URL: {}", crate::error::with_causes(&e))))?;
        Self::from_config(config, options).await
    }

    /// Connects from an already built driver configuration.
    ///
    /// One connection is opened before this returns, so a wrong URL or a stopped server is
    /// reported here (as [`Error::Unavailable`] or [`Error::Other`]) rather than at first use.
    pub async fn from_config(mut config: tokio_postgres::Config, options: Options) -> Result<Self> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // `Fast` recycling only checks that the connection is open. That is enough because a
        // connection never returns to the pool inside a transaction: see `PgTransaction::drop`.
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout + Duration::from_secs(1)))
            .build()
            .map_err(|e| Error::Other(format!("cannot build the connection pool: {e}")))?;
        let client = pool.get().await.map_err(from_pool)?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(from_postgres)?
            .get(0);
        supported(version)?;
        drop(client);
        Ok(PgDatabase { pool })
    }

    /// Pool occupancy, for metrics and tests.
    pub fn pool_status(&self) -> Status {
        self.pool.status()
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(from_pool)
    }
}

/// The oldest PostgreSQL the kernel's SQL runs on: the event store's readers use
/// `pg_current_xact_id` and `pg_current_snapshot` (see `weir_core::store::event_store`).
const OLDEST_SUPPORTED: i32 = 130_000;

/// Refuses a server older than [`OLDEST_SUPPORTED`] (`version` as in `server_version_num`), with
/// what to do, rather than failing later on a missing function.
fn supported(version: i32) -> Result<()> {
    if version >= OLDEST_SUPPORTED {
        return Ok(());
    }
    Err(Error::Other(format!(
        "PostgreSQL {} is too old: Weir needs PostgreSQL 13 or later; upgrade the server or point the URL at a newer one",
        version / 10_000
    )))
}

#[async_trait]
impl Database for PgDatabase {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let client = self.client().await?;
        // The transaction exists (as `Busy`) before `BEGIN` is sent, so that if this future is
        // dropped mid-way its `Drop` still rolls back and the connection never returns to the
        // pool inside a transaction.
        let mut tx = PgTransaction { client: Some(client), state: State::Busy };
        tx.client()?.batch_execute("BEGIN").await.map_err(from_postgres)?;
        tx.state = State::Ready;
        Ok(Box::new(tx))
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        query(&client, sql, params).await
    }
}

/// Where a transaction stands. PostgreSQL refuses every statement after a failed one until
/// rollback, so the state is tracked here to give a clear error instead of SQLSTATE 25P02, and
/// to refuse a commit that the server would silently turn into a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No statement in flight; statements and commit are allowed.
    Ready,
    /// A statement is in flight. Seen afterwards only if its future was dropped, in which case
    /// its outcome is unknown and the transaction can only be rolled back.
    Busy,
    /// A statement failed; the transaction can only be rolled back.
    Failed,
    /// `COMMIT` succeeded; nothing to roll back.
    Committed,
}

struct PgTransaction {
    /// Always `Some` until `Drop` hands the connection to the rollback task.
    client: Option<Object>,
    state: State,
}

impl PgTransaction {
    fn client(&self) -> Result<&Object> {
        self.client.as_ref().ok_or_else(|| Error::Other("the transaction has no connection".into()))
    }

    fn enter(&mut self) -> Result<()> {
        match self.state {
            State::Ready => {
                self.state = State::Busy;
                Ok(())
            }
            State::Failed => {
                Err(Error::Other("the transaction was aborted by an earlier error; drop it and start again".into()))
            }
            State::Busy => Err(Error::Other(
                "an earlier statement of this transaction was cancelled; drop it and start again".into(),
            )),
            State::Committed => Err(Error::Other("the transaction is already committed".into())),
        }
    }

    fn leave<T>(&mut self, result: Result<T>) -> Result<T> {
        self.state = if result.is_ok() { State::Ready } else { State::Failed };
        result
    }
}

#[async_trait]
impl Transaction for PgTransaction {
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        self.enter()?;
        let result = async {
            let client = self.client()?;
            let statement = client.prepare_cached(sql).await.map_err(from_postgres)?;
            client.execute_raw(&statement, params.iter().map(Param)).await.map_err(from_postgres)
        }
        .await;
        self.leave(result)
    }

    async fn execute_many(&mut self, sql: &str, rows: &[Vec<Value>]) -> Result<u64> {
        self.enter()?;
        let result = async {
            let client = self.client()?;
            let statement = client.prepare_cached(sql).await.map_err(from_postgres)?;
            let mut changed = 0;
            for burst in rows.chunks(PIPELINE_DEPTH) {
                // Each `execute_raw` future queues its Bind/Execute/Sync on the connection the
                // first time it is polled, and `try_join_all` polls them all before awaiting
                // any, so the whole burst is on the wire before the first reply arrives:
                // one round trip per burst instead of one per row.
                let counts =
                    try_join_all(burst.iter().map(|row| client.execute_raw(&statement, row.iter().map(Param))))
                        .await
                        .map_err(from_postgres)?;
                changed += counts.iter().sum::<u64>();
            }
            Ok(changed)
        }
        .await;
        self.leave(result)
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.enter()?;
        let result = async { query(self.client()?, sql, params).await }.await;
        self.leave(result)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.enter()?;
        self.client()?.batch_execute("COMMIT").await.map_err(from_postgres)?;
        self.state = State::Committed;
        Ok(())
    }
}

impl Drop for PgTransaction {
    /// Rolls back unless committed, before the connection can serve anyone else.
    ///
    /// `Drop` cannot await, so the connection moves into a spawned task that sends `ROLLBACK`
    /// and only then lets the connection return to the pool. Should that fail — no runtime to
    /// spawn on, the runtime shutting down under the task, or `ROLLBACK` itself failing — the
    /// connection is taken out of the pool and closed instead, and the server rolls back when
    /// the session ends. Either way no pooled connection is ever left inside a transaction.
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        if self.state == State::Committed {
            return;
        }
        let guard = Detach(Some(client));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(guard.rollback());
            }
            Err(_) => debug!("transaction dropped outside a runtime; closing its connection to roll back"),
        }
    }
}

/// Holds a connection while it is rolled back; closes it instead of pooling it unless
/// [`Detach::rollback`] finished cleanly.
struct Detach(Option<Object>);

impl Detach {
    async fn rollback(mut self) {
        let Some(client) = self.0.as_ref() else { return };
        // Statements still in flight from a cancelled call are answered first; `ROLLBACK` is
        // queued behind them. After a failed `COMMIT` it is a harmless no-op warning.
        match client.batch_execute("ROLLBACK").await {
            Ok(()) => drop(self.0.take()),
            Err(e) => warn!(error = %e, "rollback of a dropped transaction failed; closing its connection"),
        }
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // Dropping the client closes the session; the server then rolls back.
            drop(Object::take(client));
        }
    }
}

async fn query(client: &Object, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(from_postgres)?;
    let rows: Vec<tokio_postgres::Row> = client
        .query_raw(&statement, params.iter().map(Param))
        .await
        .map_err(from_postgres)?
        .try_collect()
        .await
        .map_err(from_postgres)?;
    rows.iter().map(decode_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_13_are_refused_with_what_to_do() {
        let refusal = supported(120_015).unwrap_err().to_string();
        assert!(refusal.contains("PostgreSQL 12 is too old") && refusal.contains("13 or later"), "{refusal}");
        assert!(supported(90_624).is_err());
        supported(130_000).unwrap();
        supported(150_019).unwrap();
    }
}
