//! The bus conformance suite: one set of cases, written once against the [`Publisher`] and
//! [`Subscriber`] ports, that every transport must pass (Watermill's `tests.TestPubSub` is the
//! model). Each case checks one clause of the contract in [`weir_core::bus`]; it is not a
//! benchmark and not a test of any one transport's internals.
//!
//! # Instantiating the suite for a new transport
//!
//! 1. In the transport's test file (here: `tests/bus_<transport>.rs`), implement
//!    [`TransportFactory`]. A factory owns the durable data of one test — a temporary
//!    directory, or a unique prefix on a shared broker — and [`TransportFactory::open`] opens a
//!    *new* instance of the transport over that data each time it is called: the suite calls it
//!    a second time to simulate a restart of the process.
//! 2. Declare the timing of the transport: [`TransportFactory::redelivery_after_drop`] (how long
//!    an unsettled delivery of a dropped subscription stays invisible: the lease or the ack
//!    wait; configure the transport so that this is short, a few seconds) and, if the default of
//!    ten seconds does not fit, [`TransportFactory::patience`].
//! 3. Expand one test per case:
//!
//! ```text
//! struct MyTransport { dir: tempfile::TempDir }
//!
//! #[async_trait::async_trait]
//! impl weir_testkit::bus::TransportFactory for MyTransport {
//!     async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>) {
//!         let bus = my_transport::Bus::open(self.dir.path()).await.expect("open the bus");
//!         (Arc::new(bus.clone()), Arc::new(bus))
//!     }
//!     fn redelivery_after_drop(&self) -> Duration { Duration::from_secs(1) }
//! }
//!
//! weir_testkit::bus::conformance_tests!(MyTransport { dir: tempfile::tempdir().unwrap() });
//! ```
//!
//! The factory expression is evaluated once per case, so every case gets fresh data. Cases use
//! unique topic and group names, so they may also share one broker and run in parallel. A
//! transport that needs a running service must panic in `open` with the command that starts
//! it — never skip.
//!
//! # What the suite asserts about at-least-once
//!
//! Delivery is at least once: the suite checks that every published message is delivered at
//! least once and tolerates duplicates everywhere. Order per key is checked among *first*
//! deliveries. Exactly-once is never demanded.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use tokio::{
    task::JoinSet,
    time::{sleep, timeout},
};
use uuid::Uuid;
use weir_core::bus::{Capabilities, Delivery, Error, Message, Publisher, Subscriber, Subscription};

