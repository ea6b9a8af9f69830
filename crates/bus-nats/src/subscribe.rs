//! The consuming side: one pull loop and one gate per (topic, group) in a process, shared by
//! every member (subscription) of the group that this process opened through one [`NatsBus`]
//! (and its clones).
//!
//! [`NatsBus`]: crate::NatsBus

use std::{
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull::MessagesErrorKind},
    message::Acker as JsAcker,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::bus::{Acker, Delivery, DeliveryStream, Error, Headers, Message, Result};

use crate::{
    Shared,
    gate::{Entry, Gate, Offer},
    names::{KEY_HEADER, decode_value},
};

/// Messages asked for per pull request.
const PULL_BATCH: usize = 64;
/// Pull requests expire and are renewed this often; short, so that the requests of a dropped
/// subscription do not linger on the server and swallow messages until their ack wait.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Pause before re-creating a failed pull loop.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

type Handle = Arc<JsAcker>;

/// The state one group shares in this process.
pub(crate) struct Core {
    topic: String,
    gate: Mutex<Gate<Handle>>,
    /// Signalled when the ready queue may have grown.
    ready: Notify,
    /// Signalled when the ready queue shrank: the pull loop waits for room.
    room: Notify,
    /// Cancelled when the bus is closed.
    closed: CancellationToken,
    /// The consumer's actual ack wait (an existing consumer keeps its own).
    ack_wait: Duration,
    /// How many ready messages the pull loop keeps before it waits: bounds what one process
    /// takes from a group at the expense of its other processes.
    prefetch: usize,
}

impl Core {
    fn gate(&self) -> MutexGuard<'_, Gate<Handle>> {
        // A panic while holding the lock cannot leave the gate half-updated in a way that
        // matters more than stopping delivery would, so poisoning is ignored.
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn acked(&self, key: &str, seq: u64) {
        if self.gate().acked(key, seq) {
            self.ready.notify_waiters();
        }
    }

    fn waiting(&self, key: &str, seq: u64, expected: Duration) {
        if self.gate().waiting(key, seq, expected, Instant::now()) {
            self.ready.notify_waiters();
        }
    }

    fn error(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::Transport(e.into()) }
    }
}

/// One group's pull loop and gate, alive while any member of the group is.
pub(crate) struct Group {
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        // The last member is gone: stop pulling. What the gate holds is no longer kept alive by
        // progress signals, so JetStream redelivers it after the ack wait.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Group {
    pub(crate) fn start(
        shared: Arc<Shared>,
        topic: &str,
        group: &str,
        consumer: PullConsumer,
        closed: CancellationToken,
    ) -> Arc<Self> {
        let ack_wait = consumer.cached_info().config.ack_wait;
        let max_deliver = u32::try_from(consumer.cached_info().config.max_deliver).ok().filter(|m| *m > 0);
        let core = Arc::new(Core {
            topic: topic.to_owned(),
            // A redelivery is overdue after twice the ack wait beyond its expected time.
            gate: Mutex::new(Gate::new(max_deliver, ack_wait * 2)),
            ready: Notify::new(),
            room: Notify::new(),
            closed,
            ack_wait,
            prefetch: shared.options.prefetch.max(1),
        });
        let pull = tokio::spawn(pull_loop(core.clone(), shared, topic.to_owned(), group.to_owned(), consumer));
        let tick = tokio::spawn(keep_alive(core.clone()));
        Arc::new(Self { core, tasks: vec![pull, tick] })
    }

    pub(crate) fn member(self: &Arc<Self>) -> Member {
        Member { group: self.clone() }
    }
}

/// Feeds the gate from the consumer, and re-creates the pull on terminal errors.
async fn pull_loop(core: Arc<Core>, shared: Arc<Shared>, topic: String, group: String, mut consumer: PullConsumer) {
    loop {
        match consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
        {
            Ok(messages) => {
                let mut messages = pin!(messages);
                loop {
                    wait_for_room(&core).await;
                    let next = tokio::select! {
                        next = messages.next() => next,
                        () = core.closed.cancelled() => return,
                    };
                    match next {
                        Some(Ok(message)) => offer(&core, message).await,
                        Some(Err(e)) => match e.kind() {
                            // The pull stream recovers from these by itself.
                            MessagesErrorKind::MissingHeartbeat
                            | MessagesErrorKind::Pull
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::Other => {
                                debug!(topic, group, error = %e, "pull interrupted; resuming");
                            }
                            _ => {
                                warn!(topic, group, error = %e, "pull stopped; re-creating the consumer");
                                break;
                            }
                        },
                        None => break,
                    }
                }
            }
            Err(e) => warn!(topic, group, error = %e, "cannot pull; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = core.closed.cancelled() => return,
        }
        match shared.consumer(&topic, &group).await {
            Ok(fresh) => consumer = fresh,
            Err(e) => warn!(topic, group, error = %e, "cannot re-create the consumer; retrying"),
        }
    }
}

async fn wait_for_room(core: &Core) {
    loop {
        let mut room = pin!(core.room.notified());
        room.as_mut().enable();
        if core.gate().ready_len() < core.prefetch {
            return;
        }
        room.await;
    }
}

async fn offer(core: &Core, message: jetstream::Message) {
    let (seq, attempt) = match message.info() {
        Ok(info) => (info.stream_sequence, u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1)),
        Err(e) => {
            warn!(topic = core.topic, error = %e, "dropping a delivery without JetStream metadata");
            return;
        }
    };
    let (message, acker) = message.split();
    let mut key = String::new();
    let mut headers = Headers::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        let Some(value) = values.last() else { continue };
        let name: &str = name.as_ref();
        if name == KEY_HEADER {
            key = decode_value(value.as_str());
        } else if !crate::names::is_reserved_header(name) {
            headers.insert(name.to_owned(), decode_value(value.as_str()));
        }
    }
    let entry =
        Entry { seq, attempt, message: Message { key, headers, payload: message.payload }, handle: Arc::new(acker) };
    let key = entry.message.key.clone();
    let (offered, refresh) = {
        let mut gate = core.gate();
        let offered = gate.offer(entry);
        (offered, gate.held_behind(&key, seq))
    };
    for handle in refresh {
        if let Err(e) = handle.ack_with(AckKind::Progress).await {
            debug!(topic = core.topic, error = %e, "progress signal failed");
        }
    }
    match offered {
        Offer::Ready => core.ready.notify_waiters(),
        Offer::Held => {}
        Offer::AlreadyAcked(handle) => {
            debug!(topic = core.topic, seq, "redelivery of an acked message; acking again");
            if let Err(e) = handle.ack().await {
                debug!(topic = core.topic, seq, error = %e, "re-ack failed");
            }
        }
    }
}

