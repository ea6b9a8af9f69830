//! The email sender: a background task that delivers the `emails` rows over SMTP.
//!
//! It wakes when a consumer adds a row and polls every [`DeliveryPolicy::poll_interval`]
//! anyway (a wake-up may come just before the row commits, or from another replica). Per email:
//!
//! 1. **Claim** in a short transaction: count the attempt and push `next_attempt_at` one lease
//!    ahead, so neither another replica nor the next poll sends it while this one does; a crash
//!    leaves it to be retried when the lease ends.
//! 2. **Send**, outside any transaction, bounded by the SMTP timeout. The `Message-ID` is
//!    `<{notification id}@weir>`, so a resend after a crash between sending and marking is
//!    recognisably the same message.
//! 3. **Mark** in a second transaction: sent; or, after a transient failure, due again after an
//!    exponential backoff with jitter; or failed for good after [`DeliveryPolicy::max_attempts`]
//!    or a permanent refusal (5xx, an address that does not open or parse).
//!
//! A circuit breaker (`weir_core::resilience`, named `smtp`) opens after
//! [`DeliveryPolicy::breaker_threshold`] failures in a row; while it is open nothing is claimed,
//! and after [`DeliveryPolicy::breaker_cool_down`] one email probes the server. An SMTP outage
//! so costs one attempt per cool-down instead of burning every email's attempts. Only failures
//! that say the server is unwell count (no connection, no answer, 4xx); a 5xx refusal of one
//! message proves the server answers.
//!
//! Addresses are opened from the sealed contact only here and never logged.

