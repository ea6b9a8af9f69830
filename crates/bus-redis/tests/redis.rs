//! What the conformance suite cannot check because it is Redis's: durability across a crash of
//! Redis itself (a redis-server of the test's own, with `appendfsync always`, killed with
//! `SIGKILL`), the take-over of a dead member's entries under another consumer name, the entry
//! layout, retention, and the errors of `connect` and `publish`. The other cases use the
//! machine's Redis at 127.0.0.1:6379 under a prefix of their own.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::time::timeout;
use uuid::Uuid;
use weir_bus_redis::{Options, RedisBus};
use weir_core::bus::{Delivery, Error, Message, Publisher, Subscriber, Subscription};

const SHARED_URL: &str = "redis://127.0.0.1:6379";

fn options(prefix: &str, consumer: &str) -> Options {
    Options {
        prefix: prefix.to_owned(),
        consumer: Some(consumer.to_owned()),
        claim_idle: Duration::from_secs(1),
        ..Options::default()
    }
}

fn unique(what: &str) -> String {
    format!("{what}-{}", Uuid::now_v7().simple())
}

fn numbered(key: &str, seq: usize) -> Message {
    Message::new(key, format!("{key}#{seq}"))
}

fn label(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.payload.to_vec()).expect("a label")
}

async fn next(sub: &mut Subscription, within: Duration, what: &str) -> Delivery {
    match timeout(within, sub.next()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("the subscription ended while waiting for {what}"),
        Err(_) => panic!("nothing delivered within {within:?} while waiting for {what}"),
    }
}

/// Deletes a prefix's keys from the shared server when the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(SHARED_URL) else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, format!("{}:*", self.0)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

/// With `appendonly yes` + `appendfsync always`, a `SIGKILL` of Redis loses no acknowledged
/// publish, no ack, no nack (with its attempt count) and no group position; a bus connected before
/// the crash reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_a_crash_of_redis() {
    const KEYS: usize = 5;
    const PER_KEY: usize = 10;
    let mut server = weir_testkit::server::redis(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = format!("redis://127.0.0.1:{}", server.port());
    let (topic, group, fresh) = ("orders", "billing", "audit");
    let published: Vec<Message> =
        (0..PER_KEY).flat_map(|seq| (0..KEYS).map(move |k| numbered(&format!("k{k}"), seq))).collect();
    let all: HashSet<String> = published.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();

    let bus = RedisBus::connect(&url, options("durable", "member-1")).await.expect("connect");
    for batch in published.chunks(7) {
        bus.publish(topic, batch.to_vec()).await.expect("publish");
    }
    let mut sub = bus.subscribe(topic, group).await.expect("subscribe");
    let mut acked = HashSet::new();
    while acked.len() < 20 {
        let delivery = next(&mut sub, Duration::from_secs(5), "a message to ack").await;
        acked.insert(label(&delivery));
        delivery.ack().await.expect("ack");
    }
    let nacked = next(&mut sub, Duration::from_secs(5), "a message to nack").await;
    let nacked_label = label(&nacked);
    nacked.nack(Duration::from_secs(1)).await.expect("nack");
    let held = next(&mut sub, Duration::from_secs(5), "a message to hold").await;
    let held_label = label(&held);
    drop(sub);

    server.kill();
    server.restart();

    // The bus from before the crash reconnects: a publish goes through within a few tries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = bus.publish("after-crash", vec![numbered("x", 0)]).await {
        assert!(Instant::now() < deadline, "the old connection did not recover: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    drop(bus);

    // The process restarts too, under its name.
    let bus = RedisBus::connect(&url, options("durable", "member-1")).await.expect("connect after restart");
    assert_eq!(bus.lag(topic, group).await.expect("lag"), (KEYS * PER_KEY - acked.len()) as u64);
    assert_eq!(bus.lag(topic, fresh).await.expect("lag"), (KEYS * PER_KEY) as u64);

    let mut sub = bus.subscribe(topic, group).await.expect("subscribe after restart");
    let missing: HashSet<String> = all.difference(&acked).cloned().collect();
    let mut seen = HashSet::new();
    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    while seen.len() < missing.len() {
        let delivery = next(&mut sub, Duration::from_secs(10), "the unacked messages after the crash").await;
        let label = label(&delivery);
        assert!(!acked.contains(&label), "{label} was acked before the crash, yet came back");
        if label == nacked_label {
            assert_eq!(delivery.attempt, 2, "the nacked message's attempt count did not survive");
        }
        if seen.insert(label.clone()) {
            let (key, seq) = label.rsplit_once('#').unwrap();
            order.entry(key.to_owned()).or_default().push(seq.parse().unwrap());
        }
        delivery.ack().await.expect("ack");
    }
    assert!(seen.contains(&held_label) && seen.contains(&nacked_label));
    for (key, seqs) in order {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "messages of {key} came back out of order after the crash");
    }
    assert_eq!(bus.lag(topic, group).await.expect("lag"), 0);
}

