//! SQLite adapters of Weir's ports, for the embedded mode (`weir up`): [`SqliteDatabase`]
//! implements the database port (`weir_core::db::Database`) over one SQLite file per service,
//! with group commit so that durable transactions cost one fsync per batch rather than one
//! each; [`SqliteLog`] implements the bus ports (`weir_core::bus::{Publisher, Subscriber}`) as a
//! durable log in its own SQLite file, with topics, partitions, consumer groups sharing
//! partitions through leases, per-key order and delayed redelivery, and lets an operator list,
//! redrive and discard its dead letters.
//!
//! This crate is not a general SQLite toolkit and knows nothing of events or services; of the
//! router it knows only the dead letter's format, to redrive one. It moves rows and messages. Processes on one machine may share a file; it is not
//! meant for network file systems.

mod db;
mod log;
mod sql;

pub use db::SqliteDatabase;
pub use log::{Browse, DeadLetter, Disposal, LetterError, LetterPage, LetterQuery, LogOptions, SqliteLog, Stored};
