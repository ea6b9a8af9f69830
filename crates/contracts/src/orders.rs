//! The order pipeline's events and commands (ARCHITECTURE.md, "services"), grouped by owner.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Contract, Money, topics};

macro_rules! contract {
    ($name:ident, $topic:expr, $kind:literal, |$p:ident| $subject:expr) => {
        impl Contract for $name {
            const TOPIC: &'static str = $topic;
            const KIND: &'static str = $kind;
            fn subject(&self) -> String {
                let $p = self;
                $subject.to_string()
            }
        }
    };
}

/// One line of an order as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LineItem {
    pub product_id: Uuid,
    pub quantity: u32,
}

/// One line of an order with the price inventory published for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub quantity: u32,
    pub unit_price: Money,
}

// ---- users ----

/// A user signed up. The email is sealed (encrypted for the services that may read it), never
/// in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistered {
    pub user_id: Uuid,
    /// The email address, sealed with the platform's PII key (`weir_core::pii`).
    pub email_sealed: String,
    pub preferences: Preferences,
}
contract!(UserRegistered, topics::USERS, "user_registered", |p| p.user_id);

/// How a user wants to hear about outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Preferences {
    pub email: bool,
    pub in_app: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self { email: true, in_app: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationPreferencesChanged {
    pub user_id: Uuid,
    pub preferences: Preferences,
}
contract!(NotificationPreferencesChanged, topics::USERS, "notification_preferences_changed", |p| p.user_id);

// ---- inventory ----

/// A product entered the catalog (or was restated with its current price).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Money,
}
contract!(ProductAdded, topics::INVENTORY, "product_added", |p| p.product_id);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceChanged {
    pub product_id: Uuid,
    pub price: Money,
}
contract!(ProductPriceChanged, topics::INVENTORY, "product_price_changed", |p| p.product_id);

/// Stock for every line of the order is set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub items: Vec<LineItem>,
}
contract!(StockReserved, topics::INVENTORY, "stock_reserved", |p| p.order_id);

/// The order cannot be served; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockUnavailable {
    pub order_id: Uuid,
    pub reason: String,
}
contract!(StockUnavailable, topics::INVENTORY, "stock_unavailable", |p| p.order_id);

/// The order's reservation is undone (or it never existed, and a late reservation is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: Uuid,
    /// Whether a reservation existed and was returned to stock.
    pub released: bool,
}
contract!(StockReleased, topics::INVENTORY, "stock_released", |p| p.order_id);

/// Command to inventory: undo the order's reservation. Answered with [`StockReleased`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}
contract!(ReleaseStock, topics::INVENTORY_COMMANDS, "release_stock", |p| p.order_id);

// ---- orders ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub items: Vec<PricedLine>,
    pub total: Money,
}
contract!(OrderCreated, topics::ORDERS, "order_created", |p| p.order_id);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCompleted {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub total: Money,
}
contract!(OrderCompleted, topics::ORDERS, "order_completed", |p| p.order_id);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub reason: String,
}
contract!(OrderCancelled, topics::ORDERS, "order_cancelled", |p| p.order_id);

/// Command to orders from the saga: every step succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CompleteOrder {
    pub order_id: Uuid,
}
contract!(CompleteOrder, topics::ORDER_COMMANDS, "complete_order", |p| p.order_id);

/// Command to orders from the saga: a step failed and compensations are done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelOrder {
    pub order_id: Uuid,
    pub reason: String,
}
contract!(CancelOrder, topics::ORDER_COMMANDS, "cancel_order", |p| p.order_id);

// ---- payments ----

/// The customer was charged. Carries the order's lines so inventory can reserve them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentSuccessful {
    pub order_id: Uuid,
    pub payment_id: String,
    pub amount: Money,
    pub items: Vec<LineItem>,
}
contract!(PaymentSuccessful, topics::PAYMENTS, "payment_successful", |p| p.order_id);

/// The charge was declined or could not be made; nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub reason: String,
}
contract!(PaymentFailed, topics::PAYMENTS, "payment_failed", |p| p.order_id);

/// The order's payment is undone: refunded, or voided before any charge (`amount` zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub amount: Money,
}
contract!(PaymentRefunded, topics::PAYMENTS, "payment_refunded", |p| p.order_id);

/// Command to payments: refund the order's charge, or void it so that no charge happens later.
/// Answered with [`PaymentRefunded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefundPayment {
    pub order_id: Uuid,
    pub reason: String,
}
contract!(RefundPayment, topics::PAYMENT_COMMANDS, "refund_payment", |p| p.order_id);

// ---- saga ----

/// A saga step's deadline passed (a durable timer of the orchestrator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SagaTimedOut {
    pub order_id: Uuid,
    /// The step that did not answer, e.g. `payment` or `stock`.
    pub step: String,
}
contract!(SagaTimedOut, topics::SAGA_TIMEOUTS, "saga_timed_out", |p| p.order_id);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    #[test]
    fn a_contract_round_trips_through_an_event() {
        let created = OrderCreated {
            order_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            items: vec![PricedLine {
                product_id: Uuid::now_v7(),
                quantity: 2,
                unit_price: Money::new(500, Currency::EUR),
            }],
            total: Money::new(1000, Currency::EUR),
        };
        let event = created.to_event("orders");
        assert_eq!(event.kind, "order_created");
        assert_eq!(event.subject, created.order_id.to_string());
        assert_eq!(OrderCreated::decode(&event).unwrap().unwrap(), created);
        assert!(OrderCompleted::decode(&event).is_none());
        let reply = CompleteOrder { order_id: created.order_id }.reply_to("saga", &event);
        assert_eq!(reply.topic, "orders.commands");
        assert_eq!(reply.event.causation_id, Some(event.id));
        assert_eq!(reply.event.correlation_id, event.correlation_id);
    }

    #[test]
    fn every_contract_has_a_schema_and_a_valid_topic() {
        let schemas = crate::schemas();
        assert_eq!(schemas.len(), 22);
        for topic in [topics::USERS, topics::INVENTORY_COMMANDS, topics::SAGA_TIMEOUTS, topics::DOC_UPLOADED] {
            weir_core::bus::validate_name(topic).unwrap();
        }
    }
}
