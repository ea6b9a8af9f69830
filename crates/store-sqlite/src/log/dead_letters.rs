//! The log's dead letters, for operators: the messages the router put on `<topic>.dlq` topics
//! (see `weir_core::router::dead_letter`), listed and read without consuming them, then
//! redriven to their original topic or discarded (`weir dlq`). A letter leaves its dead-letter
//! topic in the same transaction that republishes it, so a crash leaves it either still dead or
//! redriven once, never both. Several processes may do this at once: the file's lock orders
//! them, and the log's consumers in another process see a redriven message at their next poll.

use rusqlite::{OptionalExtension, params};
use weir_core::{
    bus::{self, Message, dead_letters_of},
    router::dead_letter,
};

use super::{SqliteLog, WriteOp, open_connection, read_message, transport, writer::LogWriter};

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
    /// Its message is published again to its original topic, without the `weir-dlq-*` headers.
    /// Every consumer group of the topic receives it again; those that handled it before skip
    /// it (their inbox has its id).
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

const SELECT: &str = "SELECT m.id, t.name, m.key, m.headers, m.payload
     FROM topics t JOIN messages m ON m.topic_id = t.id";

fn read_letter(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<DeadLetter>> {
    let dlq: String = row.get(1)?;
    let Some(topic) = dead_letters_of(&dlq) else { return Ok(None) };
    Ok(Some(DeadLetter { id: row.get(0)?, topic: topic.to_owned(), message: read_message(row, 2)? }))
}

impl SqliteLog {
    /// The dead letters of every topic (or of `query.topic`), oldest first. They stay where they
    /// are: nothing is consumed or settled.
    pub async fn dead_letters(&self, query: LetterQuery) -> bus::Result<LetterPage> {
        let path = self.inner.path.clone();
        let read = move || -> rusqlite::Result<LetterPage> {
            let conn = open_connection(&path, true)?;
            let filter = "t.name GLOB '*.dlq' AND (?1 IS NULL OR t.name = ?1)";
            let dlq = query.topic.as_deref().map(bus::dead_letter_topic);
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let letters = conn
                .prepare(&format!("{SELECT} WHERE {filter} AND m.id > ?2 ORDER BY m.id LIMIT ?3"))?
                .query_map(params![dlq, query.after, limit], read_letter)?
                .filter_map(Result::transpose)
                .collect::<rusqlite::Result<_>>()?;
            let total = conn.query_row(
                &format!("SELECT count(*) FROM topics t JOIN messages m ON m.topic_id = t.id WHERE {filter}"),
                params![dlq],
                |r| r.get::<_, i64>(0),
            )?;
            let total = u64::try_from(total).unwrap_or(0);
            Ok(LetterPage { letters, total })
        };
        tokio::task::spawn_blocking(read).await.map_err(bus::Error::transport)?.map_err(transport)
    }

    /// The dead letter `id`, if there is one.
    pub async fn dead_letter(&self, id: i64) -> bus::Result<Option<DeadLetter>> {
        let path = self.inner.path.clone();
        let read = move || -> rusqlite::Result<Option<DeadLetter>> {
            let conn = open_connection(&path, true)?;
            Ok(conn.query_row(&format!("{SELECT} WHERE m.id = ?1"), [id], read_letter).optional()?.flatten())
        };
        tokio::task::spawn_blocking(read).await.map_err(bus::Error::transport)?.map_err(transport)
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
    pub written: Vec<(i64, u64)>,
}

impl LogWriter {
    /// Applies a [`Disposal`] to each letter (see [`SqliteLog::dispose`]).
    pub(crate) fn dispose(&mut self, ids: &[i64], disposal: Disposal) -> Result<Disposed, LetterError> {
        let sql = |e: rusqlite::Error| LetterError::Bus(transport(e));
        let mut topics = Vec::with_capacity(ids.len());
        let mut written = Vec::new();
        for &id in ids {
            let letter = self
                .conn
                .prepare_cached(&format!("{SELECT} WHERE m.id = ?1"))
                .and_then(|mut s| s.query_row([id], read_letter).optional())
                .map_err(sql)?
                .flatten()
                .ok_or(LetterError::NotFound(id))?;
            if disposal == Disposal::Redrive {
                let message = dead_letter::original(&letter.message);
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
