//! The two consumers: charging on `order_created`, refunding (or voiding) on `refund_payment`.
//!
//! Both call the gateway in `prepare` — outside the transaction, with an idempotency key derived
//! from the order, so a retry or a redelivery can never charge or refund twice — and decide in
//! `handle`, inside the transaction, from the row as it is *then*: a refund command may have
//! been handled while a charge was on its way.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::{debug, info, warn};
use uuid::Uuid;
use weir_contracts::{
    Contract, Currency, LineItem, Money, OrderCreated, PaymentFailed, PaymentRefunded, PaymentSuccessful, RefundPayment,
};
use weir_core::{Context, Db, Event, Handler, HandlerError, Outgoing, Prepared};

use crate::{
    provider::{Charge, ChargeRequest, PaymentProvider, ProviderError, Refund, RefundRequest},
    store::{self, Settled, Status},
};

/// The source of every event this service emits.
pub(crate) const SOURCE: &str = "payments";

/// Said when a charge landed after the order was cancelled, and the money goes back.
pub const LATE_CHARGE_REASON: &str = "charged after the order was cancelled";
/// Said when an order is seen only after its payment was voided.
pub const CANCELLED_BEFORE_CHARGE_REASON: &str = "the order was cancelled before it was charged";

/// A void recorded before the order was seen has no currency; its zero amount is stated in this
/// one (a zero is a zero).
const VOID_CURRENCY: Currency = Currency::EUR;

fn count(outcome: &'static str) {
    metrics::counter!("weir_payments_total", "outcome" => outcome).increment(1);
}

fn decode<C: Contract>(event: &Event) -> Result<Option<C>, HandlerError> {
    Ok(C::decode(event).transpose()?)
}

/// What the gateway said to a charge.
#[derive(Clone)]
enum ChargeOutcome {
    Charged(Charge),
    Declined(String),
}

/// `orders` → charge each new order once.
pub(crate) struct ChargeHandler {
    pub db: Db,
    pub provider: Arc<dyn PaymentProvider>,
}

#[async_trait]
impl Handler for ChargeHandler {
    fn accepts(&self, kind: &str) -> bool {
        kind == OrderCreated::KIND
    }

    async fn prepare(&self, event: &Event) -> Result<Option<Prepared>, HandlerError> {
        let Some(order) = decode::<OrderCreated>(event)? else { return Ok(None) };
        let idempotency_key = format!("charge-{}", order.order_id);
        match store::read(&self.db, order.order_id).await? {
            None => {}
            // Voided before we recorded a charge — but an earlier try may have charged and died
            // before its commit. Ask the gateway (charging nothing); what it finds is refunded.
            Some(payment) if payment.status == Status::Voided => {
                return match self.provider.find_charge(&idempotency_key).await {
                    Ok(found) => Ok(found.map(|charge| Box::new(ChargeOutcome::Charged(charge)) as Prepared)),
                    Err(e) => Err(HandlerError::transient(format!(
                        "cannot ask the gateway whether voided order {} was charged: {e}",
                        order.order_id
                    ))),
                };
            }
            // Already charged, failed or refunded: never call the gateway again for this order.
            Some(_) => return Ok(None),
        }
        let request = ChargeRequest {
            idempotency_key,
            amount: order.total,
            customer: order.user_id,
            traceparent: event.traceparent.clone(),
        };
        let outcome = match self.provider.charge(&request).await {
            Ok(charge) => ChargeOutcome::Charged(charge),
            Err(ProviderError::Declined(reason)) => ChargeOutcome::Declined(reason),
            Err(ProviderError::Unavailable(why)) => {
                count("unavailable");
                return Err(HandlerError::transient(format!("cannot charge order {}: {why}", order.order_id)));
            }
        };
        Ok(Some(Box::new(outcome)))
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(order) = decode::<OrderCreated>(event)? else { return Ok(Vec::new()) };
        let prepared = ctx.prepared::<ChargeOutcome>();
        let existing = store::read_in(ctx.tx(), order.order_id).await?;
        let items: Vec<LineItem> =
            order.items.iter().map(|l| LineItem { product_id: l.product_id, quantity: l.quantity }).collect();
        let order_id = order.order_id;
        match (existing.map(|p| p.status), prepared) {
            (None, Some(ChargeOutcome::Charged(charge))) => {
                store::insert(ctx.tx(), settled(&order, &items, Status::Charged, Some(&charge.charge_id), None))
                    .await?;
                count("charged");
                debug!(%order_id, charge_id = %charge.charge_id, amount = %order.total, "order charged");
                let paid = PaymentSuccessful { order_id, payment_id: charge.charge_id, amount: order.total, items };
                Ok(vec![paid.reply_to(SOURCE, event)])
            }
            (None, Some(ChargeOutcome::Declined(reason))) => {
                store::insert(ctx.tx(), settled(&order, &items, Status::Failed, None, Some(&reason))).await?;
                count("declined");
                info!(%order_id, %reason, "charge declined");
                let failed = PaymentFailed { order_id, reason: format!("the payment was declined: {reason}") };
                Ok(vec![failed.reply_to(SOURCE, event)])
            }
            // `prepare` skips the call only when a row exists, and rows are never deleted.
            (None, None) => Err(HandlerError::transient(format!(
                "the payment row of order {order_id} was seen before the transaction but not in it"
            ))),
            (Some(Status::Voided), Some(ChargeOutcome::Charged(charge))) => {
                // A refund command voided the order while the charge was on its way: keep the
                // charge on record and give the money back.
                store::charge_after_void(
                    ctx.tx(),
                    settled(&order, &items, Status::Charged, Some(&charge.charge_id), None),
                )
                .await?;
                count("charged_after_void");
                warn!(%order_id, charge_id = %charge.charge_id, "charged after the order was voided; refunding");
                let refund = RefundPayment { order_id, reason: LATE_CHARGE_REASON.into() };
                Ok(vec![refund.reply_to(SOURCE, event)])
            }
            (Some(Status::Voided), _) => {
                count("skipped_voided");
                info!(%order_id, "order seen after its payment was voided; not charging");
                let failed = PaymentFailed { order_id, reason: CANCELLED_BEFORE_CHARGE_REASON.into() };
                Ok(vec![failed.reply_to(SOURCE, event)])
            }
            // Charged, failed or refunded already: this is another announcement of an order
            // already settled, and its outcome was published then.
            (Some(status), _) => {
                count("skipped_settled");
                info!(%order_id, status = status.as_str(), "order already settled; nothing to do");
                Ok(Vec::new())
            }
        }
    }
}