/// How the suite gets at a transport. Implemented once per transport, in its test file.
#[async_trait]
pub trait TransportFactory: Send + Sync + 'static {
    /// Opens the transport. Calling it again opens a *new* instance over the *same* durable
    /// data: a restart of the process. Panics, with the command that fixes it, if a service the
    /// transport needs is not running.
    async fn open(&self) -> (Arc<dyn Publisher>, Arc<dyn Subscriber>);

    /// How long after its subscription was dropped (or the process died) an unsettled delivery
    /// comes back: the transport's lease or ack wait.
    fn redelivery_after_drop(&self) -> Duration;

    /// The longest a delivery may take on an otherwise idle machine before the suite calls it a
    /// hang. Waits that include a redelivery or a nack delay add this on top.
    fn patience(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// Expands to one `#[tokio::test]` per case of the suite, each with a fresh factory from the
/// expression, so the test output names every case per transport. The calling crate needs
/// `tokio` (with the `macros` and `rt-multi-thread` features) among its dev-dependencies.
#[doc(hidden)]
#[macro_export]
macro_rules! __bus_conformance_tests {
    ($factory:expr) => {
        $crate::__suite_cases!(bus, $factory;
            capabilities_are_declared,
            publish_consume,
            order_per_key,
            redelivery_after_nack,
            redelivery_after_drop,
            group_members_share_the_load,
            groups_each_get_everything,
            restart_loses_nothing,
            many_topics,
            large_message,
            shutdown_finishes_in_flight_work,
            cancelled_publish_is_all_or_nothing,
            nack_holds_back_only_its_key,
            invalid_names_are_errors,
            valid_names_work,
            lag_counts_unsettled_messages,
        );
    };
}

pub use crate::__bus_conformance_tests as conformance_tests;

// ---------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------

/// Every transport under this suite declares all four guarantees (the suite tests each of
/// them), and its publisher and subscriber agree.
pub async fn capabilities_are_declared(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let declared = bus.publisher.capabilities();
    assert_eq!(
        declared,
        bus.subscriber.capabilities(),
        "the publisher and the subscriber declare different capabilities"
    );
    assert_eq!(declared, Capabilities::ALL, "the transport must declare every guarantee the conformance suite checks");
}

/// Payload, key and headers arrive intact, on the right topic, as first attempts.
///
/// The transport may add headers of its own (the contract allows transport metadata), but
/// every published header arrives with its value unchanged.
pub async fn publish_consume(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let topic = unique_topic("publish-consume");
    let group = unique_group("publish-consume");
    let published = vec![
        Message::new("order-1", r#"{"total":42,"currency":"EUR"}"#)
            .with_header("ce-specversion", "1.0")
            .with_header("ce-id", Uuid::now_v7().to_string())
            .with_header("ce-type", "order_created")
            .with_header("ce-subject", "order 1 – für Jürgen")
            .with_header("content-type", "application/json"),
        Message::new("order 2/ü", Bytes::from_static(&[0, 1, 2, 127, 128, 254, 255])).with_header("ce-tracestate", ""),
        Message::new("order-3", Bytes::new()),
    ];
    bus.publish(&topic, published.clone()).await;

    let mut sub = bus.subscribe(&topic, &group).await;
    let deadline = Instant::now() + factory.patience();
    let mut seen = HashSet::new();
    while seen.len() < published.len() {
        let Some(delivery) = recv(&mut sub, deadline).await else {
            panic!("received {} of {} published messages", seen.len(), published.len());
        };
        let got = &delivery.message;
        let sent = published
            .iter()
            .find(|m| m.key == got.key)
            .unwrap_or_else(|| panic!("a delivery with a key never published: {got:?}"));
        assert_eq!(delivery.topic, topic, "delivery names the wrong topic");
        assert_eq!(got.payload, sent.payload, "payload of key {:?} changed", sent.key);
        for (name, value) in &sent.headers {
            assert_eq!(
                got.headers.get(name),
                Some(value),
                "header {name:?} of key {:?} did not arrive intact (got headers {:?})",
                sent.key,
                got.headers
            );
        }
        if seen.insert(got.key.clone()) {
            assert_eq!(delivery.attempt, 1, "first delivery of {:?} is not attempt 1", got.key);
        }
        delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }
}

/// Several tasks publish several keys concurrently, the consumer acks concurrently from other
/// tasks; per key, first deliveries come in publish order, and no message is handed out before
/// the ack of its key's previous message was at least started.
pub async fn order_per_key(factory: &dyn TransportFactory) {
    const KEYS: usize = 8;
    const PER_KEY: usize = 25;
    const PUBLISHERS: usize = 4;
    let bus = Bus::open(factory).await;
    let topic = unique_topic("order-per-key");
    let group = unique_group("order-per-key");
    let mut sub = bus.subscribe(&topic, &group).await;

    // Each key belongs to one publishing task, so its publish order is well defined; the
    // tasks interleave their keys and cut them into batches of varying size.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let publisher = bus.publisher.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (p..KEYS).step_by(PUBLISHERS).map(|k| format!("key-{k}")).collect();
                let messages: Vec<Message> =
                    (0..PER_KEY).flat_map(|seq| keys.iter().map(move |key| numbered(key, seq))).collect();
                let mut rest = messages.as_slice();
                for size in [1, 2, 3, 5].into_iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (batch, tail) = rest.split_at(size.min(rest.len()));
                    publisher
                        .publish(&topic, batch.to_vec())
                        .await
                        .unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
                    rest = tail;
                }
            })
        })
        .collect();

    let ack_started = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut first_order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut early = Vec::new();
    let mut acks = JoinSet::new();
    let deadline = Instant::now() + factory.patience() * 3;
    let mut stalled = None;
    while seen.len() < KEYS * PER_KEY {
        let Some(delivery) = recv(&mut sub, deadline).await else {
            stalled = Some(seen.len());
            break;
        };
        let label = label_of(&delivery);
        let (key, seq) = parse_label(&label);
        if seen.insert(label.clone()) {
            if seq > 0 && !ack_started.lock().unwrap().contains(&label_for(&key, seq - 1)) {
                early.push(label.clone());
            }
            first_order.entry(key).or_default().push(seq);
        }
        let ack_started = ack_started.clone();
        acks.spawn(async move {
            sleep(Duration::from_millis((seq % 4) as u64)).await;
            ack_started.lock().unwrap().insert(label.clone());
            delivery.ack().await.map_err(|e| format!("ack of {label} failed: {e}"))
        });
    }
    for publisher in publishers {
        join_or_resume(publisher).await;
    }
    if let Some(count) = stalled {
        panic!("only {count} of {} messages were delivered", KEYS * PER_KEY);
    }
    while let Some(ack) = acks.join_next().await {
        ack.expect("ack task panicked").unwrap_or_else(|e| panic!("{e}"));
    }
    let in_order: Vec<usize> = (0..PER_KEY).collect();
    for (key, order) in &first_order {
        assert_eq!(order, &in_order, "first deliveries of {key} are out of publish order");
    }
    assert!(
        early.is_empty(),
        "{} messages were delivered before the previous message of their key was acked, e.g. {:?}",
        early.len(),
        &early[..early.len().min(10)]
    );
}

