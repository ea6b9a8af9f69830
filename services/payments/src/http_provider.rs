//! [`HttpProvider`]: the payment-provider port over a real HTTP gateway (the
//! [`simulator`](crate::simulator) speaks the same API).
//!
//! # The call stack, outermost first
//! 1. **Circuit breaker** (`payment-gateway`) — a gateway that keeps failing is not called
//!    at all for a cool-down; callers get `Unavailable` at once, so a dead gateway costs the
//!    router's retries nothing and is not hammered. Only unavailability counts as a failure: a
//!    decline proves the gateway is up.
//! 2. **Quick retries with full jitter** — [`HttpProviderConfig::retries`] more tries on
//!    unavailability only (connection errors, timeouts, `5xx`, `429`), never on an answer.
//! 3. **Timeout** — each try is bounded by [`HttpProviderConfig::timeout`], body included.
//! 4. **The request**, with the caller's key in the `Idempotency-Key` header: every try of one
//!    operation carries the same key, so the gateway charges at most once however often we ask.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::{Serialize, de::DeserializeOwned};
use tracing::debug;
use weir_contracts::{Currency, Money};
use weir_core::resilience::{BreakerConfig, BreakerError, CircuitBreaker, retry_with_jitter, with_timeout};

use crate::{
    provider::{Charge, ChargeRequest, PaymentProvider, ProviderError, Refund, RefundRequest},
    wire::{self, IDEMPOTENCY_KEY},
};

/// A response body, read in full.
type Body = Vec<u8>;

/// Where the gateway is and how hard to try.
#[derive(Debug, Clone)]
pub struct HttpProviderConfig {
    /// The gateway's base URL, e.g. `http://127.0.0.1:4100`.
    pub base_url: String,
    /// Bound on one HTTP try, from connect to the last byte of the answer.
    pub timeout: Duration,
    /// Extra tries after the first when the gateway is unavailable. Keep
    /// `(retries + 1) · timeout` plus the waits under the router's `attempt_timeout`
    /// (the defaults: 3 · 2 s + ≤ 1 s < 10 s).
    pub retries: u32,
    /// Base and cap of the full-jitter wait between tries.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub breaker: BreakerConfig,
}

impl HttpProviderConfig {
    /// The defaults, for the gateway at `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            timeout: Duration::from_secs(2),
            retries: 2,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
            breaker: BreakerConfig { failure_threshold: 5, cool_down: Duration::from_secs(10) },
        }
    }
}

/// The payment gateway over HTTP, behind a circuit breaker. Cheap to share behind an `Arc`.
pub struct HttpProvider {
    client: reqwest::Client,
    config: HttpProviderConfig,
    breaker: CircuitBreaker,
}

/// How one try went, before any retry or breaker decision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `2xx`: done; the body says what.
    Accepted(Body),
    /// The gateway answered no (`402`, or it rejected the request as invalid): final.
    Refused(String),
}

/// The gateway could not be reached or did not answer usefully: retryable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unavailable(String);

/// What an HTTP status means for a payment call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Accepted,
    Declined,
    Unavailable,
    Rejected,
}

fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 => Class::Accepted,
        402 => Class::Declined,
        // Time-outs, "too early", rate limits and server errors may pass.
        408 | 425 | 429 | 500..=599 => Class::Unavailable,
        // Anything else (400, 404, 409, 422, ...): the gateway refused this request as it is;
        // repeating it cannot help, and nothing was charged.
        _ => Class::Rejected,
    }
}

