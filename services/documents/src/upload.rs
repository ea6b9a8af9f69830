//! `POST /v1/documents`: receive one file, check it, store it, record it.
//!
//! 1. **Receive** — the multipart field `file` streams to a spool file while its bytes are
//!    counted (one more than the limit stops it: 413), hashed (SHA-256), sniffed (the first
//!    bytes decide the type) and scanned for the EICAR signature. Nothing is held in memory
//!    beyond one chunk.
//! 2. **Check** — in this order: a virus (422), an empty file (422), an unknown type (415), a
//!    name whose extension contradicts the content (422); then clamd, when configured (a
//!    virus: 422; clamd unreachable: 503).
//! 3. **Store** — the spool file streams to blob storage at `raw/{user}/{document}` in parts.
//! 4. **Record** — one transaction: the `documents` row, its first audit entry and
//!    `DocumentUploaded` into the outbox. If it fails, the blob is deleted again.
//!
//! A refused upload leaves nothing: no row, no blob, and the spool file is deleted when its
//! [`Spool`] guard drops (also when the client goes away mid-upload). Steps 3 and 4 run in a
//! task of their own, so a client that disconnects then cannot leave a blob without its row.

use std::path::{Path, PathBuf};

use axum::{
    extract::{
        State,
        multipart::{Field, Multipart, MultipartError, MultipartRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart, path::Path as BlobPath};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tracing::{error, info, warn};
use utoipa::ToSchema;
use uuid::Uuid;
use weir_contracts::{Contract, DocumentUploaded, MediaType, topics};
use weir_http::{AuthUser, Json, Problem, TraceContext};

use crate::{
    NAME, SPOOL_SUFFIX,
    api::{Api, DocumentView},
    model::{self, Audit, Document, Status},
    now_millis,
    scan::{self, EICAR_NAME, EicarScanner, Verdict},
};

/// Bytes sniffed for the type: enough for every magic number recognised.
const HEAD: usize = 8;
/// The spool file's write buffer.
const SPOOL_BUFFER: usize = 256 * 1024;
/// Bytes per part sent to blob storage (S3's minimum part size).
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts in flight to blob storage at once, per upload: bounds an upload's memory.
const PARTS_IN_FLIGHT: usize = 2;
/// Uploads copied to blob storage at once (the others wait their turn): with the parts in
/// flight, at most about 16 × 16 MiB of memory.
pub(crate) const STORING_AT_ONCE: usize = 16;
/// Bytes read from the spool file at a time.
const READ_BYTES: usize = 1024 * 1024;
/// The longest filename accepted, in bytes.
const MAX_FILENAME: usize = 255;

/// What an upload may be.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub spool_dir: PathBuf,
    pub max_bytes: u64,
}

/// The form `POST /v1/documents` takes (for the OpenAPI document).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The document: a PDF, PNG or JPEG file within the size limit (50 MiB by default), with its filename.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// An upload refused: the problem for the client and the reason for the metrics.
#[derive(Debug)]
pub(crate) struct Refusal {
    reason: &'static str,
    problem: Problem,
}

impl Refusal {
    fn new(reason: &'static str, problem: Problem) -> Self {
        Self { reason, problem }
    }
}

/// Upload a document.
///
/// Send one multipart/form-data field named `file`, with the filename. The content decides the
/// type (PDF, PNG or JPEG, by its first bytes), at most 50 MiB; it is scanned for viruses. The
/// document is accepted as `UPLOADED` and then processed and classified asynchronously: follow
/// it at the `Location` returned.
#[utoipa::path(
    post,
    path = "/v1/documents",
    tag = "documents",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Accepted: stored, scanned clean, to be processed", body = DocumentView,
            headers(("Location" = String, description = "The document's URL"))),
        (status = 400, description = "The form is malformed, lacks the `file` field or has others",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The file is larger than the limit", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data, or the content is not a PDF, PNG or JPEG",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Empty, infected, a bad filename, or a name that contradicts the content",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The virus scanner or the storage is unavailable; retry later",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn upload_document(
    State(api): State<Api>,
    user: AuthUser,
    trace: TraceContext,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    let mut multipart = multipart.map_err(|_| refused(not_multipart(&headers)))?;
    let document_id = Uuid::now_v7();
    let received = match receive(&api, &mut multipart, document_id).await {
        Ok(received) => received,
        Err(refusal) => {
            drain(&mut multipart).await;
            return Err(refused(refusal));
        }
    };
    if let Some(clamd) = api.clamd {
        match scan::clamd_scan(clamd, received.spool.path()).await {
            Ok(Verdict::Clean) => {}
            Ok(Verdict::Infected(name)) => return Err(refused(virus(&name))),
            Err(e) => {
                error!(error = %e, %document_id, "the virus scan failed; the upload is refused");
                return Err(refused(Refusal::new(
                    "scanner_unavailable",
                    Problem::unavailable("the virus scanner is unavailable, so the file was not accepted; retry later"),
                )));
            }
        }
    }
    let size = received.size;
    // Store and record in a task of its own: a client that goes away now cannot interrupt it
    // between the blob and the row.
    let stored = tokio::spawn(store(api.clone(), user.user_id, document_id, trace, received))
        .await
        .map_err(|e| Problem::internal(&e))?;
    let view = stored.inspect_err(|_| {
        metrics::counter!("weir_documents_uploads_rejected_total", "reason" => "storage").increment(1);
    })?;
    metrics::counter!("weir_documents_uploads_accepted_total").increment(1);
    metrics::counter!("weir_documents_upload_bytes_total").increment(size);
    metrics::histogram!("weir_documents_upload_size_bytes").record(size as f64);
    let location = format!("/v1/documents/{document_id}");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view)).into_response())
}

