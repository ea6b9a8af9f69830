//! The order pipeline's services (and the simulated payment gateway they charge through) and
//! what each is built with, in one place: `weir up` builds all of them in one process on the
//! embedded default, `weir serve <service>` one of them on PostgreSQL and NATS JetStream. The
//! service code is the same; only the kernel differs.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use futures::{FutureExt as _, future::BoxFuture};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use weir_core::{Kernel, pii::Sealer};
use weir_http::Tokens;

use crate::runtime::named;

/// One service of the order pipeline.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderService {
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
    /// One notification per order outcome: in-app, and by email with --smtp.
    Notifications,
}

impl OrderService {
    pub const ALL: [Self; 6] =
        [Self::Users, Self::Inventory, Self::Orders, Self::Payments, Self::Saga, Self::Notifications];

    /// The service's name: its consumer group, its database's name and its log field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Inventory => "inventory",
            Self::Orders => "orders",
            Self::Payments => "payments",
            Self::Saga => "saga",
            Self::Notifications => "notifications",
        }
    }
}

/// Settings of the order pipeline's services.
#[derive(Args, Debug, Clone)]
pub struct OrderArgs {
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
}

/// What the services are built with besides their kernel and settings.
pub struct Shared {
    /// Issues (users) and verifies (every HTTP route) the access tokens.
    pub tokens: Tokens,
    /// Seals emails in events (users) and opens them (notifications).
    pub sealer: Sealer,
    /// The payment gateway's base URL; payments needs it.
    pub payment_gateway: Option<String>,
}

/// A built service: its HTTP routes and its consumers, which run until shutdown.
pub struct Built {
    pub routes: OpenApiRouter,
    pub run: BoxFuture<'static, anyhow::Result<()>>,
}

/// Builds `service` on `kernel`: migrates its tables; starts nothing until `run` is polled.
pub async fn build(
    service: OrderService,
    kernel: Kernel,
    args: &OrderArgs,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<Built> {
    let name = service.name();
    macro_rules! built {
        ($service:expr) => {{
            let service = $service.await.with_context(|| format!("cannot start the {name} service"))?;
            Built { routes: service.routes(), run: named(name, service.run(shutdown)).boxed() }
        }};
    }
    Ok(match service {
        OrderService::Users => {
            built!(weir_users::Service::build(
                kernel,
                weir_users::Config::new(shared.tokens.clone(), shared.sealer.clone())
            ))
        }
        OrderService::Inventory => built!(weir_inventory::Service::build(kernel, weir_inventory::Config::default())),
        OrderService::Orders => built!(weir_orders::Service::build(kernel, weir_orders::Config::default())),
        OrderService::Payments => {
            let Some(gateway) = &shared.payment_gateway else {
                bail!("payments needs the payment gateway's URL: pass --payment-gateway-url");
            };
            let provider =
                Arc::new(weir_payments::HttpProvider::new(weir_payments::HttpProviderConfig::new(gateway.clone()))?);
            built!(weir_payments::Service::build(kernel, weir_payments::Config::new(provider)))
        }
        OrderService::Saga => built!(weir_saga::Service::build(
            kernel,
            weir_saga::Config {
                payment_timeout: Duration::from_millis(args.payment_timeout_ms),
                stock_timeout: Duration::from_millis(args.stock_timeout_ms),
                ..Default::default()
            },
        )),
        OrderService::Notifications => {
            let smtp = args.smtp.as_deref().map(|s| smtp_config(s, &args.smtp_from)).transpose()?;
            built!(weir_notifications::Service::build(
                kernel,
                weir_notifications::Config {
                    sealer: shared.sealer.clone(),
                    smtp,
                    router: weir_core::RouterOptions::default()
                },
            ))
        }
    })
}

/// The simulated payment gateway's failure rates and latency.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
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
pub async fn start_gateway(
    db: weir_core::Db,
    args: &GatewayArgs,
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
