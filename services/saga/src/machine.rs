//! The order-fulfilment saga as a pure state machine: [`decide`] maps the current [`State`] and
//! one [`Input`] to a [`Decision`] (the next state, the commands to send, the timer to set or
//! cancel). No I/O happens here, so every state × input pair is unit-tested below; the handler
//! only loads, decides, saves and sends.
//!
//! | state | input | next | sends |
//! |---|---|---|---|
//! | (none) | `order_created` | awaiting payment (payment timer) | — |
//! | (none), awaiting payment | `payment_successful` | awaiting stock (stock timer) | — |
//! | (none), awaiting payment | `payment_failed` | cancelled | `cancel_order` |
//! | awaiting payment | payment timeout | compensating: refund | `refund_payment` |
//! | (none), awaiting payment or stock | `stock_reserved` | completed | `complete_order` |
//! | (none), awaiting payment or stock | `stock_unavailable` | compensating: refund | `refund_payment` |
//! | awaiting stock | stock timeout | compensating: release, then refund | `release_stock` |
//! | compensating: release | `stock_released` | compensating: refund | `refund_payment` |
//! | compensating: refund | `payment_refunded` | cancelled | `cancel_order` |
//!
//! Anything else is late, a duplicate or out of place and changes nothing (see [`decide`] for
//! the two exceptions: answers that came too early, and a reservation made after the saga gave up).
//!
//! # Inputs out of order
//! The inputs travel on three topics, so a later step's event may overtake an earlier one's: a
//! busy saga may read `payment_successful` before `order_created`. Each step's event implies the
//! ones before it (payments charges only created orders; inventory answers only after
//! `payment_successful`), so the saga takes whichever comes first and skips the steps it implies;
//! their events, arriving later, are late and ignored. Under load that matters: making early
//! inputs wait for a redelivery would fill the saga's queue with retries just when it is behind.
//!
//! Compensations run in reverse order of the steps that succeeded: stock first, then payment.
//! They have no timeout. A compensation is the only way back to a consistent world (a charge
//! refunded, a reservation returned), so there is nothing sensible to do when its owner is slow
//! except to keep asking: the command sits durably in the outbox and on the owner's topic, the
//! owner's router retries it with backoff, and if it is ever dead-lettered an operator redrives
//! it (`weir dlq redrive`) and the saga continues where it stopped. A deadline would only add a
//! second way of giving up that cannot be acted on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A step of the saga that has a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Payment,
    Stock,
}

impl Step {
    /// The name carried by `SagaTimedOut::step`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Payment => "payment",
            Step::Stock => "stock",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "payment" => Some(Step::Payment),
            "stock" => Some(Step::Stock),
            _ => None,
        }
    }
}

/// An undo action, addressed to the owner of the step it undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compensation {
    /// `release_stock` to inventory, answered by `stock_released`.
    ReleaseStock,
    /// `refund_payment` to payments (refund, or void before a charge), answered by `payment_refunded`.
    RefundPayment,
}

impl Compensation {
    fn command(self, reason: &str) -> Command {
        match self {
            Compensation::ReleaseStock => Command::ReleaseStock,
            Compensation::RefundPayment => Command::RefundPayment { reason: reason.to_owned() },
        }
    }
}

/// Where one order's saga stands. Stored as JSON in the saga instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// No instance yet: only `order_created` starts one. Never stored.
    New,
    /// The order exists; payments is charging it (deadline: the payment timer).
    AwaitingPayment,
    /// Charged; inventory is reserving stock (deadline: the stock timer).
    AwaitingStock,
    /// A step failed or timed out: undoing what succeeded, one compensation at a time.
    Compensating {
        /// The compensation whose answer the saga waits for.
        awaiting: Compensation,
        /// The ones still to run after it, in order.
        then: Vec<Compensation>,
        /// Why the order will be cancelled; also the reason given to the compensations.
        reason: String,
        /// Whether `release_stock` was already sent (so a late reservation needs no second one).
        release_sent: bool,
    },
    /// Done: `complete_order` sent.
    Completed,
    /// Done: `cancel_order` sent after every compensation answered.
    Cancelled { reason: String, release_sent: bool },
}

