//! The bus side: `doc.processed` → `doc.classified`.
//!
//! Each [`DocumentProcessed`] is classified by its excerpt and answered with one
//! [`DocumentClassified`], written to the outbox in the handler's transaction; the router's inbox
//! makes a redelivered message a no-op, so a document is classified once however often it
//! arrives. The model runs in [`Handler::prepare`], before the transaction opens: it is CPU
//! work that must not hold the database's writer. A document without any text cannot be
//! classified and becomes a [`DocumentFailed`] of stage `classification`. `DocumentFailed`
//! events on the same topic are not for this service and are ignored.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::{debug, info};
use weir_classifier::{Model, Prediction, SharedModel};
use weir_contracts::{Contract, DocumentClassified, DocumentFailed, DocumentProcessed};
use weir_core::{Context, Event, Handler, HandlerError, Outgoing, Prepared};

/// The events' `source`.
pub(crate) const SOURCE: &str = "classification";

/// What the model decided for one document (made in `prepare`, used in `handle`).
#[derive(Clone)]
struct Decision {
    prediction: Prediction,
    model_version: String,
}

pub(crate) struct ProcessedHandler {
    pub model: SharedModel,
}

/// Runs the model in use on the document's excerpt.
fn decide(model: &SharedModel, processed: &DocumentProcessed) -> Result<Decision, HandlerError> {
    // No model means the service was started without one and it has not appeared yet:
    // retried with backoff, so the document is classified once a model is trained.
    let model: Arc<Model> = model.current().ok_or_else(|| {
        HandlerError::transient(format!("no classifier model is loaded from {}", model.path().display()))
    })?;
    Ok(Decision { prediction: model.predict(&processed.excerpt), model_version: model.version().to_owned() })
}

fn has_text(processed: &DocumentProcessed) -> bool {
    !processed.excerpt.trim().is_empty()
}

#[async_trait]
impl Handler for ProcessedHandler {
    fn accepts(&self, kind: &str) -> bool {
        kind == DocumentProcessed::KIND
    }

    async fn prepare(&self, event: &Event) -> Result<Option<Prepared>, HandlerError> {
        let Some(processed) = DocumentProcessed::decode(event) else { return Ok(None) };
        let processed = processed?;
        if !has_text(&processed) {
            return Ok(None);
        }
        let model = self.model.clone();
        let decision = tokio::task::spawn_blocking(move || decide(&model, &processed))
            .await
            .map_err(HandlerError::transient)??;
        Ok(Some(Box::new(decision)))
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(processed) = DocumentProcessed::decode(event) else { return Ok(Vec::new()) };
        let processed = processed?;
        if !has_text(&processed) {
            info!(document_id = %processed.document_id, "no text to classify");
            let failed = DocumentFailed {
                document_id: processed.document_id,
                user_id: processed.user_id,
                filename: processed.filename,
                stage: "classification".to_owned(),
                reason: "no text was found in the document (a blank page or an unreadable scan), so it cannot \
                         be classified"
                    .to_owned(),
            };
            return Ok(vec![failed.reply_to(SOURCE, event)]);
        }
        let decision = match ctx.prepared::<Decision>() {
            Some(decision) => decision,
            None => decide(&self.model, &processed)?,
        };
        debug!(document_id = %processed.document_id, label = %decision.prediction.label,
            confidence = decision.prediction.confidence, model_version = %decision.model_version, "document classified");
        let classified = DocumentClassified {
            document_id: processed.document_id,
            user_id: processed.user_id,
            filename: processed.filename,
            label: decision.prediction.label,
            confidence: decision.prediction.confidence,
            model_version: decision.model_version,
        };
        Ok(vec![classified.reply_to(SOURCE, event)])
    }
}
