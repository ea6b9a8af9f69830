//! The consumers: reserve on `payment_successful`, release on `release_stock`, sell on
//! `order_completed`. Each runs inside the router's transaction (`ctx.tx()`), which also holds
//! the inbox record and the outputs, so a stock change and its answer commit together.
//!
//! # Why this is safe under repeats and races
//! - The same event twice: the router's inbox drops the second delivery.
//! - A different event with the same meaning (a second payment for an order, a second release):
//!   the `order_stock` row decides. It is *claimed* with `INSERT … ON CONFLICT DO NOTHING` before
//!   anything else, so exactly one handler ever reserves for an order, and a release that comes
//!   first leaves a tombstone that makes a late payment reserve nothing.
//! - Concurrent handlers on PostgreSQL: state changes are guarded updates
//!   (`… WHERE state = 'reserved'`) and stock moves are conditional (`… AND available >= q`),
//!   so two transactions cannot both move the same units; a lost race is a transient error and
//!   the retry sees the winner's state.
//! - The schema's CHECK constraints refuse any row where `initial != available + reserved + sold`
//!   or a count is negative: a bug here fails the transaction instead of losing stock.
//!
//! # Locks
//! Every stock move locks its products' rows until commit, and a shop's popular products are in
//! most orders, so the three consumers say they lock shared rows
//! ([`Handler::locks_contended_rows`]): on PostgreSQL each delivery then runs in a transaction of
//! its own instead of a batch that would hold the rows across all its messages. They lock
//! products in one order — by product id (`merge_lines`, and the reservations read back
//! `ORDER BY product_id`) — so concurrent deliveries never deadlock.

use async_trait::async_trait;
use tracing::{debug, info, warn};
use uuid::Uuid;
use weir_contracts::{
    Contract, LineItem, OrderCompleted, PaymentSuccessful, ReleaseStock, StockReleased, StockReserved, StockUnavailable,
};
use weir_core::{Context, Event, Handler, HandlerError, Outgoing, Transaction, Value, store::now_millis};

use crate::{
    SOURCE,
    domain::{OrderState, Shortage, merge_lines, unavailable_reason},
};

fn count_reservation(outcome: &'static str) {
    metrics::counter!("weir_inventory_reservations_total", "outcome" => outcome).increment(1);
}

fn count_release(outcome: &'static str) {
    metrics::counter!("weir_inventory_releases_total", "outcome" => outcome).increment(1);
}

