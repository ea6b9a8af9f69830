//! The router suite on PostgreSQL with each broker transport — Kafka (a tansu of each case's
//! own), RabbitMQ and Redis Streams (the machine's) — through `weir-bus`, as `weir serve` connects.
//! Each case gets its own prefix. A missing broker fails, never skips.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use weir_core::{Db, Publisher, Subscriber};
use weir_testkit::router::Backend;

/// PostgreSQL and the bus at `url`.
struct OnBroker {
    url: String,
    _broker: Option<weir_testkit::server::Server>,
}

#[async_trait]
impl Backend for OnBroker {
    async fn database(&self) -> Db {
        Arc::new(weir_store_postgres::fresh_test_database().await)
    }

    async fn transport(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let settings = weir_bus::Settings {
            prefix: format!("router{}", uuid::Uuid::now_v7().simple()),
            redelivery: Duration::from_secs(3),
            member: None,
        };
        let bus = weir_bus::Bus::connect(&self.url, &[], &settings)
            .await
            .unwrap_or_else(|e| panic!("{e}; scripts/services starts the machine's brokers"));
        (bus.transport.publisher, bus.transport.subscriber)
    }
}

mod kafka {
    use super::*;

    fn backend() -> OnBroker {
        let tansu = weir_testkit::server::tansu();
        OnBroker { url: format!("kafka://127.0.0.1:{}?batch_messages=1", tansu.port()), _broker: Some(tansu) }
    }

    weir_testkit::router_tests!(backend());
}

mod rabbitmq {
    use super::*;

    fn backend() -> OnBroker {
        // The broker forgets the case's queues a minute after it ends.
        OnBroker { url: "amqp://guest:guest@127.0.0.1:5672/%2f?queue_expiry=60".into(), _broker: None }
    }

    weir_testkit::router_tests!(backend());
}

mod redis {
    use super::*;

    fn backend() -> OnBroker {
        OnBroker { url: "redis://127.0.0.1:6379".into(), _broker: None }
    }

    weir_testkit::router_tests!(backend());
}