/// A member that dies holding a key's messages — one with a member, the later ones held back —
/// leaves them pending; a member under another name takes them over after the claim idle time
/// and hands them out in order, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_members_messages_are_taken_over_in_order() {
    let prefix = unique("takeover");
    let _cleanup = Cleanup(prefix.clone());
    let (topic, group) = ("t", "g");
    let first = RedisBus::connect(SHARED_URL, options(&prefix, "first")).await.expect("connect");
    let mut sub = first.subscribe(topic, group).await.expect("subscribe");
    first.publish(topic, (0..5).map(|seq| numbered("k", seq)).collect()).await.expect("publish");
    let in_flight = next(&mut sub, Duration::from_secs(5), "the first message").await;
    assert_eq!(label(&in_flight), "k#0");
    // The process dies: its tasks stop, nothing is settled.
    drop(sub);
    drop(first);
    std::mem::forget(in_flight);

    let died = Instant::now();
    let second = RedisBus::connect(SHARED_URL, options(&prefix, "second")).await.expect("connect");
    let mut sub = second.subscribe(topic, group).await.expect("subscribe");
    for seq in 0..5 {
        let delivery = next(&mut sub, Duration::from_secs(5), "a taken over message").await;
        assert_eq!(label(&delivery), format!("k#{seq}"), "taken over out of order");
        if seq == 0 {
            assert!(died.elapsed() >= Duration::from_millis(900), "taken over before the claim idle time");
            assert!(delivery.attempt >= 2, "a taken over message counts its earlier delivery");
        }
        let early = timeout(Duration::from_millis(100), sub.next()).await;
        assert!(early.is_err(), "a message was handed out before the previous one of its key was acked");
        delivery.ack().await.expect("ack");
    }
    assert_eq!(second.lag(topic, group).await.expect("lag"), 0);
}

/// A member that nacked a message and died holding its key's later ones: the successor (another
/// name) holds the key back until the nacked message's retry came due and was acked — whether it
/// started after the death (it reads the waiting retries at start, which also holds back a new
/// message of the key published meanwhile) or was running already (it looks them up for every
/// entry it takes over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_holds_its_key_for_a_successor_started_later() {
    waiting_retry_holds_its_key(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_holds_its_key_for_a_successor_running_already() {
    waiting_retry_holds_its_key(true).await;
}

async fn waiting_retry_holds_its_key(successor_running: bool) {
    let prefix = unique("successor");
    let _cleanup = Cleanup(prefix.clone());
    let (topic, group) = ("t", "g");
    let delay = Duration::from_secs(3);
    let first = RedisBus::connect(SHARED_URL, options(&prefix, "first")).await.expect("connect");
    first.publish(topic, (0..3).map(|seq| numbered("k", seq)).collect()).await.expect("publish");
    first.publish(topic, vec![numbered("other", 0)]).await.expect("publish");
    let mut sub = first.subscribe(topic, group).await.expect("subscribe");
    // Its first delivery means the first member has read (and holds) everything.
    let mut delivery = next(&mut sub, Duration::from_secs(5), "a first delivery").await;
    let second = RedisBus::connect(SHARED_URL, options(&prefix, "second")).await.expect("connect");
    let mut successor = None;
    if successor_running {
        successor = Some(second.subscribe(topic, group).await.expect("subscribe"));
    }
    while label(&delivery) != "k#0" {
        std::mem::forget(delivery);
        delivery = next(&mut sub, Duration::from_secs(5), "k#0").await;
    }
    delivery.nack(delay).await.expect("nack");
    let nacked_at = Instant::now();
    drop(sub);
    drop(first);

    let mut expected = vec!["k#0", "k#1", "k#2"];
    let mut sub = match successor {
        Some(sub) => sub,
        None => {
            second.publish(topic, vec![numbered("k", 3)]).await.expect("publish");
            expected.push("k#3");
            second.subscribe(topic, group).await.expect("subscribe")
        }
    };
    let mut order = Vec::new();
    while order.len() < expected.len() + 1 {
        let delivery = next(&mut sub, delay * 3, "the messages of the dead member").await;
        let label = label(&delivery);
        if label == "k#0" {
            assert!(nacked_at.elapsed() + Duration::from_millis(20) >= delay, "retried before its delay");
            assert_eq!(delivery.attempt, 2);
        }
        order.push(label);
        delivery.ack().await.expect("ack");
    }
    let ks: Vec<&String> = order.iter().filter(|l| l.starts_with("k#")).collect();
    assert_eq!(ks, expected, "the successor let the key's later messages overtake its retry");
}

/// An entry holds the key, each header as `h:<name>` and the payload, exactly as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_hold_key_headers_and_payload_as_fields() {
    let prefix = unique("layout");
    let _cleanup = Cleanup(prefix.clone());
    let bus = RedisBus::connect(SHARED_URL, Options { partitions: 1, ..options(&prefix, "m") }).await.expect("connect");
    let payload = Bytes::from_static(&[0, 159, 255, b'\r', b'\n']);
    let message = Message::new("order 1", payload.clone()).with_header("ce-type", "order_created").with_header("x", "");
    bus.publish("t", vec![message]).await.expect("publish");

    let streams = bus.streams("t").expect("streams");
    assert_eq!(streams, [format!("{prefix}:{{t}}:0")]);
    let client = redis::Client::open(SHARED_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<Vec<u8>>)> =
        redis::cmd("XRANGE").arg(&streams[0]).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    assert_eq!(entries.len(), 1);
    let fields: Vec<&[u8]> = entries[0].1.iter().map(Vec::as_slice).collect();
    let expected: [&[u8]; 8] = [b"key", b"order 1", b"h:ce-type", b"order_created", b"h:x", b"", b"payload", &payload];
    assert_eq!(fields, expected);
}