/// The order's stock row, if inventory has heard of the order.
async fn order_state(
    tx: &mut dyn Transaction,
    order_id: Uuid,
) -> Result<Option<(OrderState, Option<String>)>, HandlerError> {
    let rows =
        tx.query("SELECT state, reason FROM order_stock WHERE order_id = $1", &[order_id.to_string().into()]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let state = row.text(0)?;
    let state = OrderState::parse(state)
        .ok_or_else(|| HandlerError::permanent(format!("order {order_id} has an unknown stock state {state:?}")))?;
    Ok(Some((state, row.opt_text(1)?.map(str::to_owned))))
}

/// The order's reservations, ordered by product id (the order of the first answer).
async fn reservations(tx: &mut dyn Transaction, order_id: Uuid) -> Result<Vec<LineItem>, HandlerError> {
    let rows = tx
        .query(
            "SELECT product_id, quantity FROM reservations WHERE order_id = $1 ORDER BY product_id",
            &[order_id.to_string().into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let product_id = Uuid::parse_str(row.text(0)?)
                .map_err(|e| HandlerError::permanent(format!("a reservation of order {order_id} has a bad id: {e}")))?;
            let quantity = u32::try_from(row.i64(1)?).map_err(|_| {
                HandlerError::permanent(format!("a reservation of order {order_id} has a bad quantity"))
            })?;
            Ok(LineItem { product_id, quantity })
        })
        .collect()
}

/// Applies `sql` (with parameters `$1` = quantity, `$2` = product id) to every reserved line;
/// every line must hit its product.
async fn move_reserved(
    tx: &mut dyn Transaction,
    order_id: Uuid,
    lines: &[LineItem],
    sql: &str,
) -> Result<(), HandlerError> {
    let rows: Vec<Vec<Value>> =
        lines.iter().map(|l| vec![i64::from(l.quantity).into(), l.product_id.to_string().into()]).collect();
    let moved = tx.execute_many(sql, &rows).await?;
    if moved != lines.len() as u64 {
        // Products are never deleted, so this is a bug; the dead-letter queue shows it to a human.
        return Err(HandlerError::permanent(format!(
            "order {order_id}: {} reserved lines but {moved} products updated",
            lines.len()
        )));
    }
    Ok(())
}

/// `payments`: reserves every line of a paid order, all or nothing.
pub struct Payments;

#[async_trait]
impl Handler for Payments {
    /// See "Locks" in the module documentation.
    fn locks_contended_rows(&self) -> bool {
        true
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == PaymentSuccessful::KIND
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(payment) = PaymentSuccessful::decode(event) else { return Ok(vec![]) };
        reserve(ctx.tx(), event, payment?).await
    }
}

async fn reserve(
    tx: &mut dyn Transaction,
    event: &Event,
    payment: PaymentSuccessful,
) -> Result<Vec<Outgoing>, HandlerError> {
    let order_id = payment.order_id;
    let claimed = tx
        .execute(
            "INSERT INTO order_stock (order_id, state, reason, updated_at) VALUES ($1, $2, NULL, $3)
             ON CONFLICT (order_id) DO NOTHING",
            &[order_id.to_string().into(), OrderState::Reserved.as_str().into(), now_millis().into()],
        )
        .await?
        == 1;
    if !claimed {
        return answer_again(tx, event, order_id).await;
    }

    let lines = merge_lines(&payment.items);
    let mut shortages = Vec::new();
    for line in &lines {
        let rows = tx
            .query("SELECT sku, available FROM products WHERE id = $1", &[line.product_id.to_string().into()])
            .await?;
        match rows.first() {
            None => shortages.push(Shortage::Unknown { product_id: line.product_id }),
            Some(row) => {
                let available = row.i64(1)?;
                if available < i64::from(line.quantity) {
                    shortages.push(Shortage::Short { sku: row.text(0)?.to_owned(), available });
                }
            }
        }
    }
    if !shortages.is_empty() {
        let reason = unavailable_reason(&shortages);
        tx.execute(
            "UPDATE order_stock SET state = $2, reason = $3 WHERE order_id = $1",
            &[order_id.to_string().into(), OrderState::Unavailable.as_str().into(), reason.clone().into()],
        )
        .await?;
        count_reservation("unavailable");
        info!(order_id = %order_id, %reason, "stock unavailable; nothing reserved");
        return Ok(vec![StockUnavailable { order_id, reason }.reply_to(SOURCE, event)]);
    }

    let moves: Vec<Vec<Value>> =
        lines.iter().map(|l| vec![i64::from(l.quantity).into(), l.product_id.to_string().into()]).collect();
    let moved = tx
        .execute_many(
            "UPDATE products SET available = available - $1, reserved = reserved + $1
             WHERE id = $2 AND available >= $1",
            &moves,
        )
        .await?;
    if moved != lines.len() as u64 {
        // Another transaction took the units between our check and our update (PostgreSQL
        // only; SQLite has one writer). Roll everything back and decide again.
        return Err(HandlerError::transient(format!("order {order_id}: stock changed while reserving")));
    }
    let rows: Vec<Vec<Value>> = lines
        .iter()
        .map(|l| vec![order_id.to_string().into(), l.product_id.to_string().into(), i64::from(l.quantity).into()])
        .collect();
    tx.execute_many("INSERT INTO reservations (order_id, product_id, quantity) VALUES ($1, $2, $3)", &rows).await?;
    count_reservation("reserved");
    debug!(order_id = %order_id, lines = lines.len(), "stock reserved");
    Ok(vec![StockReserved { order_id, items: lines }.reply_to(SOURCE, event)])
}

/// A second payment for an order inventory already decided: the same answer, no second effect.
async fn answer_again(tx: &mut dyn Transaction, event: &Event, order_id: Uuid) -> Result<Vec<Outgoing>, HandlerError> {
    let Some((state, reason)) = order_state(tx, order_id).await? else {
        // The claim failed, so the row exists; not finding it means the store misbehaves.
        return Err(HandlerError::transient(format!("order {order_id}: stock row vanished")));
    };
    match state {
        OrderState::Reserved => {
            count_reservation("repeated");
            let items = reservations(tx, order_id).await?;
            debug!(order_id = %order_id, "already reserved; answering again");
            Ok(vec![StockReserved { order_id, items }.reply_to(SOURCE, event)])
        }
        OrderState::Unavailable => {
            count_reservation("repeated");
            let reason = reason.unwrap_or_else(|| "stock was unavailable".to_owned());
            Ok(vec![StockUnavailable { order_id, reason }.reply_to(SOURCE, event)])
        }
        OrderState::Released => {
            count_reservation("refused");
            info!(order_id = %order_id, "payment arrived after the order's stock was released; reserving nothing");
            Ok(vec![])
        }
        OrderState::Sold => {
            count_reservation("repeated");
            debug!(order_id = %order_id, "payment for an order already sold; nothing to do");
            Ok(vec![])
        }
    }
}

/// `inventory.commands`: releases an order's reservation.
pub struct Commands;

#[async_trait]
impl Handler for Commands {
    /// See "Locks" in the module documentation.
    fn locks_contended_rows(&self) -> bool {
        true
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(command) = ReleaseStock::decode(event) else {
            warn!(event_type = %event.kind, "ignoring an unknown command");
            return Ok(vec![]);
        };
        release(ctx.tx(), event, command?).await
    }
}

async fn release(
    tx: &mut dyn Transaction,
    event: &Event,
    command: ReleaseStock,
) -> Result<Vec<Outgoing>, HandlerError> {
    let order_id = command.order_id;
    let now = now_millis();
    let answer = |released| vec![StockReleased { order_id, released }.reply_to(SOURCE, event)];

    // Nothing known about the order: leave a tombstone so a late payment reserves nothing.
    let tombstoned = tx
        .execute(
            "INSERT INTO order_stock (order_id, state, reason, updated_at) VALUES ($1, $2, NULL, $3)
             ON CONFLICT (order_id) DO NOTHING",
            &[order_id.to_string().into(), OrderState::Released.as_str().into(), now.into()],
        )
        .await?
        == 1;
    if tombstoned {
        count_release("tombstone");
        info!(order_id = %order_id, "release before any reservation; tombstone left");
        return Ok(answer(false));
    }

    let unreserved = tx
        .execute(
            "UPDATE order_stock SET state = $2, updated_at = $3 WHERE order_id = $1 AND state = $4",
            &[
                order_id.to_string().into(),
                OrderState::Released.as_str().into(),
                now.into(),
                OrderState::Reserved.as_str().into(),
            ],
        )
        .await?
        == 1;
    if unreserved {
        let lines = reservations(tx, order_id).await?;
        move_reserved(
            tx,
            order_id,
            &lines,
            "UPDATE products SET available = available + $1, reserved = reserved - $1 WHERE id = $2",
        )
        .await?;
        count_release("released");
        info!(order_id = %order_id, lines = lines.len(), "stock released");
        return Ok(answer(true));
    }

    match order_state(tx, order_id).await? {
        Some((OrderState::Sold, _)) => {
            count_release("sold");
            warn!(order_id = %order_id, "release asked for an order already sold; stock left as is");
        }
        state => {
            count_release("repeated");
            debug!(order_id = %order_id, state = ?state.map(|s| s.0), "nothing reserved to release; answering again");
        }
    }
    Ok(answer(false))
}

/// `orders`: a completed order's reserved stock becomes sold.
pub struct Orders;

#[async_trait]
impl Handler for Orders {
    /// See "Locks" in the module documentation.
    fn locks_contended_rows(&self) -> bool {
        true
    }

    fn accepts(&self, kind: &str) -> bool {
        kind == OrderCompleted::KIND
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(completed) = OrderCompleted::decode(event) else { return Ok(vec![]) };
        sell(ctx.tx(), completed?.order_id).await?;
        Ok(vec![])
    }
}

async fn sell(tx: &mut dyn Transaction, order_id: Uuid) -> Result<(), HandlerError> {
    let sold = tx
        .execute(
            "UPDATE order_stock SET state = $2, updated_at = $3 WHERE order_id = $1 AND state = $4",
            &[
                order_id.to_string().into(),
                OrderState::Sold.as_str().into(),
                now_millis().into(),
                OrderState::Reserved.as_str().into(),
            ],
        )
        .await?
        == 1;
    if !sold {
        match order_state(tx, order_id).await? {
            Some((OrderState::Sold, _)) => debug!(order_id = %order_id, "already sold"),
            state => {
                warn!(order_id = %order_id, state = ?state.map(|s| s.0), "order completed without a reservation")
            }
        }
        return Ok(());
    }
    let lines = reservations(tx, order_id).await?;
    move_reserved(tx, order_id, &lines, "UPDATE products SET reserved = reserved - $1, sold = sold + $1 WHERE id = $2")
        .await?;
    metrics::counter!("weir_inventory_sales_total").increment(1);
    debug!(order_id = %order_id, lines = lines.len(), "stock sold");
    Ok(())
}
