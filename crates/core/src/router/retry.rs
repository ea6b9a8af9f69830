//! Retry policy: a few quick attempts in process, then exponential backoff with full jitter
//! through the transport's delayed redelivery (so a waiting retry holds no worker), then the
//! dead-letter queue.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts made inside one delivery before handing it back (≥ 1).
    pub immediate_attempts: u32,
    /// Pause between immediate attempts.
    pub immediate_delay: Duration,
    /// Base of the redelivery backoff: attempt `n` waits a uniform random time in
    /// `0 ..= min(max_delay, base · 2ⁿ⁻¹)` ("full jitter").
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Deliveries after which a still-failing message goes to the dead-letter queue.
    pub max_deliveries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            immediate_attempts: 3,
            immediate_delay: Duration::from_millis(10),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            max_deliveries: 5,
        }
    }
}

impl RetryPolicy {
    /// The redelivery delay after delivery number `attempt` failed.
    pub fn redelivery_delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_delay);
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// Whether delivery number `attempt` is the last one allowed.
    pub fn is_last_delivery(&self, attempt: u32) -> bool {
        attempt >= self.max_deliveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100 * 2u64.saturating_pow(attempt - 1)).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.redelivery_delay(attempt) <= cap, "attempt {attempt}");
            }
        }
        // Full jitter actually spreads: many samples are not all equal.
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.redelivery_delay(5)).collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn last_delivery() {
        let p = RetryPolicy { max_deliveries: 3, ..Default::default() };
        assert!(!p.is_last_delivery(2));
        assert!(p.is_last_delivery(3));
        assert!(p.is_last_delivery(9));
    }
}
