//! `weir serve <service>`: one service in its own process, on the distributed components — its
//! own PostgreSQL database and a broker for the bus (NATS JetStream, Kafka, RabbitMQ or Redis
//! Streams, picked by the `--bus` URL; some topics over another with `--bus-route`) — with its
//! own HTTP listener (its routes, `/healthz`, `/readyz`, `/metrics`, `/docs`; classification
//! also serves gRPC). Run as many
//! processes of a service as you like: they share its database and its consumer group, so
//! the bus spreads the work over them, and one relay and one timer scheduler are active per
//! database at a time. The service code is the one `weir up` runs; only the kernel differs.

use std::{path::PathBuf, sync::Arc, sync::LazyLock};

use anyhow::Context as _;
use clap::{Args, ValueEnum, builder::PossibleValue};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_core::{Db, Kernel, store, store::outbox::Outbox};
use weir_http::{app::App, telemetry};

use crate::{
    bus::BusArgs,
    data_dir::Keys,
    runtime::{self, ProcessArgs},
    services::{self, PaymentGatewayArgs, Service, ServiceArgs, Shared},
};

#[derive(Args, Debug, Clone)]
#[command(after_help = "Every option can also be set with the environment variable named in brackets.\n\
Example (one machine, each line a terminal; run more processes of a service on other ports):\n  \
weir serve payment-gateway --listen 127.0.0.1:4100\n  \
weir serve payments --listen 127.0.0.1:8084 --payment-gateway-url http://127.0.0.1:4100\n  \
weir serve orders --listen 127.0.0.1:8083\n  \
weir serve gateway --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8083\n\
README.md (\"Scale out\") runs every service this way.")]
pub struct ServeArgs {
    /// The service this process runs.
    #[arg(value_enum)]
    pub service: Target,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The service's PostgreSQL database, created on first start when it does not exist (the
    /// user needs CREATEDB) [default: postgres://postgres@127.0.0.1:5432/weir_<service>].
    #[arg(long, env = "WEIR_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections this process opens to its database at most. PostgreSQL refuses connections
    /// beyond its `max_connections` (100 by default), which must cover every process's pool.
    #[arg(long, env = "WEIR_DATABASE_POOL", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub database_pool: u16,
    #[command(flatten)]
    pub bus: BusArgs,
    /// Directory of the deployment's files, shared by its processes on this machine: `keys/`
    /// (events, tokens, personal data; generated on first start — copy them to other machines,
    /// mode 0700), `blobs/` (documents and processing must share it: on several machines, a
    /// shared filesystem), `classifier/model.json` (trained on first start) and each documents
    /// process's upload spool.
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "weir-state")]
    pub state_dir: PathBuf,
    /// The gateway's upstreams: the base URL of every process behind it, e.g.
    /// `--upstream http://127.0.0.1:8081 --upstream http://127.0.0.1:8083` (or comma-separated).
    #[arg(long = "upstream", env = "WEIR_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// Base URL of the payment gateway payments charges through (a `weir serve payment-gateway`).
    #[arg(long, env = "WEIR_PAYMENT_GATEWAY_URL")]
    pub payment_gateway_url: Option<String>,
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub payment_gateway: PaymentGatewayArgs,
}

/// What `weir serve` runs: a service, the HTTP gateway, or the simulated payment gateway.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Service(Service),
    Gateway,
    PaymentGateway,
}

