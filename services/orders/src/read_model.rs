//! The read side (CQRS): the `order_views` table, a projection of the event store that the HTTP
//! reads serve from.
//!
//! It is an *inline* projection: every append to an order's stream applies its events to the
//! table in the transaction that appends them ([`OrderViews::apply_appended`]), and a task moves
//! the projection's checkpoint past them about once a second
//! ([`weir_core::store::projection::skip_applied`]). So the table always shows every committed
//! event — a client that follows `POST /v1/orders`'s `Location` finds its order, on any process
//! of the service — at the cost of one more row written per event, rather than a projector that
//! reads the events back, writes them in a transaction of its own and has requests wait for it.
//!
//! It is still a projection like any other: a pure function of the event store's global order,
//! rebuilt from position 0 by `weir replay` ([`weir_core::store::projection::rebuild`] with
//! [`OrderViews`]) and caught up from its checkpoint when the service starts (events a
//! projector of an earlier version had not applied yet). Times in the table are the events'
//! times, never the clock at projection time, so a rebuild reproduces the table exactly.

use async_trait::async_trait;
use chrono::SecondsFormat;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;
use weir_contracts::{Currency, Money, PricedLine};
use weir_core::{
    Database, Db, Event, Transaction,
    db::{self, Row},
    store::{
        self,
        event_store::Recorded,
        projection::{self, Projection},
    },
};

use crate::domain::{OrderEvent, Status};

/// Events applied per transaction when catching up or rebuilding.
pub const BATCH: i64 = 500;

/// The `order_views` projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderViews;

impl OrderViews {
    /// The projection's checkpoint name.
    pub const NAME: &'static str = "orders.order_views";

    /// Applies `events`, just appended to `stream` in `tx`. The checkpoint is not moved here
    /// (every append would queue on its row): [`projection::skip_applied`] moves it over what
    /// appends have applied, every [`CHECKPOINT_EVERY`] while the service runs.
    pub async fn apply_appended(tx: &mut dyn Transaction, stream: &str, events: &[Event]) -> store::Result<()> {
        for event in events {
            apply(tx, stream, event).await?;
        }
        Ok(())
    }

