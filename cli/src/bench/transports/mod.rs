//! `weir bench bus`'s transport table: each transport's Weir adapter beside the broker's own
//! client, on the same broker in the same run, with the same durability asked of both
//! (publish returns once the broker has the message; every message acked one by one).
//!
//! Three figures per client:
//! - **publish**: messages per second through `publish` calls of `--batch` messages each;
//! - **consume + ack**: a group, there before the messages were published (as a service's
//!   groups are), reads them and acks each;
//! - **end to end**: `--e2e-messages` single-message publishes paced at `--e2e-rate` per second
//!   while a group consumes: p50 and p99 of publish call → delivery.

pub(super) mod raw_kafka;
pub(super) mod raw_nats;
pub(super) mod raw_rabbitmq;
pub(super) mod raw_redis;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use weir_core::bus::{Message, Transport};

use super::{latency_histogram, ms, progress, table};

/// A transport `weir bench bus` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Sqlite,
    Nats,
    Kafka,
    Rabbitmq,
    Redis,
}

/// What one client does in the benchmark.
#[async_trait]
pub(super) trait Client: Send + Sync {
    /// Publishes `batch` (key, payload) to `topic`; returns once the broker has all of it.
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()>;
    /// Reads `count` messages of `topic` from the start as the group `group`, acking each;
    /// `seen` gets each payload as it arrives.
    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()>;
    /// Makes `group` exist on `topic` before anything is published, as a service's groups do
    /// when it starts (a transport may do work for a group created after the fact).
    async fn join(&self, _topic: &str, _group: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Called with each consumed payload.
pub(super) type Seen = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Weir's adapter, through the bus ports.
pub(super) struct Adapter(pub Transport);

#[async_trait]
impl Client for Adapter {
    async fn publish(&self, topic: &str, batch: Vec<(String, Bytes)>) -> anyhow::Result<()> {
        let messages = batch.into_iter().map(|(key, payload)| Message::new(key, payload)).collect();
        Ok(self.0.publisher.publish(topic, messages).await?)
    }

    async fn join(&self, topic: &str, group: &str) -> anyhow::Result<()> {
        drop(self.0.subscriber.subscribe(topic, group).await?);
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str, count: u64, seen: Seen) -> anyhow::Result<()> {
        let mut subscription = self.0.subscriber.subscribe(topic, group).await?;
        let mut acks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let delivery = subscription.next().await.context("the subscription ended")?;
            seen(&delivery.message.payload);
            // Acks settle concurrently, as the router's do.
            acks.spawn(delivery.ack());
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

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub messages: u64,
    pub batch: usize,
    pub payload: usize,
    pub e2e_messages: u64,
    pub e2e_rate: u64,
}

/// One client's figures.
pub(super) struct Figures {
    publish: f64,
    consume: f64,
    e2e: Histogram<u64>,
}

/// Measures `client` on fresh topics named after `label`.
pub(super) async fn measure(label: &str, client: Arc<dyn Client>, sizes: &Sizes) -> anyhow::Result<Figures> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("bench.{run}");
    let filler = Bytes::from(vec![b'x'; sizes.payload.max(8)]);
    let group = format!("bench-{run}");
    client.join(&topic, &group).await.with_context(|| format!("{label}: join"))?;

    let bar = progress(sizes.messages, &format!("{label} publish"));
    let started = Instant::now();
    let mut sent = 0;
    while sent < sizes.messages {
        let n = (sizes.batch as u64).min(sizes.messages - sent);
        let batch = (sent..sent + n).map(|i| (format!("key-{}", i % 64), filler.clone())).collect();
        client.publish(&topic, batch).await.with_context(|| format!("{label}: publish"))?;
        sent += n;
        bar.set_position(sent);
    }
    let publish = sizes.messages as f64 / started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let bar = progress(sizes.messages, &format!("{label} consume + ack"));
    let counted = bar.clone();
    let started = Instant::now();
    let seen: Seen = Arc::new(move |_| counted.inc(1));
    client.consume(&topic, &group, sizes.messages, seen).await.with_context(|| format!("{label}: consume"))?;
    let consume = sizes.messages as f64 / started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let e2e = end_to_end(label, client, sizes, &format!("bench.e2e.{run}"), &format!("bench-e2e-{run}")).await?;
    Ok(Figures { publish, consume, e2e })
}

/// Paced single publishes while a group consumes; latency of publish call → delivery.
async fn end_to_end(
    label: &str,
    client: Arc<dyn Client>,
    sizes: &Sizes,
    topic: &str,
    group: &str,
) -> anyhow::Result<Histogram<u64>> {
    let origin = Instant::now();
    let latency = Arc::new(Mutex::new(latency_histogram()));
    let recorded = latency.clone();
    let seen: Seen = Arc::new(move |payload: &[u8]| {
        let Some(stamp) = payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else { return };
        let now = origin.elapsed().as_micros() as u64;
        recorded.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(now.saturating_sub(stamp).max(1));
    });
    // The topic and group exist before the clock starts: the first message pays no set-up.
    client.publish(topic, vec![("warm-up".into(), Bytes::from_static(&[0; 8]))]).await?;
    let consumer = {
        let (client, topic, group, count) =
            (client.clone(), topic.to_owned(), group.to_owned(), sizes.e2e_messages + 1);
        tokio::spawn(async move { client.consume(&topic, &group, count, seen).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bar = progress(sizes.e2e_messages, &format!("{label} end to end"));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / sizes.e2e_rate.max(1) as f64));
    let mut publishes = tokio::task::JoinSet::new();
    let filler = vec![b'x'; sizes.payload.saturating_sub(8)];
    for i in 0..sizes.e2e_messages {
        ticker.tick().await;
        let mut payload = (origin.elapsed().as_micros() as u64).to_le_bytes().to_vec();
        payload.extend_from_slice(&filler);
        let (client, topic) = (client.clone(), topic.to_owned());
        publishes.spawn(async move { client.publish(&topic, vec![(format!("key-{}", i % 64), payload.into())]).await });
        bar.inc(1);
    }
    while let Some(published) = publishes.join_next().await {
        published??;
    }
    tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .with_context(|| format!("{label}: not every end-to-end message arrived within a minute"))???;
    bar.finish_and_clear();
    let histogram = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(histogram)
}

/// One row of the table: a transport's adapter or its raw client.
pub(super) struct Row {
    pub transport: Kind,
    pub client: &'static str,
    pub figures: Figures,
}

pub(super) fn print(rows: &[Row], sizes: &Sizes) {
    let mut out = table(&["transport", "client", "publish msg/s", "consume+ack msg/s", "e2e p50", "e2e p99", "vs raw"]);
    for row in rows {
        let raw = rows.iter().find(|r| r.transport == row.transport && r.client != "weir");
        let versus = match (row.client, raw) {
            ("weir", Some(raw)) => format!(
                "{:.0} % / {:.0} %",
                100.0 * row.figures.publish / raw.figures.publish,
                100.0 * row.figures.consume / raw.figures.consume
            ),
            _ => String::new(),
        };
        let f = &row.figures;
        out.add_row([
            format!("{:?}", row.transport).to_lowercase(),
            row.client.to_owned(),
            format!("{:.0}", f.publish),
            format!("{:.0}", f.consume),
            ms(&f.e2e, 0.5),
            ms(&f.e2e, 0.99),
            versus,
        ]);
    }
    println!("{out}");
    println!(
        "{} messages of {} bytes, {} per publish call; end to end: {} single publishes at {}/s. \
         \"vs raw\": the adapter's publish / consume+ack rate as a share of the raw client's.",
        sizes.messages, sizes.payload, sizes.batch, sizes.e2e_messages, sizes.e2e_rate
    );
}
