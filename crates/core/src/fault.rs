//! Fault injection for tests and chaos drills: transports that misbehave in ways the
//! platform must survive. Nothing here is used unless asked for.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::bus::{Acker, Capabilities, Delivery, DeliveryStream, Result, Subscriber, Subscription, TypeFilter};

/// A subscriber that delivers every message twice, as a transport does when an ack is lost:
/// the first delivery's ack is swallowed and the same message comes again; only the second
/// delivery's ack reaches the transport. Consumers must turn the second into a no-op.
pub struct DuplicateDeliveries {
    inner: Arc<dyn Subscriber>,
}

impl DuplicateDeliveries {
    pub fn new(inner: Arc<dyn Subscriber>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl Subscriber for DuplicateDeliveries {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        self.subscribe_filtered(topic, group, Arc::new(|_: &str| true)).await
    }

    async fn subscribe_filtered(&self, topic: &str, group: &str, wants: TypeFilter) -> Result<Subscription> {
        let inner = self.inner.subscribe_filtered(topic, group, wants).await?;
        Ok(Subscription::new(Doubled { inner, again: Arc::default() }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        self.inner.lag(topic, group).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[derive(Default)]
struct Again {
    queue: Mutex<VecDeque<Delivery>>,
    ready: Notify,
}

struct Doubled {
    inner: Subscription,
    again: Arc<Again>,
}

#[async_trait]
impl DeliveryStream for Doubled {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(second) = self.again.queue.lock().expect("not poisoned").pop_front() {
                return Some(second);
            }
            tokio::select! {
                first = self.inner.next() => {
                    let first = first?;
                    let (topic, message, attempt) = (first.topic.clone(), first.message.clone(), first.attempt);
                    let acker = SwallowFirstAck { real: Mutex::new(Some(first)), again: self.again.clone() };
                    return Some(Delivery::new(topic, message, attempt, acker));
                }
                _ = self.again.ready.notified() => {}
            }
        }
    }
}

/// Holds the real delivery: an ack requeues it (to be delivered again), a nack passes through.
struct SwallowFirstAck {
    real: Mutex<Option<Delivery>>,
    again: Arc<Again>,
}

impl SwallowFirstAck {
    fn take(&self) -> Option<Delivery> {
        self.real.lock().expect("not poisoned").take()
    }
}

#[async_trait]
impl Acker for SwallowFirstAck {
    async fn ack(&self) -> Result<()> {
        if let Some(real) = self.take() {
            self.again.queue.lock().expect("not poisoned").push_back(real);
            self.again.ready.notify_one();
        }
        Ok(())
    }

    async fn nack(&self, delay: Duration) -> Result<()> {
        match self.take() {
            Some(real) => real.nack(delay).await,
            None => Ok(()),
        }
    }
}
