//! A message as a stream entry, and the parsing of Redis replies into entries.
//!
//! An entry's fields are `key`, `payload` and one `h:<name>` per header, each value the exact
//! bytes (Redis strings are binary-safe: nothing is escaped). Replies are parsed by hand from
//! [`redis::Value`] so that a malformed or foreign entry becomes an error or is skipped, never a
//! panic.

use bytes::Bytes;
use redis::Value;
use weir_core::bus::{Headers, Message};

use crate::names::StreamId;

pub(crate) const KEY_FIELD: &str = "key";
pub(crate) const PAYLOAD_FIELD: &str = "payload";
pub(crate) const HEADER_FIELD_PREFIX: &str = "h:";

/// The fields of `message`'s entry, in `XADD` order: key, headers, payload last.
pub(crate) fn fields(message: &Message) -> Vec<(Vec<u8>, &[u8])> {
    let mut fields = Vec::with_capacity(message.headers.len() + 2);
    fields.push((KEY_FIELD.as_bytes().to_vec(), message.key.as_bytes()));
    for (name, value) in &message.headers {
        fields.push((format!("{HEADER_FIELD_PREFIX}{name}").into_bytes(), value.as_bytes()));
    }
    fields.push((PAYLOAD_FIELD.as_bytes().to_vec(), message.payload.as_ref()));
    fields
}

/// The size the limit counts: payload, key, header names and values.
pub(crate) fn size(message: &Message) -> usize {
    message.key.len() + message.payload.len() + message.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
}

/// A stream entry as read.
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub id: StreamId,
    /// `None` when the entry was deleted (trimmed) while it was pending.
    pub message: Option<Message>,
}

/// A reply that does not have the shape the adapter asked for.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct Unexpected(pub String);

pub(crate) fn unexpected(what: &str, value: &Value) -> Unexpected {
    let mut shown = format!("{value:?}");
    shown.truncate(200);
    Unexpected(format!("{what}: {shown}"))
}

/// Builds a message from an entry's flat `[field, value, ...]` list. Unknown fields are
/// ignored; a key or header that is not UTF-8 (from a publisher that is not Weir) is decoded
/// lossily.
pub(crate) fn message(fields: Vec<Value>) -> Result<Message, Unexpected> {
    let mut key = String::new();
    let mut headers = Headers::new();
    let mut payload = Bytes::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = bytes_of(name).ok_or_else(|| Unexpected("a field name that is not a string".to_owned()))?;
        let value = bytes_of(value).ok_or_else(|| Unexpected("a field value that is not a string".to_owned()))?;
        if name == KEY_FIELD.as_bytes() {
            key = text(value);
        } else if name == PAYLOAD_FIELD.as_bytes() {
            payload = Bytes::from(value);
        } else if let Some(header) = name.strip_prefix(HEADER_FIELD_PREFIX.as_bytes()) {
            headers.insert(text(header.to_vec()), text(value));
        }
    }
    Ok(Message { key, headers, payload })
}

/// One entry, `[id, [field, value, ...]]` (the fields nil when the entry is gone).
pub(crate) fn entry(value: Value) -> Result<RawEntry, Unexpected> {
    let Value::Array(mut parts) = value else {
        return Err(unexpected("an entry", &value));
    };
    if parts.len() != 2 {
        return Err(Unexpected(format!("an entry of {} parts", parts.len())));
    }
    let fields = parts.pop().unwrap_or_default();
    let id = stream_id(parts.pop().unwrap_or_default())?;
    let message = match fields {
        Value::Nil => None,
        Value::Array(fields) => Some(message(fields)?),
        other => return Err(unexpected("an entry's fields", &other)),
    };
    Ok(RawEntry { id, message })
}

pub(crate) fn entries(value: Value) -> Result<Vec<RawEntry>, Unexpected> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(entry).collect(),
        other => Err(unexpected("a list of entries", &other)),
    }
}

