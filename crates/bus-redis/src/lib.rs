//! Redis Streams transport for Weir: [`RedisBus`] implements the bus ports
//! ([`weir_core::bus::Publisher`] and [`weir_core::bus::Subscriber`]) over Redis streams and
//! consumer groups. It is only a transport: it moves [`Message`]s and knows nothing of events,
//! routing, retries or dead letters — the router decides those from
//! [`Delivery::attempt`](weir_core::bus::Delivery::attempt), and a `.dlq` topic is a topic like
//! any other. It does not configure the Redis server either; what durability a deployment gets
//! from which server settings is written below. It needs Redis 7.0 or later.
//!
//! # Mapping
//!
//! - A **topic** is one stream per partition, `<prefix>:{<topic>}:<partition>`, partition =
//!   [`weir_core::bus::partition_of`]`(key, partitions)` ([`Options::partitions`]; every process
//!   of a deployment must use the same number). The braces are a Redis Cluster hash tag: all keys
//!   of a topic live in one slot, which lets one script touch a topic's streams and its groups'
//!   retry state atomically.
//! - A **message** is one stream entry whose fields are `key`, one `h:<name>` per header, and
//!   `payload`, each value the exact bytes (Redis strings are binary-safe: nothing is escaped or
//!   re-encoded). Fields Weir did not write are ignored on reading.
//! - A **group** is one Redis consumer group of that name on each of the topic's streams, created
//!   at the first subscription with `XGROUP CREATE <stream> <group> 0 MKSTREAM`: a new group
//!   starts at the beginning of what the streams retain. Its members share the load: each process
//!   is one Redis consumer ([`Options::consumer`]) reading `XREADGROUP ... >` on a dedicated
//!   connection, so every entry goes to one process; within a process the subscriptions of one
//!   group share what it reads.
//! - **Publish** sends the whole batch as one `MULTI`/`EXEC` of `XADD`s and returns once Redis
//!   answered the `EXEC`: the batch is applied all or nothing. It runs as a task of its own, so a
//!   caller that drops the future cannot cut a batch in half. With [`Options::min_replicas`], it
//!   then waits (`WAIT`) until that many replicas have the batch.
//! - **Ack** is `XACK`, and returns once Redis confirmed it; acks settled while an earlier one is
//!   on its way share one round trip (an `XACK` per partition with all their ids). A delivery
//!   dropped unsettled is handed out again at once, by its own process, with its attempt one
//!   higher.
//! - **Nack with a delay** moves the message, in one Lua script, from the group's pending entries
//!   list (`XACK`) to the group's **retry set** — a sorted set `<prefix>:{<topic>}:g:<group>:retry`
//!   whose members are `<partition>:<entry id>` and whose scores are the Unix milliseconds (of the
//!   server's clock) at which each is due — and records its attempt count in the hash `...:attempts`
//!   and the key it holds back in the hash `...:blocked`. A crash between the steps is impossible,
//!   so a nacked message is never lost nor doubled. When it comes due, a member takes it with a
//!   script that sets its score to the end of a lease ([`Options::claim_idle`]), raises its attempt
//!   count, and reads the entry back from its stream; the lease is renewed while the member holds
//!   it, and an ack removes it. [`Delivery::attempt`](weir_core::bus::Delivery::attempt) is thus
//!   durable: one higher per nack, across restarts. The process that nacked wakes when the retry is
//!   due; others look every second.
//! - **Take-over**: entries a member leaves pending — it died, or its subscription was dropped —
//!   are taken over with `XAUTOCLAIM` by another member once idle for [`Options::claim_idle`]
//!   (with their delivery counts from `XPENDING`), and retries whose lease ran out are taken like
//!   due ones. A member keeps everything it holds from going idle (`XCLAIM ... JUSTID` to itself,
//!   every third of the claim idle time). A process that starts again under the **same consumer
//!   name** takes its own pending entries back at once, before reading anything new.
//!
//! # Ordering and the per-key gate
//!
//! A stream hands out a group's new entries in order, but pending entries, take-overs and
//! retries come back out of that order. So, like `weir-bus-nats`, each process keeps one gate per
//! group: per key it hands out one message at a time — the earliest not yet acked, the *head* —
//! and holds the later ones until the head's ack is confirmed by Redis. A nacked head stays the
//! head while it waits in the retry set; later messages of its key stay held until the retry is
//! taken, handed out and acked, while other keys flow on.
//!
//! Guarantees, precisely:
//!
//! - Within one process, a group's messages of one key reach its members in publish order, one at
//!   a time, each after the previous one was acked; a nacked or dropped message comes back before
//!   any later message of its key.
//! - When a process dies, its successor keeps the order: the dying process kept its held entries
//!   alive in stream order (a key's messages go idle together, and `XAUTOCLAIM` scans in stream
//!   order), and the successor holds back every key that has a message waiting in the retry set —
//!   read from the `blocked` hash at start, and looked up for every entry it takes over — until
//!   that retry was handed out and acked. A successor under the same consumer name recovers its own
//!   pending entries before it reads new ones. One case escapes: a successor under a *new* name
//!   that starts before the dead process's entries went idle may hand out new messages of a key
//!   before the dead process's older ones of that key, which it only takes over after
//!   [`Options::claim_idle`]. Give each process a stable consumer name (a StatefulSet pod name, a
//!   host name) to avoid it.
//! - Across live processes there is no such guarantee: Redis hands each process entries of any
//!   key, so two processes can handle one key concurrently, and a retry taken by a process other
//!   than the one that held its key releases that key only when the holder gives up waiting (the
//!   retry's due time plus twice the claim idle time plus a second; it then logs a warning). Per-key
//!   order across processes needs partition assignment, which this crate does not do: run one
//!   consuming process per group, or accept that.
//! - A key held back holds its later messages in memory, at most [`Options::max_held`] per group;
//!   when one key has piled up that many, the process reads nothing more for the group until it
//!   moves. A process reads again only while fewer than [`Options::prefetch`] messages of the
//!   group wait for its members.
//!
//! # Durability by Redis setting
//!
//! `publish` returns `Ok` once Redis executed the batch. What survives a crash depends on the
//! server's persistence, which this crate cannot set (it logs a warning at connect time when
//! `CONFIG GET` shows anything weaker than the first line):
//!
//! - **`appendonly yes` + `appendfsync always`**: Redis writes the batch to its append-only file
//!   and fsyncs it before it answers, so every acknowledged publish — and every ack, nack and group
//!   position — survives a crash of Redis or of the machine. Throughput is bounded by the disk's
//!   fsync rate (Redis batches the writes of concurrent clients into one fsync). This is the
//!   setting for production, tested in `tests/redis.rs` by killing Redis with `SIGKILL`.
//! - **`appendonly yes` + `appendfsync everysec`** (Redis's default once AOF is on): up to about a
//!   second of acknowledged publishes (and acks: those messages come back) is lost when the machine
//!   or Redis crashes.
//! - **No AOF** — Redis's own default, and this machine's shared Redis (no persistence at all):
//!   everything is lost when Redis restarts; with RDB snapshots (`save`), everything since the
//!   last snapshot. Fine for tests, not for data.
//! - **Replicas** do not make an acknowledged write durable by themselves: replication is
//!   asynchronous, and a failover can lose what the replica had not received.
//!   [`Options::min_replicas`] makes `publish` wait (`WAIT`) until that many replicas have the
//!   batch, and fail otherwise — though the batch may still have been applied on the primary
//!   (at least once: the publisher tries again, a consumer deduplicates). Redis 7.2's `WAITAOF`
//!   is not used.
//!
//! # Retention
//!
//! By default nothing is trimmed: streams grow until entries are deleted by an operator. With
//! [`Options::max_len`] = `Some(n)`, every `XADD` trims its stream to about `n` entries
//! (`MAXLEN ~ n`, per partition: a topic keeps about `partitions × n`). Trimming ignores consumer
//! groups: a group that lags by more than that loses the oldest messages, and pending entries or
//! retries whose entry was trimmed are dropped when they come back. Size it well above the worst
//! lag, or trim by time from outside (`XTRIM MINID`).
//!
//! # Lag
//!
//! [`Subscriber::lag`] sums, over the topic's streams, Redis's `lag` of the group (entries never
//! delivered to it; `XINFO GROUPS`) plus its `pending` entries (delivered, not acked), plus the
//! group's retry set (nacked, waiting or being retried). A stream the group never read counts its
//! whole length; a topic never published to counts 0; nothing is created by asking. When Redis cannot tell the lag (`nil`, after entries inside the unread
//! range were deleted with `XDEL`), the stream's length stands in — an upper bound. Entries a
//! process read ahead into its gate count as pending.
//!
//! # Limits
//!
//! - A message (payload, key, header names and values) may be at most
//!   [`Options::max_message_bytes`] (64 MiB by default; Redis's own limit on one string is 512 MB,
//!   `proto-max-bulk-len`); a batch larger than Redis's `client-query-buffer-limit` (1 GB) fails.
//!   Larger messages fail with [`Error::TooLarge`] before anything is sent.
//! - Topic and group names follow [`weir_core::bus::validate_name`]; the prefix may use letters,
//!   digits, '.', '-' and '_'.
//! - Redis Cluster: every script touches the keys of one topic only, which share a hash tag, so a
//!   topic lives on one shard. This has not been tested against a cluster.
//! - `subscribe_filtered` delivers everything (the port's default): the consumer filters.