/// Keeps what the gate holds back from expiring, and unsticks keys whose redelivery is overdue.
async fn keep_alive(core: Arc<Core>) {
    let period = (core.ack_wait / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = core.closed.cancelled() => return,
        }
        let (handles, overdue) = {
            let mut gate = core.gate();
            let overdue = gate.expire(Instant::now());
            (gate.waiting_handles(), overdue)
        };
        if !overdue.is_empty() {
            for (key, seq) in &overdue {
                warn!(topic = core.topic, key, seq, "redelivery overdue; releasing the key's later messages");
            }
            core.ready.notify_waiters();
        }
        for handle in handles {
            if let Err(e) = handle.ack_with(AckKind::Progress).await {
                debug!(topic = core.topic, error = %e, "progress signal failed");
            }
        }
    }
}

/// One member of a group: what a [`weir_core::bus::Subscription`] wraps.
pub(crate) struct Member {
    group: Arc<Group>,
}

#[async_trait]
impl DeliveryStream for Member {
    async fn next(&mut self) -> Option<Delivery> {
        let core = &self.group.core;
        loop {
            // Registered before looking, so that a message made ready in between wakes us.
            let mut ready = pin!(core.ready.notified());
            ready.as_mut().enable();
            if core.closed.is_cancelled() {
                return None;
            }
            // Taking is synchronous: a cancelled `next` loses nothing.
            let taken = core.gate().take();
            if let Some(entry) = taken {
                core.room.notify_waiters();
                let acker = NatsAcker {
                    core: core.clone(),
                    key: entry.message.key.clone(),
                    seq: entry.seq,
                    handle: entry.handle,
                    settled: AtomicBool::new(false),
                };
                return Some(Delivery::new(core.topic.clone(), entry.message, entry.attempt, acker));
            }
            tokio::select! {
                () = ready => {}
                () = core.closed.cancelled() => return None,
            }
        }
    }
}

/// Settles one delivery through the gate.
struct NatsAcker {
    core: Arc<Core>,
    key: String,
    seq: u64,
    /// This delivery's own handle, used if the gate no longer tracks the message.
    handle: Handle,
    settled: AtomicBool,
}

impl NatsAcker {
    /// Sends `kind` and waits for the server's confirmation, then updates the gate. Runs as a
    /// task so that a cancelled caller cannot leave the gate unaware of a settled message.
    async fn settle(&self, kind: AckKind, nak_delay: Option<Duration>) -> Result<()> {
        self.settled.store(true, Ordering::Relaxed);
        let core = self.core.clone();
        let key = self.key.clone();
        let seq = self.seq;
        let own = self.handle.clone();
        let task = tokio::spawn(async move {
            let handle = core.gate().settle_handle(&key, seq).unwrap_or(own);
            match handle.double_ack_with(kind).await {
                Ok(()) => {
                    match nak_delay {
                        None => core.acked(&key, seq),
                        Some(delay) => core.waiting(&key, seq, delay),
                    }
                    Ok(())
                }
                Err(e) => {
                    // Unsettled as far as the server knows: it redelivers after the ack wait.
                    core.waiting(&key, seq, core.ack_wait);
                    Err(core.error(e))
                }
            }
        });
        task.await.map_err(Error::transport)?
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<()> {
        self.settle(AckKind::Ack, None).await
    }

    async fn nack(&self, delay: Duration) -> Result<()> {
        self.settle(AckKind::Nak(Some(delay)), Some(delay)).await
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            // Dropped unsettled: JetStream redelivers it after the ack wait; until then its key
            // stays held here.
            self.core.waiting(&self.key, self.seq, self.core.ack_wait);
        }
    }
}
