//! The consuming side: per (topic, group) in a process, one reader (a dedicated connection
//! blocking in `XREADGROUP`), one maintainer (retries, take-over, keep-alive), one acker and one
//! gate, shared by every member (subscription) of the group that this process opened through one
//! [`RedisBus`] and its clones.
//!
//! [`RedisBus`]: crate::RedisBus

use std::{
    collections::BTreeMap,
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::{AsyncConnectionConfig, Value, aio::ConnectionManager};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::bus::{Acker, Delivery, DeliveryStream, Error, Result};

use crate::{
    Shared,
    gate::{Entry, Gate, Source},
    names::{GroupKeys, Pos, StreamId},
    scripts, wire,
};

/// How long one `XREADGROUP` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// How often the retry set is looked at when nothing is known to come due sooner: retries of
/// other processes, and leases of members that died.
const RETRY_POLL: Duration = Duration::from_secs(1);
/// Entries per page when recovering or taking over, and retries per take.
const PAGE: usize = 100;
/// Most entries taken over from one stream in one pass; the rest follow in the next passes.
const TAKE_OVER_MOST: usize = 1000;
/// Pause before trying again after a failure (lost connection, missing group).
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Most acks sent to Redis in one round trip.
const ACK_BATCH: usize = 512;
/// How often the group's consumers are checked for ones gone for good.
const FORGET_EVERY: Duration = Duration::from_secs(600);
/// How long a consumer with nothing pending must have been idle before it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The state one group shares in this process.
pub(crate) struct Core {
    topic: String,
    group: String,
    consumer: String,
    keys: GroupKeys,
    conn: ConnectionManager,
    /// Idle time after which another member takes an entry over; also the lease of a retry.
    claim_idle: Duration,
    prefetch: usize,
    max_held: usize,
    gate: Mutex<Gate>,
    /// Signalled when the ready queue may have grown.
    ready: Notify,
    /// Signalled when the gate shrank: the reader waits for room.
    room: Notify,
    /// Signalled when this process nacked: the maintainer looks for due retries.
    retry_wake: Notify,
    /// Acks of entries pending in the streams, to [`ack_loop`].
    acks: mpsc::UnboundedSender<StreamAck>,
    closed: CancellationToken,
}

impl Core {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        // A panic while holding the lock cannot leave the gate half-updated in a way that
        // matters more than stopping delivery would, so poisoning is ignored.
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the gate waits for a nacked message's retry beyond its due time before it stops
    /// holding the key: time for a lease to run out and the retry to be taken again.
    fn grace(&self) -> Duration {
        self.claim_idle * 2 + RETRY_POLL
    }

    fn error(&self, e: redis::RedisError) -> Error {
        if self.closed.is_cancelled() { Error::Closed } else { Error::transport(e) }
    }

    fn offer(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut any = false;
        {
            let mut gate = self.gate();
            for entry in entries {
                any |= gate.offer(entry);
            }
        }
        if any {
            self.ready.notify_waiters();
        }
    }

    fn acked(&self, key: &str, pos: Pos) {
        if self.gate().acked(key, pos) {
            self.ready.notify_waiters();
        }
        self.room.notify_waiters();
    }

    /// [`acked`](Self::acked) for a batch, under one lock and one wake-up.
    fn acked_all(&self, acks: &[StreamAck]) {
        let mut any = false;
        {
            let mut gate = self.gate();
            for ack in acks {
                any |= gate.acked(&ack.key, ack.pos);
            }
        }
        if any {
            self.ready.notify_waiters();
        }
        self.room.notify_waiters();
    }

    fn dropped(&self, key: &str, pos: Pos) {
        if self.gate().dropped(key, pos) {
            self.ready.notify_waiters();
        }
    }

    /// `XGROUP CREATE ... 0 MKSTREAM` on every partition (existing groups are kept).
    pub(crate) async fn create_groups(conn: &ConnectionManager, keys: &GroupKeys, group: &str) -> Result<()> {
        let mut conn = conn.clone();
        let mut invocation = scripts::CREATE_GROUPS.prepare_invoke();
        for stream in &keys.streams {
            invocation.key(stream);
        }
        invocation.arg(group).invoke_async::<Value>(&mut conn).await.map_err(Error::transport)?;
        Ok(())
    }

    /// What an earlier incarnation of this consumer left: the keys blocked by waiting retries,
    /// then the consumer's own pending entries, in stream order per partition.
    async fn recover(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let reply: Value =
            scripts::LOAD_BLOCKED.key(&self.keys.blocked).key(&self.keys.retry).invoke_async(&mut conn).await?;
        let blocks = parse_blocked(reply).map_err(unexpected)?;
        if !blocks.is_empty() {
            let now = Instant::now();
            let mut gate = self.gate();
            for (key, pos, due_in) in blocks {
                gate.block(&key, pos, now + due_in + self.grace());
            }
        }
        for (partition, stream) in (0u32..).zip(&self.keys.streams) {
            let mut start = "-".to_owned();
            loop {
                let reply: Value = scripts::OWN_PENDING
                    .key(stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(&start)
                    .arg(PAGE)
                    .invoke_async(&mut conn)
                    .await?;
                let (last, entries) = parse_own_pending(reply, partition).map_err(unexpected)?;
                if !entries.is_empty() {
                    debug!(
                        topic = self.topic,
                        group = self.group,
                        count = entries.len(),
                        "recovered own pending entries"
                    );
                }
                self.offer(entries);
                match last {
                    Some(last) => start = format!("({last}"),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Keeps what this process holds from being taken over: resets the idle time of its pending
    /// entries (one `XCLAIM ... JUSTID` per partition, in stream order, so that a key's messages
    /// go idle in order should this process die) and extends the leases of its retries.
    async fn keep_alive(&self) {
        let (stream, retry) = self.gate().holding();
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for pos in stream {
            by_partition.entry(pos.partition).or_default().push(pos.id.to_string());
        }
        let mut conn = self.conn.clone();
        if !by_partition.is_empty() {
            let mut pipe = redis::pipe();
            for (partition, ids) in by_partition {
                let Some(stream) = self.keys.streams.get(partition as usize) else { continue };
                pipe.cmd("XCLAIM")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID")
                    .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                debug!(topic = self.topic, group = self.group, error = %e, "keep-alive of pending entries failed");
            }
        }
        if !retry.is_empty() {
            let mut invocation = scripts::RENEW_LEASES.key(&self.keys.retry);
            invocation.arg(millis(self.claim_idle));
            for pos in retry {
                invocation.arg(pos.member());
            }
            if let Err(e) = invocation.invoke_async::<Value>(&mut conn).await {
                debug!(topic = self.topic, group = self.group, error = %e, "renewing retry leases failed");
            }
        }
    }

    /// Takes over entries that other members left idle for `claim_idle` (they died, or dropped
    /// their subscription without settling).
    async fn take_over(&self) {
        let mut conn = self.conn.clone();
        let mut invocation = scripts::AUTOCLAIM.key(&self.keys.blocked);
        invocation.key(&self.keys.retry);
        for stream in &self.keys.streams {
            invocation.key(stream);
        }
        invocation.arg(&self.group).arg(&self.consumer).arg(millis(self.claim_idle)).arg(PAGE).arg(TAKE_OVER_MOST);
        let reply: Value = match invocation.invoke_async(&mut conn).await {
            Ok(reply) => reply,
            Err(e) => {
                debug!(topic = self.topic, group = self.group, error = %e, "taking over idle entries failed");
                return;
            }
        };
        let taken = match parse_autoclaim(reply) {
            Ok(taken) => taken,
            Err(e) => {
                warn!(topic = self.topic, group = self.group, error = %e, "taking over idle entries failed");
                return;
            }
        };
        if taken.is_empty() {
            return;
        }
        debug!(topic = self.topic, group = self.group, count = taken.len(), "took over idle entries");
        let now = Instant::now();
        let mut entries = Vec::with_capacity(taken.len());
        {
            let mut gate = self.gate();
            for (entry, block) in taken {
                // A waiting retry of the key came first: the taken entry must not overtake it.
                if let Some((pos, due_in)) = block
                    && !gate.knows(&entry.message.key)
                {
                    gate.block(&entry.message.key, pos, now + due_in + self.grace());
                }
                entries.push(entry);
            }
        }
        self.offer(entries);
    }

    /// Takes the due retries; returns how long until the retry set should be looked at again.
    async fn take_due(&self) -> Duration {
        let mut conn = self.conn.clone();
        loop {
            let mut invocation = scripts::TAKE_DUE.key(&self.keys.retry);
            invocation.key(&self.keys.attempts);
            for stream in &self.keys.streams {
                invocation.key(stream);
            }
            invocation.arg(millis(self.claim_idle)).arg(PAGE);
            let reply: Value = match invocation.invoke_async(&mut conn).await {
                Ok(reply) => reply,
                Err(e) => {
                    debug!(topic = self.topic, group = self.group, error = %e, "taking due retries failed");
                    return RETRY_POLL;
                }
            };
            let (next_in, entries) = match parse_take_due(reply) {
                Ok(parsed) => parsed,
                Err(e) => {
                    warn!(topic = self.topic, group = self.group, error = %e, "taking due retries failed");
                    return RETRY_POLL;
                }
            };
            let full = entries.len() >= PAGE;
            let none = entries.is_empty();
            self.offer(entries);
            if full {
                continue;
            }
            return match next_in {
                // Something is due that could not be taken (a partition this process does not
                // know): look again at the usual pace rather than spin.
                Some(next_in) if next_in.is_zero() && none => RETRY_POLL,
                // A millisecond more than the score says, as scores are whole milliseconds.
                Some(next_in) => (next_in + Duration::from_millis(1)).min(RETRY_POLL),
                None => RETRY_POLL,
            };
        }
    }

    async fn forget_consumers(&self) {
        let mut conn = self.conn.clone();
        let mut invocation = scripts::FORGET_CONSUMERS.prepare_invoke();
        for stream in &self.keys.streams {
            invocation.key(stream);
        }
        invocation.arg(&self.group).arg(&self.consumer).arg(millis(FORGET_AFTER.max(self.claim_idle * 10)));
        match invocation.invoke_async::<i64>(&mut conn).await {
            Ok(0) => {}
            Ok(count) => debug!(topic = self.topic, group = self.group, count, "forgot consumers gone for good"),
            Err(e) => debug!(topic = self.topic, group = self.group, error = %e, "forgetting consumers failed"),
        }
    }

    fn expire(&self) {
        let overdue = self.gate().expire(Instant::now());
        if overdue.is_empty() {
            return;
        }
        for (key, pos) in &overdue {
            warn!(
                topic = self.topic,
                group = self.group,
                key,
                member = pos.member(),
                "a nacked message's retry is overdue (taken by another process?); releasing its key"
            );
        }
        self.ready.notify_waiters();
    }
}

/// One group's reader, maintainer and gate, alive while any member of the group is.
pub(crate) struct Group {
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        // The last member is gone: stop reading. What the gate held stays pending under this
        // consumer: the next member of this process recovers it at once, another process takes
        // it over after the claim idle time.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Group {
    pub(crate) fn start(shared: &Arc<Shared>, topic: &str, group: &str, keys: GroupKeys) -> Arc<Self> {
        let options = &shared.options;
        let (acks, pending_acks) = mpsc::unbounded_channel();
        let streams = keys.streams.clone();
        let core = Arc::new(Core {
            topic: topic.to_owned(),
            group: group.to_owned(),
            consumer: shared.consumer.clone(),
            keys,
            conn: shared.conn.clone(),
            claim_idle: options.claim_idle.max(Duration::from_millis(100)),
            prefetch: options.prefetch.max(1),
            max_held: options.max_held.max(1),
            gate: Mutex::new(Gate::default()),
            ready: Notify::new(),
            room: Notify::new(),
            retry_wake: Notify::new(),
            acks,
            closed: shared.closed.child_token(),
        });
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(BLOCK + options.response_timeout));
        // The acker ends when the last holder of the core (the group, or a delivery acked after
        // it) is gone, so a late ack still reaches Redis.
        let acker = ack_loop(pending_acks, Arc::downgrade(&core), shared.conn.clone(), streams, group.to_owned());
        tokio::spawn(acker);
        let read = tokio::spawn(read_loop(core.clone(), shared.client.clone(), config));
        let maintain = tokio::spawn(maintain(core.clone()));
        Arc::new(Self { core, tasks: vec![read, maintain] })
    }

    pub(crate) fn member(self: &Arc<Self>) -> Member {
        Member { group: self.clone() }
    }
}

/// Recovers, then feeds the gate from `XREADGROUP ... >` on a connection of its own (a blocking
/// read would hold up every command multiplexed behind it).
async fn read_loop(core: Arc<Core>, client: redis::Client, config: AsyncConnectionConfig) {
    let mut connection = None;
    let mut recovered = false;
    loop {
        if core.closed.is_cancelled() {
            return;
        }
        if !recovered {
            match core.recover().await {
                Ok(()) => recovered = true,
                Err(e) => {
                    warn!(topic = core.topic, group = core.group, error = %e, "cannot recover pending entries; retrying");
                    pause(&core).await;
                    continue;
                }
            }
        }
        wait_for_room(&core).await;
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    warn!(topic = core.topic, group = core.group, error = %e, "cannot connect to read; retrying");
                    pause(&core).await;
                    continue;
                }
            },
        };
        let streams = &core.keys.streams;
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&core.group)
            .arg(&core.consumer)
            .arg("COUNT")
            .arg(core.prefetch)
            .arg("BLOCK")
            .arg(millis(BLOCK))
            .arg("STREAMS")
            .arg(streams)
            .arg(vec![">"; streams.len()]);
        let reply = tokio::select! {
            reply = read.query_async::<Value>(conn) => reply,
            () = core.closed.cancelled() => return,
        };
        match reply {
            Ok(value) => match wire::read_reply(value) {
                Ok(read) => core.offer(fresh_entries(&core, read)),
                Err(e) => warn!(topic = core.topic, group = core.group, error = %e, "unreadable entries"),
            },
            Err(e) if e.code() == Some("NOGROUP") => {
                // The streams or the group were deleted behind our back: create them again.
                warn!(topic = core.topic, group = core.group, "the group is gone; creating it again");
                if let Err(e) = Core::create_groups(&core.conn, &core.keys, &core.group).await {
                    warn!(topic = core.topic, group = core.group, error = %e, "cannot create the group; retrying");
                    pause(&core).await;
                }
            }
            Err(e) => {
                warn!(topic = core.topic, group = core.group, error = %e, "read failed; reconnecting");
                connection = None;
                // After a server restart the entries delivered but unsettled are pending again.
                recovered = false;
                pause(&core).await;
            }
        }
    }
}

/// Entries of an `XREADGROUP ... >`: first deliveries. Entries already deleted are acked away.
fn fresh_entries(core: &Arc<Core>, read: Vec<(String, Vec<wire::RawEntry>)>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (stream, raw) in read {
        let Some(partition) = core.keys.streams.iter().position(|s| *s == stream) else {
            warn!(topic = core.topic, stream, "entries of a stream that was not asked for");
            continue;
        };
        for raw in raw {
            let pos = Pos { id: raw.id, partition: partition as u32 };
            match raw.message {
                Some(message) => entries.push(Entry { pos, attempt: 1, source: Source::Stream, message }),
                None => {
                    let (core, stream) = (core.clone(), stream.clone());
                    tokio::spawn(async move {
                        let mut conn = core.conn.clone();
                        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                            .arg(&stream)
                            .arg(&core.group)
                            .arg(pos.id.to_string())
                            .query_async(&mut conn)
                            .await;
                        if let Err(e) = acked {
                            debug!(topic = core.topic, error = %e, "acking a deleted entry failed");
                        }
                    });
                }
            }
        }
    }
    entries
}

/// Runs the group's timers: due retries (at once when this process nacked, else when the next
/// one comes due or every [`RETRY_POLL`]), keep-alive of what the gate holds (every third of the
/// claim idle time), take-over of idle entries (every half of it).
async fn maintain(core: Arc<Core>) {
    let keep_alive_every = core.claim_idle / 3;
    let take_over_every = core.claim_idle / 2;
    let now = Instant::now();
    let (mut next_keep_alive, mut next_take_over, mut next_retry) = (now + keep_alive_every, now, now);
    let mut next_forget = now + FORGET_EVERY;
    loop {
        let wake = next_keep_alive.min(next_take_over).min(next_retry);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = core.retry_wake.notified() => next_retry = Instant::now(),
            () = core.closed.cancelled() => return,
        }
        let now = Instant::now();
        if now >= next_keep_alive {
            core.keep_alive().await;
            core.expire();
            next_keep_alive = now + keep_alive_every;
        }
        if now >= next_take_over {
            core.take_over().await;
            next_take_over = now + take_over_every;
        }
        if now >= next_forget {
            core.forget_consumers().await;
            next_forget = now + FORGET_EVERY;
        }
        if now >= next_retry {
            next_retry = Instant::now() + core.take_due().await;
        }
    }
}

