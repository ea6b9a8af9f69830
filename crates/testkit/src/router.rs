//! The router suite: the middleware stack's promises, checked end to end on a real database and
//! a real transport. Instantiate it with [`router_tests!`] and a [`Backend`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir_core::{
    Context, Db, Event, Handler, HandlerError, Kernel, Keyring, Outgoing, Router, RouterOptions,
    bus::{Message, Publisher, Subscriber},
    router::{RetryPolicy, dead_letter},
    store::{self, outbox::Outbox},
};

/// A database and a transport to run the router on.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A fresh, empty database.
    async fn database(&self) -> Db;
    /// The transport (topics are unique per case, so it may be shared).
    async fn transport(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>);
}

/// One case's world: a kernel, its router options, and unique topic names.
pub struct World {
    pub kernel: Kernel,
    pub input: String,
    pub output: String,
    pub options: RouterOptions,
}

impl World {
    pub async fn new(backend: &dyn Backend) -> Self {
        let db = backend.database().await;
        store::install(db.as_ref()).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.execute("CREATE TABLE effects (event_id TEXT NOT NULL, n BIGINT NOT NULL)", &[]).await.unwrap();
        tx.commit().await.unwrap();
        let (publisher, subscriber) = backend.transport().await;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let options = RouterOptions {
            concurrency: 8,
            batch: 8,
            attempt_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                immediate_attempts: 2,
                immediate_delay: Duration::from_millis(1),
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                max_deliveries: 3,
            },
            drain_timeout: Duration::from_secs(5),
            inbox_retention: None,
            ..RouterOptions::default()
        };
        Self {
            kernel: Kernel { db, outbox: Outbox::new(Keyring::generate("test")), publisher, subscriber },
            input: format!("in-{suffix}"),
            output: format!("out-{suffix}"),
            options,
        }
    }

    pub fn event(&self, n: i64) -> Event {
        let mut e = Event::new("testkit", "thing_happened", format!("key-{}", n % 4), &json!({ "n": n })).unwrap();
        self.kernel.keyring().sign(&mut e);
        e
    }

    pub async fn publish(&self, events: &[Event]) {
        let messages = events.iter().map(Event::to_message).collect();
        self.kernel.publisher.publish(&self.input, messages).await.unwrap();
    }

    /// Starts the router with `handler` on the input topic (group `suite`), and the outbox relay.
    pub fn start(&self, handler: impl Handler) -> Running {
        self.start_router(self.router().route(&self.input, "suite", handler))
    }

    /// A router of this world's kernel and options, without routes.
    pub fn router(&self) -> Router {
        Router::new(self.kernel.clone(), self.options.clone())
    }

    /// Starts `router` and the outbox relay.
    pub fn start_router(&self, router: Router) -> Running {
        let shutdown = CancellationToken::new();
        let relay = self.kernel.outbox.relay(self.kernel.db.clone(), self.kernel.publisher.clone());
        let router = tokio::spawn(router.run(shutdown.clone()));
        let relay = tokio::spawn(relay.run(shutdown.clone()));
        Running { shutdown, router, relay }
    }

    pub async fn effects(&self) -> Vec<(String, i64)> {
        self.kernel
            .db
            .query("SELECT event_id, n FROM effects ORDER BY n", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.text(0).unwrap().to_owned(), r.i64(1).unwrap()))
            .collect()
    }

    /// Waits until `n` effects are committed (or fails after a bound).
    pub async fn wait_for_effects(&self, n: usize) -> Vec<(String, i64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let effects = self.effects().await;
            if effects.len() >= n || tokio::time::Instant::now() > deadline {
                return effects;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads `n` messages from `topic` (as a fresh group), acking them.
    pub async fn read(&self, topic: &str, n: usize) -> Vec<Message> {
        let mut sub = self.kernel.subscriber.subscribe(topic, "suite-reader").await.unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages arrived on {topic}", out.len()))
                .expect("subscription closed");
            out.push(d.message.clone());
            d.ack().await.unwrap();
        }
        out
    }
}

pub struct Running {
    shutdown: CancellationToken,
    router: tokio::task::JoinHandle<weir_core::bus::Result<()>>,
    relay: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the router and relay and waits for both to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), async {
            self.router.await.unwrap().unwrap();
            self.relay.await.unwrap();
        })
        .await
        .expect("shutdown must finish within its deadline");
    }
}

