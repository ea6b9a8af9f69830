//! The consumer thread of one subscription: fetches from leased partitions, keeps per-key order,
//! tracks settlement, and commits positions and retries through the writer in batches.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};
use weir_core::bus::{self, Acker, Delivery, Message, TYPE_HEADER, TypeFilter};

use super::{
    Event, LogOptions, Outcome, Registry, header_value, now_ms, partition_bit, read_message,
    writer::{Acquired, MemberKey, PartCommit, RetryOp, TopicInfo, WriteOp},
};

/// Which delivery an acker settles.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A message read through the cursor, by its sequence number within the partition's window.
    Cursor(u64),
    /// The head of a key's retry queue.
    Retry { id: i64, key: String },
}

pub(crate) struct Setup {
    pub topic: String,
    pub info: TopicInfo,
    pub member: MemberKey,
    pub options: LogOptions,
    pub reader: Connection,
    pub writer: mpsc::Sender<WriteOp>,
    pub events_tx: mpsc::Sender<Event>,
    pub events: mpsc::Receiver<Event>,
    pub out: tokio::sync::mpsc::UnboundedSender<Delivery>,
    pub registry: Arc<Registry>,
    pub member_id: u64,
    pub woken: Arc<AtomicU64>,
    /// The types the member acts on; the others are settled here, never delivered.
    pub wants: Option<TypeFilter>,
    pub acks: Arc<Acks>,
}

/// How often a consumer thread with deliveries out looks at its queued acks, if nothing wakes it.
const ACK_LOOK: Duration = Duration::from_millis(5);

/// Acks on their way to the consumer thread.
///
/// An ack rarely needs an answer at once: only when the consumer holds a later message of the
/// same key, or is near its in-flight limit. So acks are queued here without waking the thread,
/// which takes them at its next wake-up anyway (a publish, a timer: at most [`ACK_LOOK`] later
/// while deliveries are out); under load the thread used to wake once per ack. When the
/// consumer needs its acks promptly it sets `eager`, and each ack then wakes it. Nacks always
/// wake it (they are rare, and move messages to the retries).
#[derive(Default)]
pub(crate) struct Acks {
    queue: Mutex<AckQueue>,
    eager: AtomicBool,
}

#[derive(Default)]
struct AckQueue {
    acked: Vec<(u32, u64, Target)>,
    /// The subscription was dropped: later acks count for nothing (their messages go to the
    /// next member), as they did when every ack travelled behind the `Close` in one channel.
    closed: bool,
}

impl Acks {
    fn queue(&self) -> std::sync::MutexGuard<'_, AckQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called when the subscription is dropped, before the consumer is told to close.
    pub(crate) fn close(&self) {
        self.queue().closed = true;
    }
}

/// A message read through the cursor and not yet passed by the committed position.
struct Slot {
    id: i64,
    key: String,
    settled: bool,
}

/// A cursor message waiting for the outstanding delivery of its key.
struct Waiting {
    seq: u64,
    id: i64,
    message: Message,
}

struct RetryEntry {
    id: i64,
    /// Deliveries made so far, the outstanding one included.
    attempts: u32,
    /// Wall-clock milliseconds; 0 for messages parked behind an earlier one of their key.
    visible_at: i64,
    in_flight: bool,
    /// Loaded from `messages` when delivered, if not already in memory.
    message: Option<Message>,
}

/// The state of one leased partition.
struct Part {
    partition: u32,
    /// Distinguishes this lease from earlier ones of the same partition, so late acks for a
    /// partition that was lost and re-acquired are ignored.
    epoch: u64,
    committed: i64,
    fetched: i64,
    /// More rows may be waiting past `fetched`.
    more: bool,
    /// Sequence number of `window.front()`.
    base_seq: u64,
    window: VecDeque<Slot>,
    /// Keys with a cursor delivery outstanding, and the messages of that key waiting behind it.
    busy: HashMap<String, VecDeque<Waiting>>,
    /// Keys with messages in `retries`, in id order. While a key is here, its newly read
    /// messages are parked behind them.
    retries: HashMap<String, VecDeque<RetryEntry>>,
    retry_ops: Vec<RetryOp>,
    in_flight: usize,
}

