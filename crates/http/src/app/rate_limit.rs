//! Per-caller rate limiting: a keyed token bucket.
//!
//! The key is the verified bearer token's user id when the request carries a valid token, else
//! the client's IP address (an IPv6 client is keyed by its /64, which one host usually owns
//! whole). A request over the limit is answered with 429 and `Retry-After`.
//!
//! The key map is bounded: when a shard is full, buckets that have refilled completely are
//! dropped first (forgetting them changes nothing), then the longest-idle one. Under a flood of
//! distinct keys an evicted caller may get a fresh bucket early; it can never grow memory.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{Problem, Tokens};

use super::RateLimit;

/// How many callers the limiter remembers at most, over all shards.
const MAX_KEYS: usize = 65_536;
/// Shards keep one lock from serialising every request.
const SHARDS: usize = 16;

/// Who a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    User(Uuid),
    Ip(IpAddr),
    /// Neither a valid token nor a peer address (the app was served without connect info).
    Unknown,
}

impl Key {
    /// The key of an anonymous caller at `ip`.
    pub(crate) fn for_ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => Key::Ip(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))),
        }
    }
}

/// The refill rate and capacity of every bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    per_second: f64,
    burst: f64,
}

impl Quota {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self { per_second: f64::from(limit.per_second.max(1)), burst: f64::from(limit.burst.max(1)) }
    }
}

/// One caller's bucket: `tokens` as of `updated`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub(crate) fn full(quota: Quota, now: Instant) -> Self {
        Self { tokens: quota.burst, updated: now }
    }

    fn refill(&mut self, quota: Quota, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * quota.per_second).min(quota.burst);
        self.updated = now.max(self.updated);
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self, quota: Quota, now: Instant) -> Result<(), Duration> {
        self.refill(quota, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / quota.per_second))
        }
    }

    /// Whether the bucket would be full at `now`: then it is indistinguishable from a new one.
    fn is_full_at(&self, quota: Quota, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * quota.per_second >= quota.burst
    }
}

