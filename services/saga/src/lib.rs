//! The saga service: the orchestrator of order fulfilment (ARCHITECTURE.md, "services", saga). For every
//! order it runs one persisted state machine ([`machine`]) that reacts to `order_created`, the
//! payment and stock answers and its own durable step timers, and sends commands to the owners:
//! `complete_order` / `cancel_order` to orders, `refund_payment` to payments, `release_stock` to
//! inventory, compensating in reverse order when a step fails or times out. It owns no business
//! data (no charge, no stock, no order record) and calls no service directly: it learns only
//! from events and speaks only through commands that leave via the outbox. It has no HTTP API;
//! [`Service::state_of`] answers "where is this order's saga" for tests and the CLI.

mod handler;
pub mod machine;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;
use weir_contracts::topics;
use weir_core::{
    Kernel, Router, RouterOptions,
    store::{self, sagas::Scheduler},
};

use crate::{
    handler::SagaHandler,
    machine::{State, Timeouts},
};

/// The consumer group, the events' `source` and the service's name.
pub const SOURCE: &str = "saga";
/// The saga type under which instances are stored.
const SAGA_TYPE: &str = "order";

/// Errors of the saga service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] weir_core::db::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
    /// A stored saga that does not decode (written by an incompatible version).
    #[error("the stored saga of order {order_id} is unreadable: {reason}")]
    Corrupt { order_id: Uuid, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the saga runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long payments may take to answer `order_created` before the saga gives up and
    /// voids (or refunds) the payment.
    pub payment_timeout: Duration,
    /// How long inventory may take to answer `payment_successful` before the saga releases any
    /// reservation and refunds the charge.
    pub stock_timeout: Duration,
    pub router: RouterOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Above the embedded bus's 10 s lease, so a crashed payments member's orders are
            // redelivered (and a charge made before the crash recorded) before the saga gives up:
            // they complete instead of being cancelled and refunded.
            payment_timeout: Duration::from_secs(30),
            stock_timeout: Duration::from_secs(10),
            router: RouterOptions::default(),
        }
    }
}

impl Config {
    fn timeouts(&self) -> Timeouts {
        Timeouts { payment: self.payment_timeout, stock: self.stock_timeout }
    }
}

/// The saga orchestrator. Cloning is cheap; a clone shares the database, so a clone kept
/// aside can answer [`state_of`](Self::state_of) while the original [`run`](Self::run)s.
#[derive(Clone)]
pub struct Service {
    kernel: Kernel,
    config: Config,
}

impl Service {
    /// Makes sure the kernel's tables (which hold saga instances and timers) exist; starts nothing.
    /// The saga has no tables of its own.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        store::install(kernel.db.as_ref()).await?;
        Ok(Self { kernel, config })
    }

    /// The saga has no HTTP API; this is empty so that every service composes alike.
    pub fn routes(&self) -> OpenApiRouter {
        OpenApiRouter::new()
    }

    /// Consumes `orders`, `payments`, `inventory` and `saga.timeouts` as group `saga`, relays
    /// the outbox and fires due timers, until `shutdown`; then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let handler = SagaHandler { timeouts: self.config.timeouts() };
        let router = Router::new(self.kernel.clone(), self.config.router.clone())
            .route(topics::ORDERS, SOURCE, handler.clone())
            .route(topics::PAYMENTS, SOURCE, handler.clone())
            .route(topics::INVENTORY, SOURCE, handler.clone())
            .route(topics::SAGA_TIMEOUTS, SOURCE, handler);
        // Timers fire into this service's outbox, so the kernel's relay publishes them; a timer
        // fired as the service stops waits in the outbox for the next start.
        let scheduler = Scheduler::new(self.kernel.db.clone(), self.kernel.outbox.clone());
        Ok(self.kernel.run_beside(router, shutdown, |stop| scheduler.run(stop)).await?)
    }

    /// The state of `order_id`'s saga (`awaiting_payment`, `awaiting_stock`, `compensating`,
    /// `completed`, `cancelled`), or `None` if it has not started.
    pub async fn state_of(&self, order_id: Uuid) -> Result<Option<String>> {
        let rows = self
            .kernel
            .db
            .query(
                "SELECT state FROM weir_sagas WHERE saga_type = $1 AND id = $2",
                &[SAGA_TYPE.into(), order_id.to_string().into()],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let state = serde_json::from_slice::<State>(row.blob(0)?)
            .map_err(|e| Error::Corrupt { order_id, reason: e.to_string() })?;
        Ok(Some(state.name().to_owned()))
    }
}
