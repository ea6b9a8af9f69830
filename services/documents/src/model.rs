//! The read model's tables as Rust values: a document's row, its status and its audit log.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use weir_contracts::{DocumentMetadata, MediaType};
use weir_core::{
    Database, Transaction, Value,
    db::{self, Row},
};

/// Where a document is. It only ever moves forward, in this order (a late or repeated event
/// never takes it back): `UPLOADED` → `PROCESSED` → `CLASSIFIED`, or `FAILED` when processing or
/// classification gave up. A classification that arrives after a failure still wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = DocumentStatus)]
pub enum Status {
    /// Stored and scanned; waiting for processing.
    Uploaded,
    /// Text, thumbnail and metadata extracted; waiting for classification.
    Processed,
    /// Processing or classification failed; `failure_reason` says why.
    Failed,
    /// Labelled.
    Classified,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "UPLOADED",
            Self::Processed => "PROCESSED",
            Self::Failed => "FAILED",
            Self::Classified => "CLASSIFIED",
        }
    }

    fn parse(text: &str) -> db::Result<Self> {
        Ok(match text {
            "UPLOADED" => Self::Uploaded,
            "PROCESSED" => Self::Processed,
            "FAILED" => Self::Failed,
            "CLASSIFIED" => Self::Classified,
            other => return Err(db::Error::Decode(format!("{other:?} is not a document status"))),
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The media type from its MIME name, as stored.
pub(crate) fn media_type(mime: &str) -> db::Result<MediaType> {
    [MediaType::Pdf, MediaType::Png, MediaType::Jpeg]
        .into_iter()
        .find(|m| m.mime() == mime)
        .ok_or_else(|| db::Error::Decode(format!("{mime:?} is not a supported media type")))
}

/// One `documents` row.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub id: Uuid,
    pub user_id: Uuid,
    pub filename: String,
    pub media_type: MediaType,
    pub size_bytes: u64,
    pub sha256: String,
    pub status: Status,
    pub label: Option<String>,
    pub confidence: Option<f64>,
    pub model_version: Option<String>,
    pub excerpt: Option<String>,
    pub metadata: Option<DocumentMetadata>,
    pub text_chars: Option<u64>,
    pub text_key: Option<String>,
    pub thumbnail_key: Option<String>,
    pub failure_stage: Option<String>,
    pub failure_reason: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, user_id, filename, media_type, size_bytes, sha256, status, label, confidence, model_version,
    excerpt, metadata, text_chars, text_key, thumbnail_key, failure_stage, failure_reason, created_at, updated_at";

fn uuid(row: &Row, i: usize) -> db::Result<Uuid> {
    Uuid::try_parse(row.text(i)?).map_err(|e| db::Error::Decode(format!("column {i}: {e}")))
}

fn opt_real(row: &Row, i: usize) -> db::Result<Option<f64>> {
    match row.0.get(i) {
        Some(Value::Null) => Ok(None),
        Some(Value::Real(v)) => Ok(Some(*v)),
        // SQLite hands back a whole-valued REAL as an integer.
        Some(Value::Int(v)) => Ok(Some(*v as f64)),
        other => Err(db::Error::Decode(format!("column {i}: expected a number, found {other:?}"))),
    }
}

fn unsigned(value: i64, i: usize) -> db::Result<u64> {
    u64::try_from(value).map_err(|_| db::Error::Decode(format!("column {i}: {value} is negative")))
}

impl Document {
    fn from_row(row: &Row) -> db::Result<Self> {
        let metadata = row
            .opt_text(11)?
            .map(serde_json::from_str::<DocumentMetadata>)
            .transpose()
            .map_err(|e| db::Error::Decode(format!("column 11 (metadata): {e}")))?;
        Ok(Self {
            id: uuid(row, 0)?,
            user_id: uuid(row, 1)?,
            filename: row.text(2)?.to_owned(),
            media_type: media_type(row.text(3)?)?,
            size_bytes: unsigned(row.i64(4)?, 4)?,
            sha256: row.text(5)?.to_owned(),
            status: Status::parse(row.text(6)?)?,
            label: row.opt_text(7)?.map(str::to_owned),
            confidence: opt_real(row, 8)?,
            model_version: row.opt_text(9)?.map(str::to_owned),
            excerpt: row.opt_text(10)?.map(str::to_owned),
            metadata,
            text_chars: row.opt_i64(12)?.map(|v| unsigned(v, 12)).transpose()?,
            text_key: row.opt_text(13)?.map(str::to_owned),
            thumbnail_key: row.opt_text(14)?.map(str::to_owned),
            failure_stage: row.opt_text(15)?.map(str::to_owned),
            failure_reason: row.opt_text(16)?.map(str::to_owned),
            created_at: row.i64(17)?,
            updated_at: row.i64(18)?,
        })
    }
}

/// The caller's document `id`; `None` when there is none or it is another user's.
pub(crate) async fn get(db: &dyn Database, user_id: Uuid, id: Uuid) -> db::Result<Option<Document>> {
    let rows = db
        .query(
            &format!("SELECT {COLUMNS} FROM documents WHERE id = $1 AND user_id = $2"),
            &[id.to_string().into(), user_id.to_string().into()],
        )
        .await?;
    rows.first().map(Document::from_row).transpose()
}

/// Up to `limit` of the caller's documents older than `before`, newest first.
pub(crate) async fn list(
    db: &dyn Database,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> db::Result<Vec<Document>> {
    let rows = match before {
        Some(before) => {
            db.query(
                &format!("SELECT {COLUMNS} FROM documents WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"),
                &[user_id.to_string().into(), before.to_string().into(), limit.into()],
            )
            .await?
        }
        None => {
            db.query(
                &format!("SELECT {COLUMNS} FROM documents WHERE user_id = $1 ORDER BY id DESC LIMIT $2"),
                &[user_id.to_string().into(), limit.into()],
            )
            .await?
        }
    };
    rows.iter().map(Document::from_row).collect()
}

/// Locks document `id` for the rest of `tx` and reads it; `None` if there is no such document.
///
/// `doc.processed` and `doc.classified` are consumed independently, so two events about one
/// document may be handled at once. Writing the row first makes their transactions take turns
/// (PostgreSQL locks the row; SQLite has one writer anyway), and the later one reads what the
/// earlier one committed — so neither can overwrite the other's status with an older one.
pub(crate) async fn lock(tx: &mut dyn Transaction, id: Uuid) -> db::Result<Option<Document>> {
    let id = id.to_string();
    if tx.execute("UPDATE documents SET updated_at = updated_at WHERE id = $1", &[id.as_str().into()]).await? == 0 {
        return Ok(None);
    }
    let rows = tx.query(&format!("SELECT {COLUMNS} FROM documents WHERE id = $1"), &[id.into()]).await?;
    rows.first().map(Document::from_row).transpose()
}

/// One audit log entry: a state change of a document and the event that caused it.
#[derive(Debug, Clone)]
pub(crate) struct Audit<'a> {
    pub document_id: Uuid,
    pub event_id: Uuid,
    /// The event's type, e.g. `document_classified`.
    pub kind: &'a str,
    pub from: Option<Status>,
    pub to: Status,
    pub detail: String,
    pub at: i64,
}

/// Appends `entry` to the audit log inside `tx`.
pub(crate) async fn audit(tx: &mut dyn Transaction, entry: Audit<'_>) -> db::Result<()> {
    tx.execute(
        "INSERT INTO document_events (id, document_id, event_id, kind, from_status, to_status, detail, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Uuid::now_v7().to_string().into(),
            entry.document_id.to_string().into(),
            entry.event_id.to_string().into(),
            entry.kind.into(),
            entry.from.map(Status::as_str).into(),
            entry.to.as_str().into(),
            entry.detail.into(),
            entry.at.into(),
        ],
    )
    .await?;
    Ok(())
}

/// A stored audit entry.
#[derive(Debug, Clone)]
pub(crate) struct AuditRow {
    pub kind: String,
    pub from: Option<Status>,
    pub to: Status,
    pub detail: String,
    pub at: i64,
}

/// Document `id`'s audit log, oldest first.
pub(crate) async fn audit_log(db: &dyn Database, id: Uuid) -> db::Result<Vec<AuditRow>> {
    let rows = db
        .query(
            "SELECT kind, from_status, to_status, detail, at FROM document_events WHERE document_id = $1 ORDER BY id",
            &[id.to_string().into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRow {
                kind: row.text(0)?.to_owned(),
                from: row.opt_text(1)?.map(Status::parse).transpose()?,
                to: Status::parse(row.text(2)?)?,
                detail: row.text(3)?.to_owned(),
                at: row.i64(4)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward_in_this_order() {
        use Status::*;
        assert!(Uploaded < Processed && Processed < Failed && Failed < Classified);
        for status in [Uploaded, Processed, Failed, Classified] {
            assert_eq!(Status::parse(status.as_str()).unwrap(), status);
        }
        assert!(Status::parse("DONE").is_err());
    }
}
