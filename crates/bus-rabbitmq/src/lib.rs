//! RabbitMQ transport for Weir: [`RabbitBus`] implements the bus ports
//! ([`weir_core::bus::Publisher`] and [`weir_core::bus::Subscriber`]) over quorum queues, a
//! stream per topic and publisher confirms, with AMQP 0-9-1 ([`lapin`]). It is only a
//! transport: it moves [`Message`]s and knows nothing of events, routing, retries or dead
//! letters — the router decides those from [`Delivery::attempt`](weir_core::bus::Delivery::attempt).
//! It needs no plugin and no management API: a stock RabbitMQ ≥ 3.10 (quorum queues with
//! message TTL and at-least-once dead-lettering, streams) does.
//!
//! # Mapping
//!
//! - A **topic** is a durable *topic exchange* `<prefix>.t.<topic>.<hash>` and a *stream*
//!   queue `….log` bound to it with `#`: the topic's **log**, which keeps every message for
//!   groups that join later (its retention is [`Options::max_age`]; by default it keeps all).
//!   Names carry a hash of the exact topic, because RabbitMQ names are limited to 255 bytes and
//!   `a.b` must not meet `a_b`.
//! - A **message** is routed by its **partition**,
//!   [`weir_core::bus::partition_of`]`(key, `[`Options::partitions`]`)`, as the routing key
//!   `"0"`, `"1"`, …. The key travels in the `weir-key` header (without one, the
//!   `cloudEvents:subject` is the key), a transport message id in the `message-id` property.
//! - A **group** has one durable **quorum queue per partition**, `….g.<group>.<hash>.p<n>`,
//!   bound to the topic exchange with its partition's routing key and declared with
//!   `x-single-active-consumer`: the broker hands a partition to one consumer at a time, and to
//!   the next when that one goes. Every group bound to a topic receives every message; the
//!   members of one group in one process share one channel and one gate, and take turns
//!   (that is the load sharing).
//! - **Publish** sends the batch on a confirm-mode channel as persistent, *mandatory* messages
//!   and returns when the broker has confirmed every one of them. A confirm for a message
//!   routed to quorum queues and a stream comes once all of them hold it, so `Ok` means: in the
//!   log and in the partition queue of every group that exists. A mandatory message that no
//!   queue took (the topic's objects were deleted) comes back and fails the publish. The batch
//!   runs as its own task, so a caller that drops the future does not cut it in half.
//!
//! ## CloudEvents: the AMQP protocol binding, binary mode
//!
//! A header `ce-<attribute>` travels as the AMQP header `cloudEvents:<attribute>`: the
//! binding names application properties with that prefix, and AMQP 0-9-1's headers table takes
//! their place. `content-type` travels as the message's `content-type` property (the binding's
//! `datacontenttype`); other headers under their own names. Values are AMQP long strings, so
//! their bytes — CR, LF, blanks, any UTF-8 — arrive exactly. When reading, both `cloudEvents:`
//! and `cloudEvents_` (the form the binding allows for JMS clients, which cannot use `:`) map
//! back to `ce-`, and values of other AMQP types (from other publishers) are read as text.
//! The adapter's own headers (`weir-key`, `weir-attempt`, `weir-not-before`, `weir-control`,
//! `weir-wait`), names starting with `x-`, `cloudEvents:` or `cloudEvents_`, `CC` and `BCC` are
//! refused on publish: they would steer this adapter or the broker. Other `weir-*` headers,
//! such as the router's `weir-dlq-reason` on a dead letter, travel like any other header.
//!
//! ## Clients outside Weir
//!
//! A program that is not Weir — another language's AMQP client — reads and writes a topic
//! through its exchange; the group queues belong to Weir's groups and are not for it.
//!
//! - **Names.** The exchange is `<prefix>.t.<topic>.<hash>`: the topic cut to its first 80
//!   bytes, and `<hash>` the 64-bit FNV-1a hash of the whole topic as 16 lower-case hex digits;
//!   the log is the exchange's name plus `.log`. Both exist once a Weir process has published to
//!   or subscribed to the topic.
//! - **Reading.** Every message of the topic, from the start: consume the log (a stream:
//!   `basic.qos` with a prefetch, `basic.consume` with the argument `x-stream-offset` = `first`
//!   — or an offset or time to start later — and an ack per message, which only returns credit)
//!   and skip the messages that carry a `weir-control` header, the adapter's markers. The
//!   client keeps its own position. For only the messages from now on, with acks and
//!   redelivery, bind a queue of its own to the exchange with the binding key `#`.
//! - **Publishing.** In binary mode, as a persistent message: the attributes as
//!   `cloudEvents:<attribute>` headers (strings), the content type as the `content-type`
//!   property, the data as the body. The routing key is the partition as a decimal number:
//!   the 64-bit FNV-1a hash of the key — the event's subject — modulo [`Options::partitions`]
//!   ([`weir_core::bus::partition_of`]; Weir's deployments must tell outside producers their
//!   partition count). A message without a `weir-key` header is keyed by its
//!   `cloudEvents:subject`. A message with any other routing key reaches the log but no
//!   group: publish with `mandatory` and publisher confirms, and check the routing key.
//!
//! # A group that joins late: the history
//!
//! RabbitMQ queues do not keep messages for consumers that do not exist yet, and Weir's
//! contract wants a new group to start at the beginning of the topic. So the first subscription
//! of a group *creates* it, once, under a lock (an exclusive queue `….lock`, held by one
//! connection at a time):
//!
//! 1. a durable marker queue `….creating` says the creation is under way;
//! 2. the partition queues are declared and bound — from now on they receive every message;
//! 3. a **cut** marker is published to the log: every message before it in the log was routed
//!    before step 2 finished;
//! 4. the log is read from its first message to the cut and copied into the group's
//!    **history** queue (a quorum queue, single active consumer), followed by an end marker;
//! 5. the `creating` queue is deleted.
//!
//! Members deliver the history first; when its end marker is reached and every message of it
//! is settled, the member deletes the history queue (which also ends the waiting consumers of
//! other processes) and turns to the partition queues. A creator that dies halfway leaves
//! `creating` behind, and the next creator copies the history again. Groups that already
//! exist when the topic is first published to — Weir's usual case, services subscribe at start
//! — have no history at all.
//!
//! The cost: a group created on a long topic copies all of it (time in `subscribe`, and the
//! space of a second copy until it is consumed), and the log keeps every message as long as
//! [`Options::max_age`] allows even when every group has consumed it. Messages published while
//! step 3 is under way can reach the group twice (in the history and in a partition): at least
//! once allows that. One race is not closed: a message whose publisher's channel routed it
//! *before* the partition queues were bound but whose write reaches the log *after* the cut —
//! on one node that needs the broker to preempt the routing channel between its routing decision
//! and its write for longer than the round trip of the bind and the cut — would be missed by
//! the new group.
//!
//! # Ordering and the per-key gate
//!
//! A partition queue is FIFO and has one active consumer, so a group's messages of one key
//! reach one process in publish order. There, a gate hands out one message per key at a time,
//! the next only after the previous one was acked; later arrivals of the key wait in memory
//! (unacked, within the prefetch window). Other keys are never held.
//!
//! **Nack with a delay** holds no consumer and no prefetch slot. The nacked message is copied,
//! with `weir-attempt` one higher and a `weir-not-before` time, to a **delay queue** of the
//! group, and the original is acked once the broker confirmed the copy. A delay queue is a
//! quorum queue with one TTL for all its messages (`x-message-ttl`; one TTL per queue keeps it
//! FIFO, so a long delay never blocks a short one) that dead-letters, *at least once*, through
//! the default exchange back to the partition queue that the copy's routing key names. There
//! is one per level — 50 ms, 200 ms, 1 s, 5 s, 30 s, 2 min, 10 min, 1 h — declared on first use
//! and reached through the topic's headers exchange `….wait`. A delay is served by hops: the
//! largest level that does not overshoot what remains, again until `weir-not-before` has
//! passed; a nack is never redelivered early. A nack without delay sends the copy straight to
//! the back of the partition queue.
//!
//! Meanwhile the key is *away*: its held messages follow the nacked one to the same delay, in
//! order, and so does every later arrival of the key, until the messages come back. The gate
//! lets them in strictly in the order they left; one that comes back out of turn or early is
//! sent round again. So a nacked message holds back exactly its own key, and what it holds back
//! waits in the broker, durable, not in this process's memory.
//!
//! [`Delivery::attempt`](weir_core::bus::Delivery::attempt) is `weir-attempt` (the nacks) plus
//! the quorum queue's `x-delivery-count` (the broker's returns: a delivery dropped unsettled is
//! handed back at once with `basic.reject(requeue)`, and a closed channel's unacked deliveries
//! are returned by the broker). Dropping a [`Subscription`]'s last member of a group in this
//! process closes the group's channel, so its unacked deliveries go back to the queues
//! immediately — there is no lease to wait for.
//!
//! Guarantees, precisely:
//!
//! - Within one group, a key's messages are handed out in publish order, one at a time, each
//!   after the previous one was acked; a nacked or dropped message is redelivered before any
//!   later message of its key; other keys flow on. Across processes too: a partition is
//!   consumed by one process at a time.
//! - Which messages are away is known only to the process that sent them. If the partition's
//!   active consumer changes while a key is away (the process died or dropped its group), the
//!   messages already sent away return in their order — each carries its not-before time, and a
//!   delayed message leads its key in the new process until it is due — but a message of the key
//!   that reaches the partition queue after the change can overtake them.
//! - RabbitMQ 3.10 makes the *first* registered consumer of a queue its active one, so all
//!   partitions of a group usually go to the process that subscribed first; a second process
//!   is a hot standby, not a second worker. Load sharing is among the members of one process.
//!
//! # Lag
//!
//! [`Subscriber::lag`] adds the ready messages of the group's
//! partition, history and delay queues (passive declarations; AMQP reports ready messages
//! only, and the management API is not assumed) and the deliveries **this process** holds
//! unacked (in its gate, with members, or on their way to a delay queue). Deliveries unacked in
//! *another* process are not counted: the count is exact when one process consumes the group
//! (the normal case with single active consumers), and low by the other process's prefetch
//! otherwise. A message on its way to a delay queue can count twice for a moment. A topic
//! without a log has no lag; a group that does not exist lags by every message of the log,
//! which is counted by reading the log to its end (where the broker falls quiet for 250 ms, at
//! most 5 s): a cost proportional to the log, paid only for groups that never subscribed.
//!
//! # Durability
//!
//! `publish` returns `Ok` once the broker confirmed every message: for quorum queues that is
//! after the Raft log entry was written and fsynced (RabbitMQ's default) on a majority of the
//! queue's members. Settled state survives a broker restart: the queues and their messages are
//! durable, acks are part of the quorum queues' log.
//!
//! - **A single node** — the Debian package on this machine, RabbitMQ 3.10.8 — has quorum
//!   queues with one member: an acknowledged message survives a crash of the broker and a power
//!   cut (fsynced), but not the loss of the disk. Streams write without an fsync per message and
//!   count on replication instead, so on one node a power cut can lose the last messages of a
//!   **log** (the history of groups created later), not those already in existing groups'
//!   partition queues.
//! - **Production** runs a cluster of three (or five) nodes: quorum queues and streams then
//!   replicate to every node (RabbitMQ's default initial group size), and an acknowledged
//!   message is lost only if a majority of them fails at once.
//! - Redelivery after a broker restart: the connection is lost, the bus closes (subscriptions
//!   end, operations fail with [`Error::Closed`]) and every unacked delivery is back in its
//!   queue. This crate does not reconnect by itself: the process builds a new [`RabbitBus`]
//!   (Weir's services exit and are restarted).
//!
//! # Limits
//!
//! - Every process must use the same [`Options::partitions`] for a topic; changing it moves keys
//!   to other partitions (and the group queues of the old count stay as they are).
//! - A message may hold at most [`Options::max_message_bytes`] (RabbitMQ 3.10's default
//!   `max_message_size`, 128 MiB); header names at most 255 bytes. A `content-type` longer than
//!   255 bytes travels as a header instead of the property.
//! - Each group costs `partitions` quorum queues, plus a history while it catches up and a delay
//!   queue per level it used; each topic a stream and two exchanges. Creating a quorum queue
//!   takes 10–20 ms here.
//! - [`Subscriber::subscribe_filtered`] is not
//!   specialised: every message is delivered and the consumer filters.
//! - Deleting what a test or a retired service created: [`RabbitBus::delete_group`] and
//!   [`RabbitBus::delete_topic`]; [`Options::queue_expiry`] lets the broker remove forgotten
//!   queues of tests.

