//! Resilience for synchronous calls to other systems (a payment gateway, SMTP, gRPC): a
//! [`CircuitBreaker`], full-jitter retries ([`retry_with_jitter`]) and a timeout wrapper
//! ([`with_timeout`]).
//!
//! They compose from the inside out: a timeout bounds one try, the retry repeats transient
//! failures a few times, and the breaker wraps the whole retried call so that a dependency that
//! is down costs one fast refusal instead of a pile of waiting requests:
//!
//! ```text
//! breaker.call(retry_with_jitter(3, base, max, || with_timeout(limit, on_elapsed, try_once())))
//! ```
//!
//! **What counts as a failure is decided by the `Result` shape.** Only `Err` is a failure (or,
//! with [`CircuitBreaker::call_classified`], only the errors a predicate picks). An answer that
//! proves the remote side is healthy — a declined payment, a rejected address — belongs in the
//! `Ok` side (`Result<Result<Charge, Declined>, Unavailable>`) or is classified as no failure;
//! it then counts as a success and is never retried.
//!
//! These are not the router's retries: the router retries *messages* through the transport;
//! these retry one *call* in process, within a single try of a handler.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rand::Rng;
use tokio::time::Instant;
use tracing::{info, warn};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (≥ 1).
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, cool_down: Duration::from_secs(10) }
    }
}

/// The state a breaker reports, and the value of its `weir_circuit_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// The cool-down is over: one probe call may go through; its outcome decides.
    HalfOpen,
    /// Calls are refused without being made.
    Open,
}

impl CircuitState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half-open",
            CircuitState::Open => "open",
        }
    }
}

/// Why [`CircuitBreaker::call`] returned an error.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open (or half-open with its probe already out): the call was not made.
    #[error("circuit `{name}` is open: the call was not made")]
    Open { name: String },
    /// The call was made and failed with this error.
    #[error("{0}")]
    Inner(E),
}

impl<E> BreakerError<E> {
    pub fn is_open(&self) -> bool {
        matches!(self, BreakerError::Open { .. })
    }

    /// The call's own error, if the call was made.
    pub fn into_inner(self) -> Option<E> {
        match self {
            BreakerError::Open { .. } => None,
            BreakerError::Inner(e) => Some(e),
        }
    }
}

/// A circuit breaker: closed → open after [`BreakerConfig::failure_threshold`] consecutive
/// failures; open for [`BreakerConfig::cool_down`]; then half-open, where exactly one probe call
/// goes through: its success closes the breaker, its failure opens it for another cool-down.
///
/// Cheap to clone: clones share one state. Thread-safe; no lock is held across an `.await`.
/// Every transition is logged and sets the gauge `weir_circuit_state{name}` (0 closed,
/// 1 half-open, 2 open); refused calls count in `weir_circuit_rejected_total{name}`.
///
/// Outcomes of calls that started before a transition are ignored (a slow failure from before the
/// breaker opened must not extend the cool-down). A call whose future is dropped (cancelled)
/// counts as nothing, and a cancelled probe frees the probe slot for the next caller.
/// The open → half-open transition happens lazily, at the first call or [`state`](Self::state)
/// after the cool-down.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: BreakerConfig,
    machine: Mutex<Machine>,
}

