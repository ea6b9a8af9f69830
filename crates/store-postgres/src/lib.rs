//! PostgreSQL adapter for weir's database port ([`weir_core::db::Database`]).
//!
//! [`PgDatabase`] runs the kernel's portable SQL on a pooled PostgreSQL connection: one
//! transaction holds one connection from `BEGIN` to `COMMIT` or rollback, statements are
//! prepared once per connection, and `execute_many` pipelines its rows. It also creates
//! databases, including a fresh one per test ([`fresh_test_database`]).
//!
//! It is **not** a store: the event store, outbox, inbox and the rest are written once against
//! the port and run here unchanged. It does not rewrite SQL (the portable `$1..$n` form is
//! PostgreSQL's own), speak TLS, or manage the server.
//!
//! Two PostgreSQL behaviours callers should know:
//! - After any failed statement the transaction can only be rolled back; further statements
//!   and `commit` return [`Error::Other`](weir_core::db::Error::Other).
//! - Transactions are `READ COMMITTED`. Serialization failures and deadlocks (40001, 40P01)
//!   surface as [`Error::Unavailable`](weir_core::db::Error::Unavailable): retry the whole
//!   transaction.

mod database;
mod error;
mod testing;
mod value;

pub use database::{Options, PgDatabase};
pub use testing::{
    DEFAULT_TEST_ADMIN_URL, TEST_DATABASE_PREFIX, connect_or_create, create_database, drop_database,
    fresh_test_database, fresh_test_database_with,
};