/// A keyed token bucket with a bounded number of keys. Thread-safe; share it in an `Arc`.
pub(crate) struct Limiter {
    quota: Quota,
    shards: Box<[Mutex<HashMap<Key, Bucket>>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl Limiter {
    pub(crate) fn new(quota: Quota) -> Self {
        Self::with_capacity(quota, MAX_KEYS)
    }

    pub(crate) fn with_capacity(quota: Quota, max_keys: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { quota, shards, hasher: RandomState::new(), per_shard: max_keys.div_ceil(SHARDS).max(1) }
    }

    /// Counts one request of `key` at `now`; `Err` holds how long the caller should wait.
    pub(crate) fn check(&self, key: Key, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        // A poisoned shard only means another request panicked mid-update; its buckets are
        // still plain numbers, so keep limiting with them.
        let mut buckets = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.per_shard {
            self.evict(&mut buckets, now);
        }
        buckets.entry(key).or_insert_with(|| Bucket::full(self.quota, now)).take(self.quota, now)
    }

    fn evict(&self, buckets: &mut HashMap<Key, Bucket>, now: Instant) {
        buckets.retain(|_, bucket| !bucket.is_full_at(self.quota, now));
        if buckets.len() >= self.per_shard
            && let Some(oldest) = buckets.iter().min_by_key(|(_, bucket)| bucket.updated).map(|(key, _)| *key)
        {
            buckets.remove(&oldest);
        }
    }

    /// How many callers are remembered (tests check the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// What the middleware needs: the limiter and the keys to verify tokens with.
#[derive(Clone)]
pub(crate) struct RateLimitState {
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) tokens: Tokens,
    pub(crate) limit: RateLimit,
}

/// The middleware: 429 problem with `Retry-After` once the caller's bucket is empty.
pub(crate) async fn limit(State(state): State<RateLimitState>, request: Request, next: Next) -> Response {
    let key = key_of(&request, &state.tokens);
    match state.limiter.check(key, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            tracing::debug!(retry_after = seconds, "rate limited");
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "too many requests from this caller: at most {} per second with bursts of {}; retry after {seconds} s",
                    state.limit.per_second, state.limit.burst
                ),
            )
            .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

fn key_of(request: &Request, tokens: &Tokens) -> Key {
    let user = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .and_then(|token| tokens.verify(token.trim()).ok());
    if let Some(claims) = user {
        return Key::User(claims.sub);
    }
    // A caller with an invalid token counts against its address, so garbage tokens buy nothing.
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => Key::for_ip(peer.ip()),
        None => Key::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::new(RateLimit { per_second, burst })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let q = quota(2, 3);
        let t0 = Instant::now();
        let mut bucket = Bucket::full(q, t0);
        let outcomes: Vec<_> = (0..4).map(|_| bucket.take(q, t0)).collect();
        assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(outcomes[3], Err(Duration::from_millis(500)));
    }

    #[test]
    fn a_bucket_refills_at_its_rate_and_never_above_its_burst() {
        let q = quota(10, 5);
        let t0 = Instant::now();
        let mut bucket = Bucket::full(q, t0);
        for _ in 0..5 {
            bucket.take(q, t0).unwrap();
        }
        // (elapsed, takes that succeed then)
        let cases = [(Duration::from_millis(100), 1), (Duration::from_millis(350), 3), (Duration::from_secs(60), 5)];
        let mut now = t0;
        for (elapsed, allowed) in cases {
            now += elapsed;
            let granted = (0..10).take_while(|_| bucket.take(q, now).is_ok()).count();
            assert_eq!(granted, allowed, "after {elapsed:?}");
        }
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing_extra() {
        let q = quota(1, 1);
        let t0 = Instant::now();
        let mut bucket = Bucket::full(q, t0 + Duration::from_secs(10));
        bucket.take(q, t0 + Duration::from_secs(10)).unwrap();
        assert!(bucket.take(q, t0).is_err());
    }

    #[test]
    fn keys_have_separate_buckets() {
        let limiter = Limiter::new(quota(1, 2));
        let now = Instant::now();
        let (alice, bob) = (Key::User(Uuid::now_v7()), Key::User(Uuid::now_v7()));
        assert!(limiter.check(alice, now).is_ok());
        assert!(limiter.check(alice, now).is_ok());
        assert!(limiter.check(alice, now).is_err());
        assert!(limiter.check(bob, now).is_ok());
        assert!(limiter.check(Key::for_ip("10.0.0.1".parse().unwrap()), now).is_ok());
    }

    #[test]
    fn ipv6_callers_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("::ffff:10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
        ];
        for (a, b, same) in cases {
            assert_eq!(Key::for_ip(ip(a)) == Key::for_ip(ip(b)), same, "{a} vs {b}");
        }
    }

    #[test]
    fn the_key_map_stays_bounded_under_a_flood_of_callers() {
        let limiter = Limiter::with_capacity(quota(1, 1), SHARDS * 4);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let _ = limiter.check(Key::Ip(IpAddr::from(i.to_be_bytes())), now);
            assert!(limiter.len() <= SHARDS * 4, "grew to {}", limiter.len());
        }
    }

    #[test]
    fn a_full_shard_forgets_a_refilled_bucket_else_the_longest_idle_one() {
        let q = quota(1, 1);
        let t0 = Instant::now();
        // With one slot per shard, a second key of the same shard forces an eviction.
        let limiter = Limiter::with_capacity(q, 1);
        let shard_mate = |key: Key| {
            let target = limiter.hasher.hash_one(key) as usize % SHARDS;
            (0u32..)
                .map(|i| Key::Ip(IpAddr::from(i.to_be_bytes())))
                .find(|k| *k != key && limiter.hasher.hash_one(*k) as usize % SHARDS == target)
                .unwrap()
        };
        let first = Key::User(Uuid::now_v7());
        let second = shard_mate(first);
        let third = shard_mate(second);
        // `first` has refilled after 2 s: dropping it loses nothing.
        limiter.check(first, t0).unwrap();
        assert!(limiter.check(second, t0 + Duration::from_secs(2)).is_ok());
        assert!(limiter.check(second, t0 + Duration::from_secs(2)).is_err());
        // `second` is still empty 10 ms later, yet it is the longest idle: it goes.
        assert!(limiter.check(third, t0 + Duration::from_millis(2010)).is_ok());
        assert_eq!(limiter.len(), 1);
        // `second` comes back with a fresh bucket (the price of the bound).
        assert!(limiter.check(second, t0 + Duration::from_millis(2020)).is_ok());
    }
}