struct Machine {
    phase: Phase,
    /// Bumped on every transition; a call records its outcome only if it is unchanged.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Phase {
    fn state(self) -> CircuitState {
        match self {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker").field("name", &self.inner.name).field("state", &self.state()).finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the gauge's label: e.g. `payment-gateway`).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let name = name.into();
        metrics::gauge!("weir_circuit_state", "name" => name.clone()).set(CircuitState::Closed.gauge_value());
        Self {
            inner: Arc::new(Inner {
                name,
                config,
                machine: Mutex::new(Machine { phase: Phase::Closed { failures: 0 }, generation: 0 }),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state (an open breaker whose cool-down is over reports — and becomes —
    /// half-open).
    pub fn state(&self) -> CircuitState {
        let mut machine = self.inner.lock();
        self.inner.refresh(&mut machine, Instant::now());
        machine.phase.state()
    }

    /// Runs `f` unless the breaker is open; every `Err` counts as a failure, every `Ok` as a
    /// success. Put answers that are not failures (a decline) inside `Ok`.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_classified(|_| true, f).await
    }

    /// Like [`call`](Self::call), but an `Err` counts as a failure only if `is_failure` says so;
    /// other errors prove the remote side answered and count as a success.
    pub async fn call_classified<T, E, F>(
        &self,
        is_failure: impl FnOnce(&E) -> bool,
        f: F,
    ) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let Some(mut permit) = self.admit() else {
            metrics::counter!("weir_circuit_rejected_total", "name" => self.inner.name.clone()).increment(1);
            return Err(BreakerError::Open { name: self.inner.name.clone() });
        };
        let result = f.await;
        let failed = match &result {
            Ok(_) => false,
            Err(e) => is_failure(e),
        };
        permit.settle(failed);
        result.map_err(BreakerError::Inner)
    }

    /// Lets a call through, or `None` if the breaker refuses it.
    fn admit(&self) -> Option<Permit<'_>> {
        let mut machine = self.inner.lock();
        self.inner.refresh(&mut machine, Instant::now());
        let probe = match &mut machine.phase {
            Phase::Closed { .. } => false,
            Phase::Open { .. } | Phase::HalfOpen { probing: true } => return None,
            Phase::HalfOpen { probing } => {
                *probing = true;
                true
            }
        };
        Some(Permit { inner: &self.inner, generation: machine.generation, probe, settled: false })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // The state is a few plain values, valid at every step: a panic elsewhere cannot corrupt it.
        self.machine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Open with its cool-down over → half-open.
    fn refresh(&self, machine: &mut Machine, now: Instant) {
        if let Phase::Open { until } = machine.phase
            && now >= until
        {
            self.transition(machine, Phase::HalfOpen { probing: false });
        }
    }

    fn transition(&self, machine: &mut Machine, to: Phase) {
        let from = machine.phase.state();
        machine.phase = to;
        machine.generation += 1;
        let state = to.state();
        metrics::gauge!("weir_circuit_state", "name" => self.name.clone()).set(state.gauge_value());
        match state {
            CircuitState::Open => warn!(
                circuit = %self.name, from = from.as_str(), cool_down = ?self.config.cool_down,
                "circuit opened: calls are refused until the cool-down ends"
            ),
            CircuitState::HalfOpen => info!(circuit = %self.name, "circuit half-open: letting one probe through"),
            CircuitState::Closed => info!(circuit = %self.name, from = from.as_str(), "circuit closed"),
        }
    }

    fn record(&self, generation: u64, failed: bool) {
        let mut machine = self.lock();
        if machine.generation != generation {
            return; // The breaker moved on since this call started; its outcome is stale.
        }
        let now = Instant::now();
        match (machine.phase, failed) {
            (Phase::Closed { .. }, false) => machine.phase = Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, true) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failure_threshold.max(1) {
                    self.transition(&mut machine, Phase::Open { until: now + self.config.cool_down });
                } else {
                    machine.phase = Phase::Closed { failures };
                }
            }
            (Phase::HalfOpen { .. }, false) => self.transition(&mut machine, Phase::Closed { failures: 0 }),
            (Phase::HalfOpen { .. }, true) => {
                self.transition(&mut machine, Phase::Open { until: now + self.config.cool_down })
            }
            // Only calls admitted in the current generation get here, and none is admitted
            // while open.
            (Phase::Open { .. }, _) => {}
        }
    }

    /// A probe ended without an outcome (its future was dropped): free the slot.
    fn release_probe(&self, generation: u64) {
        let mut machine = self.lock();
        if machine.generation == generation
            && let Phase::HalfOpen { probing } = &mut machine.phase
        {
            *probing = false;
        }
    }
}

/// One admitted call; records its outcome once, or frees the probe slot if dropped unsettled.
struct Permit<'a> {
    inner: &'a Inner,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    fn settle(&mut self, failed: bool) {
        self.settled = true;
        self.inner.record(self.generation, failed);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.inner.release_probe(self.generation);
        }
    }
}

/// The wait before retry number `retry` (1 = the first retry): uniform in
/// `0 ..= min(max, base · 2^(retry-1))` ("full jitter", so that many clients that failed together
/// do not retry together).
pub fn full_jitter(base: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
    let cap = base.saturating_mul(factor).min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// Runs `op` up to `attempts` times (at least once) while it fails, sleeping [`full_jitter`]
/// between tries; returns the first success or the last error. Every `Err` is retried: keep
/// answers that must not be retried (a decline) in `Ok`, or use [`retry_with_jitter_if`].
///
/// Retrying is only safe for idempotent operations: send an idempotency key.
pub async fn retry_with_jitter<T, E, F, Fut>(attempts: u32, base: Duration, max: Duration, op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_with_jitter_if(attempts, base, max, |_| true, op).await
}

/// Like [`retry_with_jitter`], but only errors for which `retryable` holds are retried; any
/// other error is returned at once.
pub async fn retry_with_jitter_if<T, E, F, Fut>(
    attempts: u32,
    base: Duration,
    max: Duration,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = attempts.max(1);
    let mut tried = 0;
    loop {
        tried += 1;
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if tried >= attempts || !retryable(&e) => return Err(e),
            Err(_) => tokio::time::sleep(full_jitter(base, max, tried)).await,
        }
    }
}