mod gate;
mod names;
mod scripts;
mod subscribe;
mod wire;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use redis::{AsyncConnectionConfig, Value, aio::ConnectionManager};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::bus::{
    Capabilities, Error, Message, Publisher, Result, Subscriber, Subscription, partition_of, validate_name,
};

use crate::{names::TopicKeys, subscribe::Group};

/// Settings of a [`RedisBus`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of every key, so that deployments and tests sharing a server stay apart: letters,
    /// digits, '.', '-' and '_'. Default `weir`.
    pub prefix: String,
    /// Partitions (streams) per topic. Every process of a deployment must use the same number:
    /// a key's messages must land in one stream to stay in order. Default 16.
    pub partitions: u32,
    /// This process's name as a member of its groups, unique among the live processes. A process
    /// restarted under the same name takes its own unsettled messages back at once and in order;
    /// under a new name, they are taken over after [`claim_idle`](Self::claim_idle). Default
    /// `None`: a fresh name per [`RedisBus::connect`].
    pub consumer: Option<String>,
    /// How long a pending entry must be idle before another member takes it over; also the lease
    /// of a retry being handled. It is how soon the messages of a crashed process come back, and
    /// how long a handler may run before its message is handed out elsewhere too (a live member
    /// renews what it holds every third of it). Default 30 s.
    pub claim_idle: Duration,
    /// Read-ahead per group: a process reads again only while fewer than this many messages wait
    /// for its members, and each read takes at most this many from each partition (`COUNT`
    /// applies per stream). Default 64.
    pub prefetch: usize,
    /// Messages a process holds back per group behind unacked earlier messages of their key,
    /// before it stops reading the group. Default 10,000.
    pub max_held: usize,
    /// Approximate number of entries each stream keeps (`XADD ... MAXLEN ~ n`). Default `None`:
    /// nothing is trimmed. See the crate docs on retention.
    pub max_len: Option<usize>,
    /// Largest message (payload, key, header names and values) `publish` accepts. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Replicas that must have a batch before `publish` returns (`WAIT`). Default 0.
    pub min_replicas: u32,
    /// How long `publish` waits for [`min_replicas`](Self::min_replicas). Default 5 s.
    pub replica_timeout: Duration,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a command may wait for its answer before it fails. Default 10 s.
    pub response_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "weir".to_owned(),
            partitions: 16,
            consumer: None,
            claim_idle: Duration::from_secs(30),
            prefetch: 64,
            max_held: 10_000,
            max_len: None,
            max_message_bytes: 64 << 20,
            min_replicas: 0,
            replica_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Default options under another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}

