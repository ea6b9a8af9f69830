//! Bus ports: [`Publisher`] and [`Subscriber`], the contract every transport implements.
//!
//! A transport moves [`Message`]s — headers plus an opaque payload — between topics and
//! consumer groups. It knows nothing about events: the CloudEvents binary-mode mapping
//! ([`crate::Event::to_message`]) turns an event into a message and back.
//!
//! # The contract (checked by `weir-testkit`'s conformance suite)
//!
//! - **Durability.** When [`Publisher::publish`] returns `Ok`, every message of the batch is
//!   stored durably (for persistent transports) and will be delivered to every consumer group
//!   subscribed to the topic, now or later.
//! - **Consumer groups.** Each group receives every message of the topic; the members of one
//!   group share the load (each message goes to one member at a time).
//! - **At least once.** A delivery that is neither acked nor nacked — because the subscription
//!   was dropped, or the process died — is redelivered, to this or another member of its group.
//!   Consumers must therefore be idempotent (the router's inbox does that).
//! - **Order per key.** Within one group, messages with the same [`Message::key`] are delivered in
//!   publish order, and a message is not delivered before the earlier messages of its key are
//!   acked. A nacked message holds back only the later messages of its own key; other keys of the
//!   group flow on.
//! - **Nack with a delay** hands the message back; it is redelivered no sooner than the delay,
//!   with [`Delivery::attempt`] one higher.
//! - **Thread safety.** Publishers and subscribers are `Send + Sync` and cheap to share
//!   behind an `Arc`; a [`Subscription`] is owned by one task, and its deliveries may be acked
//!   from any task.
//! - **Lag.** [`Subscriber::lag`] counts the messages of a topic that a group has not settled
//!   yet — never delivered, delivered and unacked, or waiting for a redelivery after a nack —
//!   as the broker knows it: a count may trail an ack by the transport's commit interval. A
//!   group that never subscribed lags by every retained message; a topic never published to
//!   has no lag.
//! - **Cancellation.** Dropping the future of `publish` before it returns leaves the batch either
//!   wholly published or not at all. Dropping a [`Subscription`] stops delivery; its unacked
//!   deliveries are redelivered later. Acking a delivery after its subscription was dropped is
//!   allowed and may fail with [`Error::Closed`].

mod routed;

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

pub use self::routed::{Pattern, Routed, Transport};

/// Message headers: CloudEvents binary-mode attributes (`ce-*`) and transport metadata.
pub type Headers = BTreeMap<String, String>;

/// What a transport moves: an ordering key, headers and an opaque payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The ordering and partitioning key (the event's `subject`, usually an aggregate id).
    pub key: String,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(key: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { key: key.into(), headers: Headers::new(), payload: payload.into() }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// What a transport guarantees; the router and the conformance suite read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages of one key reach a group in publish order.
    pub ordered_per_key: bool,
    /// Published messages survive a restart of the broker and of the process.
    pub persistent: bool,
    /// Several groups each get every message; members of a group share them.
    pub consumer_groups: bool,
    /// `nack(delay)` is honoured by the transport, without holding a consumer.
    pub delayed_redelivery: bool,
}

impl Capabilities {
    /// Every guarantee: what a transport that passes the conformance suite declares.
    pub const ALL: Self =
        Capabilities { ordered_per_key: true, persistent: true, consumer_groups: true, delayed_redelivery: true };
}

/// Errors of bus operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the transport is closed")]
    Closed,
    #[error("invalid topic or group name {0:?}: use letters, digits, '.', '-' and '_'")]
    InvalidName(String),
    #[error("message of {size} bytes exceeds the transport's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("transport error: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn transport(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Transport(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks a topic or group name: non-empty, at most 200 bytes, `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok { Ok(()) } else { Err(Error::InvalidName(name.to_owned())) }
}

/// Publishes batches of messages to a topic.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `messages` to `topic`, in order. Returns once all of them are durable.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()>;

    fn capabilities(&self) -> Capabilities;
}

