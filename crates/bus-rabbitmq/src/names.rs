//! How Weir names map onto RabbitMQ exchange and queue names.
//!
//! Every name starts with the namespace prefix. Topic and group names may be 200 bytes each and
//! RabbitMQ's names at most 255, so each readable part is cut short and followed by a hash of
//! the exact name: `a.b` and `a_b`, or two long names with a common beginning, never collide.

use weir_core::bus::{Error, Result};

/// Longest readable part of a topic kept in a name.
const TOPIC_READABLE: usize = 80;
/// Longest readable part of a group kept in a name.
const GROUP_READABLE: usize = 40;

/// The delay levels, in milliseconds: a group has one delay queue per level it has used. A
/// nack's delay is served by hops through the largest level that fits what remains of it.
pub(crate) const DELAY_LEVELS_MS: [u64; 8] = [50, 200, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000];

/// Checks a namespace prefix: it becomes the first part of every name, so it may not contain
/// '.' (prefix `a` with topic `b.c` and prefix `a.b` with topic `c` would share names), and
/// `amq` is refused because RabbitMQ reserves names starting with `amq.`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && !prefix.eq_ignore_ascii_case("amq")
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok { Ok(()) } else { Err(Error::InvalidName(prefix.to_owned())) }
}

/// The names of one topic's objects.
#[derive(Debug, Clone)]
pub(crate) struct TopicNames {
    /// The topic exchange messages are published to, routed by partition.
    pub exchange: String,
    /// The stream queue that retains every message for groups that join later.
    pub log: String,
    /// The headers exchange that routes nacked messages into their group's delay queues.
    pub wait: String,
    base: String,
}

impl TopicNames {
    pub(crate) fn new(prefix: &str, topic: &str) -> Self {
        let base = format!("{prefix}.t.{}.{:016x}", readable(topic, TOPIC_READABLE), fnv1a64(topic));
        Self { exchange: base.clone(), log: format!("{base}.log"), wait: format!("{base}.wait"), base }
    }

    pub(crate) fn group(&self, group: &str) -> GroupNames {
        GroupNames { base: format!("{}.g.{}.{:016x}", self.base, readable(group, GROUP_READABLE), fnv1a64(group)) }
    }
}

/// The names of one group's queues on one topic.
#[derive(Debug, Clone)]
pub(crate) struct GroupNames {
    base: String,
}

impl GroupNames {
    /// The queue of one partition: what the group consumes once it has caught up.
    pub(crate) fn partition(&self, partition: u32) -> String {
        format!("{}.p{partition}", self.base)
    }

    /// The queue holding the topic's history copied for the group when it was created.
    pub(crate) fn history(&self) -> String {
        format!("{}.history", self.base)
    }

    /// Exists while the group's creation is unfinished.
    pub(crate) fn creating(&self) -> String {
        format!("{}.creating", self.base)
    }

    /// An exclusive queue: whoever declared it creates the group.
    pub(crate) fn lock(&self) -> String {
        format!("{}.lock", self.base)
    }

    /// The delay queue of one level.
    pub(crate) fn delay(&self, level_ms: u64) -> String {
        format!("{}.delay.{level_ms}", self.base)
    }
}

/// The routing key of a partition.
pub(crate) fn routing_key(partition: u32) -> String {
    partition.to_string()
}

/// The routing key of control messages: it matches the log's binding and no partition's.
pub(crate) const CONTROL_ROUTING_KEY: &str = "control";

fn readable(name: &str, max: usize) -> &str {
    // Validated names are ASCII, so any byte index is a character boundary.
    name.get(..name.len().min(max)).unwrap_or(name)
}

fn fnv1a64(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_rabbitmq_and_stay_distinct() {
        let longest = "x".repeat(200);
        let prefix = "p".repeat(64);
        let topic = TopicNames::new(&prefix, &longest);
        let group = topic.group(&longest);
        for name in [
            topic.exchange.clone(),
            topic.log.clone(),
            topic.wait.clone(),
            group.partition(u32::MAX),
            group.history(),
            group.creating(),
            group.lock(),
            group.delay(u64::MAX),
        ] {
            assert!(name.len() <= 255, "{name} is {} bytes", name.len());
        }
        assert_ne!(TopicNames::new("weir", "a.b").exchange, TopicNames::new("weir", "a_b").exchange);
        assert_ne!(TopicNames::new("a", "b").exchange, TopicNames::new("b", "b").exchange);
        let topic = TopicNames::new("weir", "orders");
        assert_ne!(topic.group("g.1").partition(0), topic.group("g_1").partition(0));
        assert_ne!(topic.exchange, TopicNames::new("weir", "orders.dlq").exchange);
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["weir", "t-0192_ab"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a b", "amq", "AMQ", &"p".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
