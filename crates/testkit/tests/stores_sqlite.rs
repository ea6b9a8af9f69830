//! The storage conformance suite on SQLite.

use std::sync::Arc;

use async_trait::async_trait;
use weir_core::Db;
use weir_testkit::stores::DatabaseFactory;

struct Sqlite;

#[async_trait]
impl DatabaseFactory for Sqlite {
    async fn fresh(&self) -> Db {
        // The directory lives as long as the test process; each case gets its own.
        let dir = tempfile::tempdir().unwrap().keep();
        Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.join("store.db")).unwrap())
    }
}

weir_testkit::store_conformance_tests!(Sqlite);
