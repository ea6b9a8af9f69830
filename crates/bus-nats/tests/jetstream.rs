//! `NatsBus` against a real nats-server with JetStream at 127.0.0.1:4222. Each test works under
//! its own prefix (a fresh UUID), so tests run in parallel and leave others' streams alone; they
//! delete their streams at the end. A missing server fails every test, loudly.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use weir_bus_nats::{NatsBus, Options};
use weir_core::bus::{Delivery, Error, Message, Publisher, Subscriber, Subscription};

const URL: &str = "nats://127.0.0.1:4222";
const START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                     -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";
/// Short, so that redelivery after a drop is quick to observe.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How much earlier than its delay a nacked message may come back as measured here: the server
/// times redeliveries by its own wall clock and pending-check timer, this test by a monotonic
/// clock. A fully loaded CI machine once saw a 3 s delay end early (2026-12-03); a nack that
/// ignored its delay would still come back seconds early and fail.
const CLOCKS: Duration = Duration::from_millis(250);

fn prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

async fn connect_to(url: &str, prefix: &str) -> NatsBus {
    let options = Options { ack_wait: ACK_WAIT, ..Options::with_prefix(prefix) };
    match NatsBus::connect(url, options).await {
        Ok(bus) => bus,
        Err(e) => panic!(
            "\n\ncannot use NATS JetStream at {url}: {e}\n\
             These tests need it. Start it with:\n\n    {START}\n\n"
        ),
    }
}

async fn connect(prefix: &str) -> NatsBus {
    connect_to(URL, prefix).await
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("no delivery within 15 s")
        .expect("subscription ended")
}

async fn assert_quiet(sub: &mut Subscription, wait: Duration) {
    if let Ok(delivery) = tokio::time::timeout(wait, sub.next()).await {
        panic!("unexpected delivery: {delivery:?}");
    }
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.payload.to_vec()).expect("utf-8 payload")
}

async fn cleanup(bus: &NatsBus, topics: &[&str]) {
    for topic in topics {
        bus.delete_topic(topic).await.expect("delete test stream");
    }
}

#[tokio::test]
async fn publishes_and_consumes_with_key_and_headers() {
    let bus = connect(&prefix()).await;
    let caps = Publisher::capabilities(&bus);
    assert_eq!(caps, Subscriber::capabilities(&bus));
    assert!(caps.ordered_per_key && caps.persistent && caps.consumer_groups && caps.delayed_redelivery);

    let odd = " spaced \r\n 100% ä ";
    let messages = vec![
        Message::new("order-1", "one").with_header("ce-id", "1").with_header("ce-odd", odd),
        Message::new(odd, "two"),
        Message::new("", "three"),
    ];
    bus.publish("orders.created", messages.clone()).await.unwrap();

    let mut sub = bus.subscribe("orders.created", "billing").await.unwrap();
    let mut received = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.topic, "orders.created");
        assert_eq!(delivery.attempt, 1);
        received.push(delivery.message.clone());
        delivery.ack().await.unwrap();
    }
    received.sort_by(|a, b| a.payload.cmp(&b.payload));
    let mut expected = messages;
    expected.sort_by(|a, b| a.payload.cmp(&b.payload));
    assert_eq!(received, expected);
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    cleanup(&bus, &["orders.created"]).await;
}

