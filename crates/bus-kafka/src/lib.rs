//! Kafka transport for Weir: [`KafkaBus`] implements the bus ports
//! ([`weir_core::bus::Publisher`] and [`weir_core::bus::Subscriber`]) over Kafka topics and
//! consumer groups, through rdkafka (librdkafka 2.12, built from its bundled source). It is only
//! a transport: it moves [`Message`]s and knows nothing of events, routing, retries or dead
//! letters — the router decides those from [`Delivery::attempt`](weir_core::bus::Delivery::attempt).
//! It creates the topics it uses but does not configure the brokers; what they must be told is
//! written below.
//!
//! # Mapping
//!
//! - A **topic** is one Kafka topic, `<prefix>.<topic>` (or the topic's own name when
//!   [`Options::prefix`] is empty, the default), created on first publish or subscribe through
//!   the admin API with [`Options::partitions`] partitions (16), [`Options::replication`]
//!   replicas (1) and `max.message.bytes` from [`Options::max_message_bytes`]. Creation is
//!   idempotent: "already exists", from this process or another, is success. Without a prefix,
//!   names starting with `__` are refused ([`Error::InvalidName`]): Kafka keeps them for itself.
//! - A message's **key** is the record key (UTF-8 bytes; an empty key is an empty key, not a
//!   null one). The producer partitions with `murmur2_random`, the Java client's default
//!   partitioner: a key lands on `toPositive(murmur2(key)) % partitions`, the partition the Java
//!   client with its defaults (and any client set to murmur2) picks for it, so Weir and other
//!   producers of one key keep its order together.
//! - **Headers** follow the CloudEvents Kafka protocol binding in binary mode: Weir's `ce-type`,
//!   `ce-id`, … travel as `ce_type`, `ce_id`, … and `content-type` as itself, so any Kafka tool
//!   reads Weir's events; on consume `ce_*` becomes `ce-*` again. Other headers travel as they
//!   are. Values are UTF-8 (a foreign record's invalid bytes are replaced, a null value arrives
//!   empty). A Weir header whose name starts with `ce_` cannot travel — it would come back as
//!   `ce-*` — and fails its batch with [`InvalidHeader`].
//! - A **group** on a topic is one Kafka consumer group, `<prefix>.<group>:<topic>` — per
//!   topic, like a JetStream consumer belongs to one stream. Each [`Subscription`] is one member
//!   of it — its own consumer, joining through Kafka's group protocol (eager rebalancing,
//!   librdkafka's default `range,roundrobin` assignors) — so Kafka spreads a topic's partitions
//!   over the members of a group, in this process and in others. One Kafka group per Weir group
//!   for all its topics would work too, but every member joining or leaving would then revoke
//!   the partitions of every topic the group reads: the conformance suite's fifty topics of one
//!   group took 5.6–14.6 s to subscribe and drain that way on tansu, 0.7–0.8 s with a Kafka
//!   group per topic. Kafka tools therefore list a service's group once per topic. A new group
//!   starts at the first retained message (`auto.offset.reset=earliest`). `subscribe` returns
//!   once the member got its first assignment (for at most the session timeout plus the request
//!   timeout), so a member subscribed before a publish is in the group when the messages arrive.
//!
//! # Publishing and durability
//!
//! The producer is idempotent (`enable.idempotence=true`) with `acks=all`: `publish` returns
//! only when every in-sync replica of its partition has every message of the batch, written
//! once and in order per partition despite retries. A batch is checked whole before any of it is
//! sent (size, header names) and then handed to the producer on a task of its own, so a caller
//! that drops the `publish` future neither cuts a batch in half nor leaves it unawaited.
//! [`Options::publish_timeout`] (librdkafka's `message.timeout.ms`) bounds how long a message
//! may wait for a broker.
//!
//! What an acknowledgement is worth is the cluster's business, not this crate's:
//!
//! - `acks=all` waits for the *in-sync* replicas, which may be the leader alone. In production
//!   run three replicas ([`Options::replication`] = 3) with `min.insync.replicas=2` (the broker's
//!   or the topic's setting; [`Options::min_insync_replicas`] sets it on topics this bus
//!   creates): an acknowledged message is then on two brokers, and a partition with fewer
//!   in-sync replicas refuses writes rather than acknowledging them on one.
//! - Kafka acknowledges from the page cache and leaves fsync to the OS (`log.flush.*` unset):
//!   replication, not fsync, is what makes an acknowledged message survive a broker's crash. A
//!   single broker with one replica (development) can lose acknowledged messages on a power cut.
//! - The tests run on `tansu` with **memory storage**: everything is gone when the broker stops.
//!   The suite's restart cases restart Weir's process, not the broker.
//!
//! # Consuming: acks on top of contiguous offsets
//!
//! Kafka remembers one committed offset per partition and group; Weir acks message by message.
//! Each member keeps a *window* of what it fetched and has not committed past (see `window.rs`):
//!
//! - **Per key, one at a time.** A key's messages are all on one partition, fetched in offset
//!   (= publish) order. The window hands out a key's earliest unacked message — its *head* — and
//!   holds the later ones until the head is acked; other keys of the partition flow on. A message
//!   is never handed out before the previous message of its key was acked.
//! - **Commits never pass an unsettled message.** Per partition the member commits the lowest
//!   offset not yet acked (or the offset after everything fetched), every
//!   [`Options::commit_interval`] when it moved. Messages acked above an unsettled one stay in the
//!   window until the hole closes; a crash redelivers them too (at least once, and the router's
//!   inbox drops the duplicates).
//! - **Nack with a delay holds back only its own key.** The nacked message waits out its delay
//!   in memory, in the member's delay queue, and comes back with its attempt one higher; the
//!   later messages of its key wait behind it, other keys and partitions do not. The committed
//!   offset stays below it, so if the process dies during the delay the message is redelivered
//!   from Kafka. A delivery dropped unsettled is handed out again at once, as a nack of zero.
//! - **Attempts** count the redeliveries this member knows of: a nack or a dropped delivery adds
//!   one. A message redelivered by Kafka — after a crash, a dropped subscription or a rebalance —
//!   starts at 1 again.
//! - **Rebalances lose and skip nothing.** On revocation the member commits, synchronously and
//!   while it still owns them, the contiguously acked prefix of each partition, and forgets the
//!   rest: the next owner fetches it again from the committed offset. Each assignment of a
//!   partition has an epoch, and a delivery settled after its partition was revoked changes
//!   nothing (its ack returns `Ok` and commits nothing, or [`Error::Closed`] once the subscription
//!   is gone). During a rebalance a message still being handled by its old owner can therefore be
//!   handed to the new one at the same time: order per key holds per member, and across a
//!   rebalance only up to such a duplicate.
//! - **A dropped subscription leaves its group at once.** Its consumer thread closes the
//!   consumer (within 100 ms): the revocation commits the acked prefix, the member sends
//!   LeaveGroup, and Kafka hands its partitions to the other members, which redeliver everything
//!   it had not acked. A crashed process cannot leave: its partitions move when its session times
//!   out ([`Options::session_timeout`]), measured here at 6.4 s after a `SIGKILL` with 6 s.
//! - **Flow control.** A member pauses fetching a partition while its window holds
//!   [`Options::max_buffered`] of its messages (a nacked key piling up behind its head, or acks
//!   held above a hole) and resumes it at half.
//! - **Filtered members** ([`Subscriber::subscribe_filtered`]) ack a message whose `ce-type` they
//!   refuse when it becomes its key's head, without handing it out: in order with its key.
//!
//! Each member polls a librdkafka `BaseConsumer` on a thread of its own rather than a
//! `StreamConsumer` on the runtime: librdkafka runs rebalance and commit callbacks inside `poll`,
//! so with one thread owning the consumer, fetching, committing, pausing and the revocation's
//! synchronous commit happen in one place and in order, and the blocking calls never hold a Tokio
//! worker. Acks do not go through that thread: they change the window under its lock and wake
//! waiting members directly.
//!
//! # Lag
//!
//! [`Subscriber::lag`] sums over the topic's partitions the messages past the group's committed
//! offset (past the low watermark when the group has none), less the messages this process's
//! members acked above an unsettled one (settled, though no offset can show it). A held or
//! nacked message counts, as it keeps the committed offset below it. It reads the broker with a
//! client that never subscribes: it creates no topic and joins no group, and a topic that does not
//! exist lags by 0. The count trails an ack by up to the commit interval, and acks above a hole
//! made in *another* process count until the hole closes.
//!
//! # Limits
//!
//! - A message — payload, key, headers and Kafka's framing — may take
//!   [`Options::max_message_bytes`] (2 MiB by default, so 1 MiB payloads fit); larger ones fail
//!   their batch with [`Error::TooLarge`] before anything is sent. Producer and consumer limits
//!   (`message.max.bytes`, `max.partition.fetch.bytes`, `fetch.max.bytes`) follow it. A topic
//!   created elsewhere keeps its own `max.message.bytes` (Kafka's default is 1 MiB, which a
//!   1 MiB payload exceeds): the broker then refuses the message and `publish` fails.
//! - Per-key order needs every producer of a topic to partition alike: Weir's default, the Java
//!   client's, or librdkafka's with `partitioner=murmur2_random` — not librdkafka's own default
//!   (`consistent_random`, CRC32). Adding partitions to a topic moves keys.
//! - Each subscription is a consumer with a thread and librdkafka's own threads (about four):
//!   fifty subscriptions are a few hundred threads.
//! - A group's members share partitions, so a group has at most as many busy members as its
//!   topic has partitions.
//!
//! # tansu, the test broker
//!
//! The tests run on `tansu` (`weir_testkit::server::tansu`), a Kafka-protocol broker in one
//! binary. What follows are tansu's limits, measured or reported against tansu 0.6.0 with
//! memory storage; Kafka itself does not have them.
//!
//! - **A fetch that starts inside a stored record batch skips that batch**, and ListOffsets
//!   reports a partition's high watermark as its last batch's base offset + 1, ignoring the
//!   batch's other records. A group resuming from an offset in the middle of a batch (after a
//!   restart or a rebalance) would lose the rest of the batch, and `lag` would be short. The tests
//!   therefore produce one record per batch ([`Options::batch_messages`] = 1), which tansu
//!   handles correctly; other producers writing to a tansu broker break Weir's consumers there.
//! - **A waiting fetch is woken only at `fetch.wait.max.ms`**, never by a new message: delivery
//!   latency on tansu is up to [`Options::fetch_wait`], so the tests set it to 100 ms.
//! - **A member joining a group that has other members waits 3 s** (tansu pauses a follower's
//!   JoinGroup): a second subscription to a group takes about 3 s to return.
//! - **A member that rejoins inside the session timeout of its dead predecessor can get an empty
//!   assignment until that session expires** (reported; the killed-member test sees the message
//!   come back when the session ends, not sooner).
//! - **A member joining while a dead member's session runs makes the group give the dead member
//!   partitions**: tansu answers the leader's JoinGroup at once with every member it knows, where
//!   Kafka waits for each to rejoin or time out. When the session ends tansu drops the member but
//!   keeps the assignment, so those partitions have no reader (nothing is lost: their committed
//!   offsets stay put) until another member joins. `tests/kafka.rs` shows it with plain rdkafka
//!   consumers (`tansu_gives_a_dead_member_partitions_when_a_member_joins`).
//! - The group's session timeout is whatever its first member asked for, with no minimum (read
//!   in tansu's source; Kafka's minimum is 6 s, `group.min.session.timeout.ms`, which the tests
//!   use).
//! - Debian's `kcat` cannot talk to tansu (reported); read a tansu topic with an rdkafka client,
//!   as `tests/kafka.rs` does.

