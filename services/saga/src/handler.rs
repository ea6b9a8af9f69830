//! The thin, effectful side of the saga: turn an event into an [`Input`], load the instance in
//! the delivery's transaction, [`decide`], save (optimistically), set or cancel the step timer,
//! and hand the commands to the router's outbox. Everything here commits together with the
//! router's inbox record, so a redelivered event has no second effect.

use async_trait::async_trait;
use tracing::{debug, info};
use uuid::Uuid;
use weir_contracts::{
    CancelOrder, CompleteOrder, Contract, OrderCreated, PaymentFailed, PaymentRefunded, PaymentSuccessful,
    RefundPayment, ReleaseStock, SagaTimedOut, StockReleased, StockReserved, StockUnavailable, topics,
};
use weir_core::{
    Context, Event, Handler, HandlerError, Outgoing,
    store::{now_millis, sagas},
};

use crate::{
    SAGA_TYPE, SOURCE,
    machine::{Command, Input, State, Step, Timeouts, TooEarly, decide},
};

/// One handler for every subscribed topic: the saga is one state machine per order, whatever
/// topic an input comes from.
#[derive(Clone)]
pub(crate) struct SagaHandler {
    pub(crate) timeouts: Timeouts,
}

/// The key of an order's step timer. One key per saga: at most one step is pending at a time,
/// and scheduling the next step's timer replaces the previous one.
fn timer_key(order_id: Uuid) -> String {
    format!("saga/{SAGA_TYPE}/{order_id}")
}

/// The event types [`input_of`] reads; the others on the saga's topics are skipped.
const INPUT_KINDS: [&str; 8] = [
    OrderCreated::KIND,
    PaymentSuccessful::KIND,
    PaymentFailed::KIND,
    PaymentRefunded::KIND,
    StockReserved::KIND,
    StockUnavailable::KIND,
    StockReleased::KIND,
    SagaTimedOut::KIND,
];

/// The saga input an event carries, with its order; `None` for event types the saga does not
/// react to (product events, `order_completed`, ...), which share its topics.
fn input_of(event: &Event) -> Result<Option<(Uuid, Input)>, HandlerError> {
    let parsed = match event.kind.as_str() {
        OrderCreated::KIND => (event.data::<OrderCreated>()?.order_id, Input::OrderCreated),
        PaymentSuccessful::KIND => (event.data::<PaymentSuccessful>()?.order_id, Input::PaymentSuccessful),
        PaymentFailed::KIND => {
            let p = event.data::<PaymentFailed>()?;
            (p.order_id, Input::PaymentFailed { reason: p.reason })
        }
        PaymentRefunded::KIND => (event.data::<PaymentRefunded>()?.order_id, Input::PaymentRefunded),
        StockReserved::KIND => (event.data::<StockReserved>()?.order_id, Input::StockReserved),
        StockUnavailable::KIND => {
            let p = event.data::<StockUnavailable>()?;
            (p.order_id, Input::StockUnavailable { reason: p.reason })
        }
        StockReleased::KIND => (event.data::<StockReleased>()?.order_id, Input::StockReleased),
        SagaTimedOut::KIND => {
            let p = event.data::<SagaTimedOut>()?;
            let step = Step::parse(&p.step)
                .ok_or_else(|| HandlerError::permanent(format!("saga_timed_out names an unknown step {:?}", p.step)))?;
            (p.order_id, Input::TimedOut(step))
        }
        _ => return Ok(None),
    };
    Ok(Some(parsed))
}

/// The contract a command becomes, as a reply to the input that caused it (same correlation
/// and trace).
fn outgoing(command: Command, order_id: Uuid, cause: &Event) -> Outgoing {
    match command {
        Command::CompleteOrder => CompleteOrder { order_id }.reply_to(SOURCE, cause),
        Command::CancelOrder { reason } => CancelOrder { order_id, reason }.reply_to(SOURCE, cause),
        Command::RefundPayment { reason } => RefundPayment { order_id, reason }.reply_to(SOURCE, cause),
        Command::ReleaseStock => ReleaseStock { order_id }.reply_to(SOURCE, cause),
    }
}

#[async_trait]
impl Handler for SagaHandler {
    /// An order's instance and timer are locked by deliveries from three topics.
    fn locks_contended_rows(&self) -> bool {
        true
    }

    fn accepts(&self, kind: &str) -> bool {
        INPUT_KINDS.contains(&kind)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some((order_id, input)) = input_of(event)? else {
            debug!(event_type = %event.kind, "not a saga input; ignored");
            return Ok(Vec::new());
        };
        let id = order_id.to_string();
        let tx = ctx.tx();
        let (state, version) = match sagas::load(tx, SAGA_TYPE, &id).await? {
            None => (State::New, 0),
            Some(instance) => {
                let state = serde_json::from_slice::<State>(&instance.state).map_err(|e| {
                    HandlerError::permanent(format!("the stored saga of order {order_id} is unreadable: {e}"))
                })?;
                (state, instance.version)
            }
        };
        let decision = decide(&state, &input, now_millis(), &self.timeouts).map_err(|TooEarly| {
            // Retried with backoff, then dead-lettered: nothing legitimate comes this early.
            HandlerError::transient(format!(
                "{} for order {order_id} arrived before the saga can take it (state {})",
                input.name(),
                state.name()
            ))
        })?;
        if decision.is_ignored(&state) {
            debug!(order_id = %order_id, state = state.name(), input = input.name(), "late or duplicate input; ignored");
            return Ok(Vec::new());
        }

        let stored = serde_json::to_vec(&decision.next).expect("saga states serialise");
        // A concurrent delivery for the same order (another topic) that saved first makes this
        // a conflict: a transient error, so this input is decided again on the fresh state.
        sagas::save(tx, SAGA_TYPE, &id, &stored, version, decision.next.is_done()).await?;
        let key = timer_key(order_id);
        // A new timer replaces the pending one under the same key: cancel only when none follows.
        if decision.cancel_timer && decision.schedule.is_none() {
            sagas::cancel(tx, &key).await?;
        }
        if let Some(timer) = decision.schedule {
            let timeout = SagaTimedOut { order_id, step: timer.step.as_str().to_owned() };
            let fired = timeout.to_event(SOURCE).caused_by(event);
            sagas::schedule(tx, &key, timer.due_at, topics::SAGA_TIMEOUTS, &fired).await?;
        }

        // Counted when decided: a try whose commit then fails is counted again on its retry,
        // which is rare enough (a conflict, an outage) not to distort the rates.
        metrics::counter!("weir_saga_transitions_total", "from" => state.name(), "to" => decision.next.name())
            .increment(1);
        // Every step at debug; the outcome at info, so a busy shop's log stays readable.
        let level_info =
            matches!(decision.next.name(), "completed" | "cancelled") && state.name() != decision.next.name();
        if level_info {
            info!(order_id = %order_id, from = state.name(), to = decision.next.name(), input = input.name(), "saga finished");
        } else {
            debug!(
                order_id = %order_id,
                from = state.name(),
                to = decision.next.name(),
                input = input.name(),
                commands = decision.commands.len(),
                "saga transition"
            );
        }
        Ok(decision.commands.into_iter().map(|c| outgoing(c, order_id, event)).collect())
    }
}
