//! The consuming side: one Kafka group member per [`Subscription`](weir_core::bus::Subscription),
//! a `BaseConsumer` polled by a thread of its own, feeding the member's [`Window`].
//!
//! Why a thread and `BaseConsumer` rather than `StreamConsumer`: librdkafka runs the rebalance
//! and commit callbacks inside `poll`, on the polling thread. With one thread owning the
//! consumer, fetching, committing, pausing and the revocation's final commit happen in one
//! place, in order, and the revocation can take the window's lock and commit synchronously
//! without blocking a Tokio worker. Members take deliveries from the window and settle them
//! without a round trip to that thread: an ack is a change to the window, and the thread commits
//! the positions it moved every commit interval.

use std::{
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::{
    ClientContext, Message as _, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, KafkaResult},
    message::{BorrowedMessage, Headers as _},
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::bus::{Acker, Delivery, DeliveryStream, Error, Headers, Message, Result};

use crate::{
    log_line,
    names::header_from_kafka,
    window::{Stale, Ticket, Window},
};

/// How long one `poll` may block: also how soon a dropped subscription starts leaving its group.
const POLL: Duration = Duration::from_millis(100);

/// How long one `poll` may block while a partition is paused: acks do not wake the thread, and
/// a paused partition resumes only when the thread looks again.
const POLL_PAUSED: Duration = Duration::from_millis(5);

/// The state one member shares between its consumer thread, its subscription and its deliveries.
pub(crate) struct Core {
    /// The Weir topic, as deliveries name it.
    pub(crate) topic: String,
    /// The Kafka topic it is consumed from.
    kafka_topic: String,
    window: Mutex<Window>,
    /// Signalled when a message may have become ready, or a delay changed.
    ready: Notify,
    /// Cancelled when the subscription is dropped, the bus is closed or the consumer failed.
    stop: CancellationToken,
    /// Becomes true at the member's first assignment (an empty one included).
    assigned: watch::Sender<bool>,
}

impl Core {
    pub(crate) fn new(
        topic: &str,
        kafka_topic: &str,
        wants: Option<weir_core::bus::TypeFilter>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic: topic.to_owned(),
            kafka_topic: kafka_topic.to_owned(),
            window: Mutex::new(Window::new(wants)),
            ready: Notify::new(),
            stop,
            assigned: watch::Sender::new(false),
        })
    }

    pub(crate) fn window(&self) -> MutexGuard<'_, Window> {
        // The window is changed in small steps that leave it consistent; a panic elsewhere while
        // the lock was held must not stop every member.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for the member's first assignment, for at most `within` and not after the member
    /// stopped. Returns whether it came.
    pub(crate) async fn assigned(&self, within: Duration) -> bool {
        let mut assigned = self.assigned.subscribe();
        tokio::select! {
            seen = tokio::time::timeout(within, assigned.wait_for(|assigned| *assigned)) => {
                seen.is_ok_and(|seen| seen.is_ok())
            }
            () = self.stop.cancelled() => false,
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// The consumer's callbacks: they run on the consumer thread, inside `poll` (and inside the
/// close when the consumer is dropped).
pub(crate) struct MemberContext {
    pub(crate) core: Arc<Core>,
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        log_line(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(topic = self.core.topic, %error, reason, "Kafka consumer error");
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                debug!(topic = self.core.topic, ?partitions, "partitions assigned");
                self.core.window().assign(&partitions);
            }
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list);
                // What is contiguously acked is committed now, synchronously, while the
                // partitions are still ours; the rest is forgotten and redelivered to the next
                // owner. Acks that arrive later find their epoch gone and commit nothing.
                let commits = self.core.window().revoke(&partitions);
                debug!(topic = self.core.topic, ?partitions, ?commits, "partitions revoked");
                if !commits.is_empty()
                    && let Err(e) = commit(consumer, &commits, CommitMode::Sync)
                {
                    warn!(topic = self.core.topic, error = %e, "commit at revocation failed; redelivering");
                }
            }
            Rebalance::Error(e) => warn!(topic = self.core.topic, error = %e, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // A partition paused under an earlier assignment starts this one fetching.
            if list.count() > 0
                && let Err(e) = consumer.resume(list)
            {
                debug!(topic = self.core.topic, error = %e, "resume after assignment failed");
            }
            self.core.assigned.send_replace(true);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            debug!(topic = self.core.topic, error = %e, "commit failed; retrying at the next interval");
            let mut window = self.core.window();
            for element in offsets.elements() {
                window.commit_failed(element.partition());
            }
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|element| element.partition()).collect()
}

fn commit(consumer: &BaseConsumer<MemberContext>, commits: &[(i32, i64)], mode: CommitMode) -> KafkaResult<()> {
    let topic = &consumer.context().core.kafka_topic;
    let mut list = TopicPartitionList::with_capacity(commits.len());
    for (partition, offset) in commits {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, mode)
}

/// Settings of the consumer thread.
pub(crate) struct Pacing {
    pub(crate) commit_interval: Duration,
    /// Fetching of a partition pauses while the window holds this many of its messages.
    pub(crate) max_buffered: usize,
}