/// `payments.commands` → refund a charge, or void an order not charged yet.
pub(crate) struct RefundHandler {
    pub db: Db,
    pub provider: Arc<dyn PaymentProvider>,
}

#[async_trait]
impl Handler for RefundHandler {
    async fn prepare(&self, event: &Event) -> Result<Option<Prepared>, HandlerError> {
        let Some(command) = decode::<RefundPayment>(event)? else { return Ok(None) };
        let Some(payment) = store::read(&self.db, command.order_id).await? else { return Ok(None) };
        if payment.status != Status::Charged {
            return Ok(None);
        }
        let (Some(charge_id), Some(amount)) = (payment.charge_id, payment.amount) else {
            return Err(HandlerError::permanent(format!(
                "the charged payment of order {} has no charge id or amount on record",
                command.order_id
            )));
        };
        let request = RefundRequest {
            idempotency_key: format!("refund-{}", command.order_id),
            charge_id,
            amount,
            traceparent: event.traceparent.clone(),
        };
        match self.provider.refund(&request).await {
            Ok(refund) => Ok(Some(Box::new(refund))),
            // Money we took and cannot give back: a person must look (the dead letter says why).
            Err(ProviderError::Declined(reason)) => {
                count("refund_refused");
                Err(HandlerError::permanent(format!(
                    "the gateway refused to refund order {}: {reason}",
                    command.order_id
                )))
            }
            Err(ProviderError::Unavailable(why)) => {
                count("unavailable");
                Err(HandlerError::transient(format!("cannot refund order {}: {why}", command.order_id)))
            }
        }
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(command) = decode::<RefundPayment>(event)? else { return Ok(Vec::new()) };
        let order_id = command.order_id;
        let refunded = |amount: Money| vec![PaymentRefunded { order_id, amount }.reply_to(SOURCE, event)];
        let zero = |amount: Option<Money>| Money::zero(amount.map_or(VOID_CURRENCY, |m| m.currency));
        let Some(payment) = store::read_in(ctx.tx(), order_id).await? else {
            // Not charged yet: void, so that the charge never happens.
            store::insert_void(ctx.tx(), order_id, &command.reason).await?;
            count("voided");
            info!(%order_id, reason = %command.reason, "payment voided before any charge");
            return Ok(refunded(zero(None)));
        };
        match payment.status {
            Status::Failed | Status::Voided => Ok(refunded(zero(payment.amount))),
            Status::Refunded => Ok(refunded(charged_amount(order_id, payment.amount)?)),
            Status::Charged => {
                let Some(refund) = ctx.prepared::<Refund>() else {
                    // The charge was recorded after `prepare` looked: retry, and it will refund.
                    return Err(HandlerError::transient(format!(
                        "order {order_id} was charged after the refund was prepared; retrying"
                    )));
                };
                store::mark_refunded(ctx.tx(), order_id, &refund.refund_id, &command.reason).await?;
                count("refunded");
                info!(%order_id, refund_id = %refund.refund_id, amount = %refund.amount, "payment refunded");
                Ok(refunded(charged_amount(order_id, payment.amount)?))
            }
        }
    }
}

fn settled<'a>(
    order: &'a OrderCreated,
    items: &'a [LineItem],
    status: Status,
    charge_id: Option<&'a str>,
    reason: Option<&'a str>,
) -> Settled<'a> {
    Settled { order_id: order.order_id, user_id: order.user_id, amount: order.total, status, charge_id, reason, items }
}

fn charged_amount(order_id: Uuid, amount: Option<Money>) -> Result<Money, HandlerError> {
    amount.ok_or_else(|| HandlerError::permanent(format!("the payment of order {order_id} has no amount on record")))
}