impl Part {
    fn new(acquired: Acquired, epoch: u64) -> Self {
        let mut retries: HashMap<String, VecDeque<RetryEntry>> = HashMap::new();
        for r in acquired.retries {
            retries.entry(r.key).or_default().push_back(RetryEntry {
                id: r.id,
                attempts: r.attempts,
                visible_at: r.visible_at,
                in_flight: false,
                message: None,
            });
        }
        Self {
            partition: acquired.partition,
            epoch,
            committed: acquired.position,
            fetched: acquired.position,
            more: true,
            base_seq: 0,
            window: VecDeque::new(),
            busy: HashMap::new(),
            retries,
            retry_ops: Vec::new(),
            in_flight: 0,
        }
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        self.window.get_mut(index)
    }

    /// Moves a message into its key's retry queue, keeping the queue in id order. Returns false
    /// if the message is already there (read again after a takeover).
    fn park(&mut self, key: &str, entry: RetryEntry) -> bool {
        let queue = self.retries.entry(key.to_owned()).or_default();
        let mut index = queue.partition_point(|e| e.id < entry.id);
        if queue.get(index).is_some_and(|e| e.id == entry.id) {
            return false;
        }
        // Never in front of a delivery that is outstanding.
        if index == 0 && queue.front().is_some_and(|e| e.in_flight) {
            index = 1;
        }
        self.retry_ops.push(RetryOp::Upsert {
            id: entry.id,
            key: key.to_owned(),
            attempts: entry.attempts,
            visible_at: entry.visible_at,
        });
        queue.insert(index, entry);
        true
    }
}

pub(crate) struct Consumer {
    topic: String,
    info: TopicInfo,
    member: MemberKey,
    options: LogOptions,
    reader: Connection,
    writer: mpsc::Sender<WriteOp>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    out: tokio::sync::mpsc::UnboundedSender<Delivery>,
    registry: Arc<Registry>,
    member_id: u64,
    woken: Arc<AtomicU64>,
    wants: Option<TypeFilter>,
    /// The router's skipped counter for this topic and group: the types refused here never
    /// reach the router.
    skipped: metrics::Counter,
    acks: Arc<Acks>,
    parts: Vec<Option<Part>>,
    in_flight: usize,
    /// Messages waiting behind an outstanding delivery of their key, in every part.
    waiting: usize,
    next_epoch: u64,
    dirty: bool,
    last_flush: Instant,
    next_heartbeat: Instant,
    next_poll: Instant,
    rebalance: bool,
    /// Some retry head may be deliverable; rescan the retry queues.
    retry_scan: bool,
    next_retry_ms: Option<i64>,
    ttl_ms: i64,
}

impl Consumer {
    pub(crate) fn new(s: Setup) -> Self {
        let now = Instant::now();
        let ttl_ms = i64::try_from(s.options.lease_ttl.as_millis()).unwrap_or(i64::MAX / 4).max(1);
        let skipped = weir_core::router::skipped_counter(&s.topic, &s.member.group);
        Self {
            skipped,
            parts: (0..s.info.partitions).map(|_| None).collect(),
            topic: s.topic,
            info: s.info,
            member: s.member,
            options: s.options,
            reader: s.reader,
            writer: s.writer,
            events_tx: s.events_tx,
            events: s.events,
            out: s.out,
            registry: s.registry,
            member_id: s.member_id,
            woken: s.woken,
            wants: s.wants,
            acks: s.acks,
            in_flight: 0,
            waiting: 0,
            next_epoch: 0,
            dirty: false,
            last_flush: now,
            next_heartbeat: now,
            next_poll: now,
            rebalance: true,
            retry_scan: true,
            next_retry_ms: None,
            ttl_ms,
        }
    }

