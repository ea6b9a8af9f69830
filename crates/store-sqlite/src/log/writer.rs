//! The log's single writer thread: it drains a channel of write operations and applies each
//! drained batch in one physical transaction — one fsync for many publishes, cursor commits and
//! lease renewals (group commit).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use weir_core::bus::{self, Message, TYPE_HEADER, partition_of};

use super::{
    Event, Registry, Written, encode_headers,
    inspect::{Disposal, Disposed, LetterError},
    now_ms,
};
use crate::sql::{control, space_commits};

/// Operations stop being drained into one batch past this many.
const MAX_BATCH_OPS: usize = 4096;

/// How long consumers' position commits wait for other operations to commit with (see
/// [`LogWriter::run`]).
const HOLD_POSITIONS: Duration = Duration::from_millis(100);

/// Messages one prune operation deletes at most, so that the publishes committed with it wait
/// for a bounded delete.
pub(crate) const PRUNE_CHUNK: i64 = 5_000;

/// A topic as stored: its id and its (fixed) number of partitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopicInfo {
    pub id: i64,
    pub partitions: u32,
}

/// A change to a group's `retries` table, made by the partition's lease owner.
#[derive(Debug)]
pub(crate) enum RetryOp {
    Upsert { id: i64, key: String, attempts: u32, visible_at: i64 },
    Delete { id: i64 },
}

/// What one member commits for one partition: retry changes first, then the cursor.
#[derive(Debug)]
pub(crate) struct PartCommit {
    pub partition: u32,
    pub position: Option<i64>,
    pub retry_ops: Vec<RetryOp>,
}

/// A `retries` row loaded when a partition is acquired.
#[derive(Debug)]
pub(crate) struct StoredRetry {
    pub id: i64,
    pub key: String,
    pub attempts: u32,
    pub visible_at: i64,
}

#[derive(Debug)]
pub(crate) struct Acquired {
    pub partition: u32,
    pub position: i64,
    pub retries: Vec<StoredRetry>,
}

#[derive(Debug, Default)]
pub(crate) struct HeartbeatOutcome {
    pub acquired: Vec<Acquired>,
    /// Partitions the member thought it owned but another member holds now.
    pub lost: Vec<u32>,
    /// Partitions given up so that newer members get their share.
    pub released: Vec<u32>,
}

/// Identifies one member of one group on one topic.
#[derive(Debug, Clone)]
pub(crate) struct MemberKey {
    pub group: Arc<str>,
    pub topic_id: i64,
    pub owner: Arc<str>,
}

pub(crate) enum WriteOp {
    Publish {
        topic: String,
        messages: Vec<Message>,
        reply: oneshot::Sender<bus::Result<()>>,
    },
    Topic {
        name: String,
        reply: oneshot::Sender<bus::Result<TopicInfo>>,
    },
    Commit {
        member: MemberKey,
        ttl_ms: i64,
        parts: Vec<PartCommit>,
        events: mpsc::Sender<Event>,
    },
    Heartbeat {
        member: MemberKey,
        partitions: u32,
        owned: Vec<u32>,
        ttl_ms: i64,
        reply: mpsc::Sender<rusqlite::Result<HeartbeatOutcome>>,
    },
    Leave {
        member: MemberKey,
        reply: mpsc::Sender<()>,
    },
    Prune {
        older_than: Duration,
        reply: oneshot::Sender<bus::Result<u64>>,
    },
    Dispose {
        ids: Vec<i64>,
        disposal: Disposal,
        reply: oneshot::Sender<Result<Vec<String>, LetterError>>,
    },
}

/// An applied operation waiting for the batch's `COMMIT` before it is answered.
enum Done {
    /// The topic's id and what was written to it.
    Publish(oneshot::Sender<bus::Result<()>>, rusqlite::Result<(i64, Written)>),
    Topic(oneshot::Sender<bus::Result<TopicInfo>>, rusqlite::Result<TopicInfo>),
    Commit(mpsc::Sender<Event>, rusqlite::Result<Vec<u32>>),
    Heartbeat(mpsc::Sender<rusqlite::Result<HeartbeatOutcome>>, rusqlite::Result<HeartbeatOutcome>),
    Leave(mpsc::Sender<()>),
    Prune(oneshot::Sender<bus::Result<u64>>, rusqlite::Result<u64>),
    Dispose(oneshot::Sender<Result<Vec<String>, LetterError>>, Result<Disposed, LetterError>),
}

