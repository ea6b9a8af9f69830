//! What every long-running `weir` process does the same way, whether it runs every service
//! (`weir up`) or one (`weir serve`): its HTTP and log options, logging and metrics, the
//! process's own gauges, and running its tasks until Ctrl-C or SIGTERM, then draining them.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use weir_http::{
    app::{App, AppOptions, RateLimit},
    telemetry::{self, LogFormat},
};

/// The HTTP listener and the logs of a `weir` process.
#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Log format: JSON lines, human-readable, or pretty when stderr is a terminal.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Auto)]
    pub log_format: LogFormatArg,
    /// Requests per second each user may make (with a burst of twice as many).
    #[arg(long, env = "WEIR_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Auto,
    Json,
    Pretty,
}

impl ProcessArgs {
    /// Sets up logging and the Prometheus recorder (`telemetry::install_metrics` hands it out
    /// again); returns the HTTP application to add routes to.
    pub fn start(&self) -> anyhow::Result<App> {
        return_large_allocations_to_the_os();
        telemetry::init_logging(match self.log_format {
            LogFormatArg::Auto => LogFormat::Auto,
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Pretty => LogFormat::Pretty,
        })
        .context("cannot set up logging (check WEIR_LOG)")?;
        telemetry::install_metrics();
        Ok(App::new(AppOptions {
            rate_limit: RateLimit { per_second: self.rate_limit, burst: self.rate_limit * 2 },
            ..AppOptions::default()
        }))
    }

    /// Binds the HTTP listener, with an error that says what to do when the address is taken.
    pub async fn bind(&self) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.listen).await.with_context(|| {
            format!(
                "cannot listen on {}: is another program using it? choose another address with --listen",
                self.listen
            )
        })
    }
}

/// `/readyz` also asks `db` for `SELECT 1`, as the `<name> database`.
pub fn ready_when_answering(app: App, name: &str, db: weir_core::Db) -> App {
    app.readiness(format!("{name} database"), move || {
        let db = db.clone();
        async move { db.query("SELECT 1", &[]).await.map(drop).map_err(|e| e.to_string()) }
    })
}

/// How long Ctrl-C waits for in-flight work before giving up.
const DRAIN: Duration = Duration::from_secs(15);

/// Runs until Ctrl-C or SIGTERM, or until a task ends by itself; then cancels `shutdown` and
/// waits up to 15 s for every task to finish its in-flight work. A task that ended by itself
/// (failed, panicked or just stopped) is the error returned.
pub async fn supervise(mut tasks: JoinSet<anyhow::Result<()>>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let failed = tokio::select! {
        _ = stop_signal() => { info!("stopping: draining in-flight work"); None }
        Some(result) = tasks.join_next() => Some(result),
    };
    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        error!("drain deadline passed; unfinished work resumes at the next start");
    }
    match failed {
        None => Ok(()),
        Some(result) => {
            let error = match result {
                Ok(Ok(())) => anyhow::anyhow!("a service stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
            };
            Err(error.context("weir stopped because a part of it failed"))
        }
    }
}

/// A task's error names the part of the process it belongs to.
pub async fn named<E: Into<anyhow::Error>>(
    name: &'static str,
    run: impl Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    run.await.map_err(Into::into).with_context(|| format!("the {name} service failed"))
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