use std::{sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use weir_core::{
    Db, Value,
    pii::Sealer,
    resilience::{BreakerConfig, BreakerError, CircuitBreaker, CircuitState},
};

use crate::{DeliveryPolicy, SmtpConfig, now_millis};

pub(crate) struct Sender {
    pub db: Db,
    pub sealer: Sealer,
    pub smtp: SmtpConfig,
    pub from: Mailbox,
    pub policy: DeliveryPolicy,
    pub wake: Arc<Notify>,
}

/// One email due for delivery, as read before claiming it.
struct Due {
    id: String,
    notification_id: String,
    subject: String,
    body: String,
    /// Attempts made before this one.
    attempts: i64,
    next_attempt_at: i64,
    email_sealed: Option<String>,
    /// The notification's kind (for the metric's label).
    kind: String,
}

/// Why one attempt did not deliver.
#[derive(Debug)]
enum Failure {
    /// May pass: the server is down, slow or answered 4xx. Counts towards the breaker.
    Transient(String),
    /// Cannot pass for this email: retrying would give the same answer.
    Permanent(String),
}

impl Sender {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.smtp.host.as_str())
            .port(self.smtp.port)
            .timeout(Some(self.smtp.timeout))
            .build();
        let breaker = CircuitBreaker::new(
            "smtp",
            BreakerConfig {
                failure_threshold: self.policy.breaker_threshold,
                cool_down: self.policy.breaker_cool_down,
            },
        );
        info!(host = %self.smtp.host, port = self.smtp.port, "email sender started");
        loop {
            let woken = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(self.policy.poll_interval) => false,
            };
            let mut sent = self.pass(&transport, &breaker, &shutdown).await;
            if woken && sent == 0 && !shutdown.is_cancelled() {
                // The wake-up came from a transaction that may not have committed yet.
                tokio::time::sleep(Duration::from_millis(25)).await;
                sent = self.pass(&transport, &breaker, &shutdown).await;
            }
            debug!(sent, "email pass done");
        }
        info!("email sender stopped");
    }

    /// Sends every due email (while the breaker allows); returns how many were tried.
    async fn pass(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        breaker: &CircuitBreaker,
        shutdown: &CancellationToken,
    ) -> usize {
        let mut tried = 0;
        loop {
            // An open breaker claims nothing, so an outage does not burn the emails' attempts.
            if breaker.state() == CircuitState::Open {
                break;
            }
            let batch = match self.due().await {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "cannot read due emails; retrying at the next poll");
                    break;
                }
            };
            let full = batch.len() >= self.policy.batch;
            for due in batch {
                if shutdown.is_cancelled() || breaker.state() == CircuitState::Open {
                    self.update_backlog().await;
                    return tried;
                }
                match self.deliver(transport, breaker, due).await {
                    Ok(true) => tried += 1,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cannot record an email attempt; it is retried when its lease ends"),
                }
            }
            if !full {
                break;
            }
        }
        self.update_backlog().await;
        tried
    }

    async fn due(&self) -> weir_core::db::Result<Vec<Due>> {
        let rows = self
            .db
            .query(
                "SELECT e.id, e.notification_id, e.subject, e.body, e.attempts, e.next_attempt_at, c.email_sealed, n.kind
                 FROM emails e JOIN notifications n ON n.id = e.notification_id
                 LEFT JOIN contacts c ON c.user_id = e.user_id
                 WHERE e.status = 'pending' AND e.next_attempt_at <= $1
                 ORDER BY e.next_attempt_at, e.id LIMIT $2",
                &[now_millis().into(), (self.policy.batch as i64).into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Due {
                    id: r.text(0)?.to_owned(),
                    notification_id: r.text(1)?.to_owned(),
                    subject: r.text(2)?.to_owned(),
                    body: r.text(3)?.to_owned(),
                    attempts: r.i64(4)?,
                    next_attempt_at: r.i64(5)?,
                    email_sealed: r.opt_text(6)?.map(str::to_owned),
                    kind: r.text(7)?.to_owned(),
                })
            })
            .collect()
    }

    /// One attempt at one email: claim, send, mark. `Ok(false)` when someone else claimed it.
    async fn deliver(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        breaker: &CircuitBreaker,
        due: Due,
    ) -> weir_core::db::Result<bool> {
        if !self.claim(&due).await? {
            return Ok(false);
        }
        let attempt = due.attempts + 1;
        let result = match self.message(&due) {
            // Only failures that say the server is unwell count for the breaker; a refusal of
            // this one message proves it answers.
            Ok(message) => breaker
                .call_classified(|failure| matches!(failure, Failure::Transient(_)), async {
                    match tokio::time::timeout(self.smtp.timeout, transport.send(message)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(classify(&e)),
                        Err(_) => Err(Failure::Transient(format!("no answer within {:?}", self.smtp.timeout))),
                    }
                })
                .await
                .map_err(|e| match e {
                    BreakerError::Inner(failure) => Some(failure),
                    BreakerError::Open { .. } => None,
                }),
            Err(failure) => Err(Some(failure)),
        };
        let result = match result {
            Ok(()) => Ok(()),
            Err(Some(failure)) => Err(failure),
            Err(None) => {
                // The breaker opened between the check and the call: nothing was sent, so give
                // the attempt back.
                self.mark(
                    "UPDATE emails SET attempts = attempts - 1, next_attempt_at = $1 WHERE id = $2",
                    &[due.next_attempt_at.into(), due.id.as_str().into()],
                )
                .await?;
                return Ok(false);
            }
        };
        let now = now_millis();
        match result {
            Ok(()) => {
                self.mark(
                    "UPDATE emails SET status = 'sent', sent_at = $1, last_error = NULL WHERE id = $2",
                    &[now.into(), due.id.as_str().into()],
                )
                .await?;
                metrics::counter!("weir_notifications_total", "kind" => due.kind.clone(), "channel" => "email")
                    .increment(1);
                info!(notification_id = %due.notification_id, attempt, "email sent");
            }
            Err(Failure::Transient(reason)) if attempt < i64::from(self.policy.max_attempts) => {
                let delay = self.policy.backoff(attempt as u32);
                self.mark(
                    "UPDATE emails SET last_error = $1, next_attempt_at = $2 WHERE id = $3",
                    &[reason.as_str().into(), (now + delay.as_millis() as i64).into(), due.id.as_str().into()],
                )
                .await?;
                warn!(notification_id = %due.notification_id, attempt, error = %reason, ?delay, "email not sent; will retry");
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Transient(reason) => format!("gave up after {attempt} attempts: {reason}"),
                    Failure::Permanent(reason) => reason,
                };
                self.mark(
                    "UPDATE emails SET status = 'failed', last_error = $1 WHERE id = $2",
                    &[reason.as_str().into(), due.id.as_str().into()],
                )
                .await?;
                error!(notification_id = %due.notification_id, attempt, error = %reason, "email failed for good");
            }
        }
        Ok(true)
    }

    /// Takes the email for one attempt (see the module docs); false if another sender has it.
    async fn claim(&self, due: &Due) -> weir_core::db::Result<bool> {
        // Long enough for the send and its timeout; a crashed sender's claim ends with it.
        let lease = self.smtp.timeout.saturating_mul(2) + Duration::from_secs(30);
        let mut tx = self.db.begin().await?;
        let claimed = tx
            .execute(
                "UPDATE emails SET attempts = attempts + 1, next_attempt_at = $1
                 WHERE id = $2 AND status = 'pending' AND next_attempt_at = $3",
                &[(now_millis() + lease.as_millis() as i64).into(), due.id.as_str().into(), due.next_attempt_at.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(claimed == 1)
    }

    async fn mark(&self, sql: &str, params: &[Value]) -> weir_core::db::Result<()> {
        let mut tx = self.db.begin().await?;
        tx.execute(sql, params).await?;
        tx.commit().await
    }

    fn message(&self, due: &Due) -> Result<Message, Failure> {
        let sealed = due.email_sealed.as_deref().ok_or_else(|| Failure::Permanent("the user has no address".into()))?;
        let address = self.sealer.open(sealed).map_err(|e| Failure::Permanent(format!("the sealed address: {e}")))?;
        let to: Mailbox =
            address.parse().map_err(|_| Failure::Permanent("the user's address is not a valid mailbox".into()))?;
        Message::builder()
            .message_id(Some(format!("<{}@weir>", due.notification_id)))
            .from(self.from.clone())
            .to(to)
            .subject(due.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(due.body.clone())
            .map_err(|e| Failure::Permanent(format!("cannot build the message: {e}")))
    }

    async fn update_backlog(&self) {
        match self.db.query("SELECT COUNT(*) FROM emails WHERE status = 'pending'", &[]).await {
            Ok(rows) => {
                if let Some(Ok(n)) = rows.first().map(|r| r.i64(0)) {
                    metrics::gauge!("weir_notifications_email_backlog").set(n as f64);
                }
            }
            Err(e) => debug!(error = %e, "cannot count the email backlog"),
        }
    }
}

/// Sorts an SMTP error. The text never carries the server's reply, which may quote the address.
fn classify(e: &lettre::transport::smtp::Error) -> Failure {
    match e.status() {
        Some(code) if e.is_permanent() => Failure::Permanent(format!("the SMTP server refused the message ({code})")),
        Some(code) => Failure::Transient(format!("the SMTP server deferred the message ({code})")),
        None if e.is_timeout() => Failure::Transient("the SMTP server did not answer in time".into()),
        None => Failure::Transient(format!("cannot talk to the SMTP server: {}", root_cause(e))),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl DeliveryPolicy {
    /// The wait after failed attempt number `attempt` (1 = first): `base · 2ⁿ⁻¹` capped at
    /// `max_delay`, then drawn uniformly from its upper half, so replicas spread out but a
    /// retry never comes at once.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        let cap = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let policy = DeliveryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            ..DeliveryPolicy::default()
        };
        // (attempt, lowest, highest) in milliseconds.
        let cases = [(1, 50, 100), (2, 100, 200), (3, 200, 400), (5, 800, 1600), (6, 1000, 2000), (40, 1000, 2000)];
        for (attempt, low, high) in cases {
            for _ in 0..50 {
                let d = policy.backoff(attempt).as_millis() as u64;
                assert!((low..=high).contains(&d), "attempt {attempt}: {d} ms not in {low}..={high}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(5)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
