//! The words of a notification: one title and body per outcome (an order's or a document's),
//! used for the in-app entry and the email alike.

use uuid::Uuid;
use weir_contracts::{Contract, DocumentClassified, DocumentFailed, Money, OrderCancelled, OrderCompleted};
use weir_core::{Event, event::DecodeError};

/// The longest reason or file name quoted to a customer; the rest is cut with an ellipsis.
const MAX_REASON_CHARS: usize = 300;

/// An outcome worth telling its user about: how an order ended, or that a document is ready
/// (or could not be read).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Completed { order_id: Uuid, total: Money },
    Cancelled { order_id: Uuid, reason: String },
    DocumentReady { document_id: Uuid, filename: String, label: String, confidence: f32 },
    DocumentFailed { document_id: Uuid, filename: String, reason: String },
}

impl Outcome {
    /// The event types [`from_event`](Self::from_event) reads.
    pub(crate) const KINDS: [&str; 4] =
        [OrderCompleted::KIND, OrderCancelled::KIND, DocumentClassified::KIND, DocumentFailed::KIND];

    /// The outcome `event` carries, with the user it is for; `None` for any other event.
    pub(crate) fn from_event(event: &Event) -> Option<Result<(Uuid, Outcome), DecodeError>> {
        if let Some(c) = OrderCompleted::decode(event) {
            return Some(c.map(|c| (c.user_id, Outcome::Completed { order_id: c.order_id, total: c.total })));
        }
        if let Some(c) = OrderCancelled::decode(event) {
            return Some(c.map(|c| (c.user_id, Outcome::Cancelled { order_id: c.order_id, reason: c.reason })));
        }
        if let Some(c) = DocumentClassified::decode(event) {
            return Some(c.map(|c| {
                let outcome = Outcome::DocumentReady {
                    document_id: c.document_id,
                    filename: c.filename,
                    label: c.label,
                    confidence: c.confidence,
                };
                (c.user_id, outcome)
            }));
        }
        if let Some(f) = DocumentFailed::decode(event) {
            return Some(f.map(|f| {
                let outcome =
                    Outcome::DocumentFailed { document_id: f.document_id, filename: f.filename, reason: f.reason };
                (f.user_id, outcome)
            }));
        }
        None
    }

    /// The `kind` column and API field: the event type it came from.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => OrderCompleted::KIND,
            Outcome::Cancelled { .. } => OrderCancelled::KIND,
            Outcome::DocumentReady { .. } => DocumentClassified::KIND,
            Outcome::DocumentFailed { .. } => DocumentFailed::KIND,
        }
    }

    /// The order or document it is about: one notification per subject and kind.
    pub(crate) fn subject(&self) -> Uuid {
        match self {
            Outcome::Completed { order_id, .. } | Outcome::Cancelled { order_id, .. } => *order_id,
            Outcome::DocumentReady { document_id, .. } | Outcome::DocumentFailed { document_id, .. } => *document_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text {
    pub title: String,
    pub body: String,
}

pub(crate) fn compose(outcome: &Outcome) -> Text {
    match outcome {
        Outcome::Completed { order_id, total } => {
            Text { title: "Order completed".into(), body: format!("Order {order_id} completed — total {total}.") }
        }
        Outcome::Cancelled { order_id, reason } => Text {
            title: "Order cancelled".into(),
            body: format!("Order {order_id} cancelled: {}.", clean_reason(reason)),
        },
        Outcome::DocumentReady { filename, label, confidence, .. } => Text {
            title: "Your document is ready".into(),
            body: format!(
                "{} is ready: classified as {label} ({:.0}% confidence).",
                clean_reason(filename),
                confidence.clamp(0.0, 1.0) * 100.0
            ),
        },
        Outcome::DocumentFailed { filename, reason, .. } => Text {
            title: "Your document could not be read".into(),
            body: format!("{} could not be processed: {}.", clean_reason(filename), clean_reason(reason)),
        },
    }
}

/// The plain-text body of the email for `text`.
pub(crate) fn email_body(text: &Text) -> String {
    format!("{}\n\nYou can see all your notifications in the Weir app.\n", text.body)
}

/// A reason written by another service, made fit to show a customer: one line, no control
/// characters, bounded length, no trailing full stop (the sentence adds its own).
fn clean_reason(reason: &str) -> String {
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let trimmed = one_line.trim_end_matches('.');
    if trimmed.is_empty() {
        return "no reason given".into();
    }
    if trimmed.chars().count() > MAX_REASON_CHARS {
        let cut: String = trimmed.chars().take(MAX_REASON_CHARS).collect();
        return format!("{}…", cut.trim_end());
    }
    trimmed.to_owned()
}

#[cfg(test)]
mod tests {
    use weir_contracts::Currency;

    use super::*;

    #[test]
    fn texts_per_outcome() {
        let order = Uuid::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let cases = [
            (
                Outcome::Completed { order_id: order, total: Money::new(3998, Currency::EUR) },
                "Order completed",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b completed — total 39.98 EUR.",
            ),
            (
                Outcome::Cancelled { order_id: order, reason: "out of stock".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: out of stock.",
            ),
            (
                Outcome::Cancelled { order_id: order, reason: "payment declined.\r\n\tcard expired.".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: payment declined. card expired.",
            ),
            (
                Outcome::Cancelled { order_id: order, reason: "  \n ".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: no reason given.",
            ),
            (
                Outcome::DocumentReady {
                    document_id: order,
                    filename: "scan.pdf".into(),
                    label: "invoice".into(),
                    confidence: 0.934,
                },
                "Your document is ready",
                "scan.pdf is ready: classified as invoice (93% confidence).",
            ),
            (
                Outcome::DocumentFailed {
                    document_id: order,
                    filename: "bomb\n.png".into(),
                    reason: "the image is 100000×100000 pixels.".into(),
                },
                "Your document could not be read",
                "bomb .png could not be processed: the image is 100000×100000 pixels.",
            ),
        ];
        for (outcome, title, body) in cases {
            let text = compose(&outcome);
            assert_eq!((text.title.as_str(), text.body.as_str()), (title, body), "{outcome:?}");
        }
    }

    #[test]
    fn long_reasons_are_cut() {
        let text = compose(&Outcome::Cancelled { order_id: Uuid::nil(), reason: "x".repeat(1000) });
        assert!(text.body.ends_with("x….") && text.body.chars().count() < 400, "{}", text.body);
    }

    #[test]
    fn kinds_are_the_event_types() {
        let id = Uuid::nil();
        assert_eq!(Outcome::Completed { order_id: id, total: Money::zero(Currency::EUR) }.kind(), "order_completed");
        assert_eq!(Outcome::Cancelled { order_id: id, reason: String::new() }.kind(), "order_cancelled");
        let ready =
            Outcome::DocumentReady { document_id: id, filename: String::new(), label: String::new(), confidence: 1.0 };
        assert_eq!(ready.kind(), "document_classified");
    }
}