/// The consumer thread: fetches into the window, commits what the window says, pauses full
/// partitions; when the subscription goes away, closes the consumer, which leaves the group
/// (the revocation commits the acked prefix) so the partitions go to the other members at once.
pub(crate) fn run(consumer: BaseConsumer<MemberContext>, core: Arc<Core>, pacing: Pacing) {
    let mut last_commit = Instant::now();
    let mut paused = false;
    while !core.stop.is_cancelled() {
        match consumer.poll(if paused { POLL_PAUSED } else { POLL }) {
            Some(Ok(message)) => {
                let (partition, offset, message) = decode(&message);
                if core.window().receive(partition, offset, message) {
                    core.ready.notify_waiters();
                }
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                warn!(topic = core.topic, error = %code, "fatal consumer error; the subscription ends");
                core.stop.cancel();
            }
            Some(Err(e)) => debug!(topic = core.topic, error = %e, "consumer error"),
            None => {}
        }
        if last_commit.elapsed() >= pacing.commit_interval {
            last_commit = Instant::now();
            let commits = core.window().due_commits();
            if !commits.is_empty()
                && let Err(e) = commit(&consumer, &commits, CommitMode::Async)
            {
                debug!(topic = core.topic, error = %e, "commit failed to start");
                let mut window = core.window();
                for (partition, _) in &commits {
                    window.commit_failed(*partition);
                }
            }
        }
        let (pause, resume) = {
            let mut window = core.window();
            let flow = window.flow(pacing.max_buffered);
            paused = window.any_paused();
            flow
        };
        flow(&consumer, &core, &pause, true);
        flow(&consumer, &core, &resume, false);
    }
    core.ready.notify_waiters();
    // Dropping the consumer closes it: the revocation runs (committing the acked prefix) and
    // the member leaves the group.
    drop(consumer);
    debug!(topic = core.topic, "member left its group");
}

fn flow(consumer: &BaseConsumer<MemberContext>, core: &Core, partitions: &[i32], pause: bool) {
    if partitions.is_empty() {
        return;
    }
    let result = consumer.assignment().and_then(|assignment| {
        let mut list = TopicPartitionList::new();
        for element in assignment.elements() {
            if partitions.contains(&element.partition()) {
                list.add_partition(element.topic(), element.partition());
            }
        }
        if pause { consumer.pause(&list) } else { consumer.resume(&list) }
    });
    if let Err(e) = result {
        debug!(topic = core.topic, error = %e, pause, "pause or resume failed");
    }
}

/// A fetched record as a Weir message: the record key as the key (UTF-8, lossily), headers
/// renamed back from the CloudEvents Kafka binding (`ce_type` → `ce-type`).
fn decode(record: &BorrowedMessage<'_>) -> (i32, i64, Message) {
    let key = record.key().map(|key| String::from_utf8_lossy(key).into_owned()).unwrap_or_default();
    let mut headers = Headers::new();
    if let Some(list) = record.headers() {
        for header in list.iter() {
            let value = header.value.map(|value| String::from_utf8_lossy(value).into_owned()).unwrap_or_default();
            headers.insert(header_from_kafka(header.key), value);
        }
    }
    let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
    (record.partition(), record.offset(), Message { key, headers, payload })
}

/// One group member: what a [`weir_core::bus::Subscription`] wraps. Dropping it stops the
/// consumer thread, which leaves the group.
pub(crate) struct Member {
    pub(crate) core: Arc<Core>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.core.stop.cancel();
    }
}

#[async_trait]
impl DeliveryStream for Member {
    async fn next(&mut self) -> Option<Delivery> {
        let core = &self.core;
        loop {
            // Registered before looking, so that a message made ready in between wakes us.
            let mut ready = pin!(core.ready.notified());
            ready.as_mut().enable();
            if core.stop.is_cancelled() {
                return None;
            }
            // Taking is synchronous: a cancelled `next` loses nothing.
            let (taken, due) = {
                let mut window = core.window();
                let taken = window.take(Instant::now());
                (taken, window.next_due())
            };
            if let Some(taken) = taken {
                let acker = KafkaAcker { core: core.clone(), ticket: taken.ticket, settled: AtomicBool::new(false) };
                return Some(Delivery::new(core.topic.clone(), taken.message, taken.attempt, acker));
            }
            let sleep = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ready => {}
                () = sleep => {}
                () = core.stop.cancelled() => return None,
            }
        }
    }
}

/// Settles one delivery in its member's window.
struct KafkaAcker {
    core: Arc<Core>,
    ticket: Ticket,
    settled: AtomicBool,
}

impl KafkaAcker {
    fn outcome(&self, stale: Stale) -> Result<()> {
        match stale {
            // The partition went to another member (which redelivers the message) or the
            // subscription is gone.
            Stale::Revoked if self.core.stop.is_cancelled() => Err(Error::Closed),
            Stale::Revoked => {
                debug!(topic = self.core.topic, ticket = ?self.ticket, "settled after its partition was revoked");
                Ok(())
            }
            Stale::Settled => Ok(()),
        }
    }
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(&self) -> Result<()> {
        self.settled.store(true, Ordering::Relaxed);
        let acked = self.core.window().ack(self.ticket);
        match acked {
            Ok(released) => {
                if released {
                    self.core.ready.notify_waiters();
                }
                Ok(())
            }
            Err(stale) => self.outcome(stale),
        }
    }

    async fn nack(&self, delay: Duration) -> Result<()> {
        self.settled.store(true, Ordering::Relaxed);
        let nacked = self.core.window().nack(self.ticket, delay, Instant::now());
        match nacked {
            Ok(()) => {
                // Waiting members recompute when to look again.
                self.core.ready.notify_waiters();
                Ok(())
            }
            Err(stale) => self.outcome(stale),
        }
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            // Dropped unsettled: handed out again at once, one attempt higher.
            let dropped = self.core.window().nack(self.ticket, Duration::ZERO, Instant::now());
            if dropped.is_ok() {
                self.core.ready.notify_waiters();
            }
        }
    }
}
