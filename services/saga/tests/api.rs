//! Black-box tests of the saga service: it runs on a real bus and database (TestWorld), and the
//! tests play orders, payments and inventory by publishing their events and watching the
//! commands the saga sends on `orders.commands`, `payments.commands` and `inventory.commands`.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    CancelOrder, CompleteOrder, Contract, Currency, LineItem, Money, OrderCreated, PaymentFailed, PaymentRefunded,
    PaymentSuccessful, PricedLine, RefundPayment, ReleaseStock, SagaTimedOut, StockReleased, StockReserved,
    StockUnavailable, topics,
};
use weir_core::Event;
use weir_saga::{Config, Service};
use weir_testkit::app::{PATIENCE, TestWorld, Watch};

/// Long enough for the saga to handle an input on a busy machine: used where a test asserts
/// that something does *not* happen.
const QUIET: Duration = Duration::from_millis(800);

/// A running saga service.
struct Saga {
    service: Service,
    db: weir_core::Db,
    stop: CancellationToken,
    task: JoinHandle<weir_saga::Result<()>>,
}

/// Where the saga keeps its state.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    /// The distributed setup's store.
    Postgres,
}

impl Saga {
    async fn start(world: &TestWorld, config: Config) -> Self {
        Self::start_on(world, config, Store::Sqlite).await
    }

