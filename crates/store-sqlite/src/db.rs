//! [`SqliteDatabase`]: the database port over one SQLite file, with group commit.
//!
//! # How a commit works
//! SQLite has one writer, and with `synchronous=FULL` every physical `COMMIT` costs an fsync
//! (milliseconds). Committing each logical transaction on its own would cap a service at a few
//! hundred transactions per second, so logical transactions are *savepoints* inside a shared
//! physical transaction:
//!
//! 1. `begin` takes the writer connection (a FIFO `tokio::sync::Mutex`, its owned guard held by
//!    the [`Transaction`]) and opens the physical transaction with `BEGIN IMMEDIATE` — or, if one
//!    is open (batch-mates committed into it and wait for its `COMMIT`), `SAVEPOINT weir_tx`.
//! 2. Statements run inline: they take microseconds and need no thread hop.
//! 3. `commit` releases the savepoint (if any), registers a waiter, wakes the flusher, gives the
//!    connection back and waits.
//! 4. The flusher thread queues for the same FIFO lock — behind every transaction already
//!    waiting, which is what batches them — runs one `COMMIT`, and answers every waiter with its
//!    outcome. A failed `COMMIT` fails every transaction of the batch.
//!
//! Dropping a transaction rolls back to its savepoint only, so its batch-mates survive; the
//! first of a batch has none to spare and rolls back the physical transaction.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, params_from_iter};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};
use weir_core::db::{Database, Dialect, Error, Result, Row, Transaction, Value};

use crate::sql::{Param, configure, control, map_err, rewrite_params, space_commits, to_value};

/// Read-only connections kept for [`Database::query`].
const READER_POOL: usize = 4;
/// Rewritten statements remembered; the cache is cleared when it grows past this.
const SQL_CACHE_LIMIT: usize = 2048;

/// The [`Database`] port over one SQLite file (WAL, `synchronous=FULL`, foreign keys on).
///
/// Cheap to clone; clones share the writer, the flusher and the reader pool.
#[derive(Clone)]
pub struct SqliteDatabase {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    /// Wakes the flusher thread; it exits when the last sender is dropped.
    wake: mpsc::Sender<()>,
    /// Set while a wake-up is queued for the flusher, so a burst of commits sends one.
    wake_pending: Arc<AtomicBool>,
    readers: StdMutex<Vec<Connection>>,
    sql_cache: StdMutex<HashMap<String, Arc<str>>>,
}

