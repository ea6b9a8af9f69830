//! The consuming side: per (topic, group) in a process, one channel whose consumers feed one
//! gate, shared by every member (subscription) of the group that this process opened through
//! one [`RabbitBus`](crate::RabbitBus) and its clones, and one forwarder that sends nacked and
//! held-back messages to their delay queues.

use std::{
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::bus::{Acker, Delivery, DeliveryStream, Error, Message, Result, partition_of};

use crate::{
    Shared,
    gate::{Entry, Gate, Offer},
    names::{DELAY_LEVELS_MS, GroupNames, TopicNames},
    topology::{Probe, close, mandatory},
    wire::{self, CONTROL_END, Envelope, now_ms},
};

/// Pause before a failed channel is opened again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Settles one delivery with the broker, on the channel it came from.
#[derive(Clone)]
pub(crate) struct Handle(Arc<HandleInner>);

struct HandleInner {
    acker: lapin::Acker,
    /// The channel generation the delivery came on: a later channel knows nothing of it.
    generation: u64,
    from_history: bool,
    /// Counted among the unsettled deliveries until this flips.
    settled: AtomicBool,
}

/// A copy of a message on its way to a delay queue or to the back of its partition queue.
struct Copy {
    message: Message,
    envelope: Envelope,
}

/// Copies to send, in order, then the originals to ack once the broker confirmed the copies.
struct Job {
    copies: Vec<Copy>,
    originals: Vec<Handle>,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// The state one group shares in this process.
pub(crate) struct Core {
    topic: String,
    topic_names: TopicNames,
    names: GroupNames,
    partitions: u32,
    gate: Mutex<Gate<Handle>>,
    /// Signalled when the ready queue may have grown.
    ready: Notify,
    /// Signalled when a delivery was settled.
    settled: Notify,
    /// Cancelled when the group's last member goes, or the bus is closed.
    closed: CancellationToken,
    generation: AtomicU64,
    /// Deliveries of the current channel not yet acked or handed back.
    unsettled: AtomicUsize,
    history_unsettled: AtomicUsize,
    /// Whether this process holds the end marker of the group's history.
    holds_end: AtomicBool,
    forward: mpsc::UnboundedSender<Job>,
}

impl Core {
    fn gate(&self) -> MutexGuard<'_, Gate<Handle>> {
        // A panic while holding the lock cannot leave the gate half-updated in a way that
        // matters more than stopping delivery would, so poisoning is ignored.
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::transport(e) }
    }

    fn is_current(&self, handle: &Handle) -> bool {
        !self.closed.is_cancelled() && handle.0.generation == self.generation.load(Ordering::Acquire)
    }

    fn handle(&self, acker: lapin::Acker, generation: u64, from_history: bool) -> Handle {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
        if from_history {
            self.history_unsettled.fetch_add(1, Ordering::AcqRel);
        }
        Handle(Arc::new(HandleInner { acker, generation, from_history, settled: AtomicBool::new(false) }))
    }

    fn count_settled(&self, handle: &Handle) {
        if handle.0.settled.swap(true, Ordering::AcqRel) || !self.is_current(handle) {
            return;
        }
        let decrement = |n: usize| Some(n.saturating_sub(1));
        let _ = self.unsettled.fetch_update(Ordering::AcqRel, Ordering::Acquire, decrement);
        if handle.0.from_history {
            let _ = self.history_unsettled.fetch_update(Ordering::AcqRel, Ordering::Acquire, decrement);
        }
        self.settled.notify_waiters();
    }

    async fn ack_handle(&self, handle: &Handle) -> Result<()> {
        if !self.is_current(handle) {
            return Err(Error::Closed);
        }
        match handle.0.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {
                self.count_settled(handle);
                Ok(())
            }
            Ok(false) => Err(Error::Closed),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Hands a delivery back to its queue: the broker redelivers it, its delivery count one
    /// higher.
    async fn requeue(&self, handle: &Handle) {
        if !self.is_current(handle) {
            return;
        }
        match handle.0.acker.reject(BasicRejectOptions { requeue: true }).await {
            Ok(_) => self.count_settled(handle),
            Err(e) => debug!(topic = self.topic, error = %e, "requeue failed; the channel's end requeues it"),
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        self.forward.send(job).map_err(|_| Error::Closed)
    }

    /// A delivery arrived: into the gate with it.
    fn offer(&self, delivery: lapin::message::Delivery, from_history: bool) {
        let generation = self.generation.load(Ordering::Acquire);
        let fallback = format!("anonymous-{generation}-{}", delivery.delivery_tag);
        let received = wire::received(&delivery.properties, delivery.data, fallback);
        if received.control.is_some() {
            // A control message where none belongs (the end of a history copied again): drop it.
            let acker = delivery.acker;
            tokio::spawn(async move { acker.ack(BasicAckOptions::default()).await });
            return;
        }
        let handle = self.handle(delivery.acker, generation, from_history);
        let entry = Entry {
            id: received.envelope.id,
            attempt: received.envelope.attempt,
            not_before: received.envelope.not_before,
            message: received.message,
            handle,
        };
        let mut gate = self.gate();
        match gate.offer(entry, now_ms()) {
            Offer::Ready => self.ready.notify_waiters(),
            Offer::Held => {}
            Offer::Forward(entry, due) => {
                // Sent while the gate is locked, so that the forwarder sends a key's messages in
                // the order the gate decided.
                let copy = Copy {
                    envelope: Envelope { id: entry.id, attempt: entry.attempt, not_before: Some(due), wait: None },
                    message: entry.message,
                };
                if self.send(Job { copies: vec![copy], originals: vec![entry.handle], reply: None }).is_err() {
                    debug!(topic = self.topic, "group closed; the channel's end requeues the delivery");
                }
            }
        }
    }

    /// The channel is gone and the broker requeued what it had handed out.
    fn reset(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.unsettled.store(0, Ordering::Release);
        self.history_unsettled.store(0, Ordering::Release);
        self.holds_end.store(false, Ordering::Release);
        self.gate().reset();
        self.settled.notify_waiters();
    }
}

/// One group's channel, forwarder and gate, alive while any member of the group is.
pub(crate) struct Group {
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        // The last member is gone: the channel closes with the pump, and the broker requeues
        // every delivery it had handed out on it.
        self.core.closed.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Group {
    pub(crate) fn start(shared: Arc<Shared>, topic: &str, topic_names: TopicNames, names: GroupNames) -> Arc<Self> {
        let (forward, jobs) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            topic: topic.to_owned(),
            topic_names,
            names,
            partitions: shared.options.partitions,
            gate: Mutex::new(Gate::new()),
            ready: Notify::new(),
            settled: Notify::new(),
            closed: shared.closed.child_token(),
            generation: AtomicU64::new(0),
            unsettled: AtomicUsize::new(0),
            history_unsettled: AtomicUsize::new(0),
            holds_end: AtomicBool::new(false),
            forward,
        });
        let pump = tokio::spawn(pump(core.clone(), shared.clone()));
        let forwarder = tokio::spawn(forwarder(core.clone(), shared, jobs));
        Arc::new(Self { core, tasks: vec![pump, forwarder] })
    }

    pub(crate) fn member(self: &Arc<Self>) -> Member {
        Member { group: self.clone() }
    }

    /// Deliveries this process holds unacked, and whether it holds the history's end marker.
    pub(crate) fn unsettled(&self) -> (u64, bool) {
        let unsettled = self.core.unsettled.load(Ordering::Acquire);
        (u64::try_from(unsettled).unwrap_or(u64::MAX), self.core.holds_end.load(Ordering::Acquire))
    }
}

/// Consumes the group's queues, opening the channel again after failures.
async fn pump(core: Arc<Core>, shared: Arc<Shared>) {
    loop {
        let outcome = tokio::select! {
            outcome = consume(&core, &shared) => outcome,
            () = core.closed.cancelled() => return,
        };
        if let Err(e) = outcome {
            if core.closed.is_cancelled() {
                return;
            }
            if shared.check_open().is_err() {
                // The connection is gone, and with it every channel: the subscription ends.
                warn!(topic = core.topic, error = %e, "the connection to RabbitMQ was lost; the subscription ends");
                core.closed.cancel();
                core.ready.notify_waiters();
                return;
            }
            warn!(topic = core.topic, error = %e, "consuming stopped; opening the channel again");
        }
        core.reset();
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = core.closed.cancelled() => return,
        }
    }
}

