//! [`SqliteLog`]: the embedded bus transport, a durable log in one SQLite file.
//!
//! # Layout
//! ```sql
//! topics   (id, name UNIQUE, partitions)                 -- partitions fixed at creation
//! messages (id AUTOINCREMENT, topic_id, partition, key, headers, payload, published_at)
//!          INDEX (topic_id, partition, id)
//! cursors  (grp, topic_id, partition, position)          -- last id a group settled, contiguously
//! leases   (grp, topic_id, partition, owner, expires_at) -- which member serves a partition
//! members  (grp, topic_id, owner, expires_at)            -- live members, for fair shares
//! retries  (grp, topic_id, partition, msg_id, key, attempts, visible_at)
//! ```
//!
//! # Threads
//! - One **writer thread** owns the only write connection. Publishes, cursor commits, lease
//!   heartbeats and retry changes are sent to it over a channel; it applies everything it can
//!   drain in one transaction, commits once (one fsync for the batch, `synchronous=FULL`), then
//!   answers. A publish returns only after that commit.
//! - One **consumer thread** per subscription, with its own read-only connection. It fetches
//!   hundreds of rows per query from the partitions it leases, enforces per-key order, hands
//!   deliveries to the async side through a channel, collects acks (queued without waking it,
//!   unless an ack could release a waiting message) and nacks, and every 100 ms sends the
//!   writer the contiguous settled prefix of each partition. It sleeps until a publish wakes
//!   it (naming the partitions written, so it queries only those), an ack it asked for or a nack
//!   arrives, or a timer (queued acks while deliveries are out, retry due, lease heartbeat,
//!   fallback poll for publishers in other processes) fires.
//!
//! # Order and redelivery
//! Within a partition, different keys flow concurrently and each key has at most one delivery
//! outstanding. A nacked message moves to `retries` and takes the later messages of its key
//! with it (parked, in order); the head of each key's queue is delivered when visible. Other
//! keys keep flowing, and the cursor moves past parked messages. A delivery dropped without
//! being settled counts as `nack(0)`. Deliveries of a dropped subscription are simply not
//! committed: its leases are released and the next owner resumes from the committed position.

mod consumer;
mod inspect;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use weir_core::bus::{
    self, Capabilities, Delivery, DeliveryStream, Headers, Message, Publisher, Subscriber, Subscription, TypeFilter,
    validate_name,
};

pub use self::inspect::{Browse, DeadLetter, Disposal, LetterError, LetterPage, LetterQuery, Stored};
use self::{
    consumer::Consumer,
    writer::{LogWriter, MemberKey, WriteOp},
};

/// Tuning of a [`SqliteLog`]. The defaults suit a service on one machine.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Partitions of a topic created by this log; an existing topic keeps its own count.
    pub partitions: u32,
    /// How long a member's partition leases live without renewal; a crashed member's
    /// partitions are taken over after this.
    pub lease_ttl: Duration,
    /// How often each subscription commits its settled position and retry changes (one small
    /// write, batched with others). A crash redelivers what was settled since — the consumers'
    /// inboxes absorb it — so this trades a little redelivery for far fewer commits: every
    /// commit costs a sync, and at 5 ms each subscription committed about once per message.
    pub commit_interval: Duration,
    /// Fallback poll for messages published by other processes (in-process publishes wake
    /// consumers at once).
    pub poll_interval: Duration,
    /// Rows fetched per query.
    pub fetch_batch: usize,
    /// Deliveries a subscription may have outstanding (and rows it buffers per partition).
    pub max_in_flight: usize,
    /// The largest payload plus key and headers accepted by `publish`.
    pub max_message_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            partitions: 8,
            lease_ttl: Duration::from_secs(10),
            commit_interval: Duration::from_millis(100),
            poll_interval: Duration::from_millis(500),
            fetch_batch: 512,
            max_in_flight: 4096,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    key TEXT NOT NULL,
    headers BLOB,
    payload BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_partition ON messages (topic_id, partition, id);