mod consume;
mod names;
mod window;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rdkafka::{
    ClientConfig, ClientContext, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use weir_core::bus::{
    Capabilities, Error, Message, Publisher, Result, Subscriber, Subscription, TypeFilter, validate_name,
};

pub use crate::names::InvalidHeader;
use crate::{
    consume::{Core, Member, MemberContext, Pacing},
    names::{group_id, header_to_kafka, kafka_name, validate_prefix},
};

/// Settings of a [`KafkaBus`]. Topic settings apply only when this bus creates the topic.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of every topic (`<prefix>.<topic>`) and group (`<prefix>.<group>:<topic>`), so
    /// that deployments and tests sharing a cluster stay apart: up to 48 bytes of
    /// `[A-Za-z0-9._-]`. Default empty: Weir's topic names are Kafka's.
    pub prefix: String,
    /// Partitions of a topic this bus creates. Default 16.
    pub partitions: u32,
    /// Replication factor of a topic this bus creates: 1 on a single broker, 3 in production.
    /// Default 1.
    pub replication: u16,
    /// `min.insync.replicas` of a topic this bus creates: with `acks=all`, how many replicas must
    /// have a message before it is acknowledged. Default `None`: the broker's setting (Kafka's
    /// default is 1; use 2 with three replicas).
    pub min_insync_replicas: Option<u16>,
    /// How long the group waits for a silent member before giving its partitions to others:
    /// also how soon the deliveries of a crashed process come back. Default 45 s (Kafka's).
    pub session_timeout: Duration,
    /// How often a member tells the group it is alive; well below `session_timeout`. Default 3 s.
    pub heartbeat_interval: Duration,
    /// How long a fetch waits on the broker for new messages. Default 500 ms.
    pub fetch_wait: Duration,
    /// How often a member commits the positions its acks moved. Default 500 ms.
    pub commit_interval: Duration,
    /// The largest message: key, headers and payload, plus Kafka's framing. Topics this bus
    /// creates get it as `max.message.bytes`. Default 2 MiB, so that 1 MiB payloads fit.
    pub max_message_bytes: usize,
    /// Fetching of a partition pauses while a member holds this many of its messages unsettled
    /// or acked above an unsettled one, and resumes at half. Default 10,000: a resumed partition
    /// waits for the fetch in flight (up to [`fetch_wait`](Self::fetch_wait)) before it is
    /// fetched again, so the half left must outlast that wait — with 1000, a member reading a
    /// backlog of 16 partitions paused and starved, at half the rate of a plain rdkafka consumer
    /// (`weir bench bus`, tansu). librdkafka's own consumer prefetches up to 64 MiB.
    pub max_buffered: usize,
    /// Messages per record batch the producer writes at most (librdkafka's
    /// `batch.num.messages`). Default `None`: librdkafka's own (10,000). Set 1 on tansu, which
    /// mishandles batches of several records (see the crate docs).
    pub batch_messages: Option<u32>,
    /// How long `publish` may take before it fails. Default 30 s.
    pub publish_timeout: Duration,
    /// How long `connect` and `lag` wait for the broker. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            partitions: 16,
            replication: 1,
            min_insync_replicas: None,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            fetch_wait: Duration::from_millis(500),
            commit_interval: Duration::from_millis(500),
            max_message_bytes: 2 << 20,
            max_buffered: 10_000,
            batch_messages: None,
            publish_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Default options under another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}