/// By default nothing is trimmed; with `max_len` each stream keeps about that many entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_only_when_asked() {
    let prefix = unique("retention");
    let _cleanup = Cleanup(prefix.clone());
    let client = redis::Client::open(SHARED_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (max_len, topic) in [(None, "kept"), (Some(10), "trimmed")] {
        let options = Options { partitions: 1, max_len, ..options(&prefix, "m") };
        let bus = RedisBus::connect(SHARED_URL, options).await.expect("connect");
        for chunk in (0..1000).collect::<Vec<_>>().chunks(100) {
            bus.publish(topic, chunk.iter().map(|i| numbered("k", *i)).collect()).await.expect("publish");
        }
        let len: usize = redis::cmd("XLEN").arg(&bus.streams(topic).unwrap()[0]).query_async(&mut conn).await.unwrap();
        match max_len {
            None => assert_eq!(len, 1000, "trimmed without being asked"),
            // `~` trims whole nodes of (by default) 100 entries.
            Some(n) => assert!((n..=n + 100).contains(&len), "kept {len} entries with max_len {n}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_fail_the_whole_batch() {
    let prefix = unique("size");
    let _cleanup = Cleanup(prefix.clone());
    let bus = RedisBus::connect(SHARED_URL, Options { max_message_bytes: 1000, ..options(&prefix, "m") })
        .await
        .expect("connect");
    let batch = vec![numbered("k", 0), Message::new("k", vec![0u8; 1001])];
    match bus.publish("t", batch).await {
        Err(Error::TooLarge { size: 1002, limit: 1000 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(bus.lag("t", "g").await.expect("lag"), 0, "part of a refused batch was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_at_once_when_redis_is_unreachable() {
    let port = weir_testkit::free_port();
    let started = Instant::now();
    let outcome = RedisBus::connect(&format!("redis://127.0.0.1:{port}"), Options::default()).await;
    let e = outcome.expect_err("connected to nothing");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?} to fail", started.elapsed());
    assert!(e.to_string().contains("cannot reach Redis at 127.0.0.1"), "unclear error: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_are_errors() {
    for options in [
        Options::with_prefix("a:b"),
        Options::with_prefix(""),
        Options { partitions: 0, ..Options::default() },
        Options { consumer: Some("a b".to_owned()), ..Options::default() },
    ] {
        let outcome = RedisBus::connect(SHARED_URL, options.clone()).await;
        assert!(matches!(outcome, Err(Error::InvalidName(_))), "{options:?} gave {outcome:?}");
    }
    assert!(RedisBus::connect("http://nonsense", Options::default()).await.is_err());
}
