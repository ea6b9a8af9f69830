//! The bus conformance suite against [`SqliteLog`], the embedded transport: each case gets a
//! fresh log file in a temporary directory, and a restart opens the same file again.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tempfile::TempDir;
use weir_core::bus::{Publisher, Subscriber};
use weir_store_sqlite::{LogOptions, SqliteLog};
use weir_testkit::bus::TransportFactory;

/// How long a member's partition leases live: also how long an unsettled delivery of a
/// subscription that went away without releasing them stays invisible.
const LEASE_TTL: Duration = Duration::from_secs(2);

struct Sqlite {
    dir: TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("create a temporary directory") }
    }
}

#[async_trait]
impl TransportFactory for Sqlite {
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let path = self.dir.path().join("bus.sqlite");
        let options = LogOptions { lease_ttl: LEASE_TTL, ..LogOptions::default() };
        let log = SqliteLog::open(&path, options).unwrap_or_else(|e| panic!("open the log at {}: {e}", path.display()));
        (Arc::new(log.clone()), Arc::new(log))
    }

    fn redelivery_after_drop(&self) -> Duration {
        LEASE_TTL
    }
}

weir_testkit::bus::conformance_tests!(Sqlite::new());
