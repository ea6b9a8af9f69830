//! The words of a notification: one title and body per order outcome, used for the in-app
//! entry and the email alike.

use uuid::Uuid;
use weir_contracts::{Contract, Money, OrderCancelled, OrderCompleted};

/// The longest cancellation reason quoted to a customer; the rest is cut with an ellipsis.
const MAX_REASON_CHARS: usize = 300;

/// An order outcome worth telling its customer about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed { total: Money },
    Cancelled { reason: String },
}

impl Outcome {
    /// The `kind` column and API field: the event type it came from.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => OrderCompleted::KIND,
            Outcome::Cancelled { .. } => OrderCancelled::KIND,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text {
    pub title: String,
    pub body: String,
}

pub(crate) fn compose(order_id: Uuid, outcome: &Outcome) -> Text {
    match outcome {
        Outcome::Completed { total } => {
            Text { title: "Order completed".into(), body: format!("Order {order_id} completed — total {total}.") }
        }
        Outcome::Cancelled { reason } => Text {
            title: "Order cancelled".into(),
            body: format!("Order {order_id} cancelled: {}.", clean_reason(reason)),
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
                Outcome::Completed { total: Money::new(3998, Currency::EUR) },
                "Order completed",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b completed — total 39.98 EUR.",
            ),
            (
                Outcome::Cancelled { reason: "out of stock".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: out of stock.",
            ),
            (
                Outcome::Cancelled { reason: "payment declined.\r\n\tcard expired.".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: payment declined. card expired.",
            ),
            (
                Outcome::Cancelled { reason: "  \n ".into() },
                "Order cancelled",
                "Order 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b cancelled: no reason given.",
            ),
        ];
        for (outcome, title, body) in cases {
            let text = compose(order, &outcome);
            assert_eq!((text.title.as_str(), text.body.as_str()), (title, body), "{outcome:?}");
        }
    }

    #[test]
    fn long_reasons_are_cut() {
        let text = compose(Uuid::nil(), &Outcome::Cancelled { reason: "x".repeat(1000) });
        assert!(text.body.ends_with("x….") && text.body.chars().count() < 400, "{}", text.body);
    }

    #[test]
    fn kinds_are_the_event_types() {
        assert_eq!(Outcome::Completed { total: Money::zero(Currency::EUR) }.kind(), "order_completed");
        assert_eq!(Outcome::Cancelled { reason: String::new() }.kind(), "order_cancelled");
    }
}
