//! The public catalog: `GET /v1/products` and `GET /v1/products/{id}`. No auth: prices and
//! stock levels are what a shop shows anyone. Reads go to the reader pool, never a transaction.

use axum::extract::{Path, State, rejection::PathRejection};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_core::{Db, db::Row};
use weir_http::{Json, Problem};

/// The inventory routes, with their state applied.
pub fn routes(db: Db) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(list_products)).routes(routes!(get_product)).with_state(db)
}

/// A price in minor units: `{"amount": 1999, "currency": "EUR"}` is €19.99.
#[derive(Debug, Serialize, ToSchema)]
pub struct Price {
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A product as the catalog lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductSummary {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Price,
    /// Units that can still be ordered.
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    /// Every product, ordered by SKU.
    pub items: Vec<ProductSummary>,
}

/// Where a product's units are.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockLevels {
    pub available: i64,
    /// Held for orders that are paid but not yet completed.
    pub reserved: i64,
    pub sold: i64,
}

/// One product with its stock.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDetail {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Price,
    /// Units that can still be ordered (the same as `stock.available`).
    pub available: i64,
    pub stock: StockLevels,
}

const COLUMNS: &str = "id, sku, name, price_amount, currency, available, reserved, sold";

fn summary(row: &Row) -> Result<ProductSummary, Problem> {
    let id = row.text(0)?;
    let product_id = Uuid::parse_str(id).map_err(|e| Problem::internal(&e))?;
    Ok(ProductSummary {
        product_id,
        sku: row.text(1)?.to_owned(),
        name: row.text(2)?.to_owned(),
        price: Price { amount: row.i64(3)?, currency: row.text(4)?.to_owned() },
        available: row.i64(5)?,
    })
}

/// Lists the catalog.
#[utoipa::path(
    get,
    path = "/v1/products",
    tag = "inventory",
    responses(
        (status = 200, description = "Every product, ordered by SKU", body = ProductList),
        (status = 503, description = "The store is unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_products(State(db): State<Db>) -> Result<Json<ProductList>, Problem> {
    let rows = db.query(&format!("SELECT {COLUMNS} FROM products ORDER BY sku"), &[]).await?;
    let items = rows.iter().map(summary).collect::<Result<_, _>>()?;
    Ok(Json(ProductList { items }))
}

/// Shows one product and where its stock is.
#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    tag = "inventory",
    params(("id" = Uuid, Path, description = "The product id (a UUID)")),
    responses(
        (status = 200, description = "The product", body = ProductDetail),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_product(
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ProductDetail>, Problem> {
    // The id is taken as text and parsed here so a bad one is a problem, not axum's plain text.
    let Path(id) = id.map_err(|e| Problem::bad_request(format!("the product id in the path is unreadable: {e}")))?;
    let product_id = weir_http::parse_id(&id, "a product", "GET /v1/products")?;
    let rows =
        db.query(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"), &[product_id.to_string().into()]).await?;
    let Some(row) = rows.first() else {
        return Err(Problem::not_found(format!("there is no product {product_id}; GET /v1/products lists them")));
    };
    let ProductSummary { product_id, sku, name, price, available } = summary(row)?;
    let stock = StockLevels { available, reserved: row.i64(6)?, sold: row.i64(7)? };
    Ok(Json(ProductDetail { product_id, sku, name, price, available, stock }))
}
