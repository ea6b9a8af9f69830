//! The bus conformance suite against [`NatsBus`] on the NATS JetStream server at
//! 127.0.0.1:4222. Each case gets its own prefix, so its streams and consumers are its own; a
//! restart connects again under the same prefix. A missing server is a failure, never a skip.
//!
//! `large_message` needs a server whose `max_payload` exceeds 1 MiB: NATS's default of 1 MiB
//! counts the headers too, so a 1 MiB payload is refused with `TooLarge` (see `weir-bus-nats`).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use uuid::Uuid;
use weir_bus_nats::{NatsBus, Options};
use weir_core::bus::{Publisher, Subscriber};
use weir_testkit::bus::TransportFactory;

const URL: &str = "nats://127.0.0.1:4222";

const START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                     -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

/// How long a delivery may stay unsettled: also how soon the deliveries of a dropped
/// subscription come back. Short, so that the redelivery cases are quick.
const ACK_WAIT: Duration = Duration::from_secs(2);

struct Nats {
    prefix: String,
}

impl Nats {
    fn new() -> Self {
        Self { prefix: format!("conformance_{}", Uuid::now_v7().simple()) }
    }
}

#[async_trait]
impl TransportFactory for Nats {
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let options = Options { prefix: self.prefix.clone(), ack_wait: ACK_WAIT, ..Options::default() };
        let bus = NatsBus::connect(URL, options).await.unwrap_or_else(|e| {
            panic!("cannot use NATS JetStream at {URL}: {e}\nIf it is not running, start it with:\n  {START}")
        });
        (Arc::new(bus.clone()), Arc::new(bus))
    }

    fn redelivery_after_drop(&self) -> Duration {
        ACK_WAIT
    }
}

weir_testkit::bus::conformance_tests!(Nats::new());
