//! The payments service: charges each new order once through a payment gateway, and refunds
//! (or voids) an order's payment when told to.
//!
//! It consumes `orders` (`order_created` → `payment_successful` | `payment_failed`) and
//! `payments.commands` (`refund_payment` → `payment_refunded`), as consumer group `payments`,
//! and keeps one row per order in its own `payments` table. It speaks to the gateway only
//! through the [`PaymentProvider`] port: [`HttpProvider`] over HTTP (timeout, quick retries with
//! jitter, circuit breaker, idempotency key), and the [`simulator`] is a gateway to run it
//! against. It is not a ledger of record (the gateway is), has no HTTP API of its own, and knows
//! nothing of stock or of the saga beyond the events it answers.
//!
//! # Guarantees
//! - **Charged at most once per order**: the idempotency key is `charge-{order_id}`, and an
//!   order with a row is never sent to the gateway again.
//! - **A void wins**: `refund_payment` for an order not yet charged records it `voided`, so a
//!   charge that was delayed (gateway down, or in flight) never happens later — or, if it was
//!   already on its way and landed, is refunded at once (reason [`LATE_CHARGE_REASON`]). That
//!   includes a charge whose record was lost (the process died between the gateway's answer and
//!   the commit): when the order is redelivered to a voided row, the gateway is asked whether it
//!   holds a charge under the order's key ([`PaymentProvider::find_charge`]), and one it holds
//!   is refunded.
//! - **Refunded at most once**: key `refund-{order_id}`; a repeated command re-answers with the
//!   same `payment_refunded`.

mod handlers;
mod http_provider;
mod provider;
pub mod simulator;
mod store;
pub mod wire;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use weir_contracts::topics;
use weir_core::{Kernel, Router, RouterOptions, db};

pub use handlers::{CANCELLED_BEFORE_CHARGE_REASON, LATE_CHARGE_REASON};
pub use http_provider::{HttpProvider, HttpProviderConfig};
pub use provider::{Charge, ChargeRequest, PaymentProvider, ProviderError, Refund, RefundRequest};
pub use simulator::{Simulator, SimulatorConfig, start_simulator};

/// The consumer group of both consumers, and the migration owner.
pub const SERVICE: &str = "payments";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] db::Error),
    #[error("bus: {0}")]
    Bus(#[from] weir_core::bus::Error),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the service needs: a gateway and how to run its consumers.
pub struct Config {
    pub provider: Arc<dyn PaymentProvider>,
    pub router: RouterOptions,
}

impl Config {
    /// Default router options, with `provider`.
    pub fn new(provider: Arc<dyn PaymentProvider>) -> Self {
        Self { provider, router: RouterOptions::default() }
    }
}

pub struct Service {
    kernel: Kernel,
    config: Config,
}

impl Service {
    /// Creates or migrates the `payments` table; starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        db::migrate(kernel.db.as_ref(), SERVICE, &store::MIGRATIONS).await?;
        Ok(Self { kernel, config })
    }

    /// No HTTP routes: payments is driven by events only.
    pub fn routes(&self) -> utoipa_axum::router::OpenApiRouter {
        utoipa_axum::router::OpenApiRouter::new()
    }

    /// Consumes `orders` and `payments.commands` (group `payments`) and relays the outbox until
    /// `shutdown`; then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { kernel, config } = self;
        let charge = handlers::ChargeHandler { db: kernel.db.clone(), provider: config.provider.clone() };
        let refund = handlers::RefundHandler { db: kernel.db.clone(), provider: config.provider };
        let router = Router::new(kernel.clone(), config.router).route(topics::ORDERS, SERVICE, charge).route(
            topics::PAYMENT_COMMANDS,
            SERVICE,
            refund,
        );
        kernel.run(router, shutdown).await?;
        Ok(())
    }
}