    async fn start_on(world: &TestWorld, config: Config, store: Store) -> Self {
        let kernel = match store {
            Store::Sqlite => world.kernel("saga").await,
            Store::Postgres => world.postgres_kernel().await,
        };
        let db = kernel.db.clone();
        let service = Service::build(kernel, config).await.expect("the saga service builds");
        let stop = CancellationToken::new();
        let task = tokio::spawn(service.clone().run(stop.clone()));
        Self { service, db, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the saga task does not panic").expect("the saga stops cleanly");
    }

    async fn state(&self, order_id: Uuid) -> Option<String> {
        self.service.state_of(order_id).await.expect("state_of reads the saga")
    }

    /// Durable timers still pending in the saga's database (answered steps must cancel theirs).
    async fn pending_timers(&self) -> i64 {
        let rows = self.db.query("SELECT COUNT(*) FROM weir_timers", &[]).await.expect("the timers table reads");
        rows[0].i64(0).expect("a count")
    }

    /// Polls until `order_id`'s saga is in `want`.
    async fn wait_for_state(&self, order_id: Uuid, want: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let state = self.state(order_id).await;
            if state.as_deref() == Some(want) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga of {order_id} never reached {want}; it is {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn timeouts(payment: Duration, stock: Duration) -> Config {
    Config { payment_timeout: payment, stock_timeout: stock, ..Config::default() }
}

fn eur(cents: i64) -> Money {
    Money::new(cents, Currency::EUR)
}

fn order_created(order_id: Uuid) -> OrderCreated {
    let product_id = Uuid::now_v7();
    OrderCreated {
        order_id,
        user_id: Uuid::now_v7(),
        items: vec![PricedLine { product_id, quantity: 2, unit_price: eur(500) }],
        total: eur(1000),
    }
}

fn payment_successful(order_id: Uuid) -> PaymentSuccessful {
    PaymentSuccessful {
        order_id,
        payment_id: format!("pay-{order_id}"),
        amount: eur(1000),
        items: vec![LineItem { product_id: Uuid::now_v7(), quantity: 2 }],
    }
}

fn stock_reserved(order_id: Uuid) -> StockReserved {
    StockReserved { order_id, items: vec![LineItem { product_id: Uuid::now_v7(), quantity: 2 }] }
}

fn payment_refunded(order_id: Uuid) -> PaymentRefunded {
    PaymentRefunded { order_id, amount: eur(1000) }
}

/// The three command topics the saga writes to.
struct Commands {
    orders: Watch,
    payments: Watch,
    inventory: Watch,
}

impl Commands {
    async fn watch(world: &TestWorld) -> Self {
        Self {
            orders: world.watch(topics::ORDER_COMMANDS).await,
            payments: world.watch(topics::PAYMENT_COMMANDS).await,
            inventory: world.watch(topics::INVENTORY_COMMANDS).await,
        }
    }

    /// Reads every topic for a quiet while; returns how many events of each kind carry `order_id`.
    async fn drain_counts(&mut self, order_id: Uuid) -> Vec<(String, usize)> {
        let (orders, payments, inventory) =
            tokio::join!(self.orders.drain(QUIET), self.payments.drain(QUIET), self.inventory.drain(QUIET));
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for event in orders.iter().chain(payments).chain(inventory) {
            if event.subject == order_id.to_string() {
                *counts.entry(event.kind.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

fn counts(expected: &[(&str, usize)]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    v.sort();
    v
}

/// Takes `order_id` through payment and stock to its `complete_order` command, checking that
/// each step's deadline replaces the last; returns the reservation and the command's event.
async fn complete(world: &TestWorld, saga: &Saga, commands: &mut Commands, order_id: Uuid) -> (Event, Event) {
    world.publish("orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    assert_eq!(saga.pending_timers().await, 1, "the payment step has a deadline");
    world.publish("payments", &payment_successful(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_stock").await;
    assert_eq!(saga.pending_timers().await, 1, "the stock step's deadline replaces the payment one");
    let reserved = world.publish("inventory", &stock_reserved(order_id)).await;
    let (complete, event) = commands.orders.expect::<CompleteOrder>(|c| c.order_id == order_id).await;
    assert_eq!(complete, CompleteOrder { order_id });
    (reserved, event)
}

#[tokio::test]
async fn the_happy_path_completes_the_order_and_cancels_its_timers() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    let (reserved, event) = complete(&world, &saga, &mut commands, order_id).await;
    assert_eq!(event.source, "saga");
    assert_eq!(event.causation_id, Some(reserved.id), "the command is a reply to the reservation");
    assert_eq!(event.correlation_id, reserved.correlation_id, "the command keeps the trace");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("completed"));
    assert_eq!(saga.pending_timers().await, 0, "completing cancels the stock deadline");
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("complete_order", 1)]));
    saga.stop().await;
}

/// The saga on PostgreSQL: its state with optimistic concurrency, the step timer replaced from
/// one step to the next and cancelled at the end, and a durable timer that fires.
#[tokio::test]
async fn the_saga_completes_and_times_out_on_postgresql() {
    let world = TestWorld::new();
    let saga =
        Saga::start_on(&world, timeouts(Duration::from_secs(10), Duration::from_millis(300)), Store::Postgres).await;
    let mut commands = Commands::watch(&world).await;
    let (completes, times_out) = (Uuid::now_v7(), Uuid::now_v7());

    complete(&world, &saga, &mut commands, completes).await;
    assert_eq!(saga.pending_timers().await, 0, "completing cancels the stock deadline");

    // Inventory never answers this one: the stock deadline fires and compensation starts.
    world.publish("orders", &order_created(times_out)).await;
    saga.wait_for_state(times_out, "awaiting_payment").await;
    world.publish("payments", &payment_successful(times_out)).await;
    commands.inventory.expect::<ReleaseStock>(|c| c.order_id == times_out).await;
    world.publish("inventory", &StockReleased { order_id: times_out, released: false }).await;
    let (refund, _) = commands.payments.expect::<RefundPayment>(|c| c.order_id == times_out).await;
    assert_eq!(refund.reason, "stock reservation timed out");
    world.publish("payments", &payment_refunded(times_out)).await;
    commands.orders.expect::<CancelOrder>(|c| c.order_id == times_out).await;
    saga.wait_for_state(times_out, "cancelled").await;
    assert_eq!(commands.drain_counts(completes).await, counts(&[("complete_order", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn a_failed_payment_cancels_the_order_with_nothing_to_compensate() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    world.publish("orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    world.publish("payments", &PaymentFailed { order_id, reason: "card declined".into() }).await;

    let (cancel, _) = commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(cancel.reason, "payment declined: card declined");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));
    assert_eq!(saga.pending_timers().await, 0, "the payment deadline is cancelled");
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn unavailable_stock_refunds_the_payment_then_cancels() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    world.publish("orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    world.publish("payments", &payment_successful(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_stock").await;
    world.publish("inventory", &StockUnavailable { order_id, reason: "sold out".into() }).await;

    let (refund, _) = commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    assert_eq!(refund.reason, "out of stock: sold out");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("compensating"));
    assert_eq!(saga.pending_timers().await, 0, "the stock deadline is cancelled; compensations have none");
    // The order is cancelled only once the refund is confirmed.
    assert!(commands.orders.try_expect::<CancelOrder>(QUIET, |c| c.order_id == order_id).await.is_none());

    world.publish("payments", &payment_refunded(order_id)).await;
    let (cancel, _) = commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(cancel.reason, "out of stock: sold out");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1), ("refund_payment", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn a_payment_timeout_voids_the_payment_then_cancels() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, timeouts(Duration::from_millis(300), Duration::from_secs(10))).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    world.publish("orders", &order_created(order_id)).await;
    // Payments never answers.
    let (refund, refund_event) = commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    assert_eq!(refund.reason, "payment timed out");
    assert_eq!(refund_event.source, "saga");
    assert!(commands.orders.try_expect::<CancelOrder>(QUIET, |c| c.order_id == order_id).await.is_none());

    world.publish("payments", &payment_refunded(order_id)).await;
    let (cancel, _) = commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(cancel.reason, "payment timed out");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1), ("refund_payment", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn a_stock_timeout_releases_stock_then_refunds_then_cancels_in_that_order() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, timeouts(Duration::from_secs(10), Duration::from_millis(300))).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    world.publish("orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    world.publish("payments", &payment_successful(order_id)).await;
    // Inventory never answers.
    let (release, _) = commands.inventory.expect::<ReleaseStock>(|c| c.order_id == order_id).await;
    assert_eq!(release, ReleaseStock { order_id });
    // Reverse order: the refund waits for the release to be confirmed.
    assert!(commands.payments.try_expect::<RefundPayment>(QUIET, |c| c.order_id == order_id).await.is_none());

    world.publish("inventory", &StockReleased { order_id, released: false }).await;
    let (refund, _) = commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    assert_eq!(refund.reason, "stock reservation timed out");
    assert!(commands.orders.try_expect::<CancelOrder>(QUIET, |c| c.order_id == order_id).await.is_none());

    world.publish("payments", &payment_refunded(order_id)).await;
    let (cancel, _) = commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(cancel.reason, "stock reservation timed out");
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));
    assert_eq!(
        commands.drain_counts(order_id).await,
        counts(&[("cancel_order", 1), ("refund_payment", 1), ("release_stock", 1)])
    );
    saga.stop().await;
}

#[tokio::test]
async fn late_inputs_after_a_timeout_cancel_emit_nothing_but_a_late_reservation_is_released_once() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, timeouts(Duration::from_millis(300), Duration::from_secs(10))).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    world.publish("orders", &order_created(order_id)).await;
    commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    world.publish("payments", &payment_refunded(order_id)).await;
    commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;

    // The charge answers after the saga gave up, a stale timer fires, the refund is confirmed
    // twice: none of it is news.
    world.publish("payments", &payment_successful(order_id)).await;
    world.publish("payments", &PaymentFailed { order_id, reason: "too late".into() }).await;
    world.publish("payments", &payment_refunded(order_id)).await;
    world.publish("saga", &SagaTimedOut { order_id, step: "payment".into() }).await;
    world.publish("saga", &SagaTimedOut { order_id, step: "stock".into() }).await;
    world.publish("orders", &order_created(order_id)).await;
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1), ("refund_payment", 1)]));
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));

    // Inventory reserved on the late `payment_successful`: the saga gives the stock back, once.
    world.publish("inventory", &stock_reserved(order_id)).await;
    world.publish("inventory", &stock_reserved(order_id)).await;
    let (release, _) = commands.inventory.expect::<ReleaseStock>(|c| c.order_id == order_id).await;
    assert_eq!(release, ReleaseStock { order_id });
    assert_eq!(
        commands.drain_counts(order_id).await,
        counts(&[("cancel_order", 1), ("refund_payment", 1), ("release_stock", 1)])
    );
    assert_eq!(saga.state(order_id).await.as_deref(), Some("cancelled"));
    saga.stop().await;
}

