//! How Weir's names and headers look on Kafka: topic and group names under the bus's prefix, and
//! the CloudEvents Kafka binding's header names (`ce_type` for Weir's `ce-type`).

use weir_core::bus::{Error, Result};

/// The longest prefix: with the '.' after it and a topic of 200 bytes (the most
/// [`weir_core::bus::validate_name`] allows), a Kafka topic name stays within Kafka's 249.
pub(crate) const MAX_PREFIX_LEN: usize = 48;

/// What Weir's CloudEvents headers start with (binary mode over HTTP and in Weir's messages).
const WEIR_CE_PREFIX: &str = "ce-";
/// What the CloudEvents Kafka protocol binding's headers start with.
const KAFKA_CE_PREFIX: &str = "ce_";

/// Checks a prefix: empty (no prefix), or up to [`MAX_PREFIX_LEN`] bytes of `[A-Za-z0-9._-]`
/// that neither starts nor ends with '.'.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.is_empty()
        || (prefix.len() <= MAX_PREFIX_LEN
            && !prefix.starts_with('.')
            && !prefix.ends_with('.')
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if ok { Ok(()) } else { Err(Error::InvalidName(format!("prefix {prefix:?}"))) }
}

/// The Kafka topic of a Weir topic (already validated): `<prefix>.<topic>`, or the topic itself
/// without a prefix. Without a prefix, names starting with `__` are refused: Kafka keeps them
/// for its internal topics (`__consumer_offsets`).
pub(crate) fn kafka_name(prefix: &str, name: &str) -> Result<String> {
    if prefix.is_empty() {
        if name.starts_with("__") {
            return Err(Error::InvalidName(name.to_owned()));
        }
        Ok(name.to_owned())
    } else {
        Ok(format!("{prefix}.{name}"))
    }
}

/// The Kafka consumer group of a Weir group on one topic (both already validated):
/// `<prefix>.<group>:<topic>`, or `<group>:<topic>` without a prefix. ':' cannot occur in Weir's
/// names, so no two (group, topic) pairs share a Kafka group.
pub(crate) fn group_id(prefix: &str, group: &str, topic: &str) -> String {
    if prefix.is_empty() { format!("{group}:{topic}") } else { format!("{prefix}.{group}:{topic}") }
}

/// The Kafka header name of a Weir header: `ce-*` becomes `ce_*`, others stay as they are.
/// `None` for a name starting with `ce_`, which would come back as `ce-*` and so cannot travel.
pub(crate) fn header_to_kafka(name: &str) -> Option<String> {
    if name.starts_with(KAFKA_CE_PREFIX) {
        return None;
    }
    Some(match name.strip_prefix(WEIR_CE_PREFIX) {
        Some(attribute) => format!("{KAFKA_CE_PREFIX}{attribute}"),
        None => name.to_owned(),
    })
}

/// The Weir header name of a Kafka header: `ce_*` becomes `ce-*`, others stay as they are.
pub(crate) fn header_from_kafka(name: &str) -> String {
    match name.strip_prefix(KAFKA_CE_PREFIX) {
        Some(attribute) => format!("{WEIR_CE_PREFIX}{attribute}"),
        None => name.to_owned(),
    }
}

/// A Weir header name that cannot travel over Kafka.
#[derive(Debug, thiserror::Error)]
#[error(
    "header {0:?} cannot be sent over Kafka: names starting with `ce_` are the CloudEvents \
     binding's spelling of `ce-*` and would arrive as `ce-*`"
)]
pub struct InvalidHeader(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_cloudevents_kafka_binding() {
        for (weir, kafka) in [
            ("ce-type", "ce_type"),
            ("ce-id", "ce_id"),
            ("ce-specversion", "ce_specversion"),
            ("ce-", "ce_"),
            ("content-type", "content-type"),
            ("traceparent", "traceparent"),
            ("x-ce-type", "x-ce-type"),
            ("CE-type", "CE-type"),
        ] {
            assert_eq!(header_to_kafka(weir).as_deref(), Some(kafka), "{weir}");
            assert_eq!(header_from_kafka(kafka), weir, "{kafka}");
        }
        assert_eq!(header_to_kafka("ce_type"), None, "would come back as ce-type");
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["", "weir", "test-1_a", "a.b", &"p".repeat(MAX_PREFIX_LEN)] {
            assert!(validate_prefix(good).is_ok(), "{good:?}");
        }
        for bad in [".a", "a.", "a b", "a/b", "ä", &"p".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_go_under_the_prefix() {
        assert_eq!(kafka_name("weir", "orders").unwrap(), "weir.orders");
        assert_eq!(kafka_name("", "orders").unwrap(), "orders");
        assert_eq!(kafka_name("p", "__consumer_offsets").unwrap(), "p.__consumer_offsets");
        assert!(matches!(kafka_name("", "__consumer_offsets"), Err(Error::InvalidName(_))));
        assert_eq!(group_id("weir", "billing", "orders.created"), "weir.billing:orders.created");
        assert_eq!(group_id("", "billing", "orders"), "billing:orders");
        assert_ne!(group_id("", "a.b", "c"), group_id("", "a", "b.c"), "no two pairs share a group");
        let longest = kafka_name(&"p".repeat(MAX_PREFIX_LEN), &"t".repeat(200)).unwrap();
        assert!(longest.len() <= 249, "Kafka's limit on topic names");
    }
}