impl ValueEnum for Target {
    fn value_variants<'a>() -> &'a [Self] {
        static VARIANTS: LazyLock<Vec<Target>> = LazyLock::new(|| {
            Service::ALL.into_iter().map(Target::Service).chain([Target::Gateway, Target::PaymentGateway]).collect()
        });
        &VARIANTS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            Self::Service(service) => service.to_possible_value(),
            Self::Gateway => Some(PossibleValue::new("gateway").help(
                "One HTTP address in front of the services' processes (--upstream, once per process): routes learnt from their OpenAPI documents",
            )),
            Self::PaymentGateway => Some(
                PossibleValue::new("payment-gateway")
                    .help("The simulated external payment gateway, with its own ledger (listens on --listen)"),
            ),
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let app = args.process.start()?;
    match args.service {
        Target::Service(service) => serve_service(service, &args, app, tasks, &shutdown).await,
        Target::Gateway => {
            let keys = Keys::load_or_generate(&args.state_dir.join("keys"))?;
            let app = crate::gateway::routes(app, &args.upstreams)
                .await?
                .build(keys.tokens(), Some(telemetry::install_metrics()));
            serve_http(&args.process, app, "gateway", None, tasks, &shutdown).await
        }
        Target::PaymentGateway => {
            let db = connect("payment-gateway", args.database_url.as_deref(), args.database_pool).await?;
            let gateway = services::start_payment_gateway(db, &args.payment_gateway, args.process.listen).await?;
            info!(url = %gateway.url(), "the simulated payment gateway is up");
            println!("\n  Payment gateway (simulated): {}\n  Press Ctrl-C to stop.\n", gateway.url());
            let outcome = runtime::supervise(tasks, &shutdown).await;
            gateway.stop().await;
            outcome
        }
    }
}

/// One service on its database and the bus, with its HTTP routes.
async fn serve_service(
    service: Service,
    args: &ServeArgs,
    app: App,
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let name = service.name();
    // Stable across restarts of this process, unique among live ones: its service, host and
    // listener (a listener on port 0 is neither, so it gets a fresh name).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let listen = args.process.listen;
    let member = (listen.port() != 0).then(|| format!("{name}@{}:{listen}", host.trim()));
    let bus = args.bus.connect(member).await?;
    let db = connect(name, args.database_url.as_deref(), args.database_pool).await?;
    store::install(db.as_ref()).await.with_context(|| format!("cannot prepare the {name} database"))?;
    let keys = Keys::load_or_generate(&args.state_dir.join("keys"))?;
    let kernel = Kernel {
        db: db.clone(),
        outbox: Outbox::new(keys.keyring()),
        publisher: bus.transport.publisher.clone(),
        subscriber: bus.transport.subscriber.clone(),
    };
    let state = &args.state_dir;
    let shared = Shared {
        keys,
        payment_gateway: args.payment_gateway_url.clone(),
        blobs: state.join("blobs"),
        classifier_model: state.join("classifier/model.json"),
        // This process's own: a documents process clears its spool when it starts.
        spool: state.join("spool").join(args.process.listen.to_string().replace([':', '[', ']'], "_")),
        work: std::env::temp_dir(),
    };
    let built = services::build(service, kernel, &args.services, &shared, shutdown.clone()).await?;
    for task in built.tasks {
        tasks.spawn(task);
    }
    let app = runtime::ready_when_answering(app.routes(built.routes), name, db)
        .build(shared.keys.tokens(), Some(telemetry::install_metrics()));
    let outcome = serve_http(&args.process, app, name, built.grpc, tasks, shutdown).await;
    bus.close().await;
    outcome
}

/// Serves `app` on the process's listener beside `tasks`, until Ctrl-C or a failure.
async fn serve_http(
    process: &ProcessArgs,
    app: axum::Router,
    name: &str,
    grpc: Option<std::net::SocketAddr>,
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let listener = process.bind().await?;
    let url = format!("http://{}", listener.local_addr()?);
    info!(%url, service = name, "serving");
    let grpc = grpc.map(|addr| format!("  gRPC:     http://{addr}\n")).unwrap_or_default();
    // On stdout: the log on stderr stays one JSON object per line when it goes to a file.
    println!("\n  Weir {name} is up.\n  API:      {url}/v1\n  Docs:     {url}/docs\n{grpc}  Press Ctrl-C to stop.\n");
    let http_stop = shutdown.clone();
    tasks.spawn(async move { weir_http::app::serve(listener, app, http_stop).await.context("the HTTP server failed") });
    runtime::supervise(tasks, shutdown).await
}

/// The service's database, created on first start. The URL may hold a password: it is never
/// logged nor put in an error.
async fn connect(name: &str, url: Option<&str>, pool_size: u16) -> anyhow::Result<Db> {
    let default = format!("postgres://postgres@127.0.0.1:5432/weir_{}", name.replace('-', "_"));
    let options = weir_store_postgres::Options { pool_size: pool_size.into(), ..Default::default() };
    let db = weir_store_postgres::connect_or_create(url.unwrap_or(&default), options)
        .await
        .with_context(|| format!("cannot open the {name} database: is PostgreSQL running? check --database-url"))?;
    Ok(Arc::new(db))
}
