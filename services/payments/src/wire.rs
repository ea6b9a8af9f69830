//! The payment gateway's HTTP bodies, shared by the [`HttpProvider`](crate::HttpProvider) (the
//! client) and the [`simulator`](crate::simulator) (the server), so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The header that makes a request idempotent.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Set on an answer replayed from an earlier request with the same key.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    /// Minor units (cents), positive.
    pub amount: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    pub customer: Uuid,
}

/// `201` to a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeAnswer {
    pub charge_id: String,
    /// Always `succeeded`.
    pub status: String,
    pub amount: i64,
    pub currency: String,
}

/// `GET /v1/charges?idempotency_key=K`: the charges made with that key (none or one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeList {
    pub data: Vec<ChargeAnswer>,
}

/// `402` to a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declined {
    /// Always `declined`.
    pub status: String,
    pub reason: String,
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub charge_id: String,
    /// Minor units in the charge's currency, positive, at most what is left of the charge.
    pub amount: i64,
}

/// `201` to a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAnswer {
    pub refund_id: String,
    pub charge_id: String,
    /// Always `succeeded`.
    pub status: String,
    pub amount: i64,
    pub currency: String,
}