async fn wait_for_room(core: &Core) {
    loop {
        let mut room = pin!(core.room.notified());
        room.as_mut().enable();
        {
            let gate = core.gate();
            if gate.ready_len() < core.prefetch && gate.held_len() < core.max_held {
                return;
            }
        }
        tokio::select! {
            () = room => {}
            () = core.closed.cancelled() => return,
        }
    }
}

async fn pause(core: &Core) {
    tokio::select! {
        () = tokio::time::sleep(RETRY_PAUSE) => {}
        () = core.closed.cancelled() => {}
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
                let acker = RedisAcker {
                    core: core.clone(),
                    key: entry.message.key.clone(),
                    pos: entry.pos,
                    source: entry.source,
                    attempt: entry.attempt,
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

/// Settles one delivery in Redis, then tells the gate.
struct RedisAcker {
    core: Arc<Core>,
    key: String,
    pos: Pos,
    source: Source,
    attempt: u32,
    settled: AtomicBool,
}

impl RedisAcker {
    /// Acks (`delay` = `None`) or nacks. Runs as a task so that a cancelled caller cannot leave
    /// the gate unaware of what Redis did.
    async fn settle(&self, delay: Option<Duration>) -> Result<()> {
        self.settled.store(true, Ordering::Relaxed);
        let core = self.core.clone();
        if core.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        if delay.is_none() && self.source == Source::Stream {
            // The common case goes through the acker, which tells the gate whether or not this
            // future is still awaited.
            let (done, confirmed) = oneshot::channel();
            if core.acks.send(StreamAck { key: self.key.clone(), pos: self.pos, done }).is_ok() {
                return match confirmed.await {
                    Ok(outcome) => outcome.map_err(|e| core.error(e)),
                    Err(_) => {
                        core.dropped(&self.key, self.pos);
                        Err(Error::transport(wire::Unexpected("the acker stopped".to_owned())))
                    }
                };
            }
        }
        let (key, pos, source, attempt) = (self.key.clone(), self.pos, self.source, self.attempt);
        let task = tokio::spawn(async move {
            let outcome = settle(&core, &key, pos, source, attempt, delay).await;
            match outcome {
                // Settled, or no longer ours to settle (acked meanwhile by a member that took it
                // over): the key moves on.
                Ok(None) => core.acked(&key, pos),
                Ok(Some(delay)) => {
                    core.gate().nacked(&key, pos, Instant::now() + delay + core.grace());
                    core.retry_wake.notify_one();
                }
                // Unsettled as far as this process knows: hand it out again.
                Err(_) => core.dropped(&key, pos),
            }
            outcome.map(drop).map_err(|e| core.error(e))
        });
        task.await.map_err(Error::transport)?
    }
}

/// The Redis side of settling: returns the delay when the message now waits in the retry set.
async fn settle(
    core: &Core,
    key: &str,
    pos: Pos,
    source: Source,
    attempt: u32,
    delay: Option<Duration>,
) -> Result<Option<Duration>, redis::RedisError> {
    let mut conn = core.conn.clone();
    let Some(stream) = core.keys.streams.get(pos.partition as usize) else {
        // Only if the partition count changed under a running group; nothing to settle here.
        return Ok(None);
    };
    let id = pos.id.to_string();
    let due: i64 = match (source, delay) {
        (Source::Stream, None) => {
            // Only when the acker is gone (it panicked): see `RedisAcker::settle`.
            redis::cmd("XACK").arg(stream).arg(&core.group).arg(&id).query_async::<i64>(&mut conn).await?;
            return Ok(None);
        }
        (Source::Retry, None) => {
            scripts::ACK_RETRY
                .key(&core.keys.retry)
                .key(&core.keys.attempts)
                .key(&core.keys.blocked)
                .arg(pos.member())
                .arg(key)
                .invoke_async::<i64>(&mut conn)
                .await?;
            return Ok(None);
        }
        (Source::Stream, Some(delay)) => {
            scripts::NACK_PENDING
                .key(stream)
                .key(&core.keys.retry)
                .key(&core.keys.attempts)
                .key(&core.keys.blocked)
                .arg(&core.group)
                .arg(&id)
                .arg(pos.member())
                .arg(millis(delay))
                .arg(attempt)
                .arg(key)
                .invoke_async(&mut conn)
                .await?
        }
        (Source::Retry, Some(delay)) => {
            scripts::NACK_RETRY
                .key(&core.keys.retry)
                .key(&core.keys.attempts)
                .arg(pos.member())
                .arg(millis(delay))
                .arg(attempt)
                .invoke_async(&mut conn)
                .await?
        }
    };
    Ok(if due < 0 { None } else { delay })
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(&self) -> Result<()> {
        self.settle(None).await
    }

    async fn nack(&self, delay: Duration) -> Result<()> {
        self.settle(Some(delay)).await
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            // Dropped unsettled: this process hands it out again at once (it is still pending
            // under this consumer, or leased to it).
            self.core.dropped(&self.key, self.pos);
        }
    }
}

/// An ack of an entry pending in a stream, and who waits for Redis's answer.
struct StreamAck {
    key: String,
    pos: Pos,
    done: oneshot::Sender<Result<(), redis::RedisError>>,
}

/// Sends the acks that members settle at about the same time in one round trip — one `XACK`
/// per partition with all of its ids — then tells the gate under one lock. Each ack still
/// returns only once Redis confirmed it, and none waits for company: a batch is what queued while
/// the previous one was in flight. Under load this saves a command per message in Redis and in
/// the client, and a task and a wake-up per message in the client.
async fn ack_loop(
    mut pending: mpsc::UnboundedReceiver<StreamAck>,
    core: Weak<Core>,
    mut conn: ConnectionManager,
    streams: Vec<String>,
    group: String,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while pending.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for ack in &batch {
            by_partition.entry(ack.pos.partition).or_default().push(ack.pos.id.to_string());
        }
        let mut pipe = redis::pipe();
        let mut commands = 0;
        for (partition, ids) in by_partition {
            // A partition this process does not know has nothing pending here: nothing to ack.
            if let Some(stream) = streams.get(partition as usize) {
                pipe.cmd("XACK").arg(stream).arg(&group).arg(ids).ignore();
                commands += 1;
            }
        }
        let outcome = if commands == 0 { Ok(()) } else { pipe.query_async::<()>(&mut conn).await };
        // Gone only when no delivery is left to hand out again.
        if let Some(core) = core.upgrade() {
            match &outcome {
                // Acked, or no longer ours to ack (acked meanwhile by a member that took it over):
                // the keys move on.
                Ok(()) => core.acked_all(&batch),
                // Unsettled as far as this process knows: hand them out again.
                Err(_) => batch.iter().for_each(|ack| core.dropped(&ack.key, ack.pos)),
            }
        }
        for ack in batch.drain(..) {
            let _ = ack.done.send(outcome.clone());
        }
    }
}

/// Whole milliseconds, capped where Lua's numbers stay exact.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).min(1 << 50)
}

