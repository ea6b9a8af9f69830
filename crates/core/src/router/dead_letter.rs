//! Dead letters: a message that cannot be handled goes to `<topic>.dlq` with the reason, the
//! attempts, its original topic and group, and its original headers and payload — enough to
//! read it, fix the cause, and redrive it to its topic.

use crate::bus::{self, Message, Publisher, dead_letter_topic};

pub const REASON: &str = "weir-dlq-reason";
pub const ATTEMPTS: &str = "weir-dlq-attempts";
pub const ORIGINAL_TOPIC: &str = "weir-dlq-topic";
pub const GROUP: &str = "weir-dlq-group";
pub const AT: &str = "weir-dlq-at";
/// On a redriven message: the one consumer group that is to handle it again. Every other group
/// of the topic acks it untouched, whether or not its inbox still remembers the event.
pub const REDRIVEN_FOR: &str = "weir-redriven-for";

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

/// The message a dead letter holds, as it was before it was given up on.
pub fn original(letter: &Message) -> Message {
    let mut message = letter.clone();
    message.headers.retain(|name, _| !HEADERS.contains(&name.as_str()));
    message
}

/// What a redrive publishes again to the letter's original topic: the original, addressed
/// ([`REDRIVEN_FOR`]) to the group that gave up on it.
pub fn redriven(letter: &Message) -> Message {
    let mut message = original(letter);
    if let Some(group) = letter.headers.get(GROUP) {
        message.headers.insert(REDRIVEN_FOR.into(), group.clone());
    }
    message
}

/// Whether `message` was redriven for a group other than `group` (which then leaves it alone).
pub fn redriven_for_another(message: &Message, group: &str) -> bool {
    message.headers.get(REDRIVEN_FOR).is_some_and(|g| g != group)
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
        let again = redriven(&l);
        assert_eq!(again.headers[REDRIVEN_FOR], "payments");
        assert!(!redriven_for_another(&again, "payments"));
        assert!(redriven_for_another(&again, "saga"));
        assert!(!redriven_for_another(&m, "saga"), "an ordinary message is for every group");
        // Given up on again, it is redriven for the group that gave up this time.
        let twice = letter(&again, "orders", "saga", 1, &Reason::Permanent("no".into()));
        assert_eq!(redriven(&twice).headers[REDRIVEN_FOR], "saga");
    }
}
