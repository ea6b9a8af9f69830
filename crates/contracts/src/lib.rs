//! The platform's message contracts — the order pipeline's and the Document Intelligence
//! Platform's ([`documents`]): every topic, event and command the services exchange, as plain
//! Rust types. Services depend on these types, never on each other; this crate holds
//! no behaviour beyond turning a payload into an [`Event`] and back.
//!
//! Events are facts published by their owner to the owner's topic (`orders`, `payments`, ...).
//! Commands are requests addressed to one owner, on the owner's `<service>.commands` topic.
//! Every payload's subject (the partition and ordering key) is its order id, user id or product
//! id, so everything about one order is handled in order.

pub mod documents;
pub mod money;
pub mod orders;

use serde::{Serialize, de::DeserializeOwned};
use weir_core::{Event, Outgoing, event::DecodeError};

pub use documents::*;
pub use money::{Currency, Money};
pub use orders::*;

/// Topic names.
pub mod topics {
    pub const USERS: &str = "users";
    pub const INVENTORY: &str = "inventory";
    pub const INVENTORY_COMMANDS: &str = "inventory.commands";
    pub const ORDERS: &str = "orders";
    pub const ORDER_COMMANDS: &str = "orders.commands";
    pub const PAYMENTS: &str = "payments";
    pub const PAYMENT_COMMANDS: &str = "payments.commands";
    /// Durable saga timers fire here; only the saga orchestrator reads it.
    pub const SAGA_TIMEOUTS: &str = "saga.timeouts";
    /// A document's raw bytes are stored.
    pub const DOC_UPLOADED: &str = "doc.uploaded";
    /// A document's text and thumbnail are ready, or processing failed.
    pub const DOC_PROCESSED: &str = "doc.processed";
    /// A document has its label.
    pub const DOC_CLASSIFIED: &str = "doc.classified";
}

/// A payload with a fixed place on the bus: its topic, its event type and schema version.
pub trait Contract: Serialize + DeserializeOwned + schemars::JsonSchema {
    const TOPIC: &'static str;
    /// The CloudEvents `type`.
    const KIND: &'static str;
    /// The `dataschema` version; bump it (and add an upcaster) on an incompatible change.
    const VERSION: u32 = 1;

    /// The partition and ordering key.
    fn subject(&self) -> String;

    /// This payload as a new event from `source`.
    fn to_event(&self, source: &str) -> Event {
        Event::new(source, Self::KIND, self.subject(), self)
            .expect("contract payloads are plain data and always serialise")
            .with_version(Self::VERSION)
    }

    /// This payload as an event caused by `cause`, addressed to its topic.
    fn reply_to(&self, source: &str, cause: &Event) -> Outgoing {
        Outgoing::new(Self::TOPIC, self.to_event(source).caused_by(cause))
    }

    /// Whether `event` carries this contract.
    fn matches(event: &Event) -> bool {
        event.kind == Self::KIND
    }

    /// Decodes `event` as this contract; `None` when it is another type.
    fn decode(event: &Event) -> Option<Result<Self, DecodeError>> {
        Self::matches(event).then(|| event.data::<Self>())
    }
}

/// Every contract's JSON Schema, keyed `<type>.v<version>`: what `schemas/` holds.
pub fn schemas() -> Vec<(String, serde_json::Value)> {
    fn one<C: Contract>() -> (String, serde_json::Value) {
        (
            format!("{}.v{}", C::KIND, C::VERSION),
            serde_json::to_value(schemars::schema_for!(C)).expect("schemas serialise"),
        )
    }
    use orders::*;
    vec![
        one::<UserRegistered>(),
        one::<NotificationPreferencesChanged>(),
        one::<ProductAdded>(),
        one::<ProductPriceChanged>(),
        one::<StockReserved>(),
        one::<StockUnavailable>(),
        one::<StockReleased>(),
        one::<ReleaseStock>(),
        one::<OrderCreated>(),
        one::<OrderCompleted>(),
        one::<OrderCancelled>(),
        one::<CompleteOrder>(),
        one::<CancelOrder>(),
        one::<PaymentSuccessful>(),
        one::<PaymentFailed>(),
        one::<PaymentRefunded>(),
        one::<RefundPayment>(),
        one::<SagaTimedOut>(),
        one::<DocumentUploaded>(),
        one::<DocumentProcessed>(),
        one::<DocumentFailed>(),
        one::<DocumentClassified>(),
    ]
}
