//! The service's persistence: its own tables (prices learned from inventory, idempotency keys,
//! the read model) and its use of the kernel's event store, where each order is the stream
//! `order-{uuid}`.

use std::collections::HashMap;

use uuid::Uuid;
use weir_contracts::{Currency, Money};
use weir_core::{
    Database, Event, Transaction, Value,
    db::{self, Dialect, Migration},
    store::{
        self,
        event_store::{self, ExpectedVersion},
    },
};

use crate::{
    domain::{Order, OrderEvent},
    read_model::OrderViews,
};

/// The service's tables; the same SQL runs on SQLite and PostgreSQL.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "prices, idempotency keys, order views", sqlite: SCHEMA, postgres: SCHEMA },
    Migration { version: 2, name: "pending orders", sqlite: PENDING_INDEX, postgres: PENDING_INDEX },
];

/// Only the orders still pending are in it, so counting them costs what there is to count.
const PENDING_INDEX: &str = "CREATE INDEX order_views_pending ON order_views (created_at) WHERE status = 'PENDING'";

const SCHEMA: &str = "
    CREATE TABLE prices (
        product_id TEXT PRIMARY KEY,
        sku TEXT NOT NULL,
        name TEXT NOT NULL,
        amount BIGINT NOT NULL,
        currency TEXT NOT NULL,
        -- Time of the inventory event that set the price, so a redriven old event cannot undo
        -- a newer price.
        updated_at BIGINT NOT NULL);
    CREATE TABLE idempotency_keys (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        order_id TEXT NOT NULL,
        PRIMARY KEY (user_id, key));
    CREATE TABLE order_views (
        order_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        status TEXT NOT NULL,
        items TEXT NOT NULL,
        total_amount BIGINT NOT NULL,
        currency TEXT NOT NULL,
        reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL);
    CREATE INDEX order_views_by_user ON order_views (user_id, order_id)";

/// The event-store stream of an order.
pub fn stream(order_id: Uuid) -> String {
    format!("order-{order_id}")
}

/// Loads an order from its stream inside `tx` (the one that will append to it): its state and
/// the stream's version, or `None` when the order does not exist.
pub async fn load(tx: &mut dyn Transaction, order_id: Uuid) -> store::Result<Option<(Order, i64)>> {
    let recorded = event_store::read_stream_in(tx, &stream(order_id), 0).await?;
    let Some(version) = recorded.last().map(|r| r.version) else { return Ok(None) };
    let mut history = Vec::with_capacity(recorded.len());
    for r in &recorded {
        if let Some(event) = OrderEvent::decode(&r.event) {
            history.push(event?);
        }
    }
    Ok(Order::replay(&history).map(|order| (order, version)))
}

/// Appends `events` to the order's stream inside `tx`, if the stream is at `expected`, and
/// applies them to the read model in the same transaction.
pub async fn record(
    tx: &mut dyn Transaction,
    dialect: Dialect,
    order_id: Uuid,
    expected: ExpectedVersion,
    events: &[Event],
) -> store::Result<()> {
    let stream = stream(order_id);
    event_store::append(tx, dialect, &stream, expected, events).await?;
    OrderViews::apply_appended(tx, &stream, events).await
}

/// The current price of each of `products` that inventory has published.
pub async fn prices(db: &dyn Database, products: &[Uuid]) -> db::Result<HashMap<Uuid, Money>> {
    if products.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders: Vec<String> = (1..=products.len()).map(|i| format!("${i}")).collect();
    let sql =
        format!("SELECT product_id, amount, currency FROM prices WHERE product_id IN ({})", placeholders.join(", "));
    let params: Vec<Value> = products.iter().map(|p| p.to_string().into()).collect();
    let mut prices = HashMap::with_capacity(products.len());
    for row in db.query(&sql, &params).await? {
        let product_id = Uuid::parse_str(row.text(0)?).map_err(|e| db::Error::Decode(e.to_string()))?;
        let currency = Currency::parse(row.text(2)?).map_err(|e| db::Error::Decode(e.to_string()))?;
        prices.insert(product_id, Money::new(row.i64(1)?, currency));
    }
    Ok(prices)
}

/// A product as inventory published it.
pub struct Product<'a> {
    pub product_id: Uuid,
    pub sku: &'a str,
    pub name: &'a str,
    pub price: Money,
}

/// Records a product and its price, unless a newer price is already recorded.
pub async fn put_product(tx: &mut dyn Transaction, product: &Product<'_>, at_micros: i64) -> db::Result<()> {
    tx.execute(
        "INSERT INTO prices (product_id, sku, name, amount, currency, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (product_id) DO UPDATE SET sku = excluded.sku, name = excluded.name,
             amount = excluded.amount, currency = excluded.currency, updated_at = excluded.updated_at
         WHERE prices.updated_at <= excluded.updated_at",
        &[
            product.product_id.to_string().into(),
            product.sku.into(),
            product.name.into(),
            product.price.amount.into(),
            product.price.currency.as_str().into(),
            at_micros.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Changes a known product's price, unless a newer price is already recorded; returns whether
/// the product is known.
pub async fn change_price(
    tx: &mut dyn Transaction,
    product_id: Uuid,
    price: Money,
    at_micros: i64,
) -> db::Result<bool> {
    let id: Value = product_id.to_string().into();
    let known = !tx.query("SELECT 1 FROM prices WHERE product_id = $1", std::slice::from_ref(&id)).await?.is_empty();
    if known {
        tx.execute(
            "UPDATE prices SET amount = $2, currency = $3, updated_at = $4 WHERE product_id = $1 AND updated_at <= $4",
            &[id, price.amount.into(), price.currency.as_str().into(), at_micros.into()],
        )
        .await?;
    }
    Ok(known)
}

/// The order an idempotency key already created for `user_id`.
pub async fn order_for_key(db: &dyn Database, user_id: Uuid, key: &str) -> db::Result<Option<Uuid>> {
    let rows = db
        .query(
            "SELECT order_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
            &[user_id.to_string().into(), key.into()],
        )
        .await?;
    rows.first().map(|r| Uuid::parse_str(r.text(0)?).map_err(|e| db::Error::Decode(e.to_string()))).transpose()
}

/// Claims `key` for `order_id` inside `tx`; `false` when a concurrent request claimed it first.
pub async fn claim_key(tx: &mut dyn Transaction, user_id: Uuid, key: &str, order_id: Uuid) -> db::Result<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (user_id, key, order_id) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, key) DO NOTHING",
            &[user_id.to_string().into(), key.into(), order_id.to_string().into()],
        )
        .await?;
    Ok(inserted == 1)
}
