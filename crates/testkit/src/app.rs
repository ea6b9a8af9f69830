//! Black-box test support for services: a [`TestWorld`] with a real durable bus (a SQLite log
//! in a temporary directory), one real database per service, the platform's keys, helpers that
//! publish contracts and wait for the events a service emits, and [`serve`] to put a service's
//! routes on a real loopback port.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use weir_contracts::Contract;
use weir_core::{
    Event, Kernel, Keyring,
    bus::{Publisher, Subscriber, Subscription},
    pii::Sealer,
    store::{self, outbox::Outbox},
};
use weir_http::Tokens;
use weir_store_sqlite::{LogOptions, SqliteDatabase, SqliteLog};

/// How long a test waits for an expected event before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A bus, keys and databases for services under test; everything lives in one temp dir.
pub struct TestWorld {
    pub dir: tempfile::TempDir,
    pub log: SqliteLog,
    pub keyring: Keyring,
    pub tokens: Tokens,
    pub sealer: Sealer,
}

impl Default for TestWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl TestWorld {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let options = LogOptions { poll_interval: Duration::from_millis(50), ..LogOptions::default() };
        let log = SqliteLog::open(dir.path().join("bus.db"), options).expect("the test bus opens");
        Self {
            dir,
            log,
            keyring: Keyring::generate("test"),
            tokens: Tokens::new(&Keyring::random_secret(), Duration::from_secs(900)),
            sealer: Sealer::new("test", &Sealer::random_key()),
        }
    }

    /// A kernel for `service`: its own database file (kernel tables installed), the shared bus.
    pub async fn kernel(&self, service: &str) -> Kernel {
        let db =
            SqliteDatabase::open(self.dir.path().join(format!("{service}.db"))).expect("the service database opens");
        store::install(&db).await.expect("kernel tables install");
        self.kernel_on(Arc::new(db))
    }

    /// A kernel whose state lives in a fresh PostgreSQL database (the distributed setup's
    /// store; kernel tables installed), on the shared bus. Fails loudly, saying how to start
    /// PostgreSQL, when it is not running.
    pub async fn postgres_kernel(&self) -> Kernel {
        self.postgres_kernel_with(weir_store_postgres::Options::default()).await
    }

    /// Like [`postgres_kernel`](Self::postgres_kernel), with pool options: a pool of one
    /// connection shows a handler that asks the database for a second one while its
    /// transaction holds the first (it waits forever where replicas share a small pool).
    pub async fn postgres_kernel_with(&self, options: weir_store_postgres::Options) -> Kernel {
        let db = weir_store_postgres::fresh_test_database_with(options).await;
        store::install(&db).await.expect("kernel tables install on PostgreSQL");
        self.kernel_on(Arc::new(db))
    }

    fn kernel_on(&self, db: Arc<dyn weir_core::db::Database>) -> Kernel {
        Kernel {
            db,
            outbox: Outbox::new(self.keyring.clone()),
            publisher: Arc::new(self.log.clone()),
            subscriber: Arc::new(self.log.clone()),
        }
    }

    /// Signs and publishes `payload` on its topic, as if `source` had emitted it.
    pub async fn publish<C: Contract>(&self, source: &str, payload: &C) -> Event {
        let event = payload.to_event(source);
        self.publish_event(C::TOPIC, event.clone()).await;
        event
    }

    /// Signs and publishes `event` on `topic`.
    pub async fn publish_event(&self, topic: &str, mut event: Event) {
        self.keyring.sign(&mut event);
        self.log.publish(topic, vec![event.to_message()]).await.expect("publish to the test bus");
    }

    /// Publishes `message` bytes as they are (for poison-message tests).
    pub async fn publish_raw(&self, topic: &str, message: weir_core::bus::Message) {
        self.log.publish(topic, vec![message]).await.expect("publish to the test bus");
    }

    /// Starts reading `topic` from its beginning as a fresh consumer group.
    pub async fn watch(&self, topic: &str) -> Watch {
        let group = format!("watch-{}", uuid::Uuid::now_v7().simple());
        Watch {
            subscription: self.log.subscribe(topic, &group).await.expect("subscribe"),
            seen: Vec::new(),
            found: Vec::new(),
        }
    }
}

