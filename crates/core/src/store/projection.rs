//! Projections: read models fed from the event store's global order. Each batch of events is
//! applied and the checkpoint moved in one transaction, so a crash never applies an event twice
//! nor skips one; [`rebuild`] replays from position 0 after clearing the read model.

use async_trait::async_trait;

use crate::{
    db::{Database, Transaction},
    store::{
        Result, checkpoints,
        event_store::{self, Recorded},
    },
};

/// A read model built from events.
#[async_trait]
pub trait Projection: Send + Sync {
    /// The checkpoint's name; unique per database.
    fn name(&self) -> &str;
    /// Deletes the read model's rows (before a rebuild).
    async fn reset(&self, tx: &mut dyn Transaction) -> Result<()>;
    /// Applies one event inside the batch's transaction.
    async fn apply(&self, tx: &mut dyn Transaction, event: &Recorded) -> Result<()>;
}

/// What a [`catch_up`] or an [`apply_batch`] did: how many events it applied, and the checkpoint
/// it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    pub applied: usize,
    pub position: i64,
}

/// Applies every event past the projection's checkpoint, [`apply_batch`] after batch, until a
/// read finds none.
pub async fn catch_up(db: &dyn Database, projection: &dyn Projection, batch: i64) -> Result<CaughtUp> {
    let mut done = CaughtUp { applied: 0, position: checkpoints::load(db, projection.name()).await? };
    loop {
        let next = apply_batch(db, projection, batch, done.position).await?;
        done.position = next.position;
        if next.applied == 0 {
            return Ok(done);
        }
        done.applied += next.applied;
    }
}

/// Applies the next (at most `batch`) events past `position` and moves the checkpoint, in one
/// transaction; returns what it applied (nothing if no event is past the checkpoint) and the
/// checkpoint it left. `position` is the checkpoint as the caller last left it, which a runner
/// knows without reading it: if another runner (or a rebuild) moved it since, the checkpoint's
/// compare-and-set finds out and the batch is read again from the real checkpoint. A runner that
/// publishes the position after each batch, rather than after draining, lets readers waiting
/// for their own writes go sooner under load.
pub async fn apply_batch(
    db: &dyn Database,
    projection: &dyn Projection,
    batch: i64,
    mut position: i64,
) -> Result<CaughtUp> {
    loop {
        let events = event_store::read_all(db, position, batch).await?;
        let Some(last) = events.last().map(|e| e.position) else { return Ok(CaughtUp { applied: 0, position }) };
        let mut tx = db.begin().await?;
        // The checkpoint moves first, and only from where this runner left it. The row lock this
        // takes queues the runners of one projection (each replica of a service runs one), and
        // when another runner moved it since, nothing matches: that runner applied these events,
        // so this one rolls back and reads again from the real checkpoint.
        if !checkpoints::advance(tx.as_mut(), projection.name(), position, last).await? {
            position = checkpoints::load_in(tx.as_mut(), projection.name()).await?;
            continue;
        }
        for event in &events {
            projection.apply(tx.as_mut(), event).await?;
        }
        tx.commit().await?;
        return Ok(CaughtUp { applied: events.len(), position: last });
    }
}

/// For an *inline* projection — one applied in the transaction of each append, so every
/// committed event is in its read model already — moves the checkpoint over the events
/// committed past it without applying them again, reading at most `limit` of them; returns the
/// checkpoint it left. Appends do not move the checkpoint themselves: on PostgreSQL each would
/// wait on that one row for the previous append to commit. So a [`catch_up`] at start finds
/// what was appended since this last ran, and applies it again: an inline projection's `apply`
/// must be idempotent.
pub async fn skip_applied(db: &dyn Database, projection: &dyn Projection, limit: i64) -> Result<i64> {
    let from = checkpoints::load(db, projection.name()).await?;
    let Some(to) = event_store::last_committed(db, from, limit).await? else { return Ok(from) };
    let mut tx = db.begin().await?;
    // Compare-and-set: if a catch-up or another process moved it since, it stays theirs.
    if checkpoints::advance(tx.as_mut(), projection.name(), from, to).await? {
        tx.commit().await?;
        return Ok(to);
    }
    Ok(from)
}

/// Clears the read model, resets its checkpoint to 0 and replays every event.
pub async fn rebuild(db: &dyn Database, projection: &dyn Projection, batch: i64) -> Result<CaughtUp> {
    let mut tx = db.begin().await?;
    projection.reset(tx.as_mut()).await?;
    checkpoints::save(tx.as_mut(), projection.name(), 0).await?;
    tx.commit().await?;
    catch_up(db, projection, batch).await
}
