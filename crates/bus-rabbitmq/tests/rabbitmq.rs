//! `RabbitBus` against the RabbitMQ broker at 127.0.0.1:5672, beyond the conformance suite: the
//! CloudEvents AMQP binding as another AMQP client sees it, lag, a second process's member of a
//! group, connection failures. Each test works under its own prefix and deletes what it created.
//!
//! Not here: a broker restart. The machine's broker is shared and may not be restarted, and a
//! second broker for the test (another node name, ports and data directory) costs a full
//! Erlang boot per run on a shared two-core machine; what a restart keeps is argued in the
//! crate documentation instead.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{PARTITIONS, Recording, Used};
use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use weir_bus_rabbitmq::{Options, RabbitBus};
use weir_core::bus::{Delivery, Error, Message, Publisher, Subscriber, Subscription, partition_of};

/// A test's bus and what it must delete at the end.
struct Fixture {
    prefix: String,
    used: Arc<Mutex<Used>>,
    bus: Recording,
}

impl Fixture {
    async fn new() -> Self {
        let prefix = common::prefix();
        let used = Arc::default();
        let bus = Recording::new(common::connect_with(common::options(&prefix)).await, Arc::clone(&used));
        Self { prefix, used, bus }
    }

    /// Another process on the same broker and prefix.
    async fn another_process(&self) -> Recording {
        Recording::new(common::connect_with(common::options(&self.prefix)).await, Arc::clone(&self.used))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        common::delete_used(&self.prefix, &self.used);
    }
}

async fn raw_connection() -> Connection {
    Connection::connect(common::URL, ConnectionProperties::default()).await.expect("plain lapin connects")
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("no delivery within 15 s")
        .expect("subscription ended")
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.payload.to_vec()).expect("utf-8 payload")
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref().and_then(|h| h.inner().get(name))
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