/// How long one metadata request of `connect` waits.
const PROBE_ROUND: Duration = Duration::from_millis(250);

/// Room the producer and broker limits leave above [`Options::max_message_bytes`] for the record
/// batch around a message.
const FRAMING: usize = 1024;

/// A Kafka client that publishes and subscribes. Cheap to clone: clones share the producer,
/// the admin client and the topics known to exist.
#[derive(Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
}

/// A (Weir topic, Weir group) pair.
type TopicGroup = (String, String);

struct Shared {
    bootstrap: String,
    options: Options,
    producer: FutureProducer<Logs>,
    admin: AdminClient<Logs>,
    /// Weir topics whose Kafka topic this bus created or found.
    topics: Mutex<HashSet<String>>,
    /// Per (topic, group), the members this bus opened: `lag` counts what they acked above an
    /// unsettled message as settled.
    members: Mutex<HashMap<TopicGroup, Vec<Weak<Core>>>>,
    /// Per group, the client `lag` reads the group's committed offsets with (it never joins).
    inspectors: Mutex<HashMap<String, Arc<BaseConsumer<Logs>>>>,
    closed: CancellationToken,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("bootstrap", &self.shared.bootstrap)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its map consistent; a panic elsewhere must not stop the bus.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KafkaBus {
    /// Connects to the Kafka cluster at `bootstrap` (`host:port[,host:port…]`) and reads its
    /// metadata: fails within [`Options::request_timeout`] when no broker answers.
    pub async fn connect(bootstrap: &str, options: Options) -> Result<Self> {
        validate_prefix(&options.prefix)?;
        if options.partitions == 0 || i32::try_from(options.partitions).is_err() {
            return Err(Error::transport(InvalidOption("partitions must be between 1 and 2^31 - 1")));
        }
        if options.replication == 0 {
            return Err(Error::transport(InvalidOption("replication must be at least 1")));
        }
        let logs = Logs::default();
        let brokers_down = logs.brokers_down.clone();
        let producer: FutureProducer<Logs> =
            producer_config(bootstrap, &options).create_with_context(logs).map_err(Error::transport)?;
        let admin: AdminClient<Logs> =
            client_config(bootstrap).create_with_context(Logs::default()).map_err(Error::transport)?;
        let probe = producer.clone();
        let timeout = options.request_timeout;
        // Metadata is asked for in short rounds, so that a broker refusing connections fails
        // `connect` as soon as librdkafka has tried every bootstrap address, not at the timeout.
        let metadata = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            loop {
                let round = timeout.saturating_sub(started.elapsed()).min(PROBE_ROUND);
                match probe.client().fetch_metadata(None, round) {
                    Ok(metadata) => return Ok(metadata.brokers().len()),
                    Err(e) if brokers_down.load(Ordering::Relaxed) || started.elapsed() >= timeout => return Err(e),
                    Err(_) => {}
                }
            }
        })
        .await
        .map_err(Error::transport)?;
        match metadata {
            Ok(brokers) => debug!(bootstrap, brokers, "connected to Kafka"),
            Err(e) => return Err(Error::transport(Unreachable { bootstrap: bootstrap.to_owned(), source: e })),
        }
        let shared = Shared {
            bootstrap: bootstrap.to_owned(),
            options,
            producer,
            admin,
            topics: Mutex::default(),
            members: Mutex::default(),
            inspectors: Mutex::default(),
            closed: CancellationToken::new(),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// The Kafka topic that carries `topic`: `<prefix>.<topic>`, or `topic` without a prefix.
    pub fn kafka_topic(&self, topic: &str) -> Result<String> {
        validate_name(topic)?;
        kafka_name(&self.shared.options.prefix, topic)
    }

    /// The Kafka consumer group of `group` on `topic`: `<prefix>.<group>:<topic>`, or
    /// `<group>:<topic>` without a prefix (see the crate docs on why a group is per topic).
    pub fn kafka_group(&self, topic: &str, group: &str) -> Result<String> {
        validate_name(topic)?;
        validate_name(group)?;
        Ok(group_id(&self.shared.options.prefix, group, topic))
    }

    /// The partitions of `topic` that this bus's subscriptions to `group` own now, in order: what
    /// the group's last rebalance gave the members in this process (other processes' members are
    /// not counted). Empty when none is subscribed.
    pub fn assigned_partitions(&self, topic: &str, group: &str) -> Vec<i32> {
        let members = lock(&self.shared.members);
        let Some(cores) = members.get(&(topic.to_owned(), group.to_owned())) else { return Vec::new() };
        let mut partitions: Vec<i32> = cores
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|core| !core.is_stopped())
            .flat_map(|core| core.window().partitions().collect::<Vec<_>>())
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// Closes the bus and every clone of it: subscriptions end (`next` returns `None`) and leave
    /// their groups, `publish` fails with [`Error::Closed`]. Messages already handed to the
    /// producer are flushed first, for at most the publish timeout.
    pub async fn close(&self) {
        self.shared.closed.cancel();
        let producer = self.shared.producer.clone();
        let timeout = self.shared.options.publish_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "flushing the Kafka producer failed");
        }
    }
}