/// An `XREADGROUP` reply: entries by stream name (nil when the block timed out). Accepts the
/// RESP2 array and the RESP3 map shape.
pub(crate) fn read_reply(value: Value) -> Result<Vec<(String, Vec<RawEntry>)>, Unexpected> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => {
                    let entries = parts.pop().unwrap_or_default();
                    let name = parts.pop().unwrap_or_default();
                    Ok((name, entries))
                }
                other => Err(unexpected("a stream of a read", &other)),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(unexpected("a read", &other)),
    };
    pairs
        .into_iter()
        .map(|(name, entries_of)| {
            let name = string_of(name).ok_or_else(|| Unexpected("a stream name that is not a string".to_owned()))?;
            Ok((name, entries(entries_of)?))
        })
        .collect()
}

pub(crate) fn stream_id(value: Value) -> Result<StreamId, Unexpected> {
    string_of(value)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Unexpected("an entry id that is not <ms>-<seq>".to_owned()))
}

pub(crate) fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn string_of(value: Value) -> Option<String> {
    bytes_of(value).map(text)
}

/// A number sent as an integer or as a string (a sorted set score, a Lua number).
pub(crate) fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn as_values(message: &Message) -> Vec<Value> {
        fields(message).into_iter().flat_map(|(name, value)| [Value::BulkString(name), bulk(value)]).collect()
    }

    #[test]
    fn messages_round_trip_exactly() {
        let original = Message::new("order 2/ü", Bytes::from_static(&[0, 1, 2, 127, 128, 254, 255]))
            .with_header("ce-tracestate", "")
            .with_header("ce-subject", " line\r\nbreak ")
            .with_header("h:odd", "x");
        let back = message(as_values(&original)).unwrap();
        assert_eq!(back, original);
        assert_eq!(size(&Message::new("ab", "cde").with_header("f", "gh")), 8);
    }

    #[test]
    fn foreign_fields_are_ignored_and_bad_text_is_kept_lossily() {
        let fields = vec![bulk(b"other"), bulk(b"1"), bulk(b"key"), bulk(&[0xff, b'a']), bulk(b"payload"), bulk(b"p")];
        let m = message(fields).unwrap();
        assert_eq!(m.key, "\u{fffd}a");
        assert!(m.headers.is_empty());
        assert_eq!(m.payload, Bytes::from_static(b"p"));
        assert!(message(vec![Value::Array(vec![]), bulk(b"x")]).is_err());
    }

    #[test]
    fn read_replies_parse_in_both_shapes() {
        let entry = Value::Array(vec![bulk(b"5-1"), Value::Array(vec![bulk(b"key"), bulk(b"k")])]);
        let gone = Value::Array(vec![bulk(b"6-0"), Value::Nil]);
        let resp2 =
            Value::Array(vec![Value::Array(vec![bulk(b"weir:{t}:3"), Value::Array(vec![entry.clone(), gone])])]);
        let read = read_reply(resp2).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, "weir:{t}:3");
        assert_eq!(read[0].1[0].id, StreamId { ms: 5, seq: 1 });
        assert_eq!(read[0].1[0].message.as_ref().map(|m| m.key.as_str()), Some("k"));
        assert!(read[0].1[1].message.is_none());

        let resp3 = Value::Map(vec![(bulk(b"s"), Value::Array(vec![entry]))]);
        assert_eq!(read_reply(resp3).unwrap()[0].1.len(), 1);
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        assert!(read_reply(Value::Int(3)).is_err());
        assert!(read_reply(Value::Array(vec![Value::Array(vec![bulk(b"s")])])).is_err());
        assert!(entries(Value::Array(vec![Value::Array(vec![bulk(b"nonsense"), Value::Nil])])).is_err());
    }

    #[test]
    fn numbers_come_in_several_shapes() {
        assert_eq!(number_of(&Value::Int(3)), Some(3.0));
        assert_eq!(number_of(&bulk(b"1700000000123")), Some(1_700_000_000_123.0));
        assert_eq!(number_of(&Value::Nil), None);
    }
}
