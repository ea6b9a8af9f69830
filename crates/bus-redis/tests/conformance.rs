//! The bus conformance suite against [`RedisBus`] on the machine's Redis at 127.0.0.1:6379, twice:
//! with a stable consumer name per case, which a restart (a second `open`) reuses — as a restarted
//! process of a deployment should — and with the default, a fresh name per `open`, where a
//! restarted process gets its predecessor's unsettled messages by taking them over after the
//! claim idle time. Each case gets its own key prefix, so its streams and groups are its own; its
//! keys are deleted when it ends. A missing server is a failure, never a skip.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use uuid::Uuid;
use weir_bus_redis::{Options, RedisBus};
use weir_core::bus::{Publisher, Subscriber};
use weir_testkit::bus::TransportFactory;

const URL: &str = "redis://127.0.0.1:6379";

const START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/bin/redis-server -- \
                     --bind 127.0.0.1 --port 6379";

/// How long an unsettled entry of a gone member stays put before another takes it over. Short,
/// so that the redelivery cases are quick.
const CLAIM_IDLE: Duration = Duration::from_secs(2);

struct Redis {
    prefix: String,
    /// `None`: a fresh name per `open`.
    consumer: Option<String>,
}

impl Redis {
    fn stable_name() -> Self {
        let id = Uuid::now_v7().simple();
        Self { prefix: format!("conformance-{id}"), consumer: Some(format!("member-{id}")) }
    }

    fn fresh_names() -> Self {
        Self { prefix: format!("conformance-{}", Uuid::now_v7().simple()), consumer: None }
    }
}

#[async_trait]
impl TransportFactory for Redis {
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let options = Options {
            prefix: self.prefix.clone(),
            consumer: self.consumer.clone(),
            claim_idle: CLAIM_IDLE,
            ..Options::default()
        };
        let bus = RedisBus::connect(URL, options).await.unwrap_or_else(|e| {
            panic!("cannot use Redis at {URL}: {e}\nIf it is not running, start it with:\n  {START}")
        });
        (Arc::new(bus.clone()), Arc::new(bus))
    }

    fn redelivery_after_drop(&self) -> Duration {
        // Idle for the claim time, then found by the next take-over scan (every half of it).
        CLAIM_IDLE + CLAIM_IDLE / 2
    }
}

impl Drop for Redis {
    /// Deletes the case's keys from the shared server.
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(URL) else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, format!("{}:*", self.prefix)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

mod stable_name {
    use super::*;

    weir_testkit::bus::conformance_tests!(Redis::stable_name());
}

mod fresh_names {
    use super::*;

    weir_testkit::bus::conformance_tests!(Redis::fresh_names());
}
