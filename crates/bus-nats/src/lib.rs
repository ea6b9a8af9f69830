//! NATS JetStream transport for Weir: [`NatsBus`] implements the bus ports
//! ([`weir_core::bus::Publisher`] and [`weir_core::bus::Subscriber`]) over JetStream streams and
//! durable pull consumers. It is only a transport: it moves [`Message`]s and knows nothing of
//! events, routing, retries or dead letters — the router decides those from
//! [`Delivery::attempt`](weir_core::bus::Delivery::attempt). It does not configure the NATS
//! server either; what the server must be told is written below.
//!
//! # Mapping
//!
//! - A **topic** is one stream, created on first use (file storage, limits retention), named
//!   `<prefix>_<topic with '.' as '_'>_<hash>` because stream names cannot contain '.'. Its
//!   subjects are `<prefix>.<topic>.<partition>`, partition =
//!   [`weir_core::bus::partition_of`]`(key, partitions)`. The key travels in the
//!   `weir-key` header; message headers travel as NATS headers. Header values and the key are
//!   percent-encoded where they hold bytes outside printable ASCII (CR, LF and edge blanks would
//!   not survive NATS headers); names starting with `Nats-` and `weir-key` are refused, as they
//!   would steer JetStream.
//! - A **group** is one durable pull consumer on the topic's stream (explicit ack, deliver all:
//!   a new group starts from the first retained message), shared by every member: JetStream
//!   spreads its messages over the members, which is the load sharing.
//! - **Publish** sends the whole batch, then waits for every `PubAck` (pipelined); it returns
//!   only when JetStream has acknowledged all of them. The batch runs as its own task, so a
//!   caller that drops the future does not cut a batch in half.
//! - **Nack** sends `-NAK` with the delay; JetStream redelivers no sooner, with its delivery
//!   count — [`Delivery::attempt`](weir_core::bus::Delivery::attempt) — one higher. A dropped
//!   delivery or subscription is redelivered after the ack wait ([`Options::ack_wait`]).
//!   With [`Options::max_deliver`] set, JetStream stops redelivering after that many
//!   deliveries; by default it never stops, and the router dead-letters on `attempt`.
//!
//! # Size limit
//!
//! The limit is the server's `max_payload` (1 MiB by default, read from the server at connect
//! time) and it counts the payload **plus the encoded headers** (`NATS/1.0` line, every
//! `name: value` line, the `weir-key` line: a few hundred bytes for a CloudEvent). So on a
//! server with default settings a payload of exactly 1 MiB does **not** fit; the largest one is
//! 1 MiB minus the headers. [`NatsBus::publish`](weir_core::bus::Publisher::publish) checks every
//! message of a batch before sending any and returns [`Error::TooLarge`] with the header-inclusive
//! size and the limit. To carry 1 MiB payloads, set `max_payload: 2MB` (or up to 8 MB, NATS's
//! advice; 64 MB is the hard ceiling) in the server configuration.
//!
//! # Durability
//!
//! `publish` returns `Ok` once JetStream acknowledged every message. What that acknowledgement
//! is worth depends on the server, not on this crate: JetStream writes file-stored messages to
//! the OS page cache and **fsyncs them only every `sync_interval`, two minutes by default**.
//! A process crash of `nats-server` loses nothing (the page cache survives it), but a power cut
//! or kernel crash can lose up to two minutes of acknowledged messages — Jepsen's 2025 analysis
//! of NATS 2.12.1 lost acknowledged writes exactly this way (nats-server issue #7564).
//!
//! - **nats-server 2.9.10 (what runs here) cannot fsync per write**: it rejects `sync_interval`
//!   as an unknown field; the two-minute interval is fixed. Neither does any 2.9 stream setting
//!   change it. On 2.9.x the window is an accepted risk, suited to development only.
//! - **Production must run nats-server ≥ 2.10** (where `sync_interval` arrived) with
//!   `jetstream { sync_interval: always }` — fsync before every acknowledgement, at a large cost
//!   in throughput — and/or a cluster with [`Options::replicas`] = 3, where an acknowledged
//!   message is on a quorum of servers and is lost only if a majority fails at once.
//! - At connect time [`NatsBus::connect`] logs a warning when the server is older than 2.10.
//!   The client cannot see `sync_interval` itself (only the system account can), so this crate
//!   cannot enforce the setting: deployment configuration must.
//!
//! # Ordering and the per-key gate
//!
//! JetStream delivers a consumer's new messages in stream order, but with many acks pending it
//! does not order redeliveries: a nacked message comes back after later messages of its key were
//! handed out. So the adapter gates by key on the consumer side. Each group has, per process
//! (per [`NatsBus`] and its clones), one pull loop feeding one gate shared by all the members that
//! process opened. For each key the gate hands out one message at a time — the earliest not yet
//! acked (the *head*) — and holds the later ones. When the head is acked (confirmed by the
//! server), the next message of the key is released. When it is nacked, the nak goes to the
//! server with its delay and the later messages stay held — kept from their ack wait by
//! progress signals (`+WPI`) — until the redelivered head, recognised by its stream sequence, is
//! handed out and acked. Other keys are never held. A redelivery of a message still being handled
//! (it outlived its ack wait) is absorbed, not handed out twice; a redelivery of a message the gate
//! has just acked is acked again.
//!
//! Guarantees, precisely:
//!
//! - Within one process, a group's messages of one key reach its members in stream (= publish)
//!   order, one at a time, each after the previous one was acked; a nacked or dropped message is
//!   redelivered before any later message of its key. Other keys flow on meanwhile.
//! - Across processes there is no such guarantee: JetStream gives each process messages of any
//!   key, so two processes can handle one key concurrently. Per-key order across processes needs
//!   partition assignment (one consumer per partition per group, each pinned to one process),
//!   which this crate does not do. Run one consuming process per group, or accept that order.
//! - Two [`NatsBus::connect`] calls in one process are two processes in this sense.
//! - A nacked key holds its later messages in memory. The gate holds at most
//!   [`Options::max_ack_pending`] messages per group (JetStream's limit on unacked deliveries);
//!   when one key has piled up that many, JetStream sends the group nothing more until it moves.
//! - Progress signals keep held messages from counting as redeliveries; should one be
//!   redelivered anyway (the process stalled), its `attempt` is higher than the number of times a
//!   member saw it.
//! - When this process dies (or drops its last member of the group), what its gate held comes
//!   back through ack-wait expiry. To keep a key's order then, the gate refreshes the ack timers
//!   of a key's held messages whenever the key's head is (re)delivered, and sends its periodic
//!   progress signals in stream order: the head always expires first. One case escapes: a head
//!   nacked with a delay longer than the ack wait, when the process dies during that delay —
//!   its held successors expire before the delay ends and arrive first.
//! - If an expected redelivery does not arrive within its delay plus twice the ack wait (the ack
//!   reached the server though the client saw an error, or the consumer was re-created), the gate
//!   releases the key rather than stall it forever, and logs a warning.
//! - When a message reaches [`Options::max_deliver`], JetStream drops it; the gate then releases
//!   its key.