/// One channel's life: first the group's history, if it has one, then its partitions.
async fn consume(core: &Core, shared: &Shared) -> Result<()> {
    let channel = shared.channel().await?;
    let prefetch = shared.options.prefetch.max(1);
    let history = core.names.history();
    let has_history = Probe::new(shared).count(&history).await?.is_some();
    if has_history {
        // The history is one queue where the partitions are several: it gets their window.
        let window = u16::try_from(u32::from(prefetch) * core.partitions).unwrap_or(u16::MAX);
        channel.basic_qos(window, BasicQosOptions::default()).await.map_err(|e| core.error(e))?;
        let consumer = subscribe_to(core, &channel, &history).await?;
        catch_up(core, shared, &channel, consumer).await?;
    }
    // A prefetch applies to each consumer started after it on the channel.
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| core.error(e))?;
    let mut consumers = Vec::with_capacity(core.partitions as usize);
    for partition in 0..core.partitions {
        consumers.push(subscribe_to(core, &channel, &core.names.partition(partition)).await?);
    }
    let mut deliveries = futures::stream::select_all(consumers);
    while let Some(next) = deliveries.next().await {
        core.offer(next.map_err(|e| core.error(e))?, false);
    }
    Err(Error::transport(Cancelled(core.names.partition(0))))
}

