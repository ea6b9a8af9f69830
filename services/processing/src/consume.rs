//! The consumer of `doc.uploaded`.
//!
//! All the work happens in `prepare`, outside the transaction: download the raw bytes (streamed
//! to a scratch file, hashed on the way), run the worker, upload the text and the thumbnail.
//! `handle` only records the outcome and emits its event, in one transaction with the inbox.
//!
//! - A document that cannot be processed (damaged, too large, a crashed or timed-out worker,
//!   missing from storage) is a final outcome: `document_failed` with the reason.
//! - Anything that may pass (blob storage or the database unavailable, a worker that cannot be
//!   started) is returned as a transient error, and the router retries it.
//! - `prepare` skips documents whose outcome is already recorded, so a redelivery after a commit
//!   costs a query, not an OCR run; the blob writes it repeats on a retry overwrite identical
//!   keys. The `processed_documents` row, unique per document, makes the announcement happen once.

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as BlobPath};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};
use uuid::Uuid;
use weir_contracts::{Contract, DocumentFailed, DocumentMetadata, DocumentProcessed, DocumentUploaded, EXCERPT_CHARS};
use weir_core::{Context, Db, Event, Handler, HandlerError, Outgoing, Prepared, Transaction};

use crate::{
    NAME,
    protocol::{TEXT_FILE, THUMBNAIL_FILE},
    runner::{Job, Outcome, Runner, Scratch},
};

/// The stage named in `document_failed`.
const STAGE: &str = "processing";

pub(crate) struct UploadedHandler {
    pub db: Db,
    pub blobs: Arc<dyn ObjectStore>,
    pub runner: Runner,
    pub work_dir: PathBuf,
}

/// What `prepare` decided: the event to announce.
#[derive(Clone)]
enum Decided {
    Processed(DocumentProcessed),
    Failed(DocumentFailed),
}

#[async_trait]
impl Handler for UploadedHandler {
    async fn prepare(&self, event: &Event) -> Result<Option<Prepared>, HandlerError> {
        let Some(uploaded) = DocumentUploaded::decode(event).transpose()? else { return Ok(None) };
        if recorded(&self.db, uploaded.document_id).await? {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let decided = self.process(&uploaded).await?;
        let outcome = match &decided {
            Decided::Processed(_) => "processed",
            Decided::Failed(_) => "failed",
        };
        metrics::histogram!("weir_processing_seconds", "outcome" => outcome).record(started.elapsed().as_secs_f64());
        Ok(Some(Box::new(decided)))
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(uploaded) = DocumentUploaded::decode(event).transpose()? else { return Ok(Vec::new()) };
        let document_id = uploaded.document_id;
        let Some(decided) = ctx.prepared::<Decided>() else {
            // `prepare` skips only documents already recorded, and records are never deleted.
            if recorded_in(ctx.tx(), document_id).await? {
                debug!(%document_id, "document already processed");
                return Ok(Vec::new());
            }
            return Err(HandlerError::transient(format!(
                "document {document_id} was recorded before the transaction but not in it"
            )));
        };
        let (outcome, reason) = match &decided {
            Decided::Processed(_) => ("processed", None),
            Decided::Failed(failed) => ("failed", Some(failed.reason.as_str())),
        };
        let inserted = ctx
            .tx()
            .execute(
                "INSERT INTO processed_documents (document_id, outcome, reason, processed_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (document_id) DO NOTHING",
                &[
                    document_id.to_string().into(),
                    outcome.into(),
                    reason.map(str::to_owned).into(),
                    chrono::Utc::now().timestamp_millis().into(),
                ],
            )
            .await?;
        if inserted == 0 {
            debug!(%document_id, "document processed by an earlier delivery");
            return Ok(Vec::new());
        }
        metrics::counter!("weir_processing_documents_total", "outcome" => outcome).increment(1);
        Ok(vec![match decided {
            Decided::Processed(processed) => {
                let m = &processed.metadata;
                metrics::counter!("weir_processing_pages_total", "source" => "ocr").increment(m.ocr_pages.into());
                metrics::counter!("weir_processing_pages_total", "source" => "text_layer")
                    .increment(m.text_layer_pages.into());
                info!(%document_id, pages = m.pages, ocr_pages = m.ocr_pages, chars = processed.text_chars, "document processed");
                processed.reply_to(NAME, event)
            }
            Decided::Failed(failed) => {
                info!(%document_id, reason = %failed.reason, "document failed");
                failed.reply_to(NAME, event)
            }
        }])
    }
}

impl UploadedHandler {
    async fn process(&self, uploaded: &DocumentUploaded) -> Result<Decided, HandlerError> {
        let failed = |reason: String| {
            Decided::Failed(DocumentFailed {
                document_id: uploaded.document_id,
                user_id: uploaded.user_id,
                filename: uploaded.filename.clone(),
                stage: STAGE.into(),
                reason,
            })
        };
        let key = BlobPath::parse(&uploaded.blob_key)
            .map_err(|e| HandlerError::permanent(format!("invalid blob key {:?}: {e}", uploaded.blob_key)))?;
        let scratch = Scratch::new(&self.work_dir).map_err(|e| {
            HandlerError::transient(format!("cannot make a scratch directory in {}: {e}", self.work_dir.display()))
        })?;
        let result = self.process_in(uploaded, &key, &scratch, failed).await;
        // Removing the scratch files is blocking I/O.
        tokio::task::spawn_blocking(move || drop(scratch));
        result
    }

