//! The bus conformance suite against [`KafkaBus`] on a `tansu` broker of each case's own
//! (`weir_testkit::server::tansu`, memory storage): nextest runs every case in its own process,
//! so cases neither share a broker nor wait for each other's groups. A restart connects again
//! to the same broker, which keeps its topics and committed offsets. A missing `tansu` binary is
//! a failure with the command that installs it, never a skip.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use weir_bus_kafka::{KafkaBus, Options};
use weir_core::bus::{Publisher, Subscriber};
use weir_testkit::{bus::TransportFactory, server::Server};

/// How long the group waits for a silent member: also how soon the deliveries of a member that
/// did not leave come back. Short, so that the redelivery cases are quick.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

struct Kafka {
    server: Server,
}

impl Kafka {
    fn new() -> Self {
        Self { server: weir_testkit::server::tansu() }
    }
}

/// Settings for a test broker: short timeouts, and one record per batch (see the crate docs on
/// tansu).
fn options() -> Options {
    Options {
        prefix: "conformance".to_owned(),
        session_timeout: SESSION_TIMEOUT,
        heartbeat_interval: Duration::from_millis(500),
        fetch_wait: Duration::from_millis(100),
        commit_interval: Duration::from_millis(100),
        batch_messages: Some(1),
        ..Options::default()
    }
}

#[async_trait]
impl TransportFactory for Kafka {
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let bootstrap = format!("127.0.0.1:{}", self.server.port());
        let bus = KafkaBus::connect(&bootstrap, options())
            .await
            .unwrap_or_else(|e| panic!("cannot use tansu at {bootstrap}: {e}\n{}", self.server.log_tail()));
        (Arc::new(bus.clone()), Arc::new(bus))
    }

    fn redelivery_after_drop(&self) -> Duration {
        SESSION_TIMEOUT
    }
}

weir_testkit::bus::conformance_tests!(Kafka::new());