/// Publishes `payload` twice as the same event (the inbox's case) and once more as a new event
/// with the same meaning (the state machine's case).
async fn publish_thrice<C: Contract>(world: &TestWorld, source: &str, payload: &C) {
    let event = world.publish(source, payload).await;
    world.publish_event(C::TOPIC, event).await;
    world.publish(source, payload).await;
}

#[tokio::test]
async fn every_input_delivered_twice_completes_the_order_once() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    publish_thrice(&world, "orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    publish_thrice(&world, "payments", &payment_successful(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_stock").await;
    publish_thrice(&world, "inventory", &stock_reserved(order_id)).await;

    commands.orders.expect::<CompleteOrder>(|c| c.order_id == order_id).await;
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("complete_order", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn every_compensation_answer_delivered_twice_acts_once() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, timeouts(Duration::from_secs(10), Duration::from_millis(300))).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    publish_thrice(&world, "orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    publish_thrice(&world, "payments", &payment_successful(order_id)).await;
    commands.inventory.expect::<ReleaseStock>(|c| c.order_id == order_id).await;
    publish_thrice(&world, "inventory", &StockReleased { order_id, released: true }).await;
    commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    publish_thrice(&world, "payments", &payment_refunded(order_id)).await;
    commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;

    assert_eq!(
        commands.drain_counts(order_id).await,
        counts(&[("cancel_order", 1), ("refund_payment", 1), ("release_stock", 1)])
    );
    saga.stop().await;
}