/// Records an effect per event and emits one output event; fails or panics on demand.
pub struct Recorder {
    pub output: String,
    pub calls: Arc<AtomicU32>,
    /// Fail (transiently) while `calls` ≤ this.
    pub fail_first: u32,
    pub panic_first: u32,
    pub permanent: bool,
    pub sleep: Duration,
    pub running: Arc<AtomicUsize>,
    pub max_running: Arc<AtomicUsize>,
    /// What [`Handler::locks_contended_rows`] answers.
    pub contended: bool,
}

impl Recorder {
    pub fn new(output: &str) -> Self {
        Self {
            output: output.to_owned(),
            calls: Arc::default(),
            fail_first: 0,
            panic_first: 0,
            permanent: false,
            sleep: Duration::ZERO,
            running: Arc::default(),
            max_running: Arc::default(),
            contended: false,
        }
    }
}

#[async_trait]
impl Handler for Recorder {
    fn locks_contended_rows(&self) -> bool {
        self.contended
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let n: i64 = event.data::<serde_json::Value>()?["n"].as_i64().unwrap_or(-1);
        // The effect is written before any failure: a failed try must roll it back.
        ctx.tx()
            .execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &[event.id.to_string().into(), n.into()])
            .await?;
        tokio::time::sleep(self.sleep).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if call <= self.panic_first {
            panic!("handler exploded on call {call}");
        }
        if self.permanent {
            return Err(HandlerError::permanent("this event can never be handled"));
        }
        if call <= self.fail_first {
            return Err(HandlerError::transient(format!("dependency down (call {call})")));
        }
        let out = Event::new("testkit", "thing_recorded", &event.subject, &json!({ "n": n })).unwrap();
        Ok(vec![Outgoing::new(&self.output, out)])
    }
}

pub async fn handles_each_event_once_with_outputs(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let events: Vec<Event> = (0..20).map(|n| w.event(n)).collect();
    w.publish(&events).await;
    let running = w.start(Recorder::new(&w.output));
    let effects = w.wait_for_effects(20).await;
    assert_eq!(effects.len(), 20);
    let outputs = w.read(&w.output, 20).await;
    running.stop().await;
    let outputs: Vec<Event> = outputs.iter().map(|m| Event::from_message(m).unwrap()).collect();
    for e in &events {
        let out = outputs.iter().find(|o| o.causation_id == Some(e.id)).expect("an output caused by each input");
        assert_eq!(out.correlation_id, e.correlation_id);
        assert!(w.kernel.keyring().verify(out).is_ok());
    }
}

pub async fn duplicate_deliveries_have_no_second_effect(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let e = w.event(1);
    w.publish(&[e.clone(), e.clone()]).await;
    w.publish(std::slice::from_ref(&e)).await;
    let recorder = Recorder::new(&w.output);
    let calls = recorder.calls.clone();
    let running = w.start(recorder);
    w.wait_for_effects(1).await;
    w.read(&w.output, 1).await;
    // Give the duplicates time to arrive and be absorbed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_eq!(w.effects().await.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the inbox answers duplicates before the handler runs");
}

