//! The processing service: the CPU-heavy stage of the Document Intelligence Platform. For each
//! `doc.uploaded` it extracts the text (Tesseract OCR for images and scanned PDF pages, the text
//! layer for the rest), makes a JPEG thumbnail of the image or first page, reads the metadata
//! (pages, pixel size, SHA-256, PDF title and author), stores the text and the thumbnail as
//! blobs and announces `document_processed` with an excerpt — or `document_failed` with a reason
//! for a document that cannot be processed.
//!
//! Every document is processed in a separate, limited worker process ([`worker`], started with
//! limits by the service): a document that crashes a parser, hangs it or makes it eat memory
//! fails alone, as `FAILED` with a reason, and the service keeps running. At most
//! [`Config::workers`] workers run at once, at low priority, so a flood of uploads saturates the
//! cores without starving anything else. The service has no HTTP API: the documents service
//! serves the results. It never reads another service's tables.

mod consume;
pub mod protocol;
mod runner;
pub mod worker;

use std::{path::PathBuf, sync::Arc, time::Duration};

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_contracts::topics;
use weir_core::{
    Kernel, Router, RouterOptions,
    db::{Migration, migrate},
};

/// The consumer group, the inbox's consumer name, the migrations' owner and the events' source.
const NAME: &str = "processing";

/// How to start a worker process: a program whose `main` is [`worker::main`] (the
/// `weir-process-worker` binary of this crate, or `weir` with its hidden worker subcommand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl WorkerCommand {
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { program: program.into(), args: args.into_iter().map(Into::into).collect() }
    }
}

/// What one document may cost before it is `FAILED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for a document, on top of the per-page allowance.
    pub timeout: Duration,
    /// Wall-clock time added per page once the page count is known (a 300 dpi page takes about
    /// a second of OCR on one core).
    pub timeout_per_page: Duration,
    /// The worker's address space (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Larger images, and PDF pages that would render larger, are refused before decoding.
    pub max_pixels: u64,
    /// PDFs with more pages are refused.
    pub max_pages: u32,
    /// The worker's nice level (0–19): OCR yields the CPU to request handling.
    pub nice: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            timeout_per_page: Duration::from_secs(10),
            memory_bytes: 2 * 1024 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_pages: 500,
            nice: 10,
        }
    }
}

impl Limits {
    /// The wall-clock limit of a document with `pages` pages (`None`: not known yet).
    pub fn deadline(&self, pages: Option<u32>) -> Duration {
        self.timeout + self.timeout_per_page * pages.unwrap_or(0)
    }

    /// The wall-clock limit of the largest document allowed.
    pub fn longest(&self) -> Duration {
        self.deadline(Some(self.max_pages))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub worker: WorkerCommand,
    pub limits: Limits,
    /// Worker processes at once; one per core saturates the CPU.
    pub workers: usize,
    /// Where each document's scratch directory is made (the downloaded file, the worker's output).
    pub work_dir: PathBuf,
    /// `attempt_timeout` must cover the longest document plus waiting for a worker slot
    /// ([`Service::build`] checks it); `concurrency` beyond `workers` only queues downloads.
    pub router: RouterOptions,
}

impl Config {
    /// Defaults: one worker per core, [`Limits::default`], the system temp dir, and router
    /// options that suit them.
    pub fn new(worker: WorkerCommand) -> Self {
        let limits = Limits::default();
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let router = RouterOptions {
            concurrency: workers * 2,
            // One document per transaction: a batch would hold each OCR result until the
            // slowest document of the batch is done.
            batch: 1,
            attempt_timeout: limits.longest() * 2,
            ..RouterOptions::default()
        };
        Self { worker, limits, workers, work_dir: std::env::temp_dir(), router }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid processing configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] weir_core::db::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The service; build it, then [`run`](Self::run) it.
pub struct Service {
    kernel: Kernel,
    blobs: Arc<dyn ObjectStore>,
    config: Config,
}

impl Service {
    /// Checks the configuration and creates or migrates the service's table; starts nothing.
    pub async fn build(kernel: Kernel, blobs: Arc<dyn ObjectStore>, config: Config) -> Result<Self> {
        if config.workers == 0 {
            return Err(Error::Config("`workers` must be at least 1".into()));
        }
        if config.router.attempt_timeout < config.limits.longest() {
            return Err(Error::Config(format!(
                "the router's attempt timeout ({:?}) is shorter than the longest document may take ({:?}); \
                 raise it or lower the limits",
                config.router.attempt_timeout,
                config.limits.longest()
            )));
        }
        if !config.work_dir.is_dir() {
            return Err(Error::Config(format!("the work directory {} does not exist", config.work_dir.display())));
        }
        migrate(kernel.db.as_ref(), NAME, &MIGRATIONS).await?;
        Ok(Self { kernel, blobs, config })
    }

    /// Consumes `doc.uploaded` and relays the outbox until `shutdown`; then drains and returns.
    /// A document in a worker when the drain deadline passes is redelivered later.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Config { worker, limits, workers, work_dir, router } = self.config;
        let handler = consume::UploadedHandler {
            db: self.kernel.db.clone(),
            blobs: self.blobs,
            runner: runner::Runner::new(worker, limits, workers),
            work_dir,
        };
        let router = Router::new(self.kernel.clone(), router).route(topics::DOC_UPLOADED, NAME, handler);
        info!(workers, "processing service running");
        self.kernel.run(router, shutdown).await.map_err(Error::from)
    }
}

/// `processed_documents`: the final outcome of each document, written with the event that
/// announces it, so a document is announced once however often it is uploaded-announced.
const MIGRATIONS: [Migration; 1] =
    [Migration { version: 1, name: "processed documents", sqlite: SCHEMA, postgres: SCHEMA }];

const SCHEMA: &str = "
CREATE TABLE processed_documents (
    document_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    reason TEXT,
    processed_at BIGINT NOT NULL
)
";
