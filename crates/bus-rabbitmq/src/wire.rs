//! Messages on the wire: the CloudEvents AMQP binding (binary mode) and this adapter's own
//! headers.
//!
//! A Weir header `ce-<attribute>` travels as the AMQP header `cloudEvents:<attribute>` (the
//! binding's application-property prefix; AMQP 0-9-1 has no application-properties section, so
//! the headers table plays its part), `content-type` as the message's `content-type` property,
//! other headers under their own names. Values are long strings: their bytes arrive exactly.
//! On the way in, both `cloudEvents:` and `cloudEvents_` (the binding's JMS-compatible form)
//! are read as `ce-`. The key, the transport's message id and delivery bookkeeping travel in
//! five `weir-*` headers of this adapter's own and in properties, which a message may not set
//! itself; other `weir-*` headers (the router's dead-letter headers) travel like any other. A
//! message without a `weir-key` header — one from a producer outside Weir — is keyed by its
//! `cloudEvents:subject`, the attribute Weir's key is taken from.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use weir_core::bus::{Error, Message, Result};

/// The key of a message.
pub(crate) const KEY_HEADER: &str = "weir-key";
/// Set when a nack raised a message's attempt beyond the first.
pub(crate) const ATTEMPT_HEADER: &str = "weir-attempt";
/// Milliseconds since the Unix epoch before which a nacked message may not be delivered.
pub(crate) const NOT_BEFORE_HEADER: &str = "weir-not-before";
/// Marks a message of this adapter's own (a cut in a topic's log, the end of a history).
pub(crate) const CONTROL_HEADER: &str = "weir-control";
/// Names the delay queue that the wait exchange routes a nacked message to.
pub(crate) const WAIT_HEADER: &str = "weir-wait";

pub(crate) const CONTROL_CUT: &str = "cut";
pub(crate) const CONTROL_END: &str = "end";

/// The headers this adapter writes and reads itself: a message may not carry them, and on the
/// way in they never become message headers.
const OWN_HEADERS: [&str; 5] = [KEY_HEADER, ATTEMPT_HEADER, NOT_BEFORE_HEADER, CONTROL_HEADER, WAIT_HEADER];
/// The key of a message that came without [`KEY_HEADER`]: its CloudEvents subject.
const SUBJECT_HEADER: &str = "ce-subject";

const CE_PREFIX: &str = "ce-";
const AMQP_CE_PREFIX: &str = "cloudEvents:";
const AMQP_CE_PREFIX_JMS: &str = "cloudEvents_";
const CONTENT_TYPE: &str = "content-type";
/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// A header that AMQP cannot carry or that this adapter reserves.
#[derive(Debug, thiserror::Error)]
#[error(
    "header {0:?} cannot be sent over RabbitMQ: names are at most 255 bytes, and `weir-key`, \
     `weir-attempt`, `weir-not-before`, `weir-control`, `weir-wait`, `x-*`, `cloudEvents:*` and \
     `cloudEvents_*` are reserved (use `ce-*` for CloudEvents attributes)"
)]
pub struct InvalidHeader(pub String);

/// What the adapter adds to a message on the wire.
#[derive(Debug, Clone, Default)]
pub(crate) struct Envelope {
    /// Identifies the message across redeliveries and copies.
    pub id: String,
    pub attempt: u32,
    pub not_before: Option<u64>,
    /// The delay queue a copy is headed for, through the wait exchange.
    pub wait: Option<String>,
}

/// The AMQP properties of `message`.
pub(crate) fn properties(message: &Message, envelope: &Envelope) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    let mut content_type = None;
    for (name, value) in &message.headers {
        if name == CONTENT_TYPE && value.len() <= 255 {
            content_type = Some(ShortString::from(value.as_str()));
            continue;
        }
        if is_reserved(name) {
            return Err(Error::transport(InvalidHeader(name.clone())));
        }
        let wire = match name.strip_prefix(CE_PREFIX) {
            Some(attribute) => format!("{AMQP_CE_PREFIX}{attribute}"),
            None => name.clone(),
        };
        let wire = ShortString::try_new(wire).map_err(|_| Error::transport(InvalidHeader(name.clone())))?;
        headers.insert(wire, long_string(value));
    }
    headers.insert(KEY_HEADER.into(), long_string(&message.key));
    if envelope.attempt > 1 {
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(envelope.attempt)));
    }
    if let Some(not_before) = envelope.not_before {
        headers.insert(NOT_BEFORE_HEADER.into(), AMQPValue::LongLongInt(i64::try_from(not_before).unwrap_or(i64::MAX)));
    }
    if let Some(wait) = &envelope.wait {
        headers.insert(WAIT_HEADER.into(), long_string(wait));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(envelope.id.as_str()))
        .with_headers(headers);
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type);
    }
    Ok(properties)
}

