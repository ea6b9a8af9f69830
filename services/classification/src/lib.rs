//! The classification service (ARCHITECTURE.md, the Document Intelligence Platform, step 3): a trained text classifier
//! ([`weir_classifier`]) served two ways.
//!
//! - **gRPC** ([`grpc`], `proto/classifier.proto`): unary `Classify`, server-streaming
//!   `ClassifySections`, client-streaming `ClassifyBatch` and bidirectional `ClassifyStream`,
//!   behind a trace-context and a service-token interceptor ([`intercept`]), with gRPC health
//!   and reflection. [`client::connect`] is the matching client.
//! - **The bus** ([`Service::run`]): `doc.processed` → classify the excerpt → `doc.classified`,
//!   once per document (the router's inbox), through the outbox.
//!
//! The model is a file ([`Config::model_path`]); a new file is swapped in while the service
//! runs ([`weir_classifier::SharedModel`]), so retraining needs no restart. The service owns no
//! tables: its only state is the model, and its inbox and outbox are the kernel's.

pub mod client;
mod consume;
pub mod grpc;
pub mod intercept;
mod sections;

use std::{future::Future, path::PathBuf, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_classifier::SharedModel;
use weir_contracts::topics;
use weir_core::{Kernel, Router, RouterOptions};

pub use grpc::Limits;

/// The generated protobuf types and gRPC stubs of `weir.classifier.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("weir.classifier.v1");

    /// The encoded file descriptor set of `classifier.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("classifier_descriptor");
}

/// The consumer group, the inbox's consumer name.
const NAME: &str = "classification";

#[derive(Debug, Clone)]
pub struct Config {
    /// The model file (`weir classifier train` writes it); it must exist when the service is
    /// built, and it is watched for replacements.
    pub model_path: PathBuf,
    /// The token gRPC callers send as `authorization: Bearer <token>` (visible ASCII).
    pub service_token: String,
    pub router: RouterOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] weir_classifier::Error),
    #[error("the service token must be non-empty and visible ASCII (no spaces): set another token")]
    InvalidToken,
    #[error("{0:?} is not a gRPC server URL such as http://127.0.0.1:50051")]
    InvalidUrl(String),
    #[error("cannot reach the classification service at {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("the gRPC listener is unusable: {0}")]
    Listen(String),
    #[error("the reflection service cannot be built: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
    #[error("gRPC call failed: {}", .0.message())]
    Call(#[from] tonic::Status),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The service; [`build`](Self::build) it, then [`serve_grpc`](Self::serve_grpc) and
/// [`run`](Self::run) it.
pub struct Service {
    kernel: Kernel,
    config: Config,
    model: SharedModel,
    limits: Limits,
    model_poll: Duration,
}

impl Service {
    /// Loads the model; fails if the file is missing or unusable (train one first) or the
    /// token is unusable. Starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        if intercept::ServiceToken::new(&config.service_token).is_none() {
            return Err(Error::InvalidToken);
        }
        let path = config.model_path.clone();
        let model = tokio::task::spawn_blocking(move || SharedModel::load(path))
            .await
            .map_err(|e| Error::Unexpected(format!("the model loader failed: {e}")))??;
        if let Some(current) = model.current() {
            info!(version = current.version(), path = %config.model_path.display(), "classifier model loaded");
        }
        Ok(Self { kernel, config, model, limits: Limits::default(), model_poll: weir_classifier::POLL_INTERVAL })
    }

    /// Replaces the gRPC limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How often [`run`](Self::run) looks for a new model file (default 1 s).
    pub fn with_model_poll(mut self, interval: Duration) -> Self {
        self.model_poll = interval;
        self
    }

    /// The model in use (shared with the running service).
    pub fn model(&self) -> &SharedModel {
        &self.model
    }

    /// Serves the gRPC API on `listener` until `shutdown` (see [`grpc::serve`]). The returned
    /// future owns what it needs, so it can be spawned before [`run`](Self::run) takes the
    /// service; models swapped in by `run`'s watcher are served at once.
    pub fn serve_grpc(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (model, token, limits) = (self.model.clone(), self.config.service_token.clone(), self.limits.clone());
        async move { grpc::serve(model, &token, limits, listener, shutdown).await }
    }

    /// Consumes `doc.processed`, relays the outbox and watches the model file until
    /// `shutdown`; then drains the consumer and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let watcher_stop = shutdown.child_token();
        let watcher = tokio::spawn({
            let (model, poll, stop) = (self.model.clone(), self.model_poll, watcher_stop.clone());
            async move { model.watch_every(poll, stop).await }
        });
        let router = Router::new(self.kernel.clone(), self.config.router.clone()).route(
            topics::DOC_PROCESSED,
            NAME,
            consume::ProcessedHandler { model: self.model.clone() },
        );
        info!("classification service running");
        let routed = self.kernel.run(router, shutdown).await;
        watcher_stop.cancel();
        let _ = watcher.await;
        routed.map_err(Error::from)
    }
}