/// A Redis connection that publishes and subscribes. Cheap to clone: clones share the
/// connection, the consumer name and the per-group gates.
#[derive(Clone)]
pub struct RedisBus {
    shared: Arc<Shared>,
}

/// What clones of a [`RedisBus`] share.
pub(crate) struct Shared {
    client: redis::Client,
    /// Commands (publish, ack, scripts); reconnects by itself.
    conn: ConnectionManager,
    options: Options,
    consumer: String,
    /// The live group of each (topic, group), so that members in this process share it.
    groups: Mutex<HashMap<(String, String), Weak<Group>>>,
    closed: CancellationToken,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("consumer", &self.shared.consumer)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`) and checks
    /// that it is Redis 7.0 or later. Fails at once when the server is unreachable; once
    /// connected, the connection is re-established by itself.
    pub async fn connect(url: &str, options: Options) -> Result<Self> {
        names::validate_prefix(&options.prefix)?;
        if options.partitions == 0 {
            return Err(Error::InvalidName("partitions must be at least 1".to_owned()));
        }
        if let Some(consumer) = &options.consumer {
            names::validate_consumer(consumer)?;
        }
        let client = redis::Client::open(url).map_err(Error::transport)?;
        let address = client.get_connection_info().addr().to_string();
        // One plain connection first: the connection manager would retry an unreachable server
        // with backoff instead of failing.
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(|source| Error::transport(Unreachable { address: address.clone(), source }))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut probe)
            .await
            .map_err(|source| Error::transport(Unreachable { address: address.clone(), source }))?;
        check_version(&info)?;
        warn_unless_durable(&mut probe, &address).await;

        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(3);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| Error::transport(Unreachable { address, source }))?;
        let consumer = options.consumer.clone().unwrap_or_else(fresh_consumer_name);
        let shared =
            Shared { client, conn, options, consumer, groups: Mutex::default(), closed: CancellationToken::new() };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// This process's consumer name in its groups.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// The streams that hold `topic`, by partition: for operators and tests.
    pub fn streams(&self, topic: &str) -> Result<Vec<String>> {
        validate_name(topic)?;
        Ok(self.topic_keys(topic).streams())
    }

    /// Closes the bus and every clone of it: subscriptions end (`next` returns `None`), publish
    /// and later acks fail with [`Error::Closed`]. Unsettled deliveries stay pending in Redis.
    pub fn close(&self) {
        self.shared.closed.cancel();
    }

    fn topic_keys(&self, topic: &str) -> TopicKeys {
        TopicKeys::new(&self.shared.options.prefix, topic, self.shared.options.partitions)
    }
}

impl Shared {
    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() { Err(Error::Closed) } else { Ok(()) }
    }

    fn groups_lock(&self) -> MutexGuard<'_, HashMap<(String, String), Weak<Group>>> {
        self.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, e: redis::RedisError) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::transport(e) }
    }
}

/// A name no other process uses: process id, start time and a counter.
fn fresh_consumer_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("c-{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The server is older than 7.0 (no `lag` in `XINFO GROUPS`; `XAUTOCLAIM` needs 6.2).
#[derive(Debug, thiserror::Error)]
#[error("Redis {0} is too old: weir-bus-redis needs Redis 7.0 or later")]
pub struct TooOld(pub String);

/// The server could not be reached (or did not answer) when connecting.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {address}: {source}")]
pub struct Unreachable {
    pub address: String,
    #[source]
    pub source: redis::RedisError,
}

/// Replicas did not confirm a batch within [`Options::replica_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("{acknowledged} of {wanted} replicas confirmed the batch in time (it may still be on the primary)")]
pub struct NotReplicated {
    pub acknowledged: i64,
    pub wanted: u32,
}

