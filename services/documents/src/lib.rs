//! The documents service: the upload side of the Document Intelligence Platform
//! (ARCHITECTURE.md describes the flow).
//!
//! `POST /v1/documents` takes one file as multipart/form-data and streams it to a spool file
//! while counting, hashing, sniffing its type from its magic bytes and scanning it for viruses
//! ([`scan`]), then streams it to blob storage at `raw/{user}/{document}` (any
//! [`object_store::ObjectStore`]) and records it — the `documents` row, its first audit entry
//! and `doc.uploaded` — in one transaction ([`upload`]). The upload history and each
//! document's state (`GET /v1/documents[/{id}[/thumbnail|/text|/events]]`, [`api`]) are a read
//! model in this service's own database, kept from `doc.processed` and `doc.classified`
//! ([`consume`]); so uploads and reads stay fast however far behind processing is.
//!
//! It does not process or classify documents, and never reads another service's tables.

mod api;
mod consume;
mod model;
mod scan;
mod upload;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa_axum::router::OpenApiRouter;
use weir_contracts::topics;
use weir_core::{
    Kernel, Router, RouterOptions,
    db::{Migration, migrate},
};

pub use api::{AuditEntry, DocumentPage, DocumentSummary, DocumentView, MetadataView};
pub use model::Status;

/// The consumer group of both subscriptions, the inbox's consumer name, the events' source and
/// the migrations' owner.
const NAME: &str = "documents";

/// The default upload limit: 50 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// The suffix of spool files, so that [`Service::build`] can clear those a crash left behind.
const SPOOL_SUFFIX: &str = ".upload";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where uploads are spooled while they arrive; this process's own (files ending in
    /// `.upload` there are deleted at start).
    pub spool_dir: PathBuf,
    /// The largest file accepted, in bytes; one more is a 413. Default 50 MiB.
    pub max_bytes: u64,
    /// ClamAV's `clamd` (TCP). When set, every upload is also scanned there, and an unreachable
    /// clamd refuses uploads (503) rather than letting them in unscanned.
    pub clamd: Option<SocketAddr>,
    pub router: RouterOptions,
}

impl Config {
    /// The defaults: 50 MiB, no clamd, the router's default options.
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            spool_dir: spool_dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            clamd: None,
            router: RouterOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spool directory {path} is unusable: {source}")]
    Spool { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Db(#[from] weir_core::db::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The service; build it, mount its [`routes`](Self::routes), then [`run`](Self::run) it.
pub struct Service {
    kernel: Kernel,
    blobs: Arc<dyn ObjectStore>,
    config: Config,
}

impl Service {
    /// Creates or migrates the service's tables and prepares the spool directory; starts nothing.
    pub async fn build(kernel: Kernel, blobs: Arc<dyn ObjectStore>, config: Config) -> Result<Self> {
        prepare_spool(&config.spool_dir)
            .await
            .map_err(|source| Error::Spool { path: config.spool_dir.clone(), source })?;
        migrate(kernel.db.as_ref(), NAME, &MIGRATIONS).await?;
        Ok(Self { kernel, blobs, config })
    }

    /// `POST /v1/documents`, `GET /v1/documents`, `GET /v1/documents/{id}` and its `/thumbnail`,
    /// `/text` and `/events`.
    pub fn routes(&self) -> OpenApiRouter {
        api::routes(api::Api::new(
            self.kernel.db.clone(),
            self.kernel.outbox.clone(),
            self.blobs.clone(),
            upload::Limits { spool_dir: self.config.spool_dir.clone(), max_bytes: self.config.max_bytes },
            self.config.clamd,
        ))
    }

    /// Keeps the read model from `doc.processed` and `doc.classified` and relays the outbox
    /// (`doc.uploaded`) until `shutdown`; then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let router = Router::new(self.kernel.clone(), self.config.router.clone())
            .route(topics::DOC_PROCESSED, NAME, consume::ProcessedHandler)
            .route(topics::DOC_CLASSIFIED, NAME, consume::ClassifiedHandler);
        match self.config.clamd {
            Some(clamd) => info!(%clamd, "documents service running; uploads are also scanned by clamd"),
            None => info!("documents service running; uploads are scanned for the EICAR signature only"),
        }
        self.kernel.run(router, shutdown).await.map_err(Error::from)
    }
}

/// Creates the spool directory and deletes the spool files a crash left behind.
async fn prepare_spool(dir: &std::path::Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_name().to_string_lossy().ends_with(SPOOL_SUFFIX) {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => info!(path = %entry.path().display(), "deleted a spool file left by an earlier run"),
                Err(e) => warn!(path = %entry.path().display(), error = %e, "cannot delete an old spool file"),
            }
        }
    }
    Ok(())
}

/// `documents`: one row per accepted upload, with what processing and classification said
/// (NULL until they say it). `document_events`: the audit log, one row per state change.
const MIGRATIONS: [Migration; 1] =
    [Migration { version: 1, name: "documents, document_events", sqlite: schema::SQLITE, postgres: schema::POSTGRES }];

/// The schema, written once with the one type that differs between the dialects.
mod schema {
    macro_rules! schema {
        ($real:literal) => {
            concat!(
                "CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    status TEXT NOT NULL,
    label TEXT,
    confidence ",
                $real,
                ",
    model_version TEXT,
    excerpt TEXT,
    metadata TEXT,
    text_chars BIGINT,
    text_key TEXT,
    thumbnail_key TEXT,
    failure_stage TEXT,
    failure_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX documents_by_user ON documents (user_id, id);
CREATE TABLE document_events (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX document_events_by_document ON document_events (document_id, id)"
            )
        };
    }
    pub(super) const SQLITE: &str = schema!("REAL");
    pub(super) const POSTGRES: &str = schema!("DOUBLE PRECISION");
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