mod gate;
mod names;
mod subscribe;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use async_nats::{
    HeaderMap, HeaderName, HeaderValue,
    jetstream::{
        self, ErrorCode,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
        context::{DeleteStreamErrorKind, PublishErrorKind},
        message::PublishMessage,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use weir_core::bus::{
    Capabilities, Error, Message, Publisher, Result, Subscriber, Subscription, partition_of, validate_name,
};

use crate::{
    names::{KEY_HEADER, consumer_name, encode_value, is_reserved_header, stream_name, stream_subjects, subject},
    subscribe::Group,
};

/// Settings of a [`NatsBus`]. Stream and consumer settings apply only when this bus creates the
/// stream or consumer: existing ones keep theirs (JetStream refuses most changes) — a group's ack
/// wait, for instance, is the one it was created with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of every subject and stream, so that deployments and tests sharing a server stay
    /// apart: letters, digits, '-' and '_'. Default `weir`.
    pub prefix: String,
    /// Partitions per topic: the subject token that the key hashes to. Every publisher of a topic
    /// must use the same number. Default 16.
    pub partitions: u32,
    /// JetStream stops redelivering a message after this many deliveries (it then drops it for
    /// the group). Default `None`: never, as the router dead-letters by `attempt`; a value here
    /// must be above the router's limit or messages vanish without a dead letter.
    pub max_deliver: Option<u32>,
    /// How long a delivery may stay unsettled before JetStream redelivers it: also how soon the
    /// deliveries of a crashed or dropped subscriber come back. Default 30 s.
    pub ack_wait: Duration,
    /// JetStream's limit on a group's unacked deliveries. Default 1000.
    pub max_ack_pending: u32,
    /// Messages a process takes ahead of its members per group. Default 64.
    pub prefetch: usize,
    /// Stream replicas: 1 on a single server, 3 in a production cluster. Default 1.
    pub replicas: usize,
    /// Retention of a topic's messages; zero keeps them until deleted. Default zero.
    pub max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "weir".to_owned(),
            partitions: 16,
            max_deliver: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            prefetch: 64,
            replicas: 1,
            max_age: Duration::ZERO,
        }
    }
}