/// Opens subscriptions: a topic plus a consumer group.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Joins `group` on `topic`. The group's position survives restarts: a new group starts at
    /// the beginning of the topic's retained messages.
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription>;

    /// Like [`subscribe`](Self::subscribe), for a member that acts only on some event types:
    /// a message whose `ce-type` header `wants` refuses may be settled by the transport itself,
    /// in order with its key, without being delivered — it saves the trip to the consumer and
    /// back for messages the consumer would only ack. Messages without the header are
    /// delivered. Transports that cannot filter deliver everything (this default), so the
    /// consumer must still check.
    async fn subscribe_filtered(&self, topic: &str, group: &str, wants: TypeFilter) -> Result<Subscription> {
        let _ = wants;
        self.subscribe(topic, group).await
    }

    /// How many messages of `topic` `group` has not settled yet (see the contract's **Lag**):
    /// the `weir_consumer_lag` gauge. Asking creates nothing: an unknown topic or group is
    /// answered from what the broker holds.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64>;

    fn capabilities(&self) -> Capabilities;
}

/// Which CloudEvents types (`ce-type`) a member acts on; see [`Subscriber::subscribe_filtered`].
pub type TypeFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The header a binary-mode CloudEvent names its type in.
pub const TYPE_HEADER: &str = "ce-type";

/// Whether `wants` refuses `message` by its type header (a message without one is wanted).
pub fn refused_by(wants: impl Fn(&str) -> bool, message: &Message) -> bool {
    refuses_type(wants, message.headers.get(TYPE_HEADER).map(String::as_str))
}

/// [`refused_by`]'s rule for a type header's value, for a transport that reads it without
/// building the message.
pub fn refuses_type(wants: impl Fn(&str) -> bool, kind: Option<&str>) -> bool {
    kind.is_some_and(|kind| !wants(kind))
}

/// A stream of deliveries for one member of a consumer group.
pub struct Subscription {
    inner: Box<dyn DeliveryStream>,
}

impl Subscription {
    pub fn new(inner: impl DeliveryStream) -> Self {
        Self { inner: Box::new(inner) }
    }

    /// The next delivery; `None` once the transport is closed. Cancel-safe: dropping the future
    /// loses no message.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.inner.next().await
    }
}

/// What a transport implements behind a [`Subscription`].
#[async_trait]
pub trait DeliveryStream: Send + 'static {
    /// Must be cancel-safe.
    async fn next(&mut self) -> Option<Delivery>;
}

/// Settles a delivery; implemented by each transport.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    async fn ack(&self) -> Result<()>;
    async fn nack(&self, delay: Duration) -> Result<()>;
}

/// One message handed to one member of a group. Settle it with [`ack`](Self::ack) or
/// [`nack`](Self::nack); dropping it unsettled means it is redelivered later.
pub struct Delivery {
    pub topic: String,
    pub message: Message,
    /// 1 on first delivery, then one more for each redelivery the transport knows of.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(topic: String, message: Message, attempt: u32, acker: impl Acker) -> Self {
        Self { topic, message, attempt, acker: Box::new(acker) }
    }

    /// Marks the message done for this group.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Hands the message back, to be redelivered no sooner than `delay`.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        self.acker.nack(delay).await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// What a dead-letter topic's name ends with.
const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}{DEAD_LETTER_SUFFIX}")
}

/// The topic whose dead letters `topic` holds, if it is a dead-letter topic.
pub fn dead_letters_of(topic: &str) -> Option<&str> {
    topic.strip_suffix(DEAD_LETTER_SUFFIX).filter(|t| !t.is_empty())
}

/// Hashes a key to one of `partitions` partitions (FNV-1a: stable across processes and
/// versions, unlike `std`'s hasher).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["orders", "doc.uploaded", "orders.dlq", "a-b_c.1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "x.", "a b", "a/b", "ä", &"x".repeat(201)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dead_letter_topics_name_their_origin() {
        assert_eq!(dead_letters_of(&dead_letter_topic("doc.uploaded")), Some("doc.uploaded"));
        for not_one in ["orders", ".dlq", "orders.dlqx"] {
            assert_eq!(dead_letters_of(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("order-1", 16), partition_of("order-1", 16));
        for i in 0..1000 {
            assert!(partition_of(&format!("k{i}"), 7) < 7);
        }
        assert_eq!(partition_of("anything", 0), 0);
    }
}
