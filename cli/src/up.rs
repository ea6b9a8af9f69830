//! `weir up`: every service of both systems — the order pipeline and the Document Intelligence
//! Platform — in one process on the embedded default: a SQLite log for the bus, one SQLite
//! database per service, blobs in a local directory, keys (and a first classifier model)
//! generated on first run; one HTTP listener and one gRPC listener. OCR runs in separate
//! low-priority (SCHED_IDLE) worker processes — this same binary, `weir internal
//! process-document`. Ctrl-C drains and stops; a restart continues where it stopped.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use weir_core::{Kernel, Keyring, RouterOptions, pii::Sealer, store, store::outbox::Outbox};
use weir_http::{
    Tokens,
    app::{App, AppOptions},
    telemetry::{self, LogFormat},
};
use weir_store_sqlite::{LogOptions, SqliteDatabase, SqliteLog};

use crate::data_dir::DataDir;

#[derive(Args, Debug, Clone)]
#[command(after_help = "Every option can also be set with the environment variable named in brackets.\n\
Example: WEIR_DATA_DIR=/var/lib/weir weir up --listen 127.0.0.1:9000")]
pub struct UpArgs {
    /// Directory for every database, the bus and the generated keys (created on first run).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Log format: JSON lines, human-readable, or pretty when stderr is a terminal.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Auto)]
    pub log_format: LogFormatArg,
    /// Share of charges the simulated payment gateway declines (0.0–1.0).
    #[arg(long, env = "WEIR_PAYMENT_DECLINE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub payment_decline_rate: f64,
    /// Share of calls the simulated payment gateway fails with 503 (0.0–1.0).
    #[arg(long, env = "WEIR_PAYMENT_FAILURE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub payment_failure_rate: f64,
    /// Latency of the simulated payment gateway, in milliseconds.
    #[arg(long, env = "WEIR_PAYMENT_LATENCY_MS", default_value_t = 2)]
    pub payment_latency_ms: u64,
    /// Address of the simulated payment gateway (its ledger is at /v1/ledger); port 0 picks one.
    #[arg(long, env = "WEIR_PAYMENT_GATEWAY_LISTEN", default_value = "127.0.0.1:0")]
    pub payment_gateway_listen: SocketAddr,
    /// How long the saga waits for a payment before cancelling the order, in milliseconds. Above
    /// the bus's 10 s lease, an order whose charge was cut short by a crash still completes
    /// (payments gets it again once the dead process's lease expires); below it, such an order
    /// is cancelled and the charge, found at the gateway by its key, refunded.
    #[arg(long, env = "WEIR_PAYMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub payment_timeout_ms: u64,
    /// How long the saga waits for a stock reservation, in milliseconds.
    #[arg(long, env = "WEIR_STOCK_TIMEOUT_MS", default_value_t = 10_000)]
    pub stock_timeout_ms: u64,
    /// SMTP server (host:port, plain, e.g. a local relay) for email notifications; without it
    /// notifications are in-app only.
    #[arg(long, env = "WEIR_SMTP")]
    pub smtp: Option<String>,
    /// Sender address of notification emails.
    #[arg(long, env = "WEIR_SMTP_FROM", default_value = "Weir <weir@localhost>")]
    pub smtp_from: String,
    /// Requests per second each user may make (with a burst of twice as many).
    #[arg(long, env = "WEIR_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// ClamAV daemon (host:port, TCP) that scans every upload besides the built-in EICAR check;
    /// without it only the built-in check runs.
    #[arg(long, env = "WEIR_CLAMD")]
    pub clamd: Option<SocketAddr>,
    /// Address of the classification service's gRPC API (health and reflection included).
    #[arg(long, env = "WEIR_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// OCR worker processes at once (default: one per core).
    #[arg(long, env = "WEIR_OCR_WORKERS")]
    pub ocr_workers: Option<usize>,
    /// How long the bus keeps a message after it was published, in hours, once every consumer
    /// group of its topic has handled it (dead letters stay until redriven or discarded). The
    /// history `weir events tail --from-start` shows; 0 keeps only what is still unhandled.
    #[arg(long, env = "WEIR_BUS_RETENTION_HOURS", default_value_t = 24)]
    pub bus_retention_hours: u64,
    /// Fault injection for drills and tests: deliver every message twice, as a broker does when
    /// an ack is lost. Nothing may happen twice.
    #[arg(long, env = "WEIR_FAULT_DUPLICATE_DELIVERIES", hide = true)]
    pub fault_duplicate_deliveries: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Auto,
    Json,
    Pretty,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a rate: give a number from 0.0 to 1.0")),
    }
}

