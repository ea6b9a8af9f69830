//! The broker objects of topics and groups: declaring them, creating a group with its copy of
//! the topic's history, counting what a group has not settled, and deleting them again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, ExchangeKind, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};
use tracing::{debug, info};
use weir_core::bus::{Error, Result};

use crate::{
    Shared,
    names::{CONTROL_ROUTING_KEY, DELAY_LEVELS_MS, GroupNames, TopicNames, routing_key},
    wire::{self, CONTROL_CUT, CONTROL_END, CONTROL_HEADER, WAIT_HEADER},
};

/// Messages read ahead from a topic's log while copying it.
const COPY_PREFETCH: u16 = 1024;
/// Log messages acked at once while copying, with one `multiple` ack: an ack on a stream only
/// returns credit, and one per message cost as much as the copy's publish.
const COPY_ACK_EVERY: u64 = 256;
/// Copies whose confirms may be outstanding: the oldest is awaited when the window is full,
/// so the broker never waits for this process to wake up.
const COPY_WINDOW: usize = 2048;
/// How long group creation waits for another process that is creating the same group.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);
/// Reading a log to count it stops when the broker sends nothing for this long.
const LOG_QUIET: Duration = Duration::from_millis(250);
/// ... or after this long in all.
const LOG_COUNT_LIMIT: Duration = Duration::from_secs(5);

