//! The transactional outbox and its relay.
//!
//! A handler never publishes to the broker: it [`enqueue`](Outbox::enqueue)s its output events
//! in the transaction that changes its state, so either both commit or neither does. The
//! [`Relay`] then publishes committed rows in order and deletes them once the broker has
//! acknowledged them — together, at most [`RelayOptions::delete_after`] after their publish, so
//! that a busy relay does not pay a commit per round for its deletes. A crash between publish
//! and delete publishes a row again on restart — at-least-once, made exactly-once in effect by
//! the consumers' inbox.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    bus::{Message, Publisher},
    db::{Db, Dialect, Transaction, Value},
    event::Event,
    signing::Keyring,
    store::{Result, lease},
};

/// Writes events to the outbox, signed with the service's keyring.
#[derive(Clone)]
pub struct Outbox {
    keyring: Keyring,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(keyring: Keyring) -> Self {
        Self { keyring, wake: Arc::new(Notify::new()) }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Signs `events` and writes them, in order, for `topic`, inside `tx`.
    pub async fn enqueue(&self, tx: &mut dyn Transaction, topic: &str, events: Vec<Event>) -> Result<()> {
        crate::bus::validate_name(topic)?;
        let rows: Vec<Vec<Value>> = events
            .into_iter()
            .map(|mut e| {
                self.keyring.sign(&mut e);
                vec![topic.into(), Value::Blob(e.to_json())]
            })
            .collect();
        tx.execute_many("INSERT INTO weir_outbox (topic, envelope) VALUES ($1, $2)", &rows).await?;
        Ok(())
    }

    /// Commits `tx` and wakes the relay.
    pub async fn commit(&self, tx: Box<dyn Transaction>) -> Result<()> {
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Tells the relay there is work (for writers that commit themselves).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The relay that publishes this outbox's rows from `db` to `publisher`, with the
    /// [`RelayOptions::for_dialect`] of `db`.
    pub fn relay(&self, db: Db, publisher: Arc<dyn Publisher>) -> Relay {
        Relay {
            options: RelayOptions::for_dialect(db.dialect()),
            db,
            publisher,
            wake: self.wake.clone(),
            lease: lease::Remembered::default(),
            published: std::sync::Mutex::new(Published::default()),
        }
    }
}

/// The relay's lease: one active relay per database.
const LEASE: &str = "weir-outbox-relay";

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows read and published per round.
    pub batch: i64,
    /// How often to look for rows when nobody wakes the relay (writers in other processes).
    pub poll: Duration,
    /// How long the relay's lease lasts; another relay takes over after it expires.
    pub lease: Duration,
    /// Published rows are deleted together, this long after the first of them was published
    /// (or once a batch of them waits). A row published twice because of a crash in between is
    /// absorbed by the consumers' inbox.
    pub delete_after: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 2000,
            poll: Duration::from_millis(500),
            lease: Duration::from_secs(10),
            delete_after: Duration::from_millis(50),
        }
    }
}

impl RelayOptions {
    /// The defaults, but on PostgreSQL a relay looks for rows every 50 ms. There the replicas
    /// of a service share its database and the one that holds the lease publishes the rows of
    /// all; a commit wakes only its own process's relay, so an order taken by another replica
    /// waited for the next look (at 500 ms, a quarter of a second on average). A look is one
    /// indexed query. A SQLite database belongs to one process, whose commits wake its relay.
    pub fn for_dialect(dialect: Dialect) -> Self {
        match dialect {
            Dialect::Postgres => Self { poll: Duration::from_millis(50), ..Self::default() },
            Dialect::Sqlite => Self::default(),
        }
    }
}

/// Rows this relay has published and not deleted yet.
#[derive(Default)]
struct Published {
    seqs: Vec<i64>,
    /// Rounds read past this: the rows up to it are published. It goes back to 0 when they are
    /// deleted, so a row that committed after a higher one (PostgreSQL hands out `seq` before
    /// the commit) is found by the next round.
    after: i64,
    since: Option<Instant>,
}

/// Publishes committed outbox rows; at most one relay per database is active at a time.
pub struct Relay {
    db: Db,
    publisher: Arc<dyn Publisher>,
    wake: Arc<Notify>,
    options: RelayOptions,
    lease: lease::Remembered,
    published: std::sync::Mutex<Published>,
}

