//! [`Routed`]: one bus made of several transports, each topic on the one its name's pattern
//! picks — e.g. commands (`*.commands`, `saga.timeouts`) over RabbitMQ and events over Kafka,
//! the split that work queues and event logs each suit best.

use std::{fmt, sync::Arc};

use async_trait::async_trait;

use super::{Capabilities, Message, Publisher, Result, Subscriber, Subscription, TypeFilter, validate_name};

/// A transport: its publisher and its subscriber (usually one value behind both).
#[derive(Clone)]
pub struct Transport {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
}

impl Transport {
    /// The transport of one value that implements both ports.
    pub fn of<T: Publisher + Subscriber>(bus: T) -> Self {
        let bus = Arc::new(bus);
        Self { publisher: bus.clone(), subscriber: bus }
    }
}

/// A topic-name pattern: `*` stands for any run of characters (dots included), everything else
/// for itself. `*.commands` matches `orders.commands` but not `orders.commands.dlq`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Checks that the pattern could match a valid topic name.
    pub fn new(pattern: &str) -> Result<Self> {
        validate_name(&pattern.replace('*', "x"))?;
        Ok(Self(pattern.to_owned()))
    }

    pub fn matches(&self, topic: &str) -> bool {
        glob(self.0.as_bytes(), topic.as_bytes())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*`-only glob matching, iterative with one backtrack point (linear for practical patterns).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Topics on the transport of the first pattern that matches their name, others on the default.
/// Capabilities are what every transport guarantees.
#[derive(Clone)]
pub struct Routed {
    default: Transport,
    routes: Vec<(Pattern, Transport)>,
}

impl Routed {
    pub fn new(default: Transport) -> Self {
        Self { default, routes: Vec::new() }
    }

    /// Sends the topics `pattern` matches over `transport` (earlier routes win).
    pub fn route(mut self, pattern: Pattern, transport: Transport) -> Self {
        self.routes.push((pattern, transport));
        self
    }

    /// The transport that carries `topic`.
    pub fn transport(&self, topic: &str) -> &Transport {
        self.routes.iter().find(|(pattern, _)| pattern.matches(topic)).map_or(&self.default, |(_, t)| t)
    }

    fn transports(&self) -> impl Iterator<Item = &Transport> {
        std::iter::once(&self.default).chain(self.routes.iter().map(|(_, t)| t))
    }
}

#[async_trait]
impl Publisher for Routed {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.transport(topic).publisher.publish(topic, messages).await
    }

    fn capabilities(&self) -> Capabilities {
        all(self.transports().map(|t| t.publisher.capabilities()))
    }
}

#[async_trait]
impl Subscriber for Routed {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        self.transport(topic).subscriber.subscribe(topic, group).await
    }

    async fn subscribe_filtered(&self, topic: &str, group: &str, wants: TypeFilter) -> Result<Subscription> {
        self.transport(topic).subscriber.subscribe_filtered(topic, group, wants).await
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        self.transport(topic).subscriber.lag(topic, group).await
    }

    fn capabilities(&self) -> Capabilities {
        all(self.transports().map(|t| t.subscriber.capabilities()))
    }
}

fn all(each: impl Iterator<Item = Capabilities>) -> Capabilities {
    each.fold(Capabilities::ALL, |a, b| Capabilities {
        ordered_per_key: a.ordered_per_key && b.ordered_per_key,
        persistent: a.persistent && b.persistent,
        consumer_groups: a.consumer_groups && b.consumer_groups,
        delayed_redelivery: a.delayed_redelivery && b.delayed_redelivery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        let commands = Pattern::new("*.commands").unwrap();
        assert!(commands.matches("orders.commands"));
        assert!(commands.matches("a.b.commands"));
        assert!(!commands.matches("orders.commands.dlq"));
        assert!(!commands.matches("commands"));
        let exact = Pattern::new("saga.timeouts").unwrap();
        assert!(exact.matches("saga.timeouts") && !exact.matches("saga.timeouts2"));
        let docs = Pattern::new("doc.*").unwrap();
        assert!(docs.matches("doc.uploaded") && !docs.matches("orders"));
        assert!(Pattern::new("*").unwrap().matches("anything.at.all"));
        let two = Pattern::new("a*b*c").unwrap();
        assert!(two.matches("aXXbYYc") && !two.matches("acb"));
    }

    #[test]
    fn patterns_that_match_no_valid_topic_are_refused() {
        for bad in ["", "a b*", "*/x", ".*"] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
    }
}
