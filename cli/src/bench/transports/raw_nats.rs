//! The NATS JetStream client alone (async-nats), doing what the adapter does: publishes
//! pipelined and awaited for their acks, a durable pull consumer with explicit acks.

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    message::PublishMessage,
    stream::{self, StorageType},
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::{Client, Seen};

/// What this client's stream names start with.
pub(in crate::bench) const RAW_PREFIX: &str = "rawbench_";

pub(in crate::bench) struct RawNats {
    js: jetstream::Context,
}

impl RawNats {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url).await?;
        Ok(Self { js: jetstream::new(client) })
    }

    fn stream_name(topic: &str) -> String {
        format!("{RAW_PREFIX}{}", topic.replace('.', "_"))
    }

    async fn stream(&self, topic: &str) -> anyhow::Result<stream::Stream> {
        let config = stream::Config {
            name: Self::stream_name(topic),
            subjects: vec![format!("rawbench.{topic}.*")],
            storage: StorageType::File,
            ..Default::default()
        };
        Ok(self.js.get_or_create_stream(config).await?)
    }

    /// Deletes the streams whose names start with one of `prefixes`: what a run left behind.
    pub async fn clean(&self, prefixes: &[&str]) -> anyhow::Result<()> {
        let names: Vec<String> = self.js.stream_names().try_collect().await?;
        for name in names.iter().filter(|name| prefixes.iter().any(|p| name.starts_with(p))) {
            self.js.delete_stream(name).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Client for RawNats {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        self.stream(topic).await?;
        let mut acks = Vec::with_capacity(batch.len());
        for (key, payload) in batch {
            let subject = format!("rawbench.{topic}.{}", weir_core::bus::partition_of(&key, 16));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("weir-key", key.as_str());
            let ack = self.js.send_publish(subject, PublishMessage::build().headers(headers).payload(payload)).await?;
            acks.push(tokio::spawn(ack.into_future()));
        }
        for ack in acks {
            ack.await??;
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        let stream = self.stream(topic).await?;
        let config = pull::Config {
            durable_name: Some(group.to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 1000,
            ..Default::default()
        };
        let consumer = stream.get_or_create_consumer(group, config).await?;
        let mut messages = consumer.messages().await?;
        for _ in 0..count {
            let message = messages.next().await.ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
            seen(&message.payload);
            message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        Ok(())
    }
}