/// A nacked message comes back with its attempt one higher, and not before its delay.
pub async fn redelivery_after_nack(factory: &dyn TransportFactory) {
    let delay = Duration::from_secs(1);
    let bus = Bus::open(factory).await;
    let topic = unique_topic("redelivery-after-nack");
    let group = unique_group("redelivery-after-nack");
    bus.publish(&topic, vec![numbered("key", 0)]).await;
    let mut sub = bus.subscribe(&topic, &group).await;

    let first = expect(&mut sub, factory.patience(), "the first delivery").await;
    assert_eq!(label_of(&first), "key#0");
    assert_eq!(first.attempt, 1, "first delivery is not attempt 1");
    let nacked_at = Instant::now();
    first.nack(delay).await.unwrap_or_else(|e| panic!("nack failed: {e}"));

    let second = expect(&mut sub, delay + factory.patience(), "the redelivery after nack").await;
    let waited = nacked_at.elapsed();
    assert_eq!(label_of(&second), "key#0", "a different message came back");
    assert!(waited + TIMER_SLACK >= delay, "redelivered after {waited:?}, sooner than the nack delay of {delay:?}");
    assert_eq!(second.attempt, 2, "the attempt of a redelivery after one nack is not 2");

    second.nack(Duration::ZERO).await.unwrap_or_else(|e| panic!("nack failed: {e}"));
    let third = expect(&mut sub, factory.patience(), "the redelivery after a second nack").await;
    assert_eq!(label_of(&third), "key#0");
    assert_eq!(third.attempt, 3, "the attempt of a redelivery after two nacks is not 3");
    third.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
}

/// A delivery dropped unsettled comes back to its still open subscription, with its attempt one
/// higher; a subscription dropped with unsettled deliveries hands them, and everything it never
/// delivered, to the next member of its group.
///
/// After a dropped subscription the attempt need not rise: the contract counts only the
/// redeliveries a transport knows of, and one that was not told (a crash) cannot know.
pub async fn redelivery_after_drop(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let topic = unique_topic("redelivery-after-drop");
    let group = unique_group("redelivery-after-drop");
    let published: Vec<Message> = ["a", "b", "c"].iter().map(|key| numbered(key, 0)).collect();
    let expected = labels_of(&published);
    bus.publish(&topic, published).await;
    let wait = factory.redelivery_after_drop() + factory.patience();

    let mut sub = bus.subscribe(&topic, &group).await;
    let dropped = expect(&mut sub, factory.patience(), "the first delivery").await;
    let label = label_of(&dropped);
    assert_eq!(dropped.attempt, 1);
    drop(dropped);

    // The same subscription gets it again; the other messages it hands out meanwhile are held
    // unsettled, to go away with the subscription.
    let deadline = Instant::now() + wait;
    let mut others = Vec::new();
    let again = loop {
        let Some(delivery) = recv(&mut sub, deadline).await else {
            panic!("{label}, dropped unsettled, was not redelivered within {wait:?}");
        };
        if label_of(&delivery) == label {
            break delivery;
        }
        others.push(delivery);
    };
    assert!(again.attempt >= 2, "redelivery of a dropped delivery has attempt {}", again.attempt);

    // Now the subscription goes away while holding it.
    drop(sub);
    drop(again);
    drop(others);
    let mut sub = bus.subscribe(&topic, &group).await;
    consume_until(&mut sub, &expected, wait, "after the subscription was dropped").await;
}

/// Two members of one group, both subscribed before the messages arrive, each receive some of
/// them; together they receive exactly the published set.
pub async fn group_members_share_the_load(factory: &dyn TransportFactory) {
    const MESSAGES: usize = 60;
    let bus = Bus::open(factory).await;
    let topic = unique_topic("load-sharing");
    let group = unique_group("load-sharing");
    let members = [bus.subscribe(&topic, &group).await, bus.subscribe(&topic, &group).await];
    let published: Vec<Message> = (0..MESSAGES).map(|i| numbered(&format!("k{i}"), 0)).collect();
    let expected = labels_of(&published);

    let all = Arc::new(Mutex::new(HashSet::<String>::new()));
    let deadline = Instant::now() + factory.patience() * 2;
    let workers: Vec<_> = members
        .into_iter()
        .map(|mut sub| {
            let all = all.clone();
            tokio::spawn(async move {
                let mut mine = HashSet::new();
                while Instant::now() < deadline && all.lock().unwrap().len() < MESSAGES {
                    let Ok(next) = timeout(Duration::from_millis(100), sub.next()).await else {
                        continue;
                    };
                    let delivery = next.expect("the subscription ended");
                    let label = label_of(&delivery);
                    // Simulated work, so that one member cannot take everything.
                    sleep(Duration::from_millis(10)).await;
                    delivery.ack().await.unwrap_or_else(|e| panic!("ack of {label} failed: {e}"));
                    mine.insert(label.clone());
                    all.lock().unwrap().insert(label);
                }
                mine
            })
        })
        .collect();
    bus.publish(&topic, published).await;
    let mut shares = Vec::new();
    for worker in workers {
        shares.push(join_or_resume(worker).await);
    }

    let all = all.lock().unwrap().clone();
    assert_eq!(
        all.len(),
        MESSAGES,
        "the group received {} of {MESSAGES} messages within {:?}",
        all.len(),
        factory.patience() * 2
    );
    assert_eq!(all, expected, "the group received messages that were never published");
    assert!(
        shares.iter().all(|share| !share.is_empty()),
        "the load was not shared: the members received {} and {} messages",
        shares[0].len(),
        shares[1].len()
    );
}

