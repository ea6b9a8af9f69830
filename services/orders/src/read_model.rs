//! The read side (CQRS): the `order_views` table, a projection of the event store that the HTTP
//! reads serve from, and the projector task that keeps it up to date.
//!
//! The projection is a pure function of the event store's global order, so it can be rebuilt
//! from position 0 at any time ([`weir_core::store::projection::rebuild`] with [`OrderViews`]);
//! times in the table are the events' times, never the clock at projection time, so a rebuild
//! reproduces the table exactly.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::SecondsFormat;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;
use weir_contracts::{Currency, Money, PricedLine};
use weir_core::{
    Database, Db, Transaction,
    db::{self, Row},
    store::{
        self, checkpoints,
        event_store::Recorded,
        projection::{self, Projection},
    },
};

use crate::domain::{OrderEvent, Status};

/// Events applied per projection transaction.
const BATCH: i64 = 500;
/// How often the projector looks for events nobody told it about (appends by other processes).
const POLL: Duration = Duration::from_millis(250);
/// A wake can arrive before the writer's commit is visible (a bus handler wakes the projector
/// from inside its transaction); one quick second look catches that commit without waiting a
/// whole poll interval.
const SECOND_LOOK: Duration = Duration::from_millis(10);

/// The `order_views` projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderViews;

impl OrderViews {
    /// The projection's checkpoint name.
    pub const NAME: &'static str = "orders.order_views";
}

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
        if !recorded.stream.starts_with("order-") {
            return Ok(());
        }
        let Some(event) = OrderEvent::decode(&recorded.event) else {
            debug!(kind = %recorded.event.kind, "not an order event; the read model ignores it");
            return Ok(());
        };
        let at = recorded.event.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        match event? {
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

/// Wakes the projector and waits for it; cheap to clone.
#[derive(Clone)]
pub struct ProjectorHandle {
    wake: Arc<Notify>,
    position: watch::Receiver<i64>,
}

impl ProjectorHandle {
    /// Tells the projector that events were (or are about to be) appended.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The position the read model has applied up to.
    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until the read model has applied `position`, for at most `within`; returns whether
    /// it has.
    pub async fn wait_for(&self, position: i64, within: Duration) -> bool {
        let mut position_rx = self.position.clone();
        matches!(tokio::time::timeout(within, position_rx.wait_for(|p| *p >= position)).await, Ok(Ok(_)))
    }
}

/// The task that applies new events to the read model.
pub struct Projector {
    db: Db,
    wake: Arc<Notify>,
    position: watch::Sender<i64>,
}

impl Projector {
    /// A projector starting from the read model's checkpoint.
    pub async fn new(db: Db) -> store::Result<Self> {
        let position = checkpoints::load(db.as_ref(), OrderViews::NAME).await?;
        let (position, _) = watch::channel(position);
        Ok(Self { db, wake: Arc::new(Notify::new()), position })
    }

    pub fn handle(&self) -> ProjectorHandle {
        ProjectorHandle { wake: self.wake.clone(), position: self.position.subscribe() }
    }

    /// Catches up whenever woken and every [`POLL`], until `shutdown`: a batch at a time, its
    /// position published at once (requests waiting to read their writes go), and again at
    /// once while batches keep coming.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut woken = false;
        while !shutdown.is_cancelled() {
            let pause = match self.apply_batch().await {
                Ok(applied) => {
                    failures = 0;
                    if applied > 0 {
                        continue;
                    }
                    if woken { SECOND_LOOK } else { POLL }
                }
                Err(e) => {
                    failures += 1;
                    let backoff = POLL * 2u32.pow(failures.min(5));
                    warn!(error = %e, ?backoff, "the order read model could not catch up; retrying");
                    backoff
                }
            };
            woken = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(pause) => false,
                _ = shutdown.cancelled() => false,
            };
        }
    }

    async fn apply_batch(&self) -> store::Result<usize> {
        let from = *self.position.borrow();
        let projection::CaughtUp { applied, position } =
            projection::apply_batch(self.db.as_ref(), &OrderViews, BATCH, from).await?;
        self.position.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
        metrics::gauge!("weir_orders_read_model_position").set(position as f64);
        if applied > 0 {
            debug!(applied, position, "order read model applied a batch");
        }
        Ok(applied)
    }
}