pub(crate) struct LogWriter {
    pub(super) conn: Connection,
    registry: Arc<Registry>,
    default_partitions: u32,
    /// Filled only from committed state: cleared when a batch fails.
    topics: HashMap<String, TopicInfo>,
    headers_buffer: Vec<u8>,
}

impl LogWriter {
    pub(crate) fn new(conn: Connection, registry: Arc<Registry>, default_partitions: u32) -> Self {
        Self { conn, registry, default_partitions, topics: HashMap::new(), headers_buffer: Vec::new() }
    }

    /// Runs until every sender of `ops` is gone.
    ///
    /// Consumers' position commits ([`WriteOp::Commit`]) wait up to [`HOLD_POSITIONS`] for
    /// anything else to commit with: each of the many consumer threads commits its position on
    /// its own 100 ms clock, and alone each would be a transaction and an fsync of its own. A
    /// held position costs nothing but redeliveries after a crash, which the consumers' inboxes
    /// drop.
    pub(crate) fn run(mut self, ops: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::new();
        let mut last_commit = Instant::now();
        // When the oldest held position commit arrived.
        let mut held_since: Option<Instant> = None;
        loop {
            let next = match held_since {
                None => ops.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(since) => ops.recv_timeout((since + HOLD_POSITIONS).saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(op) => {
                    let holdable = matches!(op, WriteOp::Commit { .. });
                    batch.push(op);
                    if holdable && held_since.is_none_or(|since| since.elapsed() < HOLD_POSITIONS) {
                        held_since.get_or_insert_with(Instant::now);
                        if batch.len() < MAX_BATCH_OPS {
                            continue;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if !batch.is_empty() {
                        self.apply_batch(&mut batch);
                    }
                    return;
                }
            }
            held_since = None;
            space_commits(last_commit);
            last_commit = Instant::now();
            while batch.len() < MAX_BATCH_OPS {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<WriteOp>) {
        if let Err(e) = control(&self.conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "log writer cannot begin a transaction");
            let done = batch.drain(..).map(|op| self.skipped(op)).collect();
            self.answer(done, Some(e));
            return;
        }
        let mut done = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            // A savepoint per operation: one bad operation fails alone, not its batch-mates.
            if let Err(e) = control(&self.conn, "SAVEPOINT op") {
                done.push(self.fail(op, e));
                continue;
            }
            let applied = self.apply(op);
            let failed = applied.failed();
            let ended = if failed {
                // The rolled-back savepoint may have held a topic this cache remembers.
                self.topics.clear();
                control(&self.conn, "ROLLBACK TO op").and_then(|()| control(&self.conn, "RELEASE op"))
            } else {
                control(&self.conn, "RELEASE op")
            };
            if let Err(e) = ended {
                tracing::error!(error = %e, "log writer cannot end a savepoint");
            }
            done.push(applied);
        }
        let commit = control(&self.conn, "COMMIT");
        let error = match commit {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "log batch commit failed");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.topics.clear();
                Some(e)
            }
        };
        self.answer(done, error);
    }

    fn apply(&mut self, op: WriteOp) -> Done {
        match op {
            WriteOp::Publish { topic, messages, reply } => {
                let result = self.publish(&topic, &messages);
                Done::Publish(reply, result)
            }
            WriteOp::Topic { name, reply } => {
                let result = self.topic(&name);
                Done::Topic(reply, result)
            }
            WriteOp::Commit { member, ttl_ms, parts, events } => {
                let result = self.commit(&member, ttl_ms, parts);
                Done::Commit(events, result)
            }
            WriteOp::Heartbeat { member, partitions, owned, ttl_ms, reply } => {
                let result = self.heartbeat(&member, partitions, &owned, ttl_ms);
                Done::Heartbeat(reply, result)
            }
            WriteOp::Leave { member, reply } => {
                if let Err(e) = self.leave(&member) {
                    tracing::warn!(error = %e, "releasing leases failed; they will expire");
                }
                Done::Leave(reply)
            }
            WriteOp::Prune { older_than, reply } => {
                let result = self.prune(older_than);
                Done::Prune(reply, result)
            }
            WriteOp::Dispose { ids, disposal, reply } => {
                let result = self.dispose(&ids, disposal);
                Done::Dispose(reply, result)
            }
        }
    }

    /// Answers an operation that was never applied because its batch could not begin.
    fn skipped(&self, op: WriteOp) -> Done {
        self.fail(op, rusqlite::Error::InvalidQuery)
    }

    fn fail(&self, op: WriteOp, e: rusqlite::Error) -> Done {
        match op {
            WriteOp::Publish { reply, .. } => Done::Publish(reply, Err(e)),
            WriteOp::Topic { reply, .. } => Done::Topic(reply, Err(e)),
            WriteOp::Commit { events, .. } => Done::Commit(events, Err(e)),
            WriteOp::Heartbeat { reply, .. } => Done::Heartbeat(reply, Err(e)),
            WriteOp::Leave { reply, .. } => Done::Leave(reply),
            WriteOp::Prune { reply, .. } => Done::Prune(reply, Err(e)),
            WriteOp::Dispose { reply, .. } => Done::Dispose(reply, Err(LetterError::Bus(bus::Error::transport(e)))),
        }
    }

    /// Answers every operation of the batch; `batch_error` overrides each outcome when the
    /// physical transaction did not commit.
    fn answer(&self, done: Vec<Done>, batch_error: Option<rusqlite::Error>) {
        let failed = |what: &str| -> bus::Error {
            bus::Error::transport(std::io::Error::other(format!(
                "{what}: {}",
                batch_error.as_ref().map(ToString::to_string).unwrap_or_default()
            )))
        };
        let mut woken: HashMap<i64, Written> = HashMap::new();
        for d in done {
            match d {
                Done::Publish(reply, result) => {
                    let result = match (&batch_error, result) {
                        (Some(_), _) => Err(failed("publish batch not committed")),
                        (None, Ok((topic_id, written))) => {
                            woken.entry(topic_id).or_default().merge(written);
                            Ok(())
                        }
                        (None, Err(e)) => Err(bus::Error::transport(e)),
                    };
                    let _ = reply.send(result);
                }
                Done::Topic(reply, result) => {
                    let result = match (&batch_error, result) {
                        (Some(_), _) => Err(failed("topic not created")),
                        (None, r) => r.map_err(bus::Error::transport),
                    };
                    let _ = reply.send(result);
                }
                Done::Commit(events, result) => match (&batch_error, result) {
                    (None, Ok(lost)) if !lost.is_empty() => {
                        let _ = events.send(Event::Lost(lost));
                    }
                    (None, Ok(_)) => {}
                    (Some(e), _) => tracing::warn!(error = %e, "cursor commit lost; messages will be redelivered"),
                    (None, Err(e)) => tracing::warn!(error = %e, "cursor commit failed; messages will be redelivered"),
                },
                Done::Heartbeat(reply, result) => {
                    let result = match &batch_error {
                        Some(_) => Err(rusqlite::Error::InvalidQuery),
                        None => result,
                    };
                    let _ = reply.send(result);
                }
                Done::Leave(reply) => {
                    let _ = reply.send(());
                }
                Done::Prune(reply, result) => {
                    let result = match (&batch_error, result) {
                        (Some(_), _) => Err(failed("prune not committed")),
                        (None, r) => r.map_err(bus::Error::transport),
                    };
                    let _ = reply.send(result);
                }
                Done::Dispose(reply, result) => {
                    let result = match (&batch_error, result) {
                        (Some(_), _) => Err(failed("redrive or discard not committed").into()),
                        (None, Ok(Disposed { topics, written })) => {
                            for (topic_id, written) in written {
                                woken.entry(topic_id).or_default().merge(written);
                            }
                            Ok(topics)
                        }
                        (None, Err(e)) => Err(e),
                    };
                    let _ = reply.send(result);
                }
            }
        }
        for (topic_id, written) in woken {
            self.registry.wake_topic(topic_id, &written);
        }
    }

    fn topic(&mut self, name: &str) -> rusqlite::Result<TopicInfo> {
        if let Some(info) = self.topics.get(name) {
            return Ok(*info);
        }
        self.conn
            .prepare_cached("INSERT INTO topics (name, partitions) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")?
            .execute(params![name, self.default_partitions])?;
        let info = self
            .conn
            .prepare_cached("SELECT id, partitions FROM topics WHERE name = ?1")?
            .query_row([name], |row| Ok(TopicInfo { id: row.get(0)?, partitions: row.get(1)? }))?;
        self.topics.insert(name.to_owned(), info);
        Ok(info)
    }

    pub(super) fn publish(&mut self, topic: &str, messages: &[Message]) -> rusqlite::Result<(i64, Written)> {
        let info = self.topic(topic)?;
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO messages (topic_id, partition, key, headers, payload, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut written = Written::default();
        for m in messages {
            let partition = partition_of(&m.key, info.partitions);
            written.add(partition, m.headers.get(TYPE_HEADER).map(String::as_str));
            let headers = if m.headers.is_empty() {
                None
            } else {
                encode_headers(&m.headers, &mut self.headers_buffer);
                Some(&self.headers_buffer[..])
            };
            stmt.execute(params![info.id, partition, m.key, headers, &m.payload[..], now])?;
        }
        Ok((info.id, written))
    }

    /// Applies a member's retry changes and cursor positions for the partitions it still leases
    /// (renewing those leases); returns the partitions it no longer leases.
    fn commit(&mut self, member: &MemberKey, ttl_ms: i64, parts: Vec<PartCommit>) -> rusqlite::Result<Vec<u32>> {
        let expires = now_ms() + ttl_ms;
        let mut lost = Vec::new();
        for part in parts {
            let renewed = self
                .conn
                .prepare_cached(
                    "UPDATE leases SET expires_at = ?5
                     WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3 AND owner = ?4",
                )?
                .execute(params![&*member.group, member.topic_id, part.partition, &*member.owner, expires])?;
            if renewed == 0 {
                // Another member took the partition over; it resumes from the committed state,
                // so this member's changes must not land.
                lost.push(part.partition);
                continue;
            }
            for op in part.retry_ops {
                match op {
                    RetryOp::Upsert { id, key, attempts, visible_at } => {
                        self.conn
                            .prepare_cached(
                                "INSERT INTO retries (grp, topic_id, partition, msg_id, key, attempts, visible_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                                 ON CONFLICT (grp, topic_id, partition, msg_id)
                                 DO UPDATE SET attempts = excluded.attempts, visible_at = excluded.visible_at",
                            )?
                            .execute(params![
                                &*member.group,
                                member.topic_id,
                                part.partition,
                                id,
                                key,
                                attempts,
                                visible_at
                            ])?;
                    }
                    RetryOp::Delete { id } => {
                        self.conn
                            .prepare_cached(
                                "DELETE FROM retries
                                 WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3 AND msg_id = ?4",
                            )?
                            .execute(params![&*member.group, member.topic_id, part.partition, id])?;
                    }
                }
            }
            if let Some(position) = part.position {
                self.conn
                    .prepare_cached(
                        "UPDATE cursors SET position = ?4
                         WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3 AND position < ?4",
                    )?
                    .execute(params![&*member.group, member.topic_id, part.partition, position])?;
            }
        }
        Ok(lost)
    }

    /// Records the member as alive, then balances the partitions of its group: each live member
    /// aims for `ceil(partitions / members)`, gives up extras, and takes free or expired leases.
    fn heartbeat(
        &mut self,
        member: &MemberKey,
        partitions: u32,
        owned: &[u32],
        ttl_ms: i64,
    ) -> rusqlite::Result<HeartbeatOutcome> {
        let now = now_ms();
        let expires = now + ttl_ms;
        let (group, topic_id, owner) = (&*member.group, member.topic_id, &*member.owner);
        self.conn
            .prepare_cached(
                "INSERT INTO members (grp, topic_id, owner, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (grp, topic_id, owner) DO UPDATE SET expires_at = excluded.expires_at",
            )?
            .execute(params![group, topic_id, owner, expires])?;
        self.conn
            .prepare_cached("DELETE FROM members WHERE grp = ?1 AND topic_id = ?2 AND expires_at < ?3")?
            .execute(params![group, topic_id, now])?;
        let live: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM members WHERE grp = ?1 AND topic_id = ?2")?
            .query_row(params![group, topic_id], |r| r.get(0))?;
        let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
        let target = partitions.div_ceil(live) as usize;

        {
            // A new group starts at position 0: the beginning of the retained messages.
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO cursors (grp, topic_id, partition, position) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT DO NOTHING",
            )?;
            for p in 0..partitions {
                stmt.execute(params![group, topic_id, p])?;
            }
        }

        let leases: Vec<(u32, String, i64)> = self
            .conn
            .prepare_cached("SELECT partition, owner, expires_at FROM leases WHERE grp = ?1 AND topic_id = ?2")?
            .query_map(params![group, topic_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut mine: Vec<u32> = leases.iter().filter(|(_, o, _)| o == owner).map(|(p, _, _)| *p).collect();
        mine.sort_unstable();
        let mut outcome = HeartbeatOutcome {
            lost: owned.iter().copied().filter(|p| !mine.contains(p)).collect(),
            ..HeartbeatOutcome::default()
        };
        self.conn
            .prepare_cached("UPDATE leases SET expires_at = ?4 WHERE grp = ?1 AND topic_id = ?2 AND owner = ?3")?
            .execute(params![group, topic_id, owner, expires])?;

        while mine.len() > target {
            let Some(p) = mine.pop() else { break };
            self.conn
                .prepare_cached(
                    "DELETE FROM leases WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3 AND owner = ?4",
                )?
                .execute(params![group, topic_id, p, owner])?;
            outcome.released.push(p);
        }
        let mut acquired: Vec<u32> = mine.iter().copied().filter(|p| !owned.contains(p)).collect();
        for p in 0..partitions {
            if mine.len() >= target {
                break;
            }
            let free = match leases.iter().find(|(lp, _, _)| *lp == p) {
                None => true,
                Some((_, o, expires_at)) => o != owner && *expires_at < now,
            };
            if free {
                self.conn
                    .prepare_cached(
                        "INSERT INTO leases (grp, topic_id, partition, owner, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (grp, topic_id, partition)
                         DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                    )?
                    .execute(params![group, topic_id, p, owner, expires])?;
                mine.push(p);
                acquired.push(p);
            }
        }
        for p in acquired {
            let position: i64 = self
                .conn
                .prepare_cached("SELECT position FROM cursors WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3")?
                .query_row(params![group, topic_id, p], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let retries = self
                .conn
                .prepare_cached(
                    "SELECT msg_id, key, attempts, visible_at FROM retries
                     WHERE grp = ?1 AND topic_id = ?2 AND partition = ?3 ORDER BY msg_id",
                )?
                .query_map(params![group, topic_id, p], |r| {
                    Ok(StoredRetry { id: r.get(0)?, key: r.get(1)?, attempts: r.get(2)?, visible_at: r.get(3)? })
                })?
                .collect::<rusqlite::Result<_>>()?;
            outcome.acquired.push(Acquired { partition: p, position, retries });
        }
        Ok(outcome)
    }

    fn leave(&mut self, member: &MemberKey) -> rusqlite::Result<()> {
        let args = params![&*member.group, member.topic_id, &*member.owner];
        self.conn
            .prepare_cached("DELETE FROM leases WHERE grp = ?1 AND topic_id = ?2 AND owner = ?3")?
            .execute(args)?;
        self.conn
            .prepare_cached("DELETE FROM members WHERE grp = ?1 AND topic_id = ?2 AND owner = ?3")?
            .execute(args)?;
        Ok(())
    }

    /// Deletes up to [`PRUNE_CHUNK`] of the oldest messages older than `older_than` that every
    /// group of their topic has passed and that no group still holds for redelivery. Dead
    /// letters stay until they are redriven or discarded.
    ///
    /// Ids grow with publication time, so the old messages are the first ones: the delete stays
    /// below the first young message's id, a range of the primary key, instead of reading the
    /// whole log under the write lock. (Publishers in other processes may interleave a few
    /// milliseconds out of order; a message that slips past the bound goes next time.)
    fn prune(&mut self, older_than: Duration) -> rusqlite::Result<u64> {
        let cutoff = now_ms() - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        let young: i64 = self
            .conn
            .prepare_cached(
                "SELECT coalesce((SELECT id FROM messages WHERE published_at >= ?1 ORDER BY id LIMIT 1),
                             (SELECT coalesce(max(id), 0) + 1 FROM messages))",
            )?
            .query_row([cutoff], |r| r.get(0))?;
        let deleted = self
            .conn
            .prepare_cached(
                "DELETE FROM messages WHERE id IN (
                SELECT id FROM messages
                WHERE id < ?1 AND published_at < ?2
                  AND id <= (SELECT min(c.position) FROM cursors c
                             WHERE c.topic_id = messages.topic_id AND c.partition = messages.partition)
                  AND NOT EXISTS (SELECT 1 FROM retries r WHERE r.msg_id = messages.id)
                  AND topic_id NOT IN (SELECT id FROM topics WHERE name GLOB '*.dlq')
                ORDER BY id LIMIT ?3)",
            )?
            .execute(params![young, cutoff, PRUNE_CHUNK])?;
        Ok(deleted as u64)
    }
}

impl Done {
    fn failed(&self) -> bool {
        match self {
            Done::Publish(_, r) => r.is_err(),
            Done::Topic(_, r) => r.is_err(),
            Done::Commit(_, r) => r.is_err(),
            Done::Heartbeat(_, r) => r.is_err(),
            Done::Leave(_) => false,
            Done::Prune(_, r) => r.is_err(),
            Done::Dispose(_, r) => r.is_err(),
        }
    }
}
