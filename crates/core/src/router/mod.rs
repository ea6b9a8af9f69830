//! The router: runs handlers for the messages of (topic, consumer group) pairs, behind a fixed
//! middleware stack.
//!
//! # The stack, outermost first
//!
//! The order is part of the contract and does not change with configuration:
//!
//! 1. **Bulkhead** — at most [`RouterOptions::concurrency`] messages are handled at once per
//!    router, so a flood on one topic cannot take every worker. A message waits for a permit
//!    *before* anything else happens, so waiting costs nothing but memory.
//! 2. **Decode and verify** — the message must be a CloudEvent with a valid signature. If not,
//!    it goes straight to the dead-letter queue: retrying cannot fix bytes, and a forged event
//!    must never reach a handler.
//! 3. **Tracing span** — one span per delivery, carrying the W3C trace id read from the headers,
//!    so every log line of a business transaction shares one `trace_id`.
//! 4. **Metrics** — outcome counter and latency histogram per topic and group, measured here so
//!    that they include retries and the commit.
//! 5. **Immediate retries** — up to [`RetryPolicy::immediate_attempts`] tries in process for
//!    transient errors.
//! 6. **Timeout** — each try is bounded by [`RouterOptions::attempt_timeout`], commit included.
//! 7. **Panic guard** — a panicking handler is a transient failure of that try, never a dead
//!    consumer.
//! 8. **Prepare** — the handler's [`Handler::prepare`] step, outside any transaction: calls to
//!    other systems (a payment provider, SMTP) happen here so they never hold a database lock.
//!    It runs again on every try, so it must be idempotent (an idempotency key from the event).
//! 9. **Transaction** — begin; **inbox** dedup (a duplicate commits nothing and is acked);
//!    the handler; its output events into the **outbox**; commit. State change, inbox record and
//!    outputs commit together or not at all.
//!
//! After the stack: success → ack. Transient failure → nack with exponential backoff and full
//! jitter (the transport redelivers; no worker waits), or the dead-letter queue after
//! [`RetryPolicy::max_deliveries`]. Permanent failure → dead-letter queue at once.
//!
//! Order per key comes from the transport: it hands out a key's next message only after the
//! previous one is settled, so the router handles different keys concurrently and one key in
//! order, and a nack holds back only its own key.
//!
//! # Shutdown
//!
//! When the shutdown token fires, the router stops taking deliveries, lets in-flight messages
//! finish for up to [`RouterOptions::drain_timeout`], then returns. Anything unsettled is
//! redelivered later (and deduplicated by the inbox).

pub mod dead_letter;
pub mod retry;

use std::{any::Any, fmt, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::FutureExt;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

pub use self::{dead_letter::Reason, retry::RetryPolicy};
use crate::{
    bus::{self, Delivery, Publisher, Subscriber},
    db::{Db, Dialect, Transaction},
    event::Event,
    signing::Keyring,
    store::{
        self, inbox,
        outbox::{Outbox, group_by_topic},
    },
};

/// An event a handler emits, and the topic it goes to.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub event: Event,
}

impl Outgoing {
    pub fn new(topic: impl Into<String>, event: Event) -> Self {
        Self { topic: topic.into(), event }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a handler failed.
#[derive(Debug)]
pub enum HandlerError {
    /// May succeed later (a dependency is down, a conflict): retried, then dead-lettered.
    Transient(BoxError),
    /// Can never succeed (invalid data for this handler): dead-lettered at once.
    Permanent(String),
}

impl HandlerError {
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Transient(e) => write!(f, "{e}"),
            HandlerError::Permanent(e) => write!(f, "{e}"),
        }
    }
}

/// Store errors are transient by default: a conflict or an outage may pass.
impl From<store::Error> for HandlerError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Decode(d) => HandlerError::Permanent(d.to_string()),
            other => HandlerError::Transient(Box::new(other)),
        }
    }
}

impl From<crate::db::Error> for HandlerError {
    fn from(e: crate::db::Error) -> Self {
        HandlerError::Transient(Box::new(e))
    }
}

impl From<crate::event::DecodeError> for HandlerError {
    fn from(e: crate::event::DecodeError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// What [`Handler::prepare`] hands to [`Handler::handle`].
pub type Prepared = Box<dyn Any + Send + Sync>;

/// What a handler sees besides the event: the open transaction and where the event came from.
pub struct Context<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    /// The delivery number (1 = first).
    pub attempt: u32,
    pub dialect: Dialect,
    tx: &'a mut dyn Transaction,
    prepared: Option<Prepared>,
}

impl Context<'_> {
    /// The transaction the handler's state change must use: it commits with the inbox record
    /// and the outputs.
    pub fn tx(&mut self) -> &mut dyn Transaction {
        self.tx
    }

    /// Takes what [`Handler::prepare`] returned for this try, if it was a `T`.
    pub fn take_prepared<T: Any>(&mut self) -> Option<T> {
        let prepared = self.prepared.take()?;
        match prepared.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                self.prepared = Some(other);
                None
            }
        }
    }
}