async fn subscribe_to(core: &Core, channel: &Channel, queue: &str) -> Result<Consumer> {
    channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(|e| core.error(e))
}

/// Delivers the group's history. At its end marker, once every message of it is settled, the
/// history queue is deleted — which also ends the other processes' waiting consumers — and
/// the partitions follow.
async fn catch_up(core: &Core, shared: &Shared, consuming: &Channel, mut consumer: Consumer) -> Result<()> {
    let mut end = None;
    loop {
        let mut settled = pin!(core.settled.notified());
        settled.as_mut().enable();
        if end.is_some() && core.history_unsettled.load(Ordering::Acquire) == 0 {
            // The consumer is cancelled, and its cancel-ok awaited, before the queue goes. A
            // basic.cancel that reaches RabbitMQ 3.10 after its queue was deleted is answered
            // with two cancel-oks; lapin takes the second for a protocol violation
            // (UNEXPECTED_FRAME) and closes the whole connection: every later operation of the
            // bus fails with `Closed`.
            consuming.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await.map_err(|e| core.error(e))?;
            drop(consumer);
            let channel = shared.channel().await?;
            channel
                .queue_delete(core.names.history().as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| core.error(e))?;
            close(channel).await;
            core.holds_end.store(false, Ordering::Release);
            debug!(topic = core.topic, queue = core.names.history(), "history delivered");
            return Ok(());
        }
        tokio::select! {
            next = consumer.next() => match next {
                // Cancelled by the broker: another process delivered the history and deleted it.
                None => return Ok(()),
                Some(Err(e)) => return Err(core.error(e)),
                Some(Ok(delivery)) => {
                    let is_end = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(wire::CONTROL_HEADER).cloned())
                        .is_some_and(|kind| matches!(kind, lapin::types::AMQPValue::LongString(s) if s.as_bytes() == CONTROL_END.as_bytes()));
                    if is_end {
                        // Held unacked: should this process die, the next one finds it.
                        end = Some(delivery);
                        core.holds_end.store(true, Ordering::Release);
                    } else {
                        core.offer(delivery, true);
                    }
                }
            },
            () = settled, if end.is_some() => {}
        }
    }
}

/// Sends the gate's copies, in order, and acks their originals once the broker confirmed them.
async fn forwarder(core: Arc<Core>, shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut channel = None;
    let mut declared = std::collections::HashSet::new();
    while let Some(job) = jobs.recv().await {
        let outcome = match send_copies(&core, &shared, &mut channel, &mut declared, &job.copies).await {
            Ok(()) => {
                for original in &job.originals {
                    if let Err(e) = core.ack_handle(original).await {
                        // The copy is out and the original comes back too: a duplicate.
                        debug!(topic = core.topic, error = %e, "ack after forwarding failed");
                    }
                }
                Ok(())
            }
            Err(e) => {
                warn!(topic = core.topic, error = %e, "forwarding failed; requeueing the originals");
                channel = None;
                for original in &job.originals {
                    core.requeue(original).await;
                }
                Err(e)
            }
        };
        if let Some(reply) = job.reply {
            let _ = reply.send(outcome);
        }
    }
}

