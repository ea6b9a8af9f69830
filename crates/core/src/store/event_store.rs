//! The event store: streams of events with optimistic concurrency, a global order, snapshots.
//!
//! **Invariant:** positions become visible in increasing order. A projection that has read up
//! to position `p` will never later find a committed event below `p`. SQLite has one writer, so
//! this holds by itself; on PostgreSQL, appends take a transaction-scoped advisory lock, which
//! makes commit order equal position order (identity columns alone do not: a transaction that
//! took position 5 may commit after one that took 6).

use crate::{
    db::{Database, Dialect, Transaction, Value},
    event::Event,
    store::{Error, Result},
};

/// What the writer believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event has this version (versions start at 1).
    Exact(i64),
}

/// An event as stored: its global position and its version within its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub event: Event,
}

/// Where an [`append`] left its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's new version.
    pub version: i64,
    /// The global position of the last event appended (0 if none was): what a projection must
    /// have passed to show them.
    pub position: i64,
}

/// Appends `events` to `stream` inside `tx`. Fails with [`Error::Conflict`] when the stream is
/// not at `expected`.
pub async fn append(
    tx: &mut dyn Transaction,
    dialect: Dialect,
    stream: &str,
    expected: ExpectedVersion,
    events: &[Event],
) -> Result<Appended> {
    // The ordering lock is held until commit, so everything that can happen before it does: an
    // expected version is checked first (a writer that appends in between makes our INSERT hit
    // the unique (stream, version) key: a conflict), and a new stream is not read at all (its
    // first event is version 1, which that key refuses if the stream exists). Only `Any`, which
    // takes whatever version is there, must read it under the lock.
    let current = match expected {
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(v) => {
            let current = version(tx, stream).await?;
            if current != v {
                return Err(conflict(stream, expected, Some(current)));
            }
            current
        }
        ExpectedVersion::Any => {
            order_lock(tx, dialect).await?;
            version(tx, stream).await?
        }
    };
    if expected != ExpectedVersion::Any {
        order_lock(tx, dialect).await?;
    }
    // One multi-row INSERT per chunk: far fewer round trips and statement executions than a
    // statement per event, which matters because appends hold the ordering lock.
    const CHUNK: usize = 200;
    let mut position = 0;
    for (c, chunk) in events.chunks(CHUNK).enumerate() {
        let mut sql = String::from("INSERT INTO weir_events (stream, version, id, kind, envelope) VALUES ");
        let mut params = Vec::with_capacity(chunk.len() * 5);
        for (i, e) in chunk.iter().enumerate() {
            let p = i * 5;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5));
            let version = current + 1 + (c * CHUNK + i) as i64;
            params.extend([
                stream.into(),
                version.into(),
                e.id.to_string().into(),
                e.kind.as_str().into(),
                Value::Blob(e.to_json()),
            ]);
        }
        sql.push_str(" RETURNING position");
        let rows = tx.query(&sql, &params).await.map_err(|e| match e {
            // A concurrent writer got in between our read and our insert.
            crate::db::Error::UniqueViolation(_) => conflict(stream, expected, None),
            other => other.into(),
        })?;
        for row in rows {
            position = position.max(row.i64(0)?);
        }
    }
    Ok(Appended { version: current + events.len() as i64, position })
}

/// On PostgreSQL, makes commit order equal position order (see the module's invariant).
async fn order_lock(tx: &mut dyn Transaction, dialect: Dialect) -> Result<()> {
    if dialect == Dialect::Postgres {
        tx.query("SELECT pg_advisory_xact_lock(7365726980)", &[]).await?;
    }
    Ok(())
}

/// The stream's version: that of its last event, 0 if it has none.
async fn version(tx: &mut dyn Transaction, stream: &str) -> Result<i64> {
    Ok(tx
        .query("SELECT COALESCE(MAX(version), 0) FROM weir_events WHERE stream = $1", &[stream.into()])
        .await?
        .first()
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0))
}

fn conflict(stream: &str, expected: ExpectedVersion, actual: Option<i64>) -> Error {
    Error::Conflict { what: format!("stream {stream}"), expected: format!("{expected:?}"), actual }
}

fn decode(rows: Vec<crate::db::Row>) -> Result<Vec<Recorded>> {
    rows.iter()
        .map(|r| {
            Ok(Recorded {
                position: r.i64(0)?,
                stream: r.text(1)?.to_owned(),
                version: r.i64(2)?,
                event: Event::from_json(r.blob(3)?)?,
            })
        })
        .collect()
}

/// The events of `stream` with version > `after_version`, in order.
pub async fn read_stream(db: &dyn Database, stream: &str, after_version: i64) -> Result<Vec<Recorded>> {
    decode(db.query(READ_STREAM, &[stream.into(), after_version.into()]).await?)
}

/// [`read_stream`] inside `tx`: what a handler that is about to append reads, so that it
/// needs no second connection while its transaction holds one (and sees its batch-mates'
/// appends).
pub async fn read_stream_in(tx: &mut dyn Transaction, stream: &str, after_version: i64) -> Result<Vec<Recorded>> {
    decode(tx.query(READ_STREAM, &[stream.into(), after_version.into()]).await?)
}

const READ_STREAM: &str = "SELECT position, stream, version, envelope FROM weir_events
     WHERE stream = $1 AND version > $2 ORDER BY version";

/// Up to `limit` events with position > `after`, in global order.
pub async fn read_all(db: &dyn Database, after: i64, limit: i64) -> Result<Vec<Recorded>> {
    decode(
        db.query(
            "SELECT position, stream, version, envelope FROM weir_events
             WHERE position > $1 ORDER BY position LIMIT $2",
            &[after.into(), limit.into()],
        )
        .await?,
    )
}

/// Saves a snapshot of `stream` as of `version`, replacing an older one.
pub async fn save_snapshot(tx: &mut dyn Transaction, stream: &str, version: i64, state: &[u8]) -> Result<()> {
    tx.execute(
        "INSERT INTO weir_snapshots (stream, version, state) VALUES ($1, $2, $3)
         ON CONFLICT (stream) DO UPDATE SET version = excluded.version, state = excluded.state
         WHERE weir_snapshots.version < excluded.version",
        &[stream.into(), version.into(), state.into()],
    )
    .await?;
    Ok(())
}

/// The latest snapshot of `stream`: its version and state.
pub async fn load_snapshot(db: &dyn Database, stream: &str) -> Result<Option<(i64, Vec<u8>)>> {
    let rows = db.query("SELECT version, state FROM weir_snapshots WHERE stream = $1", &[stream.into()]).await?;
    rows.first().map(|r| Ok((r.i64(0)?, r.blob(1)?.to_vec()))).transpose()
}