CREATE TABLE IF NOT EXISTS cursors (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cursors_by_partition ON cursors (topic_id, partition, position);
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, owner)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retries (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    msg_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS retries_by_message ON retries (msg_id);
";

/// A durable, partitioned log in one SQLite file; implements [`Publisher`] and [`Subscriber`].
///
/// Cheap to clone (clones share one writer thread). Several processes may open the same file:
/// they share consumer groups through leases, and see each other's publishes within
/// [`LogOptions::poll_interval`]. Dropping the last clone closes it like [`close`](Self::close),
/// without waiting.
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    path: PathBuf,
    options: LogOptions,
    writer: mpsc::Sender<WriteOp>,
    registry: Arc<Registry>,
    /// The read-only connection of the operators' reads ([`inspect`]), opened by the first and
    /// kept for the next (`weir events tail` reads every 200 ms).
    inspector: std::sync::Mutex<Option<Connection>>,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        self.registry.close_all();
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn transport(e: rusqlite::Error) -> bus::Error {
    bus::Error::transport(e)
}

fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let conn = if read_only {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        Connection::open_with_flags(path, flags)?
    } else {
        Connection::open(path)?
    };
    crate::sql::configure(&conn, 64)?;
    Ok(conn)
}

impl SqliteLog {
    /// Opens (creating if needed) the log file at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>, options: LogOptions) -> bus::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, false).map_err(transport)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;").map_err(transport)?;
        conn.execute_batch(SCHEMA).map_err(transport)?;
        let registry = Arc::new(Registry::default());
        let (writer, ops) = mpsc::channel();
        let log_writer = LogWriter::new(conn, registry.clone(), options.partitions.max(1));
        std::thread::Builder::new()
            .name("weir-log-writer".into())
            .spawn(move || log_writer.run(ops))
            .map_err(bus::Error::transport)?;
        Ok(Self { inner: Arc::new(LogInner { path, options, writer, registry, inspector: Default::default() }) })
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Deletes messages published more than `older_than` ago that every consumer group of
    /// their topic has settled (and none holds for redelivery). Returns how many were deleted.
    /// Topics without any group keep their messages, for the first group to come; dead letters
    /// stay until they are redriven or discarded. Deletes a few thousand at a time, oldest
    /// first, each in its own commit, so that publishes keep flowing meanwhile.
    pub async fn prune(&self, older_than: Duration) -> bus::Result<u64> {
        let mut deleted = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(WriteOp::Prune { older_than, reply })?;
            let chunk = answer.await.map_err(|_| bus::Error::Closed)??;
            deleted += chunk;
            if chunk < writer::PRUNE_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Stops every subscription of this log: each commits what was settled, releases its
    /// leases, and its `next()` returns `None`. Publishing afterwards fails with
    /// [`bus::Error::Closed`]. Waits (up to a few seconds) for the subscriptions to finish.
    pub async fn close(&self) {
        self.inner.registry.close_all();
        for _ in 0..1000 {
            if self.inner.registry.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!("sqlite log subscriptions did not stop in time");
    }

    fn send(&self, op: WriteOp) -> bus::Result<()> {
        if self.inner.registry.closed.load(Ordering::Acquire) {
            return Err(bus::Error::Closed);
        }
        self.inner.writer.send(op).map_err(|_| bus::Error::Closed)
    }
}

const CAPABILITIES: Capabilities = Capabilities::ALL;

#[async_trait]
impl Publisher for SqliteLog {
    /// Appends the batch in one transaction, group-committed with concurrent publishes; returns
    /// once it is fsynced. Dropping the future leaves the batch wholly published or not at all.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> bus::Result<()> {
        validate_name(topic)?;
        let limit = self.inner.options.max_message_bytes;
        for m in &messages {
            let size = m.payload.len() + m.key.len() + m.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            if size > limit {
                return Err(bus::Error::TooLarge { size, limit });
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::Publish { topic: topic.to_owned(), messages, reply })?;
        answer.await.map_err(|_| bus::Error::Closed)?
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

#[async_trait]
impl Subscriber for SqliteLog {
    /// Joins `group` as a new member: it leases its share of the topic's partitions (others of
    /// the group, in this process or another, give up extras) and resumes each from the group's
    /// committed position. Deliveries of one key come one at a time, in order.
    async fn subscribe(&self, topic: &str, group: &str) -> bus::Result<Subscription> {
        self.join(topic, group, None).await
    }

    /// As [`subscribe`](Self::subscribe); the consumer thread settles refused types itself, as
    /// soon as it reads them.
    async fn subscribe_filtered(&self, topic: &str, group: &str, wants: TypeFilter) -> bus::Result<Subscription> {
        self.join(topic, group, Some(wants)).await
    }

    /// Messages past the group's committed position in each partition, plus those it parked
    /// for redelivery. Positions are committed every [`LogOptions::commit_interval`], so the
    /// count trails acks by that much.
    async fn lag(&self, topic: &str, group: &str) -> bus::Result<u64> {
        validate_name(topic)?;
        validate_name(group)?;
        self.unsettled(topic, group).await
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

impl SqliteLog {
    async fn join(&self, topic: &str, group: &str, wants: Option<TypeFilter>) -> bus::Result<Subscription> {
        validate_name(topic)?;
        validate_name(group)?;
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::Topic { name: topic.to_owned(), reply })?;
        let info = answer.await.map_err(|_| bus::Error::Closed)??;
        let reader = open_connection(&self.inner.path, true).map_err(transport)?;
        let member =
            MemberKey { group: group.into(), topic_id: info.id, owner: uuid::Uuid::now_v7().to_string().into() };
        let (events_tx, events) = mpsc::channel();
        let (out, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let woken = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(consumer::Acks::default());
        let member_id =
            self.inner.registry.add(info.id, member.group.clone(), wants.clone(), events_tx.clone(), woken.clone())?;
        let consumer = Consumer::new(consumer::Setup {
            topic: topic.to_owned(),
            info,
            member,
            options: self.inner.options.clone(),
            reader,
            writer: self.inner.writer.clone(),
            events_tx: events_tx.clone(),
            events,
            out,
            registry: self.inner.registry.clone(),
            member_id,
            woken,
            wants,
            acks: acks.clone(),
        });
        let spawned = std::thread::Builder::new().name("weir-log-consumer".into()).spawn(move || consumer.run());
        if let Err(e) = spawned {
            self.inner.registry.remove(member_id);
            return Err(bus::Error::transport(e));
        }
        Ok(Subscription::new(LogStream { deliveries, acks, events: events_tx, registry: self.inner.registry.clone() }))
    }
}

/// The async side of one subscription.
struct LogStream {
    deliveries: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    acks: Arc<consumer::Acks>,
    events: mpsc::Sender<Event>,
    registry: Arc<Registry>,
}

#[async_trait]
impl DeliveryStream for LogStream {
    /// Cancel-safe: a delivery is taken from the channel only when it is returned.
    async fn next(&mut self) -> Option<Delivery> {
        if self.registry.closed.load(Ordering::Acquire) {
            return None;
        }
        self.deliveries.recv().await
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        // The consumer commits what was settled and releases its leases; unsettled deliveries
        // (including those still buffered here) are redelivered from the committed position.
        self.acks.close();
        let _ = self.events.send(Event::Close);
    }
}

/// What a consumer thread reacts to.
pub(crate) enum Event {
    Settle {
        partition: u32,
        epoch: u64,
        target: consumer::Target,
        outcome: Outcome,
    },
    /// New messages were committed to the topic, in the partitions the member's `woken` mask
    /// names.
    Wake,
    /// Acks were queued and the consumer asked to hear of them at once (see `consumer::Acks`).
    Acked,
    /// The group's membership changed: rebalance now rather than at the next heartbeat.
    Rebalance,
    /// The writer found these partitions leased by someone else.
    Lost(Vec<u32>),
    Close,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Ack,
    Nack(Duration),
}

/// The consumers of this process, so that publishes wake them and joins rebalance them.
#[derive(Default)]
pub(crate) struct Registry {
    members: StdMutex<Vec<RegisteredMember>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

struct RegisteredMember {
    id: u64,
    topic_id: i64,
    group: Arc<str>,
    /// The event types the member handles (`None`: all); it is not woken for others.
    wants: Option<TypeFilter>,
    events: mpsc::Sender<Event>,
    /// The [`partition_bit`]s published to since the member last looked; non-zero while a
    /// `Wake` is queued, so a burst of publishes queues one.
    woken: Arc<AtomicU64>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RegisteredMember>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(
        &self,
        topic_id: i64,
        group: Arc<str>,
        wants: Option<TypeFilter>,
        events: mpsc::Sender<Event>,
        woken: Arc<AtomicU64>,
    ) -> bus::Result<u64> {
        let mut members = self.lock();
        // Checked under the lock so that `close_all` cannot miss a member.
        if self.closed.load(Ordering::Acquire) {
            return Err(bus::Error::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        members.push(RegisteredMember { id, topic_id, group, wants, events, woken });
        Ok(id)
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().retain(|m| m.id != id);
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Tells the topic's members that the `written` partitions have new messages, except the
    /// members that handle none of their types: a member settles those in place, without a
    /// handler, when it next reads the partition (woken for another message, or at its poll),
    /// so waking its thread for them would only move its position sooner.
    pub(crate) fn wake_topic(&self, topic_id: i64, written: &Written) {
        let wanted = |m: &&RegisteredMember| match (&m.wants, &written.kinds) {
            (Some(wants), Some(kinds)) => kinds.iter().any(|kind| wants(kind)),
            _ => true,
        };
        let partitions = written.partitions;
        for m in self.lock().iter().filter(|m| m.topic_id == topic_id).filter(wanted) {
            if m.woken.fetch_or(partitions, Ordering::AcqRel) == 0 {
                let _ = m.events.send(Event::Wake);
            }
        }
    }

    pub(crate) fn rebalance_group(&self, topic_id: i64, group: &str, except: u64) {
        for m in self.lock().iter().filter(|m| m.topic_id == topic_id && &*m.group == group && m.id != except) {
            let _ = m.events.send(Event::Rebalance);
        }
    }

    fn close_all(&self) {
        let members = self.lock();
        self.closed.store(true, Ordering::Release);
        for m in members.iter() {
            let _ = m.events.send(Event::Close);
        }
    }
}

/// What publishes wrote to one topic, for waking its members: the partitions
/// ([`partition_bit`]s) and the messages' event types (`None` once a message had no type).
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub partitions: u64,
    pub kinds: Option<Vec<String>>,
}

impl Default for Written {
    fn default() -> Self {
        Self { partitions: 0, kinds: Some(Vec::new()) }
    }
}

impl Written {
    /// Counts one message written to `partition`, of type `kind`.
    pub(crate) fn add(&mut self, partition: u32, kind: Option<&str>) {
        self.partitions |= partition_bit(partition);
        self.add_kind(kind);
    }

    pub(crate) fn merge(&mut self, other: Written) {
        self.partitions |= other.partitions;
        match other.kinds {
            Some(kinds) => kinds.iter().for_each(|kind| self.add_kind(Some(kind))),
            None => self.kinds = None,
        }
    }

    fn add_kind(&mut self, kind: Option<&str>) {
        match (kind, &mut self.kinds) {
            (None, kinds) => *kinds = None,
            (Some(kind), Some(kinds)) if !kinds.iter().any(|k| k == kind) => kinds.push(kind.to_owned()),
            (Some(_), _) => {}
        }
    }
}

/// A partition's bit in a wake-up mask: a consumer woken for a publish reads only the partitions
/// whose bits are set (a topic with more than 64 partitions shares bits: a superset is safe).
pub(crate) fn partition_bit(partition: u32) -> u64 {
    1 << (partition % 64)
}

/// Encodes headers as `count, (name length, name, value length, value)*` with u32 lengths.
pub(crate) fn encode_headers(headers: &Headers, buffer: &mut Vec<u8>) {
    buffer.clear();
    buffer.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        for part in [name, value] {
            buffer.extend_from_slice(&(part.len() as u32).to_le_bytes());
            buffer.extend_from_slice(part.as_bytes());
        }
    }
}

/// Walks [`encode_headers`]' format, giving `each` every name and value in turn; `None` if the
/// bytes are not in it (after giving it the entries before the fault).
fn walk_headers<'a>(mut bytes: &'a [u8], mut each: impl FnMut(&'a str, &'a str)) -> Option<()> {
    fn text<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
        let (length, rest) = bytes.split_first_chunk::<4>()?;
        let n = u32::from_le_bytes(*length) as usize;
        if rest.len() < n {
            return None;
        }
        let (head, rest) = rest.split_at(n);
        *bytes = rest;
        std::str::from_utf8(head).ok()
    }
    let (count, rest) = bytes.split_first_chunk::<4>()?;
    bytes = rest;
    for _ in 0..u32::from_le_bytes(*count) {
        let name = text(&mut bytes)?;
        each(name, text(&mut bytes)?);
    }
    Some(())
}

/// The message in columns `key, headers, payload` of `row`, starting at column `first`.
pub(crate) fn read_message(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Message> {
    let key: String = row.get(first)?;
    let headers = match row.get_ref(first + 1)?.as_blob_or_null()? {
        Some(bytes) => decode_headers(bytes).unwrap_or_default(),
        None => Default::default(),
    };
    let payload = bytes::Bytes::copy_from_slice(row.get_ref(first + 2)?.as_blob()?);
    Ok(Message { key, headers, payload })
}

/// Decodes [`encode_headers`]' format; `None` if the bytes are not in it.
pub(crate) fn decode_headers(bytes: &[u8]) -> Option<Headers> {
    let mut headers = Headers::new();
    walk_headers(bytes, |name, value| {
        headers.insert(name.to_owned(), value.to_owned());
    })?;
    Some(headers)
}

/// The value of header `name` in [`encode_headers`]' format, without building the map: what
/// [`decode_headers`] would give for it (`None` when absent, or when the bytes are not in it).
pub(crate) fn header_value<'a>(bytes: &'a [u8], name: &str) -> Option<&'a str> {
    let mut found = None;
    walk_headers(bytes, |n, value| {
        if n == name {
            found = Some(value);
        }
    })?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_rejected() {
        let mut headers = Headers::new();
        headers.insert("ce-id".into(), "0190-ü".into());
        headers.insert("empty".into(), String::new());
        let mut buffer = Vec::new();
        encode_headers(&headers, &mut buffer);
        assert_eq!(decode_headers(&buffer), Some(headers));
        assert_eq!(header_value(&buffer, "ce-id"), Some("0190-ü"));
        assert_eq!(header_value(&buffer, "empty"), Some(""));
        assert_eq!(header_value(&buffer, "absent"), None);
        for garbage in [&buffer[..buffer.len() - 1], &[255, 255, 255, 255][..], &[1, 0][..]] {
            assert_eq!(decode_headers(garbage), None);
            assert_eq!(header_value(garbage, "ce-id"), None, "a value from bytes that do not decode");
        }
    }

    #[test]
    fn members_are_woken_only_for_types_they_handle() {
        let registry = Registry::default();
        let member = |wants: Option<TypeFilter>| {
            let (events, received) = mpsc::channel();
            registry.add(7, "group".into(), wants, events, Arc::new(AtomicU64::new(0))).unwrap();
            received
        };
        let payments = member(Some(Arc::new(|kind: &str| kind == "payment_failed")));
        let everything = member(None);
        let other_topic = {
            let (events, received) = mpsc::channel();
            registry.add(8, "group".into(), None, events, Arc::new(AtomicU64::new(0))).unwrap();
            received
        };
        let woken = |received: &mpsc::Receiver<Event>| {
            let mut n = 0;
            while let Ok(event) = received.try_recv() {
                assert!(matches!(event, Event::Wake));
                n += 1;
            }
            n
        };

        let mut created = Written::default();
        created.add(0, Some("order_created"));
        registry.wake_topic(7, &created);
        assert_eq!((woken(&payments), woken(&everything), woken(&other_topic)), (0, 1, 0));

        // Woken while any message of the batch is theirs, or of no type at all.
        let mut both = created.clone();
        let mut failed = Written::default();
        failed.add(1, Some("payment_failed"));
        both.merge(failed);
        assert_eq!(both.partitions, partition_bit(0) | partition_bit(1));
        let mut untyped = Written::default();
        untyped.add(2, None);
        let mut typed_then_untyped = created.clone();
        typed_then_untyped.merge(untyped.clone());
        assert_eq!(typed_then_untyped.kinds, None, "a message of no type may be anyone's");
        for written in [both, untyped] {
            // A member that has not looked since its last wake-up is not sent another.
            registry.lock().iter().for_each(|m| m.woken.store(0, Ordering::SeqCst));
            registry.wake_topic(7, &written);
            for received in [&payments, &everything] {
                assert_eq!(woken(received), 1, "{written:?}");
            }
        }
    }
}
