//! Weir's services — the order pipeline, the simulated payment gateway it charges through, and
//! the Document Intelligence Platform — and what each is built with, in one place: `weir up`
//! builds all of them in one process on the embedded default, `weir serve <service>` one of them
//! on PostgreSQL and NATS JetStream. The service code is the same; only the kernel differs.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use futures::{FutureExt as _, future::BoxFuture};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use weir_core::{Kernel, RouterOptions};

use crate::{data_dir::Keys, runtime::named};

/// One of Weir's services.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Accounts, log-in (JWT) and notification preferences.
    Users,
    /// The catalog (a small demo catalog on first start) and stock.
    Inventory,
    /// Orders: the event-sourced aggregate and its read model.
    Orders,
    /// Charges and refunds through the payment gateway.
    Payments,
    /// The order-fulfilment saga: completion, compensations, timeouts.
    Saga,
    /// One notification per order outcome or classified document: in-app, and by email with --smtp.
    Notifications,
    /// Uploads (virus-scanned, stored as blobs) and their read side.
    Documents,
    /// OCR, PDF text and thumbnails, in worker processes.
    Processing,
    /// The document classifier: consumes processed documents, and serves gRPC on --grpc-listen.
    Classification,
}

impl Service {
    pub const ALL: [Self; 9] = [
        Self::Users,
        Self::Inventory,
        Self::Orders,
        Self::Payments,
        Self::Saga,
        Self::Notifications,
        Self::Documents,
        Self::Processing,
        Self::Classification,
    ];

    /// The service's name: its consumer group, its database's name and its log field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Inventory => "inventory",
            Self::Orders => "orders",
            Self::Payments => "payments",
            Self::Saga => "saga",
            Self::Notifications => "notifications",
            Self::Documents => "documents",
            Self::Processing => "processing",
            Self::Classification => "classification",
        }
    }
}

/// Settings of the services.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// How long the saga waits for a payment before cancelling the order, in milliseconds. Above
    /// the bus's 10 s lease, an order whose charge was cut short by a crash still completes
    /// (payments gets it again once the dead process's lease expires); below it, such an order
    /// is cancelled and the charge, found at the gateway by its key, refunded.
    #[arg(long, env = "WEIR_PAYMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub payment_timeout_ms: u64,
    /// How long the saga waits for a stock reservation, in milliseconds.
    #[arg(long, env = "WEIR_STOCK_TIMEOUT_MS", default_value_t = 10_000)]
    pub stock_timeout_ms: u64,
    /// Orders that may be pending at once. Past it, `POST /v1/orders` answers 503 with
    /// `Retry-After` until the pipeline catches up, instead of accepting orders that would
    /// outwait the saga's timeouts. About a second of `weir up` at full load; behind `weir serve`,
    /// a few seconds of the throughput you measure. 0: no limit.
    #[arg(long, env = "WEIR_MAX_PENDING_ORDERS", default_value_t = 2_000)]
    pub max_pending_orders: u64,
    /// SMTP server (host:port, plain, e.g. a local relay) for email notifications; without it
    /// notifications are in-app only.
    #[arg(long, env = "WEIR_SMTP")]
    pub smtp: Option<String>,
    /// Sender address of notification emails.
    #[arg(long, env = "WEIR_SMTP_FROM", default_value = "Weir <weir@localhost>")]
    pub smtp_from: String,
    /// ClamAV daemon (host:port, TCP) that scans every upload besides the built-in EICAR check;
    /// without it only the built-in check runs.
    #[arg(long, env = "WEIR_CLAMD")]
    pub clamd: Option<SocketAddr>,
    /// OCR worker processes at once (default: one per core).
    #[arg(long, env = "WEIR_OCR_WORKERS")]
    pub ocr_workers: Option<usize>,
    /// Address of the classification service's gRPC API (health and reflection included).
    #[arg(long, env = "WEIR_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
}

/// What the services are built with besides their kernel and settings.
pub struct Shared {
    pub keys: Keys,
    /// The payment gateway's base URL; payments needs it.
    pub payment_gateway: Option<String>,
    /// Where blobs live: documents and processing must share it.
    pub blobs: PathBuf,
    /// The classifier's model file (trained on first start when missing).
    pub classifier_model: PathBuf,
    /// Documents' spool (its own: a start clears what a crash left there) and processing's
    /// scratch space.
    pub spool: PathBuf,
    pub work: PathBuf,
}

/// A built service: its HTTP routes, and the tasks that run it until shutdown.
pub struct Built {
    pub routes: OpenApiRouter,
    pub tasks: Vec<BoxFuture<'static, anyhow::Result<()>>>,
    /// The gRPC address it serves, if it does.
    pub grpc: Option<SocketAddr>,
}