/// Counts a refusal and turns it into its problem.
fn refused(refusal: Refusal) -> Problem {
    metrics::counter!("weir_documents_uploads_rejected_total", "reason" => refusal.reason).increment(1);
    info!(reason = refusal.reason, detail = %refusal.problem.detail, "upload refused");
    refusal.problem
}

fn not_multipart(headers: &HeaderMap) -> Refusal {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        Refusal::new(
            "form",
            Problem::bad_request("the multipart/form-data body has no valid boundary in its Content-Type"),
        )
    } else {
        Refusal::new(
            "form",
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "send the document as multipart/form-data with one field named `file`; got Content-Type {content_type:?}"
                ),
            ),
        )
    }
}

/// A file accepted so far: spooled, measured, typed and scanned.
struct Received {
    spool: Spool,
    filename: Filename,
    media_type: MediaType,
    size: u64,
    sha256: String,
}

/// Reads the form: exactly one field, `file`.
async fn receive(api: &Api, multipart: &mut Multipart, document_id: Uuid) -> Result<Received, Refusal> {
    let limits = &api.limits;
    let mut received = None;
    while let Some(field) = multipart.next_field().await.map_err(|e| malformed(e, limits.max_bytes))? {
        match (field.name(), &received) {
            (Some("file"), None) => received = Some(receive_file(limits, field, document_id).await?),
            (Some("file"), Some(_)) => {
                return Err(Refusal::new(
                    "form",
                    Problem::bad_request("send one document per request: the form has more than one `file` field")
                        .with_field("file", "exactly one"),
                ));
            }
            (name, _) => {
                return Err(Refusal::new(
                    "form",
                    Problem::bad_request(format!(
                        "unexpected form field {:?}: the form takes one field, `file`, holding the document",
                        name.unwrap_or("")
                    )),
                ));
            }
        }
    }
    received.ok_or_else(|| {
        Refusal::new(
            "form",
            Problem::bad_request(
                "the form has no `file` field: send the document as a multipart/form-data field named `file`, with its filename",
            )
            .with_field("file", "required"),
        )
    })
}

