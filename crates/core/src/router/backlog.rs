//! Backlog gauges: how far behind a process's consumer groups are, what waits in its outbox,
//! and how many dead letters its topics hold — read from the transport and the database every
//! [`RouterOptions::backlog_interval`](super::RouterOptions::backlog_interval), so a scrape of
//! `/metrics` never waits on a broker, and an autoscaler can act on lag:
//!
//! - `weir_consumer_lag{topic,group}`: the group's unsettled messages ([`Subscriber::lag`]).
//! - `weir_dead_letters{topic}`: the letters in `<topic>.dlq` that operators have not redriven
//!   or discarded (the lag of [`OPERATORS`] on it).
//! - `weir_outbox_backlog{group}`: rows of the service's outbox not yet published (the
//!   service's consumer group names it: one database per service).
//!
//! A failed read leaves the gauge at its last value and logs at debug: a broker that is away is
//! the relay's and the router's to report, not the gauges'.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Kernel;
use crate::{
    bus::{Subscriber, dead_letter_topic},
    store::outbox,
};

/// The consumer group of operators' tools reading dead letters: what it has not settled of a
/// `.dlq` topic is that topic's depth.
pub const OPERATORS: &str = "weir-operators";

/// Reports the gauges of `routes` (topic, group) every `every` until `stop`.
pub(crate) async fn report(kernel: Kernel, routes: Vec<(String, String)>, every: Duration, stop: CancellationToken) {
    let mut topics: Vec<&str> = routes.iter().map(|(topic, _)| topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    let service = routes.first().map(|(_, group)| group.clone()).unwrap_or_default();
    loop {
        for (topic, group) in &routes {
            if let Some(lag) = read(kernel.subscriber.lag(topic, group).await, "consumer lag") {
                metrics::gauge!("weir_consumer_lag", "topic" => topic.clone(), "group" => group.clone())
                    .set(lag as f64);
            }
        }
        for topic in &topics {
            if let Some(depth) = read(dead_letters(kernel.subscriber.as_ref(), topic).await, "dead letters") {
                metrics::gauge!("weir_dead_letters", "topic" => (*topic).to_owned()).set(depth as f64);
            }
        }
        if let Some(rows) = read(outbox::backlog(kernel.db.as_ref()).await, "outbox backlog") {
            metrics::gauge!("weir_outbox_backlog", "group" => service.clone()).set(rows as f64);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The dead letters of `topic` that operators have not settled.
pub async fn dead_letters(subscriber: &dyn Subscriber, topic: &str) -> crate::bus::Result<u64> {
    subscriber.lag(&dead_letter_topic(topic), OPERATORS).await
}

fn read<T, E: std::fmt::Display>(value: Result<T, E>, what: &str) -> Option<T> {
    value.map_err(|e| debug!(error = %e, "reading the {what} failed; the gauge keeps its last value")).ok()
}

/// Describes the gauges for `/metrics`.
pub fn describe() {
    metrics::describe_gauge!("weir_consumer_lag", "Messages of a topic its consumer group has not settled yet");
    metrics::describe_gauge!("weir_dead_letters", "Dead letters of a topic not yet redriven or discarded");
    metrics::describe_gauge!("weir_outbox_backlog", "Outbox rows of a service not yet published to the bus");
}