/// Everything published on one topic, in order, as a test sees it.
pub struct Watch {
    subscription: Subscription,
    seen: Vec<Event>,
    /// Indexes in `seen` that an `expect` has returned: each event is found once.
    found: Vec<usize>,
}

impl Watch {
    /// Waits for the first `C` for which `accept` holds that no earlier `expect` returned —
    /// among what was read while waiting for something else, then among what arrives —
    /// failing after [`PATIENCE`]. Events of different keys arrive in either order.
    pub async fn expect<C: Contract>(&mut self, accept: impl Fn(&C) -> bool) -> (C, Event) {
        self.try_expect(PATIENCE, accept)
            .await
            .unwrap_or_else(|| panic!("no matching {} arrived within {PATIENCE:?}; saw {:?}", C::KIND, self.kinds()))
    }

    /// Like [`expect`](Self::expect) but `None` after `within` (for asserting that nothing comes).
    pub async fn try_expect<C: Contract>(
        &mut self,
        within: Duration,
        accept: impl Fn(&C) -> bool,
    ) -> Option<(C, Event)> {
        let deadline = tokio::time::Instant::now() + within;
        // What was read before this call is looked at first, then each event as it arrives.
        let mut next = 0;
        loop {
            for i in next..self.seen.len() {
                if self.found.contains(&i) {
                    continue;
                }
                if let Some(Ok(payload)) = C::decode(&self.seen[i])
                    && accept(&payload)
                {
                    self.found.push(i);
                    return Some((payload, self.seen[i].clone()));
                }
            }
            next = self.seen.len();
            let delivery = tokio::time::timeout_at(deadline, self.subscription.next()).await.ok()??;
            let event = Event::from_message(&delivery.message).expect("a well-formed event on the bus");
            delivery.ack().await.expect("ack");
            self.seen.push(event);
        }
    }

    /// Every event seen so far, in order.
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// Reads for `within` and returns everything seen (for counting duplicates).
    pub async fn drain(&mut self, within: Duration) -> &[Event] {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, self.subscription.next()).await {
            if let Ok(event) = Event::from_message(&delivery.message) {
                self.seen.push(event);
            }
            delivery.ack().await.expect("ack");
        }
        &self.seen
    }

    fn kinds(&self) -> Vec<&str> {
        self.seen.iter().map(|e| e.kind.as_str()).collect()
    }
}

/// Serves `router` on a loopback port with `tokens` installed for auth; returns its base URL
/// (`http://127.0.0.1:<port>`) and a token that stops it.
pub async fn serve(router: axum::Router, tokens: &Tokens) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let stop = CancellationToken::new();
    let app = router.layer(axum::Extension(tokens.clone()));
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
            .expect("serve");
    });
    (url, stop)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;
    use weir_contracts::{
        Currency, Money,
        orders::{OrderCancelled, OrderCompleted},
    };

    use super::*;

    /// Two outcomes of different orders may be published in either order: waiting for the
    /// second must still find the first, read while waiting for the other.
    #[tokio::test]
    async fn an_event_read_while_waiting_for_another_is_still_found() {
        let world = TestWorld::new();
        let mut orders = world.watch(weir_contracts::topics::ORDERS).await;
        let (cancelled, completed) = (Uuid::now_v7(), Uuid::now_v7());
        let user_id = Uuid::now_v7();
        world.publish("orders", &OrderCancelled { order_id: cancelled, user_id, reason: "no stock".into() }).await;
        world
            .publish("orders", &OrderCompleted { order_id: completed, user_id, total: Money::new(1, Currency::EUR) })
            .await;

        orders.expect::<OrderCompleted>(|c| c.order_id == completed).await;
        let (found, _) = orders.expect::<OrderCancelled>(|c| c.order_id == cancelled).await;
        assert_eq!(found.reason, "no stock");
        // Each is found once: nothing else is waiting.
        assert!(orders.try_expect::<OrderCancelled>(Duration::from_millis(100), |_| true).await.is_none());
        assert!(orders.try_expect::<OrderCompleted>(Duration::from_millis(100), |_| true).await.is_none());
    }
}