async fn send_copies(
    core: &Core,
    shared: &Shared,
    channel: &mut Option<Channel>,
    declared: &mut std::collections::HashSet<u64>,
    copies: &[Copy],
) -> Result<()> {
    let current = match channel {
        Some(current) if current.status().connected() => current.clone(),
        _ => {
            let fresh = shared.confirm_channel().await?;
            declared.clear();
            *channel = Some(fresh.clone());
            fresh
        }
    };
    let now = now_ms();
    let mut confirms = Vec::with_capacity(copies.len());
    for copy in copies {
        let target = core.names.partition(partition_of(&copy.message.key, core.partitions));
        let mut envelope = copy.envelope.clone();
        let exchange = match envelope.not_before.filter(|t| *t > now) {
            Some(due) => {
                let level = level_for(due - now);
                let queue = core.names.delay(level);
                if !declared.contains(&level) {
                    shared.ensure_delay_queue(&current, &core.topic_names, &queue, level).await?;
                    declared.insert(level);
                }
                envelope.wait = Some(queue);
                core.topic_names.wait.clone()
            }
            None => {
                envelope.not_before = None;
                String::new()
            }
        };
        let properties = wire::properties(&copy.message, &envelope)?;
        let confirm = current
            .basic_publish(
                exchange.as_str().into(),
                target.as_str().into(),
                mandatory(),
                &copy.message.payload,
                properties,
            )
            .await
            .map_err(|e| core.error(e))?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        shared.confirmed(confirm).await?;
    }
    Ok(())
}

/// The delay level a wait of `remaining` milliseconds goes through first: the largest that
/// does not overshoot it (the rest is another hop), or the smallest.
fn level_for(remaining: u64) -> u64 {
    DELAY_LEVELS_MS.iter().rev().copied().find(|level| *level <= remaining).unwrap_or(DELAY_LEVELS_MS[0])
}

/// A consumer ended without an error: its queue was deleted.
#[derive(Debug, thiserror::Error)]
#[error("the broker cancelled the consumers of {0} (the queue was deleted)")]
pub struct Cancelled(pub String);

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
                let acker = RabbitAcker {
                    core: core.clone(),
                    key: entry.message.key.clone(),
                    id: entry.id,
                    attempt: entry.attempt,
                    message: entry.message.clone(),
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
struct RabbitAcker {
    core: Arc<Core>,
    key: String,
    id: String,
    attempt: u32,
    /// Kept to send the copy a nack needs.
    message: Message,
    handle: Handle,
    settled: AtomicBool,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<()> {
        self.settled.store(true, Ordering::Release);
        let (core, handle, key, id) = (self.core.clone(), self.handle.clone(), self.key.clone(), self.id.clone());
        // A task of its own, so that a cancelled caller cannot leave the gate unaware of an ack
        // the broker got.
        let task = tokio::spawn(async move {
            core.ack_handle(&handle).await?;
            if core.gate().acked(&key, &id) {
                core.ready.notify_waiters();
            }
            Ok(())
        });
        task.await.map_err(Error::transport)?
    }

    /// Sends a copy with the attempt one higher to wait out `delay` in a delay queue (or, with
    /// no delay, to the back of its partition queue), then acks the original. The key's held
    /// messages follow it, and the key's later arrivals follow them, until it is back.
    async fn nack(&self, delay: Duration) -> Result<()> {
        self.settled.store(true, Ordering::Release);
        let (core, handle, key, id) = (self.core.clone(), self.handle.clone(), self.key.clone(), self.id.clone());
        let (message, attempt) = (self.message.clone(), self.attempt);
        let task = tokio::spawn(async move {
            if !core.is_current(&handle) {
                return Err(Error::Closed);
            }
            let due = now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            let reply = {
                let mut gate = core.gate();
                let Some(held) = gate.nacked(&key, &id, due) else { return Err(Error::Closed) };
                let envelope = Envelope { id, attempt: attempt.saturating_add(1), not_before: Some(due), wait: None };
                let mut copies = vec![Copy { message, envelope }];
                let mut originals = vec![handle];
                for entry in held {
                    let envelope = Envelope { id: entry.id, attempt: entry.attempt, not_before: Some(due), wait: None };
                    copies.push(Copy { message: entry.message, envelope });
                    originals.push(entry.handle);
                }
                let (reply, outcome) = oneshot::channel();
                core.send(Job { copies, originals, reply: Some(reply) })?;
                outcome
            };
            reply.await.map_err(|_| Error::Closed)?
        });
        task.await.map_err(Error::transport)?
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) || !self.core.is_current(&self.handle) {
            return;
        }
        // Dropped unsettled: handed back to its queue, which redelivers it first; until then
        // its key waits.
        self.core.gate().dropped(&self.key, &self.id);
        let (core, handle) = (self.core.clone(), self.handle.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { core.requeue(&handle).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_go_through_the_largest_level_that_fits() {
        for (remaining, level) in
            [(0, 50), (49, 50), (50, 50), (199, 50), (1_000, 1_000), (3_000, 1_000), (60_000, 30_000)]
        {
            assert_eq!(level_for(remaining), level, "{remaining} ms");
        }
        assert_eq!(level_for(u64::MAX), 3_600_000);
    }
}