fn unexpected(e: wire::Unexpected) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "unexpected reply", e.0))
}

// ---------------------------------------------------------------------------------------------
// Script replies.
// ---------------------------------------------------------------------------------------------

fn array(value: Value, what: &str) -> Result<Vec<Value>, wire::Unexpected> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(wire::unexpected(what, &other)),
    }
}

/// The time until `score` (Unix ms) from the server's `now` (Unix ms); zero if past.
fn until(score: f64, now: f64) -> Duration {
    Duration::from_millis((score - now).max(0.0) as u64)
}

/// `LOAD_BLOCKED`'s reply: (key, retry position, time until due).
fn parse_blocked(reply: Value) -> Result<Vec<(String, Pos, Duration)>, wire::Unexpected> {
    let mut parts = array(reply, "blocked keys")?.into_iter();
    let now = parts.next().as_ref().and_then(wire::number_of).ok_or_else(|| wire::Unexpected("no time".to_owned()))?;
    let mut flat = array(parts.next().unwrap_or_default(), "blocked keys")?.into_iter();
    let mut blocks = Vec::new();
    while let (Some(key), Some(member), Some(score)) = (flat.next(), flat.next(), flat.next()) {
        let key = wire::string_of(key).ok_or_else(|| wire::Unexpected("a blocked key".to_owned()))?;
        let Some(pos) = wire::string_of(member).as_deref().and_then(Pos::from_member) else { continue };
        let score = wire::number_of(&score).ok_or_else(|| wire::Unexpected("a retry score".to_owned()))?;
        blocks.push((key, pos, until(score, now)));
    }
    Ok(blocks)
}