/// Two groups each receive every message: one subscribed before the messages were published,
/// one after (a new group starts at the beginning of the topic).
pub async fn groups_each_get_everything(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let topic = unique_topic("two-groups");
    let mut early = bus.subscribe(&topic, &unique_group("early")).await;
    let published: Vec<Message> = (0..20).map(|i| numbered(&format!("k{}", i % 5), i / 5)).collect();
    let expected = labels_of(&published);
    bus.publish(&topic, published).await;
    let mut late = bus.subscribe(&topic, &unique_group("late")).await;

    let patience = factory.patience();
    futures::join!(
        consume_until(&mut early, &expected, patience, "the group subscribed before publishing"),
        consume_until(&mut late, &expected, patience, "the group subscribed after publishing"),
    );
}

/// Nothing is lost across a restart: a group that never subscribed gets everything, in order
/// per key; a group that consumed part of the topic gets every message it had not acked — also
/// those it held unacked when the process went away — and resumes from its position rather
/// than from the beginning.
pub async fn restart_loses_nothing(factory: &dyn TransportFactory) {
    const KEYS: usize = 3;
    const PER_KEY: usize = 10;
    const ACKED: usize = 9;
    let topic = unique_topic("restart");
    let fresh = unique_group("fresh");
    let partial = unique_group("partial");
    let published: Vec<Message> =
        (0..PER_KEY).flat_map(|seq| (0..KEYS).map(move |k| numbered(&format!("k{k}"), seq))).collect();
    let expected = labels_of(&published);

    let mut acked = HashSet::new();
    let mut held = Vec::new();
    {
        let bus = Bus::open(factory).await;
        bus.publish(&topic, published).await;
        let mut sub = bus.subscribe(&topic, &partial).await;
        while acked.len() < ACKED {
            let delivery = expect(&mut sub, factory.patience(), "a message before restart").await;
            let label = label_of(&delivery);
            delivery.ack().await.unwrap_or_else(|e| panic!("ack of {label} failed: {e}"));
            acked.insert(label);
        }
        // Hold two deliveries unsettled (fewer than the number of keys: order per key allows
        // only one unacked message per key).
        while held.len() < 2 {
            let delivery = expect(&mut sub, factory.patience(), "a message to hold").await;
            if acked.contains(&label_of(&delivery)) {
                delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
            } else {
                held.push(delivery);
            }
        }
        // The process goes away: subscription and transport first, then the held deliveries.
        drop(sub);
        drop(bus);
    }
    let held_labels: Vec<String> = held.iter().map(label_of).collect();
    drop(held);

    let bus = Bus::open(factory).await;
    let mut sub = bus.subscribe(&topic, &fresh).await;
    let seen = consume_until(&mut sub, &expected, factory.patience(), "a new group after restart").await;
    assert_first_deliveries_in_order(&seen, "the new group after restart");

    let mut sub = bus.subscribe(&topic, &partial).await;
    let missing: HashSet<String> = expected.difference(&acked).cloned().collect();
    let seen = consume_until(
        &mut sub,
        &missing,
        factory.redelivery_after_drop() + factory.patience(),
        "the partially consumed group after restart (including the held messages)",
    )
    .await;
    for label in &held_labels {
        assert!(seen.iter().any(|s| &s.label == label), "held message {label} was lost");
    }
    let mut redelivered: HashSet<String> = seen.iter().map(|s| s.label.clone()).filter(|l| acked.contains(l)).collect();
    redelivered.extend(drain(&mut sub, Duration::from_millis(500)).await);
    let redelivered_acked = redelivered.intersection(&acked).count();
    assert!(
        redelivered_acked < acked.len(),
        "every acked message came back after restart: the group's position was lost"
    );
}