pub async fn transient_failures_are_retried_and_roll_back(backend: &dyn Backend) {
    let w = World::new(backend).await;
    // Two immediate tries fail, the redelivery's first try fails, its second succeeds.
    let recorder = Recorder { fail_first: 3, ..Recorder::new(&w.output) };
    let calls = recorder.calls.clone();
    w.publish(&[w.event(7)]).await;
    let running = w.start(recorder);
    let effects = w.wait_for_effects(1).await;
    w.read(&w.output, 1).await;
    running.stop().await;
    assert_eq!(effects.len(), 1, "failed tries left no effect behind");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

pub async fn permanent_failures_are_dead_lettered(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let recorder = Recorder { permanent: true, ..Recorder::new(&w.output) };
    let calls = recorder.calls.clone();
    let e = w.event(3);
    w.publish(std::slice::from_ref(&e)).await;
    let running = w.start(recorder);
    let letters = w.read(&format!("{}.dlq", w.input), 1).await;
    running.stop().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry for a permanent error");
    let letter = &letters[0];
    assert!(letter.headers[dead_letter::REASON].contains("can never be handled"));
    assert_eq!(letter.headers[dead_letter::ORIGINAL_TOPIC], w.input);
    assert_eq!(Event::from_message(letter).unwrap().id, e.id);
    assert!(w.effects().await.is_empty());
}

pub async fn exhausted_retries_are_dead_lettered(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let recorder = Recorder { fail_first: u32::MAX, ..Recorder::new(&w.output) };
    let calls = recorder.calls.clone();
    w.publish(&[w.event(4)]).await;
    let running = w.start(recorder);
    let letters = w.read(&format!("{}.dlq", w.input), 1).await;
    running.stop().await;
    let letter = &letters[0];
    assert!(letter.headers[dead_letter::REASON].starts_with("retries exhausted"));
    assert_eq!(letter.headers[dead_letter::ATTEMPTS], "3");
    // max_deliveries × immediate_attempts tries in all.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert!(w.effects().await.is_empty());
}

pub async fn forged_and_garbled_messages_never_reach_the_handler(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let recorder = Recorder::new(&w.output);
    let calls = recorder.calls.clone();
    let mut forged = w.event(1);
    Keyring::generate("test").sign(&mut forged); // same key id, another secret
    let mut unsigned = w.event(2);
    unsigned.signature = None;
    let garbage = Message::new("key-1", &b"\xff not an event"[..]);
    let mut messages: Vec<Message> = vec![forged.to_message(), unsigned.to_message(), garbage];
    messages.push(w.event(3).to_message()); // one good one, handled normally
    w.kernel.publisher.publish(&w.input, messages).await.unwrap();
    let running = w.start(recorder);
    let letters = w.read(&format!("{}.dlq", w.input), 3).await;
    w.wait_for_effects(1).await;
    running.stop().await;
    let reasons: Vec<&str> = letters.iter().map(|l| l.headers[dead_letter::REASON].as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| r.starts_with("bad signature")).count(), 2, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.starts_with("undecodable")).count(), 1, "{reasons:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the good event reached the handler");
}

pub async fn a_panicking_handler_is_retried_and_the_router_lives_on(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let recorder = Recorder { panic_first: 1, ..Recorder::new(&w.output) };
    w.publish(&[w.event(1)]).await;
    let running = w.start(recorder);
    w.wait_for_effects(1).await;
    w.publish(&[w.event(2)]).await;
    let effects = w.wait_for_effects(2).await;
    running.stop().await;
    assert_eq!(effects.len(), 2, "both handled; the panicked try left nothing behind");
}

pub async fn the_bulkhead_bounds_concurrency(backend: &dyn Backend) {
    let mut w = World::new(backend).await;
    w.options.concurrency = 2;
    let recorder = Recorder { sleep: Duration::from_millis(30), ..Recorder::new(&w.output) };
    let max_running = recorder.max_running.clone();
    // Distinct keys, so the transport may hand them out concurrently.
    let events: Vec<Event> = (0..12)
        .map(|n| {
            let mut e = Event::new("testkit", "thing_happened", format!("bulk-{n}"), &json!({ "n": n })).unwrap();
            w.kernel.keyring().sign(&mut e);
            e
        })
        .collect();
    w.publish(&events).await;
    let running = w.start(recorder);
    w.wait_for_effects(12).await;
    running.stop().await;
    let max = max_running.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "at most 2 at once, saw {max}");
}

pub async fn a_try_that_times_out_is_retried(backend: &dyn Backend) {
    let mut w = World::new(backend).await;
    w.options.attempt_timeout = Duration::from_millis(200);
    let recorder = Recorder { sleep: Duration::from_millis(400), ..Recorder::new(&w.output) };
    let calls = recorder.calls.clone();
    w.publish(&[w.event(1)]).await;
    let running = w.start(recorder);
    let letters = w.read(&format!("{}.dlq", w.input), 1).await;
    running.stop().await;
    assert!(letters[0].headers[dead_letter::REASON].contains("timed out"));
    assert!(calls.load(Ordering::SeqCst) >= 2, "retried after the timeout");
    assert!(w.effects().await.is_empty(), "a timed-out try commits nothing");
}

pub async fn shutdown_drains_in_flight_work(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let recorder = Recorder { sleep: Duration::from_millis(300), ..Recorder::new(&w.output) };
    let calls = recorder.calls.clone();
    w.publish(&[w.event(1)]).await;
    let running = w.start(recorder);
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await; // returns only after the in-flight message finished
    assert_eq!(w.effects().await.len(), 1, "the in-flight message was committed before shutdown returned");
}

/// Expands to one `#[tokio::test]` per router case, for the backend expression given.
/// A handler whose `prepare` stands for a call to another system: it fails transiently on its
/// first call, and must run with no transaction of this database open.
struct Preparer {
    db: Db,
    prepares: Arc<AtomicU32>,
}