mod gate;
mod names;
mod subscribe;
mod topology;
mod wire;

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use lapin::{Channel, Connection, ConnectionProperties, options::ConfirmSelectOptions};
use tokio_util::sync::CancellationToken;
use weir_core::bus::{
    Capabilities, Error, Message, Publisher, Result, Subscriber, Subscription, partition_of, validate_name,
};

use crate::{
    names::{TopicNames, routing_key},
    subscribe::Group,
    topology::{CreationLock, mandatory},
    wire::Envelope,
};
pub use crate::{
    topology::{LogEnded, Refused, Unroutable},
    wire::InvalidHeader,
};

/// Settings of a [`RabbitBus`]. Queue settings apply when this bus creates a queue: existing
/// queues keep theirs (RabbitMQ refuses a declaration with other arguments).
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of every exchange and queue, so that deployments and tests sharing a broker
    /// stay apart: letters, digits, '-' and '_', at most 64 bytes. Default `weir`.
    pub prefix: String,
    /// Partition queues per group: the key hashes to one of them
    /// ([`weir_core::bus::partition_of`]). Every process using a topic must agree on it.
    /// Default 4.
    pub partitions: u32,
    /// Unacked deliveries the broker hands this process per partition queue. Default 128.
    pub prefetch: u16,
    /// How long a topic's log keeps messages for groups that join later; zero keeps them until
    /// the topic is deleted. Default zero.
    pub max_age: Duration,
    /// Queues unused this long are deleted by the broker (`x-expires`); for tests. Default
    /// `None`: never.
    pub queue_expiry: Option<Duration>,
    /// The largest message this bus publishes: RabbitMQ 3.10's default `max_message_size`,
    /// 128 MiB. Larger ones fail with [`Error::TooLarge`].
    pub max_message_bytes: usize,
    /// How long [`RabbitBus::connect`] waits for the broker. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "weir".to_owned(),
            partitions: 4,
            prefetch: 128,
            max_age: Duration::ZERO,
            queue_expiry: None,
            max_message_bytes: 128 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Default options under another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}