/// `OWN_PENDING`'s reply: the last id looked at (`None` when there was nothing) and the entries.
fn parse_own_pending(reply: Value, partition: u32) -> Result<(Option<StreamId>, Vec<Entry>), wire::Unexpected> {
    let mut parts = array(reply, "own pending entries")?.into_iter();
    let last = match parts.next() {
        None | Some(Value::Nil) | Some(Value::Int(0)) => None,
        Some(id) => Some(wire::stream_id(id)?),
    };
    let mut entries = Vec::new();
    for item in array(parts.next().unwrap_or_default(), "own pending entries")? {
        let mut item = array(item, "an own pending entry")?.into_iter();
        let (Some(id), Some(attempt), Some(fields)) = (item.next(), item.next(), item.next()) else {
            return Err(wire::Unexpected("an own pending entry of fewer than 3 parts".to_owned()));
        };
        entries.push(Entry {
            pos: Pos { id: wire::stream_id(id)?, partition },
            attempt: attempt_of(&attempt),
            source: Source::Stream,
            message: wire::message(array(fields, "an entry's fields")?)?,
        });
    }
    Ok((last, entries))
}

/// A waiting retry of a key: where it is and how long until it is due.
type Block = (Pos, Duration);

/// Entries taken over, each with the waiting retry of its key, if any.
type TakenOver = Vec<(Entry, Option<Block>)>;