struct Writer {
    conn: Connection,
    /// A physical transaction (`BEGIN IMMEDIATE`) is open.
    in_transaction: bool,
    /// Committed logical transactions whose physical `COMMIT` has not run yet.
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

impl Writer {
    /// Called after a failed statement: if SQLite rolled back the whole physical transaction
    /// (it does on some I/O and full-disk errors), every waiter of the batch has lost its writes
    /// and must hear so. Returns whether that happened.
    fn physical_transaction_lost(&mut self) -> bool {
        if self.in_transaction && self.conn.is_autocommit() {
            self.in_transaction = false;
            for waiter in self.waiters.drain(..) {
                let _ = waiter.send(Err(Error::Unavailable("the batch's transaction was rolled back".into())));
            }
            return true;
        }
        false
    }
}

/// Statements each connection keeps compiled.
const STATEMENT_CACHE: usize = 256;

impl SqliteDatabase {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(map_err)?;
        configure(&conn, STATEMENT_CACHE).map_err(map_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(map_err)?;
        let writer = Arc::new(Mutex::new(Writer { conn, in_transaction: false, waiters: Vec::new() }));
        let (wake, woken) = mpsc::channel();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let (flusher_writer, flusher_pending) = (writer.clone(), wake_pending.clone());
        std::thread::Builder::new()
            .name("weir-sqlite-flush".into())
            .spawn(move || flusher(flusher_writer, woken, flusher_pending))
            .map_err(|e| Error::Unavailable(format!("cannot start the flusher thread: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                writer,
                wake,
                wake_pending,
                readers: StdMutex::new(Vec::new()),
                sql_cache: StdMutex::new(HashMap::new()),
            }),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Shared {
    fn rewrite(&self, sql: &str) -> Arc<str> {
        let mut cache = self.sql_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(sql) {
            return hit.clone();
        }
        if cache.len() >= SQL_CACHE_LIMIT {
            cache.clear();
        }
        let rewritten: Arc<str> = rewrite_params(sql).into();
        cache.insert(sql.to_owned(), rewritten.clone());
        rewritten
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(conn) = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(map_err)?;
        configure(&conn, STATEMENT_CACHE).map_err(map_err)?;
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < READER_POOL {
            readers.push(conn);
        }
    }
}

/// The flusher: one physical `COMMIT` per wake-up, for every transaction that committed before it,
/// at most one per [`COMMIT_SPACING`](crate::sql::COMMIT_SPACING).
fn flusher(writer: Arc<Mutex<Writer>>, woken: mpsc::Receiver<()>, pending: Arc<AtomicBool>) {
    let mut last_commit = std::time::Instant::now();
    while woken.recv().is_ok() {
        space_commits(last_commit);
        // Cleared before taking the lock: a waiter registered after this point either joins
        // this round or sends a new wake-up.
        pending.store(false, Ordering::Release);
        // FIFO: this queues behind transactions already waiting for the writer, so they join
        // the batch.
        let mut w = writer.blocking_lock();
        let waiters = std::mem::take(&mut w.waiters);
        if waiters.is_empty() {
            continue;
        }
        last_commit = std::time::Instant::now();
        let outcome = if w.in_transaction {
            let result = control(&w.conn, "COMMIT");
            if result.is_err() && !w.conn.is_autocommit() {
                // Leave no half-open transaction behind; the writes of this batch are lost.
                let _ = w.conn.execute_batch("ROLLBACK");
            }
            w.in_transaction = false;
            result.map_err(map_err)
        } else {
            Err(Error::Unavailable("the batch's transaction was rolled back".into()))
        };
        drop(w);
        match outcome {
            Ok(()) => {
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = waiters.len(), "group commit failed");
                for waiter in waiters {
                    let _ = waiter.send(Err(match &e {
                        Error::UniqueViolation(m) => Error::UniqueViolation(m.clone()),
                        Error::Unavailable(m) => Error::Unavailable(m.clone()),
                        Error::Decode(m) => Error::Decode(m.clone()),
                        Error::Other(m) => Error::Other(m.clone()),
                    }));
                }
            }
        }
    }
}

/// Deferred foreign-key violations outstanding in the open physical transaction. Batch-mates
/// that committed earlier found none, so any counted now belong to the caller's savepoint.
fn deferred_foreign_key_violations(conn: &Connection) -> i32 {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: the handle belongs to `conn`, which is borrowed (so alive and not used elsewhere)
    // for the duration of the call; `sqlite3_db_status` only reads a counter into the two
    // integers it is given.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highest,
            0,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK { current } else { 0 }
}

fn run_execute(conn: &Connection, sql: &str, params: &[Value]) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(sql)?;
    if stmt.column_count() == 0 {
        return stmt.execute(params_from_iter(params.iter().map(Param))).map(|n| n as u64);
    }
    // `INSERT … RETURNING` and the like: run to completion, count the changes.
    let mut rows = stmt.query(params_from_iter(params.iter().map(Param)))?;
    while rows.next()?.is_some() {}
    Ok(conn.changes())
}

fn run_query(conn: &Connection, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(params.iter().map(Param)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(to_value(row.get_ref(i)?));
        }
        out.push(Row(values));
    }
    Ok(out)
}

#[async_trait]
impl Database for SqliteDatabase {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Waits for the single writer connection (FIFO), then opens a savepoint inside the shared
    /// physical transaction. Do not begin a second transaction in a task that holds one: it
    /// would wait for itself.
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let mut guard = self.shared.writer.clone().lock_owned().await;
        // Only a transaction that joins committed batch-mates needs a savepoint to undo itself
        // alone; the first of a batch rolls back the physical transaction instead.
        let savepoint = guard.in_transaction;
        if savepoint {
            if let Err(e) = control(&guard.conn, "SAVEPOINT weir_tx") {
                guard.physical_transaction_lost();
                return Err(map_err(e));
            }
        } else {
            control(&guard.conn, "BEGIN IMMEDIATE").map_err(map_err)?;
            guard.in_transaction = true;
        }
        Ok(Box::new(SqliteTransaction { guard: Some(guard), shared: self.shared.clone(), savepoint, broken: false }))
    }

