//! `weir up`: every service of both systems — the order pipeline and the Document Intelligence
//! Platform — in one process on the embedded default: a SQLite log for the bus, one SQLite
//! database per service, blobs in a local directory, keys (and a first classifier model)
//! generated on first run; one HTTP listener and one gRPC listener. OCR runs in separate
//! low-priority (SCHED_IDLE) worker processes — this same binary, `weir internal
//! process-document`. Ctrl-C drains and stops; a restart continues where it stopped.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_core::{Kernel, store, store::outbox::Outbox};
use weir_http::telemetry;
use weir_store_sqlite::{LogOptions, SqliteDatabase, SqliteLog};

use crate::{
    data_dir::DataDir,
    runtime::{self, ProcessArgs},
    services::{self, PaymentGatewayArgs, Service, ServiceArgs, Shared, start_payment_gateway},
};

#[derive(Args, Debug, Clone)]
#[command(after_help = "Every option can also be set with the environment variable named in brackets.\n\
Example: WEIR_DATA_DIR=/var/lib/weir weir up --listen 127.0.0.1:9000")]
pub struct UpArgs {
    /// Directory for every database, the bus and the generated keys (created on first run).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub payment_gateway: PaymentGatewayArgs,
    /// Address of the simulated payment gateway (its ledger is at /v1/ledger); port 0 picks one.
    #[arg(long, env = "WEIR_PAYMENT_GATEWAY_LISTEN", default_value = "127.0.0.1:0")]
    pub payment_gateway_listen: SocketAddr,
    /// How long the bus keeps a message after it was published, in hours, once every consumer
    /// group of its topic has handled it (dead letters stay until redriven or discarded). The
    /// history `weir events tail --from-start` shows; 0 keeps only what is still unhandled.
    #[arg(long, env = "WEIR_BUS_RETENTION_HOURS", default_value_t = 24)]
    pub bus_retention_hours: u64,
    /// Fault injection for drills and tests: deliver every message twice, as a broker does when
    /// an ack is lost. Nothing may happen twice.
    #[arg(long, env = "WEIR_FAULT_DUPLICATE_DELIVERIES", hide = true)]
    pub fault_duplicate_deliveries: bool,
    #[command(flatten)]
    pub services: ServiceArgs,
}

/// The bus's file in the data directory.
pub const BUS_FILE: &str = "bus.db";

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut app = args.process.start()?;
    let data = DataDir::open(&args.data_dir)?;
    let keys = data.keys()?;
    let keyring = keys.keyring();

    let bus = SqliteLog::open(data.path(BUS_FILE), LogOptions::default())
        .with_context(|| format!("cannot open the bus at {}", data.path(BUS_FILE).display()))?;
    let subscriber: Arc<dyn weir_core::Subscriber> = if args.fault_duplicate_deliveries {
        tracing::warn!("fault injection: every message is delivered twice");
        Arc::new(weir_core::fault::DuplicateDeliveries::new(Arc::new(bus.clone())))
    } else {
        Arc::new(bus.clone())
    };
    let mut databases = Vec::new();
    let mut kernel = async |name: &str| -> anyhow::Result<Kernel> {
        let path = data.path(&format!("{name}.db"));
        let db = SqliteDatabase::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        store::install(&db).await.with_context(|| format!("cannot prepare {}", path.display()))?;
        let db: weir_core::Db = Arc::new(db);
        databases.push((name.to_owned(), db.clone()));
        Ok(Kernel {
            db,
            outbox: Outbox::new(keyring.clone()),
            publisher: Arc::new(bus.clone()),
            subscriber: subscriber.clone(),
        })
    };

    // The simulated external payment gateway: its own durable ledger, reached over loopback HTTP.
    let gateway_db: weir_core::Db = Arc::new(SqliteDatabase::open(data.path("gateway.db"))?);
    let gateway = start_payment_gateway(gateway_db, &args.payment_gateway, args.payment_gateway_listen).await?;
    let gateway_url = gateway.url();

    // Every service. Blobs in a local directory, OCR in worker processes.
    let shared = Shared {
        keys,
        payment_gateway: Some(gateway_url.clone()),
        blobs: data.path("blobs"),
        classifier_model: data.path("classifier/model.json"),
        spool: data.path("spool"),
        work: data.path("work"),
    };
    let mut grpc = None;
    for service in Service::ALL {
        let built =
            services::build(service, kernel(service.name()).await?, &args.services, &shared, shutdown.clone()).await?;
        app = app.routes(built.routes);
        grpc = grpc.or(built.grpc);
        for task in built.tasks {
            tasks.spawn(task);
        }
    }
    let grpc_url = grpc.map_or_else(String::new, |addr| format!("http://{addr}"));

    for (name, db) in databases {
        app = runtime::ready_when_answering(app, &name, db);
    }
    let app = app.build(shared.keys.tokens(), Some(telemetry::install_metrics()));

    let listener = args.process.bind().await?;
    let url = format!("http://{}", listener.local_addr()?);
    info!(%url, data_dir = %data.root().display(), "weir is up");
    // On stdout: the log on stderr stays one JSON object per line when it goes to a file.
    println!(
        "\n  Weir is up.\n  API:      {url}/v1\n  Docs:     {url}/docs\n  Metrics:  {url}/metrics\n  gRPC:     {grpc_url}  (classification; try `weir classify 'some text'`)\n  Payment gateway (simulated): {gateway_url}\n  Data:     {}\n  Press Ctrl-C to stop.\n",
        data.root().display()
    );

    tasks.spawn(prune_bus(bus.clone(), Duration::from_secs(args.bus_retention_hours * 3600), shutdown.clone()));
    let http_stop = shutdown.clone();
    tasks.spawn(async move { weir_http::app::serve(listener, app, http_stop).await.context("the HTTP server failed") });

    let outcome = runtime::supervise(tasks, &shutdown).await;
    gateway.stop().await;
    bus.close().await;
    outcome?;
    info!("stopped cleanly");
    Ok(())
}

/// How often the bus deletes what it no longer needs to keep (the first time soon after start).
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Deletes the bus's messages older than `retention` that every group has handled, now and
/// then, so that the bus file stops growing.
async fn prune_bus(bus: SqliteLog, retention: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut wait = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        wait = PRUNE_EVERY;
        match bus.prune(retention).await {
            Ok(0) => {}
            Ok(deleted) => {
                info!(deleted, "pruned the bus");
                metrics::counter!("weir_bus_pruned_total").increment(deleted);
            }
            Err(e) => warn!(error = %e, "pruning the bus failed; it is tried again later"),
        }
    }
}
