//! Weir's distributed transports behind one URL, for `weir serve`, the operators' commands and
//! the crash tests: the scheme picks the transport (`nats://` NATS JetStream, `kafka://` Kafka,
//! `amqp://` RabbitMQ, `redis://` Redis Streams), and [`Bus::connect`] can put the topics some
//! patterns match on other transports ([`weir_core::bus::Routed`]) — e.g. commands over
//! RabbitMQ, events over Kafka.

use std::time::Duration;

use weir_core::bus::{self, Pattern, Routed, Transport};

/// What every transport of a deployment is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the deployment's topics, queues and groups on every broker.
    pub prefix: String,
    /// How soon a crashed process's unsettled messages come back (NATS's ack wait, Kafka's
    /// session timeout, Redis's claim idle; RabbitMQ requeues when the connection drops).
    pub redelivery: Duration,
    /// This process's stable name as a member of its groups, where a transport uses one (Redis:
    /// a restarted process takes its own unsettled messages back at once). `None`: a fresh one.
    pub member: Option<String>,
}

/// Why a bus could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use the bus at {url}: unknown scheme {scheme:?}; use nats://, kafka://, amqp:// or redis://")]
    Scheme { url: String, scheme: String },
    #[error("cannot use the bus at {url}: {why}")]
    Setting { url: String, why: String },
    #[error("cannot use the bus at {url}: {hint}")]
    Unreachable {
        url: String,
        hint: &'static str,
        #[source]
        source: bus::Error,
    },
}

/// A connected bus: its transport (routed, when there are routes) and the broker connections
/// behind it, closed together.
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
    /// Connects to the bus at `url`, and to each route's, whose topics it then carries (the
    /// first pattern that matches a topic wins). Fails at once, naming the broker to start, when
    /// one is unreachable. URLs may hold passwords: errors show them redacted.
    pub async fn connect(url: &str, routes: &[(Pattern, String)], settings: &Settings) -> Result<Self, Error> {
        let mut connections = Vec::new();
        let default = connect(url, settings, &mut connections).await?;
        if routes.is_empty() {
            return Ok(Self { transport: default, connections });
        }
        let mut routed = Routed::new(default);
        for (pattern, url) in routes {
            routed = routed.route(pattern.clone(), connect(url, settings, &mut connections).await?);
        }
        Ok(Self { transport: Transport::of(routed), connections })
    }

    /// Closes every connection: subscriptions end, later calls fail with `Closed`.
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

async fn connect(url: &str, settings: &Settings, connections: &mut Vec<Connection>) -> Result<Transport, Error> {
    let unreachable = |hint| move |source| Error::Unreachable { url: redacted(url), hint, source };
    let prefix = settings.prefix.as_str();
    match url.split_once("://").map_or("", |(scheme, _)| scheme) {
        "nats" | "tls" => {
            let options =
                weir_bus_nats::Options { ack_wait: settings.redelivery, ..weir_bus_nats::Options::with_prefix(prefix) };
            let bus = weir_bus_nats::NatsBus::connect(url, options)
                .await
                .map_err(unreachable("is nats-server running with JetStream (nats-server -js)?"))?;
            connections.push(Connection::Nats(bus.clone()));
            Ok(Transport::of(bus))
        }
        "kafka" => {
            let (bootstrap, batch_messages) = kafka_address(url)?;
            let options = weir_bus_kafka::Options {
                session_timeout: settings.redelivery,
                heartbeat_interval: settings.redelivery / 10,
                batch_messages,
                ..weir_bus_kafka::Options::with_prefix(prefix)
            };
            let bus = weir_bus_kafka::KafkaBus::connect(bootstrap, options)
                .await
                .map_err(unreachable("is a Kafka broker running there (or tansu: scripts/tansu)?"))?;
            connections.push(Connection::Kafka(bus.clone()));
            Ok(Transport::of(bus))
        }
        "amqp" | "amqps" => {
            let (address, settings_of_url) = split_settings(url);
            let mut options = weir_bus_rabbitmq::Options::with_prefix(prefix);
            for (name, value) in settings_of_url {
                match name {
                    "queue_expiry" => options.queue_expiry = Some(Duration::from_secs(number(url, name, value)?)),
                    _ => return Err(unknown_setting(url, name, "queue_expiry=SECONDS (for tests)")),
                }
            }
            let bus = weir_bus_rabbitmq::RabbitBus::connect(address, options)
                .await
                .map_err(unreachable("is RabbitMQ running (rabbitmq-server -detached)?"))?;
            connections.push(Connection::Rabbit(bus.clone()));
            Ok(Transport::of(bus))
        }
        "redis" | "rediss" => {
            let options = weir_bus_redis::Options {
                claim_idle: settings.redelivery,
                consumer: settings.member.clone(),
                ..weir_bus_redis::Options::with_prefix(prefix)
            };
            let bus = weir_bus_redis::RedisBus::connect(url, options)
                .await
                .map_err(unreachable("is redis-server (7.0 or later) running?"))?;
            connections.push(Connection::Redis(bus.clone()));
            Ok(Transport::of(bus))
        }
        scheme => Err(Error::Scheme { url: redacted(url), scheme: scheme.to_owned() }),
    }
}

/// The bootstrap list of a `kafka://` URL and its `batch_messages` setting.
pub fn kafka_address(url: &str) -> Result<(&str, Option<u32>), Error> {
    let Some(rest) = url.strip_prefix("kafka://") else {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme).to_owned();
        return Err(Error::Scheme { url: redacted(url), scheme });
    };
    let (bootstrap, settings) = split_settings(rest);
    let mut batch_messages = None;
    for (name, value) in settings {
        match name {
            "batch_messages" => batch_messages = Some(number(url, name, value)?),
            _ => return Err(unknown_setting(url, name, "batch_messages=N (1 for tansu)")),
        }
    }
    Ok((bootstrap, batch_messages))
}

/// Weir's own settings in a URL's query (`?name=value&…`), taken off before the address goes to
/// the client.
fn split_settings(url: &str) -> (&str, impl Iterator<Item = (&str, &str)>) {
    let (address, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")));
    (address, pairs)
}

fn number<T: std::str::FromStr>(url: &str, name: &str, value: &str) -> Result<T, Error> {
    value.parse().map_err(|_| Error::Setting { url: redacted(url), why: format!("{name}={value:?} is not a number") })
}

fn unknown_setting(url: &str, name: &str, known: &str) -> Error {
    Error::Setting { url: redacted(url), why: format!("unknown setting {name:?}; there is {known}") }
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
    fn settings_come_off_the_address() {
        let (address, settings) = split_settings("amqp://guest:guest@h:5672/%2f?queue_expiry=60&x=");
        assert_eq!(address, "amqp://guest:guest@h:5672/%2f");
        assert_eq!(settings.collect::<Vec<_>>(), [("queue_expiry", "60"), ("x", "")]);
        let (address, mut settings) = split_settings("a:9092,b:9092");
        assert_eq!((address, settings.next()), ("a:9092,b:9092", None));
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redacted("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redacted("redis://:secret@host:6379"), "redis://:***@host:6379");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("kafka://a:9092,b:9092"), "kafka://a:9092,b:9092");
    }
}