#[tokio::test]
async fn rejects_bad_names_and_headers() {
    let bus = connect(&prefix()).await;
    assert!(matches!(bus.publish("a b", vec![Message::new("k", "x")]).await, Err(Error::InvalidName(_))));
    assert!(matches!(bus.subscribe("ok", "bad/group").await, Err(Error::InvalidName(_))));
    for name in ["Nats-Msg-Id", "weir-key", "with space", "colon:"] {
        let message = Message::new("k", "x").with_header(name, "v");
        assert!(matches!(bus.publish("headers", vec![message]).await, Err(Error::Transport(_))), "{name}");
    }
    bus.delete_topic("never-created").await.expect("deleting a missing topic is a no-op");
    let options = Options::with_prefix("dotted.prefix");
    assert!(matches!(NatsBus::connect(URL, options).await, Err(Error::InvalidName(_))));
    cleanup(&bus, &["headers"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keeps_per_key_order_under_concurrency() {
    const KEYS: usize = 6;
    const PER_KEY: usize = 40;
    let bus = connect(&prefix()).await;

    // One publisher task per key, all at once, in small batches.
    let mut publishers = Vec::new();
    for k in 0..KEYS {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            for chunk in (0..PER_KEY).collect::<Vec<_>>().chunks(8) {
                let batch = chunk.iter().map(|i| Message::new(format!("key-{k}"), i.to_string())).collect();
                bus.publish("ledger", batch).await.unwrap();
            }
        }));
    }

    // Three members, each handling deliveries concurrently.
    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlaps = Arc::new(Mutex::new(0usize));
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut sub = bus.subscribe("ledger", "projector").await.unwrap();
        let (seen, in_flight, overlaps) = (seen.clone(), in_flight.clone(), overlaps.clone());
        members.push(tokio::spawn(async move {
            while let Some(delivery) = sub.next().await {
                let (seen, in_flight, overlaps) = (seen.clone(), in_flight.clone(), overlaps.clone());
                tokio::spawn(async move {
                    let key = delivery.message.key.clone();
                    if !in_flight.lock().unwrap().insert(key.clone()) {
                        *overlaps.lock().unwrap() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(delivery.message.payload[0] % 3))).await;
                    seen.lock().unwrap().entry(key.clone()).or_default().push(text(&delivery).parse().unwrap());
                    in_flight.lock().unwrap().remove(&key);
                    delivery.ack().await.unwrap();
                });
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().values().map(Vec::len).sum::<usize>() < KEYS * PER_KEY {
        assert!(Instant::now() < deadline, "not all messages arrived: {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for member in &members {
        member.abort();
    }
    assert_eq!(*overlaps.lock().unwrap(), 0, "two messages of one key were in flight at once");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), KEYS);
    for (key, order) in seen.iter() {
        assert_eq!(*order, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
    cleanup(&bus, &["ledger"]).await;
}

#[tokio::test]
async fn nack_redelivers_after_the_delay_with_a_higher_attempt() {
    let bus = connect(&prefix()).await;
    bus.publish("payments", vec![Message::new("p-1", "charge")]).await.unwrap();
    let mut sub = bus.subscribe("payments", "charger").await.unwrap();

    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    let nacked_at = Instant::now();
    first.nack(Duration::from_millis(800)).await.unwrap();

    let second = next(&mut sub).await;
    assert!(nacked_at.elapsed() >= Duration::from_millis(800) - CLOCKS, "redelivered after {:?}", nacked_at.elapsed());
    assert_eq!((text(&second).as_str(), second.attempt), ("charge", 2));
    second.nack(Duration::ZERO).await.unwrap();
    let third = next(&mut sub).await;
    assert_eq!(third.attempt, 3);
    third.ack().await.unwrap();
    assert_quiet(&mut sub, ACK_WAIT + Duration::from_millis(500)).await;
    cleanup(&bus, &["payments"]).await;
}

#[tokio::test]
async fn a_nack_holds_back_only_its_own_key() {
    let bus = connect(&prefix()).await;
    let batch =
        vec![Message::new("a", "a1"), Message::new("a", "a2"), Message::new("b", "b1"), Message::new("b", "b2")];
    bus.publish("docs", batch).await.unwrap();
    let mut sub = bus.subscribe("docs", "indexer").await.unwrap();

    // a2 and b2 wait for a1 and b1.
    let mut firsts = vec![next(&mut sub).await, next(&mut sub).await];
    firsts.sort_by_key(text);
    assert_eq!(firsts.iter().map(text).collect::<Vec<_>>(), ["a1", "b1"]);
    assert_quiet(&mut sub, Duration::from_millis(300)).await;

    // The nack's delay is longer than the ack wait: a2 must stay held (and alive) meanwhile.
    let delay = ACK_WAIT + Duration::from_secs(1);
    let b1 = firsts.pop().unwrap();
    let a1 = firsts.pop().unwrap();
    let nacked_at = Instant::now();
    a1.nack(delay).await.unwrap();
    b1.ack().await.unwrap();

    let b2 = next(&mut sub).await;
    assert_eq!(text(&b2), "b2", "key b flows on while a is held");
    assert!(nacked_at.elapsed() < delay);
    b2.ack().await.unwrap();

    let a1 = next(&mut sub).await;
    assert_eq!((text(&a1).as_str(), a1.attempt), ("a1", 2), "a2 must not overtake the nacked a1");
    assert!(nacked_at.elapsed() >= delay - CLOCKS, "redelivered after {:?}", nacked_at.elapsed());
    a1.ack().await.unwrap();
    let a2 = next(&mut sub).await;
    assert_eq!((text(&a2).as_str(), a2.attempt), ("a2", 1), "a2 was held, never redelivered");
    a2.ack().await.unwrap();
    assert_quiet(&mut sub, ACK_WAIT + Duration::from_millis(500)).await;
    cleanup(&bus, &["docs"]).await;
}

#[tokio::test]
async fn unacked_deliveries_come_back_after_the_ack_wait() {
    let bus = connect(&prefix()).await;
    bus.publish("mail", vec![Message::new("m", "hello"), Message::new("m", "again")]).await.unwrap();

    // A delivery dropped unsettled: the subscription gets it back, its successor still waits.
    let mut sub = bus.subscribe("mail", "sender").await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!((text(&first).as_str(), first.attempt), ("hello", 1));
    drop(first);
    let dropped_at = Instant::now();
    let again = next(&mut sub).await;
    assert_eq!((text(&again).as_str(), again.attempt), ("hello", 2));
    assert!(dropped_at.elapsed() >= ACK_WAIT - Duration::from_millis(500));

    // A whole subscription dropped with a delivery unsettled: a new member gets it back.
    drop(again);
    drop(sub);
    let mut successor = bus.subscribe("mail", "sender").await.unwrap();
    let back = next(&mut successor).await;
    assert_eq!((text(&back).as_str(), back.attempt), ("hello", 3));
    back.ack().await.unwrap();
    let last = next(&mut successor).await;
    assert_eq!(text(&last), "again");
    last.ack().await.unwrap();
    cleanup(&bus, &["mail"]).await;
}

#[tokio::test]
async fn every_group_gets_every_message() {
    let bus = connect(&prefix()).await;
    let payloads: BTreeSet<String> = (0..10).map(|i| format!("m{i}")).collect();
    let batch = payloads.iter().map(|p| Message::new(p.clone(), p.clone())).collect();
    bus.publish("events", batch).await.unwrap();

    for group in ["audit", "search"] {
        let mut sub = bus.subscribe("events", group).await.unwrap();
        let mut got = BTreeSet::new();
        for _ in 0..payloads.len() {
            let delivery = next(&mut sub).await;
            got.insert(text(&delivery));
            delivery.ack().await.unwrap();
        }
        assert_eq!(got, payloads, "group {group}");
        assert_quiet(&mut sub, Duration::from_millis(300)).await;
    }
    cleanup(&bus, &["events"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_group_share_the_load() {
    const COUNT: usize = 30;
    let bus = connect(&prefix()).await;
    let batch = (0..COUNT).map(|i| Message::new(format!("k{i}"), i.to_string())).collect();
    bus.publish("jobs", batch).await.unwrap();

    let got: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let mut members = Vec::new();
    for member in 0..2 {
        let mut sub = bus.subscribe("jobs", "workers").await.unwrap();
        let got = got.clone();
        members.push(tokio::spawn(async move {
            while let Some(delivery) = sub.next().await {
                // Slow work, so that the other member gets its turn.
                tokio::time::sleep(Duration::from_millis(20)).await;
                got.lock().unwrap().push((member, text(&delivery)));
                delivery.ack().await.unwrap();
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().len() < COUNT {
        assert!(Instant::now() < deadline, "only {} of {COUNT} arrived", got.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for member in &members {
        member.abort();
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), COUNT, "each message once");
    let distinct: BTreeSet<&String> = got.iter().map(|(_, p)| p).collect();
    assert_eq!(distinct.len(), COUNT);
    for member in 0..2 {
        let share = got.iter().filter(|(m, _)| *m == member).count();
        assert!(share >= COUNT / 5, "member {member} handled only {share} of {COUNT}");
    }
    cleanup(&bus, &["jobs"]).await;
}

#[tokio::test]
async fn a_new_connection_loses_nothing() {
    let prefix = prefix();
    let first = connect(&prefix).await;
    let payloads: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    first.publish("audit", payloads.iter().map(|p| Message::new("one-key", p.clone())).collect()).await.unwrap();

    let mut sub = first.subscribe("audit", "archiver").await.unwrap();
    for expected in &payloads[..2] {
        let delivery = next(&mut sub).await;
        assert_eq!(&text(&delivery), expected);
        delivery.ack().await.unwrap();
    }
    let unacked = next(&mut sub).await;
    assert_eq!(text(&unacked), payloads[2]);
    // The process "dies": subscription, delivery and connection go without a word.
    drop(unacked);
    drop(sub);
    first.close().await;
    assert!(matches!(first.publish("audit", vec![Message::new("k", "x")]).await, Err(Error::Closed)));

    let second = connect(&prefix).await;
    let mut sub = second.subscribe("audit", "archiver").await.unwrap();
    for expected in &payloads[2..] {
        let delivery = next(&mut sub).await;
        assert_eq!(&text(&delivery), expected, "per-key order survives the reconnect");
        delivery.ack().await.unwrap();
    }
    assert_quiet(&mut sub, ACK_WAIT + Duration::from_millis(500)).await;

    // A group that joins later still finds everything: the stream kept it.
    let mut late = second.subscribe("audit", "late-joiner").await.unwrap();
    for expected in &payloads {
        let delivery = next(&mut late).await;
        assert_eq!(&text(&delivery), expected);
        delivery.ack().await.unwrap();
    }
    cleanup(&second, &["audit"]).await;
}

#[tokio::test]
async fn closing_ends_subscriptions() {
    let bus = connect(&prefix()).await;
    let mut sub = bus.subscribe("closing", "g").await.unwrap();
    let waiter = tokio::spawn(async move { sub.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = connect(&bus.options().prefix).await;
    bus.close().await;
    assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap());
    cleanup(&other, &["closing"]).await;
}

#[tokio::test]
async fn the_size_limit_is_max_payload_including_headers() {
    let bus = connect(&prefix()).await;
    let max = bus.max_payload();
    assert!(max >= 1024 * 1024, "server max_payload is {max}");

    let probe = Message::new("big-key", "").with_header("ce-id", "0192");
    let fits = bus.max_payload_for(&probe);
    assert!(fits < max, "headers count towards the limit");

    // A batch with one oversized message publishes none of it.
    let oversized = Message { payload: vec![b'y'; fits + 1].into(), ..probe.clone() };
    let result = bus.publish("blobs", vec![Message::new("small", "first"), oversized]).await;
    match result {
        Err(Error::TooLarge { size, limit }) => assert_eq!((size, limit), (max + 1, max)),
        other => panic!("expected TooLarge, got {other:?}"),
    }

    let largest = Message { payload: vec![b'x'; fits].into(), ..probe };
    bus.publish("blobs", vec![largest.clone()]).await.unwrap();
    let mut sub = bus.subscribe("blobs", "reader").await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(delivery.message, largest, "the largest message arrives whole, and the failed batch left nothing");
    delivery.ack().await.unwrap();
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    cleanup(&bus, &["blobs"]).await;
}

/// A server of our own with `max_payload: 2MB`, the setting that 1 MiB payloads need.
struct PrivateServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl PrivateServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &config,
            format!("host: 127.0.0.1\nport: {port}\nmax_payload: 2MB\njetstream {{ store_dir: {store:?} }}\n"),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run /usr/sbin/nats-server ({e}); install nats-server"));
        Self { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[tokio::test]
async fn carries_a_one_mib_payload_when_the_server_allows_it() {
    let server = PrivateServer::start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bus = loop {
        let options = Options { ack_wait: ACK_WAIT, ..Options::with_prefix(prefix()) };
        match NatsBus::connect(&server.url, options).await {
            Ok(bus) => break bus,
            Err(e) if Instant::now() > deadline => panic!("private nats-server did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(bus.max_payload(), 2 * 1024 * 1024);
    let message = Message::new("blob-1", vec![7u8; 1024 * 1024]).with_header("ce-id", "1");
    bus.publish("blobs", vec![message.clone()]).await.unwrap();
    let mut sub = bus.subscribe("blobs", "reader").await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(delivery.message, message);
    delivery.ack().await.unwrap();
}