/// Streams the `file` field to a spool file and checks what arrived.
async fn receive_file(limits: &Limits, mut field: Field<'_>, document_id: Uuid) -> Result<Received, Refusal> {
    let filename = Filename::parse(field.file_name())
        .map_err(|message| Refusal::new("filename", Problem::invalid(message.clone()).with_field("file", message)))?;
    let (spool, file) = Spool::create(&limits.spool_dir, document_id).await.map_err(spool_failed)?;
    let mut writer = BufWriter::with_capacity(SPOOL_BUFFER, file);
    let mut size = 0u64;
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(HEAD);
    let mut eicar = EicarScanner::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| malformed(e, limits.max_bytes))? {
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            return Err(too_large(limits.max_bytes));
        }
        if head.len() < HEAD {
            head.extend_from_slice(&chunk[..chunk.len().min(HEAD - head.len())]);
        }
        hasher.update(&chunk);
        eicar.feed(&chunk);
        writer.write_all(&chunk).await.map_err(spool_failed)?;
    }
    writer.flush().await.map_err(spool_failed)?;
    drop(writer);

    if eicar.found() {
        return Err(virus(EICAR_NAME));
    }
    if size == 0 {
        return Err(Refusal::new(
            "empty",
            Problem::invalid("the file is empty (0 bytes): send a PDF, PNG or JPEG document")
                .with_field("file", "empty"),
        ));
    }
    let media_type = MediaType::sniff(&head).ok_or_else(|| {
        Refusal::new(
            "unsupported_type",
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the content is not a PDF, PNG or JPEG file (judged by its first bytes, not its name); \
                 accepted types: application/pdf, image/png, image/jpeg",
            )
            .with_field("file", "a PDF, PNG or JPEG file"),
        )
    })?;
    filename.check_against(media_type).map_err(|message| {
        Refusal::new("name_mismatch", Problem::invalid(message.clone()).with_field("file", message))
    })?;
    Ok(Received { spool, filename, media_type, size, sha256: hex::encode(hasher.finalize()) })
}

/// Reads and discards the rest of a refused request, so that the client gets the answer
/// instead of a connection reset; the route's body limit bounds how much this reads.
async fn drain(multipart: &mut Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

fn too_large(max_bytes: u64) -> Refusal {
    Refusal::new(
        "too_large",
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "the file is larger than the limit of {} ({max_bytes} bytes); send a smaller one",
                human(max_bytes)
            ),
        )
        .with_field("file", format!("at most {max_bytes} bytes")),
    )
}

fn virus(name: &str) -> Refusal {
    Refusal::new(
        "virus",
        Problem::invalid(format!("virus found: {name}; the file was not stored")).with_field("file", "infected"),
    )
}

/// A multipart stream that broke: past the body limit (413) or malformed (400).
fn malformed(error: MultipartError, max_bytes: u64) -> Refusal {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max_bytes)
    } else {
        Refusal::new(
            "form",
            Problem::bad_request(format!(
                "the multipart/form-data body is malformed ({}); send the document as one field named `file`, with its filename",
                error.body_text()
            )),
        )
    }
}

fn spool_failed(error: std::io::Error) -> Refusal {
    error!(error = %error, "cannot write the spool file");
    Refusal::new("spool", Problem::unavailable("the server cannot take uploads right now; retry later"))
}

/// `52428800` → `50 MiB`.
fn human(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) { format!("{} MiB", bytes / MIB) } else { format!("{bytes} bytes") }
}

/// A spool file, deleted when dropped: a refused or abandoned upload leaves nothing behind.
struct Spool {
    path: PathBuf,
}

impl Spool {
    /// Creates the spool file of `document_id` and opens it for writing.
    async fn create(dir: &Path, document_id: Uuid) -> std::io::Result<(Self, tokio::fs::File)> {
        let path = dir.join(format!("{document_id}{SPOOL_SUFFIX}"));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        Ok((Self { path }, file))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %e, "cannot delete a spool file");
        }
    }
}

/// A filename that is a plain base name: no directories, no `..`, no control characters,
/// 1 to 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filename(String);