/// Fifty topics, each with its own subscription, each get exactly their own messages.
pub async fn many_topics(factory: &dyn TransportFactory) {
    const TOPICS: usize = 50;
    let bus = Bus::open(factory).await;
    let group = unique_group("many-topics");
    let topics: Vec<String> = (0..TOPICS).map(|_| unique_topic("many-topics")).collect();
    let subscriptions = join_all(topics.iter().map(|topic| bus.subscribe(topic, &group))).await;
    join_all(topics.iter().map(|topic| {
        let messages = vec![numbered(topic, 0), numbered(topic, 1)];
        bus.publish(topic, messages)
    }))
    .await;

    let patience = factory.patience() * 3;
    join_all(subscriptions.into_iter().zip(&topics).map(|(mut sub, topic)| async move {
        let expected = HashSet::from([label_for(topic, 0), label_for(topic, 1)]);
        let seen = consume_until(&mut sub, &expected, patience, topic).await;
        for delivery in seen {
            assert_eq!(&delivery.topic, topic, "a delivery names the wrong topic");
        }
    }))
    .await;
}

/// A message with a 1 MiB payload arrives intact, and the small message after it, too.
pub async fn large_message(factory: &dyn TransportFactory) {
    const SIZE: usize = 1 << 20;
    let bus = Bus::open(factory).await;
    let topic = unique_topic("large-message");
    let group = unique_group("large-message");
    let payload: Bytes = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>().into();
    let large = Message::new("big", payload.clone()).with_header("ce-type", "blob_stored");
    bus.publish(&topic, vec![large, numbered("big", 1)]).await;

    let mut sub = bus.subscribe(&topic, &group).await;
    let delivery = expect(&mut sub, factory.patience(), "the 1 MiB message").await;
    let got = &delivery.message;
    assert_eq!(got.payload.len(), SIZE, "the 1 MiB payload arrived with another length");
    assert!(got.payload == payload, "the 1 MiB payload arrived with other bytes");
    assert_eq!(got.headers.get("ce-type").map(String::as_str), Some("blob_stored"));
    delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    let expected = HashSet::from([label_for("big", 1)]);
    consume_until(&mut sub, &expected, factory.patience(), "the message after 1 MiB").await;
}

/// Shutdown finishes in-flight work without loss. From the contract: a delivery may be settled
/// after its subscription was dropped, and even after the transport was dropped; that succeeds
/// or fails with [`Error::Closed`] — promptly, without a panic. Nothing not acked with success
/// is lost: it is redelivered to the next member of the group.
pub async fn shutdown_finishes_in_flight_work(factory: &dyn TransportFactory) {
    let topic = unique_topic("shutdown");
    let group = unique_group("shutdown");
    let published: Vec<Message> = ["a", "b", "c", "d"].iter().map(|k| numbered(k, 0)).collect();
    let mut expected = labels_of(&published);

    let bus = Bus::open(factory).await;
    bus.publish(&topic, published).await;
    let mut sub = bus.subscribe(&topic, &group).await;
    let to_ack = expect(&mut sub, factory.patience(), "the first delivery").await;
    let to_nack = expect(&mut sub, factory.patience(), "the second delivery").await;
    let acked = label_of(&to_ack);

    // The subscription goes away with two deliveries in flight, which are then settled.
    drop(sub);
    let ack = timeout(factory.patience(), to_ack.ack()).await.expect("ack after the subscription was dropped hung");
    assert!(
        matches!(ack, Ok(()) | Err(Error::Closed)),
        "ack after the subscription was dropped must succeed or fail with Closed, got {ack:?}"
    );
    // The transport itself goes away; the last delivery is settled after that.
    drop(bus);
    let nack = timeout(factory.patience(), to_nack.nack(Duration::ZERO))
        .await
        .expect("nack after the transport was dropped hung");
    assert!(
        matches!(nack, Ok(()) | Err(Error::Closed)),
        "nack after the transport was dropped must succeed or fail with Closed, got {nack:?}"
    );

    // Every message not acked with success comes back after a restart.
    if ack.is_ok() {
        expected.remove(&acked);
    }
    let bus = Bus::open(factory).await;
    let mut sub = bus.subscribe(&topic, &group).await;
    consume_until(
        &mut sub,
        &expected,
        factory.redelivery_after_drop() + factory.patience(),
        "the messages in flight at shutdown",
    )
    .await;
}

