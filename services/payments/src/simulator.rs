//! A simulated external payment gateway: a small HTTP server with the shape of a real one
//! (idempotency keys, declines, outages, latency), for development (`weir up`) and tests.
//!
//! # Endpoints
//! - `POST /v1/charges` with an `Idempotency-Key` header and `{amount, currency, customer}` →
//!   `201 {charge_id, status: "succeeded", amount, currency}` | `402 {status: "declined", reason}`
//!   | `503` (a simulated outage).
//! - `GET /v1/charges?idempotency_key=K` → `200 {data: [charge]}`: the charge made with that key,
//!   if any (none for a key never used, declined or refused). It charges nothing, and is how a
//!   client settles a charge whose answer it lost.
//! - `POST /v1/refunds` with an `Idempotency-Key` header and `{charge_id, amount}` →
//!   `201 {refund_id, charge_id, status: "succeeded", amount, currency}` | `404` unknown charge |
//!   `422` more than is left of the charge | `503`.
//! - `GET /v1/ledger[?by_key=true]` → `{charges, refunds, declines, charged_total,
//!   refunded_total, by_key?}`: what the gateway has done, so tests can check "charged at most
//!   once". Totals add minor units across currencies (tests use one currency).
//!
//! # Idempotency, durably
//! The ledger lives in its own database (the [`weir_core::Database`] port): every answered request is
//! stored under its key — in the same transaction as the charge or refund it made — and a
//! repeated key is answered with the stored response (header `Idempotent-Replayed: true`), even
//! after a restart. A repeated key with a different body (or on another endpoint) is a `422`.
//! As with real gateways, outages (`503`) and invalid requests (`4xx` other than `402`) are not
//! stored: the key stays unused and the client may retry it.
//!
//! # Randomness and latency
//! For each request with a *new* key, a failure (`503`) is drawn with
//! [`SimulatorConfig::failure_rate`] and, for charges, a decline with
//! [`SimulatorConfig::decline_rate`]. Latency is slept *after* the outcome is recorded and
//! before answering: a client that times out has still been charged, exactly the case an
//! idempotency key exists for.