impl Filename {
    /// Parses the name a client gave; the error says what is wrong with it.
    pub(crate) fn parse(name: Option<&str>) -> Result<Self, String> {
        let Some(name) = name else {
            return Err("the `file` field has no filename: send it with one, e.g. report.pdf".to_owned());
        };
        let plain = "send a plain file name such as report.pdf";
        if name.trim().is_empty() {
            return Err(format!("the filename is empty; {plain}"));
        }
        if name.len() > MAX_FILENAME {
            return Err(format!("the filename is {} bytes long; at most {MAX_FILENAME} are allowed", name.len()));
        }
        if name.contains(['/', '\\']) {
            return Err(format!("the filename {name:?} contains a path separator; {plain}"));
        }
        if name == "." || name.contains("..") {
            return Err(format!("the filename {name:?} contains `..` or is `.`; {plain}"));
        }
        if name.chars().any(char::is_control) {
            return Err(format!("the filename {name:?} contains control characters; {plain}"));
        }
        Ok(Self(name.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The type the extension claims, when it is one of ours (`.pdf`, `.png`, `.jpg`, `.jpeg`).
    fn claimed(&self) -> Option<MediaType> {
        let (_, extension) = self.0.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "pdf" => Some(MediaType::Pdf),
            "png" => Some(MediaType::Png),
            "jpg" | "jpeg" => Some(MediaType::Jpeg),
            _ => None,
        }
    }

    /// Refuses a name whose extension names another of the accepted types than the content's.
    pub(crate) fn check_against(&self, content: MediaType) -> Result<(), String> {
        match self.claimed() {
            Some(claimed) if claimed != content => Err(format!(
                "the file is named {:?} but the content is {}; rename it to .{} or send the {} it claims to be",
                self.0,
                describe(content),
                extension(content),
                short(claimed),
            )),
            _ => Ok(()),
        }
    }
}

fn describe(media_type: MediaType) -> &'static str {
    match media_type {
        MediaType::Pdf => "a PDF document",
        MediaType::Png => "a PNG image",
        MediaType::Jpeg => "a JPEG image",
    }
}

fn short(media_type: MediaType) -> &'static str {
    match media_type {
        MediaType::Pdf => "PDF",
        MediaType::Png => "PNG",
        MediaType::Jpeg => "JPEG",
    }
}

fn extension(media_type: MediaType) -> &'static str {
    match media_type {
        MediaType::Pdf => "pdf",
        MediaType::Png => "png",
        MediaType::Jpeg => "jpg",
    }
}