impl Shared {
    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() { Err(Error::Closed) } else { Ok(()) }
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::transport(e) }
    }

    /// Creates the Kafka topic of `topic` unless this bus knows it exists. Idempotent, also
    /// against other processes creating it at the same time: "already exists" is success.
    async fn ensure_topic(&self, topic: &str, kafka_topic: &str) -> Result<()> {
        if lock(&self.topics).contains(topic) {
            return Ok(());
        }
        let options = &self.options;
        let max_message_bytes = (options.max_message_bytes + FRAMING).to_string();
        let partitions = i32::try_from(options.partitions).unwrap_or(i32::MAX);
        let min_insync = options.min_insync_replicas.map(|replicas| replicas.to_string());
        let mut new_topic =
            NewTopic::new(kafka_topic, partitions, TopicReplication::Fixed(i32::from(options.replication)))
                .set("max.message.bytes", &max_message_bytes);
        if let Some(min_insync) = &min_insync {
            new_topic = new_topic.set("min.insync.replicas", min_insync);
        }
        let admin_options = AdminOptions::new().operation_timeout(Some(options.request_timeout));
        let results = self.admin.create_topics([&new_topic], &admin_options).await.map_err(|e| self.error(e))?;
        for result in results {
            match result {
                Ok(_) => info!(topic = kafka_topic, partitions, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(self.error(CreateTopic { topic: name, code })),
            }
        }
        lock(&self.topics).insert(topic.to_owned());
        Ok(())
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("client.id", "weir-bus-kafka");
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

fn producer_config(bootstrap: &str, options: &Options) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        // Every in-sync replica has it before `publish` returns, written once and in order
        // despite retries.
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // The Java client's default: a key lands on the partition any other Kafka producer picks.
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", (options.max_message_bytes + FRAMING).to_string())
        .set("message.timeout.ms", millis(options.publish_timeout));
    if let Some(batch) = options.batch_messages {
        config.set("batch.num.messages", batch.max(1).to_string());
    }
    config
}

fn consumer_config(bootstrap: &str, group: &str, options: &Options) -> ClientConfig {
    let mut config = client_config(bootstrap);
    let fetch_max = (options.max_message_bytes + FRAMING).max(50 << 20);
    config
        .set("group.id", group)
        // Offsets are committed by the window, never by librdkafka on its own.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the first retained message.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("session.timeout.ms", millis(options.session_timeout))
        .set("heartbeat.interval.ms", millis(options.heartbeat_interval))
        .set("fetch.wait.max.ms", millis(options.fetch_wait))
        .set("message.max.bytes", (options.max_message_bytes + FRAMING).to_string())
        .set("max.partition.fetch.bytes", (options.max_message_bytes + FRAMING).to_string())
        .set("fetch.max.bytes", fetch_max.to_string())
        .set("receive.message.max.bytes", (fetch_max + 512).max(100_000_000).to_string());
    config
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// The size of `message` as a Kafka record, framing of a batch of one included (an upper
/// bound: varints counted at their widest).
fn record_size(message: &Message) -> usize {
    const BATCH_HEADER: usize = 61;
    const RECORD_OVERHEAD: usize = 1 + 10 + 5 + 5 + 5 + 5 + 5;
    let headers: usize = message.headers.iter().map(|(name, value)| name.len() + value.len() + 10).sum();
    BATCH_HEADER + RECORD_OVERHEAD + message.key.len() + message.payload.len() + headers
}

/// A message made ready for the producer.
struct Outgoing {
    key: String,
    headers: OwnedHeaders,
    payload: bytes::Bytes,
}

fn outgoing(message: Message, limit: usize) -> Result<Outgoing> {
    let size = record_size(&message);
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        let Some(name) = header_to_kafka(name) else {
            return Err(Error::transport(InvalidHeader(name.clone())));
        };
        headers = headers.insert(Header { key: &name, value: Some(value.as_bytes()) });
    }
    Ok(Outgoing { key: message.key, headers, payload: message.payload })
}

#[async_trait]
impl Publisher for KafkaBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let shared = &self.shared;
        shared.check_open()?;
        let kafka_topic = self.kafka_topic(topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        // Every message is checked before any is sent: a bad one fails the whole batch.
        let limit = shared.options.max_message_bytes;
        let batch = messages.into_iter().map(|m| outgoing(m, limit)).collect::<Result<Vec<_>>>()?;
        shared.ensure_topic(topic, &kafka_topic).await?;

        let task_shared = shared.clone();
        let task_topic = topic.to_owned();
        // A task of its own, so that dropping this future neither stops a batch halfway nor
        // leaves deliveries unawaited: a batch handed to the producer is sent whole.
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let mut deliveries = Vec::with_capacity(batch.len());
            for message in batch {
                let mut record = FutureRecord::to(&kafka_topic)
                    .key(message.key.as_bytes())
                    .payload(message.payload.as_ref())
                    .headers(message.headers);
                loop {
                    match shared.producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // The producer's queue is full: wait for room, keeping the order.
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(shared.error(e)),
                    }
                }
            }
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                            // Deleted behind our back: create it again on the next publish.
                            lock(&shared.topics).remove(&task_topic);
                        }
                        return Err(shared.error(e));
                    }
                    Err(_canceled) => return Err(Error::Closed),
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