/// Dropping the future of `publish` leaves its batch wholly published or not at all; a
/// `publish` that returned `Ok` published the whole batch.
pub async fn cancelled_publish_is_all_or_nothing(factory: &dyn TransportFactory) {
    const BATCH: usize = 20;
    let cancel_after_micros = [0, 50, 200, 500, 1_000, 2_000, 5_000, 10_000];
    let bus = Bus::open(factory).await;
    let topic = unique_topic("cancelled-publish");
    let group = unique_group("cancelled-publish");

    let mut completed = Vec::new();
    for (b, micros) in cancel_after_micros.iter().enumerate() {
        let batch: Vec<Message> = (0..BATCH).map(|i| numbered(&format!("batch{b}"), i)).collect();
        let outcome = timeout(Duration::from_micros(*micros), bus.publisher.publish(&topic, batch)).await;
        if let Ok(result) = &outcome {
            result.as_ref().unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
        }
        completed.push(outcome.is_ok());
    }
    bus.publish(&topic, vec![numbered("marker", 0)]).await;

    let mut sub = bus.subscribe(&topic, &group).await;
    let marker = HashSet::from([label_for("marker", 0)]);
    let mut labels: HashSet<String> =
        consume_until(&mut sub, &marker, factory.patience(), "the marker after the batches")
            .await
            .into_iter()
            .map(|s| s.label)
            .collect();
    // A batch completed in the background may land after the marker; wait for quiet.
    labels.extend(drain(&mut sub, Duration::from_secs(1)).await);

    for (b, completed) in completed.iter().enumerate() {
        let key = format!("batch{b}");
        let arrived = (0..BATCH).filter(|i| labels.contains(&label_for(&key, *i))).count();
        assert!(
            arrived == 0 || arrived == BATCH,
            "publish cancelled after {}µs left {arrived} of {BATCH} messages of its batch",
            cancel_after_micros[b]
        );
        assert!(
            !completed || arrived == BATCH,
            "publish returned Ok but only {arrived} of {BATCH} messages were delivered"
        );
    }
}

/// A nacked message holds back the later messages of its own key — until it is redelivered
/// and acked — and never the other keys of its group.
pub async fn nack_holds_back_only_its_key(factory: &dyn TransportFactory) {
    const OTHER_KEYS: usize = 40;
    let delay = Duration::from_secs(3);
    let bus = Bus::open(factory).await;
    let topic = unique_topic("nack-holds-back");
    let group = unique_group("nack-holds-back");
    // Many other keys, so that whatever the transport's partitioning, some share the held
    // key's partition.
    let mut published = vec![numbered("held", 0), numbered("held", 1)];
    for seq in 0..2 {
        published.extend((0..OTHER_KEYS).map(|k| numbered(&format!("other{k}"), seq)));
    }
    let others: HashSet<String> = labels_of(&published[2..]);
    bus.publish(&topic, published).await;
    let mut sub = bus.subscribe(&topic, &group).await;

    let (held0, held1) = (label_for("held", 0), label_for("held", 1));
    let mut others_seen = HashSet::new();
    let mut others_done_at = None;
    let mut nacked_at = None;
    let mut redelivered_at = None;
    let mut held1_at = None;
    let deadline = Instant::now() + delay + factory.patience() * 2;
    while held1_at.is_none() || others_done_at.is_none() {
        let Some(delivery) = recv(&mut sub, deadline).await else {
            panic!(
                "stalled: {} of {} other messages, held#0 nacked: {}, redelivered: {}, \
                 held#1 delivered: {}",
                others_seen.len(),
                others.len(),
                nacked_at.is_some(),
                redelivered_at.is_some(),
                held1_at.is_some()
            );
        };
        let label = label_of(&delivery);
        let now = Instant::now();
        if label == held0 && nacked_at.is_none() {
            assert_eq!(delivery.attempt, 1);
            nacked_at = Some(now);
            delivery.nack(delay).await.unwrap_or_else(|e| panic!("nack failed: {e}"));
            continue;
        }
        if label == held0 {
            redelivered_at.get_or_insert(now);
        } else if label == held1 {
            assert!(
                redelivered_at.is_some(),
                "held#1 was delivered while held#0, nacked before it, waited for redelivery"
            );
            held1_at.get_or_insert(now);
        } else if others_seen.insert(label) && others_seen.len() == others.len() {
            others_done_at = Some(now);
        }
        delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }

    let nacked_at = nacked_at.expect("held#1 was delivered, so held#0 was nacked before");
    let redelivered_at = redelivered_at.expect("checked when held#1 arrived");
    let others_done_at = others_done_at.expect("loop condition");
    assert!(
        redelivered_at + TIMER_SLACK >= nacked_at + delay,
        "held#0 came back after {:?}, sooner than its nack delay of {delay:?}",
        redelivered_at - nacked_at
    );
    assert!(
        others_done_at < nacked_at + delay,
        "the other keys finished {:?} after the nack: the nack of one key held them back",
        others_done_at.saturating_duration_since(nacked_at)
    );
}