/// The most useful line of an error body: a problem's `detail`, a decline's `reason`, or the
/// start of the text.
fn reason_of(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for field in ["reason", "detail", "title"] {
            if let Some(text) = value.get(field).and_then(|v| v.as_str()) {
                return text.to_owned();
            }
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

impl HttpProvider {
    pub fn new(config: HttpProviderConfig) -> crate::Result<Self> {
        let client = reqwest::Client::builder().build()?;
        let breaker = CircuitBreaker::new("payment-gateway", config.breaker.clone());
        Ok(Self { client, config, breaker })
    }

    /// The breaker around every call (its state is also the gauge `weir_circuit_state`).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// One operation: breaker → retries → timeout → request. `request` builds each try's request
    /// from the client and the gateway's base URL.
    async fn send(
        &self,
        traceparent: Option<&str>,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Sync,
    ) -> Result<Body, ProviderError> {
        let base = self.config.base_url.trim_end_matches('/');
        let limit = self.config.timeout;
        let one_try = || {
            with_timeout(
                limit,
                move || Unavailable(format!("no answer within {limit:?}")),
                self.try_once(request(&self.client, base), traceparent),
            )
        };
        let retried = retry_with_jitter(
            self.config.retries.saturating_add(1),
            self.config.retry_base,
            self.config.retry_max,
            one_try,
        );
        match self.breaker.call(retried).await {
            Ok(Answer::Accepted(body)) => Ok(body),
            Ok(Answer::Refused(reason)) => Err(ProviderError::Declined(reason)),
            Err(BreakerError::Open { name }) => {
                Err(ProviderError::Unavailable(format!("circuit `{name}` is open after repeated failures")))
            }
            Err(BreakerError::Inner(Unavailable(why))) => Err(ProviderError::Unavailable(why)),
        }
    }

    async fn try_once(
        &self,
        mut request: reqwest::RequestBuilder,
        traceparent: Option<&str>,
    ) -> Result<Answer, Unavailable> {
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| Unavailable(format!("cannot reach the gateway: {e}")))?;
        let status = response.status();
        let url = response.url().clone();
        let bytes = response.bytes().await.map_err(|e| Unavailable(format!("the answer broke off: {e}")))?;
        debug!(%url, %status, "payment gateway answered");
        match classify(status) {
            Class::Accepted => Ok(Answer::Accepted(bytes.to_vec())),
            Class::Declined => Ok(Answer::Refused(reason_of(&bytes))),
            Class::Rejected => {
                Ok(Answer::Refused(format!("the gateway rejected the request ({status}): {}", reason_of(&bytes))))
            }
            Class::Unavailable => Err(Unavailable(format!("the gateway answered {status}: {}", reason_of(&bytes)))),
        }
    }

    /// `POST {path}` with `body` under the idempotency key `key`.
    async fn post(
        &self,
        path: &str,
        key: &str,
        traceparent: Option<&str>,
        body: &(impl Serialize + Sync),
    ) -> Result<Body, ProviderError> {
        self.send(traceparent, |client, base| {
            client.post(format!("{base}{path}")).header(IDEMPOTENCY_KEY, key).json(body)
        })
        .await
    }
}

/// Decodes a `2xx` body. A garbled success is "unavailable": the outcome is unknown, and a retry
/// with the same key replays it.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Unavailable(format!("unreadable gateway answer: {e}")))
}

#[async_trait]
impl PaymentProvider for HttpProvider {
    async fn charge(&self, req: &ChargeRequest) -> Result<Charge, ProviderError> {
        let body = wire::ChargeBody {
            amount: req.amount.amount,
            currency: req.amount.currency.to_string(),
            customer: req.customer,
        };
        let answer: wire::ChargeAnswer =
            decode(&self.post("/v1/charges", &req.idempotency_key, req.traceparent.as_deref(), &body).await?)?;
        Ok(Charge { charge_id: answer.charge_id, amount: req.amount })
    }

    async fn refund(&self, req: &RefundRequest) -> Result<Refund, ProviderError> {
        let body = wire::RefundBody { charge_id: req.charge_id.clone(), amount: req.amount.amount };
        let answer: wire::RefundAnswer =
            decode(&self.post("/v1/refunds", &req.idempotency_key, req.traceparent.as_deref(), &body).await?)?;
        Ok(Refund { refund_id: answer.refund_id, amount: req.amount })
    }

    async fn find_charge(&self, idempotency_key: &str) -> Result<Option<Charge>, ProviderError> {
        let found = self
            .send(None, |client, base| {
                client.get(format!("{base}/v1/charges")).query(&[("idempotency_key", idempotency_key)])
            })
            .await?;
        let list: wire::ChargeList = decode(&found)?;
        let Some(answer) = list.data.into_iter().next() else { return Ok(None) };
        let currency = Currency::parse(&answer.currency)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable gateway answer: {e}")))?;
        Ok(Some(Charge { charge_id: answer.charge_id, amount: Money::new(answer.amount, currency) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let cases = [
            (200, Class::Accepted),
            (201, Class::Accepted),
            (402, Class::Declined),
            (400, Class::Rejected),
            (404, Class::Rejected),
            (409, Class::Rejected),
            (422, Class::Rejected),
            (408, Class::Unavailable),
            (429, Class::Unavailable),
            (500, Class::Unavailable),
            (502, Class::Unavailable),
            (503, Class::Unavailable),
        ];
        for (status, expected) in cases {
            assert_eq!(classify(StatusCode::from_u16(status).unwrap()), expected, "status {status}");
        }
    }

    #[test]
    fn reasons_come_from_the_body() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"status":"declined","reason":"insufficient_funds"}"#, "insufficient_funds"),
            (br#"{"type":"x","title":"Bad Request","detail":"send a key"}"#, "send a key"),
            (b"plain text", "plain text"),
            (b"", ""),
        ];
        for (body, expected) in cases {
            assert_eq!(reason_of(body), expected);
        }
    }
}