/// Builds `service` on `kernel`: migrates its tables and binds its listeners; it does nothing
/// until its tasks are polled.
pub async fn build(
    service: Service,
    kernel: Kernel,
    args: &ServiceArgs,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<Built> {
    build_service(service, kernel, args, shared, shutdown)
        .await
        .with_context(|| format!("cannot start the {} service", service.name()))
}

async fn build_service(
    service: Service,
    kernel: Kernel,
    args: &ServiceArgs,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<Built> {
    let name = service.name();
    macro_rules! built {
        ($service:expr) => {{
            let service = $service.await?;
            Built { routes: service.routes(), tasks: vec![named(name, service.run(shutdown)).boxed()], grpc: None }
        }};
    }
    Ok(match service {
        Service::Users => {
            built!(weir_users::Service::build(
                kernel,
                weir_users::Config::new(shared.keys.tokens(), shared.keys.sealer())
            ))
        }
        Service::Inventory => built!(weir_inventory::Service::build(kernel, weir_inventory::Config::default())),
        Service::Orders => {
            let config = weir_orders::Config { max_pending: args.max_pending_orders, ..Default::default() };
            built!(weir_orders::Service::build(kernel, config))
        }
        Service::Payments => {
            let Some(gateway) = &shared.payment_gateway else {
                bail!("payments needs the payment gateway's URL: pass --payment-gateway-url");
            };
            let provider =
                Arc::new(weir_payments::HttpProvider::new(weir_payments::HttpProviderConfig::new(gateway.clone()))?);
            built!(weir_payments::Service::build(kernel, weir_payments::Config::new(provider)))
        }
        Service::Saga => built!(weir_saga::Service::build(
            kernel,
            weir_saga::Config {
                payment_timeout: Duration::from_millis(args.payment_timeout_ms),
                stock_timeout: Duration::from_millis(args.stock_timeout_ms),
                // Keeps the saga's own, more patient retry policy.
                ..Default::default()
            },
        )),
        Service::Notifications => {
            let smtp = args.smtp.as_deref().map(|s| smtp_config(s, &args.smtp_from)).transpose()?;
            built!(weir_notifications::Service::build(
                kernel,
                weir_notifications::Config { sealer: shared.keys.sealer(), smtp, router: RouterOptions::default() },
            ))
        }
        Service::Documents => built!(weir_documents::Service::build(
            kernel,
            blobs(&shared.blobs)?,
            weir_documents::Config { clamd: args.clamd, ..weir_documents::Config::new(directory(&shared.spool)?) },
        )),
        Service::Processing => {
            let worker = weir_processing::WorkerCommand::new(
                std::env::current_exe().context("cannot find the weir binary to start OCR workers")?,
                ["internal", "process-document"],
            );
            let mut config =
                weir_processing::Config { work_dir: directory(&shared.work)?, ..weir_processing::Config::new(worker) };
            if let Some(workers) = args.ocr_workers {
                config.workers = workers.max(1);
            }
            let service = weir_processing::Service::build(kernel, blobs(&shared.blobs)?, config).await?;
            Built { routes: OpenApiRouter::new(), tasks: vec![named(name, service.run(shutdown)).boxed()], grpc: None }
        }
        Service::Classification => {
            crate::classifier::ensure_model(&shared.classifier_model)?;
            let service = weir_classification::Service::build(
                kernel,
                weir_classification::Config {
                    model_path: shared.classifier_model.clone(),
                    service_token: shared.keys.grpc_token.clone(),
                    router: RouterOptions::default(),
                },
            )
            .await?;
            let listener = tokio::net::TcpListener::bind(args.grpc_listen).await.with_context(|| {
                format!("cannot listen on {} for gRPC: choose another address with --grpc-listen", args.grpc_listen)
            })?;
            let grpc = Some(listener.local_addr()?);
            let tasks = vec![
                named("classification gRPC", service.serve_grpc(listener, shutdown.clone())).boxed(),
                named(name, service.run(shutdown)).boxed(),
            ];
            Built { routes: OpenApiRouter::new(), tasks, grpc }
        }
    })
}

/// The blob store: a local directory (created if needed), shared by documents and processing.
fn blobs(dir: &std::path::Path) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    let store = object_store::local::LocalFileSystem::new_with_prefix(directory(dir)?)
        .with_context(|| format!("cannot use {} for blobs", dir.display()))?;
    Ok(Arc::new(store))
}

/// `dir`, created if needed.
fn directory(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// The simulated payment gateway's failure rates and latency.
#[derive(Args, Debug, Clone)]
pub struct PaymentGatewayArgs {
    /// Share of charges the simulated payment gateway declines (0.0–1.0).
    #[arg(long, env = "WEIR_PAYMENT_DECLINE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub payment_decline_rate: f64,
    /// Share of calls the simulated payment gateway fails with 503 (0.0–1.0).
    #[arg(long, env = "WEIR_PAYMENT_FAILURE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub payment_failure_rate: f64,
    /// Latency of the simulated payment gateway, in milliseconds.
    #[arg(long, env = "WEIR_PAYMENT_LATENCY_MS", default_value_t = 2)]
    pub payment_latency_ms: u64,
}

/// Starts the simulated payment gateway on `listen`, its ledger in `db`.
pub async fn start_payment_gateway(
    db: weir_core::Db,
    args: &PaymentGatewayArgs,
    listen: SocketAddr,
) -> anyhow::Result<weir_payments::simulator::Simulator> {
    let latency = Duration::from_millis(args.payment_latency_ms);
    weir_payments::simulator::start_simulator(
        db,
        weir_payments::simulator::SimulatorConfig {
            latency: latency..=latency,
            decline_rate: args.payment_decline_rate,
            failure_rate: args.payment_failure_rate,
        },
        listen,
    )
    .await
    .with_context(|| format!("cannot start the simulated payment gateway on {listen}"))
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a rate: give a number from 0.0 to 1.0")),
    }
}

fn smtp_config(address: &str, from: &str) -> anyhow::Result<weir_notifications::SmtpConfig> {
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!("--smtp {address:?} must be host:port, e.g. 127.0.0.1:2525");
    };
    let port = port.parse().with_context(|| format!("--smtp {address:?}: {port:?} is not a port number"))?;
    Ok(weir_notifications::SmtpConfig {
        host: host.to_owned(),
        port,
        from: from.to_owned(),
        timeout: Duration::from_secs(10),
    })
}