/// A RabbitMQ connection that publishes and subscribes. Cheap to clone: clones share the
/// connection, the topics and groups known to exist and the per-group gates.
#[derive(Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

/// What clones of a [`RabbitBus`] share.
pub(crate) struct Shared {
    connection: Connection,
    options: Options,
    /// The channel publishes go out on, in confirm mode; replaced when it fails.
    publish_channel: tokio::sync::Mutex<Option<Channel>>,
    /// Topics whose exchanges and log this bus declared.
    topics: Mutex<HashSet<String>>,
    /// Groups this bus found or created on the broker.
    known_groups: Mutex<HashSet<(String, String)>>,
    creating: Mutex<HashMap<(String, String), CreationLock>>,
    /// The live gate of each (topic, group), so that members in this process share it.
    groups: Mutex<HashMap<(String, String), Weak<Group>>>,
    closed: CancellationToken,
    ids: Ids,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus").field("options", &self.shared.options).finish_non_exhaustive()
    }
}

/// The broker could not be reached or refused the connection.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to RabbitMQ at {url}: {reason}")]
pub struct ConnectFailed {
    /// The URL without its password.
    pub url: String,
    pub reason: String,
}

impl RabbitBus {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`). Fails at once
    /// when the broker is unreachable or refuses the login, and after
    /// [`Options::connect_timeout`] when it does not answer.
    pub async fn connect(url: &str, options: Options) -> Result<Self> {
        names::validate_prefix(&options.prefix)?;
        if options.partitions == 0 {
            return Err(Error::InvalidName("partitions must be at least 1".to_owned()));
        }
        let failed = |reason: String| Error::transport(ConnectFailed { url: redact(url), reason });
        let properties = ConnectionProperties::default().with_connection_name("weir-bus-rabbitmq".into());
        let connection = match tokio::time::timeout(options.connect_timeout, Connection::connect(url, properties)).await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no answer within {:?}", options.connect_timeout))),
        };
        let shared = Shared {
            connection,
            options,
            publish_channel: tokio::sync::Mutex::new(None),
            topics: Mutex::default(),
            known_groups: Mutex::default(),
            creating: Mutex::default(),
            groups: Mutex::default(),
            closed: CancellationToken::new(),
            ids: Ids::new(),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The exchange a topic is published to, for operators and tests.
    pub fn exchange_name(&self, topic: &str) -> String {
        TopicNames::new(&self.shared.options.prefix, topic).exchange
    }

    /// The stream queue that retains a topic's messages for groups that join later.
    pub fn log_name(&self, topic: &str) -> String {
        TopicNames::new(&self.shared.options.prefix, topic).log
    }

    /// The queue of one partition of a group.
    pub fn partition_queue_name(&self, topic: &str, group: &str, partition: u32) -> String {
        TopicNames::new(&self.shared.options.prefix, topic).group(group).partition(partition)
    }

    /// Deletes a group's queues with their messages. For tests and operators; the group's next
    /// subscription creates it anew, from the beginning of the topic's log.
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        validate_name(topic)?;
        validate_name(group)?;
        let names = TopicNames::new(&self.shared.options.prefix, topic);
        self.shared.known_groups_lock().remove(&(topic.to_owned(), group.to_owned()));
        self.shared.delete_group_queues(&names, &names.group(group)).await
    }

    /// Deletes a topic's log and exchanges with its messages. Its groups' queues stay (delete
    /// them with [`delete_group`](Self::delete_group)) but receive nothing more.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        validate_name(topic)?;
        self.shared.topics_lock().remove(topic);
        self.shared.delete_topic_objects(&TopicNames::new(&self.shared.options.prefix, topic)).await
    }

    /// Closes the bus and every clone of it: subscriptions end (`next` returns `None`), their
    /// unacked deliveries go back to their queues, publish and later acks fail with
    /// [`Error::Closed`].
    pub async fn close(&self) {
        self.shared.closed.cancel();
        if let Err(e) = self.shared.connection.close(200, "closed".into()).await {
            tracing::debug!(error = %e, "closing the RabbitMQ connection failed");
        }
    }
}

impl Shared {
    fn topics_lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn known_groups_lock(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.known_groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn groups_lock(&self) -> MutexGuard<'_, HashMap<(String, String), Weak<Group>>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn creation_lock(&self, id: &(String, String)) -> CreationLock {
        let mut creating = self.creating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        creating.retain(|_, lock| Arc::strong_count(lock) > 1);
        creating.entry(id.clone()).or_default().clone()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() || !self.connection.status().connected() { Err(Error::Closed) } else { Ok(()) }
    }

    pub(crate) fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        if self.closed.is_cancelled() || !self.connection.status().connected() {
            Error::Closed
        } else {
            Error::transport(e)
        }
    }

    pub(crate) async fn channel(&self) -> Result<Channel> {
        self.check_open()?;
        self.connection.create_channel().await.map_err(|e| self.error(e))
    }

    pub(crate) async fn confirm_channel(&self) -> Result<Channel> {
        let channel = self.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| self.error(e))?;
        Ok(channel)
    }

    async fn publish_channel(&self) -> Result<Channel> {
        let mut current = self.publish_channel.lock().await;
        match current.as_ref() {
            Some(channel) if channel.status().connected() => Ok(channel.clone()),
            _ => {
                let channel = self.confirm_channel().await?;
                *current = Some(channel.clone());
                Ok(channel)
            }
        }
    }

    pub(crate) fn new_id(&self) -> String {
        self.ids.next()
    }
}

/// Message ids: a random 64-bit base per bus and a counter, unique across processes.
struct Ids {
    base: u64,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        let base = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
        Self { base, next: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        format!("{:016x}{:08x}", self.base, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// `url` without the password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

const CAPABILITIES: Capabilities = Capabilities::ALL;

#[async_trait]
impl Publisher for RabbitBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        // Every message is encoded before any is sent: a bad one fails the whole batch.
        let limit = shared.options.max_message_bytes;
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            if message.payload.len() > limit {
                return Err(Error::TooLarge { size: message.payload.len(), limit });
            }
            let envelope = Envelope { id: shared.new_id(), attempt: 1, ..Envelope::default() };
            let properties = wire::properties(&message, &envelope)?;
            let partition = partition_of(&message.key, shared.options.partitions);
            batch.push((routing_key(partition), properties, message.payload));
        }
        let names = shared.ensure_topic(topic).await?;
        let task_shared = shared.clone();
        let task_topic = topic.to_owned();
        // A task of its own, so that dropping this future neither stops a batch halfway nor
        // leaves confirms unawaited.
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let channel = shared.publish_channel().await?;
            let mut confirms = Vec::with_capacity(batch.len());
            for (routing_key, properties, payload) in batch {
                let confirm = channel
                    .basic_publish(
                        names.exchange.as_str().into(),
                        routing_key.as_str().into(),
                        mandatory(),
                        &payload,
                        properties,
                    )
                    .await
                    .map_err(|e| shared.error(e))?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                if let Err(e) = shared.confirmed(confirm).await {
                    // The topology may have been deleted behind our back: declare it again next time.
                    shared.topics_lock().remove(&task_topic);
                    return Err(e);
                }
            }
            Ok(())
        });
        task.await.map_err(Error::transport)?
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

#[async_trait]
impl Subscriber for RabbitBus {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        validate_name(group)?;
        let key = (topic.to_owned(), group.to_owned());
        let existing = shared.groups_lock().get(&key).and_then(Weak::upgrade);
        if let Some(live) = existing {
            return Ok(Subscription::new(live.member()));
        }
        let names = shared.ensure_topic(topic).await?;
        shared.ensure_group(&names, topic, group).await?;
        // Checked again under the lock: another member may have started the group meanwhile.
        let mut groups = shared.groups_lock();
        groups.retain(|_, weak| weak.strong_count() > 0);
        let live = match groups.get(&key).and_then(Weak::upgrade) {
            Some(live) => live,
            None => {
                let live = Group::start(shared.clone(), topic, names.clone(), names.group(group));
                groups.insert(key, Arc::downgrade(&live));
                live
            }
        };
        Ok(Subscription::new(live.member()))
    }

    /// The ready messages of the group's partition, history and delay queues, plus the
    /// deliveries this process holds unacked. See the crate documentation for what it misses.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        validate_name(group)?;
        let names = TopicNames::new(&shared.options.prefix, topic);
        let live = shared.groups_lock().get(&(topic.to_owned(), group.to_owned())).and_then(Weak::upgrade);
        let (unacked, end_held_here) = live.as_ref().map_or((0, false), |g| g.unsettled());
        let broker = shared.broker_lag(&names, &names.group(group), end_held_here).await?;
        Ok(broker + unacked)
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn ids_are_unique() {
        let ids = Ids::new();
        let other = Ids::new();
        let first = ids.next();
        assert_ne!(first, ids.next());
        assert_ne!(first, other.next());
    }
}
