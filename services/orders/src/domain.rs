//! The order aggregate and the rules of placing an order, as pure functions: no I/O, no clock.
//!
//! An order is event-sourced. Its stream holds exactly the contract events `order_created`,
//! `order_completed` and `order_cancelled`; [`Order::replay`] folds them into the current state
//! and the decision functions ([`place`], [`Order::complete`], [`Order::cancel`]) return the
//! events to append. A terminal order refuses every transition by deciding *nothing*, so a
//! duplicate or late command is a harmless no-op rather than an error.
//!
//! Snapshots are deliberately not used: a stream has two or three events, so replaying it is
//! cheaper than reading and decoding a snapshot would be.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use uuid::Uuid;
use weir_contracts::{Contract, LineItem, Money, OrderCancelled, OrderCompleted, OrderCreated, PricedLine};
use weir_core::{Event, Outgoing, event::DecodeError};

/// The `source` of every event this service emits.
pub const SOURCE: &str = "orders";

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(as = OrderStatus)]
pub enum Status {
    /// Placed; payment and stock are being handled.
    Pending,
    /// Every step succeeded. Terminal.
    Completed,
    /// A step failed and was compensated. Terminal.
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Status::Pending, Status::Completed, Status::Cancelled].into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Pending
    }
}

/// One event of an order's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Created(OrderCreated),
    Completed(OrderCompleted),
    Cancelled(OrderCancelled),
}

impl OrderEvent {
    /// Decodes a stored or received event; `None` for a type that is not an order event.
    pub fn decode(event: &Event) -> Option<Result<Self, DecodeError>> {
        if let Some(created) = OrderCreated::decode(event) {
            return Some(created.map(OrderEvent::Created));
        }
        if let Some(completed) = OrderCompleted::decode(event) {
            return Some(completed.map(OrderEvent::Completed));
        }
        OrderCancelled::decode(event).map(|cancelled| cancelled.map(OrderEvent::Cancelled))
    }

    /// This event as a new envelope from this service.
    pub fn to_event(&self) -> Event {
        match self {
            OrderEvent::Created(e) => e.to_event(SOURCE),
            OrderEvent::Completed(e) => e.to_event(SOURCE),
            OrderEvent::Cancelled(e) => e.to_event(SOURCE),
        }
    }

    /// This event as the answer to `cause` (same correlation and trace), for the `orders` topic.
    pub fn reply_to(&self, cause: &Event) -> Outgoing {
        match self {
            OrderEvent::Created(e) => e.reply_to(SOURCE, cause),
            OrderEvent::Completed(e) => e.reply_to(SOURCE, cause),
            OrderEvent::Cancelled(e) => e.reply_to(SOURCE, cause),
        }
    }
}

/// The state of one order, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub items: Vec<PricedLine>,
    pub total: Money,
    pub status: Status,
    /// Why it was cancelled.
    pub reason: Option<String>,
}

impl Order {
    /// Folds a stream's history. `None` when it does not begin with `order_created` (no such
    /// order).
    pub fn replay<'a>(history: impl IntoIterator<Item = &'a OrderEvent>) -> Option<Order> {
        let mut history = history.into_iter();
        let OrderEvent::Created(created) = history.next()? else { return None };
        let mut order = Order {
            id: created.order_id,
            user_id: created.user_id,
            items: created.items.clone(),
            total: created.total,
            status: Status::Pending,
            reason: None,
        };
        for event in history {
            order.apply(event);
        }
        Some(order)
    }

    /// Applies one event that has happened. Events are facts, so this never fails; an event
    /// that cannot change a terminal order (which the decisions never produce) changes nothing.
    pub fn apply(&mut self, event: &OrderEvent) {
        if self.status.is_terminal() {
            return;
        }
        match event {
            // The stream's first event; a second one would be a bug upstream and changes nothing.
            OrderEvent::Created(_) => {}
            OrderEvent::Completed(_) => self.status = Status::Completed,
            OrderEvent::Cancelled(cancelled) => {
                self.status = Status::Cancelled;
                self.reason = Some(cancelled.reason.clone());
            }
        }
    }

    /// Decides what completing the order means: `order_completed` while pending, else nothing.
    pub fn complete(&self) -> Vec<OrderEvent> {
        match self.status {
            Status::Pending => vec![OrderEvent::Completed(OrderCompleted {
                order_id: self.id,
                user_id: self.user_id,
                total: self.total,
            })],
            Status::Completed | Status::Cancelled => Vec::new(),
        }
    }

    /// Decides what cancelling the order means: `order_cancelled` while pending, else nothing.
    pub fn cancel(&self, reason: &str) -> Vec<OrderEvent> {
        match self.status {
            Status::Pending => vec![OrderEvent::Cancelled(OrderCancelled {
                order_id: self.id,
                user_id: self.user_id,
                reason: reason.to_owned(),
            })],
            Status::Completed | Status::Cancelled => Vec::new(),
        }
    }
}

