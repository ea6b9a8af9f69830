//! The router suite distributed: PostgreSQL database, NATS JetStream transport.

use std::sync::Arc;

use async_trait::async_trait;
use weir_core::{Db, Publisher, Subscriber};
use weir_testkit::router::Backend;

struct Distributed;

#[async_trait]
impl Backend for Distributed {
    async fn database(&self) -> Db {
        Arc::new(weir_store_postgres::fresh_test_database().await)
    }

    async fn transport(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
        let options =
            weir_bus_nats::Options { prefix: format!("router{}", uuid::Uuid::now_v7().simple()), ..Default::default() };
        let bus = weir_bus_nats::NatsBus::connect("nats://127.0.0.1:4222", options)
            .await
            .expect("NATS JetStream at 127.0.0.1:4222 is needed; start it with scripts/services");
        (Arc::new(bus.clone()), Arc::new(bus))
    }
}

weir_testkit::router_tests!(Distributed);

/// On PostgreSQL a batching route runs one transaction at a time (its batches grow with the
/// backlog): concurrent transactions there wait on each other's row locks and deadlock, which
/// stalled the order pipeline behind `weir serve` under load. Without batching it keeps its
/// concurrency (long prepare steps, such as OCR, need it), and so does a route whose handler
/// locks contended rows: it is not batched there, whatever `batch` says.
#[tokio::test]
async fn a_batching_route_runs_one_transaction_at_a_time_on_postgresql() {
    use std::{sync::atomic::Ordering, time::Duration};
    use weir_testkit::router::{Recorder, World};
    for (batch, contended) in [(64, false), (1, false), (64, true)] {
        let mut w = World::new(&Distributed).await;
        w.options.concurrency = 8;
        w.options.batch = batch;
        let recorder = Recorder { sleep: Duration::from_millis(40), contended, ..Recorder::new(&w.output) };
        let max_running = recorder.max_running.clone();
        // Four keys, so the transport may hand out four at once.
        let events: Vec<_> = (0..24).map(|n| w.event(n)).collect();
        w.publish(&events).await;
        let running = w.start(recorder);
        assert_eq!(w.wait_for_effects(24).await.len(), 24);
        running.stop().await;
        let most = max_running.load(Ordering::SeqCst);
        if batch > 1 && !contended {
            assert_eq!(most, 1, "batch {batch}: transactions at once");
        } else {
            assert!(most > 1, "batch {batch}, contended {contended}: the route runs concurrently, saw {most}");
        }
    }
}