/// `AUTOCLAIM`'s reply: the entries taken over, each with the retry that blocks its key.
fn parse_autoclaim(reply: Value) -> Result<TakenOver, wire::Unexpected> {
    let mut parts = array(reply, "taken over entries")?.into_iter();
    let now = parts.next().as_ref().and_then(wire::number_of).ok_or_else(|| wire::Unexpected("no time".to_owned()))?;
    let mut taken = Vec::new();
    for item in array(parts.next().unwrap_or_default(), "taken over entries")? {
        let item = array(item, "a taken over entry")?;
        let [partition, id, attempt, fields, member, score]: [Value; 6] =
            item.try_into().map_err(|_| wire::Unexpected("a taken over entry of other than 6 parts".to_owned()))?;
        let partition = wire::number_of(&partition).ok_or_else(|| wire::Unexpected("a partition".to_owned()))?;
        let entry = Entry {
            pos: Pos { id: wire::stream_id(id)?, partition: partition as u32 },
            attempt: attempt_of(&attempt),
            source: Source::Stream,
            message: wire::message(array(fields, "an entry's fields")?)?,
        };
        let block = match (wire::string_of(member).as_deref().and_then(Pos::from_member), wire::number_of(&score)) {
            (Some(pos), Some(score)) => Some((pos, until(score, now))),
            _ => None,
        };
        taken.push((entry, block));
    }
    Ok(taken)
}

