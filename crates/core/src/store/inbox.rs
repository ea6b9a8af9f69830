//! The inbox: which events a consumer has handled. Recording happens in the same transaction
//! as the handler's effect, so a duplicate delivery finds the record and has no second effect.

use uuid::Uuid;

use crate::{
    db::{Database, Transaction},
    store::{Result, now_millis},
};

/// Records that `consumer` handles `event_id`; `false` if it already did (a duplicate).
pub async fn record(tx: &mut dyn Transaction, consumer: &str, event_id: Uuid) -> Result<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO weir_inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3)
             ON CONFLICT (consumer, event_id) DO NOTHING",
            &[consumer.into(), event_id.to_string().into(), now_millis().into()],
        )
        .await?;
    Ok(inserted == 1)
}

/// Whether `consumer` has handled `event_id` (committed data).
pub async fn contains(db: &dyn Database, consumer: &str, event_id: Uuid) -> Result<bool> {
    let rows = db
        .query(
            "SELECT 1 FROM weir_inbox WHERE consumer = $1 AND event_id = $2",
            &[consumer.into(), event_id.to_string().into()],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Forgets records older than `before_millis`; returns how many. Keep records longer than any
/// redelivery can take (the broker's retention), or duplicates may slip through.
pub async fn prune(tx: &mut dyn Transaction, before_millis: i64) -> Result<u64> {
    Ok(tx.execute("DELETE FROM weir_inbox WHERE handled_at < $1", &[before_millis.into()]).await?)
}
