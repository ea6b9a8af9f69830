//! The Kafka client alone (rdkafka, over the same librdkafka as the adapter), set up the way a
//! Kafka user gets the guarantees the adapter gives: an idempotent producer with `acks=all` and
//! the Java client's `murmur2_random` partitioner, each publish awaiting every delivery of its
//! batch; a consumer group from the earliest offset that stores each message's offset once it
//! has seen it, committed by librdkafka every half second — the adapter's commit interval.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::{
    ClientConfig, Message as _,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
};

use super::{Client, Seen};

/// What this client's topics and groups are named under.
const RAW_PREFIX: &str = "rawbench";

/// Partitions of a topic: as many as the adapter gives the topics it creates
/// (`weir_bus_kafka::Options::partitions`' default).
const PARTITIONS: i32 = 16;

/// How long connecting and creating a topic may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What to do when no Kafka broker answers at `url`: start one (tansu, for a try), or leave
/// Kafka out.
pub(in crate::bench) fn how_to_run_a_broker(url: &str) -> String {
    format!(
        "no Kafka broker answers at {url}. Start one — Kafka itself, or tansu (a Kafka-protocol broker in \
         one binary): `$(scripts/tansu) broker --listener-url tcp://127.0.0.1:9092 \
         --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/` — and pass \
         --kafka-url 'kafka://127.0.0.1:9092?batch_messages=1' for tansu (it needs one record per batch); \
         or leave Kafka out with --transport"
    )
}

pub(in crate::bench) struct RawKafka {
    bootstrap: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics created (or found) by this client.
    topics: Mutex<HashSet<String>>,
}

impl RawKafka {
    /// Connects to the brokers of `kafka://HOST:PORT[,HOST:PORT…][?batch_messages=N]`; the
    /// producer puts at most N messages in a record batch, as the adapter does with that URL.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (bootstrap, batch_messages) = weir_bus::kafka_address(url)?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random");
        if let Some(batch) = batch_messages {
            config.set("batch.num.messages", batch.max(1).to_string());
        }
        let producer: FutureProducer = config.create()?;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, TIMEOUT))
            .await?
            .with_context(|| how_to_run_a_broker(url))?;
        Ok(Self { bootstrap: bootstrap.to_owned(), producer, admin, topics: Mutex::default() })
    }

    /// The Kafka topic of `topic`, created as the adapter creates its own (same partitions)
    /// unless it exists.
    async fn topic(&self, topic: &str) -> anyhow::Result<String> {
        let name = format!("{RAW_PREFIX}.{topic}");
        if self.topics.lock().unwrap_or_else(|e| e.into_inner()).contains(&name) {
            return Ok(name);
        }
        let new_topic = NewTopic::new(&name, PARTITIONS, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in self.admin.create_topics([&new_topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("cannot create Kafka topic {topic}: {code}"),
            }
        }
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        Ok(name)
    }
}

#[async_trait]
impl Client for RawKafka {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        let topic = self.topic(topic).await?;
        let mut deliveries = Vec::with_capacity(batch.len());
        for (key, payload) in &batch {
            let mut record = FutureRecord::to(&topic).key(key.as_str()).payload(payload.as_ref());
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break deliveries.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        for delivery in deliveries {
            delivery.await.context("the producer went away")?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        let topic = self.topic(topic).await?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{RAW_PREFIX}.{group}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // An offset is stored once its message was seen, and the stored offsets committed
            // every 500 ms.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .create()?;
        consumer.subscribe(&[&topic])?;
        for _ in 0..count {
            let message = consumer.recv().await?;
            seen(message.payload().unwrap_or_default());
            consumer.store_offset_from_message(&message)?;
        }
        // Closing commits what is stored and leaves the group; off the runtime, and not waited
        // for, as the adapter's member closes on its own thread.
        tokio::task::spawn_blocking(move || drop(consumer));
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn urls_give_the_bootstrap_list_and_the_batch_size() {
        let parse = weir_bus::kafka_address;
        assert_eq!(parse("kafka://a:9092,b:9092").unwrap(), ("a:9092,b:9092", None));
        assert_eq!(parse("kafka://127.0.0.1:9092?batch_messages=1").unwrap(), ("127.0.0.1:9092", Some(1)));
        assert!(parse("kafka://h:1?batch_messages=x").is_err());
        assert!(parse("nats://h:1").is_err());
    }
}
