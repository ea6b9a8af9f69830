//! What the test binaries share: the broker's address, a bus under a fresh prefix, and a bus
//! that remembers the topics and groups it touched so that a test can delete them afterwards.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use weir_bus_rabbitmq::{Options, RabbitBus};
use weir_core::bus::{Capabilities, Message, Publisher, Result, Subscriber, Subscription};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const START: &str = "systemctl start rabbitmq-server   (or: rabbitmq-server -detached)";

/// Partitions in tests: few, so that a case creates few queues.
pub const PARTITIONS: u32 = 3;

pub fn prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// Options for tests: everything a test forgets to delete expires after ten idle minutes.
pub fn options(prefix: &str) -> Options {
    Options { partitions: PARTITIONS, queue_expiry: Some(Duration::from_secs(600)), ..Options::with_prefix(prefix) }
}

pub async fn connect_with(options: Options) -> RabbitBus {
    RabbitBus::connect(URL, options).await.unwrap_or_else(|e| {
        panic!("\n\ncannot use RabbitMQ at {URL}: {e}\nThese tests need it. Start it with:\n\n    {START}\n\n")
    })
}

/// Topics and groups a test used.
#[derive(Default)]
pub struct Used {
    topics: BTreeSet<String>,
    groups: BTreeSet<(String, String)>,
}

/// A bus that records what it touches.
#[derive(Clone)]
pub struct Recording {
    pub bus: RabbitBus,
    used: Arc<Mutex<Used>>,
}

impl Recording {
    pub fn new(bus: RabbitBus, used: Arc<Mutex<Used>>) -> Self {
        Self { bus, used }
    }

    fn topic(&self, topic: &str) {
        self.used.lock().unwrap().topics.insert(topic.to_owned());
    }

    fn group(&self, topic: &str, group: &str) {
        let mut used = self.used.lock().unwrap();
        used.topics.insert(topic.to_owned());
        used.groups.insert((topic.to_owned(), group.to_owned()));
    }
}

#[async_trait]
impl Publisher for Recording {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.topic(topic);
        self.bus.publish(topic, messages).await
    }

    fn capabilities(&self) -> Capabilities {
        Publisher::capabilities(&self.bus)
    }
}

#[async_trait]
impl Subscriber for Recording {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        self.group(topic, group);
        self.bus.subscribe(topic, group).await
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        self.group(topic, group);
        self.bus.lag(topic, group).await
    }

    fn capabilities(&self) -> Capabilities {
        Subscriber::capabilities(&self.bus)
    }
}

/// Deletes what `used` names under `prefix`. Runs inside a multi-threaded runtime, from `Drop`.
pub fn delete_used(prefix: &str, used: &Mutex<Used>) {
    let used = std::mem::take(&mut *used.lock().unwrap_or_else(|p| p.into_inner()));
    if used.topics.is_empty() {
        return;
    }
    let options = options(prefix);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            let Ok(bus) = RabbitBus::connect(URL, options).await else { return };
            for (topic, group) in &used.groups {
                if weir_core::bus::validate_name(topic).is_ok()
                    && weir_core::bus::validate_name(group).is_ok()
                    && let Err(e) = bus.delete_group(topic, group).await
                {
                    eprintln!("cleanup: deleting group {group} of {topic} failed: {e}");
                }
            }
            for topic in &used.topics {
                if weir_core::bus::validate_name(topic).is_ok()
                    && let Err(e) = bus.delete_topic(topic).await
                {
                    eprintln!("cleanup: deleting topic {topic} failed: {e}");
                }
            }
            bus.close().await;
        })
    });
}