    /// Runs on a pooled read-only connection, inline: a WAL reader never waits for the writer,
    /// and the indexed reads services make take microseconds, far less than the two thread
    /// switches a hop to a blocking thread costs. Sees only committed data (WAL snapshot),
    /// never a batch that is still waiting for its `COMMIT`.
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let sql = self.shared.rewrite(sql);
        let conn = self.shared.reader()?;
        let result = run_query(&conn, &sql, params).map_err(map_err);
        self.shared.return_reader(conn);
        result
    }
}

struct SqliteTransaction {
    guard: Option<OwnedMutexGuard<Writer>>,
    shared: Arc<Shared>,
    /// It runs in savepoint `weir_tx` (batch-mates committed before it), not alone in the
    /// physical transaction.
    savepoint: bool,
    /// The physical transaction was rolled back under this one; it can only fail now.
    broken: bool,
}

impl SqliteTransaction {
    fn run<T>(&mut self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        if self.broken {
            return Err(Error::Unavailable("the transaction was rolled back by SQLite".into()));
        }
        let Some(writer) = self.guard.as_mut() else {
            return Err(Error::Other("the transaction is finished".into()));
        };
        let result = f(&writer.conn);
        if result.is_err() && writer.physical_transaction_lost() {
            self.broken = true;
        }
        result.map_err(map_err)
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let sql = self.shared.rewrite(sql);
        self.run(|conn| run_execute(conn, &sql, params))
    }

    async fn execute_many(&mut self, sql: &str, rows: &[Vec<Value>]) -> Result<u64> {
        let sql = self.shared.rewrite(sql);
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut changed = 0u64;
            for row in rows {
                changed += stmt.execute(params_from_iter(row.iter().map(Param)))? as u64;
            }
            Ok(changed)
        })
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let sql = self.shared.rewrite(sql);
        self.run(|conn| run_query(conn, &sql, params))
    }

    /// Returns once the physical `COMMIT` of this transaction's batch is on disk, or with the
    /// error that failed the batch. Dropping the returned future leaves the outcome unknown:
    /// the writes still commit with their batch.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        // A deferred foreign-key violation would fail the physical COMMIT of the whole batch;
        // catch it here so that only this transaction fails (dropping it rolls it back).
        let violations = self.run(|conn| Ok(deferred_foreign_key_violations(conn)))?;
        if violations > 0 {
            return Err(Error::Other(format!("FOREIGN KEY constraint failed ({violations} deferred violations)")));
        }
        if self.savepoint {
            self.run(|conn| control(conn, "RELEASE weir_tx"))?;
        }
        let (tx, rx) = oneshot::channel();
        let Some(mut writer) = self.guard.take() else {
            return Err(Error::Other("the transaction is finished".into()));
        };
        writer.waiters.push(tx);
        drop(writer);
        if !self.shared.wake_pending.swap(true, Ordering::AcqRel) {
            self.shared.wake.send(()).map_err(|_| Error::Unavailable("the flusher has stopped".into()))?;
        }
        rx.await.map_err(|_| Error::Unavailable("the flusher stopped before committing".into()))?
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        let Some(mut writer) = self.guard.take() else { return };
        if self.broken || !writer.in_transaction {
            return;
        }
        // Alone in the physical transaction, end it, so that other processes are not kept from
        // writing; after batch-mates, undo only this transaction's savepoint.
        let undone = if self.savepoint {
            control(&writer.conn, "ROLLBACK TO weir_tx").and_then(|()| control(&writer.conn, "RELEASE weir_tx"))
        } else {
            control(&writer.conn, "ROLLBACK")
        };
        match undone {
            Ok(()) if !self.savepoint => writer.in_transaction = false,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "rollback of a dropped transaction failed");
                writer.physical_transaction_lost();
            }
        }
    }
}
