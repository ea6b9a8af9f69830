//! The router suite distributed: PostgreSQL database, NATS JetStream transport.

use std::sync::Arc;

use async_trait::async_trait;
use weir_core::{Db, Publisher, Subscriber};
use weir_testkit::router::Backend;

struct Distributed;

#[async_trait]
impl Backend for Distributed {
    async fn database(&self) -> Db {
        Arc::new(weir_store_postgres::fresh_test_database().await)
    }

    async fn transport(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let options =
            weir_bus_nats::Options { prefix: format!("router{}", uuid::Uuid::now_v7().simple()), ..Default::default() };
        let bus = weir_bus_nats::NatsBus::connect("nats://127.0.0.1:4222", options)
            .await
            .expect("NATS JetStream at 127.0.0.1:4222 is needed; start it with scripts/services");
        (Arc::new(bus.clone()), Arc::new(bus))
    }
}

weir_testkit::router_tests!(Distributed);
