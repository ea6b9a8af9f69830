//! HTTP: the routes, and the read side — the caller's documents, each one's state, thumbnail,
//! text and audit log. Every read answers from this service's own tables and blob storage, so
//! it stays fast whatever processing is doing. Another user's document is a 404, as if it did
//! not exist.

use std::{net::SocketAddr, ops::Deref, sync::Arc};

use axum::{
    body::Body,
    extract::{
        DefaultBodyLimit, Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as BlobPath};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::error;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_contracts::DocumentMetadata;
use weir_core::{Db, store::outbox::Outbox};
use weir_http::{AuthUser, Json, Page, Problem};

use crate::{
    model::{self, AuditRow, Document, Status},
    upload::{self, Limits},
};

/// Room for the multipart framing (boundaries, part headers) around the largest file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The state of the routes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Api {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub outbox: Outbox,
    pub blobs: Arc<dyn ObjectStore>,
    pub limits: Limits,
    pub clamd: Option<SocketAddr>,
    /// Uploads being copied to blob storage at once; each holds a few parts in memory, so this
    /// bounds the memory of a burst of large uploads.
    pub storing: Semaphore,
}

impl Api {
    pub(crate) fn new(
        db: Db,
        outbox: Outbox,
        blobs: Arc<dyn ObjectStore>,
        limits: Limits,
        clamd: Option<SocketAddr>,
    ) -> Self {
        let storing = Semaphore::new(upload::STORING_AT_ONCE);
        Self { inner: Arc::new(Inner { db, outbox, blobs, limits, clamd, storing }) }
    }
}

impl Deref for Api {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub(crate) fn routes(api: Api) -> OpenApiRouter {
    // The upload needs more than the application's default body limit: the file plus framing.
    let body_limit = usize::try_from(api.limits.max_bytes).unwrap_or(usize::MAX).saturating_add(MULTIPART_OVERHEAD);
    OpenApiRouter::new()
        .routes(routes!(upload::upload_document, list_documents))
        .layer(DefaultBodyLimit::max(body_limit))
        .routes(routes!(get_document))
        .routes(routes!(get_thumbnail))
        .routes(routes!(get_text))
        .routes(routes!(get_events))
        .with_state(api)
}

/// What processing learned about a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataView {
    pub pages: u32,
    /// Pixel size of the image, or of the first page as rendered.
    pub width: u32,
    pub height: u32,
    /// Hex SHA-256 of the raw bytes.
    pub sha256: String,
    /// The PDF's title and author, when it names them.
    pub title: Option<String>,
    pub author: Option<String>,
    /// Pages read by OCR, and pages whose text came from the PDF's text layer.
    pub ocr_pages: u32,
    pub text_layer_pages: u32,
}

impl From<DocumentMetadata> for MetadataView {
    fn from(m: DocumentMetadata) -> Self {
        Self {
            pages: m.pages,
            width: m.width,
            height: m.height,
            sha256: m.sha256,
            title: m.title,
            author: m.author,
            ocr_pages: m.ocr_pages,
            text_layer_pages: m.text_layer_pages,
        }
    }
}

/// One of the caller's documents, as far as it has come.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub document_id: Uuid,
    /// The name it was uploaded with.
    pub filename: String,
    /// Decided from the content: `application/pdf`, `image/png` or `image/jpeg`.
    pub media_type: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the raw bytes.
    pub sha256: String,
    pub status: Status,
    /// The class, once `CLASSIFIED`: `invoice`, `receipt`, `contract`, ...
    pub label: Option<String>,
    /// The classifier's probability for `label`, 0 to 1.
    pub confidence: Option<f32>,
    /// The model that decided.
    pub model_version: Option<String>,
    /// The start of the text, once processed; the whole text is at `/v1/documents/{id}/text`.
    pub excerpt: Option<String>,
    /// Characters in the whole text, once processed.
    pub text_chars: Option<u64>,
    pub metadata: Option<MetadataView>,
    /// Which stage failed (`processing` or `classification`), when `FAILED`.
    pub failure_stage: Option<String>,
    /// Why, when `FAILED`.
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

impl From<Document> for DocumentView {
    fn from(d: Document) -> Self {
        Self {
            document_id: d.id,
            filename: d.filename,
            media_type: d.media_type.mime().to_owned(),
            size_bytes: d.size_bytes,
            sha256: d.sha256,
            status: d.status,
            label: d.label,
            // The classifier's own precision (f32): 0.97, not 0.9703015685081482.
            confidence: d.confidence.map(|c| c as f32),
            model_version: d.model_version,
            excerpt: d.excerpt,
            text_chars: d.text_chars,
            metadata: d.metadata.map(Into::into),
            failure_stage: d.failure_stage,
            failure_reason: d.failure_reason,
            created_at: time(d.created_at),
            updated_at: time(d.updated_at),
        }
    }
}

/// A document in the upload history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentSummary {
    pub document_id: Uuid,
    pub filename: String,
    pub media_type: String,
    pub size_bytes: u64,
    pub status: Status,
    pub label: Option<String>,
    pub confidence: Option<f32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Document> for DocumentSummary {
    fn from(d: Document) -> Self {
        Self {
            document_id: d.id,
            filename: d.filename,
            media_type: d.media_type.mime().to_owned(),
            size_bytes: d.size_bytes,
            status: d.status,
            label: d.label,
            confidence: d.confidence.map(|c| c as f32),
            created_at: time(d.created_at),
            updated_at: time(d.updated_at),
        }
    }
}

