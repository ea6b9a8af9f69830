//! The bus conformance suite against [`RabbitBus`] on the RabbitMQ broker at 127.0.0.1:5672.
//! Each case gets its own prefix, so its exchanges and queues are its own; a restart connects
//! again under the same prefix. The case deletes what it created when it ends (and every queue
//! expires after ten idle minutes should that fail). A missing broker is a failure, never a
//! skip.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use common::{Recording, Used};
use weir_core::bus::{Publisher, Subscriber};
use weir_testkit::bus::TransportFactory;

struct Rabbit {
    prefix: String,
    used: Arc<Mutex<Used>>,
}

impl Rabbit {
    fn new() -> Self {
        Self { prefix: common::prefix(), used: Arc::default() }
    }
}

#[async_trait]
impl TransportFactory for Rabbit {
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let bus = common::connect_with(common::options(&self.prefix)).await;
        let bus = Recording::new(bus, self.used.clone());
        (Arc::new(bus.clone()), Arc::new(bus))
    }

    /// Closing a subscription's channel hands its unacked deliveries back at once.
    fn redelivery_after_drop(&self) -> Duration {
        Duration::from_secs(1)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        common::delete_used(&self.prefix, &self.used);
    }
}

weir_testkit::bus::conformance_tests!(Rabbit::new());