/// The bus's file in the data directory.
pub const BUS_FILE: &str = "bus.db";

/// How long Ctrl-C waits for in-flight work before giving up.
const DRAIN: Duration = Duration::from_secs(15);

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    return_large_allocations_to_the_os();
    telemetry::init_logging(match args.log_format {
        LogFormatArg::Auto => LogFormat::Auto,
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Pretty => LogFormat::Pretty,
    })
    .context("cannot set up logging (check WEIR_LOG)")?;
    let metrics = telemetry::install_metrics();
    let data = DataDir::open(&args.data_dir)?;
    let keys = data.keys()?;
    let keyring = Keyring::new("k1", keys.events);
    let tokens = Tokens::new(&keys.tokens, Duration::from_secs(3600));
    let sealer = Sealer::new("k1", &keys.pii);

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
    let latency = Duration::from_millis(args.payment_latency_ms);
    let gateway = weir_payments::simulator::start_simulator(
        gateway_db,
        weir_payments::simulator::SimulatorConfig {
            latency: latency..=latency,
            decline_rate: args.payment_decline_rate,
            failure_rate: args.payment_failure_rate,
        },
        args.payment_gateway_listen,
    )
    .await
    .with_context(|| format!("cannot start the simulated payment gateway on {}", args.payment_gateway_listen))?;
    let gateway_url = gateway.url();
    let provider =
        Arc::new(weir_payments::HttpProvider::new(weir_payments::HttpProviderConfig::new(gateway_url.clone()))?);

    let users =
        weir_users::Service::build(kernel("users").await?, weir_users::Config::new(tokens.clone(), sealer.clone()))
            .await?;
    let inventory =
        weir_inventory::Service::build(kernel("inventory").await?, weir_inventory::Config::default()).await?;
    let orders = weir_orders::Service::build(kernel("orders").await?, weir_orders::Config::default()).await?;
    let payments =
        weir_payments::Service::build(kernel("payments").await?, weir_payments::Config::new(provider)).await?;
    let shutdown = CancellationToken::new();
    let saga = weir_saga::Service::build(
        kernel("saga").await?,
        weir_saga::Config {
            payment_timeout: Duration::from_millis(args.payment_timeout_ms),
            stock_timeout: Duration::from_millis(args.stock_timeout_ms),
            // Keeps the saga's own, more patient retry policy.
            ..Default::default()
        },
    )
    .await?;
    // The Document Intelligence Platform: blobs in a local directory, OCR in worker processes.
    let blobs = data.blobs()?;
    let documents = weir_documents::Service::build(
        kernel("documents").await?,
        blobs.clone(),
        weir_documents::Config { clamd: args.clamd, ..weir_documents::Config::new(data.dir("spool")?) },
    )
    .await?;
    let worker = weir_processing::WorkerCommand::new(
        std::env::current_exe().context("cannot find the weir binary to start OCR workers")?,
        ["internal", "process-document"],
    );
    let mut processing_config =
        weir_processing::Config { work_dir: data.dir("work")?, ..weir_processing::Config::new(worker) };
    if let Some(workers) = args.ocr_workers {
        processing_config.workers = workers.max(1);
    }
    let processing = weir_processing::Service::build(kernel("processing").await?, blobs, processing_config).await?;
    let model_path = data.path("classifier/model.json");
    crate::classifier::ensure_model(&model_path)?;
    let classification = weir_classification::Service::build(
        kernel("classification").await?,
        weir_classification::Config {
            model_path,
            service_token: keys.grpc_token.clone(),
            router: RouterOptions::default(),
        },
    )
    .await?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen).await.with_context(|| {
        format!("cannot listen on {} for gRPC: choose another address with --grpc-listen", args.grpc_listen)
    })?;
    let grpc_url = format!("http://{}", grpc_listener.local_addr()?);
    let smtp = args.smtp.as_deref().map(|s| smtp_config(s, &args.smtp_from)).transpose()?;
    let notifications = weir_notifications::Service::build(
        kernel("notifications").await?,
        weir_notifications::Config { sealer, smtp, router: RouterOptions::default() },
    )
    .await?;

    let mut app = App::new(AppOptions {
        rate_limit: weir_http::app::RateLimit { per_second: args.rate_limit, burst: args.rate_limit * 2 },
        ..AppOptions::default()
    })
    .routes(users.routes())
    .routes(inventory.routes())
    .routes(orders.routes())
    .routes(documents.routes())
    .routes(notifications.routes());
    for (name, db) in databases {
        app = app.readiness(format!("{name} database"), move || {
            let db = db.clone();
            async move { db.query("SELECT 1", &[]).await.map(drop).map_err(|e| e.to_string()) }
        });
    }
    let app = app.build(tokens, Some(metrics));

    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {}: is another program using it? choose another address with --listen", args.listen)
    })?;
    let url = format!("http://{}", listener.local_addr()?);
    info!(%url, data_dir = %data.root().display(), "weir is up");
    eprintln!(
        "\n  Weir is up.\n  API:      {url}/v1\n  Docs:     {url}/docs\n  Metrics:  {url}/metrics\n  gRPC:     {grpc_url}  (classification; try `weir classify 'some text'`)\n  Payment gateway (simulated): {gateway_url}\n  Data:     {}\n  Press Ctrl-C to stop.\n",
        data.root().display()
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(report_process(shutdown.clone()));
    tasks.spawn(prune_bus(bus.clone(), Duration::from_secs(args.bus_retention_hours * 3600), shutdown.clone()));
    tasks.spawn(named("users", users.run(shutdown.clone())));
    tasks.spawn(named("inventory", inventory.run(shutdown.clone())));
    tasks.spawn(named("orders", orders.run(shutdown.clone())));
    tasks.spawn(named("payments", payments.run(shutdown.clone())));
    tasks.spawn(named("saga", saga.run(shutdown.clone())));
    tasks.spawn(named("notifications", notifications.run(shutdown.clone())));
    tasks.spawn(named("documents", documents.run(shutdown.clone())));
    tasks.spawn(named("processing", processing.run(shutdown.clone())));
    tasks.spawn(named("classification gRPC", classification.serve_grpc(grpc_listener, shutdown.clone())));
    tasks.spawn(named("classification", classification.run(shutdown.clone())));
    let http_stop = shutdown.clone();
    tasks.spawn(async move { weir_http::app::serve(listener, app, http_stop).await.context("the HTTP server failed") });

    let failed = tokio::select! {
        _ = stop_signal() => { info!("stopping: draining in-flight work"); None }
        Some(result) = tasks.join_next() => Some(result),
    };
    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    gateway.stop().await;
    bus.close().await;
    if drained.is_err() {
        error!("drain deadline passed; unfinished work resumes at the next start");
    }
    if let Some(result) = failed {
        let error = match result {
            Ok(Ok(())) => anyhow::anyhow!("a service stopped unexpectedly"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
        };
        return Err(error.context("weir stopped because a part of it failed"));
    }
    info!("stopped cleanly");
    Ok(())
}

async fn named<E: Into<anyhow::Error>>(
    name: &'static str,
    run: impl Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    run.await.map_err(Into::into).with_context(|| format!("the {name} service failed"))
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

/// Argon2id hashes allocate 19 MiB each, on whichever blocking thread runs them. glibc raises
/// its mmap threshold after the first such block is freed, so later blocks come from per-thread
/// arenas and stay resident after use: sixty log-ins left `weir up` at 760 MiB. A fixed 1 MiB
/// threshold keeps every large block in its own mapping, returned to the OS when freed.
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // allocates large blocks, and a refusal (return 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
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

/// Publishes the process's resident memory as `process_resident_memory_bytes` and the CPU time
/// it has used as `process_cpu_seconds_total` (user and system), once a second.
async fn report_process(shutdown: CancellationToken) -> anyhow::Result<()> {
    let page = 4096.0;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    while !shutdown.is_cancelled() {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        {
            metrics::gauge!("process_resident_memory_bytes").set(pages * page);
        }
        if let Some(cpu_ticks) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_ticks(&s)) {
            metrics::gauge!("process_cpu_seconds_total").set(cpu_ticks / ticks);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    Ok(())
}

/// User plus system time, in clock ticks, from the text of `/proc/<pid>/stat` (fields 14 and
/// 15; the command name in field 2 may hold spaces, so fields are counted after its `)`).
fn cpu_ticks(stat: &str) -> Option<f64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGTERM; stop with Ctrl-C");
            let _ = interrupt.await;
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (weir up (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 9 0 100 2000000 3000";
        assert_eq!(super::cpu_ticks(stat), Some(1801.0));
        assert_eq!(super::cpu_ticks("garbage"), None);
    }
}
