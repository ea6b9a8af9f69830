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
//! 2. **Decode and verify** — a message whose type the handler does not
//!    [`accept`](Handler::accepts) is acked here, untouched (a transport that filters by type
//!    settles it before delivery: see [`Subscriber::subscribe_filtered`]), and so is a dead
//!    letter redriven for another consumer group ([`dead_letter::REDRIVEN_FOR`]). Others must
//!    be a CloudEvent with a valid signature. If not,
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
//! # Batching
//!
//! Deliveries of one route that are ready at the same moment — up to [`RouterOptions::batch`],
//! while bulkhead permits last — are handled together: their prepare steps run concurrently,
//! each under a timeout and panic guard of its own, then one transaction takes them all (inbox
//! record, handler, outbox for each) and one commit settles them. A message whose prepare step
//! fails goes through the retry path alone, as if it had come by itself. A message whose handler
//! fails (or panics) rolls the transaction back; it then goes through the retry path alone, and
//! its batch-mates run again in a new transaction with the values their prepare steps returned
//! (prepare is not repeated), so a handler may run more than once for one committed effect.
//! Savepoints per message would spare those reruns, but they copy every page a message touches
//! into a statement journal (without them, `weir bench orders` completes about a fifth more
//! orders per second on the same CPU), and failures are rare.
//! After [`MAX_BATCH_FAILURES`] failures, or if the transaction fails as a whole (begin, commit,
//! its timeout), the messages left go through the retry path one by one.
//! Batches form only when messages queue up, so a lone message waits for nothing; under load
//! one commit and one wake-up serve many messages.
//!
//! On PostgreSQL a batching route (`batch` > 1) runs one batch at a time, each taking what
//! queued during the one before. Concurrent transactions there wait on each other's row locks
//! until each commit's fsync, and their locks, taken in different orders, deadlock: behind a
//! burst of orders sixty-four concurrent small batches reserved stock at a few per second. One
//! at a time, the batch grows with the backlog and one commit settles it, as SQLite's group
//! commit does. But a batch holds its locks until that commit, so where concurrent deliveries
//! lock the same rows (a popular product's stock; an order's saga instance, which deliveries
//! from three topics update) the next batch and the other routes' batches wait out all of its
//! round trips, and batches that lock such rows in different orders deadlock. A handler that
//! says so ([`Handler::locks_contended_rows`]) is not batched on PostgreSQL: its deliveries run
//! concurrently, one transaction each, holding the rows for a statement and a commit. In the
//! README's scale-out deployment, with inventory and the saga so, the ceiling went from ~80 to
//! ~190 orders/s and the deadlocks PostgreSQL logged (each costing a second) stopped. Routes
//! without batching (long `prepare` steps such as OCR) keep their concurrency.
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

pub mod backlog;
pub mod dead_letter;
pub mod retry;

use std::{
    any::Any,
    fmt,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::{FutureExt, future::join_all};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, error, info_span, warn};
use uuid::Uuid;

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
    prepared: Option<&'a (dyn Any + Send + Sync)>,
}

impl Context<'_> {
    /// The transaction the handler's state change must use: it commits with the inbox record
    /// and the outputs.
    pub fn tx(&mut self) -> &mut dyn Transaction {
        self.tx
    }

    /// A copy of what [`Handler::prepare`] returned for this try, if it was a `T`. A copy, not
    /// the value: when a batch-mate fails, the router rolls the batch back and runs the handler
    /// again with the same prepared value (see [`Router`]'s batching).
    pub fn prepared<T: Any + Clone>(&self) -> Option<T> {
        self.prepared.and_then(|p| p.downcast_ref::<T>()).cloned()
    }
}