    pub(crate) fn run(mut self) {
        self.heartbeat();
        // A new member: let the others give up their extra partitions now.
        self.registry.rebalance_group(self.info.id, &self.member.group, self.member_id);
        'run: loop {
            // Ask to be woken by acks only when one could release something; the order matters
            // (see `LogAcker::send`): the flag first, then the queue.
            let eager = self.waiting > 0 || self.in_flight * 2 >= self.options.max_in_flight;
            self.acks.eager.store(eager, Ordering::SeqCst);
            self.take_acks();
            let timeout = if self.can_fetch() { Duration::ZERO } else { self.sleep_time() };
            let first = match self.events.recv_timeout(timeout) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(event) = first {
                if !self.handle(event) {
                    break;
                }
                // Drain what else is queued, so acks are handled in bulk.
                for _ in 0..16_384 {
                    match self.events.try_recv() {
                        Ok(event) => {
                            if !self.handle(event) {
                                break 'run;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            self.take_acks();
            let now = Instant::now();
            if self.rebalance || now >= self.next_heartbeat {
                self.flush();
                self.heartbeat();
            }
            if now >= self.next_poll {
                self.mark_more();
                self.next_poll = now + self.options.poll_interval;
            }
            self.deliver_due_retries();
            self.fetch();
            if self.dirty && now >= self.last_flush + self.options.commit_interval {
                self.flush();
            }
        }
        // Acks made before the close still count.
        self.take_acks();
        self.flush();
        let (reply, answer) = mpsc::channel();
        if self.writer.send(WriteOp::Leave { member: self.member.clone(), reply }).is_ok() {
            let _ = answer.recv();
        }
        self.registry.remove(self.member_id);
        self.registry.rebalance_group(self.info.id, &self.member.group, self.member_id);
    }

    /// Settles the queued acks, in bulk.
    fn take_acks(&mut self) {
        let acked = std::mem::take(&mut self.acks.queue().acked);
        for (partition, epoch, target) in acked {
            self.settle(partition, epoch, target, Outcome::Ack);
        }
    }

    /// Returns false when the consumer must stop.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Settle { partition, epoch, target, outcome } => self.settle(partition, epoch, target, outcome),
            Event::Wake => {
                let woken = self.woken.swap(0, Ordering::AcqRel);
                for part in self.parts.iter_mut().flatten() {
                    part.more |= woken & partition_bit(part.partition) != 0;
                }
            }
            // Queued acks are taken after every wake-up.
            Event::Acked => {}
            Event::Rebalance => self.rebalance = true,
            Event::Lost(partitions) => {
                for p in partitions {
                    self.drop_part(p);
                }
            }
            Event::Close => return false,
        }
        true
    }

    fn mark_more(&mut self) {
        for part in self.parts.iter_mut().flatten() {
            part.more = true;
        }
    }

    fn can_fetch(&self) -> bool {
        self.in_flight < self.options.max_in_flight
            && self.parts.iter().flatten().any(|p| p.more && p.window.len() < self.options.max_in_flight)
    }

    fn sleep_time(&self) -> Duration {
        let now = Instant::now();
        let mut deadline = self.next_heartbeat.min(self.next_poll);
        if self.dirty {
            deadline = deadline.min(self.last_flush + self.options.commit_interval);
        }
        if self.retry_scan {
            return Duration::ZERO;
        }
        if self.in_flight > 0 {
            // Acks of deliveries out are queued without a wake-up: look at least this often.
            deadline = deadline.min(now + ACK_LOOK);
        }
        if let Some(due) = self.next_retry_ms {
            let wait = u64::try_from(due - now_ms()).unwrap_or(0);
            deadline = deadline.min(now + Duration::from_millis(wait));
        }
        deadline.saturating_duration_since(now)
    }

    fn drop_part(&mut self, partition: u32) {
        if let Some(part) = self.parts.get_mut(partition as usize).and_then(Option::take) {
            self.in_flight = self.in_flight.saturating_sub(part.in_flight);
            self.waiting = self.waiting.saturating_sub(part.busy.values().map(VecDeque::len).sum());
            tracing::debug!(topic = %self.topic, group = %self.member.group, partition, "partition lease ended");
        }
    }

    fn heartbeat(&mut self) {
        self.rebalance = false;
        // At least every second, so that members of other processes notice joins and leaves
        // quickly; a heartbeat is one small write in a group commit.
        self.next_heartbeat = Instant::now() + (self.options.lease_ttl / 3).min(Duration::from_secs(1));
        let owned: Vec<u32> = self.parts.iter().flatten().map(|p| p.partition).collect();
        let (reply, answer) = mpsc::channel();
        let op = WriteOp::Heartbeat {
            member: self.member.clone(),
            partitions: self.info.partitions,
            owned,
            ttl_ms: self.ttl_ms,
            reply,
        };
        if self.writer.send(op).is_err() {
            return;
        }
        let outcome = match answer.recv() {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, topic = %self.topic, "lease heartbeat failed");
                return;
            }
            Err(_) => return,
        };
        for p in outcome.lost.iter().chain(&outcome.released) {
            self.drop_part(*p);
        }
        for acquired in outcome.acquired {
            let p = acquired.partition as usize;
            if p < self.parts.len() {
                self.drop_part(acquired.partition);
                self.next_epoch += 1;
                self.parts[p] = Some(Part::new(acquired, self.next_epoch));
                self.retry_scan = true;
            }
        }
        if !outcome.released.is_empty() {
            self.registry.rebalance_group(self.info.id, &self.member.group, self.member_id);
        }
    }