fn check_version(info: &str) -> Result<()> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 7 { Ok(()) } else { Err(Error::transport(TooOld(version))) }
}

/// Logs a warning when the server would lose acknowledged publishes in a crash. Managed Redis
/// services often disable `CONFIG`; then nothing can be told and nothing is logged above debug.
async fn warn_unless_durable(conn: &mut redis::aio::MultiplexedConnection, address: &str) {
    let settings: redis::RedisResult<HashMap<String, String>> =
        redis::cmd("CONFIG").arg("GET").arg("append*").query_async(conn).await;
    match settings {
        Ok(settings) => {
            let appendonly = settings.get("appendonly").map_or("unknown", String::as_str);
            let appendfsync = settings.get("appendfsync").map_or("unknown", String::as_str);
            if appendonly != "yes" || appendfsync != "always" {
                warn!(
                    address,
                    appendonly,
                    appendfsync,
                    "Redis may lose acknowledged messages in a crash; \
                     use appendonly yes and appendfsync always for durability"
                );
            }
        }
        Err(e) => debug!(address, error = %e, "cannot read Redis's persistence settings"),
    }
}

#[async_trait]
impl Publisher for RedisBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        // Every message is checked before any is sent: an oversized one fails the whole batch.
        let limit = shared.options.max_message_bytes;
        if let Some(size) = messages.iter().map(wire::size).find(|size| *size > limit) {
            return Err(Error::TooLarge { size, limit });
        }
        let keys = self.topic_keys(topic);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for message in &messages {
            let command = pipe.cmd("XADD").arg(keys.stream(partition_of(&message.key, shared.options.partitions)));
            if let Some(max_len) = shared.options.max_len {
                command.arg("MAXLEN").arg("~").arg(max_len);
            }
            command.arg("*");
            for (name, value) in wire::fields(message) {
                command.arg(name).arg(value);
            }
        }
        drop(messages);
        let task_shared = shared.clone();
        // A task of its own, so that dropping this future cannot leave the batch half sent: the
        // whole MULTI...EXEC is written, or Redis discards the transaction.
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let mut conn = shared.conn.clone();
            let replies: Vec<Value> = pipe.query_async(&mut conn).await.map_err(|e| shared.error(e))?;
            if let Some(Value::ServerError(e)) = replies.iter().find(|r| matches!(r, Value::ServerError(_))) {
                return Err(Error::transport(redis::RedisError::from(e.clone())));
            }
            let wanted = shared.options.min_replicas;
            if wanted > 0 {
                let acknowledged: i64 = redis::cmd("WAIT")
                    .arg(wanted)
                    .arg(subscribe::millis(shared.options.replica_timeout))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| shared.error(e))?;
                if acknowledged < i64::from(wanted) {
                    return Err(Error::transport(NotReplicated { acknowledged, wanted }));
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
impl Subscriber for RedisBus {
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
        let keys = self.topic_keys(topic).group(group);
        subscribe::Core::create_groups(&shared.conn, &keys, group).await.map_err(|e| match e {
            Error::Transport(_) if shared.closed.is_cancelled() => Error::Closed,
            other => other,
        })?;
        // Checked again under the lock: another member may have started the group meanwhile.
        let mut groups = shared.groups_lock();
        groups.retain(|_, weak| weak.strong_count() > 0);
        let live = match groups.get(&key).and_then(Weak::upgrade) {
            Some(live) => live,
            None => {
                let live = Group::start(shared, topic, group, keys);
                groups.insert(key, Arc::downgrade(&live));
                live
            }
        };
        Ok(Subscription::new(live.member()))
    }

    /// See the crate docs on lag: Redis's `lag` plus `pending` per stream, plus the retry set.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let shared = &self.shared;
        shared.check_open()?;
        validate_name(topic)?;
        validate_name(group)?;
        let keys = self.topic_keys(topic).group(group);
        let mut invocation = scripts::LAG.key(&keys.retry);
        for stream in &keys.streams {
            invocation.key(stream);
        }
        let mut conn = shared.conn.clone();
        let lag: i64 = invocation.arg(group).invoke_async(&mut conn).await.map_err(|e| shared.error(e))?;
        Ok(u64::try_from(lag).unwrap_or(0))
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:7.2.4").is_ok());
        assert!(check_version("redis_version:6.2.14").is_err());
        assert!(check_version("nothing").is_err());
    }

    #[test]
    fn consumer_names_are_fresh_and_valid() {
        let (a, b) = (fresh_consumer_name(), fresh_consumer_name());
        assert_ne!(a, b);
        assert!(names::validate_consumer(&a).is_ok(), "{a}");
    }
}