impl State {
    /// The state's name, as logs, metrics and [`crate::Service::state_of`] show it.
    pub fn name(&self) -> &'static str {
        match self {
            State::New => "new",
            State::AwaitingPayment => "awaiting_payment",
            State::AwaitingStock => "awaiting_stock",
            State::Compensating { .. } => "compensating",
            State::Completed => "completed",
            State::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether the saga has finished (no input moves it on, bar a late reservation to release).
    pub fn is_done(&self) -> bool {
        matches!(self, State::Completed | State::Cancelled { .. })
    }
}

/// What the saga reacts to: the events of the other services and its own timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    OrderCreated,
    PaymentSuccessful,
    PaymentFailed { reason: String },
    StockReserved,
    StockUnavailable { reason: String },
    StockReleased,
    PaymentRefunded,
    TimedOut(Step),
}

impl Input {
    pub fn name(&self) -> &'static str {
        match self {
            Input::OrderCreated => "order_created",
            Input::PaymentSuccessful => "payment_successful",
            Input::PaymentFailed { .. } => "payment_failed",
            Input::StockReserved => "stock_reserved",
            Input::StockUnavailable { .. } => "stock_unavailable",
            Input::StockReleased => "stock_released",
            Input::PaymentRefunded => "payment_refunded",
            Input::TimedOut(Step::Payment) => "timeout(payment)",
            Input::TimedOut(Step::Stock) => "timeout(stock)",
        }
    }
}

/// A command the saga sends; the handler turns it into the contract for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CompleteOrder,
    CancelOrder { reason: String },
    RefundPayment { reason: String },
    ReleaseStock,
}

/// A durable timer to set: `step` times out at `due_at` (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub step: Step,
    pub due_at: i64,
}

/// How long each step may take before the saga gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub payment: Duration,
    pub stock: Duration,
}

impl Timeouts {
    fn timer(&self, step: Step, now: i64) -> Timer {
        let after = match step {
            Step::Payment => self.payment,
            Step::Stock => self.stock,
        };
        Timer { step, due_at: now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)) }
    }
}

/// What to do about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub next: State,
    pub commands: Vec<Command>,
    /// The step timer to set (replacing any pending one).
    pub schedule: Option<Timer>,
    /// Cancel the pending step timer (done before `schedule`).
    pub cancel_timer: bool,
}

impl Decision {
    /// Nothing changes and nothing is sent: the input is late, a duplicate, or does not fit.
    fn ignore(state: &State) -> Self {
        Self { next: state.clone(), commands: Vec::new(), schedule: None, cancel_timer: false }
    }

    fn to(next: State) -> Self {
        Self { next, commands: Vec::new(), schedule: None, cancel_timer: false }
    }

    fn send(mut self, command: Command) -> Self {
        self.commands.push(command);
        self
    }

    fn schedule(mut self, timer: Timer) -> Self {
        self.schedule = Some(timer);
        self
    }

    fn cancel_timer(mut self) -> Self {
        self.cancel_timer = true;
        self
    }

    /// Whether this decision changes the stored state or has effects.
    pub fn is_ignored(&self, current: &State) -> bool {
        self.next == *current && self.commands.is_empty() && self.schedule.is_none() && !self.cancel_timer
    }
}

/// The input came before the saga can take it: an answer to a compensation or a timer of a saga
/// that has not started, which only a bug or a forged event can cause. The handler retries it
/// later, and dead-letters it in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooEarly;

/// Starts compensating: sends the first of `compensations` and waits for its answer.
fn compensate(compensations: &[Compensation], reason: String, release_sent: bool) -> Decision {
    let (&first, rest) = compensations.split_first().expect("a compensation list is never empty");
    let release_sent = release_sent || first == Compensation::ReleaseStock;
    Decision::to(State::Compensating { awaiting: first, then: rest.to_vec(), reason: reason.clone(), release_sent })
        .send(first.command(&reason))
}