/// `TAKE_DUE`'s reply: time until the next retry comes due (`None`: the set is empty), and the
/// retries taken.
fn parse_take_due(reply: Value) -> Result<(Option<Duration>, Vec<Entry>), wire::Unexpected> {
    let mut parts = array(reply, "due retries")?.into_iter();
    let now = parts.next().as_ref().and_then(wire::number_of).ok_or_else(|| wire::Unexpected("no time".to_owned()))?;
    let next = parts.next().as_ref().and_then(wire::number_of).filter(|n| *n >= 0.0).map(|n| until(n, now));
    let mut flat = array(parts.next().unwrap_or_default(), "due retries")?.into_iter();
    let mut entries = Vec::new();
    while let (Some(member), Some(attempt), Some(fields)) = (flat.next(), flat.next(), flat.next()) {
        let pos = wire::string_of(member)
            .as_deref()
            .and_then(Pos::from_member)
            .ok_or_else(|| wire::Unexpected("a retry member that is not <partition>:<id>".to_owned()))?;
        entries.push(Entry {
            pos,
            attempt: attempt_of(&attempt),
            source: Source::Retry,
            message: wire::message(array(fields, "an entry's fields")?)?,
        });
    }
    Ok((next, entries))
}

fn attempt_of(value: &Value) -> u32 {
    wire::number_of(value).map_or(1, |n| n.clamp(1.0, f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn fields(key: &str) -> Value {
        Value::Array(vec![bulk("key"), bulk(key), bulk("payload"), bulk("p")])
    }

    #[test]
    fn due_retries_parse() {
        let reply = Value::Array(vec![
            Value::Int(1_000),
            bulk("1500"),
            Value::Array(vec![bulk("2:7-1"), Value::Int(3), fields("k")]),
        ]);
        let (next, entries) = parse_take_due(reply).unwrap();
        assert_eq!(next, Some(Duration::from_millis(500)));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].pos, Pos { id: StreamId { ms: 7, seq: 1 }, partition: 2 });
        assert_eq!((entries[0].attempt, entries[0].source), (3, Source::Retry));
        let empty = Value::Array(vec![Value::Int(1_000), Value::Int(-1), Value::Array(vec![])]);
        assert_eq!(parse_take_due(empty).unwrap().0, None);
        assert!(parse_take_due(Value::Int(1)).is_err());
    }

    #[test]
    fn taken_over_entries_parse_with_their_blocks() {
        let entry = |member: Value, score: Value| {
            Value::Array(vec![Value::Int(1), bulk("9-0"), Value::Int(4), fields("k"), member, score])
        };
        let reply = Value::Array(vec![
            Value::Int(1_000),
            Value::Array(vec![entry(bulk("1:8-0"), bulk("3000")), entry(Value::Nil, Value::Nil)]),
        ]);
        let taken = parse_autoclaim(reply).unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0.attempt, 4);
        assert_eq!(taken[0].1, Some((Pos { id: StreamId { ms: 8, seq: 0 }, partition: 1 }, Duration::from_secs(2))));
        assert_eq!(taken[1].1, None);
    }

    #[test]
    fn own_pending_and_blocked_parse() {
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![Value::Array(vec![bulk("5-0"), Value::Int(2), fields("k")])]),
        ]);
        let (last, entries) = parse_own_pending(reply, 3).unwrap();
        assert_eq!(last, Some(StreamId { ms: 5, seq: 0 }));
        assert_eq!((entries[0].pos.partition, entries[0].attempt), (3, 2));
        let nothing = Value::Array(vec![Value::Nil, Value::Array(vec![])]);
        assert_eq!(parse_own_pending(nothing, 0).unwrap().0, None);

        let blocked = Value::Array(vec![Value::Int(1_000), Value::Array(vec![bulk("k"), bulk("0:1-0"), bulk("900")])]);
        assert_eq!(
            parse_blocked(blocked).unwrap(),
            vec![("k".to_owned(), Pos { id: StreamId { ms: 1, seq: 0 }, partition: 0 }, Duration::ZERO)]
        );
    }

    #[test]
    fn millis_are_capped() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), 1 << 50);
    }
}