#[async_trait]
impl Handler for Preparer {
    async fn prepare(&self, event: &Event) -> Result<Option<weir_core::Prepared>, HandlerError> {
        if self.prepares.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HandlerError::transient("the other system is down"));
        }
        // Outside the transaction, a write of our own must not wait for (or deadlock on) it.
        let mut tx = self.db.begin().await?;
        tx.execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &["prepared".into(), 0i64.into()]).await?;
        tx.commit().await?;
        Ok(Some(Box::new(format!("receipt for {}", event.id))))
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let receipt: String = ctx.prepared().ok_or_else(|| HandlerError::permanent("nothing prepared"))?;
        assert!(ctx.prepared::<u64>().is_none(), "only what prepare returned");
        ctx.tx().execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &[receipt.into(), 1i64.into()]).await?;
        let _ = event;
        Ok(vec![])
    }
}

pub async fn prepare_runs_before_the_transaction_and_feeds_the_handler(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let prepares = Arc::new(AtomicU32::new(0));
    let event = w.event(1);
    w.publish(std::slice::from_ref(&event)).await;
    let running = w.start(Preparer { db: w.kernel.db.clone(), prepares: prepares.clone() });
    let effects = w.wait_for_effects(2).await;
    running.stop().await;
    assert_eq!(prepares.load(Ordering::SeqCst), 2, "a failed prepare is retried like a failed handler");
    let receipt = format!("receipt for {}", event.id);
    assert_eq!(effects, vec![("prepared".to_owned(), 0), (receipt, 1)]);
}

/// Records an effect for each event, but fails for good on `n == 13` and once, transiently, on
/// `n == 7`; counts its calls per `n`.
struct Picky {
    calls: Arc<std::sync::Mutex<std::collections::BTreeMap<i64, u32>>>,
    prepares: Arc<std::sync::Mutex<std::collections::BTreeMap<i64, u32>>>,
}

fn picky_n(event: &Event) -> Result<i64, HandlerError> {
    Ok(event.data::<serde_json::Value>()?["n"].as_i64().unwrap_or(-1))
}

#[async_trait]
impl Handler for Picky {
    async fn prepare(&self, event: &Event) -> Result<Option<weir_core::Prepared>, HandlerError> {
        let n = picky_n(event)?;
        *self.prepares.lock().unwrap().entry(n).or_default() += 1;
        Ok(Some(Box::new(n)))
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let n = picky_n(event)?;
        assert_eq!(ctx.prepared::<i64>(), Some(n), "every run sees what its own prepare step returned");
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let call = calls.entry(n).or_default();
            *call += 1;
            *call
        };
        ctx.tx()
            .execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &[event.id.to_string().into(), n.into()])
            .await?;
        match (n, call) {
            (13, _) => Err(HandlerError::permanent("13 is unlucky")),
            (7, 1) => Err(HandlerError::transient("7 fails once")),
            _ => Ok(Vec::new()),
        }
    }
}

/// Messages ready together share a transaction; one failing handler must undo no batch-mate's
/// effect nor repeat its prepare step, and then be retried or dead-lettered on its own.
pub async fn a_failure_in_a_batch_spares_its_batch_mates(backend: &dyn Backend) {
    let w = World::new(backend).await;
    // Distinct keys, published before the router starts: they are all ready at once.
    let events: Vec<Event> = (0..40)
        .map(|n| {
            let mut e = Event::new("testkit", "thing_happened", format!("batch-{n}"), &json!({ "n": n })).unwrap();
            w.kernel.keyring().sign(&mut e);
            e
        })
        .collect();
    w.publish(&events).await;
    let calls = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let prepares = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let running = w.start(Picky { calls: calls.clone(), prepares: prepares.clone() });
    let letters = w.read(&format!("{}.dlq", w.input), 1).await;
    let effects = w.wait_for_effects(39).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop().await;
    assert!(letters[0].headers[dead_letter::REASON].contains("13 is unlucky"));
    let mut done: Vec<i64> = effects.iter().map(|(_, n)| *n).collect();
    done.sort_unstable();
    assert_eq!(done, (0..40).filter(|n| *n != 13).collect::<Vec<_>>(), "one effect per event but the dead letter");
    let (calls, prepares) = (calls.lock().unwrap().clone(), prepares.lock().unwrap().clone());
    assert_eq!(calls[&13], 1, "a permanent failure is not retried");
    assert_eq!(calls[&7], 2, "7 failed once, then was handled alone");
    assert_eq!(prepares[&7], 2, "7 was prepared again for its retry alone");
    for n in (0..40).filter(|n| ![7, 13].contains(n)) {
        assert_eq!(prepares[&n], 1, "event {n} was prepared once, whatever its batch-mates did");
        // Rerun after each batch-mate's failure at most (two fail here), never committed twice.
        assert!((1..=3).contains(&calls[&n]), "event {n} was handled {} times", calls[&n]);
    }
}

