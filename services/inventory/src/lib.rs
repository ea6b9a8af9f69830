//! The inventory service: the owner of products, prices and stock (ARCHITECTURE.md, "services"). It publishes
//! the catalog (`product_added` on `inventory`, which is how orders learns prices), reserves a
//! paid order's lines all or nothing (`payment_successful` → `stock_reserved` |
//! `stock_unavailable`), releases a reservation on the saga's `release_stock` command, and turns
//! a completed order's reservation into sold stock (`order_completed`). It serves the catalog
//! read-only over HTTP.
//!
//! It is not a warehouse system: there is no restocking, no price change endpoint and no
//! per-location stock. It never reads another service's tables; it learns about orders only
//! from events.
//!
//! **Invariant:** for every product, `initial = available + reserved + sold`, always. The
//! schema's CHECK constraints enforce it, so a bug fails a transaction instead of losing stock.

mod domain;
mod http;
mod stock;

use tokio_util::sync::CancellationToken;
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;
use weir_contracts::{Contract, Money, ProductAdded, topics};
use weir_core::{
    Kernel, Router, RouterOptions, Transaction,
    db::{Migration, migrate},
};

pub use domain::{DEMO_CATALOG, DemoProduct, PLENTY, SCARCE_SKU, Stock, product_id};
pub use http::{Price, ProductDetail, ProductList, ProductSummary, StockLevels};

/// The service name: the event source, the consumer group and the migration owner.
pub const SOURCE: &str = "inventory";

#[derive(Debug, Clone)]
pub struct Config {
    /// Seed [`DEMO_CATALOG`] into an empty products table on build.
    pub demo_catalog: bool,
    pub router: RouterOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self { demo_catalog: true, router: RouterOptions::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A new product's fields are not acceptable; the message says what to fix.
    #[error("invalid product: {0}")]
    InvalidProduct(String),
    #[error("a product with SKU {0:?} already exists")]
    DuplicateSku(String),
    #[error(transparent)]
    Db(#[from] weir_core::db::Error),
    #[error(transparent)]
    Store(#[from] weir_core::store::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cheap to clone: clones share the kernel (keep one to call [`stock_of`](Self::stock_of) after
/// [`run`](Self::run) took the other).
#[derive(Clone)]
pub struct Service {
    kernel: Kernel,
    config: Config,
}

impl Service {
    /// Creates or migrates inventory's tables and, if asked and the catalog is empty, seeds
    /// the demo catalog (announcing each product through the outbox). Starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        migrate(kernel.db.as_ref(), SOURCE, MIGRATIONS).await?;
        let service = Self { kernel, config };
        if service.config.demo_catalog {
            service.seed_demo_catalog().await?;
        }
        Ok(service)
    }

    async fn seed_demo_catalog(&self) -> Result<()> {
        let mut tx = self.kernel.db.begin().await?;
        let count = tx.query("SELECT COUNT(*) FROM products", &[]).await?;
        if count.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0) > 0 {
            return Ok(()); // Dropping `tx` rolls back a transaction that wrote nothing.
        }
        let mut announced = Vec::new();
        for p in DEMO_CATALOG {
            let price = Money::new(p.price_cents, weir_contracts::Currency::EUR);
            // Another replica may be seeding at the same moment: only rows this transaction
            // actually inserts are announced, so each product is announced once.
            if let Some(added) = insert_product(tx.as_mut(), p.sku, p.name, price, p.stock).await? {
                announced.push(added.to_event(SOURCE));
            }
        }
        let seeded = announced.len();
        self.kernel.outbox.enqueue(tx.as_mut(), topics::INVENTORY, announced).await?;
        self.kernel.outbox.commit(tx).await?;
        info!(products = seeded, "demo catalog seeded");
        Ok(())
    }

    /// Adds a product with `stock` units and announces it (`product_added`). Its id is
    /// [`product_id`]`(sku)`.
    pub async fn add_product(&self, sku: &str, name: &str, price: Money, stock: i64) -> Result<Uuid> {
        domain::validate_product(sku, name, price.amount, stock).map_err(Error::InvalidProduct)?;
        let mut tx = self.kernel.db.begin().await?;
        let Some(added) = insert_product(tx.as_mut(), sku, name.trim(), price, stock).await? else {
            return Err(Error::DuplicateSku(sku.to_owned()));
        };
        self.kernel.outbox.enqueue(tx.as_mut(), topics::INVENTORY, vec![added.to_event(SOURCE)]).await?;
        self.kernel.outbox.commit(tx).await?;
        info!(product_id = %added.product_id, sku, "product added");
        Ok(added.product_id)
    }

    /// A product's stock, or `None` if there is no such product.
    pub async fn stock_of(&self, product_id: Uuid) -> Result<Option<Stock>> {
        let rows = self
            .kernel
            .db
            .query(
                "SELECT available, reserved, sold, initial FROM products WHERE id = $1",
                &[product_id.to_string().into()],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(Some(Stock { available: row.i64(0)?, reserved: row.i64(1)?, sold: row.i64(2)?, initial: row.i64(3)? }))
    }

    /// The catalog routes (public, no auth), with their state applied.
    pub fn routes(&self) -> OpenApiRouter {
        http::routes(self.kernel.db.clone())
    }

    /// Consumes `payments`, `inventory.commands` and `orders` as group `inventory` and relays
    /// the outbox, until `shutdown`; then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let router = Router::new(self.kernel.clone(), self.config.router.clone())
            .route(topics::PAYMENTS, SOURCE, stock::Payments)
            .route(topics::INVENTORY_COMMANDS, SOURCE, stock::Commands)
            .route(topics::ORDERS, SOURCE, stock::Orders);
        self.kernel.run(router, shutdown).await?;
        Ok(())
    }
}

/// Inserts a product unless its id or SKU exists; returns its announcement if it was inserted.
async fn insert_product(
    tx: &mut dyn Transaction,
    sku: &str,
    name: &str,
    price: Money,
    stock: i64,
) -> Result<Option<ProductAdded>> {
    let product_id = product_id(sku);
    let inserted = tx
        .execute(
            "INSERT INTO products (id, sku, name, price_amount, currency, available, reserved, sold, initial)
             VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $6)
             ON CONFLICT DO NOTHING",
            &[
                product_id.to_string().into(),
                sku.into(),
                name.into(),
                price.amount.into(),
                price.currency.as_str().into(),
                stock.into(),
            ],
        )
        .await?;
    Ok((inserted == 1).then(|| ProductAdded { product_id, sku: sku.to_owned(), name: name.to_owned(), price }))
}

/// The same schema in both dialects; the CHECKs make lost or invented stock a failed write.
const SCHEMA: &str = "
    CREATE TABLE products (
        id TEXT PRIMARY KEY,
        sku TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        price_amount BIGINT NOT NULL CHECK (price_amount >= 0),
        currency TEXT NOT NULL,
        available BIGINT NOT NULL CHECK (available >= 0),
        reserved BIGINT NOT NULL CHECK (reserved >= 0),
        sold BIGINT NOT NULL CHECK (sold >= 0),
        initial BIGINT NOT NULL,
        CHECK (initial = available + reserved + sold));
    CREATE TABLE reservations (
        order_id TEXT NOT NULL,
        product_id TEXT NOT NULL REFERENCES products (id),
        quantity BIGINT NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (order_id, product_id));
    CREATE TABLE order_stock (
        order_id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'released', 'sold', 'unavailable')),
        reason TEXT,
        updated_at BIGINT NOT NULL)";

const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "products and reservations", sqlite: SCHEMA, postgres: SCHEMA }];