/// What the service accepts in one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_lines: usize,
    pub max_quantity: u32,
}

/// One thing wrong with a request: the field at fault and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A line as the client sent it, before parsing: the quantity is any JSON number so that
/// negative, fractional and huge values are answered with a field error, not a parser message.
#[derive(Debug, Clone, PartialEq)]
pub struct RawLine<'a> {
    pub product_id: &'a str,
    pub quantity: &'a serde_json::Number,
}

/// Parses the requested lines: at least one, at most `max_lines`, each product a UUID that
/// appears once, each quantity a whole number in `1..=max_quantity`. Returns every problem found.
pub fn parse_lines(raw: &[RawLine<'_>], limits: Limits) -> Result<Vec<LineItem>, Vec<Invalid>> {
    if raw.is_empty() {
        return Err(vec![Invalid::new(
            "items",
            "add at least one item: {\"product_id\": \"<uuid>\", \"quantity\": 1}",
        )]);
    }
    if raw.len() > limits.max_lines {
        return Err(vec![Invalid::new(
            "items",
            format!(
                "an order has at most {} lines, this one has {}; split it into several orders",
                limits.max_lines,
                raw.len()
            ),
        )]);
    }
    let mut errors = Vec::new();
    let mut lines = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for (i, line) in raw.iter().enumerate() {
        let product_id = match Uuid::parse_str(line.product_id) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(Invalid::new(
                    format!("items[{i}].product_id"),
                    format!("{:?} is not a product id (a UUID); list products at GET /v1/products", line.product_id),
                ));
                None
            }
        };
        if let Some(id) = product_id
            && !seen.insert(id)
        {
            errors.push(Invalid::new(
                format!("items[{i}].product_id"),
                format!("product {id} appears more than once; put its whole quantity on one line"),
            ));
        }
        let quantity = match parse_quantity(line.quantity, limits.max_quantity) {
            Ok(q) => Some(q),
            Err(message) => {
                errors.push(Invalid::new(format!("items[{i}].quantity"), message));
                None
            }
        };
        if let (Some(product_id), Some(quantity)) = (product_id, quantity) {
            lines.push(LineItem { product_id, quantity });
        }
    }
    if errors.is_empty() { Ok(lines) } else { Err(errors) }
}

/// A quantity is a whole number from 1 to `max`.
pub fn parse_quantity(n: &serde_json::Number, max: u32) -> Result<u32, String> {
    n.as_u64()
        .filter(|q| (1..=u64::from(max)).contains(q))
        .and_then(|q| u32::try_from(q).ok())
        .ok_or_else(|| format!("the quantity must be a whole number from 1 to {max}; got {n}"))
}