    /// Hands a delivery to the subscription.
    fn deliver(&mut self, part: &mut Part, target: Target, message: Message, attempt: u32) {
        let acker = LogAcker {
            events: self.events_tx.clone(),
            acks: self.acks.clone(),
            partition: part.partition,
            epoch: part.epoch,
            target,
            settled: AtomicBool::new(false),
        };
        part.in_flight += 1;
        self.in_flight += 1;
        // If the subscription is gone the delivery is dropped here; the consumer is closing.
        let _ = self.out.send(Delivery::new(self.topic.clone(), message, attempt, acker));
    }

    fn settle(&mut self, partition: u32, epoch: u64, target: Target, outcome: Outcome) {
        let Some(mut part) = self.parts.get_mut(partition as usize).and_then(Option::take) else { return };
        if part.epoch == epoch {
            match target {
                Target::Cursor(seq) => self.settle_cursor(&mut part, seq, outcome),
                Target::Retry { id, key } => self.settle_retry(&mut part, id, &key, outcome),
            }
        }
        self.parts[partition as usize] = Some(part);
    }

    fn settle_cursor(&mut self, part: &mut Part, seq: u64, outcome: Outcome) {
        let Some(slot) = part.slot(seq) else { return };
        if slot.settled {
            return;
        }
        slot.settled = true;
        let (id, key) = (slot.id, slot.key.clone());
        part.in_flight = part.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.dirty = true;
        match outcome {
            Outcome::Ack => {
                let next = part.busy.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some(w) => {
                        self.waiting = self.waiting.saturating_sub(1);
                        self.deliver(part, Target::Cursor(w.seq), w.message, 1);
                    }
                    None => {
                        part.busy.remove(&key);
                    }
                }
            }
            Outcome::Nack(delay) => {
                // The message and every later one of its key move to `retries`; the cursor may
                // pass them, and other keys flow on.
                let visible_at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
                part.park(&key, RetryEntry { id, attempts: 1, visible_at, in_flight: false, message: None });
                for w in part.busy.remove(&key).unwrap_or_default() {
                    self.waiting = self.waiting.saturating_sub(1);
                    if let Some(slot) = part.slot(w.seq) {
                        slot.settled = true;
                    }
                    part.park(
                        &key,
                        RetryEntry { id: w.id, attempts: 0, visible_at: 0, in_flight: false, message: Some(w.message) },
                    );
                }
                self.retry_scan = true;
            }
        }
    }

    fn settle_retry(&mut self, part: &mut Part, id: i64, key: &str, outcome: Outcome) {
        let Some(queue) = part.retries.get_mut(key) else { return };
        let Some(head) = queue.front_mut() else { return };
        if head.id != id || !head.in_flight {
            return;
        }
        part.in_flight = part.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.dirty = true;
        self.retry_scan = true;
        match outcome {
            Outcome::Ack => {
                queue.pop_front();
                if queue.is_empty() {
                    part.retries.remove(key);
                }
                part.retry_ops.push(RetryOp::Delete { id });
            }
            Outcome::Nack(delay) => {
                head.in_flight = false;
                head.visible_at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
                part.retry_ops.push(RetryOp::Upsert {
                    id,
                    key: key.to_owned(),
                    attempts: head.attempts,
                    visible_at: head.visible_at,
                });
            }
        }
    }

    /// Delivers the head of every retry queue whose time has come.
    fn deliver_due_retries(&mut self) {
        let now = now_ms();
        if !self.retry_scan && self.next_retry_ms.is_none_or(|due| due > now) {
            return;
        }
        self.retry_scan = false;
        let mut next: Option<i64> = None;
        for index in 0..self.parts.len() {
            let Some(mut part) = self.parts[index].take() else { continue };
            let due: Vec<String> = part
                .retries
                .iter()
                .filter_map(|(key, queue)| {
                    let head = queue.front()?;
                    if head.in_flight {
                        return None;
                    }
                    if head.visible_at > now {
                        next = Some(next.map_or(head.visible_at, |n| n.min(head.visible_at)));
                        return None;
                    }
                    Some(key.clone())
                })
                .collect();
            for key in due {
                self.deliver_retry_head(&mut part, &key);
            }
            self.parts[index] = Some(part);
        }
        self.next_retry_ms = next;
    }

    fn deliver_retry_head(&mut self, part: &mut Part, key: &str) {
        let Some(head) = part.retries.get_mut(key).and_then(VecDeque::front_mut) else { return };
        let message = match head.message.take() {
            Some(m) => Ok(Some(m)),
            None => load_message(&self.reader, head.id),
        };
        match message {
            Ok(Some(message)) => {
                // Counted when made, not when settled: a delivery lost with its subscription
                // still raises the attempt of the next one.
                head.in_flight = true;
                head.attempts += 1;
                let (id, attempt) = (head.id, head.attempts);
                part.retry_ops.push(RetryOp::Upsert {
                    id,
                    key: key.to_owned(),
                    attempts: attempt,
                    visible_at: head.visible_at,
                });
                self.dirty = true;
                self.deliver(part, Target::Retry { id, key: key.to_owned() }, message, attempt);
            }
            Ok(None) => {
                // The message is gone (pruned by hand); nothing left to redeliver.
                let id = head.id;
                tracing::warn!(topic = %self.topic, id, "message held for redelivery no longer exists");
                if let Some(queue) = part.retries.get_mut(key) {
                    queue.pop_front();
                    if queue.is_empty() {
                        part.retries.remove(key);
                    }
                }
                part.retry_ops.push(RetryOp::Delete { id });
                self.dirty = true;
                self.retry_scan = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.topic, "cannot load a message for redelivery");
                self.next_retry_ms = Some(now_ms() + 100);
            }
        }
    }

    /// Reads new rows from the leased partitions, round-robin, within the in-flight limits.
    fn fetch(&mut self) {
        let limit = self.options.max_in_flight;
        let mut progress = true;
        while progress && self.in_flight < limit {
            progress = false;
            for index in 0..self.parts.len() {
                let Some(mut part) = self.parts[index].take() else { continue };
                if part.more && part.window.len() < limit && self.in_flight < limit {
                    match self.fetch_part(&mut part) {
                        Ok(n) => progress |= n > 0,
                        Err(e) => {
                            tracing::warn!(error = %e, topic = %self.topic, "fetch failed");
                            part.more = false;
                        }
                    }
                }
                self.parts[index] = Some(part);
            }
        }
    }

    fn fetch_part(&mut self, part: &mut Part) -> rusqlite::Result<usize> {
        let batch = self.options.fetch_batch.max(1);
        let rows: Vec<(i64, Fetched)> = {
            let mut stmt = self.reader.prepare_cached(
                "SELECT id, key, headers, payload FROM messages
                 WHERE topic_id = ?1 AND partition = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![self.info.id, part.partition, part.fetched, batch as i64])?;
            // Not sized for a full batch: most queries find a few rows, or none.
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                // A type the member refuses is recognised from the raw headers: its message is
                // never built (a header map and a payload copy, for every refused message).
                let kind = row.get_ref(2)?.as_blob_or_null()?.and_then(|headers| header_value(headers, TYPE_HEADER));
                let refused = self.wants.as_ref().is_some_and(|wants| bus::refuses_type(wants.as_ref(), kind));
                let fetched =
                    if refused { Fetched::Refused(row.get(1)?) } else { Fetched::Wanted(read_message(row, 1)?) };
                out.push((row.get(0)?, fetched));
            }
            out
        };
        part.more = rows.len() == batch;
        if let Some((last, _)) = rows.last() {
            part.fetched = part.fetched.max(*last);
        }
        let n = rows.len();
        for (id, fetched) in rows {
            match fetched {
                Fetched::Wanted(message) => self.accept(part, id, message),
                Fetched::Refused(key) => {
                    // Nothing to do for this member: settled in place (its key's order is
                    // unaffected, since a message not handled cannot overtake anything).
                    part.window.push_back(Slot { id, key, settled: true });
                    self.dirty = true;
                    self.skipped.increment(1);
                }
            }
        }
        Ok(n)
    }

    /// Routes a message the member wants, read through the cursor: parked behind its key's
    /// retries, queued behind its key's outstanding delivery, or delivered.
    fn accept(&mut self, part: &mut Part, id: i64, message: Message) {
        let seq = part.base_seq + part.window.len() as u64;
        let key = message.key.clone();
        if part.retries.contains_key(&key) {
            part.window.push_back(Slot { id, key: key.clone(), settled: true });
            part.park(&key, RetryEntry { id, attempts: 0, visible_at: 0, in_flight: false, message: Some(message) });
            self.dirty = true;
            self.retry_scan = true;
        } else if let Some(waiting) = part.busy.get_mut(&key) {
            waiting.push_back(Waiting { seq, id, message });
            self.waiting += 1;
            part.window.push_back(Slot { id, key, settled: false });
        } else {
            part.busy.insert(key.clone(), VecDeque::new());
            part.window.push_back(Slot { id, key, settled: false });
            self.deliver(part, Target::Cursor(seq), message, 1);
        }
    }

    /// Sends the writer each partition's retry changes and its new position (the contiguous
    /// prefix of settled messages). Fire-and-forget: a lost lease comes back as `Event::Lost`.
    fn flush(&mut self) {
        self.dirty = false;
        self.last_flush = Instant::now();
        let mut parts = Vec::new();
        for part in self.parts.iter_mut().flatten() {
            let mut position = part.committed;
            while part.window.front().is_some_and(|s| s.settled) {
                if let Some(slot) = part.window.pop_front() {
                    position = slot.id;
                    part.base_seq += 1;
                }
            }
            if part.window.is_empty() {
                position = position.max(part.fetched);
            }
            let moved = position > part.committed;
            if moved || !part.retry_ops.is_empty() {
                part.committed = position;
                parts.push(PartCommit {
                    partition: part.partition,
                    position: moved.then_some(position),
                    retry_ops: std::mem::take(&mut part.retry_ops),
                });
            }
        }
        if !parts.is_empty() {
            let op = WriteOp::Commit {
                member: self.member.clone(),
                ttl_ms: self.ttl_ms,
                parts,
                events: self.events_tx.clone(),
            };
            let _ = self.writer.send(op);
        }
    }
}

