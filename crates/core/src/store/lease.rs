//! Leases: at most one live owner of a named job per database (the outbox relay, the timer
//! scheduler), taken over when the owner stops renewing — e.g. because it was killed.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    db::Database,
    store::{Result, now_millis},
};

/// Takes or renews the lease `name` for `owner` for `ttl`; `true` if `owner` holds it now.
pub async fn acquire(db: &dyn Database, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
    let now = now_millis();
    let until = now + ttl.as_millis() as i64;
    let mut tx = db.begin().await?;
    let changed = tx
        .execute(
            "INSERT INTO weir_leases (name, owner, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
             WHERE weir_leases.owner = excluded.owner OR weir_leases.until < $4",
            &[name.into(), owner.into(), until.into(), now.into()],
        )
        .await?;
    tx.commit().await?;
    Ok(changed == 1)
}

/// Gives the lease up early, so another owner need not wait for it to expire.
pub async fn release(db: &dyn Database, name: &str, owner: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    tx.execute("DELETE FROM weir_leases WHERE name = $1 AND owner = $2", &[name.into(), owner.into()]).await?;
    tx.commit().await?;
    Ok(())
}

/// [`acquire`] for a worker that asks every round: remembers the last answer, so a holder renews
/// once half the lease's life has passed and another owner asks again after a quarter of it.
/// Each ask is a write; asking every round cost a commit per round (the relay's rounds follow its
/// process's commits, so a replica that did not hold the lease wrote once per order).
#[derive(Debug, Default)]
pub struct Remembered(Mutex<Option<(String, bool, Instant)>>);

impl Remembered {
    /// Whether `owner` holds the lease `name` (of life `ttl`), asking the database only when
    /// the last answer for `owner` has run out.
    pub async fn hold(&self, db: &dyn Database, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        if let Some((holder, held, until)) = &*self.0.lock().unwrap_or_else(|e| e.into_inner())
            && holder == owner
            && Instant::now() < *until
        {
            return Ok(*held);
        }
        let asked = Instant::now();
        let held = acquire(db, name, owner, ttl).await?;
        let stands = ttl / if held { 2 } else { 4 };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((owner.to_owned(), held, asked + stands));
        Ok(held)
    }
}