/// A page of the caller's documents, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentPage {
    pub items: Vec<DocumentSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One state change of a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// The event that caused it: `document_uploaded`, `document_processed`, `document_failed`
    /// or `document_classified`.
    pub event: String,
    /// The status before; absent for the upload.
    pub from_status: Option<Status>,
    /// The status after (the same as before when only data arrived).
    pub status: Status,
    /// What changed, in words.
    pub detail: String,
    pub at: DateTime<Utc>,
}

impl From<AuditRow> for AuditEntry {
    fn from(a: AuditRow) -> Self {
        Self { event: a.kind, from_status: a.from, status: a.to, detail: a.detail, at: time(a.at) }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Documents per page, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// The caller's documents, newest first.
#[utoipa::path(
    get,
    path = "/v1/documents",
    tag = "documents",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of the caller's documents", body = DocumentPage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_documents(
    State(api): State<Api>,
    user: AuthUser,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DocumentPage>, Problem> {
    let Query(params) = query.map_err(|e| {
        Problem::bad_request(format!(
            "the query string is malformed ({}); the parameters are limit and cursor",
            e.body_text()
        ))
    })?;
    let page = Page::parse(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut documents = model::list(api.db.as_ref(), user.user_id, page.before, page.fetch()).await?;
    let next_cursor = page.next_cursor(&mut documents, |d| d.id);
    Ok(Json(DocumentPage { items: documents.into_iter().map(Into::into).collect(), next_cursor }))
}

/// The caller's document `id`, or a 404 problem.
async fn owned(api: &Api, user: &AuthUser, id: Result<Path<String>, PathRejection>) -> Result<Document, Problem> {
    let Path(id) = id.map_err(|e| Problem::bad_request(format!("the document id is malformed: {}", e.body_text())))?;
    let id = weir_http::parse_id(&id, "a document", "GET /v1/documents")?;
    model::get(api.db.as_ref(), user.user_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("you have no document {id}; list yours at GET /v1/documents")))
}

/// One of the caller's documents: its status, label, excerpt and metadata.
#[utoipa::path(
    get,
    path = "/v1/documents/{id}",
    tag = "documents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id")),
    responses(
        (status = 200, description = "The document", body = DocumentView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document of yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_document(
    State(api): State<Api>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DocumentView>, Problem> {
    Ok(Json(owned(&api, &user, id).await?.into()))
}

/// Which derived blob to serve.
#[derive(Clone, Copy)]
enum Derived {
    Thumbnail,
    Text,
}

impl Derived {
    fn key(self, document: &Document) -> Option<&str> {
        match self {
            Self::Thumbnail => document.thumbnail_key.as_deref(),
            Self::Text => document.text_key.as_deref(),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Thumbnail => "thumbnail",
            Self::Text => "text",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Thumbnail => "image/jpeg",
            Self::Text => "text/plain; charset=utf-8",
        }
    }
}

/// Streams a document's thumbnail or text from blob storage.
async fn serve_derived(api: &Api, document: &Document, derived: Derived) -> Result<Response, Problem> {
    let noun = derived.noun();
    let Some(key) = derived.key(document) else {
        let detail = match document.status {
            Status::Failed => format!(
                "document {} has no {noun}: it failed ({})",
                document.id,
                document.failure_reason.as_deref().unwrap_or("no reason given")
            ),
            _ => format!("document {} is not processed yet: its {noun} appears once it is; retry later", document.id),
        };
        return Err(Problem::not_found(detail));
    };
    let path = BlobPath::parse(key).map_err(|e| Problem::internal(&e))?;
    let blob = match api.blobs.get(&path).await {
        Ok(blob) => blob,
        Err(object_store::Error::NotFound { .. }) => {
            error!(document_id = %document.id, key, "a recorded blob is missing from storage");
            return Err(Problem::not_found(format!("the {noun} of document {} is missing from storage", document.id)));
        }
        Err(e) => {
            error!(document_id = %document.id, key, error = %e, "cannot read a blob");
            return Err(Problem::unavailable("the document storage is unavailable; retry later"));
        }
    };
    let size = blob.meta.size;
    let mut response = Body::from_stream(blob.into_stream()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(derived.content_type()));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// A JPEG thumbnail of the caller's document (the image, or the first page).
#[utoipa::path(
    get,
    path = "/v1/documents/{id}/thumbnail",
    tag = "documents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id")),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document of yours, or not processed yet", body = Problem,
            content_type = "application/problem+json"),
    )
)]
async fn get_thumbnail(
    State(api): State<Api>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let document = owned(&api, &user, id).await?;
    serve_derived(&api, &document, Derived::Thumbnail).await
}

/// The whole text of the caller's document, as extracted.
#[utoipa::path(
    get,
    path = "/v1/documents/{id}/text",
    tag = "documents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id")),
    responses(
        (status = 200, description = "The text", content_type = "text/plain", body = String),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document of yours, or not processed yet", body = Problem,
            content_type = "application/problem+json"),
    )
)]
async fn get_text(
    State(api): State<Api>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let document = owned(&api, &user, id).await?;
    serve_derived(&api, &document, Derived::Text).await
}

/// The audit log of the caller's document: every state change, oldest first.
#[utoipa::path(
    get,
    path = "/v1/documents/{id}/events",
    tag = "documents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id")),
    responses(
        (status = 200, description = "The state changes, oldest first", body = Vec<AuditEntry>),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document of yours", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_events(
    State(api): State<Api>,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    let document = owned(&api, &user, id).await?;
    let log = model::audit_log(api.db.as_ref(), document.id).await?;
    Ok(Json(log.into_iter().map(Into::into).collect()))
}
