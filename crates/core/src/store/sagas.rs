//! Saga instances and durable timers.
//!
//! A saga instance is a state blob with a version: [`save`] fails with a conflict when someone
//! else saved first, so two deliveries racing on one instance cannot both win. A timer is a
//! message scheduled for later: when it is due, the [`Scheduler`] moves it into the outbox in
//! one transaction, so it fires once and survives crashes. Cancelling it (the step answered in
//! time) deletes it in the handler's transaction.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    db::{Database, Db, Transaction, Value},
    event::Event,
    store::{Error, Result, lease, now_millis, outbox::Outbox},
};

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub state: Vec<u8>,
    pub version: i64,
    pub done: bool,
}

/// Loads an instance inside `tx` (so the decision and its effects share one snapshot).
pub async fn load(tx: &mut dyn Transaction, saga_type: &str, id: &str) -> Result<Option<Instance>> {
    let rows = tx
        .query(
            "SELECT state, version, done FROM weir_sagas WHERE saga_type = $1 AND id = $2",
            &[saga_type.into(), id.into()],
        )
        .await?;
    rows.first()
        .map(|r| Ok(Instance { state: r.blob(0)?.to_vec(), version: r.i64(1)?, done: r.i64(2)? != 0 }))
        .transpose()
}

/// Saves an instance whose stored version is `expected` (0 for a new one); returns the new version.
pub async fn save(
    tx: &mut dyn Transaction,
    saga_type: &str,
    id: &str,
    state: &[u8],
    expected: i64,
    done: bool,
) -> Result<i64> {
    let params: [Value; 6] =
        [saga_type.into(), id.into(), state.into(), (expected + 1).into(), done.into(), now_millis().into()];
    let changed = if expected == 0 {
        tx.execute(
            "INSERT INTO weir_sagas (saga_type, id, state, version, done, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (saga_type, id) DO NOTHING",
            &params,
        )
        .await?
    } else {
        tx.execute(
            "UPDATE weir_sagas SET state = $3, version = $4, done = $5, updated_at = $6
             WHERE saga_type = $1 AND id = $2 AND version = $4 - 1",
            &params,
        )
        .await?
    };
    if changed != 1 {
        return Err(Error::Conflict {
            what: format!("saga {saga_type}/{id}"),
            expected: expected.to_string(),
            actual: None,
        });
    }
    Ok(expected + 1)
}

/// Forgets at most `limit` finished instances last saved before `before_millis`, in one
/// transaction; returns how many. An event for a forgotten instance finds none and is handled
/// as if the saga had not started, so keep finished instances at least as long as the inbox
/// keeps its records (every copy of an event has arrived by then; see [`inbox::prune`]).
///
/// [`inbox::prune`]: crate::store::inbox::prune
pub async fn prune(db: &dyn Database, before_millis: i64, limit: u64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let deleted = tx
        .execute(
            "DELETE FROM weir_sagas WHERE (saga_type, id) IN (
                SELECT saga_type, id FROM weir_sagas WHERE done = 1 AND updated_at < $1 LIMIT $2)",
            &[before_millis.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
        )
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Schedules `event` to be published to `topic` at `due_at` (ms since the epoch). A timer with
/// the same `key` is replaced.
pub async fn schedule(tx: &mut dyn Transaction, key: &str, due_at: i64, topic: &str, event: &Event) -> Result<()> {
    crate::bus::validate_name(topic)?;
    tx.execute(
        "INSERT INTO weir_timers (key, due_at, topic, envelope) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET due_at = excluded.due_at, topic = excluded.topic, envelope = excluded.envelope",
        &[key.into(), due_at.into(), topic.into(), Value::Blob(event.to_json())],
    )
    .await?;
    Ok(())
}

/// Cancels the timer `key`; `true` if it was still pending.
pub async fn cancel(tx: &mut dyn Transaction, key: &str) -> Result<bool> {
    Ok(tx.execute("DELETE FROM weir_timers WHERE key = $1", &[key.into()]).await? == 1)
}

/// Fires due timers into the outbox, and forgets finished sagas after a while.
pub struct Scheduler {
    db: Db,
    outbox: Outbox,
    /// Longest sleep between looks (timers scheduled by other processes are seen this late).
    pub poll: Duration,
    /// How long finished instances are kept ([`prune`]d once an hour); `None` keeps them.
    /// The default is a week, as the router's `inbox_retention`.
    pub retention: Option<Duration>,
    /// Finished sagas forgotten per round: a backlog of them (the first prune after an upgrade,
    /// an hour of a busy day) goes a chunk per round, between the rounds' timers, so no timer
    /// waits for more than one chunk's delete.
    pub prune_chunk: u64,
}

/// How often the scheduler holding the lease forgets finished sagas.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Scheduler {
    pub fn new(db: Db, outbox: Outbox) -> Self {
        Self {
            db,
            outbox,
            poll: Duration::from_millis(200),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            prune_chunk: 5_000,
        }
    }

    /// Forgets a chunk of the finished sagas older than the retention if `next` has come, and
    /// moves `next`: to now while chunks come back full (the next round goes on), else an hour
    /// on. [`run`](Self::run) calls it once a round, after firing the due timers.
    pub async fn prune_when_due(&self, next: &mut Instant) {
        let Some(retention) = self.retention else { return };
        if Instant::now() < *next {
            return;
        }
        let before = now_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let forgotten = prune(self.db.as_ref(), before, self.prune_chunk).await;
        let more = matches!(forgotten, Ok(n) if n > 0 && n == self.prune_chunk);
        *next = Instant::now() + if more { Duration::ZERO } else { PRUNE_EVERY };
        match forgotten {
            Ok(0) => {}
            Ok(forgotten) => debug!(forgotten, "forgot finished sagas"),
            Err(e) => warn!(error = %e, "forgetting finished sagas failed; it is tried again later"),
        }
    }

    /// Fires every timer due now; returns how many fired.
    pub async fn fire_due(&self) -> Result<usize> {
        let due = self
            .db
            .query(
                "SELECT id, topic, envelope FROM weir_timers WHERE due_at <= $1 ORDER BY due_at LIMIT 500",
                &[now_millis().into()],
            )
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        // One transaction for the batch: each timer is deleted and its event enqueued together,
        // and deleting first makes firing exactly-once even if two schedulers overlap.
        let mut tx = self.db.begin().await?;
        let mut fired = 0;
        for row in &due {
            if tx.execute("DELETE FROM weir_timers WHERE id = $1", &[row.i64(0)?.into()]).await? == 1 {
                let event = Event::from_json(row.blob(2)?)?;
                self.outbox.enqueue(tx.as_mut(), row.text(1)?, vec![event]).await?;
                fired += 1;
            }
        }
        self.outbox.commit(tx).await?;
        Ok(fired)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let owner = uuid::Uuid::now_v7().to_string();
        let lease = lease::Remembered::default();
        let mut next_prune = Instant::now() + Duration::from_secs(60);
        while !shutdown.is_cancelled() {
            let leader = lease.hold(self.db.as_ref(), "weir-timer-scheduler", &owner, Duration::from_secs(10)).await;
            match leader {
                Ok(true) => {
                    if let Err(e) = self.fire_due().await {
                        warn!(error = %e, "timer scheduler round failed");
                    }
                    self.prune_when_due(&mut next_prune).await;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "timer scheduler could not take its lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        let _ = lease::release(self.db.as_ref(), "weir-timer-scheduler", &owner).await;
    }
}