/// The saga's transition function.
pub fn decide(state: &State, input: &Input, now: i64, timeouts: &Timeouts) -> Result<Decision, TooEarly> {
    use Compensation::{RefundPayment, ReleaseStock};
    let decision = match (state, input) {
        (State::New, Input::OrderCreated) => {
            Decision::to(State::AwaitingPayment).schedule(timeouts.timer(Step::Payment, now))
        }
        // Overtaken by the payment's answer: `order_created` will be late.
        (State::New, Input::PaymentSuccessful) => {
            Decision::to(State::AwaitingStock).schedule(timeouts.timer(Step::Stock, now))
        }
        (State::AwaitingPayment, Input::PaymentSuccessful) => {
            Decision::to(State::AwaitingStock).cancel_timer().schedule(timeouts.timer(Step::Stock, now))
        }
        (State::New | State::AwaitingPayment, Input::PaymentFailed { reason }) => {
            // Nothing was charged and nothing reserved: nothing to compensate.
            let reason = format!("payment declined: {reason}");
            Decision::to(State::Cancelled { reason: reason.clone(), release_sent: false })
                .send(Command::CancelOrder { reason })
                .cancel_timer()
        }
        (State::AwaitingPayment, Input::TimedOut(Step::Payment)) => {
            // Payments voids the order's payment if no charge was made yet (so a late charge
            // never happens) or refunds it; either way it answers `payment_refunded`.
            compensate(&[RefundPayment], "payment timed out".into(), false)
        }
        // Inventory answers only after `payment_successful`, so a stock answer also means the
        // charge succeeded, whether or not its event has arrived yet.
        (State::New | State::AwaitingPayment | State::AwaitingStock, Input::StockReserved) => {
            Decision::to(State::Completed).send(Command::CompleteOrder).cancel_timer()
        }
        (State::New | State::AwaitingPayment | State::AwaitingStock, Input::StockUnavailable { reason }) => {
            compensate(&[RefundPayment], format!("out of stock: {reason}"), false).cancel_timer()
        }
        // Answers to compensations and timers of a saga that has not started: they cannot be
        // taken before its first input.
        (State::New, _) => return Err(TooEarly),
        (State::AwaitingStock, Input::TimedOut(Step::Stock)) => {
            // Reverse order of the steps: the reservation (if inventory made one after all),
            // then the charge.
            compensate(&[ReleaseStock, RefundPayment], "stock reservation timed out".into(), false)
        }

        (State::Compensating { awaiting, then, reason, release_sent }, answer)
            if matches!(
                (awaiting, answer),
                (ReleaseStock, Input::StockReleased) | (RefundPayment, Input::PaymentRefunded)
            ) =>
        {
            if then.is_empty() {
                Decision::to(State::Cancelled { reason: reason.clone(), release_sent: *release_sent })
                    .send(Command::CancelOrder { reason: reason.clone() })
            } else {
                compensate(then, reason.clone(), *release_sent)
            }
        }

        // A reservation made after the saga gave up (inventory saw a `payment_successful` that
        // the payment timeout overtook) would hold stock forever: give it back, once.
        (State::Compensating { awaiting, then, reason, release_sent: false }, Input::StockReserved) => {
            let next = State::Compensating {
                awaiting: *awaiting,
                then: then.clone(),
                reason: reason.clone(),
                release_sent: true,
            };
            Decision::to(next).send(Command::ReleaseStock)
        }
        (State::Cancelled { reason, release_sent: false }, Input::StockReserved) => {
            Decision::to(State::Cancelled { reason: reason.clone(), release_sent: true }).send(Command::ReleaseStock)
        }

        // Everything else is late, a duplicate or does not fit: a timer that fired after its
        // step answered, an answer after the step timed out, anything after the end. A late
        // `payment_successful` after the saga decided to cancel is harmless: `refund_payment`
        // voided the order's payment, and payments refunds any charge made after a void.
        _ => Decision::ignore(state),
    };
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;
    const TIMEOUTS: Timeouts = Timeouts { payment: Duration::from_millis(300), stock: Duration::from_millis(700) };

    fn compensating(awaiting: Compensation, then: &[Compensation], reason: &str, release_sent: bool) -> State {
        State::Compensating { awaiting, then: then.to_vec(), reason: reason.into(), release_sent }
    }

    fn cancelled(reason: &str, release_sent: bool) -> State {
        State::Cancelled { reason: reason.into(), release_sent }
    }

    /// One of every kind of state the saga can be in.
    fn all_states() -> Vec<State> {
        use Compensation::*;
        vec![
            State::New,
            State::AwaitingPayment,
            State::AwaitingStock,
            compensating(RefundPayment, &[], "payment timed out", false),
            compensating(ReleaseStock, &[RefundPayment], "stock reservation timed out", true),
            compensating(RefundPayment, &[], "stock reservation timed out", true),
            State::Completed,
            cancelled("payment declined: card", false),
            cancelled("stock reservation timed out", true),
        ]
    }

    fn all_inputs() -> Vec<Input> {
        vec![
            Input::OrderCreated,
            Input::PaymentSuccessful,
            Input::PaymentFailed { reason: "card".into() },
            Input::StockReserved,
            Input::StockUnavailable { reason: "sold out".into() },
            Input::StockReleased,
            Input::PaymentRefunded,
            Input::TimedOut(Step::Payment),
            Input::TimedOut(Step::Stock),
        ]
    }

    /// What a pair should do.
    #[derive(Debug)]
    enum Expect {
        Early,
        Move { next: State, commands: Vec<Command>, schedule: Option<Step>, cancel_timer: bool },
    }

    fn moves(next: State, commands: Vec<Command>, schedule: Option<Step>, cancel_timer: bool) -> Expect {
        Expect::Move { next, commands, schedule, cancel_timer }
    }

    /// Every pair that does something; all other pairs must be ignored.
    fn table() -> Vec<(State, Input, Expect)> {
        use Compensation::*;
        let refund = |r: &str| Command::RefundPayment { reason: r.into() };
        let cancel = |r: &str| Command::CancelOrder { reason: r.into() };
        let mut rows = vec![
            (State::New, Input::OrderCreated, moves(State::AwaitingPayment, vec![], Some(Step::Payment), false)),
            (
                State::AwaitingPayment,
                Input::PaymentSuccessful,
                moves(State::AwaitingStock, vec![], Some(Step::Stock), true),
            ),
            (
                State::AwaitingPayment,
                Input::PaymentFailed { reason: "card".into() },
                moves(cancelled("payment declined: card", false), vec![cancel("payment declined: card")], None, true),
            ),
            (
                State::AwaitingPayment,
                Input::TimedOut(Step::Payment),
                moves(
                    compensating(RefundPayment, &[], "payment timed out", false),
                    vec![refund("payment timed out")],
                    None,
                    false,
                ),
            ),
            (State::New, Input::PaymentSuccessful, moves(State::AwaitingStock, vec![], Some(Step::Stock), false)),
            (
                State::New,
                Input::PaymentFailed { reason: "card".into() },
                moves(cancelled("payment declined: card", false), vec![cancel("payment declined: card")], None, true),
            ),
            (
                State::AwaitingStock,
                Input::TimedOut(Step::Stock),
                moves(
                    compensating(ReleaseStock, &[RefundPayment], "stock reservation timed out", true),
                    vec![Command::ReleaseStock],
                    None,
                    false,
                ),
            ),
            (
                compensating(RefundPayment, &[], "payment timed out", false),
                Input::PaymentRefunded,
                moves(cancelled("payment timed out", false), vec![cancel("payment timed out")], None, false),
            ),
            (
                compensating(RefundPayment, &[], "payment timed out", false),
                Input::StockReserved,
                moves(
                    compensating(RefundPayment, &[], "payment timed out", true),
                    vec![Command::ReleaseStock],
                    None,
                    false,
                ),
            ),
            (
                compensating(ReleaseStock, &[RefundPayment], "stock reservation timed out", true),
                Input::StockReleased,
                moves(
                    compensating(RefundPayment, &[], "stock reservation timed out", true),
                    vec![refund("stock reservation timed out")],
                    None,
                    false,
                ),
            ),
            (
                compensating(RefundPayment, &[], "stock reservation timed out", true),
                Input::PaymentRefunded,
                moves(
                    cancelled("stock reservation timed out", true),
                    vec![cancel("stock reservation timed out")],
                    None,
                    false,
                ),
            ),
            (
                cancelled("payment declined: card", false),
                Input::StockReserved,
                moves(cancelled("payment declined: card", true), vec![Command::ReleaseStock], None, false),
            ),
        ];
        // A stock answer implies the charge: it completes or compensates from any state before it.
        for state in [State::New, State::AwaitingPayment, State::AwaitingStock] {
            rows.push((
                state.clone(),
                Input::StockReserved,
                moves(State::Completed, vec![Command::CompleteOrder], None, true),
            ));
            rows.push((
                state,
                Input::StockUnavailable { reason: "sold out".into() },
                moves(
                    compensating(RefundPayment, &[], "out of stock: sold out", false),
                    vec![refund("out of stock: sold out")],
                    None,
                    true,
                ),
            ));
        }
        // Answers to compensations and timers cannot come before the saga's first input.
        for input in
            [Input::StockReleased, Input::PaymentRefunded, Input::TimedOut(Step::Payment), Input::TimedOut(Step::Stock)]
        {
            rows.push((State::New, input, Expect::Early));
        }
        rows
    }

    #[test]
    fn every_state_and_input() {
        let table = table();
        let mut checked = 0;
        for state in all_states() {
            for input in all_inputs() {
                let got = decide(&state, &input, NOW, &TIMEOUTS);
                let expected = table.iter().find(|(s, i, _)| *s == state && *i == input).map(|(_, _, e)| e);
                let context = format!("{} + {}", state.name(), input.name());
                match expected {
                    Some(Expect::Early) => assert_eq!(got, Err(TooEarly), "{context}"),
                    Some(Expect::Move { next, commands, schedule, cancel_timer }) => {
                        let got = got.unwrap_or_else(|_| panic!("{context}: too early"));
                        assert_eq!(got.next, *next, "{context}: next state");
                        assert_eq!(got.commands, *commands, "{context}: commands");
                        assert_eq!(got.schedule.map(|t| t.step), *schedule, "{context}: timer");
                        assert_eq!(got.cancel_timer, *cancel_timer, "{context}: cancel timer");
                    }
                    None => {
                        let got = got.unwrap_or_else(|_| panic!("{context}: too early"));
                        assert!(got.is_ignored(&state), "{context} should change nothing, got {got:?}");
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, all_states().len() * all_inputs().len());
        // Every row of the table names a pair that exists, so none is silently skipped.
        for (state, input, _) in &table {
            assert!(all_states().contains(state) && all_inputs().contains(input), "{state:?} + {input:?}");
        }
    }

    /// The same input again after its transition (a redelivery with another id) changes nothing.
    #[test]
    fn duplicates_are_ignored() {
        for state in all_states() {
            for input in all_inputs() {
                let Ok(first) = decide(&state, &input, NOW, &TIMEOUTS) else { continue };
                if first.is_ignored(&state) {
                    continue;
                }
                let again = decide(&first.next, &input, NOW + 1, &TIMEOUTS)
                    .unwrap_or_else(|_| panic!("{} + {} twice: too early", state.name(), input.name()));
                assert!(again.is_ignored(&first.next), "{} + {} twice: {again:?}", state.name(), input.name());
            }
        }
    }

    /// Runs `inputs` from a new saga; returns the final state and every command sent.
    fn run(inputs: &[Input]) -> (State, Vec<Command>) {
        let (mut state, mut sent) = (State::New, Vec::new());
        for input in inputs {
            let decision = decide(&state, input, NOW, &TIMEOUTS)
                .unwrap_or_else(|_| panic!("{} too early after {inputs:?}", input.name()));
            sent.extend(decision.commands);
            state = decision.next;
        }
        (state, sent)
    }

    fn permutations(items: &[Input]) -> Vec<Vec<Input>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        (0..items.len())
            .flat_map(|i| {
                let mut rest = items.to_vec();
                let first = rest.remove(i);
                permutations(&rest).into_iter().map(move |mut tail| {
                    tail.insert(0, first.clone());
                    tail
                })
            })
            .collect()
    }

    /// The three topics may deliver an order's events in any order: every order of them ends
    /// the same way, with each command sent once.
    #[test]
    fn inputs_in_any_order_end_the_same() {
        let happy = [Input::OrderCreated, Input::PaymentSuccessful, Input::StockReserved];
        for inputs in permutations(&happy) {
            assert_eq!(run(&inputs), (State::Completed, vec![Command::CompleteOrder]), "{inputs:?}");
        }
        let sold_out =
            [Input::OrderCreated, Input::PaymentSuccessful, Input::StockUnavailable { reason: "none".into() }];
        for inputs in permutations(&sold_out) {
            let (state, sent) = run(&inputs);
            assert_eq!(sent, [Command::RefundPayment { reason: "out of stock: none".into() }], "{inputs:?}");
            let (state, sent) = (decide(&state, &Input::PaymentRefunded, NOW, &TIMEOUTS).unwrap().next, sent);
            assert!(matches!(state, State::Cancelled { .. }), "{inputs:?}: {state:?} after {sent:?}");
        }
        for inputs in permutations(&[Input::OrderCreated, Input::PaymentFailed { reason: "card".into() }]) {
            let (state, sent) = run(&inputs);
            assert_eq!(sent, [Command::CancelOrder { reason: "payment declined: card".into() }], "{inputs:?}");
            assert!(state.is_done(), "{inputs:?}");
        }
    }

    #[test]
    fn timers_fall_due_after_their_step_timeout() {
        let start = decide(&State::New, &Input::OrderCreated, NOW, &TIMEOUTS).unwrap();
        assert_eq!(start.schedule, Some(Timer { step: Step::Payment, due_at: NOW + 300 }));
        let paid = decide(&State::AwaitingPayment, &Input::PaymentSuccessful, NOW + 5, &TIMEOUTS).unwrap();
        assert_eq!(paid.schedule, Some(Timer { step: Step::Stock, due_at: NOW + 5 + 700 }));
    }

    #[test]
    fn the_stock_timeout_compensates_in_reverse_order() {
        let mut state = State::AwaitingStock;
        let mut sent = Vec::new();
        for input in [Input::TimedOut(Step::Stock), Input::StockReleased, Input::PaymentRefunded] {
            let decision = decide(&state, &input, NOW, &TIMEOUTS).unwrap();
            sent.extend(decision.commands);
            state = decision.next;
        }
        let reason = "stock reservation timed out".to_owned();
        assert_eq!(
            sent,
            [Command::ReleaseStock, Command::RefundPayment { reason: reason.clone() }, Command::CancelOrder { reason }]
        );
        assert!(state.is_done());
    }

    #[test]
    fn states_round_trip_through_json() {
        for state in all_states() {
            let json = serde_json::to_vec(&state).unwrap();
            assert_eq!(serde_json::from_slice::<State>(&json).unwrap(), state);
        }
        assert_eq!(Step::parse("stock"), Some(Step::Stock));
        assert_eq!(Step::parse(Step::Payment.as_str()), Some(Step::Payment));
        assert_eq!(Step::parse("shipping"), None);
    }
}
