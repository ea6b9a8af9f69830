//! Dead letters: a message that cannot be handled goes to `<topic>.dlq` with the reason, the
//! attempts, its original topic and group, and its original headers and payload — enough to
//! read it, fix the cause, and redrive it to its topic.

use crate::bus::{self, Message, Publisher, dead_letter_topic};

pub const REASON: &str = "weir-dlq-reason";
pub const ATTEMPTS: &str = "weir-dlq-attempts";
pub const ORIGINAL_TOPIC: &str = "weir-dlq-topic";
pub const GROUP: &str = "weir-dlq-group";
pub const AT: &str = "weir-dlq-at";

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The bytes are not an event (undecodable); never retried.
    Undecodable(String),
    /// The signature is missing or wrong; never retried, never handled.
    BadSignature(String),
    /// The handler said the message can never succeed.
    Permanent(String),
    /// Still failing after the last allowed delivery.
    Exhausted(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Undecodable(e) => write!(f, "undecodable: {e}"),
            Reason::BadSignature(e) => write!(f, "bad signature: {e}"),
            Reason::Permanent(e) => write!(f, "permanent error: {e}"),
            Reason::Exhausted(e) => write!(f, "retries exhausted: {e}"),
        }
    }
}

/// The dead letter for `message`, taken from `topic` by `group` after `attempts` deliveries.
pub fn letter(message: &Message, topic: &str, group: &str, attempts: u32, reason: &Reason) -> Message {
    let mut letter = message.clone();
    letter.headers.insert(REASON.into(), reason.to_string());
    letter.headers.insert(ATTEMPTS.into(), attempts.to_string());
    letter.headers.insert(ORIGINAL_TOPIC.into(), topic.into());
    letter.headers.insert(GROUP.into(), group.into());
    letter.headers.insert(AT.into(), chrono::Utc::now().to_rfc3339());
    letter
}

/// Publishes the dead letter.
pub async fn send(
    publisher: &dyn Publisher,
    message: &Message,
    topic: &str,
    group: &str,
    attempts: u32,
    reason: &Reason,
) -> bus::Result<()> {
    publisher.publish(&dead_letter_topic(topic), vec![letter(message, topic, group, attempts, reason)]).await
}

/// The headers [`letter`] adds.
const HEADERS: [&str; 5] = [REASON, ATTEMPTS, ORIGINAL_TOPIC, GROUP, AT];

/// The message a dead letter holds, as it was before it was given up on: what a redrive
/// publishes again to the letter's original topic.
pub fn original(letter: &Message) -> Message {
    let mut message = letter.clone();
    message.headers.retain(|name, _| !HEADERS.contains(&name.as_str()));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_holds_its_original() {
        let m = Message::new("k", &b"{}"[..]).with_header("ce-id", "1");
        let l = letter(&m, "orders", "payments", 5, &Reason::Exhausted("boom".into()));
        assert_eq!(l.headers[REASON], "retries exhausted: boom");
        assert_eq!(l.headers[ATTEMPTS], "5");
        assert_eq!(l.headers[ORIGINAL_TOPIC], "orders");
        assert_eq!(original(&l), m);
    }
}
