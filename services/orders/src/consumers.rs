//! What the service consumes from the bus: inventory's catalog (prices) and the saga's commands.

use async_trait::async_trait;
use tracing::info;
use uuid::Uuid;
use weir_contracts::{CancelOrder, CompleteOrder, Contract, ProductAdded, ProductPriceChanged};
use weir_core::{Context, Event, Handler, HandlerError, Outgoing, store::event_store::ExpectedVersion};

use crate::store;

/// Keeps the `prices` table in step with inventory's `product_added` / `product_price_changed`.
/// Other inventory events are not about prices and are skipped.
pub struct Prices;

#[async_trait]
impl Handler for Prices {
    fn accepts(&self, kind: &str) -> bool {
        [ProductAdded::KIND, ProductPriceChanged::KIND].contains(&kind)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let at = event.time.timestamp_micros();
        if let Some(added) = ProductAdded::decode(event) {
            let added = added?;
            refuse_negative(added.product_id, added.price.amount)?;
            let product =
                store::Product { product_id: added.product_id, sku: &added.sku, name: &added.name, price: added.price };
            store::put_product(ctx.tx(), &product, at).await?;
            info!(product_id = %added.product_id, price = %added.price, "product price recorded");
        } else if let Some(changed) = ProductPriceChanged::decode(event) {
            let changed = changed?;
            refuse_negative(changed.product_id, changed.price.amount)?;
            if !store::change_price(ctx.tx(), changed.product_id, changed.price, at).await? {
                // Inventory publishes a product's events in order, so this is a product whose
                // `product_added` was never seen; dead-letter it so it can be redriven after.
                return Err(HandlerError::permanent(format!(
                    "price change for product {} whose product_added was never received",
                    changed.product_id
                )));
            }
            info!(product_id = %changed.product_id, price = %changed.price, "product price changed");
        }
        Ok(Vec::new())
    }
}

fn refuse_negative(product_id: Uuid, amount: i64) -> Result<(), HandlerError> {
    if amount < 0 {
        return Err(HandlerError::permanent(format!("product {product_id} has a negative price ({amount})")));
    }
    Ok(())
}

/// Handles the saga's `complete_order` / `cancel_order`: load the order from its stream,
/// decide, append what was decided at the version read (a concurrent writer makes this a
/// conflict, which is transient, so the router retries on fresh state), and hand the same
/// events to the router for the outbox — both in the handler's transaction.
pub struct Commands;

enum Command {
    Complete,
    Cancel(String),
}

#[async_trait]
impl Handler for Commands {
    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let (order_id, command) = if let Some(complete) = CompleteOrder::decode(event) {
            (complete?.order_id, Command::Complete)
        } else if let Some(cancel) = CancelOrder::decode(event) {
            let cancel = cancel?;
            (cancel.order_id, Command::Cancel(cancel.reason))
        } else {
            return Err(HandlerError::permanent(format!("orders has no command of type `{}`", event.kind)));
        };
        let Some((order, version)) = store::load(ctx.tx(), order_id).await? else {
            return Err(HandlerError::permanent(format!("unknown order {order_id}: it has no order_created")));
        };
        let decided = match &command {
            Command::Complete => order.complete(),
            Command::Cancel(reason) => order.cancel(reason),
        };
        if decided.is_empty() {
            // Terminal: a repeated or late command changes nothing and says nothing again.
            info!(order_id = %order_id, status = order.status.as_str(), command = %event.kind,
                "order is already final; command ignored");
            return Ok(Vec::new());
        }
        let outgoing: Vec<Outgoing> = decided.iter().map(|e| e.reply_to(event)).collect();
        let events: Vec<Event> = outgoing.iter().map(|o| o.event.clone()).collect();
        let dialect = ctx.dialect;
        store::record(ctx.tx(), dialect, order_id, ExpectedVersion::Exact(version), &events).await?;
        match command {
            Command::Complete => {
                metrics::counter!("weir_orders_completed_total").increment(1);
                info!(order_id = %order_id, "order completed");
            }
            Command::Cancel(reason) => {
                metrics::counter!("weir_orders_cancelled_total").increment(1);
                info!(order_id = %order_id, reason = %reason, "order cancelled");
            }
        }
        Ok(outgoing)
    }
}
