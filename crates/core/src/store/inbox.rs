//! The inbox: which events a consumer has handled. Recording happens in the same transaction
//! as the handler's effect, so a duplicate delivery finds the record and has no second effect.

use std::{collections::HashSet, fmt::Write as _};

use uuid::Uuid;

use crate::{
    db::{Database, Transaction, Value},
    store::{Error, Result, now_millis},
};

/// Records that `consumer` handles `event_id`; `false` if it already did (a duplicate).
pub async fn record(tx: &mut dyn Transaction, consumer: &str, event_id: Uuid) -> Result<bool> {
    Ok(!record_many(tx, consumer, &[event_id]).await?.is_empty())
}

/// Records that `consumer` handles each of `event_ids`, in one statement (one round trip to a
/// database server, however many); returns the ids not recorded before. An id listed twice is
/// returned once: the caller handles its first occurrence and takes the others for duplicates.
pub async fn record_many(tx: &mut dyn Transaction, consumer: &str, event_ids: &[Uuid]) -> Result<HashSet<Uuid>> {
    if event_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = String::from("INSERT INTO weir_inbox (consumer, event_id, handled_at) VALUES ");
    let mut params: Vec<Value> = Vec::with_capacity(event_ids.len() + 2);
    params.extend([consumer.into(), now_millis().into()]);
    for (i, id) in event_ids.iter().enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{separator}($1, ${}, $2)", i + 3);
        params.push(id.to_string().into());
    }
    sql.push_str(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id");
    tx.query(&sql, &params)
        .await?
        .iter()
        .map(|row| Uuid::parse_str(row.text(0)?).map_err(|e| Error::Db(crate::db::Error::Decode(e.to_string()))))
        .collect()
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

/// Records [`prune`] deletes per transaction, so that other writers wait for a bounded delete.
const PRUNE_CHUNK: u64 = 5_000;

/// Forgets the records older than `before_millis`, a few thousand per transaction; returns
/// how many. Keep records longer than any copy of an event can take to arrive (a redelivery
/// after a crash comes within seconds; a redriven dead letter is addressed to the group that
/// gave up on it, which has no record of it), or a late duplicate slips through.
pub async fn prune(db: &dyn Database, before_millis: i64) -> Result<u64> {
    let mut total = 0;
    loop {
        let mut tx = db.begin().await?;
        let deleted = tx
            .execute(
                "DELETE FROM weir_inbox WHERE (consumer, event_id) IN (
                    SELECT consumer, event_id FROM weir_inbox WHERE handled_at < $1 LIMIT $2)",
                &[before_millis.into(), (PRUNE_CHUNK as i64).into()],
            )
            .await?;
        tx.commit().await?;
        total += deleted;
        if deleted < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}
