//! The event store: streams of events with optimistic concurrency, a global order, snapshots.
//!
//! **Invariant:** a reader of the global order never skips a committed event: [`read_all`]
//! returns events only up to the first position that a running transaction may still commit.
//! SQLite has one writer, so positions commit in order by themselves. PostgreSQL hands out
//! positions from a sequence, and a transaction that took position 5 may commit after one that
//! took 6; appends do not queue behind a global lock for that (one lock held through every
//! commit's fsync capped appends at one commit at a time, ≈ 2,000/s on this machine whatever the
//! number of writers). Instead a reader stops at a gap in the positions, and goes past it only
//! once every transaction that could hold it has ended ([`read_all`] says how).

use std::time::{Duration, Instant};

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
    // A new stream is not read at all: its first event is version 1, which the unique
    // (stream, version) key refuses if the stream exists; an expected version is checked first,
    // and a writer that appends in between makes our INSERT hit that key: a conflict. `Any`
    // takes whatever version is there, so its writers to one stream take turns.
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
            if dialect == Dialect::Postgres {
                tx.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[stream.into()]).await?;
            }
            version(tx, stream).await?
        }
    };
    if dialect == Dialect::Postgres {
        // The transaction gets its id before it takes positions, so a reader that finds a gap
        // knows which transactions to wait for (see `read_all`).
        tx.query("SELECT pg_current_xact_id()::text", &[]).await?;
    }
    // One multi-row INSERT per chunk: far fewer round trips and statement executions than a
    // statement per event.
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

/// Up to `limit` events with position > `after`, in global order, ending before the first
/// position that may still be committed: what a reader can take without ever finding an event
/// appear behind it. Empty when there is nothing new (yet).
///
/// On PostgreSQL a missing position is either taken by a transaction still running or lost
/// (a rolled-back append). An append gets its transaction id before it takes positions, so
/// whoever holds a gap below a committed event has an id below the `xmax` of the snapshot that
/// first saw the gap; once the oldest running transaction (`xmin`) is past that, the holders
/// have all ended and what is still missing never will be. So a gap after some events ends the
/// page; a gap at its head is waited out, for at most [`GAP_WAIT`] (then the page is empty and
/// the caller reads again later: nothing is ever skipped on a guess).
pub async fn read_all(db: &dyn Database, after: i64, limit: i64) -> Result<Vec<Recorded>> {
    decode(read_committed(db, &["position", "stream", "version", "envelope"], after, limit).await?)
}

/// The position of the last event [`read_all`] would return, without reading the events.
pub async fn last_committed(db: &dyn Database, after: i64, limit: i64) -> Result<Option<i64>> {
    read_committed(db, &["position"], after, limit).await?.last().map(|r| Ok(r.i64(0)?)).transpose()
}

/// [`read_all`]'s rows: `columns` (the first of which is `position`) of the events it takes.
async fn read_committed(db: &dyn Database, columns: &[&str], after: i64, limit: i64) -> Result<Vec<crate::db::Row>> {
    const FROM: &str = "FROM weir_events WHERE position > $1 ORDER BY position LIMIT $2";
    let (snapshot, columns) = (columns.len(), columns.join(", "));
    if db.dialect() != Dialect::Postgres {
        return Ok(db.query(&format!("SELECT {columns} {FROM}"), &[after.into(), limit.into()]).await?);
    }
    // The snapshot's xmin and xmax follow the event's columns.
    let sql = format!("SELECT {columns}, {XMIN}, {XMAX} {FROM}");
    let started = Instant::now();
    // Set once a gap at the head was seen: the first position then committed past it, and the
    // snapshot's xmax. Everything below that position is final once xmin reaches the xmax.
    let mut gap: Option<(i64, i64)> = None;
    let mut pause = Duration::from_millis(1);
    loop {
        let rows = db.query(&sql, &[after.into(), limit.into()]).await?;
        let Some(first) = rows.first() else { return Ok(Vec::new()) };
        let (head, xmin, xmax) = (first.i64(0)?, first.i64(snapshot)?, first.i64(snapshot + 1)?);
        let settled = match gap {
            Some((below, horizon)) if xmin >= horizon => below,
            _ => after + 1,
        };
        let mut next = after + 1;
        let mut taken = Vec::new();
        for row in rows {
            let position = row.i64(0)?;
            if position != next && position > settled {
                break;
            }
            next = position + 1;
            taken.push(row);
        }
        if !taken.is_empty() {
            return Ok(taken);
        }
        let (_, horizon) = *gap.get_or_insert((head, xmax));
        // Wait for every transaction that could hold the gap to end, then read again.
        while oldest_running(db).await? < horizon {
            if started.elapsed() >= GAP_WAIT {
                return Ok(Vec::new());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// How long [`read_all`] waits for the transactions that may hold a gap at the head of its page.
pub const GAP_WAIT: Duration = Duration::from_secs(1);

/// The oldest transaction id still running (PostgreSQL), and the next one to be assigned, as of
/// the statement's snapshot; subqueries, so that a statement computes each once, not per row.
const XMIN: &str = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)";
const XMAX: &str = "(SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint)";

async fn oldest_running(db: &dyn Database) -> Result<i64> {
    let rows = db.query(&format!("SELECT {XMIN}"), &[]).await?;
    Ok(rows.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0))
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