/// Handles one event. Must be idempotent only through its transaction: the router's inbox
/// ensures one committed effect per event id per group.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether this handler acts on events of type `kind` (the CloudEvents `type`). A topic
    /// carries several types and most consumers act on a few: the router acks the others at
    /// once, before decoding, verifying or opening a transaction, since handling them would
    /// change nothing. The default accepts every type.
    fn accepts(&self, _kind: &str) -> bool {
        true
    }

    /// Work done before the transaction opens and outside it: calls to other systems, which
    /// must not hold a database lock while they wait. It runs on every try, including after a
    /// crash between it and the commit, so it must be idempotent: send an idempotency key
    /// derived from the event, and read your own state first to skip work already recorded.
    /// What it returns reaches [`handle`](Self::handle) through [`Context::prepared`].
    async fn prepare(&self, _event: &Event) -> Result<Option<Prepared>, HandlerError> {
        Ok(None)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError>;

    /// Whether [`handle`](Self::handle) locks rows that concurrent deliveries also lock — a
    /// popular product's stock, or one order's saga instance, which three topics' deliveries
    /// update. On PostgreSQL a batch holds every lock it takes until its commit, across all its
    /// messages' round trips, and two batches that lock the same rows in different orders
    /// deadlock (found only after `deadlock_timeout`, a second), so such a route does not batch
    /// there: each delivery gets a transaction of its own and holds the rows for a statement
    /// and a commit (see "Batching" above). The handler must take several contended rows in one
    /// order (by key). SQLite, with one writer, batches regardless.
    fn locks_contended_rows(&self) -> bool {
        false
    }
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
        self.run_beside(router, shutdown, |_| async {}).await
    }

    /// [`run`](Self::run), with a service's own background work beside the router (the saga's
    /// timers, a read model's checkpoint): `beside` gets a token that is cancelled, as the
    /// relay's is, once the router has stopped — drained after `shutdown`, or failed — and the
    /// run returns when both have ended.
    pub async fn run_beside<F, Fut>(&self, router: Router, shutdown: CancellationToken, beside: F) -> bus::Result<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let relay = tokio::spawn(self.outbox.relay(self.db.clone(), self.publisher.clone()).run(stop.clone()));
        let beside = tokio::spawn(beside(stop.clone()));
        let routes = router.routes.iter().map(|r| (r.topic.clone(), r.group.clone())).collect();
        let every = router.options.backlog_interval;
        let gauges = tokio::spawn(backlog::report(self.clone(), routes, every, stop.clone()));
        let routed = router.run(shutdown).await;
        stop.cancel();
        let tasks =
            [(relay, "the outbox relay"), (beside, "a background task of the service"), (gauges, "the backlog gauges")];
        for (task, name) in tasks {
            if let Err(e) = task.await {
                error!(error = %e, "{name} failed");
            }
        }
        routed
    }
}

#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Messages handled at once (the bulkhead).
    pub concurrency: usize,
    /// At most this many messages that are ready at once share one transaction (see
    /// [`Router`]'s batching); 1 turns batching off.
    pub batch: usize,
    /// Bound on one try: handler plus commit.
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight messages.
    pub drain_timeout: Duration,
    /// How long the inbox remembers a handled event (see [`inbox::prune`]); the router forgets
    /// older records once an hour. `None` keeps them forever.
    ///
    /// [`inbox::prune`]: crate::store::inbox::prune
    pub inbox_retention: Option<Duration>,
    /// How often [`Kernel::run`] reads the backlog gauges (consumer lag, dead letters, outbox:
    /// see [`backlog`]).
    pub backlog_interval: Duration,
}

/// `weir_handler_skipped_total` for a route: messages of types its handler does not take. A
/// transport that settles such types itself (see [`Subscriber::subscribe_filtered`]) counts them
/// here too.
///
/// [`Subscriber::subscribe_filtered`]: crate::bus::Subscriber::subscribe_filtered
pub fn skipped_counter(topic: &str, group: &str) -> metrics::Counter {
    metrics::counter!("weir_handler_skipped_total", "topic" => topic.to_owned(), "group" => group.to_owned())
}

/// Handler failures a batch absorbs (each costs a rollback and a rerun of the others) before
/// the messages left are handled one by one.
pub const MAX_BATCH_FAILURES: usize = 3;

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            batch: 64,
            attempt_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            drain_timeout: Duration::from_secs(10),
            inbox_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            backlog_interval: Duration::from_secs(5),
        }
    }
}

