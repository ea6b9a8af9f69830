//! The storage conformance suite on PostgreSQL (127.0.0.1:5432; a fresh database per case).

use std::sync::Arc;

use async_trait::async_trait;
use weir_core::Db;
use weir_testkit::stores::DatabaseFactory;

struct Postgres;

#[async_trait]
impl DatabaseFactory for Postgres {
    async fn fresh(&self) -> Db {
        Arc::new(weir_store_postgres::fresh_test_database().await)
    }
}

weir_testkit::store_conformance_tests!(Postgres);