impl KafkaBus {
    async fn join(&self, topic: &str, group: &str, wants: Option<TypeFilter>) -> Result<Subscription> {
        let shared = &self.shared;
        shared.check_open()?;
        let kafka_topic = self.kafka_topic(topic)?;
        let kafka_group = self.kafka_group(topic, group)?;
        // The topic exists before the member joins, so its first assignment covers it.
        shared.ensure_topic(topic, &kafka_topic).await?;

        let options = &shared.options;
        let core = Core::new(topic, &kafka_topic, wants, shared.closed.child_token());
        let consumer: BaseConsumer<MemberContext> = consumer_config(&shared.bootstrap, &kafka_group, options)
            .create_with_context(MemberContext { core: core.clone() })
            .map_err(Error::transport)?;
        consumer.subscribe(&[&kafka_topic]).map_err(Error::transport)?;
        let pacing = Pacing { commit_interval: options.commit_interval, max_buffered: options.max_buffered.max(1) };
        let thread_core = core.clone();
        std::thread::Builder::new()
            .name("weir-kafka".to_owned())
            .spawn(move || consume::run(consumer, thread_core, pacing))
            .map_err(Error::transport)?;
        {
            let mut members = lock(&shared.members);
            members.retain(|_, cores| {
                cores.retain(|core| core.upgrade().is_some_and(|core| !core.is_stopped()));
                !cores.is_empty()
            });
            members.entry((topic.to_owned(), group.to_owned())).or_default().push(Arc::downgrade(&core));
        }
        let member = Member { core: core.clone() };
        // Joining takes a round of the group protocol; returning after it means that a member
        // subscribed before a publish is in the group when the messages arrive.
        if !core.assigned(options.session_timeout + options.request_timeout).await {
            warn!(topic, group, "no partitions assigned yet; the member keeps waiting in the background");
        }
        Ok(Subscription::new(member))
    }

