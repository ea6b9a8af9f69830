//! Projection checkpoints: the global position a read model has applied, saved in the same
//! transaction as the read model's rows, so the two never disagree.

use crate::{
    db::{Database, Transaction},
    store::Result,
};

/// The position `projection` has applied up to (0 if none).
pub async fn load(db: &dyn Database, projection: &str) -> Result<i64> {
    let rows = db.query("SELECT position FROM weir_checkpoints WHERE projection = $1", &[projection.into()]).await?;
    Ok(rows.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0))
}

/// Moves `projection` to `position`, inside the transaction that updated its read model.
pub async fn save(tx: &mut dyn Transaction, projection: &str, position: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO weir_checkpoints (projection, position) VALUES ($1, $2)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
        &[projection.into(), position.into()],
    )
    .await?;
    Ok(())
}