use std::{
    net::SocketAddr,
    ops::RangeInclusive,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use uuid::Uuid;
use weir_contracts::Currency;
use weir_core::{
    Db, Transaction,
    db::{self, Migration},
};
use weir_http::{Json, Problem};

use crate::wire::{self, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

/// How the simulated gateway behaves. Rates are probabilities in `0.0..=1.0` (clamped).
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Slept before each charge or refund answer: a uniform draw from this range (use `d..=d`
    /// for a fixed latency).
    pub latency: RangeInclusive<Duration>,
    /// Share of new charges declined (`402`).
    pub decline_rate: f64,
    /// Share of requests with a new key answered `503` without effect.
    pub failure_rate: f64,
}

impl Default for SimulatorConfig {
    /// A healthy gateway with a little latency.
    fn default() -> Self {
        Self { latency: Duration::from_millis(5)..=Duration::from_millis(20), decline_rate: 0.0, failure_rate: 0.0 }
    }
}

impl SimulatorConfig {
    /// A healthy gateway that answers at once.
    pub fn instant() -> Self {
        Self { latency: Duration::ZERO..=Duration::ZERO, ..Self::default() }
    }

    fn draw_latency(&self) -> Duration {
        let (low, high) = (*self.latency.start(), *self.latency.end());
        if high <= low {
            return low;
        }
        let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
        low + Duration::from_nanos(rand::rng().random_range(0..=span))
    }
}

fn draw(rate: f64) -> bool {
    let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
    rand::rng().random_bool(rate)
}

const OWNER: &str = "payment_gateway_simulator";

const MIGRATIONS: [Migration; 1] = [Migration { version: 1, name: "ledger", sqlite: SCHEMA, postgres: SCHEMA }];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_requests (
    idempotency_key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    request TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    requests BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_charges (
    charge_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    customer TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    refunded BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_refunds (
    refund_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    charge_id TEXT NOT NULL,
    amount BIGINT NOT NULL
)";

/// Creates the ledger's tables in `db` (idempotent).
pub async fn migrate(db: &Db) -> db::Result<()> {
    db::migrate(db.as_ref(), OWNER, &MIGRATIONS).await
}

#[derive(Clone)]
struct Gateway {
    db: Db,
    config: Arc<RwLock<SimulatorConfig>>,
}

impl Gateway {
    fn config(&self) -> SimulatorConfig {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The gateway's routes over `db` (already migrated, see [`migrate`]), reading its behaviour
/// from `config` at each request.
pub fn router(db: Db, config: Arc<RwLock<SimulatorConfig>>) -> Router {
    Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/ledger", get(ledger))
        .layer(axum::middleware::from_fn(in_trace))
        .with_state(Gateway { db, config })
}

/// Runs each request in a span carrying the caller's trace id, as an instrumented gateway
/// would, so its log lines join the order's trace.
async fn in_trace(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let trace = weir_http::TraceContext::from_headers(request.headers());
    let span = tracing::info_span!("gateway", trace_id = %trace.trace_id());
    tracing::Instrument::instrument(next.run(request), span).await
}

/// A running simulator; stop it with [`stop`](Self::stop) (dropping it leaves it running until
/// the runtime ends).
pub struct Simulator {
    addr: SocketAddr,
    config: Arc<RwLock<SimulatorConfig>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Simulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL for [`HttpProviderConfig`](crate::HttpProviderConfig).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the behaviour from the next request on (e.g. to end a simulated outage).
    pub fn set_config(&self, config: SimulatorConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Stops accepting connections, finishes the requests in flight, and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            error!(error = %e, "the payment gateway simulator task failed");
        }
    }
}

/// Migrates `db`, binds `addr` (port 0 picks a free port) and serves the gateway until
/// [`Simulator::stop`].
pub async fn start_simulator(db: Db, config: SimulatorConfig, addr: SocketAddr) -> crate::Result<Simulator> {
    migrate(&db).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let config = Arc::new(RwLock::new(config));
    let app = router(db, config.clone());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
        if let Err(e) = served {
            error!(error = %e, "the payment gateway simulator stopped with an error");
        }
    });
    info!(%addr, "payment gateway simulator listening");
    Ok(Simulator { addr, config, stop, task })
}

/// An answer, as stored and replayed.
struct Answer {
    status: StatusCode,
    body: String,
    replayed: bool,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.replayed {
            headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let missing = || {
        Problem::bad_request(format!(
            "send an `{IDEMPOTENCY_KEY}` header (1 to 255 visible ASCII characters) that names this operation, \
             so that a retry can never charge twice"
        ))
    };
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(missing)?;
    let key = value.to_str().map_err(|_| missing())?.trim();
    if key.is_empty() || key.len() > 255 {
        return Err(missing());
    }
    Ok(key.to_owned())
}

fn positive_amount(amount: i64) -> Result<(), Problem> {
    if amount <= 0 {
        return Err(Problem::invalid("the amount must be a positive number of minor units (cents)")
            .with_field("amount", "must be greater than 0"));
    }
    Ok(())
}

fn outage() -> Problem {
    Problem::unavailable("the payment gateway is temporarily unavailable (simulated outage); retry with the same key")
}

/// What a request with this key found in the ledger.
enum Lookup {
    New,
    Replay(Answer),
}

/// Looks `key` up inside `tx`: a stored answer for the same request is replayed (and counted);
/// the same key with another request is a 422.
async fn lookup(tx: &mut dyn Transaction, endpoint: &str, key: &str, request: &str) -> Result<Lookup, Problem> {
    let rows = tx
        .query(
            "SELECT endpoint, request, status, response FROM gateway_requests WHERE idempotency_key = $1",
            &[key.into()],
        )
        .await?;
    let Some(row) = rows.first() else { return Ok(Lookup::New) };
    if row.text(0)? != endpoint || row.text(1)? != request {
        return Err(Problem::invalid(format!(
            "the idempotency key {key:?} was already used for a different request; \
             use a new key for a new operation, or repeat the original request exactly"
        ))
        .with_field(IDEMPOTENCY_KEY, "already used with another request body"));
    }
    let status = u16::try_from(row.i64(2)?)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| Problem::internal(&db::Error::Decode("a stored status is not an HTTP status".into())))?;
    let body = row.text(3)?.to_owned();
    tx.execute("UPDATE gateway_requests SET requests = requests + 1 WHERE idempotency_key = $1", &[key.into()]).await?;
    Ok(Lookup::Replay(Answer { status, body, replayed: true }))
}

/// Claims `key` for this request with its answer; `false` if a concurrent request claimed it
/// first (then the caller rolls back and replays that one's answer).
async fn claim(
    tx: &mut dyn Transaction,
    endpoint: &str,
    key: &str,
    request: &str,
    status: StatusCode,
    response: &str,
) -> Result<bool, Problem> {
    let inserted = tx
        .execute(
            "INSERT INTO gateway_requests (idempotency_key, endpoint, request, status, response, requests, created_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (idempotency_key) DO NOTHING",
            &[
                key.into(),
                endpoint.into(),
                request.into(),
                i64::from(status.as_u16()).into(),
                response.into(),
                chrono::Utc::now().to_rfc3339().into(),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("wire bodies are plain data")
}

const DECLINE_REASONS: [&str; 3] = ["insufficient_funds", "card_declined", "expired_card"];

async fn create_charge(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Json(body): Json<wire::ChargeBody>,
) -> Result<Answer, Problem> {
    let key = idempotency_key(&headers)?;
    let currency = Currency::parse(&body.currency)
        .map_err(|e| Problem::invalid(e.to_string()).with_field("currency", "three upper-case letters, e.g. EUR"))?;
    positive_amount(body.amount)?;
    let config = gateway.config();
    // The canonical request: what a repeated key must match.
    let request = to_json(&wire::ChargeBody { currency: currency.to_string(), ..body.clone() });
    let answer = charge(&gateway, &config, &key, &request, &body, currency).await;
    tokio::time::sleep(config.draw_latency()).await;
    answer
}

async fn charge(
    gateway: &Gateway,
    config: &SimulatorConfig,
    key: &str,
    request: &str,
    body: &wire::ChargeBody,
    currency: Currency,
) -> Result<Answer, Problem> {
    const ENDPOINT: &str = "charges";
    // Twice at most: the second round replays the answer of a concurrent request that won.
    for _ in 0..2 {
        let mut tx = gateway.db.begin().await?;
        if let Lookup::Replay(answer) = lookup(tx.as_mut(), ENDPOINT, key, request).await? {
            tx.commit().await?;
            return Ok(answer);
        }
        if draw(config.failure_rate) {
            return Err(outage());
        }
        if draw(config.decline_rate) {
            let reason = DECLINE_REASONS[rand::rng().random_range(0..DECLINE_REASONS.len())];
            let response = to_json(&wire::Declined { status: "declined".into(), reason: reason.into() });
            if !claim(tx.as_mut(), ENDPOINT, key, request, StatusCode::PAYMENT_REQUIRED, &response).await? {
                continue;
            }
            tx.commit().await?;
            info!(idempotency_key = %key, reason, "simulated gateway declined a charge");
            return Ok(Answer { status: StatusCode::PAYMENT_REQUIRED, body: response, replayed: false });
        }
        let charge_id = format!("ch_{}", Uuid::now_v7().simple());
        let response = to_json(&wire::ChargeAnswer {
            charge_id: charge_id.clone(),
            status: "succeeded".into(),
            amount: body.amount,
            currency: currency.to_string(),
        });
        if !claim(tx.as_mut(), ENDPOINT, key, request, StatusCode::CREATED, &response).await? {
            continue;
        }
        tx.execute(
            "INSERT INTO gateway_charges (charge_id, idempotency_key, customer, amount, currency, refunded)
             VALUES ($1, $2, $3, $4, $5, 0)",
            &[
                charge_id.as_str().into(),
                key.into(),
                body.customer.to_string().into(),
                body.amount.into(),
                currency.as_str().into(),
            ],
        )
        .await?;
        tx.commit().await?;
        debug!(idempotency_key = %key, %charge_id, amount = body.amount, "simulated gateway charged");
        return Ok(Answer { status: StatusCode::CREATED, body: response, replayed: false });
    }
    Err(Problem::conflict("a concurrent request with the same idempotency key is in progress; retry"))
}

#[derive(Debug, Deserialize)]
struct ChargesQuery {
    idempotency_key: Option<String>,
}

async fn list_charges(
    State(gateway): State<Gateway>,
    Query(query): Query<ChargesQuery>,
) -> Result<axum::Json<wire::ChargeList>, Problem> {
    let key = query
        .idempotency_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| Problem::bad_request("name the charge to find: `?idempotency_key=` the key it was made with"))?;
    let rows = gateway
        .db
        .query(
            "SELECT charge_id, amount, currency FROM gateway_charges WHERE idempotency_key = $1",
            &[key.trim().into()],
        )
        .await?;
    let data = rows
        .iter()
        .map(|row| {
            Ok(wire::ChargeAnswer {
                charge_id: row.text(0)?.to_owned(),
                status: "succeeded".into(),
                amount: row.i64(1)?,
                currency: row.text(2)?.to_owned(),
            })
        })
        .collect::<db::Result<_>>()?;
    Ok(axum::Json(wire::ChargeList { data }))
}

async fn create_refund(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Json(body): Json<wire::RefundBody>,
) -> Result<Answer, Problem> {
    let key = idempotency_key(&headers)?;
    positive_amount(body.amount)?;
    if body.charge_id.trim().is_empty() {
        return Err(Problem::invalid("name the charge to refund").with_field("charge_id", "must not be empty"));
    }
    let config = gateway.config();
    let request = to_json(&body);
    let answer = refund(&gateway, &config, &key, &request, &body).await;
    tokio::time::sleep(config.draw_latency()).await;
    answer
}

async fn refund(
    gateway: &Gateway,
    config: &SimulatorConfig,
    key: &str,
    request: &str,
    body: &wire::RefundBody,
) -> Result<Answer, Problem> {
    const ENDPOINT: &str = "refunds";
    for _ in 0..2 {
        let mut tx = gateway.db.begin().await?;
        if let Lookup::Replay(answer) = lookup(tx.as_mut(), ENDPOINT, key, request).await? {
            tx.commit().await?;
            return Ok(answer);
        }
        if draw(config.failure_rate) {
            return Err(outage());
        }
        let rows = tx
            .query(
                "SELECT amount, currency, refunded FROM gateway_charges WHERE charge_id = $1",
                &[body.charge_id.as_str().into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(Problem::not_found(format!("there is no charge {:?}", body.charge_id))
                .with_field("charge_id", "no such charge"));
        };
        let (charged, currency, refunded) = (row.i64(0)?, row.text(1)?.to_owned(), row.i64(2)?);
        let left = charged - refunded;
        if body.amount > left {
            return Err(Problem::invalid(format!(
                "the refund of {} exceeds what is left of the charge ({left} of {charged} minor units)",
                body.amount
            ))
            .with_field("amount", format!("at most {left}")));
        }
        let refund_id = format!("re_{}", Uuid::now_v7().simple());
        let response = to_json(&wire::RefundAnswer {
            refund_id: refund_id.clone(),
            charge_id: body.charge_id.clone(),
            status: "succeeded".into(),
            amount: body.amount,
            currency,
        });
        if !claim(tx.as_mut(), ENDPOINT, key, request, StatusCode::CREATED, &response).await? {
            continue;
        }
        tx.execute(
            "INSERT INTO gateway_refunds (refund_id, idempotency_key, charge_id, amount) VALUES ($1, $2, $3, $4)",
            &[refund_id.as_str().into(), key.into(), body.charge_id.as_str().into(), body.amount.into()],
        )
        .await?;
        tx.execute(
            "UPDATE gateway_charges SET refunded = refunded + $1 WHERE charge_id = $2",
            &[body.amount.into(), body.charge_id.as_str().into()],
        )
        .await?;
        tx.commit().await?;
        info!(idempotency_key = %key, %refund_id, amount = body.amount, "simulated gateway refunded");
        return Ok(Answer { status: StatusCode::CREATED, body: response, replayed: false });
    }
    Err(Problem::conflict("a concurrent request with the same idempotency key is in progress; retry"))
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    #[serde(default)]
    by_key: bool,
}

/// What the gateway has done.
#[derive(Debug, Serialize)]
struct Ledger {
    charges: i64,
    refunds: i64,
    declines: i64,
    charged_total: i64,
    refunded_total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_key: Option<serde_json::Map<String, serde_json::Value>>,
}

async fn ledger(State(gateway): State<Gateway>, Query(query): Query<LedgerQuery>) -> Result<Response, Problem> {
    let db = &gateway.db;
    let one = |sql: &'static str| async move {
        let rows = db.query(sql, &[]).await?;
        rows.first().map_or(Ok(0), |r| r.i64(0))
    };
    let ledger = Ledger {
        charges: one("SELECT COUNT(*) FROM gateway_charges").await?,
        refunds: one("SELECT COUNT(*) FROM gateway_refunds").await?,
        declines: one("SELECT COUNT(*) FROM gateway_requests WHERE status = 402").await?,
        charged_total: one("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM gateway_charges").await?,
        refunded_total: one("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM gateway_refunds").await?,
        by_key: if query.by_key { Some(by_key(db).await?) } else { None },
    };
    Ok(axum::Json(ledger).into_response())
}

async fn by_key(db: &Db) -> db::Result<serde_json::Map<String, serde_json::Value>> {
    let rows = db
        .query(
            "SELECT idempotency_key, endpoint, status, requests, response FROM gateway_requests ORDER BY created_at",
            &[],
        )
        .await?;
    let mut out = serde_json::Map::new();
    for row in rows {
        let response: serde_json::Value = serde_json::from_str(row.text(4)?).unwrap_or(serde_json::Value::Null);
        out.insert(
            row.text(0)?.to_owned(),
            serde_json::json!({
                "endpoint": row.text(1)?,
                "status": row.i64(2)?,
                // How many times the key was presented and answered from the ledger.
                "requests": row.i64(3)?,
                "response": response,
            }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_draws_stay_in_range() {
        let fixed =
            SimulatorConfig { latency: Duration::from_millis(7)..=Duration::from_millis(7), ..Default::default() };
        assert_eq!(fixed.draw_latency(), Duration::from_millis(7));
        let range = SimulatorConfig::default();
        for _ in 0..100 {
            assert!(range.latency.contains(&range.draw_latency()));
        }
        let inverted =
            SimulatorConfig { latency: Duration::from_millis(9)..=Duration::from_millis(3), ..Default::default() };
        assert_eq!(inverted.draw_latency(), Duration::from_millis(9));
    }

    #[test]
    fn rates_are_clamped() {
        for (rate, expected) in [(0.0, false), (-3.0, false), (f64::NAN, false), (1.0, true), (7.0, true)] {
            assert_eq!(draw(rate), expected, "rate {rate}");
        }
    }

    #[test]
    fn idempotency_keys_are_required_and_bounded() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
            idempotency_key(&headers)
        };
        assert_eq!(with("charge-1").unwrap(), "charge-1");
        assert_eq!(with(" k ").unwrap(), "k");
        assert!(with("").is_err());
        assert!(with(&"x".repeat(256)).is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap_err().status, 400);
    }
}