/// A control message's properties.
pub(crate) fn control_properties(kind: &str, id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(CONTROL_HEADER.into(), long_string(kind));
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(id))
        .with_headers(headers)
}

/// A message as received: the Weir message and what the adapter carried with it.
#[derive(Debug)]
pub(crate) struct Received {
    pub message: Message,
    pub envelope: Envelope,
    pub control: Option<String>,
}

/// Reads a delivery. `fallback_id` names a message that came without an id, and its
/// `cloudEvents:subject` keys a message that came without a `weir-key` (both: one published by
/// something other than Weir). The attempt counts the nacks (`weir-attempt`) plus the broker's
/// returns (`x-delivery-count`, kept by quorum queues).
pub(crate) fn received(properties: &BasicProperties, payload: Vec<u8>, fallback_id: String) -> Received {
    let mut message = Message::new(String::new(), payload);
    let mut envelope = Envelope { id: fallback_id, attempt: 1, not_before: None, wait: None };
    let mut returns = 0u32;
    let mut control = None;
    let mut keyed = false;
    if let Some(id) = properties.message_id() {
        envelope.id = id.to_string();
    }
    if let Some(content_type) = properties.content_type() {
        message.headers.insert(CONTENT_TYPE.to_owned(), content_type.to_string());
    }
    for (name, value) in properties.headers().iter().flat_map(|table| table.inner()) {
        let name = name.as_str();
        match name {
            KEY_HEADER => {
                message.key = text(value);
                keyed = true;
            }
            ATTEMPT_HEADER => envelope.attempt = number(value).and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1),
            NOT_BEFORE_HEADER => envelope.not_before = number(value).and_then(|n| u64::try_from(n).ok()),
            CONTROL_HEADER => control = Some(text(value)),
            "x-delivery-count" => returns = number(value).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            _ if OWN_HEADERS.contains(&name) || name.starts_with("x-") => {}
            _ => {
                let name = match name.strip_prefix(AMQP_CE_PREFIX).or_else(|| name.strip_prefix(AMQP_CE_PREFIX_JMS)) {
                    Some(attribute) => format!("{CE_PREFIX}{attribute}"),
                    None => name.to_owned(),
                };
                message.headers.insert(name, text(value));
            }
        }
    }
    if !keyed && let Some(subject) = message.headers.get(SUBJECT_HEADER) {
        message.key = subject.clone();
    }
    envelope.attempt = envelope.attempt.saturating_add(returns);
    Received { message, envelope, control }
}

/// Whether a header name is one a message may not set: it would pose as the adapter's
/// bookkeeping, as a broker argument, or as a CloudEvents attribute under its wire name.
pub(crate) fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    OWN_HEADERS.contains(&lower.as_str())
        || lower.starts_with("x-")
        || name.starts_with(AMQP_CE_PREFIX)
        || name.starts_with(AMQP_CE_PREFIX_JMS)
        || lower == "cc"
        || lower == "bcc"
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// A header value as text: strings as they are, other AMQP types (from publishers that are not
/// Weir) in their usual notation.
fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => number(other).map(|n| n.to_string()).unwrap_or_else(|| format!("{other:?}")),
    }
}

fn number(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => i128::from(*n),
        AMQPValue::ShortShortUInt(n) => i128::from(*n),
        AMQPValue::ShortInt(n) => i128::from(*n),
        AMQPValue::ShortUInt(n) => i128::from(*n),
        AMQPValue::LongInt(n) => i128::from(*n),
        AMQPValue::LongUInt(n) => i128::from(*n),
        AMQPValue::LongLongInt(n) => i128::from(*n),
        AMQPValue::Timestamp(n) => i128::from(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    })
}