#[tokio::test]
async fn answers_that_overtake_order_created_complete_the_order_once() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    // Payments and inventory were faster than the saga's `orders` consumer: a reservation
    // implies the charge, so the saga completes the order without waiting.
    world.publish("payments", &payment_successful(order_id)).await;
    world.publish("inventory", &stock_reserved(order_id)).await;
    commands.orders.expect::<CompleteOrder>(|c| c.order_id == order_id).await;
    assert_eq!(saga.state(order_id).await.as_deref(), Some("completed"));

    // `order_created`, arriving last, is late: it starts nothing and sends nothing.
    world.publish("orders", &order_created(order_id)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(saga.state(order_id).await.as_deref(), Some("completed"));
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("complete_order", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn unrelated_events_on_subscribed_topics_are_ignored() {
    let world = TestWorld::new();
    let saga = Saga::start(&world, Config::default()).await;
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    // Events the saga does not react to share its topics; they must not be retried forever or
    // hold back the order's own events.
    world.publish("orders", &weir_contracts::OrderCompleted { order_id, user_id: Uuid::now_v7(), total: eur(1) }).await;
    world
        .publish(
            "inventory",
            &weir_contracts::ProductAdded {
                product_id: order_id,
                sku: "SKU-1".into(),
                name: "Thing".into(),
                price: eur(1),
            },
        )
        .await;
    world.publish("orders", &order_created(order_id)).await;
    saga.wait_for_state(order_id, "awaiting_payment").await;
    world.publish("payments", &PaymentFailed { order_id, reason: "no funds".into() }).await;
    commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1)]));
    saga.stop().await;
}

#[tokio::test]
async fn a_timer_survives_a_restart_and_fires_once() {
    let world = TestWorld::new();
    let config = timeouts(Duration::from_millis(2500), Duration::from_secs(10));
    let mut commands = Commands::watch(&world).await;
    let order_id = Uuid::now_v7();

    let first = Saga::start(&world, config.clone()).await;
    world.publish("orders", &order_created(order_id)).await;
    first.wait_for_state(order_id, "awaiting_payment").await;
    first.stop().await;

    // The deadline passes while no saga runs: nothing may fire.
    assert!(
        commands
            .payments
            .try_expect::<RefundPayment>(Duration::from_millis(3000), |c| c.order_id == order_id)
            .await
            .is_none(),
        "the timeout fired while the service was down (or before it stopped)"
    );

    let second = Saga::start(&world, config).await;
    let (refund, _) = commands.payments.expect::<RefundPayment>(|c| c.order_id == order_id).await;
    assert_eq!(refund.reason, "payment timed out");
    world.publish("payments", &payment_refunded(order_id)).await;
    commands.orders.expect::<CancelOrder>(|c| c.order_id == order_id).await;
    assert_eq!(commands.drain_counts(order_id).await, counts(&[("cancel_order", 1), ("refund_payment", 1)]));
    second.stop().await;
}
