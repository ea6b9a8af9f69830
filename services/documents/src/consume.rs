//! The read model's consumers: `doc.processed` (processed or failed) and `doc.classified`.
//!
//! Each handler runs in the router's transaction, behind its inbox, so a redelivered event is
//! handled once. The two topics are read independently, so a document's classification may
//! arrive before its processing: the status therefore only moves forward ([`Status`]'s order),
//! while the data an event carries is still recorded when it arrives late (a classified
//! document still gets its excerpt and thumbnail). Every change appends an audit entry; an
//! event that changes nothing (a restatement, or one overtaken by a later status) appends none.

use async_trait::async_trait;
use tracing::{debug, info, warn};
use uuid::Uuid;
use weir_contracts::{Contract, DocumentClassified, DocumentFailed, DocumentProcessed};
use weir_core::{Context, Event, Handler, HandlerError, Outgoing, Transaction};

use crate::{
    model::{self, Audit, Document, Status},
    now_millis,
};

/// Consumes `doc.processed`: `DocumentProcessed` and `DocumentFailed`.
pub(crate) struct ProcessedHandler;

#[async_trait]
impl Handler for ProcessedHandler {
    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(processed) = DocumentProcessed::decode(event) {
            record_processed(ctx.tx(), event, &processed?).await?;
        } else if let Some(failed) = DocumentFailed::decode(event) {
            record_failed(ctx.tx(), event, &failed?).await?;
        }
        Ok(Vec::new())
    }
}

/// Consumes `doc.classified`.
pub(crate) struct ClassifiedHandler;

#[async_trait]
impl Handler for ClassifiedHandler {
    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(classified) = DocumentClassified::decode(event) {
            record_classified(ctx.tx(), event, &classified?).await?;
        }
        Ok(Vec::new())
    }
}

/// Locks and reads the document an event is about. `None` for a document this service never
/// accepted (nothing to update); an event naming another owner is refused as corrupt.
async fn document(
    tx: &mut dyn Transaction,
    event: &Event,
    document_id: Uuid,
    user_id: Uuid,
) -> Result<Option<Document>, HandlerError> {
    let Some(document) = model::lock(tx, document_id).await? else {
        warn!(%document_id, kind = %event.kind, "an event about a document this service never accepted; ignored");
        return Ok(None);
    };
    if document.user_id != user_id {
        return Err(HandlerError::permanent(format!(
            "the event says document {document_id} belongs to user {user_id}, but user {} uploaded it",
            document.user_id
        )));
    }
    Ok(Some(document))
}

async fn record_processed(tx: &mut dyn Transaction, event: &Event, p: &DocumentProcessed) -> Result<(), HandlerError> {
    let Some(document) = document(tx, event, p.document_id, p.user_id).await? else { return Ok(()) };
    if document.text_key.is_some() {
        debug!(document_id = %p.document_id, "processing results already recorded");
        return Ok(());
    }
    let status = document.status.max(Status::Processed);
    let metadata = serde_json::to_string(&p.metadata)
        .map_err(|e| HandlerError::permanent(format!("the metadata does not serialise: {e}")))?;
    let text_chars = i64::try_from(p.text_chars)
        .map_err(|_| HandlerError::permanent(format!("text_chars {} is out of range", p.text_chars)))?;
    let now = now_millis();
    tx.execute(
        "UPDATE documents SET status = $1, excerpt = $2, metadata = $3, text_chars = $4, text_key = $5,
             thumbnail_key = $6, updated_at = $7
         WHERE id = $8",
        &[
            status.as_str().into(),
            p.excerpt.as_str().into(),
            metadata.into(),
            text_chars.into(),
            p.text_key.as_str().into(),
            p.thumbnail_key.as_str().into(),
            now.into(),
            p.document_id.to_string().into(),
        ],
    )
    .await?;
    let mut detail = format!(
        "text extracted: {} characters from {} page(s) ({} by OCR, {} from the text layer)",
        p.text_chars, p.metadata.pages, p.metadata.ocr_pages, p.metadata.text_layer_pages
    );
    if status != Status::Processed {
        detail.push_str(&format!("; the status stays {status}, which it reached first"));
    }
    model::audit(
        tx,
        Audit {
            document_id: p.document_id,
            event_id: event.id,
            kind: DocumentProcessed::KIND,
            from: Some(document.status),
            to: status,
            detail,
            at: now,
        },
    )
    .await?;
    info!(document_id = %p.document_id, %status, "document processed");
    Ok(())
}

async fn record_failed(tx: &mut dyn Transaction, event: &Event, f: &DocumentFailed) -> Result<(), HandlerError> {
    let Some(document) = document(tx, event, f.document_id, f.user_id).await? else { return Ok(()) };
    if document.status >= Status::Failed {
        debug!(document_id = %f.document_id, status = %document.status, "a failure after the final status; ignored");
        return Ok(());
    }
    let now = now_millis();
    tx.execute(
        "UPDATE documents SET status = $1, failure_stage = $2, failure_reason = $3, updated_at = $4 WHERE id = $5",
        &[
            Status::Failed.as_str().into(),
            f.stage.as_str().into(),
            f.reason.as_str().into(),
            now.into(),
            f.document_id.to_string().into(),
        ],
    )
    .await?;
    model::audit(
        tx,
        Audit {
            document_id: f.document_id,
            event_id: event.id,
            kind: DocumentFailed::KIND,
            from: Some(document.status),
            to: Status::Failed,
            detail: format!("{} failed: {}", f.stage, f.reason),
            at: now,
        },
    )
    .await?;
    info!(document_id = %f.document_id, stage = %f.stage, reason = %f.reason, "document failed");
    Ok(())
}

async fn record_classified(
    tx: &mut dyn Transaction,
    event: &Event,
    c: &DocumentClassified,
) -> Result<(), HandlerError> {
    if !(0.0..=1.0).contains(&c.confidence) {
        return Err(HandlerError::permanent(format!("confidence {} is not a probability in 0..=1", c.confidence)));
    }
    let Some(document) = document(tx, event, c.document_id, c.user_id).await? else { return Ok(()) };
    let confidence = f64::from(c.confidence);
    if document.status == Status::Classified
        && document.label.as_deref() == Some(c.label.as_str())
        && document.model_version.as_deref() == Some(c.model_version.as_str())
        && document.confidence == Some(confidence)
    {
        debug!(document_id = %c.document_id, "classification already recorded");
        return Ok(());
    }
    let now = now_millis();
    tx.execute(
        "UPDATE documents SET status = $1, label = $2, confidence = $3, model_version = $4, updated_at = $5 WHERE id = $6",
        &[
            Status::Classified.as_str().into(),
            c.label.as_str().into(),
            confidence.into(),
            c.model_version.as_str().into(),
            now.into(),
            c.document_id.to_string().into(),
        ],
    )
    .await?;
    model::audit(
        tx,
        Audit {
            document_id: c.document_id,
            event_id: event.id,
            kind: DocumentClassified::KIND,
            from: Some(document.status),
            to: Status::Classified,
            detail: format!(
                "classified as {} with confidence {:.2} by model {}",
                c.label, c.confidence, c.model_version
            ),
            at: now,
        },
    )
    .await?;
    info!(document_id = %c.document_id, label = %c.label, confidence = c.confidence, "document classified");
    Ok(())
}
