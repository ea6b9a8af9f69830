//! The payment-provider port: what the service needs from a payment gateway.

use async_trait::async_trait;
use uuid::Uuid;
use weir_contracts::Money;

/// Charge `amount` to `customer`. The gateway charges at most once per `idempotency_key`: a
/// repeated request with the same key gets the first answer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub amount: Money,
    pub customer: Uuid,
    /// The W3C trace context of the order, passed on so the gateway's logs join the trace.
    pub traceparent: Option<String>,
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The gateway's id for the charge (what a refund names).
    pub charge_id: String,
    pub amount: Money,
}

/// Give back `amount` of the charge `charge_id`, at most once per `idempotency_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub idempotency_key: String,
    pub charge_id: String,
    pub amount: Money,
    pub traceparent: Option<String>,
}

/// A successful refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub amount: Money,
}

/// Why a provider call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The gateway answered and said no (card declined, request refused). Final for this
    /// request: retrying the same key gets the same answer. Nothing was charged or refunded.
    #[error("declined: {0}")]
    Declined(String),
    /// The gateway could not be reached or did not answer in time (or its circuit breaker is
    /// open). The outcome is unknown; retrying with the same idempotency key is safe.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
}

/// A payment gateway.
///
/// # Contract
/// - Idempotent per idempotency key: calling again with a key already used returns the first
///   outcome and never charges or refunds twice. Callers derive keys from what they are paying
///   for (`charge-{order_id}`), so retries and redeliveries are always safe.
/// - `Unavailable` means "unknown, retry"; `Declined` means "no, and it stays no".
/// - Thread-safe; dropping a call's future leaves its outcome unknown (retry with the same key).
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn charge(&self, req: &ChargeRequest) -> Result<Charge, ProviderError>;
    async fn refund(&self, req: &RefundRequest) -> Result<Refund, ProviderError>;
    /// The charge made with `idempotency_key`, if any — asked without charging. It settles an
    /// outcome that was lost: a charge the gateway made whose answer never reached our records
    /// (the process died, or its transaction failed, after the call).
    async fn find_charge(&self, idempotency_key: &str) -> Result<Option<Charge>, ProviderError>;
}
