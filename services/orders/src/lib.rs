//! The orders service: customers place orders over HTTP and read them back; the saga completes
//! or cancels them by command. Each order is an event-sourced aggregate (the stream
//! `order-{uuid}` in the kernel's event store, holding only the contract events
//! `order_created`, `order_completed`, `order_cancelled`), and every event appended to a stream
//! goes to the outbox on topic `orders` in the same transaction. Reads are served from a
//! separate, rebuildable read model (`order_views`), changed in the transaction of each append
//! (CQRS with an inline projection).
//!
//! It is not the source of prices (it learns them from inventory's events), nor of payment or
//! stock: it never decides an order's outcome itself, it records the saga's decision.

pub mod api;
mod consumers;
pub mod domain;
pub mod read_model;
pub mod store;

use tokio_util::sync::CancellationToken;
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use weir_contracts::topics;
use weir_core::{Kernel, Router, RouterOptions, db, store::projection};

pub use read_model::OrderViews;

/// The consumer group of every subscription, and the migrations' owner.
pub const NAME: &str = "orders";

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub router: RouterOptions,
    /// Lines one order may have.
    pub max_lines: usize,
    /// Units of one product one line may ask for.
    pub max_quantity: u32,
    /// Orders that may be pending at once: past it, `POST /v1/orders` answers 503 with
    /// `Retry-After` until the pipeline catches up, rather than accepting orders that would wait
    /// past the saga's timeouts. 0: no limit.
    pub max_pending: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { router: RouterOptions::default(), max_lines: 50, max_quantity: 1000, max_pending: 2000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Store(#[from] weir_core::store::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The orders service, built and ready to [`run`](Self::run).
pub struct Service {
    kernel: Kernel,
    config: Config,
    api: api::Api,
}

impl Service {
    /// Creates or migrates the service's tables; starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        if config.max_lines == 0 || config.max_quantity == 0 {
            return Err(Error::Config("max_lines and max_quantity must be at least 1".into()));
        }
        db::migrate(kernel.db.as_ref(), NAME, store::MIGRATIONS).await?;
        // Events an earlier version's projector had not applied yet; none otherwise.
        let caught_up = projection::catch_up(kernel.db.as_ref(), &read_model::OrderViews, read_model::BATCH).await?;
        if caught_up.applied > 0 {
            info!(applied = caught_up.applied, "order read model caught up");
        }
        let limits = domain::Limits { max_lines: config.max_lines, max_quantity: config.max_quantity };
        let api = api::Api::new(kernel.db.clone(), kernel.outbox.clone(), limits, config.max_pending);
        Ok(Self { kernel, config, api })
    }

    /// `POST /v1/orders`, `GET /v1/orders`, `GET /v1/orders/{id}`; they need the app's
    /// `Extension(weir_http::Tokens)` for authentication.
    pub fn routes(&self) -> OpenApiRouter {
        api::routes(self.api.clone())
    }

    /// Consumes `inventory` (prices) and `orders.commands`, relays the outbox and moves the read
    /// model's checkpoint, until `shutdown`; then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Service { kernel, config, api: _ } = self;
        let router = Router::new(kernel.clone(), config.router)
            .route(topics::INVENTORY, NAME, consumers::Prices)
            .route(topics::ORDER_COMMANDS, NAME, consumers::Commands);
        let db = kernel.db.clone();
        Ok(kernel.run_beside(router, shutdown, |stop| read_model::OrderViews::keep_checkpoint(db, stop)).await?)
    }
}