/// Steps 3 and 4: the blob, then the row, the audit entry and the event in one transaction.
async fn store(
    api: Api,
    user_id: Uuid,
    document_id: Uuid,
    trace: TraceContext,
    received: Received,
) -> Result<DocumentView, Problem> {
    let blob_key = format!("raw/{user_id}/{document_id}");
    let path = BlobPath::from(blob_key.as_str());
    let permit = api.storing.acquire().await.map_err(|e| Problem::internal(&e))?;
    let put = put_file(api.blobs.as_ref(), &path, received.spool.path()).await;
    drop(permit);
    if let Err(e) = put {
        error!(error = %e, %document_id, "cannot store the upload in blob storage");
        return Err(Problem::unavailable(
            "the document storage is unavailable, so the file was not accepted; retry later",
        ));
    }
    match record(&api, user_id, document_id, blob_key, trace, &received).await {
        Ok(document) => {
            info!(%document_id, %user_id, media_type = received.media_type.mime(), size = received.size, "document uploaded");
            Ok(DocumentView::from(document))
        }
        Err(problem) => {
            if let Err(e) = api.blobs.delete(&path).await {
                warn!(error = %e, %document_id, "cannot delete the blob of an upload that was not recorded");
            }
            Err(problem)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BlobError {
    #[error("reading the spool file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// Streams the file at `file` to `path` in parts; never holds more than a few parts in memory.
async fn put_file(blobs: &dyn ObjectStore, path: &BlobPath, file: &Path) -> Result<(), BlobError> {
    let upload = blobs.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    match copy_parts(&mut writer, file).await {
        Ok(()) => {
            writer.finish().await?;
            Ok(())
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                warn!(error = %abort, "cannot abort a failed blob upload");
            }
            Err(e)
        }
    }
}

async fn copy_parts(writer: &mut WriteMultipart, file: &Path) -> Result<(), BlobError> {
    let mut file = tokio::fs::File::open(file).await?;
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        writer.write(&buf[..n]);
    }
}

/// Step 4: the row, its audit entry and `DocumentUploaded`, committed together.
async fn record(
    api: &Api,
    user_id: Uuid,
    document_id: Uuid,
    blob_key: String,
    trace: TraceContext,
    received: &Received,
) -> Result<Document, Problem> {
    let now = now_millis();
    let uploaded = DocumentUploaded {
        document_id,
        user_id,
        filename: received.filename.as_str().to_owned(),
        media_type: received.media_type,
        size_bytes: received.size,
        sha256: received.sha256.clone(),
        blob_key,
    };
    let mut event = uploaded.to_event(NAME);
    event.traceparent = Some(trace.traceparent);
    let size = i64::try_from(received.size).map_err(|e| Problem::internal(&e))?;

    let mut tx = api.db.begin().await?;
    tx.execute(
        "INSERT INTO documents (id, user_id, filename, media_type, size_bytes, sha256, blob_key, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        &[
            document_id.to_string().into(),
            user_id.to_string().into(),
            uploaded.filename.as_str().into(),
            received.media_type.mime().into(),
            size.into(),
            uploaded.sha256.as_str().into(),
            uploaded.blob_key.as_str().into(),
            Status::Uploaded.as_str().into(),
            now.into(),
        ],
    )
    .await?;
    model::audit(
        tx.as_mut(),
        Audit {
            document_id,
            event_id: event.id,
            kind: DocumentUploaded::KIND,
            from: None,
            to: Status::Uploaded,
            detail: format!(
                "uploaded {:?}: {}, {} bytes, scanned clean",
                uploaded.filename,
                describe(received.media_type),
                received.size
            ),
            at: now,
        },
    )
    .await?;
    api.outbox.enqueue(tx.as_mut(), topics::DOC_UPLOADED, vec![event]).await?;
    api.outbox.commit(tx).await?;
    Ok(Document {
        id: document_id,
        user_id,
        filename: uploaded.filename,
        media_type: received.media_type,
        size_bytes: received.size,
        sha256: uploaded.sha256,
        status: Status::Uploaded,
        label: None,
        confidence: None,
        model_version: None,
        excerpt: None,
        metadata: None,
        text_chars: None,
        text_key: None,
        thumbnail_key: None,
        failure_stage: None,
        failure_reason: None,
        created_at: now,
        updated_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_must_be_plain_base_names() {
        for ok in ["report.pdf", "scan 2024-01-05.JPEG", "Rechnung März.pdf", "no-extension", ".hidden.png"] {
            assert_eq!(Filename::parse(Some(ok)).unwrap().as_str(), ok);
        }
        let long = "a".repeat(MAX_FILENAME + 1);
        let bad = [
            (None, "no filename"),
            (Some(""), "empty"),
            (Some("   "), "empty"),
            (Some("../../etc/passwd"), "path separator"),
            (Some("dir/report.pdf"), "path separator"),
            (Some("..\\..\\boot.ini"), "path separator"),
            (Some(".."), "`..`"),
            (Some("."), "`..`"),
            (Some("report..pdf"), "`..`"),
            (Some("report\0.pdf"), "control characters"),
            (Some("report\n.pdf"), "control characters"),
            (Some(long.as_str()), "at most 255"),
        ];
        for (name, expected) in bad {
            let error = Filename::parse(name).unwrap_err();
            assert!(error.contains(expected), "{name:?}: {error}");
        }
        assert!(Filename::parse(Some(&"a".repeat(MAX_FILENAME))).is_ok());
    }

    #[test]
    fn an_extension_of_ours_must_agree_with_the_content() {
        let check = |name: &str, content| Filename::parse(Some(name)).unwrap().check_against(content);
        assert!(check("report.pdf", MediaType::Pdf).is_ok());
        assert!(check("photo.JPG", MediaType::Jpeg).is_ok());
        assert!(check("photo.jpeg", MediaType::Jpeg).is_ok());
        assert!(check("scan.png", MediaType::Png).is_ok());
        // Extensions that are not ours say nothing about the content.
        assert!(check("scan.tiff", MediaType::Png).is_ok());
        assert!(check("README", MediaType::Pdf).is_ok());
        let error = check("report.pdf", MediaType::Png).unwrap_err();
        assert!(error.contains("named \"report.pdf\" but the content is a PNG image"), "{error}");
        assert!(check("photo.jpg", MediaType::Pdf).unwrap_err().contains("a PDF document"));
        assert!(check("image.png", MediaType::Jpeg).is_err());
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human(52_428_800), "50 MiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