impl Shared {
    fn quorum_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("quorum"));
        if let Some(expiry) = self.options.queue_expiry {
            arguments.insert("x-expires".into(), millis(expiry));
        }
        arguments
    }

    /// Arguments of a queue one member of a group consumes at a time.
    fn single_consumer_arguments(&self) -> FieldTable {
        let mut arguments = self.quorum_arguments();
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments
    }

    /// Declares the topic's exchange, its log (bound to every routing key) and its wait
    /// exchange, unless this bus did already. Idempotent, also against other processes.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<TopicNames> {
        let names = TopicNames::new(&self.options.prefix, topic);
        if self.topics_lock().contains(topic) {
            return Ok(names);
        }
        let channel = self.channel().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(names.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(|e| self.error(e))?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("stream"));
        if !self.options.max_age.is_zero() {
            arguments.insert("x-max-age".into(), text(&format!("{}s", self.options.max_age.as_secs().max(1))));
        }
        channel
            .queue_declare(names.log.as_str().into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(|e| self.error(e))?;
        channel
            .queue_bind(
                names.log.as_str().into(),
                names.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(e))?;
        channel
            .exchange_declare(names.wait.as_str().into(), ExchangeKind::Headers, durable, FieldTable::default())
            .await
            .map_err(|e| self.error(e))?;
        close(channel).await;
        self.topics_lock().insert(topic.to_owned());
        Ok(names)
    }

    /// Makes sure the group exists on the broker: its partition queues bound to the topic and,
    /// if the topic had messages before, its copy of them. One process creates a group at a
    /// time (an exclusive queue is the lock); one that died halfway leaves the group's
    /// `creating` marker behind, and the next creator starts the copy again.
    pub(crate) async fn ensure_group(&self, topic: &TopicNames, topic_name: &str, group: &str) -> Result<()> {
        let id = (topic_name.to_owned(), group.to_owned());
        if self.known_groups_lock().contains(&id) {
            return Ok(());
        }
        let local = self.creation_lock(&id);
        let _local = local.lock().await;
        if self.known_groups_lock().contains(&id) {
            return Ok(());
        }
        let names = topic.group(group);
        let lock = self.acquire(&names.lock()).await?;
        let created = self.create_group(topic, &names).await;
        // The lock goes with the connection anyway; deleting it lets others in at once.
        if let Err(e) = lock.queue_delete(names.lock().as_str().into(), QueueDeleteOptions::default()).await {
            debug!(error = %e, "deleting the group lock failed");
        }
        close(lock).await;
        created?;
        self.known_groups_lock().insert(id);
        Ok(())
    }

    /// Declares the exclusive queue `name`, waiting while another connection holds it.
    async fn acquire(&self, name: &str) -> Result<Channel> {
        let started = Instant::now();
        loop {
            let channel = self.channel().await?;
            let exclusive =
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
            match channel.queue_declare(name.into(), exclusive, FieldTable::default()).await {
                Ok(_) => return Ok(channel),
                Err(e) if is_soft(&e, AMQPSoftError::RESOURCELOCKED) && started.elapsed() < LOCK_PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    async fn create_group(&self, topic: &TopicNames, names: &GroupNames) -> Result<()> {
        let mut probe = Probe::new(self);
        let exists = probe.count(&names.partition(0)).await?.is_some();
        let unfinished = probe.count(&names.creating()).await?.is_some();
        drop(probe);
        if exists && !unfinished {
            return Ok(());
        }
        let channel = self.confirm_channel().await?;
        let mut marker_arguments = FieldTable::default();
        if let Some(expiry) = self.options.queue_expiry {
            marker_arguments.insert("x-expires".into(), millis(expiry));
        }
        channel
            .queue_declare(names.creating().as_str().into(), QueueDeclareOptions::durable(), marker_arguments)
            .await
            .map_err(|e| self.error(e))?;
        if unfinished {
            info!(
                queue = names.history(),
                "an earlier creation of the group stopped halfway; copying its history again"
            );
            channel
                .queue_delete(names.history().as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        for partition in 0..self.options.partitions {
            let queue = names.partition(partition);
            channel
                .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), self.single_consumer_arguments())
                .await
                .map_err(|e| self.error(e))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    topic.exchange.as_str().into(),
                    routing_key(partition).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        // The cut: every message the log holds before it was routed before the partition
        // queues were bound, so the group's copy of the history ends there.
        let cut = self.new_id();
        let confirm = channel
            .basic_publish(
                topic.exchange.as_str().into(),
                CONTROL_ROUTING_KEY.into(),
                mandatory(),
                b"",
                wire::control_properties(CONTROL_CUT, &cut),
            )
            .await
            .map_err(|e| self.error(e))?;
        self.confirmed(confirm).await?;
        let copied = self.copy_history(topic, names, &channel, &cut).await?;
        debug!(queue = names.history(), copied, "group created");
        channel
            .queue_delete(names.creating().as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| self.error(e))?;
        close(channel).await;
        Ok(())
    }

    /// Copies the topic's log, up to the cut, into the group's history queue, then marks its
    /// end. Returns how many messages were copied; with none, there is no history queue.
    async fn copy_history(&self, topic: &TopicNames, names: &GroupNames, writer: &Channel, cut: &str) -> Result<usize> {
        let reader = self.channel().await?;
        reader.basic_qos(COPY_PREFETCH, BasicQosOptions::default()).await.map_err(|e| self.error(e))?;
        let mut log = reader
            .basic_consume(topic.log.as_str().into(), "".into(), BasicConsumeOptions::default(), stream_offset("first"))
            .await
            .map_err(|e| self.error(e))?;
        let history = names.history();
        let mut copied = 0;
        let mut pending = std::collections::VecDeque::new();
        let multiple = BasicAckOptions { multiple: true };
        loop {
            let delivery = match log.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(self.error(e)),
                None => return Err(Error::transport(LogEnded(topic.log.clone()))),
            };
            let properties = &delivery.properties;
            let is_cut = properties.message_id().as_ref().is_some_and(|id| id.as_str() == cut);
            if is_cut || delivery.delivery_tag % COPY_ACK_EVERY == 0 {
                delivery.acker.ack(multiple).await.map_err(|e| self.error(e))?;
            }
            if is_cut {
                break;
            }
            if properties.headers().as_ref().is_some_and(|h| h.contains_key(CONTROL_HEADER)) {
                continue;
            }
            if copied == 0 {
                writer
                    .queue_declare(
                        history.as_str().into(),
                        QueueDeclareOptions::durable(),
                        self.single_consumer_arguments(),
                    )
                    .await
                    .map_err(|e| self.error(e))?;
            }
            let confirm = writer
                .basic_publish(
                    "".into(),
                    history.as_str().into(),
                    mandatory(),
                    &delivery.data,
                    without_broker_headers(properties),
                )
                .await
                .map_err(|e| self.error(e))?;
            pending.push_back(confirm);
            copied += 1;
            if pending.len() >= COPY_WINDOW
                && let Some(oldest) = pending.pop_front()
            {
                self.confirmed(oldest).await?;
            }
        }
        drop(log);
        close(reader).await;
        for confirm in pending {
            self.confirmed(confirm).await?;
        }
        if copied > 0 {
            let end = self.new_id();
            let confirm = writer
                .basic_publish(
                    "".into(),
                    history.as_str().into(),
                    mandatory(),
                    b"",
                    wire::control_properties(CONTROL_END, &end),
                )
                .await
                .map_err(|e| self.error(e))?;
            self.confirmed(confirm).await?;
        }
        Ok(copied)
    }

    /// Waits for a publisher confirm: a nack or a returned (unroutable) message is an error.
    pub(crate) async fn confirmed(&self, confirm: PublisherConfirm) -> Result<()> {
        match confirm.await.map_err(|e| self.error(e))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Error::transport(Unroutable(returned.reply_text.to_string())))
            }
            Confirmation::Nack(None) => Err(Error::transport(Refused)),
        }
    }

    /// Declares a group's delay queue of one level: its messages wait out the level's TTL, then
    /// dead-letter (at least once) through the default exchange to the partition queue their
    /// routing key names.
    pub(crate) async fn ensure_delay_queue(
        &self,
        channel: &Channel,
        topic: &TopicNames,
        queue: &str,
        level_ms: u64,
    ) -> Result<()> {
        let mut arguments = self.quorum_arguments();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::try_from(level_ms).unwrap_or(i64::MAX)));
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(|e| self.error(e))?;
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), text("all"));
        binding.insert(WAIT_HEADER.into(), text(queue));
        channel
            .queue_bind(queue.into(), topic.wait.as_str().into(), "".into(), QueueBindOptions::default(), binding)
            .await
            .map_err(|e| self.error(e))
    }

    /// Counts what `group` has not settled on the broker: ready messages of its partition,
    /// history and delay queues. A group that does not exist lags by the whole log.
    pub(crate) async fn broker_lag(&self, topic: &TopicNames, group: &GroupNames, end_held_here: bool) -> Result<u64> {
        let mut probe = Probe::new(self);
        if probe.count(&topic.log).await?.is_none() {
            return Ok(0);
        }
        if probe.count(&group.partition(0)).await?.is_none() {
            drop(probe);
            return self.count_log(topic).await;
        }
        let mut lag = 0u64;
        for partition in 0..self.options.partitions {
            lag += u64::from(probe.count(&group.partition(partition)).await?.unwrap_or(0));
        }
        if let Some(history) = probe.count(&group.history()).await? {
            // The history's end marker is not a message of the topic.
            let history = u64::from(history);
            lag += if end_held_here { history } else { history.saturating_sub(1) };
        }
        for level in DELAY_LEVELS_MS {
            lag += u64::from(probe.count(&group.delay(level)).await?.unwrap_or(0));
        }
        Ok(lag)
    }

    /// Counts the topic's messages by reading its log to the end: the log's own count is not
    /// available over AMQP 0-9-1. The end is where the broker falls quiet.
    async fn count_log(&self, topic: &TopicNames) -> Result<u64> {
        let channel = self.channel().await?;
        channel.basic_qos(COPY_PREFETCH, BasicQosOptions::default()).await.map_err(|e| self.error(e))?;
        let mut log = channel
            .basic_consume(topic.log.as_str().into(), "".into(), BasicConsumeOptions::default(), stream_offset("first"))
            .await
            .map_err(|e| self.error(e))?;
        let started = Instant::now();
        let mut count = 0;
        while started.elapsed() < LOG_COUNT_LIMIT {
            let Ok(next) = tokio::time::timeout(LOG_QUIET, log.next()).await else { break };
            let Some(delivery) = next else { break };
            let delivery = delivery.map_err(|e| self.error(e))?;
            delivery.acker.ack(BasicAckOptions::default()).await.map_err(|e| self.error(e))?;
            if !delivery.properties.headers().as_ref().is_some_and(|h| h.contains_key(CONTROL_HEADER)) {
                count += 1;
            }
        }
        drop(log);
        close(channel).await;
        Ok(count)
    }

    /// Deletes `group`'s queues on `topic` with their messages.
    pub(crate) async fn delete_group_queues(&self, topic: &TopicNames, group: &GroupNames) -> Result<()> {
        let channel = self.channel().await?;
        let mut queues: Vec<String> = (0..self.options.partitions).map(|p| group.partition(p)).collect();
        queues.extend([group.history(), group.creating()]);
        queues.extend(DELAY_LEVELS_MS.iter().map(|level| group.delay(*level)));
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        let _ = topic;
        close(channel).await;
        Ok(())
    }

    /// Deletes the topic's log and exchanges.
    pub(crate) async fn delete_topic_objects(&self, topic: &TopicNames) -> Result<()> {
        let channel = self.channel().await?;
        channel
            .queue_delete(topic.log.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| self.error(e))?;
        for exchange in [&topic.exchange, &topic.wait] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        close(channel).await;
        Ok(())
    }
}