/// Handles one event. Must be idempotent only through its transaction: the router's inbox
/// ensures one committed effect per event id per group.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Work done before the transaction opens and outside it: calls to other systems, which
    /// must not hold a database lock while they wait. It runs on every try, including after a
    /// crash between it and the commit, so it must be idempotent: send an idempotency key
    /// derived from the event, and read your own state first to skip work already recorded.
    /// What it returns reaches [`handle`](Self::handle) through [`Context::take_prepared`].
    async fn prepare(&self, _event: &Event) -> Result<Option<Prepared>, HandlerError> {
        Ok(None)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError>;
}

/// What a service's code needs from the platform: its database, its outbox, the bus.
#[derive(Clone)]
pub struct Kernel {
    pub db: Db,
    pub outbox: Outbox,
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
}

impl Kernel {
    pub fn keyring(&self) -> &Keyring {
        self.outbox.keyring()
    }

    /// Runs `router` and this kernel's outbox relay until `shutdown` fires. The relay stops only
    /// after the router has drained, so the outputs of the last handled messages still leave.
    pub async fn run(&self, router: Router, shutdown: CancellationToken) -> bus::Result<()> {
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.outbox.relay(self.db.clone(), self.publisher.clone()).run(relay_stop.clone()));
        let routed = router.run(shutdown).await;
        relay_stop.cancel();
        if let Err(e) = relay.await {
            error!(error = %e, "the outbox relay task failed");
        }
        routed
    }
}

#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Messages handled at once (the bulkhead).
    pub concurrency: usize,
    /// Bound on one try: handler plus commit.
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight messages.
    pub drain_timeout: Duration,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            attempt_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

struct Route {
    topic: String,
    group: String,
    handler: Arc<dyn Handler>,
}

/// Routes messages to handlers; build with [`route`](Self::route), then [`run`](Self::run).
pub struct Router {
    kernel: Kernel,
    options: RouterOptions,
    routes: Vec<Route>,
}

/// The outcome of one delivery after the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    Duplicate,
    Retry,
    DeadLettered,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Retry => "retry",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

impl Router {
    pub fn new(kernel: Kernel, options: RouterOptions) -> Self {
        Self { kernel, options, routes: Vec::new() }
    }

    /// Handles `topic`'s messages as consumer group `group` (also the inbox's consumer name).
    pub fn route(mut self, topic: impl Into<String>, group: impl Into<String>, handler: impl Handler) -> Self {
        self.routes.push(Route { topic: topic.into(), group: group.into(), handler: Arc::new(handler) });
        self
    }

    /// Subscribes every route and handles messages until `shutdown` fires; then drains.
    pub async fn run(self, shutdown: CancellationToken) -> bus::Result<()> {
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let shared = Arc::new(Shared { kernel: self.kernel, options: self.options });
        let mut subscriptions = Vec::new();
        for route in self.routes {
            let subscription = shared.kernel.subscriber.subscribe(&route.topic, &route.group).await?;
            subscriptions.push((route, subscription));
        }
        if subscriptions.is_empty() {
            // Nothing to consume, but the caller runs its relay until shutdown beside us.
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut loops = JoinSet::new();
        for (route, mut subscription) in subscriptions {
            let (shared, permits, shutdown) = (shared.clone(), permits.clone(), shutdown.clone());
            let route = Arc::new(route);
            loops.spawn(async move {
                let mut in_flight = JoinSet::new();
                loop {
                    // 1. Bulkhead: take a permit before taking a message.
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        _ = shutdown.cancelled() => break,
                    };
                    let delivery = tokio::select! {
                        d = subscription.next() => d,
                        _ = shutdown.cancelled() => break,
                    };
                    let Some(delivery) = delivery else { break };
                    let (shared, route) = (shared.clone(), route.clone());
                    in_flight.spawn(async move {
                        shared.process(&route, delivery).await;
                        drop(permit);
                    });
                    // Reap finished tasks so the set does not grow without bound.
                    while in_flight.try_join_next().is_some() {}
                }
                let drained =
                    tokio::time::timeout(shared.options.drain_timeout, async { while in_flight.join_next().await.is_some() {} })
                        .await;
                if drained.is_err() {
                    warn!(topic = %route.topic, group = %route.group, "drain deadline passed; unsettled messages will be redelivered");
                }
            });
        }
        while loops.join_next().await.is_some() {}
        Ok(())
    }
}

struct Shared {
    kernel: Kernel,
    options: RouterOptions,
}

