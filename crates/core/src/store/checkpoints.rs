//! Projection checkpoints: the global position a read model has applied, saved in the same
//! transaction as the read model's rows, so the two never disagree.

use crate::{
    db::{Database, Row, Transaction},
    store::Result,
};

/// The position `projection` has applied up to (0 if none).
pub async fn load(db: &dyn Database, projection: &str) -> Result<i64> {
    position(db.query(SELECT, &[projection.into()]).await?)
}

const SELECT: &str = "SELECT position FROM weir_checkpoints WHERE projection = $1";

fn position(rows: Vec<Row>) -> Result<i64> {
    Ok(rows.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0))
}

/// The position `projection` has applied up to (0 if none), as `tx` sees it.
pub async fn load_in(tx: &mut dyn Transaction, projection: &str) -> Result<i64> {
    position(tx.query(SELECT, &[projection.into()]).await?)
}

/// Moves `projection` from `from` to `to` if it is at `from` (0: no checkpoint yet); returns
/// whether it was. The row stays locked until `tx` ends, so runners of one projection take turns.
pub async fn advance(tx: &mut dyn Transaction, projection: &str, from: i64, to: i64) -> Result<bool> {
    let moved = tx
        .execute(
            "INSERT INTO weir_checkpoints (projection, position) VALUES ($1, $3)
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position
             WHERE weir_checkpoints.position = $2",
            &[projection.into(), from.into(), to.into()],
        )
        .await?;
    Ok(moved == 1)
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
