//! The HTTP API: place an order (the write side, into the event store and the outbox) and read
//! orders (the read side, from the `order_views` read model).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_contracts::{Money, PricedLine, topics};
use weir_core::{Db, store::event_store::ExpectedVersion, store::outbox::Outbox};
use weir_http::{AuthUser, Json, Page, Problem, TraceContext};

use crate::{
    domain::{self, Invalid, Limits, RawLine, Status},
    read_model::{self, View},
    store,
};

/// How long a request waits for the order of a concurrent request with the same
/// `Idempotency-Key` to commit.
const CONCURRENT_KEY_WAIT: Duration = Duration::from_secs(1);
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The state of the routes; cheap to clone.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    outbox: Outbox,
    limits: Limits,
    admission: Admission,
}

impl Api {
    pub fn new(db: Db, outbox: Outbox, limits: Limits, max_pending: u64) -> Self {
        let admission = Admission::new(max_pending);
        Self { inner: Arc::new(Inner { db, outbox, limits, admission }) }
    }
}

/// How long a count of pending orders is trusted before it is taken again.
const PENDING_COUNT_AGE: Duration = Duration::from_millis(100);

/// Load shedding: past `max_pending` orders still pending, new ones are refused with 503 until
/// the pipeline catches up. The count comes from the read model (every process of the service
/// sees the same), at most once per [`PENDING_COUNT_AGE`] per process.
struct Admission {
    max_pending: u64,
    /// The last count, and when it was taken.
    last: Mutex<Option<(Instant, u64)>>,
}

impl Admission {
    fn new(max_pending: u64) -> Self {
        Self { max_pending, last: Mutex::new(None) }
    }

    /// Whether a new order may come in; `Err` says why not.
    async fn admit(&self, db: &dyn weir_core::Database) -> Result<(), Problem> {
        if self.max_pending == 0 {
            return Ok(());
        }
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = match last {
            Some((at, pending)) if at.elapsed() < PENDING_COUNT_AGE => pending,
            _ => {
                let pending = read_model::pending(db, self.max_pending).await?;
                *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), pending));
                pending
            }
        };
        if pending < self.max_pending {
            return Ok(());
        }
        metrics::counter!("weir_orders_shed_total").increment(1);
        Err(Problem::unavailable(format!(
            "{pending} orders are still being processed, the most this service takes at once; \
             retry after the Retry-After header's seconds"
        )))
    }
}

pub fn routes(api: Api) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(create_order, list_orders)).routes(routes!(get_order)).with_state(api)
}

/// An order to place. Prices are not sent: they are the catalog's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// The lines of the order: each product once.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub items: Vec<CreateOrderLine>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderLine {
    /// A product id from `GET /v1/products`.
    #[schema(value_type = Uuid)]
    pub product_id: String,
    /// How many (1 to the service's maximum, 1000 by default).
    #[schema(value_type = u32, minimum = 1)]
    pub quantity: serde_json::Number,
}

/// An order was accepted and is being processed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub order_id: Uuid,
    pub status: Status,
}

/// An amount in minor units (cents) and its ISO 4217 currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoneyBody {
    /// Minor units: 1999 with EUR is €19.99.
    pub amount: i64,
    #[schema(example = "EUR")]
    pub currency: String,
}