    /// The client that reads `group`'s committed offsets: a consumer of the group that never
    /// subscribes, so never joins.
    fn inspector(&self, kafka_group: &str) -> Result<Arc<BaseConsumer<Logs>>> {
        let shared = &self.shared;
        if let Some(inspector) = lock(&shared.inspectors).get(kafka_group) {
            return Ok(inspector.clone());
        }
        let mut config = client_config(&shared.bootstrap);
        config.set("group.id", kafka_group).set("enable.auto.commit", "false").set("allow.auto.create.topics", "false");
        let inspector: Arc<BaseConsumer<Logs>> =
            Arc::new(config.create_with_context(Logs::default()).map_err(Error::transport)?);
        lock(&shared.inspectors).insert(kafka_group.to_owned(), inspector.clone());
        Ok(inspector)
    }

    /// What this process's members of `group` acked above an unsettled message, per partition,
    /// at or above `committed`.
    fn acked_locally(&self, topic: &str, group: &str, committed: &[(i32, i64)]) -> u64 {
        let members = lock(&self.shared.members);
        let Some(cores) = members.get(&(topic.to_owned(), group.to_owned())) else { return 0 };
        let mut acked = 0;
        for core in cores.iter().filter_map(Weak::upgrade) {
            let window = core.window();
            acked += committed.iter().map(|(partition, from)| window.acked_from(*partition, *from)).sum::<u64>();
        }
        acked
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        self.join(topic, group, None).await
    }