impl Options {
    /// Default options under another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}

/// A JetStream connection that publishes and subscribes. Cheap to clone: clones share the
/// connection, the streams known to exist and the per-group gates.
#[derive(Clone)]
pub struct NatsBus {
    shared: Arc<Shared>,
}

/// What clones of a [`NatsBus`] share.
pub(crate) struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    options: Options,
    /// Topics whose stream this bus created or found.
    streams: Mutex<HashSet<String>>,
    /// The live gate of each (topic, group), so that members in this process share it.
    groups: Mutex<HashMap<(String, String), Weak<Group>>>,
    closed: CancellationToken,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("options", &self.shared.options).finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url` and checks that JetStream is enabled. Fails when the
    /// server is unreachable; once connected, the client reconnects by itself.
    pub async fn connect(url: &str, options: Options) -> Result<Self> {
        names::validate_prefix(&options.prefix)?;
        if options.partitions == 0 {
            return Err(Error::InvalidName("partitions must be at least 1".to_owned()));
        }
        let client =
            async_nats::ConnectOptions::new().name("weir-bus-nats").connect(url).await.map_err(Error::transport)?;
        let js = jetstream::new(client.clone());
        let info = client.server_info();
        // The INFO of the handshake says whether JetStream is on (`query_account` would be a
        // round trip, and async-nats 0.51 cannot parse 2.9's account reply).
        if !info.jetstream {
            return Err(Error::transport(JetStreamDisabled(url.to_owned())));
        }
        if !client.is_server_compatible(2, 10, 0) {
            warn!(
                server_version = %info.version,
                "nats-server before 2.10 cannot fsync every write (no sync_interval): acknowledged \
                 messages may be lost on power failure; use 2.10+ with sync_interval: always"
            );
        }
        let shared = Shared {
            client,
            js,
            options,
            streams: Mutex::default(),
            groups: Mutex::default(),
            closed: CancellationToken::new(),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The server's `max_payload`: the limit on payload plus encoded headers of one message.
    pub fn max_payload(&self) -> usize {
        self.shared.client.server_info().max_payload
    }

    /// The largest payload that fits with `message`'s key and headers.
    pub fn max_payload_for(&self, message: &Message) -> usize {
        self.max_payload().saturating_sub(headers_wire_len(message))
    }

    /// The JetStream stream that holds `topic`, for operators and tests.
    pub fn stream_name(&self, topic: &str) -> String {
        stream_name(&self.shared.options.prefix, topic)
    }

    /// Deletes the stream of `topic` with its messages and groups. For tests and operators; the
    /// next publish or subscribe creates it anew.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        validate_name(topic)?;
        self.shared.streams_lock().remove(topic);
        match self.shared.js.delete_stream(self.stream_name(topic)).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), DeleteStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
                Ok(())
            }
            Err(e) => Err(self.shared.error(e)),
        }
    }

    /// Closes the bus and every clone of it: subscriptions end (`next` returns `None`), publish
    /// and later acks fail with [`Error::Closed`]. Pending outgoing data is flushed first.
    pub async fn close(&self) {
        self.shared.closed.cancel();
        if let Err(e) = self.shared.client.drain().await {
            warn!(error = %e, "draining the NATS connection failed");
        }
    }
}

impl Shared {
    fn streams_lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() { Err(Error::Closed) } else { Ok(()) }
    }

    /// Creates the stream of `topic` unless it exists (idempotent, also against other processes
    /// creating it at the same time: JetStream accepts an identical create).
    async fn stream(&self, topic: &str) -> Result<stream::Stream> {
        let options = &self.options;
        let config = stream::Config {
            name: stream_name(&options.prefix, topic),
            description: Some(format!("weir topic {topic}")),
            subjects: vec![stream_subjects(&options.prefix, topic)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            num_replicas: options.replicas.max(1),
            max_age: options.max_age,
            ..Default::default()
        };
        let stream = self.js.get_or_create_stream(config).await.map_err(|e| self.error(e))?;
        self.streams_lock().insert(topic.to_owned());
        Ok(stream)
    }

    async fn ensure_stream(&self, topic: &str) -> Result<()> {
        if !self.streams_lock().contains(topic) {
            self.stream(topic).await?;
        }
        Ok(())
    }

    /// The durable consumer of `group` on `topic`, created unless it exists.
    pub(crate) async fn consumer(&self, topic: &str, group: &str) -> Result<PullConsumer> {
        let stream = self.stream(topic).await?;
        let name = consumer_name(group);
        let options = &self.options;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("weir group {group}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver: options.max_deliver.map_or(-1, i64::from),
            max_ack_pending: i64::from(options.max_ack_pending.max(1)),
            num_replicas: options.replicas.max(1),
            ..Default::default()
        };
        stream.get_or_create_consumer(&name, config).await.map_err(|e| self.error(e))
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::transport(e) }
    }
}

/// A message made ready for the wire.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

/// Serialized size of the headers NATS sends for `message`: `NATS/1.0\r\n`, a `name: value\r\n`
/// line each (with values percent-encoded, and the key), and a closing `\r\n`.
fn headers_wire_len(message: &Message) -> usize {
    let line = |name: &str, value: &str| name.len() + 2 + encode_value(value).len() + 2;
    let lines: usize = message.headers.iter().map(|(n, v)| line(n, v)).sum();
    "NATS/1.0\r\n".len() + line(KEY_HEADER, &message.key) + lines + 2
}

fn outgoing(options: &Options, topic: &str, message: Message, limit: usize) -> Result<Outgoing> {
    let size = headers_wire_len(&message) + message.payload.len();
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        if is_reserved_header(name) {
            return Err(Error::transport(InvalidHeader(name.clone())));
        }
        let name: HeaderName = name.parse().map_err(|_| Error::transport(InvalidHeader(name.clone())))?;
        headers.insert(name, encoded(value));
    }
    headers.insert(KEY_HEADER, encoded(&message.key));
    let partition = partition_of(&message.key, options.partitions);
    Ok(Outgoing { subject: subject(&options.prefix, topic, partition), headers, payload: message.payload })
}

fn encoded(value: &str) -> HeaderValue {
    // Encoded values hold printable ASCII only, which NATS accepts; `from_str` cannot fail.
    encode_value(value).parse().unwrap_or_else(|_| HeaderValue::from(""))
}

/// The server runs without JetStream (`-js` or a `jetstream {}` block is missing).
#[derive(Debug, thiserror::Error)]
#[error("JetStream is not enabled on the NATS server at {0}")]
pub struct JetStreamDisabled(pub String);

/// A message header name that NATS cannot carry or that this adapter reserves.
#[derive(Debug, thiserror::Error)]
#[error(
    "header {0:?} cannot be sent over NATS: names must be printable ASCII without ':', \
     and `weir-key` and `Nats-*` are reserved"
)]
pub struct InvalidHeader(pub String);

#[async_trait]
impl Publisher for NatsBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        // Every message is checked before any is sent: an oversized one fails the whole batch.
        let limit = self.max_payload();
        let batch =
            messages.into_iter().map(|m| outgoing(&shared.options, topic, m, limit)).collect::<Result<Vec<_>>>()?;
        shared.ensure_stream(topic).await?;

        let task_shared = shared.clone();
        let task_topic = topic.to_owned();
        // A task of its own, so that dropping this future neither stops a batch halfway nor
        // leaves acks unawaited.
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let mut acks = Vec::with_capacity(batch.len());
            for message in batch {
                let publish = PublishMessage::build().headers(message.headers).payload(message.payload);
                let ack = shared.js.send_publish(message.subject, publish).await.map_err(|e| shared.error(e))?;
                // Each ack is awaited by its own task as it arrives, which returns the client's
                // in-flight permit at once: batches larger than the permits cannot deadlock.
                acks.push(tokio::spawn(ack.into_future()));
            }
            for ack in acks {
                match ack.await.map_err(Error::transport)? {
                    Ok(_) => {}
                    Err(e) => {
                        if e.kind() == PublishErrorKind::StreamNotFound {
                            // Deleted behind our back: create it again on the next publish.
                            shared.streams_lock().remove(&task_topic);
                        }
                        return Err(shared.error(e));
                    }
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

const CAPABILITIES: Capabilities = Capabilities::ALL;

#[async_trait]
impl Subscriber for NatsBus {
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
        let consumer = shared.consumer(topic, group).await?;
        // Checked again under the lock: another member may have started the group meanwhile.
        let mut groups = shared.groups_lock();
        groups.retain(|_, weak| weak.strong_count() > 0);
        let live = match groups.get(&key).and_then(Weak::upgrade) {
            Some(live) => live,
            None => {
                let live = Group::start(shared.clone(), topic, group, consumer, shared.closed.child_token());
                groups.insert(key, Arc::downgrade(&live));
                live
            }
        };
        Ok(Subscription::new(live.member()))
    }

    /// The group's consumer's undelivered plus unacked messages (`num_pending` +
    /// `num_ack_pending`); a group without a consumer yet lags by the whole stream.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        validate_name(group)?;
        let mut stream = match shared.js.get_stream(self.stream_name(topic)).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(0);
            }
            Err(e) => return Err(shared.error(e)),
        };
        match stream.consumer_info(consumer_name(group)).await {
            Ok(info) => Ok(info.num_pending + info.num_ack_pending as u64),
            Err(e) if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound) => {
                Ok(stream.info().await.map_err(|e| shared.error(e))?.state.messages)
            }
            Err(e) => Err(shared.error(e)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

impl Shared {
    fn groups_lock(&self) -> MutexGuard<'_, HashMap<(String, String), Weak<Group>>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
