//! The distributed bus of `weir serve` and the operators' commands: a transport picked by the
//! URL's scheme, and optionally other transports for some topics (`--bus-route`), so that e.g.
//! commands go over RabbitMQ while events go over Kafka.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use weir_core::bus::{Pattern, Routed, Transport};

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
    /// process of one deployment, different for deployments sharing brokers.
    #[arg(long = "bus-prefix", env = "WEIR_BUS_PREFIX", default_value = "weir", alias = "nats-prefix")]
    pub prefix: String,
}

/// Redelivery of a crashed process's unsettled messages: the embedded bus's lease, so that the
/// saga's default payment timeout outlasts it in both modes.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// A connected bus: the transports behind it, closed together.
pub struct Bus {
    pub transport: Transport,
    connections: Vec<Connection>,
}

/// One broker connection, kept to close it.
enum Connection {
    Nats(weir_bus_nats::NatsBus),
    Kafka(weir_bus_kafka::KafkaBus),
    Rabbit(weir_bus_rabbitmq::RabbitBus),
    Redis(weir_bus_redis::RedisBus),
}

impl Bus {
    /// Connects to the bus and every routed transport; fails naming the broker to start.
    pub async fn connect(args: &BusArgs) -> anyhow::Result<Self> {
        let mut connections = Vec::new();
        let default = connect(&args.url, &args.prefix, &mut connections).await?;
        if args.routes.is_empty() {
            return Ok(Self { transport: default, connections });
        }
        let mut routed = Routed::new(default);
        for route in &args.routes {
            let (pattern, url) = route.split_once('=').with_context(|| {
                format!("--bus-route {route:?}: write it as PATTERN=URL, e.g. '*.commands=amqp://…'")
            })?;
            let pattern = Pattern::new(pattern).with_context(|| format!("--bus-route {route:?}: bad pattern"))?;
            routed = routed.route(pattern, connect(url, &args.prefix, &mut connections).await?);
        }
        Ok(Self { transport: Transport::of(routed), connections })
    }

    pub async fn close(&self) {
        for connection in &self.connections {
            match connection {
                Connection::Nats(bus) => bus.close().await,
                Connection::Kafka(bus) => bus.close().await,
                Connection::Rabbit(bus) => bus.close().await,
                Connection::Redis(bus) => bus.close(),
            }
        }
    }
}

/// One transport at `url`, without routes (its connection closes when the last clone goes).
pub async fn connect_one(url: &str, prefix: &str) -> anyhow::Result<Transport> {
    connect(url, prefix, &mut Vec::new()).await
}

async fn connect(url: &str, prefix: &str, connections: &mut Vec<Connection>) -> anyhow::Result<Transport> {
    let shown = redacted(url);
    let scheme = url.split_once("://").map(|(scheme, _)| scheme).unwrap_or_default();
    match scheme {
        "nats" | "tls" => {
            let options = weir_bus_nats::Options { ack_wait: ACK_WAIT, ..weir_bus_nats::Options::with_prefix(prefix) };
            let bus = weir_bus_nats::NatsBus::connect(url, options).await.with_context(|| {
                format!("cannot use the bus at {shown}: is nats-server running with JetStream (nats-server -js)?")
            })?;
            connections.push(Connection::Nats(bus.clone()));
            Ok(Transport::of(bus))
        }
        "kafka" => {
            let (bootstrap, query) = url["kafka://".len()..].split_once('?').unwrap_or((&url["kafka://".len()..], ""));
            let mut options = weir_bus_kafka::Options {
                session_timeout: ACK_WAIT,
                heartbeat_interval: ACK_WAIT / 10,
                ..weir_bus_kafka::Options::with_prefix(prefix)
            };
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("batch_messages", n)) => {
                        options.batch_messages =
                            Some(n.parse().with_context(|| format!("{shown}: batch_messages={n:?} is not a number"))?);
                    }
                    _ => bail!("{shown}: unknown setting {pair:?}; the one there is: batch_messages=N (1 for tansu)"),
                }
            }
            let bus = weir_bus_kafka::KafkaBus::connect(bootstrap, options).await.with_context(|| {
                format!("cannot use the bus at {shown}: is a Kafka broker running there (or tansu: scripts/tansu)?")
            })?;
            connections.push(Connection::Kafka(bus.clone()));
            Ok(Transport::of(bus))
        }
        "amqp" | "amqps" => {
            let options = weir_bus_rabbitmq::Options::with_prefix(prefix);
            let bus = weir_bus_rabbitmq::RabbitBus::connect(url, options).await.with_context(|| {
                format!("cannot use the bus at {shown}: is RabbitMQ running (rabbitmq-server -detached)?")
            })?;
            connections.push(Connection::Rabbit(bus.clone()));
            Ok(Transport::of(bus))
        }
        "redis" | "rediss" => {
            let options =
                weir_bus_redis::Options { claim_idle: ACK_WAIT, ..weir_bus_redis::Options::with_prefix(prefix) };
            let bus = weir_bus_redis::RedisBus::connect(url, options)
                .await
                .with_context(|| format!("cannot use the bus at {shown}: is redis-server (7.0 or later) running?"))?;
            connections.push(Connection::Redis(bus.clone()));
            Ok(Transport::of(bus))
        }
        _ => bail!(
            "cannot use the bus at {shown}: unknown scheme {scheme:?}; use nats://, kafka://, amqp:// or redis://"
        ),
    }
}

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => format!("{}:***@{host}", user.split(':').next().unwrap_or_default()),
        None => authority.to_owned(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{path}"),
        None => format!("{scheme}://{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redacted("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redacted("redis://:secret@host:6379"), "redis://:***@host:6379");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("kafka://a:9092,b:9092"), "kafka://a:9092,b:9092");
    }
}