    async fn subscribe_filtered(&self, topic: &str, group: &str, wants: TypeFilter) -> Result<Subscription> {
        self.join(topic, group, Some(wants)).await
    }

    /// Per partition, the messages past the group's committed offset (or past the low watermark
    /// when the group never committed one), less those this process's members acked above an
    /// unsettled message. Creates nothing and joins nothing.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let shared = &self.shared;
        shared.check_open()?;
        let kafka_topic = self.kafka_topic(topic)?;
        let kafka_group = self.kafka_group(topic, group)?;
        let inspector = self.inspector(&kafka_group)?;
        let timeout = shared.options.request_timeout;
        let positions = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64, i64)>, KafkaError> {
            let metadata = inspector.fetch_metadata(Some(&kafka_topic), timeout)?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == kafka_topic) else { return Ok(Vec::new()) };
            if found.error().is_some() {
                // Unknown topic (the only error a metadata answer carries for a topic one may see).
                return Ok(Vec::new());
            }
            let mut list = TopicPartitionList::new();
            for partition in found.partitions() {
                list.add_partition(&kafka_topic, partition.id());
            }
            let committed = inspector.committed_offsets(list, timeout)?;
            let mut positions = Vec::new();
            for element in committed.elements() {
                let (low, high) = inspector.fetch_watermarks(&kafka_topic, element.partition(), timeout)?;
                let from = match element.offset() {
                    Offset::Offset(committed) => committed.max(low),
                    _ => low,
                };
                positions.push((element.partition(), from, high));
            }
            Ok(positions)
        })
        .await
        .map_err(Error::transport)?
        .map_err(|e| shared.error(e))?;
        let behind: u64 = positions.iter().map(|(_, from, high)| u64::try_from(high - from).unwrap_or(0)).sum();
        let from: Vec<(i32, i64)> = positions.iter().map(|(partition, from, _)| (*partition, *from)).collect();
        Ok(behind.saturating_sub(self.acked_locally(topic, group, &from)))
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

