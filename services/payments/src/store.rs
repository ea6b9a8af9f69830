//! The service's own table: one row per order it has charged, failed, voided or refunded.

use uuid::Uuid;
use weir_contracts::{Currency, LineItem, Money};
use weir_core::{
    Db, Transaction,
    db::{Error, Migration, Result, Row},
};

pub(crate) const MIGRATIONS: [Migration; 1] =
    [Migration { version: 1, name: "payments", sqlite: SCHEMA, postgres: SCHEMA }];

// `amount`/`currency`/`user_id` are NULL for a void recorded before the order was ever seen.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT,
    amount BIGINT,
    currency TEXT,
    status TEXT NOT NULL,
    charge_id TEXT,
    refund_id TEXT,
    reason TEXT,
    items TEXT NOT NULL,
    updated_at TEXT NOT NULL
)";

/// Where an order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The customer was charged.
    Charged,
    /// The charge was declined; nothing was charged.
    Failed,
    /// Cancelled before any charge: no charge may happen for this order any more.
    Voided,
    /// Charged, then refunded in full.
    Refunded,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Charged => "charged",
            Status::Failed => "failed",
            Status::Voided => "voided",
            Status::Refunded => "refunded",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "charged" => Status::Charged,
            "failed" => Status::Failed,
            "voided" => Status::Voided,
            "refunded" => Status::Refunded,
            _ => return None,
        })
    }
}

/// What the service knows about one order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payment {
    pub status: Status,
    /// The order total (`None` for a void recorded before the order was seen).
    pub amount: Option<Money>,
    pub charge_id: Option<String>,
}

const SELECT: &str = "SELECT status, amount, currency, charge_id FROM payments WHERE order_id = $1";

fn parse(rows: &[Row]) -> Result<Option<Payment>> {
    let Some(row) = rows.first() else { return Ok(None) };
    let status =
        Status::parse(row.text(0)?).ok_or_else(|| Error::Decode(format!("unknown status {:?}", row.text(0))))?;
    let amount = match (row.opt_i64(1)?, row.opt_text(2)?) {
        (Some(amount), Some(currency)) => {
            Some(Money::new(amount, Currency::parse(currency).map_err(|e| Error::Decode(e.to_string()))?))
        }
        _ => None,
    };
    Ok(Some(Payment { status, amount, charge_id: row.opt_text(3)?.map(str::to_owned) }))
}

/// The committed row (outside any transaction: for `prepare`).
pub(crate) async fn read(db: &Db, order_id: Uuid) -> Result<Option<Payment>> {
    parse(&db.query(SELECT, &[order_id.to_string().into()]).await?)
}

/// The row as the transaction sees it (for `handle`).
pub(crate) async fn read_in(tx: &mut dyn Transaction, order_id: Uuid) -> Result<Option<Payment>> {
    parse(&tx.query(SELECT, &[order_id.to_string().into()]).await?)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

fn items_json(items: &[LineItem]) -> String {
    serde_json::to_string(items).expect("line items are plain data")
}

/// An order's payment as first recorded, charged or failed.
pub(crate) struct Settled<'a> {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    pub status: Status,
    pub charge_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub items: &'a [LineItem],
}

pub(crate) async fn insert(tx: &mut dyn Transaction, row: Settled<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO payments (order_id, user_id, amount, currency, status, charge_id, reason, items, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            row.order_id.to_string().into(),
            row.user_id.to_string().into(),
            row.amount.amount.into(),
            row.amount.currency.as_str().into(),
            row.status.as_str().into(),
            row.charge_id.into(),
            row.reason.into(),
            items_json(row.items).into(),
            now().into(),
        ],
    )
    .await?;
    Ok(())
}

/// A charge that landed after the order was voided: record it (as charged, so the refund that
/// follows finds it).
pub(crate) async fn charge_after_void(tx: &mut dyn Transaction, row: Settled<'_>) -> Result<()> {
    let changed = tx
        .execute(
            "UPDATE payments SET user_id = $2, amount = $3, currency = $4, status = 'charged', charge_id = $5,
                 items = $6, updated_at = $7
             WHERE order_id = $1 AND status = 'voided'",
            &[
                row.order_id.to_string().into(),
                row.user_id.to_string().into(),
                row.amount.amount.into(),
                row.amount.currency.as_str().into(),
                row.charge_id.into(),
                items_json(row.items).into(),
                now().into(),
            ],
        )
        .await?;
    expect_one(changed, row.order_id)
}

/// Voids an order never seen: a later charge for it must not happen.
pub(crate) async fn insert_void(tx: &mut dyn Transaction, order_id: Uuid, reason: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO payments (order_id, status, reason, items, updated_at) VALUES ($1, 'voided', $2, '[]', $3)",
        &[order_id.to_string().into(), reason.into(), now().into()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn mark_refunded(
    tx: &mut dyn Transaction,
    order_id: Uuid,
    refund_id: &str,
    reason: &str,
) -> Result<()> {
    let changed = tx
        .execute(
            "UPDATE payments SET status = 'refunded', refund_id = $2, reason = $3, updated_at = $4
             WHERE order_id = $1 AND status = 'charged'",
            &[order_id.to_string().into(), refund_id.into(), reason.into(), now().into()],
        )
        .await?;
    expect_one(changed, order_id)
}

fn expect_one(changed: u64, order_id: Uuid) -> Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(Error::Other(format!("the payment of order {order_id} changed meanwhile ({changed} rows updated)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in [Status::Charged, Status::Failed, Status::Voided, Status::Refunded] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        for bad in ["", "CHARGED", "pending"] {
            assert_eq!(Status::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rows_parse() {
        use weir_core::Value;
        let cases = [
            (
                vec![Value::from("charged"), Value::from(1999i64), Value::from("EUR"), Value::from("ch_1")],
                Some(Payment {
                    status: Status::Charged,
                    amount: Some(Money::new(1999, Currency::EUR)),
                    charge_id: Some("ch_1".into()),
                }),
            ),
            (
                vec![Value::from("voided"), Value::Null, Value::Null, Value::Null],
                Some(Payment { status: Status::Voided, amount: None, charge_id: None }),
            ),
        ];
        for (row, expected) in cases {
            assert_eq!(parse(&[Row(row)]).unwrap(), expected);
        }
        assert_eq!(parse(&[]).unwrap(), None);
        assert!(parse(&[Row(vec![Value::from("lost"), Value::Null, Value::Null, Value::Null])]).is_err());
    }
}