/// How often a router forgets the inbox records older than its retention.
const INBOX_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Forgets, now and then, the inbox records older than `retention`, until `shutdown`.
async fn prune_inbox(db: Db, retention: Duration, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = INBOX_PRUNE_EVERY;
        let before = store::now_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        match store::inbox::prune(db.as_ref(), before).await {
            Ok(0) => {}
            Ok(forgotten) => debug!(forgotten, "forgot old inbox records"),
            Err(e) => warn!(error = %e, "forgetting old inbox records failed; it is tried again later"),
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
            // The transport may settle the types the handler ignores without delivering them.
            let handler = route.handler.clone();
            let wants: bus::TypeFilter = Arc::new(move |kind: &str| handler.accepts(kind));
            let subscription = shared.kernel.subscriber.subscribe_filtered(&route.topic, &route.group, wants).await?;
            subscriptions.push((route, subscription));
        }
        if subscriptions.is_empty() {
            // Nothing to consume, but the caller runs its relay until shutdown beside us.
            shutdown.cancelled().await;
            return Ok(());
        }
        let postgres = shared.kernel.db.dialect() == Dialect::Postgres;
        let mut loops = JoinSet::new();
        if let Some(retention) = shared.options.inbox_retention {
            loops.spawn(prune_inbox(shared.kernel.db.clone(), retention, shutdown.clone()));
        }
        for (route, mut subscription) in subscriptions {
            let (shared, permits, shutdown) = (shared.clone(), permits.clone(), shutdown.clone());
            // See "Batching" above.
            let batch_size =
                if postgres && route.handler.locks_contended_rows() { 1 } else { shared.options.batch.max(1) };
            let one_batch_at_a_time = postgres && batch_size > 1;
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
                    // Whatever else is ready now joins it in one batch, while permits last.
                    let mut batch = vec![(delivery, permit)];
                    while batch.len() < batch_size {
                        let Ok(permit) = permits.clone().try_acquire_owned() else { break };
                        match subscription.next().now_or_never() {
                            Some(Some(delivery)) => batch.push((delivery, permit)),
                            _ => break,
                        }
                    }
                    let (shared, route) = (shared.clone(), route.clone());
                    let work = async move {
                        let (deliveries, permits): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                        shared.process(&route, deliveries).await;
                        drop(permits);
                    };
                    if one_batch_at_a_time {
                        work.await;
                    } else {
                        in_flight.spawn(work);
                    }
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

/// Acks a delivery whose outcome has committed. If the ack fails, the redelivery is a
/// duplicate that the inbox absorbs.
async fn settle_committed(delivery: Delivery, outcome: Outcome) -> Outcome {
    if let Err(e) = delivery.ack().await {
        warn!(error = %e, "ack failed after commit; the inbox will absorb the redelivery");
    }
    outcome
}

/// A delivery that passed the stack's screening: decoded, verified, with its span.
struct Screened {
    delivery: Delivery,
    event: Event,
    span: Span,
}

impl Shared {
    /// Handles deliveries of one route that were ready together. Those the handler takes and
    /// that decode and verify share one transaction, each in its own savepoint ([`Self::batch`]);
    /// one that fails there, or every one if the batch as a whole fails, goes on alone through
    /// the retry path, as it would have without batching.
    async fn process(&self, route: &Route, deliveries: Vec<Delivery>) {
        let started = Instant::now();
        let mut screened = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Some(item) = self.screen(route, delivery).await {
                screened.push(item);
            }
        }
        let mut results = match screened.len() {
            0 => return,
            1 => None,
            _ => self.batch(route, &screened).await,
        }
        .map(Vec::into_iter);
        for Screened { delivery, event, span } in screened {
            let result = results.as_mut().and_then(Iterator::next);
            async {
                let outcome = match result {
                    Some(Ok(outcome)) => settle_committed(delivery, outcome).await,
                    Some(Err(HandlerError::Permanent(reason))) => {
                        self.dead_letter(route, delivery, Reason::Permanent(reason)).await
                    }
                    Some(Err(HandlerError::Transient(_))) | None => {
                        self.handle_with_retries(route, &event, delivery).await
                    }
                };
                // 4. Metrics.
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
            .await;
        }
    }

    /// Steps 2 and 3 of the stack for one delivery: acks what the handler does not take,
    /// dead-letters what does not decode or verify, and opens the delivery's span.
    async fn screen(&self, route: &Route, delivery: Delivery) -> Option<Screened> {
        // Types the handler ignores are settled here (binary mode names the type in a header),
        // and so is a dead letter redriven for another group.
        if bus::refused_by(|kind| route.handler.accepts(kind), &delivery.message)
            || dead_letter::redriven_for_another(&delivery.message, &route.group)
        {
            if let Err(e) = delivery.ack().await {
                debug!(error = %e, "ack of an ignored message failed; it will be skipped again");
            }
            skipped_counter(&route.topic, &route.group).increment(1);
            return None;
        }
        // 2. Decode and verify.
        let event = match Event::from_message(&delivery.message) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(route, delivery, Reason::Undecodable(e.to_string())).await;
                return None;
            }
        };
        if let Err(e) = self.kernel.keyring().verify(&event) {
            self.dead_letter(route, delivery, Reason::BadSignature(e.to_string())).await;
            return None;
        }
        // 3. Tracing span.
        let trace_id = event.trace_id().unwrap_or("");
        let span = info_span!("handle", topic = %route.topic, group = %route.group, event_type = %event.kind,
            event_id = %event.id, subject = %event.subject, attempt = delivery.attempt, trace_id = %trace_id);
        Some(Screened { delivery, event, span })
    }

    /// The first try of a batch. Each message's prepare step and handler run under the stack's
    /// timeout and panic guard of their own, so that one slow or panicking message fails alone:
    /// a prepare step may have called another system, and its result must not be thrown away
    /// because of a batch-mate. Returns each message's result (a transient error sends it
    /// through the retry path alone), or `None` if the transaction failed as a whole (begin,
    /// commit, or its own timeout).
    async fn batch(&self, route: &Route, items: &[Screened]) -> Option<Vec<Result<Outcome, HandlerError>>> {
        // 8. Prepare, concurrently.
        let prepared = join_all(
            items.iter().map(|item| self.guarded(route.handler.prepare(&item.event)).instrument(item.span.clone())),
        )
        .await;
        match tokio::time::timeout(self.options.attempt_timeout, self.batch_transaction(route, items, prepared)).await {
            Ok(Ok(results)) => Some(results),
            Ok(Err(e)) => {
                debug!(error = %e, batch = items.len(), "batch failed; its messages are tried one by one");
                None
            }
            Err(_) => None,
        }
    }

    /// Step 9 for a batch: one transaction for every message whose prepare step succeeded. A
    /// failing handler rolls it back and is left out of the next round, which runs the others
    /// again with the same prepared values.
    async fn batch_transaction(
        &self,
        route: &Route,
        items: &[Screened],
        prepared: Vec<Result<Option<Prepared>, HandlerError>>,
    ) -> Result<Vec<Result<Outcome, HandlerError>>, HandlerError> {
        // A result per message, once known; a failed prepare step is one already.
        let (mut results, values): (Vec<Option<_>>, Vec<_>) = prepared
            .into_iter()
            .map(|p| match p {
                Ok(value) => (None, value),
                Err(e) => (Some(Err(e)), None),
            })
            .unzip();
        for _ in 0..=MAX_BATCH_FAILURES {
            if results.iter().all(Option::is_some) {
                break;
            }
            let mut tx = self.kernel.db.begin().await?;
            let pending: Vec<usize> = (0..items.len()).filter(|i| results[*i].is_none()).collect();
            let ids: Vec<Uuid> = pending.iter().map(|&i| items[i].event.id).collect();
            // The batch's inbox records in one statement; an event delivered twice within the
            // batch runs once, at its first occurrence.
            let mut fresh = inbox::record_many(tx.as_mut(), &route.group, &ids).await?;
            let mut applied = Vec::new();
            let mut outputs = Vec::new();
            let mut failed = None;
            for &i in &pending {
                let item = &items[i];
                if !fresh.remove(&item.event.id) {
                    applied.push((i, Outcome::Duplicate));
                    continue;
                }
                let prepared = values[i].as_deref();
                let handled = self
                    .guarded(self.run_handler(route, &item.event, item.delivery.attempt, prepared, tx.as_mut()))
                    .instrument(item.span.clone())
                    .await;
                match handled {
                    Ok(out) => {
                        outputs.extend(out);
                        applied.push((i, Outcome::Handled));
                    }
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, e)) = failed {
                // Dropping the transaction undoes the whole round; the others run again.
                drop(tx);
                results[i] = Some(Err(e));
                continue;
            }
            // Every output of the batch in one insert per topic.
            let any_output = !outputs.is_empty();
            self.enqueue(tx.as_mut(), outputs).await?;
            tx.commit().await?;
            if any_output {
                self.kernel.outbox.wake();
            }
            for (i, outcome) in applied {
                results[i] = Some(Ok(outcome));
            }
            break;
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(HandlerError::transient("too many failures in its batch"))))
            .collect())
    }

    async fn handle_with_retries(&self, route: &Route, event: &Event, delivery: Delivery) -> Outcome {
        let policy = &self.options.retry;
        let mut last_error = String::new();
        // 5. Immediate retries.
        for try_number in 1..=policy.immediate_attempts.max(1) {
            match self.attempt(route, event, delivery.attempt).await {
                Ok(outcome) => {
                    return settle_committed(delivery, outcome).await;
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
        self.guarded(self.transaction(route, event, attempt)).await
    }

    /// 6. timeout and 7. panic guard around one piece of a try: both become transient failures.
    async fn guarded<T>(&self, work: impl Future<Output = Result<T, HandlerError>>) -> Result<T, HandlerError> {
        match tokio::time::timeout(self.options.attempt_timeout, AssertUnwindSafe(work).catch_unwind()).await {
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
        let mut tx = self.kernel.db.begin().await?;
        let (outcome, any_output) = self.apply(route, event, attempt, prepared.as_deref(), tx.as_mut()).await?;
        tx.commit().await?;
        if any_output {
            self.kernel.outbox.wake();
        }
        Ok(outcome)
    }

    /// Inside `tx`: the inbox record, the handler, its outputs into the outbox. Returns the
    /// outcome and whether anything went into the outbox.
    async fn apply(
        &self,
        route: &Route,
        event: &Event,
        attempt: u32,
        prepared: Option<&(dyn Any + Send + Sync)>,
        tx: &mut dyn Transaction,
    ) -> Result<(Outcome, bool), HandlerError> {
        if !inbox::record(tx, &route.group, event.id).await? {
            return Ok((Outcome::Duplicate, false));
        }
        let outputs = self.run_handler(route, event, attempt, prepared, tx).await?;
        let any_output = !outputs.is_empty();
        self.enqueue(tx, outputs).await?;
        Ok((Outcome::Handled, any_output))
    }

    /// Inside `tx`, for an event the inbox has just recorded: the handler, and its outputs by
    /// topic, each caused by the event unless it names its own cause.
    async fn run_handler(
        &self,
        route: &Route,
        event: &Event,
        attempt: u32,
        prepared: Option<&(dyn Any + Send + Sync)>,
        tx: &mut dyn Transaction,
    ) -> Result<Vec<(String, Event)>, HandlerError> {
        let dialect = self.kernel.db.dialect();
        let mut ctx = Context { topic: &route.topic, group: &route.group, attempt, dialect, tx, prepared };
        let outputs = route.handler.handle(event, &mut ctx).await?;
        Ok(outputs
            .into_iter()
            .map(|Outgoing { topic, event: out }| {
                let out = if out.causation_id.is_none() { out.caused_by(event) } else { out };
                (topic, out)
            })
            .collect())
    }

    /// Writes `outputs` to the outbox inside `tx`, one insert per topic.
    async fn enqueue(&self, tx: &mut dyn Transaction, outputs: Vec<(String, Event)>) -> Result<(), HandlerError> {
        for (topic, events) in group_by_topic(outputs) {
            self.kernel.outbox.enqueue(tx, &topic, events).await?;
        }
        Ok(())
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