/// A row read through the cursor.
enum Fetched {
    Wanted(Message),
    /// A type the member refuses: only its key is kept.
    Refused(String),
}

fn load_message(conn: &Connection, id: i64) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached("SELECT key, headers, payload FROM messages WHERE id = ?1")?
        .query_row([id], |row| read_message(row, 0))
        .optional()
}

/// Settles one delivery by telling its consumer thread; dropping it unsettled is `nack(0)`.
struct LogAcker {
    events: mpsc::Sender<Event>,
    acks: Arc<Acks>,
    partition: u32,
    epoch: u64,
    target: Target,
    settled: AtomicBool,
}

impl LogAcker {
    fn send(&self, outcome: Outcome) -> bus::Result<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Outcome::Ack = outcome {
            // Queue first, then read the flag: the consumer sets the flag before it empties the
            // queue, so either it takes this ack or it asked to be woken for it.
            {
                let mut queue = self.acks.queue();
                if queue.closed {
                    return Err(bus::Error::Closed);
                }
                queue.acked.push((self.partition, self.epoch, self.target.clone()));
            }
            if self.acks.eager.load(Ordering::SeqCst) {
                self.events.send(Event::Acked).map_err(|_| bus::Error::Closed)?;
            }
            return Ok(());
        }
        let event =
            Event::Settle { partition: self.partition, epoch: self.epoch, target: self.target.clone(), outcome };
        self.events.send(event).map_err(|_| bus::Error::Closed)
    }
}

#[async_trait::async_trait]
impl Acker for LogAcker {
    /// Marks the message settled; its group's position passes it with the next batched commit
    /// (so a crash before then redelivers it). Fails with `Closed` once the subscription is
    /// gone: the next member gets the message again.
    async fn ack(&self) -> bus::Result<()> {
        self.send(Outcome::Ack)
    }

    /// Moves the message (and the later messages of its key) to the group's retries, to be
    /// delivered again no sooner than `delay`, with the attempt count one higher.
    async fn nack(&self, delay: Duration) -> bus::Result<()> {
        self.send(Outcome::Nack(delay))
    }
}

impl Drop for LogAcker {
    fn drop(&mut self) {
        let _ = self.send(Outcome::Nack(Duration::ZERO));
    }
}
