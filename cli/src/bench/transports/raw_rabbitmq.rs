//! The RabbitMQ client alone (lapin), with the guarantees the adapter gives, the way a
//! RabbitMQ user would get them: a durable quorum queue per topic, declared at first use;
//! persistent messages on a confirm-mode channel, every confirm of a batch awaited; a consumer
//! with a prefetch window and an ack per message. No partitions, no per-key gate, no log for
//! late groups: each topic has one queue and is consumed by one group.
//!
//! AMQP 0-9-1 cannot list a broker's queues, so both of the run's RabbitMQ clients remember
//! what they created, in this process, for [`clean`] to delete after the run.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};

use super::{Client, Seen};

/// What this client's queue names start with.
const RAW_PREFIX: &str = "rawbench.";
/// Unacked deliveries per consumer: the adapter's whole window (its default prefetch of 128 on
/// each of its 4 partition queues).
const PREFETCH: u16 = 512;
/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// What this process's RabbitMQ clients left on the broker: the raw client's queues, and the
/// topics and groups the adapter was asked for.
struct Leftovers {
    queues: Mutex<BTreeSet<String>>,
    topics: Mutex<BTreeSet<String>>,
    groups: Mutex<BTreeSet<(String, String)>>,
}

static LEFTOVERS: Leftovers = Leftovers {
    queues: Mutex::new(BTreeSet::new()),
    topics: Mutex::new(BTreeSet::new()),
    groups: Mutex::new(BTreeSet::new()),
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes what this process's RabbitMQ clients left: the raw client's queues, and the adapter's
/// exchanges and queues under `prefix`. The adapter's names follow the RabbitMQ crate's
/// documentation ("Clients outside Weir") and its default settings (4 partitions): this binary
/// reaches the adapter only through its ports, which delete nothing. Deleting what does not
/// exist succeeds on RabbitMQ.
pub(in crate::bench) async fn clean(url: &str, prefix: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut queues: Vec<String> = std::mem::take(&mut *lock(&LEFTOVERS.queues)).into_iter().collect();
    let mut exchanges = Vec::new();
    for (topic, group) in std::mem::take(&mut *lock(&LEFTOVERS.groups)) {
        let base = format!("{}.g.{}.{:016x}", exchange(prefix, &topic), readable(&group, 40), fnv1a64(&group));
        queues.extend((0..4).map(|p| format!("{base}.p{p}")));
        queues.extend(["history", "creating", "lock"].map(|q| format!("{base}.{q}")));
        queues.extend(DELAY_LEVELS_MS.map(|level| format!("{base}.delay.{level}")));
    }
    for topic in std::mem::take(&mut *lock(&LEFTOVERS.topics)) {
        let exchange = exchange(prefix, &topic);
        queues.push(format!("{exchange}.log"));
        exchanges.push(format!("{exchange}.wait"));
        exchanges.push(exchange);
    }
    for queue in queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in exchanges {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// The adapter's delay levels (weir-bus-rabbitmq's `names.rs`).
const DELAY_LEVELS_MS: [u64; 8] = [50, 200, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000];

fn exchange(prefix: &str, topic: &str) -> String {
    format!("{prefix}.t.{}.{:016x}", readable(topic, 80), fnv1a64(topic))
}

fn readable(name: &str, max: usize) -> &str {
    name.get(..name.len().min(max)).unwrap_or(name)
}

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The adapter, remembering what it was asked for so that [`clean`] can delete it.
pub(in crate::bench) struct Tracked(pub Arc<dyn Client>);

#[async_trait]
impl Client for Tracked {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        lock(&LEFTOVERS.topics).insert(topic.to_owned());
        self.0.publish(topic, batch).await
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        lock(&LEFTOVERS.topics).insert(topic.to_owned());
        lock(&LEFTOVERS.groups).insert((topic.to_owned(), group.to_owned()));
        self.0.consume(topic, group, count, seen).await
    }

    async fn join(&self, topic: &str, group: &str) -> anyhow::Result<()> {
        lock(&LEFTOVERS.topics).insert(topic.to_owned());
        lock(&LEFTOVERS.groups).insert((topic.to_owned(), group.to_owned()));
        self.0.join(topic, group).await
    }
}

pub(in crate::bench) struct RawRabbit {
    connection: Connection,
    /// The confirm-mode channel every publish goes out on.
    publisher: Channel,
}

impl RawRabbit {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name("weir-bench-raw".into());
        let connection = Connection::connect(url, properties)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", weir_bus::redacted(url)))?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { connection, publisher })
    }

    /// Declares the topic's queue unless this client did already.
    async fn queue(&self, topic: &str) -> anyhow::Result<String> {
        let queue = format!("{RAW_PREFIX}{topic}");
        if lock(&LEFTOVERS.queues).contains(&queue) {
            return Ok(queue);
        }
        let channel = self.connection.create_channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), arguments).await?;
        channel.close(200, "declared".into()).await?;
        lock(&LEFTOVERS.queues).insert(queue.clone());
        Ok(queue)
    }
}

#[async_trait]
impl Client for RawRabbit {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        let queue = self.queue(topic).await?;
        let mut confirms = Vec::with_capacity(batch.len());
        for (key, payload) in batch {
            let mut headers = FieldTable::default();
            headers.insert("weir-key".into(), AMQPValue::LongString(LongString::from(key.as_bytes())));
            let properties = BasicProperties::default().with_delivery_mode(PERSISTENT).with_headers(headers);
            let confirm = self
                .publisher
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &payload, properties)
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                other => anyhow::bail!("the broker did not take a message: {other:?}"),
            }
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        let queue = self.queue(topic).await?;
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(queue.as_str().into(), group.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        for _ in 0..count {
            let delivery = consumer.next().await.context("the consumer ended")??;
            seen(&delivery.data);
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        channel.close(200, "done".into()).await?;
        Ok(())
    }
}
