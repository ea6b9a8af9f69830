//! The router suite on the embedded default: SQLite database, SQLite log.

use std::sync::Arc;

use async_trait::async_trait;
use weir_core::{Db, Publisher, Subscriber};
use weir_testkit::router::Backend;

struct Embedded;

#[async_trait]
impl Backend for Embedded {
    async fn database(&self) -> Db {
        let dir = tempfile::tempdir().unwrap().keep();
        Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.join("app.db")).unwrap())
    }

    async fn transport(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let dir = tempfile::tempdir().unwrap().keep();
        let log = weir_store_sqlite::SqliteLog::open(dir.join("bus.db"), Default::default()).unwrap();
        (Arc::new(log.clone()), Arc::new(log))
    }
}

weir_testkit::router_tests!(Embedded);
