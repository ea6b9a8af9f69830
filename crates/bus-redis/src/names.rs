//! How Weir names map onto Redis keys, and the stream positions the adapter tracks.
//!
//! Every key of a topic shares the hash tag `{<topic>}`, so that on a Redis Cluster a topic's
//! streams and its groups' retry state live in one slot and the adapter's scripts may touch them
//! together.

use std::{fmt, str::FromStr};

use weir_core::bus::{Error, Result};

/// Checks a namespace prefix: letters, digits, '.', '-' and '_', at most 64 bytes. It may not
/// contain ':' or braces, which structure the keys.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok { Ok(()) } else { Err(Error::InvalidName(prefix.to_owned())) }
}

/// Checks a consumer name (the member's identity in Redis): the rules of a topic name.
pub(crate) fn validate_consumer(consumer: &str) -> Result<()> {
    weir_core::bus::validate_name(consumer)
}

/// The keys of one topic: `<prefix>:{<topic>}:<partition>` for its streams.
#[derive(Debug, Clone)]
pub(crate) struct TopicKeys {
    base: String,
    partitions: u32,
}

impl TopicKeys {
    pub(crate) fn new(prefix: &str, topic: &str, partitions: u32) -> Self {
        Self { base: format!("{prefix}:{{{topic}}}"), partitions: partitions.max(1) }
    }

    pub(crate) fn stream(&self, partition: u32) -> String {
        format!("{}:{partition}", self.base)
    }

    /// Every partition's stream, in partition order.
    pub(crate) fn streams(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.stream(p)).collect()
    }

    /// The keys of `group` on this topic.
    pub(crate) fn group(&self, group: &str) -> GroupKeys {
        let base = format!("{}:g:{group}", self.base);
        GroupKeys {
            streams: self.streams(),
            retry: format!("{base}:retry"),
            attempts: format!("{base}:attempts"),
            blocked: format!("{base}:blocked"),
        }
    }
}

/// The keys one group uses on one topic.
#[derive(Debug, Clone)]
pub(crate) struct GroupKeys {
    /// The topic's streams, index = partition.
    pub streams: Vec<String>,
    /// Sorted set of nacked messages (member `<partition>:<id>`), scored by the Unix time in
    /// milliseconds at which a member may take them; a taken message is scored by its lease's end.
    pub retry: String,
    /// Hash: retry member → the attempts delivered so far.
    pub attempts: String,
    /// Hash: message key → the retry member that holds the key's later messages back.
    pub blocked: String,
}

/// A Redis stream entry id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(Self { ms: ms.parse().map_err(drop)?, seq: seq.parse().map_err(drop)? })
    }
}

/// Where a message sits: its partition's stream and its id there. Ordered by id first, so that
/// a key's messages (which share a partition) sort in publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub id: StreamId,
    pub partition: u32,
}

impl Pos {
    /// The message's member in the retry set: `<partition>:<id>`.
    pub(crate) fn member(&self) -> String {
        format!("{}:{}", self.partition, self.id)
    }

    pub(crate) fn from_member(member: &str) -> Option<Self> {
        let (partition, id) = member.split_once(':')?;
        Some(Self { id: id.parse().ok()?, partition: partition.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_per_topic_and_group() {
        let orders = TopicKeys::new("weir", "orders", 4);
        let dlq = TopicKeys::new("weir", "orders.dlq", 4);
        assert_eq!(orders.stream(3), "weir:{orders}:3");
        assert_eq!(orders.streams().len(), 4);
        assert_ne!(orders.stream(0), dlq.stream(0));
        let group = orders.group("billing");
        assert_eq!(group.retry, "weir:{orders}:g:billing:retry");
        assert_ne!(group.retry, orders.group("billing.x").retry);
        assert_eq!(TopicKeys::new("weir", "t", 0).streams().len(), 1, "at least one partition");
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["weir", "t-0192_ab", "a.b"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "a:b", "a{b", "a}b", "a b", &"x".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_ids_and_members_round_trip() {
        let id: StreamId = "1526985054069-3".parse().unwrap();
        assert_eq!(id, StreamId { ms: 1_526_985_054_069, seq: 3 });
        assert_eq!(id.to_string(), "1526985054069-3");
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
        let pos = Pos { id, partition: 7 };
        assert_eq!(pos.member(), "7:1526985054069-3");
        assert_eq!(Pos::from_member(&pos.member()), Some(pos));
        assert_eq!(Pos::from_member("x:1-1"), None);
        assert!(
            Pos { id: StreamId { ms: 1, seq: 9 }, partition: 9 } < Pos { id: StreamId { ms: 2, seq: 0 }, partition: 0 }
        );
    }
}