/// Invalid topic and group names are rejected with [`Error::InvalidName`] by `publish` and
/// `subscribe`: never a panic, never a subscription to something else (such as a broker
/// wildcard).
pub async fn invalid_names_are_errors(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let valid_topic = unique_topic("invalid-names");
    let valid_group = unique_group("invalid-names");
    let long = "x".repeat(201);
    let invalid = ["", ".x", "x.", "a b", "a/b", "ä", "orders.*", "orders.>", "a\nb", &long];
    for name in invalid {
        let (publisher, subscriber) = (bus.publisher.clone(), bus.subscriber.clone());
        let (topic, message) = (name.to_owned(), numbered("key", 0));
        let outcome = spawn_checked(async move { publisher.publish(&topic, vec![message]).await })
            .await
            .unwrap_or_else(|why| panic!("publish to topic {name:?} {why}"));
        assert_invalid_name(outcome, &format!("publish to topic {name:?}"));

        let (subscriber_2, valid_topic, valid_group) = (subscriber.clone(), valid_topic.clone(), valid_group.clone());
        let (topic, group) = (name.to_owned(), name.to_owned());
        let outcome = spawn_checked(async move { subscriber.subscribe(&topic, &valid_group).await.map(drop) })
            .await
            .unwrap_or_else(|why| panic!("subscribe to topic {name:?} {why}"));
        assert_invalid_name(outcome, &format!("subscribe to topic {name:?}"));
        let outcome = spawn_checked(async move { subscriber_2.subscribe(&valid_topic, &group).await.map(drop) })
            .await
            .unwrap_or_else(|why| panic!("subscribe with group {name:?} {why}"));
        assert_invalid_name(outcome, &format!("subscribe with group {name:?}"));
    }
}

/// Names at the edge of validity work end to end: every allowed character, upper and lower
/// case, and the maximum length of 200 bytes.
pub async fn valid_names_work(factory: &dyn TransportFactory) {
    let bus = Bus::open(factory).await;
    let id = Uuid::now_v7().simple().to_string();
    let topic = format!("Edge_Case-1.{id}.x");
    let mut longest = format!("long.{id}.");
    longest.push_str(&"y".repeat(200 - longest.len()));
    let group = format!("Group.Edge_1-{id}");
    for (topic, group) in [(topic.as_str(), group.as_str()), (longest.as_str(), longest.as_str())] {
        weir_core::bus::validate_name(topic).expect("the suite's name is valid");
        bus.publish(topic, vec![numbered("key", 0)]).await;
        let mut sub = bus.subscribe(topic, group).await;
        let expected = HashSet::from([label_for("key", 0)]);
        consume_until(&mut sub, &expected, factory.patience(), topic).await;
    }
}