async fn lag_becomes(bus: &Recording, topic: &str, group: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lag = bus.lag(topic, group).await.expect("lag");
        if lag == expected {
            return;
        }
        assert!(Instant::now() < deadline, "lag of {group} is {lag}, not {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_attributes_travel_as_amqp_binding_headers() {
    let fixture = Fixture::new().await;
    let topic = "orders.created";
    let odd = "order 1 – für Jürgen\r\n";
    let event = Message::new("order-1", r#"{"total":42}"#)
        .with_header("ce-specversion", "1.0")
        .with_header("ce-id", "0192")
        .with_header("ce-type", "order_created")
        .with_header("ce-subject", odd)
        .with_header("content-type", "application/json")
        .with_header("plain", "kept");
    fixture.bus.publish(topic, vec![event]).await.unwrap();

    // Another AMQP client reads the message off the topic's log, as the broker stores it.
    let connection = raw_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut offset = FieldTable::default();
    offset.insert("x-stream-offset".into(), long_string("first"));
    let mut log = channel
        .basic_consume(
            fixture.bus.bus.log_name(topic).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .unwrap();
    let raw = tokio::time::timeout(Duration::from_secs(10), log.next()).await.unwrap().unwrap().unwrap();
    raw.acker.ack(BasicAckOptions::default()).await.unwrap();
    let properties = &raw.properties;
    assert_eq!(header(properties, "cloudEvents:type"), Some(&long_string("order_created")));
    assert_eq!(header(properties, "cloudEvents:id"), Some(&long_string("0192")));
    assert_eq!(header(properties, "cloudEvents:specversion"), Some(&long_string("1.0")));
    assert_eq!(header(properties, "cloudEvents:subject"), Some(&long_string(odd)), "bytes survive exactly");
    assert_eq!(header(properties, "plain"), Some(&long_string("kept")));
    assert_eq!(header(properties, "weir-key"), Some(&long_string("order-1")));
    assert_eq!(header(properties, "ce-type"), None, "no HTTP-style names on the wire");
    assert_eq!(header(properties, "content-type"), None);
    assert_eq!(properties.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(raw.data, br#"{"total":42}"#);
    drop(log);

    // A message from another client, with the binding's JMS-style prefix, arrives as `ce-*`.
    let group = "billing";
    let mut sub = fixture.bus.subscribe(topic, group).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), r#"{"total":42}"#);
    let publisher = connection.create_channel().await.unwrap();
    publisher.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("cloudEvents_type".into(), long_string("order_paid"));
    headers.insert("cloudEvents:id".into(), long_string("0193"));
    headers.insert("weir-key".into(), long_string("order-2"));
    let partition = partition_of("order-2", PARTITIONS).to_string();
    publisher
        .basic_publish(
            fixture.bus.bus.exchange_name(topic).as_str().into(),
            partition.as_str().into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            b"paid",
            BasicProperties::default().with_headers(headers).with_content_type("text/plain".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let foreign = loop {
        let delivery = next(&mut sub).await;
        if text(&delivery) == "paid" {
            break delivery;
        }
        delivery.ack().await.unwrap();
    };
    let headers = &foreign.message.headers;
    assert_eq!(foreign.message.key, "order-2");
    assert_eq!(headers.get("ce-type").map(String::as_str), Some("order_paid"));
    assert_eq!(headers.get("ce-id").map(String::as_str), Some("0193"));
    assert_eq!(headers.get("content-type").map(String::as_str), Some("text/plain"));
    assert_eq!(foreign.attempt, 1);
    foreign.ack().await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_headers_are_refused_before_anything_is_sent() {
    let fixture = Fixture::new().await;
    for name in ["weir-key", "x-death", "cloudEvents:type", "cloudEvents_id"] {
        let batch = vec![Message::new("k", "ok"), Message::new("k", "bad").with_header(name, "v")];
        let outcome = fixture.bus.publish("reserved", batch).await;
        assert!(matches!(outcome, Err(Error::Transport(_))), "{name}: {outcome:?}");
    }
    assert_eq!(fixture.bus.lag("reserved", "nobody").await.unwrap(), 0, "nothing of the batches was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_history_delays_and_unacked_but_no_markers() {
    let fixture = Fixture::new().await;
    let topic = "lag";
    let messages: Vec<Message> = (0..6).map(|i| Message::new(format!("k{i}"), format!("m{i}"))).collect();
    fixture.bus.publish(topic, messages).await.unwrap();
    lag_becomes(&fixture.bus, topic, "idle", 6).await;

    // Creating a group cuts the log with a marker and copies it: neither is a message.
    let mut sub = fixture.bus.subscribe(topic, "busy").await.unwrap();
    lag_becomes(&fixture.bus, topic, "idle", 6).await;
    lag_becomes(&fixture.bus, topic, "busy", 6).await;

    let first = next(&mut sub).await;
    first.ack().await.unwrap();
    lag_becomes(&fixture.bus, topic, "busy", 5).await;
    let nacked = next(&mut sub).await;
    nacked.nack(Duration::from_secs(300)).await.unwrap();
    lag_becomes(&fixture.bus, topic, "busy", 5).await;

    // Once the history is delivered, new messages go straight to the partitions.
    for _ in 0..4 {
        next(&mut sub).await.ack().await.unwrap();
    }
    fixture.bus.publish(topic, vec![Message::new("late", "m6")]).await.unwrap();
    lag_becomes(&fixture.bus, topic, "busy", 2).await;
    let late = next(&mut sub).await;
    assert_eq!(text(&late), "m6");
    lag_becomes(&fixture.bus, topic, "busy", 2).await;
    late.ack().await.unwrap();
    lag_becomes(&fixture.bus, topic, "busy", 1).await;
    lag_becomes(&fixture.bus, topic, "idle", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_a_group_in_order() {
    let fixture = Fixture::new().await;
    let topic = "takeover";
    let group = "workers";
    let mut first = fixture.bus.subscribe(topic, group).await.unwrap();
    let second_process = fixture.another_process().await;
    let mut standby = second_process.subscribe(topic, group).await.unwrap();
    let messages: Vec<Message> = (0..20).map(|i| Message::new("one-key", format!("{i}"))).collect();
    fixture.bus.publish(topic, messages).await.unwrap();

    // One active consumer per partition: the first process gets the key, the other waits.
    for expected in 0..5 {
        let delivery = next(&mut first).await;
        assert_eq!(text(&delivery), expected.to_string());
        delivery.ack().await.unwrap();
    }
    let held = next(&mut first).await;
    assert_eq!(text(&held), "5");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), standby.next()).await.is_err(),
        "the standby process received a message while the first was active"
    );

    // The first process goes away holding "5": the other carries on from there, in order.
    drop(first);
    drop(held);
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let delivery = next(&mut standby).await;
        let n: usize = text(&delivery).parse().unwrap();
        if !seen.contains(&n) {
            seen.push(n);
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen, (5..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_longer_than_a_level_hops_and_holds_its_key() {
    let fixture = Fixture::new().await;
    let topic = "hops";
    let mut sub = fixture.bus.subscribe(topic, "g").await.unwrap();
    fixture.bus.publish(topic, vec![Message::new("a", "a0"), Message::new("a", "a1")]).await.unwrap();
    let a0 = next(&mut sub).await;
    assert_eq!(text(&a0), "a0");
    let nacked_at = Instant::now();
    // 1.25 s: a 1 s hop and a 200 ms one, then 50 ms ones.
    a0.nack(Duration::from_millis(1_250)).await.unwrap();
    fixture.bus.publish(topic, vec![Message::new("a", "a2"), Message::new("b", "b0")]).await.unwrap();
    let b0 = next(&mut sub).await;
    assert_eq!(text(&b0), "b0", "other keys flow on");
    b0.ack().await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(text(&again), "a0");
    assert!(nacked_at.elapsed() >= Duration::from_millis(1_250), "back after {:?}", nacked_at.elapsed());
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut sub).await;
        rest.push(text(&delivery));
        assert_eq!(delivery.attempt, 1, "a held-back message was not nacked");
        delivery.ack().await.unwrap();
    }
    assert_eq!(rest, ["a1", "a2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_at_once() {
    let started = Instant::now();
    let outcome = RabbitBus::connect("amqp://guest:secret@127.0.0.1:1/%2f", Options::default()).await;
    let Err(Error::Transport(e)) = outcome else { panic!("connect to a closed port: {outcome:?}") };
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let message = e.to_string();
    assert!(message.contains("127.0.0.1:1") && !message.contains("secret"), "{message}");
    for prefix in ["", "a.b", "amq"] {
        let outcome = RabbitBus::connect(common::URL, Options::with_prefix(prefix)).await;
        assert!(matches!(outcome, Err(Error::InvalidName(_))), "{prefix:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_subscriptions_and_refuses_work() {
    let fixture = Fixture::new().await;
    let mut sub = fixture.bus.subscribe("closing", "g").await.unwrap();
    fixture.bus.bus.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("next hung after close");
    assert!(ended.is_none());
    let outcome = fixture.bus.publish("closing", vec![Message::new("k", "x")]).await;
    assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
}