impl Relay {
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs until `shutdown` is cancelled; finishes the round in progress first.
    pub async fn run(self, shutdown: CancellationToken) {
        let owner = uuid::Uuid::now_v7().to_string();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.round(&owner).await {
                Ok(n) if n as i64 >= self.options.batch => failures = 0,
                Ok(_) => {
                    failures = 0;
                    // Back when the published rows are due for deletion, if not woken before.
                    let pause = self.delete_due_in().map_or(self.options.poll, |due| due.min(self.options.poll));
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    failures += 1;
                    let backoff = Duration::from_millis(50 * 2u64.pow(failures.min(7)));
                    warn!(error = %e, ?backoff, "outbox relay round failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        if let Err(e) = self.delete_published().await {
            warn!(error = %e, "could not delete published outbox rows at shutdown; they will be published again");
        }
        let _ = lease::release(self.db.as_ref(), LEASE, &owner).await;
    }

    fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until the published rows are due for deletion; `None` if there are none.
    fn delete_due_in(&self) -> Option<Duration> {
        let published = self.published();
        if published.seqs.len() >= self.options.batch as usize {
            return Some(Duration::ZERO);
        }
        published.since.map(|since| self.options.delete_after.saturating_sub(since.elapsed()))
    }

    /// Deletes the rows this relay has published (`run` does so at most
    /// [`RelayOptions::delete_after`] after their publish); returns how many.
    pub async fn delete_published(&self) -> Result<usize> {
        let done: Vec<Vec<Value>> = self.published().seqs.iter().map(|&seq| vec![seq.into()]).collect();
        if !done.is_empty() {
            // Exactly the rows published: on PostgreSQL a lower seq may commit later.
            let mut tx = self.db.begin().await?;
            tx.execute_many("DELETE FROM weir_outbox WHERE seq = $1", &done).await?;
            tx.commit().await?;
        }
        let mut published = self.published();
        published.seqs.drain(..done.len());
        if published.seqs.is_empty() {
            *published = Published::default();
        }
        Ok(done.len())
    }

    /// Publishes one batch of rows not published yet, after deleting the published ones if
    /// they are due; returns how many rows it published.
    pub async fn round(&self, owner: &str) -> Result<usize> {
        if !self.lease.hold(self.db.as_ref(), LEASE, owner, self.options.lease).await? {
            // Another relay is active: `run` comes back after a poll interval (or a wake-up), and
            // the lease is asked about again once the remembered answer runs out.
            return Ok(0);
        }
        if self.delete_due_in() == Some(Duration::ZERO) {
            self.delete_published().await?;
        }
        let after = self.published().after;
        let rows = self
            .db
            .query(
                "SELECT seq, topic, envelope FROM weir_outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[after.into(), self.options.batch.into()],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut messages: Vec<(String, Message)> = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for row in &rows {
            messages.push((row.text(1)?.to_owned(), Event::from_json(row.blob(2)?)?.to_message()));
            seqs.push(row.i64(0)?);
        }
        for (topic, messages) in group_by_topic(messages) {
            self.publisher.publish(&topic, messages).await?;
        }
        let mut published = self.published();
        published.after = seqs.iter().copied().fold(published.after, i64::max);
        published.seqs.extend(seqs);
        published.since.get_or_insert_with(Instant::now);
        drop(published);
        metrics::counter!("weir_outbox_published_total").increment(rows.len() as u64);
        debug!(published = rows.len(), "outbox relay round");
        Ok(rows.len())
    }
}

/// Rows waiting in the outbox (the relay's backlog).
pub async fn backlog(db: &dyn crate::db::Database) -> Result<i64> {
    Ok(db.query("SELECT COUNT(*) FROM weir_outbox", &[]).await?.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0))
}

/// Groups `(topic, item)` pairs by topic, keeping the order of items within each topic (order
/// only matters among one topic's keys) and the order in which topics first appear.
pub(crate) fn group_by_topic<T>(items: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match groups.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, batch)) => batch.push(item),
            None => groups.push((topic, vec![item])),
        }
    }
    groups
}
