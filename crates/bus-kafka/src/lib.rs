//! Kafka transport for Weir (docs being written).

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
    names::{header_to_kafka, kafka_name, validate_prefix},
};

/// Settings of a [`KafkaBus`]. Topic settings apply only when this bus creates the topic.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of every topic and group (`<prefix>.<name>`), so that deployments and tests
    /// sharing a cluster stay apart: up to 48 bytes of `[A-Za-z0-9._-]`. Default empty: Weir's
    /// names are Kafka's.
    pub prefix: String,
    /// Partitions of a topic this bus creates. Default 16.
    pub partitions: u32,
    /// Replication factor of a topic this bus creates: 1 on a single broker, 3 in production.
    /// Default 1.
    pub replication: u16,
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
    /// or acked above an unsettled one. Default 1000.
    pub max_buffered: usize,
    /// Messages per record batch the producer writes at most (librdkafka's
    /// `batch.num.messages`). Default `None`: librdkafka's own (10,000).
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
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            fetch_wait: Duration::from_millis(500),
            commit_interval: Duration::from_millis(500),
            max_message_bytes: 2 << 20,
            max_buffered: 1000,
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

    /// The Kafka consumer group of `group`, named like topics.
    pub fn kafka_group(&self, group: &str) -> Result<String> {
        validate_name(group)?;
        kafka_name(&self.shared.options.prefix, group)
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
        let new_topic = NewTopic::new(kafka_topic, partitions, TopicReplication::Fixed(i32::from(options.replication)))
            .set("max.message.bytes", &max_message_bytes);
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
                    Ok(Err((e, _))) => return Err(shared.error(e)),
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

const CAPABILITIES: Capabilities =
    Capabilities { ordered_per_key: true, persistent: true, consumer_groups: true, delayed_redelivery: true };

impl KafkaBus {
    async fn join(&self, topic: &str, group: &str, wants: Option<TypeFilter>) -> Result<Subscription> {
        let shared = &self.shared;
        shared.check_open()?;
        let kafka_topic = self.kafka_topic(topic)?;
        let kafka_group = self.kafka_group(group)?;
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
        let kafka_group = self.kafka_group(group)?;
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