/// Bounds `f` by `limit`; when the time is up, `f` is dropped and `on_elapsed()` is the error.
pub async fn with_timeout<T, E, F>(limit: Duration, on_elapsed: impl FnOnce() -> E, f: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result,
        Err(_) => Err(on_elapsed()),
    }
}

// These tests run on real time: paused time (`start_paused`) needs tokio's `test-util` feature,
// which this crate does not enable. They stay deterministic by using long cool-downs where a
// breaker must stay open and waiting past a short cool-down where it must move on (a tokio sleep
// never ends before its deadline).
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_millis(30);

    fn breaker(threshold: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker::new("test", BreakerConfig { failure_threshold: threshold, cool_down })
    }

    async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Err::<(), _>("down") }).await
    }

    async fn succeed(b: &CircuitBreaker) -> Result<u32, BreakerError<&'static str>> {
        b.call(async { Ok::<_, &'static str>(7) }).await
    }

    /// Opens `b` with `threshold` failures.
    async fn open(b: &CircuitBreaker, threshold: u32) {
        for _ in 0..threshold {
            assert!(matches!(fail(b).await, Err(BreakerError::Inner("down"))));
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    async fn past_cool_down() {
        tokio::time::sleep(SHORT + Duration::from_millis(5)).await;
    }

    #[tokio::test]
    async fn closed_counts_consecutive_failures_and_opens_at_the_threshold() {
        // (failures before the success, failures after it, expected state)
        let cases = [
            (0, 2, CircuitState::Closed),
            (2, 2, CircuitState::Closed), // a success in between resets the count
            (0, 3, CircuitState::Open),
            (2, 3, CircuitState::Open),
        ];
        for (before, after, expected) in cases {
            let b = breaker(3, LONG);
            for _ in 0..before {
                fail(&b).await.unwrap_err();
            }
            assert_eq!(succeed(&b).await.unwrap(), 7);
            for _ in 0..after {
                fail(&b).await.unwrap_err();
            }
            assert_eq!(b.state(), expected, "case {before} then {after}");
        }
    }

    #[tokio::test]
    async fn open_refuses_without_calling() {
        let b = breaker(2, LONG);
        open(&b, 2).await;
        let calls = AtomicU32::new(0);
        let result = b
            .call(async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, &str>(())
            })
            .await;
        assert!(matches!(&result, Err(BreakerError::Open { name }) if name == "test"));
        assert!(result.unwrap_err().is_open());
        assert_eq!(calls.load(Ordering::SeqCst), 0, "an open breaker must not call");
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn cool_down_leads_to_half_open_and_a_successful_probe_closes() {
        let b = breaker(1, SHORT);
        open(&b, 1).await;
        past_cool_down().await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(succeed(&b).await.unwrap(), 7);
        assert_eq!(b.state(), CircuitState::Closed);
        // Closed again means the count starts from zero.
        let b3 = breaker(2, SHORT);
        open(&b3, 2).await;
        past_cool_down().await;
        succeed(&b3).await.unwrap();
        fail(&b3).await.unwrap_err();
        assert_eq!(b3.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_for_a_new_cool_down() {
        let b = breaker(1, SHORT);
        open(&b, 1).await;
        past_cool_down().await;
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner("down"))), "the probe is made");
        assert_eq!(b.state(), CircuitState::Open);
        assert!(succeed(&b).await.unwrap_err().is_open(), "refused during the new cool-down");
        past_cool_down().await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[tokio::test]
    async fn half_open_lets_exactly_one_probe_through() {
        let b = breaker(1, SHORT);
        open(&b, 1).await;
        past_cool_down().await;
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let probe = {
            let b = b.clone();
            tokio::spawn(async move {
                b.call(async {
                    wait.await.ok();
                    Ok::<_, &str>("probed")
                })
                .await
            })
        };
        // Wait (with a deadline) until the probe holds the slot.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if matches!(b.inner.lock().phase, Phase::HalfOpen { probing: true }) {
                break;
            }
            assert!(Instant::now() < deadline, "the probe never started");
            tokio::task::yield_now().await;
        }
        assert!(succeed(&b).await.unwrap_err().is_open(), "a second caller is refused while probing");
        release.send(()).unwrap();
        assert_eq!(probe.await.unwrap().unwrap(), "probed");
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(succeed(&b).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_cancelled_probe_frees_the_slot() {
        let b = breaker(1, SHORT);
        open(&b, 1).await;
        past_cool_down().await;
        let never = b.call(std::future::pending::<Result<(), &str>>());
        assert!(tokio::time::timeout(Duration::from_millis(5), never).await.is_err());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(succeed(&b).await.unwrap(), 7, "the next caller may probe");
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn errors_classified_as_no_failure_count_as_success() {
        #[derive(Debug, PartialEq)]
        enum E {
            Declined,
            Down,
        }
        let b = breaker(2, LONG);
        let call = |e: E| b.call_classified(|e: &E| *e == E::Down, async move { Err::<(), _>(e) });
        assert!(matches!(call(E::Down).await, Err(BreakerError::Inner(E::Down))));
        assert!(matches!(call(E::Declined).await, Err(BreakerError::Inner(E::Declined))));
        assert!(matches!(call(E::Down).await, Err(BreakerError::Inner(E::Down))));
        assert_eq!(b.state(), CircuitState::Closed, "the decline reset the count");
        for _ in 0..5 {
            call(E::Declined).await.unwrap_err();
        }
        assert_eq!(b.state(), CircuitState::Closed, "declines never open the breaker");
        // The Result-shape way: a decline inside Ok.
        let nested: Result<Result<(), &str>, BreakerError<&str>> = b.call(async { Ok(Err("declined")) }).await;
        assert_eq!(nested.unwrap(), Err("declined"));
    }

    #[tokio::test]
    async fn outcomes_from_before_a_transition_are_ignored() {
        let b = breaker(1, LONG);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let b = b.clone();
            tokio::spawn(async move {
                b.call(async {
                    wait.await.ok();
                    Ok::<_, &str>(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        open(&b, 1).await;
        release.send(()).unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(b.state(), CircuitState::Open, "a stale success must not close an open breaker");
    }

    #[tokio::test]
    async fn retry_stops_at_the_first_success() {
        let tries = AtomicU32::new(0);
        let result = retry_with_jitter(5, Duration::from_millis(1), Duration::from_millis(4), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("transient"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result, Ok(2));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retry_gives_up_after_the_attempts_and_returns_the_last_error() {
        for (attempts, expected_tries) in [(0, 1), (1, 1), (3, 3)] {
            let tries = AtomicU32::new(0);
            let result: Result<(), u32> =
                retry_with_jitter(attempts, Duration::from_millis(1), Duration::from_millis(2), || async {
                    Err(tries.fetch_add(1, Ordering::SeqCst))
                })
                .await;
            assert_eq!(tries.load(Ordering::SeqCst), expected_tries, "attempts {attempts}");
            assert_eq!(result, Err(expected_tries - 1));
        }
    }

    #[tokio::test]
    async fn retry_if_returns_a_permanent_error_at_once() {
        let tries = AtomicU32::new(0);
        let result: Result<(), &str> = retry_with_jitter_if(
            5,
            Duration::from_millis(1),
            Duration::from_millis(2),
            |e| *e == "transient",
            || {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err("declined") }
            },
        )
        .await;
        assert_eq!(result, Err("declined"));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn full_jitter_stays_under_its_cap_and_spreads() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(100));
        for retry in 0..40u32 {
            let cap = Duration::from_millis(10u64.saturating_mul(1 << retry.saturating_sub(1).min(20))).min(max);
            for _ in 0..50 {
                assert!(full_jitter(base, max, retry) <= cap, "retry {retry}");
            }
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| full_jitter(base, max, 4)).collect();
        assert!(samples.len() > 10, "full jitter must spread the waits");
    }

    #[tokio::test]
    async fn with_timeout_maps_elapsed_to_the_given_error() {
        let slow = with_timeout(Duration::from_millis(5), || "timed out", std::future::pending::<Result<(), _>>());
        assert_eq!(slow.await, Err("timed out"));
        let fast = with_timeout(LONG, || "timed out", async { Ok::<_, &str>(1) });
        assert_eq!(fast.await, Ok(1));
    }

    #[tokio::test]
    async fn a_timeout_inside_the_breaker_counts_as_a_failure() {
        let b = breaker(1, LONG);
        let result =
            b.call(with_timeout(Duration::from_millis(5), || "timed out", std::future::pending::<Result<(), _>>()));
        assert!(matches!(result.await, Err(BreakerError::Inner("timed out"))));
        assert_eq!(b.state(), CircuitState::Open);
    }
}
