//! Reading the log without consuming it, for operators: its messages in publication order
//! (`weir events tail`) and its dead letters — the messages the router put on `<topic>.dlq`
//! topics (see `weir_core::router::dead_letter`) — which an operator redrives to their original
//! topic or discards (`weir dlq`). A letter leaves its dead-letter topic in the same transaction
//! that republishes it, so a crash leaves it either still dead or redriven once, never both.
//! Several processes may do this at once: the file's lock orders them, and the log's consumers
//! in another process see a redriven message at their next poll.

use rusqlite::{Connection, OptionalExtension, params};
use weir_core::{
    bus::{self, Message, dead_letter_topic, dead_letters_of},
    router::dead_letter,
};

use super::{SqliteLog, WriteOp, Written, open_connection, read_message, transport, writer::LogWriter};

/// A message as the log holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its position: ids grow in publication order, across topics.
    pub id: i64,
    pub topic: String,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_at_ms: i64,
    pub message: Message,
}

/// Which messages to read: those after `after`, oldest first, of the topics matching `topics`
/// (a GLOB pattern such as `orders` or `doc.*`; every topic when `None`).
#[derive(Debug, Clone)]
pub struct Browse {
    pub topics: Option<String>,
    pub after: i64,
    pub limit: usize,
}

/// One dead letter as stored: the message the router gave up on, with the `weir-dlq-*` headers
/// that say why ([`dead_letter::REASON`] and the others).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The letter's position in the log: what [`SqliteLog::dispose`] takes.
    pub id: i64,
    /// The topic the message came from.
    pub topic: String,
    pub message: Message,
}

/// Which dead letters to list.
#[derive(Debug, Clone)]
pub struct LetterQuery {
    /// Only the letters of this (original) topic.
    pub topic: Option<String>,
    /// Only letters after this id (for paging).
    pub after: i64,
    pub limit: usize,
}

impl Default for LetterQuery {
    fn default() -> Self {
        Self { topic: None, after: 0, limit: 100 }
    }
}

/// A page of dead letters, oldest first.
#[derive(Debug)]
pub struct LetterPage {
    pub letters: Vec<DeadLetter>,
    /// How many letters the query's topic holds in all.
    pub total: u64,
}

/// What becomes of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Its message is published again to its original topic as
    /// [`dead_letter::redriven`] makes it: without the `weir-dlq-*` headers, addressed to the
    /// consumer group that gave up on it (the others ack it untouched).
    Redrive,
    /// It is removed for good.
    Discard,
}

/// Why a redrive or discard changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum LetterError {
    #[error("no dead letter {0}: `weir dlq list` shows the letters there are")]
    NotFound(i64),
    #[error(transparent)]
    Bus(#[from] bus::Error),
}

const SELECT: &str = "SELECT m.id, t.name, m.published_at, m.key, m.headers, m.payload
     FROM topics t JOIN messages m ON m.topic_id = t.id";

fn read_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored { id: row.get(0)?, topic: row.get(1)?, published_at_ms: row.get(2)?, message: read_message(row, 3)? })
}

impl Stored {
    fn into_letter(self) -> Option<DeadLetter> {
        let topic = dead_letters_of(&self.topic)?.to_owned();
        Some(DeadLetter { id: self.id, topic, message: self.message })
    }
}

/// A group's unsettled messages of a topic: past its position in each partition, or parked.
const UNSETTLED: &str = "
SELECT (SELECT count(*) FROM topics t JOIN messages m ON m.topic_id = t.id
         WHERE t.name = ?1 AND m.id > coalesce(
           (SELECT position FROM cursors c WHERE c.grp = ?2 AND c.topic_id = t.id AND c.partition = m.partition), 0))
     + (SELECT count(*) FROM topics t JOIN retries r ON r.topic_id = t.id WHERE t.name = ?1 AND r.grp = ?2)";

fn browse(conn: &Connection, query: &Browse) -> rusqlite::Result<Vec<Stored>> {
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    conn.prepare(&format!("{SELECT} WHERE (?1 IS NULL OR t.name GLOB ?1) AND m.id > ?2 ORDER BY m.id LIMIT ?3"))?
        .query_map(params![query.topics, query.after, limit], read_stored)?
        .collect()
}

fn stored(conn: &Connection, id: i64) -> rusqlite::Result<Option<Stored>> {
    conn.prepare_cached(&format!("{SELECT} WHERE m.id = ?1"))?.query_row([id], read_stored).optional()
}