/// Milliseconds since the Unix epoch: not-before times are wall-clock times because they travel
/// between processes.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message, envelope: &Envelope) -> Received {
        let properties = properties(message, envelope).expect("encodable");
        received(&properties, message.payload.to_vec(), "fallback".to_owned())
    }

    #[test]
    fn cloudevents_attributes_use_the_amqp_binding_names() {
        let message = Message::new("order-1", "{}")
            .with_header("ce-id", "1")
            .with_header("ce-type", "order_created")
            .with_header("content-type", "application/json")
            .with_header("traceparent-like", "x");
        let properties =
            properties(&message, &Envelope { id: "m1".into(), attempt: 1, ..Envelope::default() }).unwrap();
        let headers = properties.headers().clone().unwrap();
        assert!(headers.contains_key("cloudEvents:id"));
        assert!(headers.contains_key("cloudEvents:type"));
        assert!(headers.contains_key("traceparent-like"));
        assert!(!headers.contains_key("content-type"));
        assert!(!headers.contains_key("ce-id"));
        assert_eq!(properties.content_type().as_ref().map(ShortString::as_str), Some("application/json"));
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
    }

    #[test]
    fn messages_round_trip_exactly() {
        let odd = " spaced \r\n 100% ä \u{0} ";
        let message = Message::new(odd, vec![0u8, 255, 1])
            .with_header("ce-subject", odd)
            .with_header("ce-tracestate", "")
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_header("plain", "ü");
        let envelope = Envelope { id: "m1".into(), attempt: 3, not_before: Some(42), wait: None };
        let got = round_trip(&message, &envelope);
        assert_eq!(got.message, message);
        assert_eq!((got.envelope.id.as_str(), got.envelope.attempt, got.envelope.not_before), ("m1", 3, Some(42)));
        assert_eq!(got.control, None);
    }

    #[test]
    fn the_jms_prefix_is_read_too_and_returns_raise_the_attempt() {
        let mut headers = FieldTable::default();
        headers.insert("cloudEvents_type".into(), AMQPValue::LongString("t".into()));
        headers.insert("cloudEvents:id".into(), AMQPValue::ShortString("7".into()));
        headers.insert("count".into(), AMQPValue::LongInt(5));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(2));
        let properties = BasicProperties::default().with_headers(headers);
        let got = received(&properties, b"x".to_vec(), "fallback".to_owned());
        assert_eq!(got.message.headers.get("ce-type").map(String::as_str), Some("t"));
        assert_eq!(got.message.headers.get("ce-id").map(String::as_str), Some("7"));
        assert_eq!(got.message.headers.get("count").map(String::as_str), Some("5"));
        assert_eq!(got.envelope.attempt, 4, "two nacks and two returns");
        assert_eq!(got.envelope.id, "fallback");
    }

    #[test]
    fn a_message_without_a_key_header_is_keyed_by_its_subject() {
        let mut headers = FieldTable::default();
        headers.insert("cloudEvents:subject".into(), AMQPValue::LongString("product-7".into()));
        let properties = BasicProperties::default().with_headers(headers);
        let got = received(&properties, b"{}".to_vec(), "fallback".to_owned());
        assert_eq!(got.message.key, "product-7");
        // A key header wins over the subject, even an empty one.
        let message = Message::new("", "{}").with_header("ce-subject", "product-7");
        assert_eq!(round_trip(&message, &Envelope::default()).message.key, "");
        let unkeyed = received(&BasicProperties::default(), b"{}".to_vec(), "fallback".to_owned());
        assert_eq!(unkeyed.message.key, "");
    }

    #[test]
    fn the_routers_weir_headers_travel_like_any_other() {
        let message = Message::new("k", "x")
            .with_header("weir-dlq-reason", "bad signature: the event is not signed")
            .with_header("weir-redriven-for", "billing");
        let got = round_trip(&message, &Envelope::default());
        assert_eq!(got.message, message);
    }

    #[test]
    fn reserved_and_oversized_headers_are_refused() {
        for name in [
            "weir-key",
            "weir-attempt",
            "Weir-Not-Before",
            "weir-control",
            "weir-wait",
            "x-death",
            "X-Delivery-Count",
            "cloudEvents:id",
            "cloudEvents_id",
            "CC",
            &"h".repeat(256),
        ] {
            let message = Message::new("k", "x").with_header(name, "v");
            assert!(properties(&message, &Envelope::default()).is_err(), "{name}");
        }
        // A content type too long for the property travels as a header instead.
        let long = "t".repeat(300);
        let message = Message::new("k", "x").with_header("content-type", long.clone());
        let got = round_trip(&message, &Envelope::default());
        assert_eq!(got.message.headers.get("content-type"), Some(&long));
    }
}