/// Routes librdkafka's log lines and errors to `tracing`, and notes when no broker answers.
#[derive(Default)]
struct Logs {
    /// Set when librdkafka reports that every broker it knows is down.
    brokers_down: Arc<AtomicBool>,
}

impl ClientContext for Logs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        log_line(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Reported for every unreachable broker; `connect` and requests report it better.
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.brokers_down.store(true, Ordering::Relaxed);
                debug!(%error, reason, "Kafka client error");
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure) => debug!(%error, reason, "Kafka client error"),
            _ => warn!(%error, reason, "Kafka client error"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Logs {}

pub(crate) fn log_line(level: RDKafkaLogLevel, facility: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            error!(facility, "librdkafka: {line}")
        }
        RDKafkaLogLevel::Warning => warn!(facility, "librdkafka: {line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(facility, "librdkafka: {line}"),
        RDKafkaLogLevel::Debug => debug!(facility, "librdkafka: {line}"),
    }
}

/// No broker of the bootstrap list answered.
#[derive(Debug, thiserror::Error)]
#[error("no Kafka broker at {bootstrap} answered: {source}")]
pub struct Unreachable {
    pub bootstrap: String,
    #[source]
    pub source: KafkaError,
}

/// The broker refused to create a topic.
#[derive(Debug, thiserror::Error)]
#[error("cannot create Kafka topic {topic}: {code}")]
pub struct CreateTopic {
    pub topic: String,
    pub code: RDKafkaErrorCode,
}

/// An [`Options`] value out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid Kafka bus options: {0}")]
pub struct InvalidOption(&'static str);
