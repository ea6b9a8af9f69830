//! Redis Streams with redis-rs alone, asking what the adapter asks: each publish call's `XADD`s
//! in one `MULTI`/`EXEC`, each to the stream of its key's partition (16 per topic); a consumer
//! group created from the start of every partition (`XGROUP CREATE ... 0 MKSTREAM`), read with
//! `XREADGROUP COUNT 64 BLOCK` over all partitions on a connection of its own, and an `XACK` per
//! message, sent concurrently as the message is seen (as the harness settles the adapter's) and
//! all confirmed before `consume` returns.

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use std::time::Duration;

use redis::{
    AsyncCommands as _, AsyncConnectionConfig, Value,
    aio::MultiplexedConnection,
    streams::{StreamReadOptions, StreamReadReply},
};

use super::{Client, Seen};

/// What this client's keys start with.
pub(in crate::bench) const RAW_PREFIX: &str = "rawbench";
/// Streams per topic, as the adapter's default.
const PARTITIONS: u32 = 16;
/// Entries per stream and read, as the adapter's prefetch.
const COUNT: usize = 64;
/// How long one read blocks.
const BLOCK: Duration = Duration::from_secs(5);
/// How long a command may wait for its answer, as the adapter's default (redis-rs's own, 500 ms,
/// would fail a blocking read).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(in crate::bench) struct RawRedis {
    client: redis::Client,
    /// Publishes and acks; reads block on connections of their own.
    conn: MultiplexedConnection,
}

impl RawRedis {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&Self::config(RESPONSE_TIMEOUT))
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        Ok(Self { client, conn })
    }

    fn config(response_timeout: Duration) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(response_timeout))
    }

    fn streams(topic: &str) -> Vec<String> {
        (0..PARTITIONS).map(|p| format!("{RAW_PREFIX}:{{{topic}}}:{p}")).collect()
    }

    /// Deletes the keys under each of `prefixes` (`<prefix>:*`): what a run left behind.
    pub async fn clean(&self, prefixes: &[&str]) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        for prefix in prefixes {
            let keys: Vec<redis::RedisResult<String>> =
                conn.scan_match::<_, String>(format!("{prefix}:*")).await?.collect().await;
            let keys = keys.into_iter().collect::<redis::RedisResult<Vec<String>>>()?;
            for chunk in keys.chunks(500) {
                conn.del::<_, ()>(chunk).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Client for RawRedis {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        let streams = Self::streams(topic);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, payload) in &batch {
            let stream = &streams[weir_core::bus::partition_of(key, PARTITIONS) as usize];
            pipe.cmd("XADD").arg(stream).arg("*").arg("key").arg(key).arg("payload").arg(payload.as_ref()).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn join(&self, topic: &str, group: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        for stream in Self::streams(topic) {
            let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&stream, group, "0").await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        self.join(topic, group).await?;
        let streams = Self::streams(topic);
        let mut reader =
            self.client.get_multiplexed_async_connection_with_config(&Self::config(BLOCK + RESPONSE_TIMEOUT)).await?;
        let block = usize::try_from(BLOCK.as_millis())?;
        let options = StreamReadOptions::default().group(group, "raw-1").count(COUNT).block(block);
        let from = vec![">"; streams.len()];
        let mut acks = tokio::task::JoinSet::new();
        let mut done = 0;
        while done < count {
            let reply: Option<StreamReadReply> = reader.xread_options(&streams, &from, &options).await?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in stream.ids {
                    if let Some(Value::BulkString(payload)) = entry.map.get("payload") {
                        seen(payload);
                    }
                    let (mut conn, key, group) = (self.conn.clone(), stream.key.clone(), group.to_owned());
                    acks.spawn(async move { conn.xack::<_, _, _, i64>(key, group, &[entry.id]).await });
                    done += 1;
                }
            }
            while let Some(ack) = acks.try_join_next() {
                ack??;
            }
        }
        while let Some(ack) = acks.join_next().await {
            ack??;
        }
        Ok(())
    }
}