impl From<Money> for MoneyBody {
    fn from(m: Money) -> Self {
        Self { amount: m.amount, currency: m.currency.as_str().to_owned() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineView {
    pub product_id: Uuid,
    pub quantity: u32,
    /// The catalog's price when the order was placed.
    pub unit_price: MoneyBody,
}

impl From<PricedLine> for OrderLineView {
    fn from(line: PricedLine) -> Self {
        Self { product_id: line.product_id, quantity: line.quantity, unit_price: line.unit_price.into() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: Status,
    pub items: Vec<OrderLineView>,
    pub total: MoneyBody,
    /// Why the order was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<View> for OrderView {
    fn from(v: View) -> Self {
        Self {
            order_id: v.order_id,
            status: v.status,
            items: v.items.into_iter().map(Into::into).collect(),
            total: v.total.into(),
            reason: v.reason,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// One page of the caller's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Orders per page, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

fn invalid(errors: Vec<Invalid>) -> Problem {
    let detail = errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
    metrics::counter!("weir_orders_rejected_total").increment(1);
    errors
        .into_iter()
        .fold(Problem::invalid(format!("the order was not placed: {detail}")), |p, e| p.with_field(e.field, e.message))
}

fn accepted(order_id: Uuid) -> Response {
    let location = format!("/v1/orders/{order_id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Accepted { order_id, status: Status::Pending }))
        .into_response()
}

/// The optional `Idempotency-Key`: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_request("the Idempotency-Key header must be 1 to 255 visible ASCII characters, e.g. a UUID")
                .with_field("Idempotency-Key", "use 1 to 255 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

/// Place an order.
///
/// Prices come from the catalog, not the request. The order is accepted as `PENDING` and then
/// paid for and reserved asynchronously; follow it at the `Location` returned. With an
/// `Idempotency-Key`, repeating the request returns the order the first one created.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: the same key returns the same order")),
    request_body = CreateOrder,
    responses(
        (status = 202, description = "Accepted", body = Accepted,
            headers(("Location" = String, description = "The order's URL"))),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order; `errors` names each field", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Too many orders are still being processed; retry after `Retry-After` seconds",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn create_order(
    State(api): State<Api>,
    user: AuthUser,
    trace: TraceContext,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> Result<Response, Problem> {
    let api = &api.inner;
    let db = api.db.as_ref();
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key
        && let Some(order_id) = store::order_for_key(db, user.user_id, key).await?
    {
        info!(order_id = %order_id, "idempotency key seen before; answering with its order");
        return Ok(accepted(order_id));
    }

    let raw: Vec<RawLine<'_>> =
        body.items.iter().map(|l| RawLine { product_id: &l.product_id, quantity: &l.quantity }).collect();
    let lines = domain::parse_lines(&raw, api.limits).map_err(invalid)?;
    let products: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let prices = store::prices(db, &products).await?;
    let order_id = Uuid::now_v7();
    let created = domain::place(order_id, user.user_id, &lines, &prices).map_err(invalid)?;
    let mut event = created.to_event();
    event.traceparent = Some(trace.traceparent);
    if let Err(problem) = api.admission.admit(db).await {
        let mut response = problem.into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(response);
    }

    let mut tx = api.db.begin().await?;
    if let Some(key) = &key
        && !store::claim_key(tx.as_mut(), user.user_id, key, order_id).await?
    {
        // A concurrent request with the same key got there first: answer with its order once
        // that is durable (a group commit may still be writing it; PostgreSQL has already
        // waited for it).
        drop(tx);
        let deadline = tokio::time::Instant::now() + CONCURRENT_KEY_WAIT;
        loop {
            if let Some(existing) = store::order_for_key(db, user.user_id, key).await? {
                return Ok(accepted(existing));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Problem::conflict("a request with this Idempotency-Key is still in progress; retry"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    store::record(tx.as_mut(), api.db.dialect(), order_id, ExpectedVersion::NoStream, std::slice::from_ref(&event))
        .await?;
    api.outbox.enqueue(tx.as_mut(), topics::ORDERS, vec![event]).await?;
    api.outbox.commit(tx).await?;
    metrics::counter!("weir_orders_created_total").increment(1);
    info!(order_id = %order_id, lines = lines.len(), "order placed");
    // The read model changed in the same transaction: following the Location finds the order.
    Ok(accepted(order_id))
}

/// One of the caller's orders.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order of yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(api): State<Api>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderView>, Problem> {
    let Path(id) = id.map_err(|e| Problem::bad_request(format!("the order id is malformed: {}", e.body_text())))?;
    let order_id = weir_http::parse_id(&id, "an order", "GET /v1/orders")?;
    let view = read_model::get(api.inner.db.as_ref(), user.user_id, order_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("you have no order {order_id}; list yours at GET /v1/orders")))?;
    Ok(Json(view.into()))
}

/// The caller's orders, newest first.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_orders(
    State(api): State<Api>,
    user: AuthUser,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<OrderPage>, Problem> {
    let Query(params) =
        query.map_err(|e| Problem::bad_request(format!("the query string is malformed: {}", e.body_text())))?;
    let page = Page::parse(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut views = read_model::list(api.inner.db.as_ref(), user.user_id, page.before, page.fetch()).await?;
    let next_cursor = page.next_cursor(&mut views, |v| v.order_id);
    Ok(Json(OrderPage { items: views.into_iter().map(Into::into).collect(), next_cursor }))
}
