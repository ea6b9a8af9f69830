//! The distributed bus of `weir serve` (and the brokers `weir bench bus` measures): a transport
//! picked by the URL's scheme (`weir-bus`), and optionally other transports for some topics
//! (`--bus-route`), so that e.g. commands go over RabbitMQ while events go over Kafka.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
pub use weir_bus::Bus;
use weir_bus::Settings;
use weir_core::bus::{Pattern, Transport};

/// Where the bus is.
#[derive(Args, Debug, Clone)]
pub struct BusArgs {
    /// The bus, by URL: `nats://HOST:4222` (NATS with JetStream), `kafka://HOST:9092[,HOST:9092]`
    /// (Kafka; on tansu add `?batch_messages=1`), `amqp://USER:PASSWORD@HOST:5672/VHOST`
    /// (RabbitMQ) or `redis://HOST:6379` (Redis Streams). Every process of a deployment uses the
    /// same.
    #[arg(long = "bus", env = "WEIR_BUS_URL", default_value = "nats://127.0.0.1:4222", alias = "nats-url")]
    pub url: String,
    /// Topics whose name matches PATTERN (`*` = any characters) go over the bus at URL instead,
    /// e.g. `--bus-route '*.commands=amqp://guest:guest@127.0.0.1:5672/%2f' --bus-route
    /// 'saga.timeouts=amqp://…'` (in the variable, separated by `;`). The first matching route
    /// wins; every process of a deployment must be given the same routes.
    #[arg(long = "bus-route", env = "WEIR_BUS_ROUTES", value_name = "PATTERN=URL", value_delimiter = ';')]
    pub routes: Vec<String>,
    /// Namespace of the bus's topics, queues and groups on every transport: the same for every
    /// process of one deployment, different for deployments sharing brokers. On Kafka the topics
    /// are `<prefix>.<topic>`; an empty prefix (Kafka only) gives the bare names (`orders`).
    #[arg(long = "bus-prefix", env = "WEIR_BUS_PREFIX", default_value = "weir", alias = "nats-prefix")]
    pub prefix: String,
}

/// Redelivery of a crashed process's unsettled messages: the embedded bus's lease, so that the
/// saga's default payment timeout outlasts it in both modes.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

impl BusArgs {
    /// Connects to the bus and every routed transport, as the process `member` (a name stable
    /// across its restarts, where a transport uses one).
    pub async fn connect(&self, member: Option<String>) -> anyhow::Result<Bus> {
        let routes = self
            .routes
            .iter()
            .map(|route| {
                let (pattern, url) = route.split_once('=').with_context(|| {
                    format!("--bus-route {route:?}: write it as PATTERN=URL, e.g. '*.commands=amqp://…'")
                })?;
                let pattern = Pattern::new(pattern).with_context(|| format!("--bus-route {route:?}: bad pattern"))?;
                anyhow::Ok((pattern, url.to_owned()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let settings = Settings { prefix: self.prefix.clone(), redelivery: ACK_WAIT, member };
        Ok(Bus::connect(&self.url, &routes, &settings).await?)
    }
}

/// One transport at `url`, without routes (its connection closes when the last clone goes).
pub async fn connect_one(url: &str, prefix: &str) -> anyhow::Result<Transport> {
    let settings = Settings { prefix: prefix.to_owned(), redelivery: ACK_WAIT, member: None };
    Ok(Bus::connect(url, &[], &settings).await?.transport)
}