/// Ignores every type but `thing_happened`.
struct OnlyHappened(Recorder);

#[async_trait]
impl Handler for OnlyHappened {
    fn accepts(&self, kind: &str) -> bool {
        kind == "thing_happened"
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        assert_eq!(event.kind, "thing_happened", "the router must not hand over types the handler does not accept");
        self.0.handle(event, ctx).await
    }
}

/// Types a handler does not accept are acked without a transaction, and do not hold back the
/// messages of their key.
pub async fn types_the_handler_does_not_accept_are_skipped(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let mut other = Event::new("testkit", "thing_ignored", "key-1", &json!({ "n": 100 })).unwrap();
    w.kernel.keyring().sign(&mut other);
    w.publish(&[other, w.event(1)]).await;
    let recorder = Recorder::new(&w.output);
    let calls = recorder.calls.clone();
    let running = w.start(OnlyHappened(recorder));
    let effects = w.wait_for_effects(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop().await;
    assert_eq!(effects.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let inbox = w.kernel.db.query("SELECT COUNT(*) FROM weir_inbox", &[]).await.unwrap();
    assert_eq!(inbox[0].i64(0).unwrap(), 1, "a skipped message leaves no inbox record");
}

pub async fn a_redriven_letter_is_handled_again_only_by_the_group_that_gave_up(backend: &dyn Backend) {
    let w = World::new(backend).await;
    let e = w.event(5);
    w.publish(std::slice::from_ref(&e)).await;
    // Group `suite` gives up on the event; group `other` handles it.
    let other = Recorder::new(&w.output);
    let other_calls = other.calls.clone();
    let giving_up = Recorder { permanent: true, ..Recorder::new(&w.output) };
    let running = w.start_router(w.router().route(&w.input, "suite", giving_up).route(&w.input, "other", other));
    let letter = w.read(&format!("{}.dlq", w.input), 1).await.remove(0);
    assert_eq!(w.wait_for_effects(1).await.len(), 1, "`other` handled it");
    running.stop().await;
    assert_eq!(letter.headers[dead_letter::GROUP], "suite");

    // The cause is fixed and the letter redriven long after: `other`'s inbox record is gone
    // (pruned), so only the address keeps `other` from handling the event a second time.
    let mut tx = w.kernel.db.begin().await.unwrap();
    tx.execute("DELETE FROM weir_inbox", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let fixed = Recorder::new(&w.output);
    let fixed_calls = fixed.calls.clone();
    let other_again = Recorder::new(&w.output);
    let other_again_calls = other_again.calls.clone();
    let running = w.start_router(w.router().route(&w.input, "suite", fixed).route(&w.input, "other", other_again));
    w.kernel.publisher.publish(&w.input, vec![dead_letter::redriven(&letter)]).await.unwrap();
    assert_eq!(w.wait_for_effects(2).await.len(), 2, "`suite` handled the redriven event");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    assert_eq!(other_calls.load(Ordering::SeqCst), 1);
    assert_eq!(fixed_calls.load(Ordering::SeqCst), 1);
    assert_eq!(other_again_calls.load(Ordering::SeqCst), 0, "the redrive was not for `other`");
    assert_eq!(w.effects().await.iter().filter(|(id, _)| *id == e.id.to_string()).count(), 2);
}

pub async fn a_router_that_fails_stops_the_work_beside_it(backend: &dyn Backend) {
    let w = World::new(backend).await;
    // A topic name no transport accepts: the router fails as it starts, with no shutdown asked.
    let router =
        Router::new(w.kernel.clone(), w.options.clone()).route("no such topic!", "g", Recorder::new(&w.output));
    let (stopped, beside_ended) = tokio::sync::oneshot::channel();
    let beside = |stop: CancellationToken| async move {
        stop.cancelled().await;
        let _ = stopped.send(());
    };
    let run = w.kernel.run_beside(router, CancellationToken::new(), beside);
    let outcome = tokio::time::timeout(Duration::from_secs(10), run).await.expect("the run ended with its router");
    assert!(outcome.is_err(), "the router's failure is the run's");
    assert!(beside_ended.await.is_ok(), "the work beside was told to stop, and had stopped");
}

/// Waits in `prepare` until the test lets it through (no transaction is open meanwhile); then
/// records an effect and emits an output, or fails for good on a negative `n`.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    output: String,
}

#[async_trait]
impl Handler for Gated {
    async fn prepare(&self, _event: &Event) -> Result<Option<weir_core::Prepared>, HandlerError> {
        self.gate.acquire().await.map_err(|e| HandlerError::transient(e.to_string()))?.forget();
        Ok(None)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let n = picky_n(event)?;
        if n < 0 {
            return Err(HandlerError::permanent("a negative n can never be handled"));
        }
        ctx.tx()
            .execute("INSERT INTO effects (event_id, n) VALUES ($1, $2)", &[event.id.to_string().into(), n.into()])
            .await?;
        let out = Event::new("testkit", "thing_recorded", &event.subject, &json!({ "n": n })).unwrap();
        Ok(vec![Outgoing::new(&self.output, out)])
    }
}

/// `/metrics` of a kernel's run: the consumer lag counts every message a stuck consumer has
/// not settled, then none once it is let through; the outbox drains; dead letters are counted
/// per topic.
pub async fn backlog_gauges_count_what_waits(backend: &dyn Backend) {
    const WAITING: usize = 12;
    const POISON: usize = 3;
    let metrics = weir_http::telemetry::install_metrics();
    let mut w = World::new(backend).await;
    w.options.backlog_interval = Duration::from_millis(50);
    w.options.attempt_timeout = Duration::from_secs(60);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = w.router().route(&w.input, "suite", Gated { gate: gate.clone(), output: w.output.clone() });
    let shutdown = CancellationToken::new();
    let kernel = w.kernel.clone();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { kernel.run(router, shutdown).await }
    });
    let gauge = |name: &str, labels: &[(&str, &str)]| {
        let rendered = weir_http::telemetry::render(&metrics);
        rendered
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let settles = |name: &'static str, labels: Vec<(&'static str, String)>, expected: f64| {
        let gauge = &gauge;
        async move {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let value = gauge(name, &labels);
                if value == Some(expected) {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} {labels:?} is {value:?}, not {expected}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let lag = || vec![("topic", w.input.clone()), ("group", "suite".to_owned())];

    w.publish(&(0..WAITING as i64).map(|n| w.event(n)).collect::<Vec<_>>()).await;
    settles("weir_consumer_lag", lag(), WAITING as f64).await;
    settles("weir_dead_letters", vec![("topic", w.input.clone())], 0.0).await;

    gate.add_permits(WAITING + POISON);
    w.wait_for_effects(WAITING).await;
    settles("weir_consumer_lag", lag(), 0.0).await;
    settles("weir_outbox_backlog", vec![("group", "suite".to_owned())], 0.0).await;

    w.publish(&(0..POISON).map(|_| w.event(-1)).collect::<Vec<_>>()).await;
    settles("weir_dead_letters", vec![("topic", w.input.clone())], POISON as f64).await;
    settles("weir_consumer_lag", lag(), 0.0).await;
    shutdown.cancel();
    run.await.expect("the run does not panic").expect("the run ends cleanly");
}

#[macro_export]
macro_rules! router_tests {
    ($backend:expr) => {
        $crate::__suite_cases!(router, $backend;
            handles_each_event_once_with_outputs, duplicate_deliveries_have_no_second_effect,
            transient_failures_are_retried_and_roll_back, permanent_failures_are_dead_lettered,
            exhausted_retries_are_dead_lettered, forged_and_garbled_messages_never_reach_the_handler,
            a_panicking_handler_is_retried_and_the_router_lives_on, the_bulkhead_bounds_concurrency,
            a_try_that_times_out_is_retried, shutdown_drains_in_flight_work,
            prepare_runs_before_the_transaction_and_feeds_the_handler, a_failure_in_a_batch_spares_its_batch_mates,
            types_the_handler_does_not_accept_are_skipped,
            a_redriven_letter_is_handled_again_only_by_the_group_that_gave_up,
            a_router_that_fails_stops_the_work_beside_it, backlog_gauges_count_what_waits);
    };
}