/// Decides the `order_created` of a new order: each line priced from `prices` (what inventory
/// published, never what the client says), all in one currency, and the total without overflow.
pub fn place(
    order_id: Uuid,
    user_id: Uuid,
    lines: &[LineItem],
    prices: &HashMap<Uuid, Money>,
) -> Result<OrderEvent, Vec<Invalid>> {
    let unknown: Vec<Invalid> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !prices.contains_key(&line.product_id))
        .map(|(i, line)| {
            Invalid::new(
                format!("items[{i}].product_id"),
                format!("unknown product {}; list products at GET /v1/products", line.product_id),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let items: Vec<PricedLine> = lines
        .iter()
        .map(|line| PricedLine {
            product_id: line.product_id,
            quantity: line.quantity,
            unit_price: prices[&line.product_id],
        })
        .collect();
    let currency = items[0].unit_price.currency;
    if let Some(other) = items.iter().find(|line| line.unit_price.currency != currency) {
        return Err(vec![Invalid::new(
            "items",
            format!(
                "all products of one order must be priced in one currency: {} is priced in {currency}, {} in {}; \
                 place one order per currency",
                items[0].product_id, other.product_id, other.unit_price.currency
            ),
        )]);
    }
    let total = items.iter().try_fold(Money::zero(currency), |total, line| {
        line.unit_price.checked_mul(i64::from(line.quantity)).and_then(|amount| total.checked_add(amount))
    });
    let Ok(total) = total else {
        return Err(vec![Invalid::new("items", "the order's total is too large to represent; order fewer items")]);
    };
    Ok(OrderEvent::Created(OrderCreated { order_id, user_id, items, total }))
}

#[cfg(test)]
mod tests {
    use weir_contracts::Currency;

    use super::*;

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::EUR)
    }

    fn created() -> OrderCreated {
        let product_id = Uuid::now_v7();
        OrderCreated {
            order_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            items: vec![PricedLine { product_id, quantity: 2, unit_price: eur(500) }],
            total: eur(1000),
        }
    }

    fn completed(c: &OrderCreated) -> OrderEvent {
        OrderEvent::Completed(OrderCompleted { order_id: c.order_id, user_id: c.user_id, total: c.total })
    }

    fn cancelled(c: &OrderCreated, reason: &str) -> OrderEvent {
        OrderEvent::Cancelled(OrderCancelled { order_id: c.order_id, user_id: c.user_id, reason: reason.into() })
    }

    #[test]
    fn replay_folds_a_history_into_a_state() {
        let c = created();
        type Case<'a> = (&'a str, Vec<OrderEvent>, Option<(Status, Option<&'a str>)>);
        let cases: Vec<Case<'_>> = vec![
            ("empty stream", vec![], None),
            ("not starting with created", vec![completed(&c)], None),
            ("created", vec![OrderEvent::Created(c.clone())], Some((Status::Pending, None))),
            ("completed", vec![OrderEvent::Created(c.clone()), completed(&c)], Some((Status::Completed, None))),
            (
                "cancelled",
                vec![OrderEvent::Created(c.clone()), cancelled(&c, "no stock")],
                Some((Status::Cancelled, Some("no stock"))),
            ),
            (
                "terminal states stay",
                vec![OrderEvent::Created(c.clone()), completed(&c), cancelled(&c, "late")],
                Some((Status::Completed, None)),
            ),
            (
                "a second created changes nothing",
                vec![OrderEvent::Created(c.clone()), OrderEvent::Created(created())],
                Some((Status::Pending, None)),
            ),
        ];
        for (name, history, expected) in cases {
            let order = Order::replay(&history);
            assert_eq!(order.as_ref().map(|o| (o.status, o.reason.as_deref())), expected, "{name}");
            if let Some(order) = order {
                assert_eq!((order.id, order.user_id, order.total), (c.order_id, c.user_id, c.total), "{name}");
            }
        }
    }

    #[test]
    fn decisions_move_only_pending_orders() {
        let c = created();
        let pending = Order::replay(&[OrderEvent::Created(c.clone())]).unwrap();
        let complete = Order::replay(&[OrderEvent::Created(c.clone()), completed(&c)]).unwrap();
        let cancel = Order::replay(&[OrderEvent::Created(c.clone()), cancelled(&c, "x")]).unwrap();
        // (state, command, expected events)
        let cases: Vec<(&Order, &str, Vec<OrderEvent>)> = vec![
            (&pending, "complete", vec![completed(&c)]),
            (&pending, "cancel", vec![cancelled(&c, "payment declined")]),
            (&complete, "complete", vec![]),
            (&complete, "cancel", vec![]),
            (&cancel, "complete", vec![]),
            (&cancel, "cancel", vec![]),
        ];
        for (order, command, expected) in cases {
            let decided = match command {
                "complete" => order.complete(),
                _ => order.cancel("payment declined"),
            };
            assert_eq!(decided, expected, "{:?} {command}", order.status);
            // Applying what was decided reaches the state the command asked for.
            let mut after = order.clone();
            decided.iter().for_each(|e| after.apply(e));
            if !decided.is_empty() {
                let want = if command == "complete" { Status::Completed } else { Status::Cancelled };
                assert_eq!(after.status, want);
            }
        }
    }

    #[test]
    fn order_events_round_trip_through_envelopes() {
        let c = created();
        for event in [OrderEvent::Created(c.clone()), completed(&c), cancelled(&c, "r")] {
            let envelope = event.to_event();
            assert_eq!(envelope.source, SOURCE);
            assert_eq!(envelope.subject, c.order_id.to_string());
            assert_eq!(OrderEvent::decode(&envelope).unwrap().unwrap(), event);
        }
        let other = weir_contracts::CompleteOrder { order_id: c.order_id }.to_event("saga");
        assert!(OrderEvent::decode(&other).is_none());
    }

    fn number(json: &str) -> serde_json::Number {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn quantities_are_whole_numbers_in_range() {
        let cases = [
            ("1", Some(1)),
            ("1000", Some(1000)),
            ("0", None),
            ("1001", None),
            ("-1", None),
            ("1.5", None),
            ("2.0", None),
            ("4294967297", None),
            ("18446744073709551615", None),
            ("1e30", None),
        ];
        for (json, expected) in cases {
            assert_eq!(parse_quantity(&number(json), 1000).ok(), expected, "{json}");
        }
    }

    #[test]
    fn lines_are_parsed_with_every_error_named() {
        let limits = Limits { max_lines: 2, max_quantity: 10 };
        let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        let line = |id: &str, quantity: &str| (id.to_owned(), number(quantity));
        // (lines as (product id, quantity), fields at fault)
        type Case<'a> = (Vec<(String, serde_json::Number)>, Vec<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (vec![line(&a, "1")], vec![]),
            (vec![line(&a, "1"), line(&b, "10")], vec![]),
            (vec![], vec!["items"]),
            (vec![line(&a, "1"), line(&b, "1"), line("c", "1")], vec!["items"]),
            (vec![line(&a, "0")], vec!["items[0].quantity"]),
            (vec![line(&a, "11")], vec!["items[0].quantity"]),
            (vec![line("nope", "1")], vec!["items[0].product_id"]),
            (vec![line(&a, "1"), line(&a, "1")], vec!["items[1].product_id"]),
            (
                vec![line("x", "0"), line(&a, "-3")],
                vec!["items[0].product_id", "items[0].quantity", "items[1].quantity"],
            ),
        ];
        for (owned, fields) in cases {
            let raw: Vec<RawLine<'_>> = owned.iter().map(|(id, q)| RawLine { product_id: id, quantity: q }).collect();
            match parse_lines(&raw, limits) {
                Ok(lines) => {
                    assert!(fields.is_empty(), "{raw:?} accepted");
                    assert_eq!(lines.len(), raw.len());
                }
                Err(errors) => {
                    assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), fields, "{raw:?}");
                    assert!(errors.iter().all(|e| !e.message.is_empty()));
                }
            }
        }
    }

    #[test]
    fn placing_prices_lines_from_the_catalog() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let prices = HashMap::from([(a, eur(250)), (b, Money::new(100, Currency::USD)), (c, eur(i64::MAX / 2))]);
        let line = |product_id, quantity| LineItem { product_id, quantity };
        let (order_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());

        let OrderEvent::Created(placed) = place(order_id, user_id, &[line(a, 3)], &prices).unwrap() else {
            panic!("placing decides order_created")
        };
        assert_eq!(placed.total, eur(750));
        assert_eq!(placed.items[0].unit_price, eur(250));
        assert_eq!((placed.order_id, placed.user_id), (order_id, user_id));

        // (lines, field at fault, words the message must contain)
        let unknown = Uuid::now_v7();
        let cases = [
            (vec![line(a, 1), line(unknown, 1)], "items[1].product_id", "GET /v1/products"),
            (vec![line(a, 1), line(b, 1)], "items", "one currency"),
            (vec![line(c, 3)], "items", "too large"),
            (vec![line(c, 1), line(a, 1), line(c, 1)], "items", "too large"),
        ];
        for (lines, field, words) in cases {
            let errors = place(order_id, user_id, &lines, &prices).unwrap_err();
            assert_eq!(errors[0].field, field, "{lines:?}");
            assert!(errors[0].message.contains(words), "{}", errors[0].message);
        }
    }

    #[test]
    fn statuses_parse_back() {
        for status in [Status::Pending, Status::Completed, Status::Cancelled] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(Status::parse("pending"), None);
    }
}