impl Shared {
    async fn process(&self, route: &Route, delivery: Delivery) {
        // 2. Decode and verify.
        let event = match Event::from_message(&delivery.message) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(route, delivery, Reason::Undecodable(e.to_string())).await;
                return;
            }
        };
        if let Err(e) = self.kernel.keyring().verify(&event) {
            self.dead_letter(route, delivery, Reason::BadSignature(e.to_string())).await;
            return;
        }
        // 3. Tracing span.
        let trace_id = event.traceparent.as_deref().and_then(|t| t.split('-').nth(1)).unwrap_or("").to_owned();
        let span = info_span!("handle", topic = %route.topic, group = %route.group, event_type = %event.kind,
            event_id = %event.id, subject = %event.subject, attempt = delivery.attempt, trace_id = %trace_id);
        async move {
            // 4. Metrics.
            let started = std::time::Instant::now();
            let outcome = self.handle_with_retries(route, &event, delivery).await;
            let labels = [
                ("topic", route.topic.clone()),
                ("group", route.group.clone()),
                ("outcome", outcome.label().to_owned()),
            ];
            metrics::counter!("weir_handler_total", &labels).increment(1);
            metrics::histogram!("weir_handler_seconds", &labels).record(started.elapsed().as_secs_f64());
            debug!(outcome = outcome.label(), "delivery settled");
        }
        .instrument(span)
        .await
    }

    async fn handle_with_retries(&self, route: &Route, event: &Event, delivery: Delivery) -> Outcome {
        let policy = &self.options.retry;
        let mut last_error = String::new();
        // 5. Immediate retries.
        for try_number in 1..=policy.immediate_attempts.max(1) {
            match self.attempt(route, event, delivery.attempt).await {
                Ok(outcome) => {
                    return match delivery.ack().await {
                        Ok(()) => outcome,
                        Err(e) => {
                            // Committed but not acked: the redelivery will be a duplicate.
                            warn!(error = %e, "ack failed after commit; the inbox will absorb the redelivery");
                            outcome
                        }
                    };
                }
                Err(HandlerError::Permanent(reason)) => {
                    return self.dead_letter(route, delivery, Reason::Permanent(reason)).await;
                }
                Err(HandlerError::Transient(e)) => {
                    last_error = e.to_string();
                    debug!(error = %last_error, try_number, "transient failure");
                    if try_number < policy.immediate_attempts {
                        tokio::time::sleep(policy.immediate_delay).await;
                    }
                }
            }
        }
        if policy.is_last_delivery(delivery.attempt) {
            return self.dead_letter(route, delivery, Reason::Exhausted(last_error)).await;
        }
        let delay = policy.redelivery_delay(delivery.attempt);
        warn!(error = %last_error, ?delay, "handler failed; redelivery scheduled");
        if let Err(e) = delivery.nack(delay).await {
            warn!(error = %e, "nack failed; the transport will redeliver after its lease");
        }
        Outcome::Retry
    }

    /// One try: 6. timeout, 7. panic guard, 8. prepare, 9. transaction with inbox and outbox.
    async fn attempt(&self, route: &Route, event: &Event, attempt: u32) -> Result<Outcome, HandlerError> {
        let work = AssertUnwindSafe(self.transaction(route, event, attempt)).catch_unwind();
        match tokio::time::timeout(self.options.attempt_timeout, work).await {
            Err(_) => Err(HandlerError::transient(format!("timed out after {:?}", self.options.attempt_timeout))),
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                error!(panic = %what, "handler panicked");
                Err(HandlerError::transient(format!("handler panicked: {what}")))
            }
            Ok(Ok(result)) => result,
        }
    }

    async fn transaction(&self, route: &Route, event: &Event, attempt: u32) -> Result<Outcome, HandlerError> {
        let prepared = route.handler.prepare(event).await?;
        let db = &self.kernel.db;
        let mut tx = db.begin().await?;
        if !inbox::record(tx.as_mut(), &route.group, event.id).await? {
            return Ok(Outcome::Duplicate); // Dropping `tx` rolls back: nothing to do.
        }
        let outputs = {
            let mut ctx = Context {
                topic: &route.topic,
                group: &route.group,
                attempt,
                dialect: db.dialect(),
                tx: tx.as_mut(),
                prepared,
            };
            route.handler.handle(event, &mut ctx).await?
        };
        let any_output = !outputs.is_empty();
        let outputs = outputs.into_iter().map(|Outgoing { topic, event: out }| {
            let out = if out.causation_id.is_none() { out.caused_by(event) } else { out };
            (topic, out)
        });
        for (topic, events) in group_by_topic(outputs) {
            self.kernel.outbox.enqueue(tx.as_mut(), &topic, events).await?;
        }
        tx.commit().await?;
        if any_output {
            self.kernel.outbox.wake();
        }
        Ok(Outcome::Handled)
    }

    async fn dead_letter(&self, route: &Route, delivery: Delivery, reason: Reason) -> Outcome {
        warn!(topic = %route.topic, group = %route.group, attempt = delivery.attempt, %reason, "dead-lettering message");
        let sent = dead_letter::send(
            self.kernel.publisher.as_ref(),
            &delivery.message,
            &route.topic,
            &route.group,
            delivery.attempt,
            &reason,
        )
        .await;
        match sent {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    warn!(error = %e, "ack of a dead-lettered message failed; it may be dead-lettered twice");
                }
                metrics::counter!("weir_dead_letters_total", "topic" => route.topic.clone()).increment(1);
                Outcome::DeadLettered
            }
            Err(e) => {
                // Never drop a message: if the DLQ is unreachable, hand it back.
                error!(error = %e, "could not publish the dead letter; redelivering instead");
                let _ = delivery.nack(self.options.retry.max_delay).await;
                Outcome::Retry
            }
        }
    }
}