/// Passive declarations on one channel: a missing queue closes the channel, so the next
/// question opens another.
pub(crate) struct Probe<'a> {
    shared: &'a Shared,
    channel: Option<Channel>,
}

impl<'a> Probe<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Self {
        Self { shared, channel: None }
    }

    /// The ready messages of `queue`, or `None` if it does not exist.
    pub(crate) async fn count(&mut self, queue: &str) -> Result<Option<u32>> {
        let channel = match self.channel.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => self.shared.channel().await?,
        };
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        match channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(declared) => {
                self.channel = Some(channel);
                Ok(Some(declared.message_count()))
            }
            Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => Ok(None),
            Err(e) => Err(self.shared.error(e)),
        }
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        // Dropping the last handle of a channel closes it.
        self.channel.take();
    }
}

pub(crate) fn is_soft(error: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(kind))
}

pub(crate) fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() }
}

pub(crate) async fn close(channel: Channel) {
    if channel.status().connected()
        && let Err(e) = channel.close(200, "done".into()).await
    {
        debug!(error = %e, "closing a channel failed");
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

fn millis(duration: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX).max(1))
}

fn stream_offset(offset: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), text(offset));
    arguments
}

/// A message's properties without the headers the broker added (`x-stream-offset`, `x-death`, ...).
pub(crate) fn without_broker_headers(properties: &BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers() else { return properties.clone() };
    let mut kept = FieldTable::default();
    for (name, value) in headers {
        if !name.as_str().starts_with("x-") {
            kept.insert(name.clone(), value.clone());
        }
    }
    properties.clone().with_headers(kept)
}

/// The log's consumer ended before the cut arrived (the log was deleted meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("the topic's log {0} ended while a group's history was being copied from it")]
pub struct LogEnded(pub String);

/// The broker returned a mandatory message: no queue was bound for it.
#[derive(Debug, thiserror::Error)]
#[error("the broker could not route the message ({0}): the topic's exchange or queues are gone")]
pub struct Unroutable(pub String);

/// The broker refused a message (a publisher confirm's nack).
#[derive(Debug, thiserror::Error)]
#[error("the broker refused the message (negative publisher confirm)")]
pub struct Refused;

/// For [`Shared::ensure_group`]'s per-group lock in this process.
pub(crate) type CreationLock = Arc<tokio::sync::Mutex<()>>;