    /// Moves the checkpoint over the events appended (and so applied) since it last moved, until
    /// `shutdown`.
    pub async fn keep_checkpoint(db: Db, shutdown: CancellationToken) {
        loop {
            if let Err(e) = projection::skip_applied(db.as_ref(), &OrderViews, 100_000).await {
                warn!(error = %e, "could not move the order read model's checkpoint; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// How often the checkpoint follows the appends: what a start after a crash applies again.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[async_trait]
impl Projection for OrderViews {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> store::Result<()> {
        tx.execute("DELETE FROM order_views", &[]).await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut dyn Transaction, recorded: &Recorded) -> store::Result<()> {
        apply(tx, &recorded.stream, &recorded.event).await
    }
}

/// Applies one event of `stream` to the table; events of other streams are not the read model's.
/// Idempotent (a catch-up applies again what appends applied since the checkpoint last moved):
/// an order's row is inserted once, and leaves `PENDING` once.
async fn apply(tx: &mut dyn Transaction, stream: &str, event: &Event) -> store::Result<()> {
    if !stream.starts_with("order-") {
        return Ok(());
    }
    let Some(decoded) = OrderEvent::decode(event) else {
        debug!(kind = %event.kind, "not an order event; the read model ignores it");
        return Ok(());
    };
    let at = event.time.to_rfc3339_opts(SecondsFormat::Micros, true);
    match decoded? {
        OrderEvent::Created(created) => {
            let items = serde_json::to_string(&created.items).expect("priced lines serialise");
            tx.execute(
                "INSERT INTO order_views (order_id, user_id, status, items, total_amount, currency, reason,
                     created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7)
                 ON CONFLICT (order_id) DO NOTHING",
                &[
                    created.order_id.to_string().into(),
                    created.user_id.to_string().into(),
                    Status::Pending.as_str().into(),
                    items.into(),
                    created.total.amount.into(),
                    created.total.currency.as_str().into(),
                    at.into(),
                ],
            )
            .await?;
        }
        OrderEvent::Completed(completed) => {
            tx.execute(
                "UPDATE order_views SET status = $2, updated_at = $3 WHERE order_id = $1 AND status = $4",
                &[
                    completed.order_id.to_string().into(),
                    Status::Completed.as_str().into(),
                    at.into(),
                    Status::Pending.as_str().into(),
                ],
            )
            .await?;
        }
        OrderEvent::Cancelled(cancelled) => {
            tx.execute(
                "UPDATE order_views SET status = $2, reason = $3, updated_at = $4
                 WHERE order_id = $1 AND status = $5",
                &[
                    cancelled.order_id.to_string().into(),
                    Status::Cancelled.as_str().into(),
                    cancelled.reason.into(),
                    at.into(),
                    Status::Pending.as_str().into(),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// One row of the read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub status: Status,
    pub items: Vec<PricedLine>,
    pub total: Money,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "order_id, user_id, status, items, total_amount, currency, reason, created_at, updated_at";

fn view(row: &Row) -> db::Result<View> {
    let bad = |what: &str, e: &dyn std::fmt::Display| db::Error::Decode(format!("order_views.{what}: {e}"));
    Ok(View {
        order_id: Uuid::parse_str(row.text(0)?).map_err(|e| bad("order_id", &e))?,
        user_id: Uuid::parse_str(row.text(1)?).map_err(|e| bad("user_id", &e))?,
        status: Status::parse(row.text(2)?).ok_or_else(|| bad("status", &row.text(2).unwrap_or_default()))?,
        items: serde_json::from_str(row.text(3)?).map_err(|e| bad("items", &e))?,
        total: Money::new(row.i64(4)?, Currency::parse(row.text(5)?).map_err(|e| bad("currency", &e))?),
        reason: row.opt_text(6)?.map(str::to_owned),
        created_at: row.text(7)?.to_owned(),
        updated_at: row.text(8)?.to_owned(),
    })
}

/// The view of `order_id` if it belongs to `user_id`.
pub async fn get(db: &dyn Database, user_id: Uuid, order_id: Uuid) -> db::Result<Option<View>> {
    let rows = db
        .query(
            &format!("SELECT {COLUMNS} FROM order_views WHERE order_id = $1 AND user_id = $2"),
            &[order_id.to_string().into(), user_id.to_string().into()],
        )
        .await?;
    rows.first().map(view).transpose()
}

/// How many orders are pending, counting up to `at_most`. The status is spelled out in the SQL
/// so that both engines use the partial index of pending orders.
pub async fn pending(db: &dyn Database, at_most: u64) -> db::Result<u64> {
    let limit = i64::try_from(at_most).unwrap_or(i64::MAX);
    let rows = db
        .query(
            "SELECT COUNT(*) FROM (SELECT 1 FROM order_views WHERE status = 'PENDING' LIMIT $1) AS pending",
            &[limit.into()],
        )
        .await?;
    Ok(rows.first().map(|r| r.i64(0)).transpose()?.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Up to `limit` of `user_id`'s orders, newest first, older than `before` when given.
///
/// Order ids are UUIDv7, whose text form sorts by creation time, so the id is the keyset.
pub async fn list(db: &dyn Database, user_id: Uuid, before: Option<Uuid>, limit: i64) -> db::Result<Vec<View>> {
    let rows = match before {
        Some(before) => {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM order_views WHERE user_id = $1 AND order_id < $2
                     ORDER BY order_id DESC LIMIT $3"
                ),
                &[user_id.to_string().into(), before.to_string().into(), limit.into()],
            )
            .await?
        }
        None => {
            db.query(
                &format!("SELECT {COLUMNS} FROM order_views WHERE user_id = $1 ORDER BY order_id DESC LIMIT $2"),
                &[user_id.to_string().into(), limit.into()],
            )
            .await?
        }
    };
    rows.iter().map(view).collect()
}