    async fn process_in(
        &self,
        uploaded: &DocumentUploaded,
        key: &BlobPath,
        scratch: &Scratch,
        failed: impl Fn(String) -> Decided,
    ) -> Result<Decided, HandlerError> {
        let sha256 = match self.download(key, &scratch.input()).await? {
            Some(sha256) => sha256,
            None => return Ok(failed("the uploaded file is no longer in storage".into())),
        };
        if !sha256.eq_ignore_ascii_case(&uploaded.sha256) {
            warn!(document_id = %uploaded.document_id, expected = %uploaded.sha256, actual = %sha256, "stored bytes differ from the upload");
            return Ok(failed("the stored file does not match the upload (its SHA-256 differs)".into()));
        }
        let output_dir = scratch.output_dir();
        let stderr = scratch.stderr();
        let job =
            Job { input: &scratch.input(), media_type: uploaded.media_type, output_dir: &output_dir, stderr: &stderr };
        let done = match self.runner.run(job).await.map_err(HandlerError::transient)? {
            Outcome::Done(done) => done,
            Outcome::Failed(reason) => return Ok(failed(reason)),
        };

        let text = tokio::fs::read(output_dir.join(TEXT_FILE))
            .await
            .map_err(|e| HandlerError::transient(format!("cannot read the worker's text: {e}")))?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let thumbnail = tokio::fs::read(output_dir.join(THUMBNAIL_FILE))
            .await
            .map_err(|e| HandlerError::transient(format!("cannot read the worker's thumbnail: {e}")))?;
        let (user, document) = (uploaded.user_id, uploaded.document_id);
        let text_key = blob_key("text", user, document);
        let thumbnail_key = blob_key("thumbnails", user, document);
        let excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
        let text_chars = text.chars().count() as u64;
        self.put(&text_key, text.into_bytes()).await?;
        self.put(&thumbnail_key, thumbnail).await?;
        Ok(Decided::Processed(DocumentProcessed {
            document_id: document,
            user_id: user,
            filename: uploaded.filename.clone(),
            media_type: uploaded.media_type,
            text_key,
            thumbnail_key,
            excerpt,
            text_chars,
            metadata: DocumentMetadata {
                pages: done.pages,
                width: done.width,
                height: done.height,
                sha256,
                title: done.title,
                author: done.author,
                ocr_pages: done.ocr_pages,
                text_layer_pages: done.text_layer_pages,
            },
        }))
    }

    /// Streams the blob at `key` to `path`; its hex SHA-256, or `None` when there is no such blob.
    async fn download(&self, key: &BlobPath, path: &std::path::Path) -> Result<Option<String>, HandlerError> {
        let unavailable = |e: &dyn std::fmt::Display| HandlerError::transient(format!("cannot read blob {key}: {e}"));
        let blob = match self.blobs.get(key).await {
            Ok(blob) => blob,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable(&e)),
        };
        let mut file = tokio::fs::File::create(path).await.map_err(|e| unavailable(&e))?;
        let mut hasher = Sha256::new();
        let mut chunks = blob.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| unavailable(&e))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| unavailable(&e))?;
        }
        file.flush().await.map_err(|e| unavailable(&e))?;
        Ok(Some(hex::encode(hasher.finalize())))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), HandlerError> {
        self.blobs
            .put(&BlobPath::from(key), PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| HandlerError::transient(format!("cannot store blob {key}: {e}")))
    }
}

/// `{kind}/{user}/{document}`, as the contracts name blobs.
fn blob_key(kind: &str, user: Uuid, document: Uuid) -> String {
    format!("{kind}/{user}/{document}")
}

const RECORDED: &str = "SELECT 1 FROM processed_documents WHERE document_id = $1";

/// Whether the document's outcome is committed (outside any transaction: for `prepare`).
async fn recorded(db: &Db, document_id: Uuid) -> Result<bool, HandlerError> {
    Ok(!db.query(RECORDED, &[document_id.to_string().into()]).await?.is_empty())
}

/// Whether the transaction sees the document's outcome (for `handle`).
async fn recorded_in(tx: &mut dyn Transaction, document_id: Uuid) -> Result<bool, HandlerError> {
    Ok(!tx.query(RECORDED, &[document_id.to_string().into()]).await?.is_empty())
}
