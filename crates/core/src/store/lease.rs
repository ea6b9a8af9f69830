//! Leases: at most one live owner of a named job per database (the outbox relay, the timer
//! scheduler), taken over when the owner stops renewing — e.g. because it was killed.

use std::time::Duration;

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