/// [`Subscriber::lag`] counts what a group has not settled: nothing on a topic never published
/// to, every message for a group that never subscribed, and for a group that consumed part the
/// undelivered ones plus those delivered and not acked — also one nacked and waiting out its
/// delay. The count may trail an ack by the transport's commit interval: the case waits for it.
pub async fn lag_counts_unsettled_messages(factory: &dyn TransportFactory) {
    const MESSAGES: u64 = 10;
    const ACKED: u64 = 4;
    let bus = Bus::open(factory).await;
    let topic = unique_topic("lag");
    let group = unique_group("lag");
    let idle = unique_group("lag-idle");
    let patience = factory.patience();
    lag_settles(&bus, &unique_topic("lag-none"), &group, 0, patience, "a topic never published to").await;
    bus.publish(&topic, (0..MESSAGES).map(|i| numbered(&format!("k{i}"), 0)).collect()).await;
    lag_settles(&bus, &topic, &idle, MESSAGES, patience, "a group that never subscribed").await;

    let mut sub = bus.subscribe(&topic, &group).await;
    for _ in 0..ACKED {
        let delivery = expect(&mut sub, patience, "a message to ack").await;
        delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }
    let held = expect(&mut sub, patience, "a message to hold").await;
    lag_settles(&bus, &topic, &group, MESSAGES - ACKED, patience, "a group holding one delivery unacked").await;
    held.nack(Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("nack failed: {e}"));
    sleep(Duration::from_secs(1)).await;
    lag_settles(&bus, &topic, &group, MESSAGES - ACKED, patience, "a group with one message nacked for a minute").await;
    let next = expect(&mut sub, patience, "a message after the nacked one").await;
    next.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    lag_settles(&bus, &topic, &group, MESSAGES - ACKED - 1, patience, "after one more ack").await;
    lag_settles(&bus, &topic, &idle, MESSAGES, patience, "the idle group, after the other group acked").await;
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// How early a timer may fire because a transport stores instants at a coarser resolution.
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// One instance of the transport under test.
struct Bus {
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
}

impl Bus {
    async fn open(factory: &dyn TransportFactory) -> Self {
        let (publisher, subscriber) = factory.open().await;
        Self { publisher, subscriber }
    }

    async fn publish(&self, topic: &str, messages: Vec<Message>) {
        let count = messages.len();
        self.publisher
            .publish(topic, messages)
            .await
            .unwrap_or_else(|e| panic!("publish of {count} messages to {topic} failed: {e}"));
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Subscription {
        self.subscriber
            .subscribe(topic, group)
            .await
            .unwrap_or_else(|e| panic!("subscribe to {topic} as {group} failed: {e}"))
    }
}

/// Waits until `group`'s lag on `topic` is `expected`; fails with the last count after `within`.
async fn lag_settles(bus: &Bus, topic: &str, group: &str, expected: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let lag = bus.subscriber.lag(topic, group).await.unwrap_or_else(|e| panic!("lag of {what} failed: {e}"));
        if lag == expected {
            return;
        }
        assert!(Instant::now() < deadline, "lag of {what} is {lag}, not {expected}, after {within:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// What the suite remembers of a delivery after settling it.
#[derive(Debug)]
struct Seen {
    label: String,
    topic: String,
}

fn unique_topic(case: &str) -> String {
    format!("conformance.{case}.{}", Uuid::now_v7().simple())
}

fn unique_group(role: &str) -> String {
    format!("{role}-{}", Uuid::now_v7().simple())
}

/// A message whose payload is its label, `key#seq`, so the suite can identify it.
fn numbered(key: &str, seq: usize) -> Message {
    Message::new(key, label_for(key, seq)).with_header("ce-id", Uuid::now_v7().to_string())
}

fn label_for(key: &str, seq: usize) -> String {
    format!("{key}#{seq}")
}

fn label_of(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.payload.to_vec())
        .unwrap_or_else(|_| panic!("a delivery whose payload is not a label: {delivery:?}"))
}

fn labels_of(messages: &[Message]) -> HashSet<String> {
    messages.iter().map(|m| String::from_utf8(m.payload.to_vec()).expect("a label")).collect()
}

fn parse_label(label: &str) -> (String, usize) {
    let (key, seq) = label.rsplit_once('#').expect("a label is key#seq");
    (key.to_owned(), seq.parse().expect("a label's sequence is a number"))
}

/// The next delivery, or `None` once `deadline` has passed. A subscription that ends is a
/// failure: the transport was not closed.
async fn recv(sub: &mut Subscription, deadline: Instant) -> Option<Delivery> {
    let left = deadline.saturating_duration_since(Instant::now());
    match timeout(left, sub.next()).await {
        Ok(Some(delivery)) => Some(delivery),
        Ok(None) => panic!("the subscription ended although the transport was not closed"),
        Err(_) => None,
    }
}

/// The next delivery within `within`, or a failure naming `what` was awaited.
async fn expect(sub: &mut Subscription, within: Duration, what: &str) -> Delivery {
    recv(sub, Instant::now() + within)
        .await
        .unwrap_or_else(|| panic!("no delivery within {within:?} while waiting for {what}"))
}

/// Receives and acks deliveries until every label in `expected` has been seen at least once.
/// Returns what was seen, duplicates included, in order.
async fn consume_until(sub: &mut Subscription, expected: &HashSet<String>, within: Duration, what: &str) -> Vec<Seen> {
    let deadline = Instant::now() + within;
    let mut missing = expected.clone();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let Some(delivery) = recv(sub, deadline).await else {
            let count = missing.len();
            let mut missing: Vec<_> = missing.into_iter().collect();
            missing.sort();
            missing.truncate(10);
            panic!(
                "{what}: {} of {} messages not delivered within {within:?}, e.g. {missing:?}",
                count,
                expected.len(),
            );
        };
        let label = label_of(&delivery);
        missing.remove(&label);
        seen.push(Seen { label, topic: delivery.topic.clone() });
        delivery.ack().await.unwrap_or_else(|e| panic!("{what}: ack failed: {e}"));
    }
    seen
}

/// Receives and acks whatever arrives until nothing has for `quiet`; returns the labels.
async fn drain(sub: &mut Subscription, quiet: Duration) -> Vec<String> {
    let mut labels = Vec::new();
    while let Ok(next) = timeout(quiet, sub.next()).await {
        let delivery = next.expect("the subscription ended although the transport was not closed");
        labels.push(label_of(&delivery));
        delivery.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
    }
    labels
}

fn assert_first_deliveries_in_order(seen: &[Seen], what: &str) {
    let mut firsts = HashSet::new();
    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for s in seen {
        if firsts.insert(s.label.clone()) {
            let (key, seq) = parse_label(&s.label);
            order.entry(key).or_default().push(seq);
        }
    }
    for (key, seqs) in order {
        let in_order: Vec<usize> = (0..seqs.len()).collect();
        assert_eq!(seqs, in_order, "{what}: first deliveries of {key} are out of publish order");
    }
}

fn assert_invalid_name(outcome: weir_core::bus::Result<()>, what: &str) {
    match outcome {
        Err(Error::InvalidName(_)) => {}
        Err(other) => panic!("{what} must fail with InvalidName, failed with {other:?}"),
        Ok(()) => panic!("{what} must fail with InvalidName, but succeeded"),
    }
}

/// Runs `future` on its own task, turning a panic into an error that says so.
async fn spawn_checked<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
    match tokio::spawn(future).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => Err("panicked instead of returning an error".to_owned()),
        Err(e) => Err(format!("task failed: {e}")),
    }
}

/// Awaits a spawned task, re-raising its panic with the original message.
async fn join_or_resume<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}
