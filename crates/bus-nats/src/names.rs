//! How Weir names map onto NATS names, and how keys and header values survive the wire.

use weir_core::bus::{Error, Result};

/// The header that carries [`weir_core::bus::Message::key`].
pub(crate) const KEY_HEADER: &str = "weir-key";

/// Longest readable part kept in a stream or consumer name; the hash keeps long names unique.
const READABLE_MAX: usize = 100;

/// Checks a namespace prefix. It becomes the first subject token and part of stream names, so
/// unlike topics it may not contain '.': prefix `a` with topic `b.c` and prefix `a.b` with topic
/// `c` would otherwise claim the same subjects.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok { Ok(()) } else { Err(Error::InvalidName(prefix.to_owned())) }
}

/// The subject of one partition of a topic: `<prefix>.<topic>.<partition>`.
pub(crate) fn subject(prefix: &str, topic: &str, partition: u32) -> String {
    format!("{prefix}.{topic}.{partition}")
}

/// The subjects a topic's stream captures. `*` matches one token, so topic `orders` never
/// captures topic `orders.dlq` (`<prefix>.orders.dlq.<n>` has one token more).
pub(crate) fn stream_subjects(prefix: &str, topic: &str) -> String {
    format!("{prefix}.{topic}.*")
}

/// The stream of a topic. Stream names may not contain '.', and a plain replacement would let
/// `a.b` and `a_b` collide, so the readable part is followed by a hash of the exact name.
pub(crate) fn stream_name(prefix: &str, topic: &str) -> String {
    format!("{prefix}_{}_{:08x}", readable(topic), fnv1a32(&format!("{prefix}\0{topic}")))
}

/// The durable consumer of a group on a topic's stream; same scheme as [`stream_name`].
pub(crate) fn consumer_name(group: &str) -> String {
    format!("{}_{:08x}", readable(group), fnv1a32(group))
}

fn readable(name: &str) -> String {
    name.chars().take(READABLE_MAX).map(|c| if c == '.' { '_' } else { c }).collect()
}

fn fnv1a32(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Percent-encodes a header value. NATS header values may not contain CR or LF and lose leading
/// and trailing blanks on the way, so every byte outside printable ASCII (and '%' itself) is
/// written as `%XX` — the escaping CloudEvents' HTTP binding uses. Typical values (ids, times,
/// trace contexts, aggregate ids) pass unchanged.
pub(crate) fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_value`]. Malformed escapes (from a publisher that is not Weir) are kept
/// as they are rather than rejected; invalid UTF-8 is replaced.
pub(crate) fn decode_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Whether a message header name is taken by this adapter or by JetStream: `Nats-*` headers
/// steer JetStream (deduplication, expected sequences), so a message must not smuggle them in.
pub(crate) fn is_reserved_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(KEY_HEADER) || name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("nats-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_valid_and_distinct() {
        let names: Vec<String> =
            ["a.b", "a_b", "orders", "orders.dlq", "x-1"].iter().map(|t| stream_name("weir", t)).collect();
        for name in &names {
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_ne!(stream_name("a", "b"), stream_name("b", "b"));
        assert!(stream_name("weir", &"x".repeat(200)).len() < 120);
    }

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        assert_ne!(consumer_name("g.1"), consumer_name("g_1"));
        assert!(!consumer_name("a.b.c").contains('.'));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("weir").is_ok());
        assert!(validate_prefix("t-0192_ab").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values_round_trip() {
        for value in ["plain", "", " padded ", "line\r\nbreak", "100%", "%zz", "ä→", "a%2"] {
            let encoded = encode_value(value);
            assert!(!encoded.contains(['\r', '\n', ' ']), "{encoded}");
            assert_eq!(decode_value(&encoded), value);
        }
        assert_eq!(encode_value("order-42"), "order-42");
        // A foreign publisher's malformed escape is kept, not rejected.
        assert_eq!(decode_value("50%"), "50%");
    }

    #[test]
    fn reserved_headers() {
        assert!(is_reserved_header("weir-key"));
        assert!(is_reserved_header("Nats-Msg-Id"));
        assert!(is_reserved_header("nats-expected-stream"));
        assert!(!is_reserved_header("ce-id"));
        assert!(!is_reserved_header("nat"));
    }
}
