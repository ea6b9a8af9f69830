//! The Weir kernel: the event envelope, the bus and database ports, the stores built on the
//! database port (event store, outbox, inbox, projection checkpoints, sagas and timers), and
//! the router that runs handlers behind a fixed middleware stack.
//!
//! **Architecture invariant:** `weir-core` knows no broker and no database engine. Adapters
//! (`weir-store-sqlite`, `weir-store-postgres`, `weir-bus-nats`) implement its ports.

pub mod bus;
pub mod db;
pub mod event;
pub mod fault;
pub mod pii;
pub mod resilience;
pub mod router;
pub mod signing;
pub mod store;

pub use bus::{Delivery, Message, Publisher, Subscriber, Subscription};
pub use db::{Database, Db, Transaction, Value};
pub use event::{DecodeError, Event};
pub use router::{Context, Handler, HandlerError, Kernel, Outgoing, Prepared, Router, RouterOptions};
pub use signing::Keyring;