impl SqliteLog {
    /// Runs `read` on the inspection connection (read-only, opened by the first read and kept),
    /// off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> bus::Result<T> {
        let inner = self.inner.clone();
        let job = move || {
            let mut kept = inner.inspector.lock().unwrap_or_else(|e| e.into_inner());
            let conn = match kept.take() {
                Some(conn) => conn,
                None => open_connection(&inner.path, true)?,
            };
            let result = read(&conn);
            *kept = Some(conn);
            result
        };
        tokio::task::spawn_blocking(job).await.map_err(bus::Error::transport)?.map_err(transport)
    }

    /// Messages of the log in publication order (see [`Browse`]). They stay where they are:
    /// nothing is consumed or settled.
    pub async fn browse(&self, query: Browse) -> bus::Result<Vec<Stored>> {
        self.read(move |conn| browse(conn, &query)).await
    }

    /// The id of the last message published (0 when there is none): browse after it to see only
    /// what comes next.
    pub async fn last_id(&self) -> bus::Result<i64> {
        self.read(|conn| conn.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| r.get(0))).await
    }

    /// What [`Subscriber::lag`](bus::Subscriber::lag) counts.
    pub(crate) async fn unsettled(&self, topic: &str, group: &str) -> bus::Result<u64> {
        let (topic, group) = (topic.to_owned(), group.to_owned());
        self.read(move |conn| {
            let count: i64 = conn.prepare_cached(UNSETTLED)?.query_row(params![topic, group], |r| r.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// The dead letters of every topic (or of `query.topic`), oldest first, without consuming
    /// them.
    pub async fn dead_letters(&self, query: LetterQuery) -> bus::Result<LetterPage> {
        let topics = query.topic.as_deref().map_or_else(|| dead_letter_topic("*"), dead_letter_topic);
        self.read(move |conn| {
            let browse = Browse { topics: Some(topics), after: query.after, limit: query.limit };
            let letters = self::browse(conn, &browse)?.into_iter().filter_map(Stored::into_letter).collect();
            let total: i64 = conn.query_row(
                "SELECT count(*) FROM topics t JOIN messages m ON m.topic_id = t.id WHERE t.name GLOB ?1",
                [&browse.topics],
                |r| r.get(0),
            )?;
            Ok(LetterPage { letters, total: u64::try_from(total).unwrap_or(0) })
        })
        .await
    }

    /// The dead letter `id`, if there is one.
    pub async fn dead_letter(&self, id: i64) -> bus::Result<Option<DeadLetter>> {
        self.read(move |conn| Ok(stored(conn, id)?.and_then(Stored::into_letter))).await
    }

    /// Redrives or discards the letters `ids`, all in one transaction; if any id is not a dead
    /// letter, nothing changes. Returns their original topics, in `ids`' order.
    pub async fn dispose(&self, ids: Vec<i64>, disposal: Disposal) -> Result<Vec<String>, LetterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Dispose { ids, disposal, reply })?;
        answer.await.map_err(|_| bus::Error::Closed)?
    }
}

/// What a writer's disposal did, for its answer after the commit.
pub(crate) struct Disposed {
    /// The letters' original topics, in order.
    pub topics: Vec<String>,
    /// The (topic id, partition bits) redriven to, to wake their consumers.
    pub written: Vec<(i64, Written)>,
}

impl LogWriter {
    /// Applies a [`Disposal`] to each letter (see [`SqliteLog::dispose`]).
    pub(crate) fn dispose(&mut self, ids: &[i64], disposal: Disposal) -> Result<Disposed, LetterError> {
        let sql = |e: rusqlite::Error| LetterError::Bus(transport(e));
        let mut topics = Vec::with_capacity(ids.len());
        let mut written = Vec::new();
        for &id in ids {
            let letter =
                stored(&self.conn, id).map_err(sql)?.and_then(Stored::into_letter).ok_or(LetterError::NotFound(id))?;
            if disposal == Disposal::Redrive {
                let message = dead_letter::redriven(&letter.message);
                written.push(self.publish(&letter.topic, std::slice::from_ref(&message)).map_err(sql)?);
            }
            for delete in ["DELETE FROM messages WHERE id = ?1", "DELETE FROM retries WHERE msg_id = ?1"] {
                self.conn.prepare_cached(delete).and_then(|mut s| s.execute([id])).map_err(sql)?;
            }
            topics.push(letter.topic);
        }
        Ok(Disposed { topics, written })
    }
}
