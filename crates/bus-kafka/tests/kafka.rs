//! What the conformance suite cannot see: how Weir's messages look on Kafka to other clients
//! (the partition of a key, the CloudEvents binding's header names), and the lag's arithmetic.
//! Each test starts a `tansu` broker of its own and reads the wire with a plain rdkafka client.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers as _, OwnedHeaders, OwnedMessage},
    producer::{BaseProducer, BaseRecord, Producer},
};
use weir_bus_kafka::{KafkaBus, Options};
use weir_core::bus::{Error, Message, Publisher, Subscriber, Subscription};
use weir_testkit::server::Server;

const PARTITIONS: u32 = 16;

struct Broker {
    server: Server,
    bus: KafkaBus,
}

impl Broker {
    async fn start() -> Self {
        let server = weir_testkit::server::tansu();
        let bus = KafkaBus::connect(&bootstrap(&server), options())
            .await
            .unwrap_or_else(|e| panic!("cannot use tansu: {e}\n{}", server.log_tail()));
        Self { server, bus }
    }

    fn bootstrap(&self) -> String {
        bootstrap(&self.server)
    }

    /// Every record of `topic` as a plain Kafka client sees it, in no particular order across
    /// partitions; waits until `count` have arrived.
    async fn read_raw(&self, topic: &str, count: usize) -> Vec<OwnedMessage> {
        let bootstrap = self.bootstrap();
        let topic = self.bus.kafka_topic(topic).expect("a valid topic");
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "raw-reader")
                .set("enable.auto.commit", "false")
                .create()
                .expect("a plain consumer");
            let mut list = TopicPartitionList::new();
            for partition in 0..PARTITIONS as i32 {
                list.add_partition_offset(&topic, partition, Offset::Beginning).expect("a partition");
            }
            consumer.assign(&list).expect("assign every partition");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut records = Vec::new();
            while records.len() < count {
                assert!(Instant::now() < deadline, "read {} of {count} records of {topic}", records.len());
                if let Some(record) = consumer.poll(Duration::from_millis(100)) {
                    records.push(record.expect("a record").detach());
                }
            }
            records
        })
        .await
        .expect("the reader")
    }

    /// Per partition of `topic`, what `group` committed, read by a plain client that never joins.
    async fn committed_offsets(&self, topic: &str, group: &str) -> HashMap<i32, Option<i64>> {
        let bootstrap = self.bootstrap();
        let group = self.bus.kafka_group(topic, group).expect("a valid group");
        let topic = self.bus.kafka_topic(topic).expect("a valid topic");
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("a plain consumer");
            let mut list = TopicPartitionList::new();
            for partition in 0..PARTITIONS as i32 {
                list.add_partition(&topic, partition);
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
            let offset = |offset| match offset {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            committed.elements().iter().map(|e| (e.partition(), offset(e.offset()))).collect()
        })
        .await
        .expect("the reader")
    }
}

fn bootstrap(server: &Server) -> String {
    format!("127.0.0.1:{}", server.port())
}

fn options() -> Options {
    Options {
        prefix: "kafka-test".to_owned(),
        partitions: PARTITIONS,
        session_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        fetch_wait: Duration::from_millis(100),
        commit_interval: Duration::from_millis(100),
        batch_messages: Some(1),
        ..Options::default()
    }
}

/// The Java client's `Utils.murmur2`, which its default partitioner (and librdkafka's
/// `murmur2_random`) hashes keys with.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, byte) in rest.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition of a key: `toPositive(murmur2(key)) % partitions`.
fn java_partition(key: &str, partitions: u32) -> i32 {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) as u32 % partitions) as i32
}

#[test]
fn murmur2_matches_the_java_client() {
    // Vectors of Kafka's own `UtilsTest.testMurmur2`.
    for (key, hash) in [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        ("abc", 479_470_107),
    ] {
        assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_partition_the_java_client_picks() {
    let broker = Broker::start().await;
    let keys: Vec<String> =
        (0..40).map(|i| format!("order-{i}")).chain(["", "ü", "a-little-bit-long-string"].map(str::to_owned)).collect();
    let messages: Vec<Message> = keys.iter().map(|key| Message::new(key.clone(), key.clone())).collect();
    broker.bus.publish("partitioning", messages).await.expect("publish");

    let records = broker.read_raw("partitioning", keys.len()).await;
    let mut partitions = std::collections::HashSet::new();
    for record in records {
        let key = String::from_utf8(record.key().expect("every record has a key").to_vec()).expect("a UTF-8 key");
        assert_eq!(record.partition(), java_partition(&key, PARTITIONS), "partition of key {key:?}");
        partitions.insert(record.partition());
    }
    assert!(partitions.len() > 8, "40 keys spread over only {} partitions", partitions.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_headers_travel_as_the_kafka_binding_names_them() {
    let broker = Broker::start().await;
    let message = Message::new("order-1", r#"{"total":42}"#)
        .with_header("ce-specversion", "1.0")
        .with_header("ce-id", "0192-id")
        .with_header("ce-type", "order_created")
        .with_header("ce-subject", "order 1 – für Jürgen")
        .with_header("content-type", "application/json")
        .with_header("traceparent", "00-abc-def-01");
    broker.bus.publish("headers", vec![message.clone()]).await.expect("publish");

    let records = broker.read_raw("headers", 1).await;
    let headers = records[0].headers().expect("the record has headers");
    let on_wire: Vec<(String, String)> = headers
        .iter()
        .map(|h| (h.key.to_owned(), String::from_utf8(h.value.expect("a value").to_vec()).expect("UTF-8")))
        .collect();
    let expected: Vec<(String, String)> = [
        ("ce_id", "0192-id"),
        ("ce_specversion", "1.0"),
        ("ce_subject", "order 1 – für Jürgen"),
        ("ce_type", "order_created"),
        ("content-type", "application/json"),
        ("traceparent", "00-abc-def-01"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .into();
    assert_eq!(on_wire, expected, "the headers on the wire");
    assert_eq!(records[0].key(), Some(&b"order-1"[..]), "the key is the record key");

    // The other way: a record written by another Kafka client in binary mode arrives with
    // Weir's names — after Weir's own of the key, as the client partitions like the Java one.
    let topic = broker.bus.kafka_topic("headers").expect("a valid topic");
    let bootstrap = broker.bootstrap();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("partitioner", "murmur2_random")
            .create()
            .expect("a producer");
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_type", value: Some("order_paid") })
            .insert(Header { key: "ce_id", value: Some("other-1") })
            .insert(Header { key: "content-type", value: Some("application/json") })
            .insert(Header { key: "empty", value: None::<&str> });
        let record = BaseRecord::to(&topic).key("order-1").payload("{}").headers(headers);
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    })
    .await
    .expect("the foreign producer");
    let mut sub = broker.bus.subscribe("headers", "reader").await.expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a delivery").expect("open");
    assert_eq!(first.message, message, "Weir's message comes back as it was published");
    first.ack().await.expect("ack");
    let second = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a delivery").expect("open");
    let headers = &second.message.headers;
    assert_eq!(headers.get("ce-type").map(String::as_str), Some("order_paid"));
    assert_eq!(headers.get("ce-id").map(String::as_str), Some("other-1"));
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(headers.get("empty").map(String::as_str), Some(""), "a null value arrives empty");
    assert!(!headers.keys().any(|name| name.starts_with("ce_")), "no binding names leak: {headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_spelled_like_the_binding_is_refused() {
    let broker = Broker::start().await;
    let message = Message::new("k", "x").with_header("ce_type", "would come back as ce-type");
    let refused = broker.bus.publish("refused", vec![Message::new("k", "first"), message]).await;
    assert!(matches!(refused, Err(Error::Transport(_))), "got {refused:?}");
    assert_eq!(broker.bus.lag("refused", "g").await.expect("lag"), 0, "nothing of the batch was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_refused_before_anything_is_sent() {
    let broker = Broker::start().await;
    let limit = broker.bus.options().max_message_bytes;
    let large = Message::new("k", Bytes::from(vec![7u8; limit]));
    let refused = broker.bus.publish("too-large", vec![Message::new("k", "first"), large]).await;
    assert!(matches!(refused, Err(Error::TooLarge { limit: l, .. }) if l == limit), "got {refused:?}");
    assert_eq!(broker.bus.lag("too-large", "g").await.expect("lag"), 0, "nothing of the batch was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_past_the_committed_offsets_and_creates_nothing() {
    let broker = Broker::start().await;
    let bus = &broker.bus;
    assert_eq!(bus.lag("never-published", "g").await.expect("lag"), 0);
    let metadata_has = |topic: String| {
        let bootstrap = broker.bootstrap();
        async move {
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("allow.auto.create.topics", "false")
                    .create()
                    .expect("a plain consumer");
                let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
                metadata.topics().iter().any(|t| t.name() == topic)
            })
            .await
            .expect("the metadata reader")
        }
    };
    assert!(!metadata_has(bus.kafka_topic("never-published").unwrap()).await, "lag created the topic");

    // Two keys of one partition, so that an ack above an unacked message cannot be committed.
    let first = "order-0".to_owned();
    let partition = java_partition(&first, PARTITIONS);
    let second =
        (1..).map(|i| format!("order-{i}")).find(|key| java_partition(key, PARTITIONS) == partition).expect("a key");
    let others: Vec<String> = (100..104).map(|i| format!("other-{i}")).collect();
    let mut messages = vec![Message::new(first.clone(), "1"), Message::new(second.clone(), "2")];
    messages.extend(others.iter().map(|key| Message::new(key.clone(), "x")));
    let total = messages.len() as u64;
    bus.publish("lag", messages).await.expect("publish");
    assert_eq!(bus.lag("lag", "idle").await.expect("lag"), total, "a group that never subscribed");

    let mut sub = bus.subscribe("lag", "busy").await.expect("subscribe");
    let mut held = None;
    for _ in 0..total {
        let delivery =
            tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a delivery").expect("open");
        if delivery.message.key == first {
            held = Some(delivery);
        } else {
            delivery.ack().await.expect("ack");
        }
    }
    // Everything but `first` is acked; `second` sits above it in its partition, so the
    // committed offset stays below both — yet only `first` is unsettled.
    let settles = |expected: u64, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lag = bus.lag("lag", "busy").await.expect("lag");
            if lag == expected {
                return;
            }
            assert!(Instant::now() < deadline, "lag {what} is {lag}, not {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    settles(1, "with one message held below an acked one").await;
    held.expect("first was delivered").ack().await.expect("ack");
    settles(0, "after every ack").await;
    assert_eq!(bus.lag("lag", "idle").await.expect("lag"), total, "the idle group is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_at_once_when_no_broker_answers() {
    let port = weir_testkit::free_port();
    let started = Instant::now();
    let outcome = KafkaBus::connect(&format!("127.0.0.1:{port}"), options()).await;
    let took = started.elapsed();
    let error = outcome.expect_err("nothing listens there");
    assert!(matches!(error, Error::Transport(_)), "got {error:?}");
    assert!(error.to_string().contains("no Kafka broker"), "an error that says what is wrong: {error}");
    assert!(took < Duration::from_secs(3), "took {took:?}, not at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prefixes_and_kafka_internal_names_are_invalid() {
    for prefix in [".x", "a b", &"p".repeat(49)] {
        let outcome = KafkaBus::connect("127.0.0.1:1", Options::with_prefix(prefix)).await;
        assert!(matches!(outcome, Err(Error::InvalidName(_))), "prefix {prefix:?}: {outcome:?}");
    }
    let broker = Broker::start().await;
    let unprefixed = KafkaBus::connect(&broker.bootstrap(), Options::default()).await.expect("connect");
    let outcome = unprefixed.publish("__consumer_offsets", vec![Message::new("k", "x")]).await;
    assert!(matches!(outcome, Err(Error::InvalidName(_))), "{outcome:?}");
    assert_eq!(unprefixed.kafka_topic("orders").expect("valid"), "orders");
    assert_eq!(broker.bus.kafka_topic("orders").expect("valid"), "kafka-test.orders");
}

/// The environment variable that makes [`a_crashed_members_messages_come_back`] play the member
/// that crashes, in a child process of its own, with the broker's address as its value.
const CRASHING_MEMBER: &str = "WEIR_KAFKA_CRASHING_MEMBER";

/// A member killed while holding a delivery (no close, no leave) is dropped from the group when
/// its session times out; its partitions go to the next member, which gets the message again.
/// The test runs itself again as a child process to be the member that is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_members_messages_come_back() {
    use std::io::{BufRead, BufReader};

    if let Ok(bootstrap) = std::env::var(CRASHING_MEMBER) {
        let bus = KafkaBus::connect(&bootstrap, options()).await.expect("connect");
        let mut sub = bus.subscribe("crash", "crash-group").await.expect("subscribe");
        let held = sub.next().await.expect("a delivery");
        println!("HOLDING {}", String::from_utf8_lossy(&held.message.payload));
        std::future::pending::<()>().await;
    }

    let broker = Broker::start().await;
    broker.bus.publish("crash", vec![Message::new("k", "the message")]).await.expect("publish");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["a_crashed_members_messages_come_back", "--exact", "--nocapture"])
        .env(CRASHING_MEMBER, broker.bootstrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the crashing member");
    let stdout = child.stdout.take().expect("piped");
    let holding = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).find(|line| line.starts_with("HOLDING"))
    });
    let holding = tokio::time::timeout(Duration::from_secs(30), holding).await.expect("the child joined in time");
    assert_eq!(holding.expect("the reader").as_deref(), Some("HOLDING the message"));
    child.kill().expect("kill the member");
    child.wait().expect("reap the member");
    let killed = Instant::now();

    let session = options().session_timeout;
    let mut sub = broker.bus.subscribe("crash", "crash-group").await.expect("subscribe");
    let again = tokio::time::timeout(session + Duration::from_secs(15), sub.next())
        .await
        .expect("the held message came back")
        .expect("open");
    let took = killed.elapsed();
    assert_eq!(again.message.payload, "the message");
    eprintln!("redelivered {took:?} after the member was killed (session timeout {session:?})");
    assert!(took + Duration::from_millis(500) >= session, "back after {took:?}, before the session timed out");
    again.ack().await.expect("ack");
}

/// The environment variable that makes [`a_crashed_members_messages_come_back_to_the_group`]
/// play the member that crashes, with the broker's address as its value.
const CRASHING_PEER: &str = "WEIR_KAFKA_CRASHING_PEER";

/// Two members share a group; one is killed while holding deliveries (no close, no leave), and a
/// replacement joins, as a supervisor would start one. Together the survivor and the
/// replacement get every message — those the dead one held and those of its partitions it never
/// fetched — once the dead one's session has timed out.
///
/// On tansu the replacement is needed: there the survivor alone never gets the dead member's
/// partitions (measured: 20 of 40 messages 26 s after the kill, with a 6 s session timeout). Its
/// heartbeat path drops the dead member and answers `REBALANCE_IN_PROGRESS`, but the group stays
/// formed with its old assignment (tansu-broker 0.6.0, `coordinator/group/administrator.rs`); a
/// join from a new member forms it again. A Kafka broker rebalances on the survivor's rejoin.
///
/// And on tansu the replacement, joining within the dead member's session, makes the group
/// give the dead member a share of the partitions, which nobody reads after its session ends
/// ([`tansu_gives_a_dead_member_partitions_when_a_member_joins`] shows it without Weir). The
/// messages of exactly those partitions may be missing at the deadline: the test then checks that
/// no member here owns their partition and that nothing was committed past them, and has one
/// more member join, which must get them. Anything else missing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_members_messages_come_back_to_the_group() {
    use std::io::{BufRead, BufReader};
    const MESSAGES: usize = 40;

    if let Ok(bootstrap) = std::env::var(CRASHING_PEER) {
        let bus = KafkaBus::connect(&bootstrap, options()).await.expect("connect");
        let mut sub = bus.subscribe("peers", "peer-group").await.expect("subscribe");
        println!("JOINED");
        let mut held = Vec::new();
        while let Some(delivery) = sub.next().await {
            println!("HOLDING {}", String::from_utf8_lossy(&delivery.message.payload));
            held.push(delivery);
        }
        std::future::pending::<()>().await;
    }

    let broker = Broker::start().await;
    let survivor = broker.bus.subscribe("peers", "peer-group").await.expect("subscribe");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["a_crashed_members_messages_come_back_to_the_group", "--exact", "--nocapture"])
        .env(CRASHING_PEER, broker.bootstrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the crashing member");
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let joined = async {
        while let Some(line) = lines.recv().await {
            if line == "JOINED" {
                return;
            }
        }
        panic!("the peer ended before it joined");
    };
    tokio::time::timeout(Duration::from_secs(30), joined).await.expect("the peer joined in time");
    let published: Vec<Message> = (0..MESSAGES).map(|i| Message::new(format!("key-{i}"), format!("m{i}"))).collect();
    broker.bus.publish("peers", published).await.expect("publish");

    // Both members consume until the peer holds some; the survivor acks what it gets.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let consume = |mut sub: Subscription| {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(delivery) = sub.next().await {
                seen.lock().unwrap().insert(String::from_utf8_lossy(&delivery.message.payload).into_owned());
                delivery.ack().await.expect("ack");
            }
        })
    };
    let survivor = consume(survivor);
    let mut held_by_peer = 0;
    let until = Instant::now() + Duration::from_secs(15);
    while held_by_peer == 0 && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), lines.recv()).await {
            Ok(Some(line)) => held_by_peer += usize::from(line.starts_with("HOLDING")),
            Ok(None) => panic!("the peer ended"),
            Err(_) => {}
        }
    }
    assert!(held_by_peer > 0, "the peer got none of {MESSAGES} messages: the test shows nothing");
    child.kill().expect("kill the member");
    child.wait().expect("reap the member");
    let killed = Instant::now();
    let replacement = consume(broker.bus.subscribe("peers", "peer-group").await.expect("subscribe"));

    let session = options().session_timeout;
    let missing = || -> Vec<String> {
        let seen = seen.lock().unwrap();
        (0..MESSAGES).map(|i| format!("m{i}")).filter(|m| !seen.contains(m)).collect()
    };
    let deadline = killed + session + Duration::from_secs(20);
    while !missing().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orphaned = missing();
    let mut rescuer = None;
    if !orphaned.is_empty() {
        // tansu's dead member's share, and nothing else: no member here owns the partition of a
        // missing message, and the group committed nothing past it.
        let owned = broker.bus.assigned_partitions("peers", "peer-group");
        let records = broker.read_raw("peers", MESSAGES).await;
        let position = |payload: &str| {
            let record = records.iter().find(|r| r.payload() == Some(payload.as_bytes())).expect("published");
            (record.partition(), record.offset())
        };
        let committed = broker.committed_offsets("peers", "peer-group").await;
        for message in &orphaned {
            let (partition, offset) = position(message);
            assert!(
                !owned.contains(&partition),
                "{message} (partition {partition}, offset {offset}) did not reach the group within {:?} of \
                 the kill, though a live member owns its partition (owned: {owned:?})",
                killed.elapsed()
            );
            let committed = committed[&partition];
            assert!(
                committed.is_none_or(|committed| committed <= offset),
                "{message} (partition {partition}, offset {offset}) is missing and the group committed \
                 {committed:?} past it"
            );
        }
        eprintln!(
            "{orphaned:?} on partitions no live member owns (owned: {owned:?}) {:?} after the kill: tansu \
             gave them to the dead member; one more member joins",
            killed.elapsed()
        );
        rescuer = Some(consume(broker.bus.subscribe("peers", "peer-group").await.expect("subscribe")));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !missing().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let missing = missing();
    assert!(
        missing.is_empty(),
        "{missing:?} of {MESSAGES} messages did not reach the group within {:?} of the kill (session timeout \
         {session:?}; missing at the first deadline: {orphaned:?})",
        killed.elapsed()
    );
    eprintln!("all back {:?} after the member was killed (session timeout {session:?})", killed.elapsed());
    survivor.abort();
    replacement.abort();
    if let Some(rescuer) = rescuer {
        rescuer.abort();
    }
}

/// The environment variable that makes [`tansu_gives_a_dead_member_partitions_when_a_member_joins`]
/// play the member that is killed, with the broker's address and the topic as its value.
const RAW_DEAD_MEMBER: &str = "WEIR_KAFKA_RAW_DEAD_MEMBER";

/// The group of [`tansu_gives_a_dead_member_partitions_when_a_member_joins`].
const RAW_GROUP: &str = "raw-group";

/// A plain rdkafka member of [`RAW_GROUP`] (no Weir), polled by a thread of its own.
struct RawMember {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    stop: Arc<AtomicBool>,
}

impl RawMember {
    fn join(bootstrap: &str, topic: &str) -> Self {
        let consumer = raw_consumer(bootstrap, topic);
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_owned, thread_stop) = (owned.clone(), stop.clone());
        std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
                let assignment = consumer.assignment().expect("the assignment");
                *thread_owned.lock().unwrap() = assignment.elements().iter().map(|e| e.partition()).collect();
            }
        });
        Self { owned, stop }
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap().clone()
    }
}

impl Drop for RawMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What `members` own together, once `done` says so or `within` has passed.
async fn owned_by(members: &[&RawMember], within: Duration, done: impl Fn(&BTreeSet<i32>) -> bool) -> BTreeSet<i32> {
    let until = Instant::now() + within;
    loop {
        let owned: BTreeSet<i32> = members.iter().flat_map(|member| member.owned()).collect();
        if done(&owned) || Instant::now() >= until {
            return owned;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn raw_consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", RAW_GROUP)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", options().session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", options().heartbeat_interval.as_millis().to_string())
        .create()
        .expect("a plain consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// tansu's group coordinator, shown with plain rdkafka consumers: when a member joins a group
/// while a dead member's session is still running, the leader is told about the dead member too
/// (tansu answers a JoinGroup at once with every member it knows, where Kafka waits for each to
/// rejoin or time out), so the dead member gets a share of the partitions. When its session
/// ends, tansu drops it but keeps the group formed with that assignment: those partitions have
/// no reader until another member joins. If this test fails, tansu was fixed: drop the tolerance
/// in [`a_crashed_members_messages_come_back_to_the_group`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_gives_a_dead_member_partitions_when_a_member_joins() {
    use std::io::{BufRead, BufReader};

    if let Ok(value) = std::env::var(RAW_DEAD_MEMBER) {
        let (bootstrap, topic) = value.split_once(' ').expect("bootstrap and topic");
        let consumer = raw_consumer(bootstrap, topic);
        let mut told = false;
        loop {
            let _ = consumer.poll(Duration::from_millis(100));
            if !told && consumer.assignment().expect("the assignment").count() > 0 {
                println!("ASSIGNED");
                told = true;
            }
        }
    }

    let broker = Broker::start().await;
    broker.bus.publish("raw", vec![Message::new("k", "creates the topic")]).await.expect("publish");
    let bootstrap = broker.bootstrap();
    let topic = broker.bus.kafka_topic("raw").expect("a valid topic");
    let all: BTreeSet<i32> = (0..PARTITIONS as i32).collect();
    let first = RawMember::join(&bootstrap, &topic);
    assert_eq!(owned_by(&[&first], Duration::from_secs(15), |owned| *owned == all).await, all, "the first member");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["tansu_gives_a_dead_member_partitions_when_a_member_joins", "--exact", "--nocapture"])
        .env(RAW_DEAD_MEMBER, format!("{bootstrap} {topic}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the member that dies");
    let stdout = child.stdout.take().expect("piped");
    let assigned = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line == "ASSIGNED")
    });
    let assigned = tokio::time::timeout(Duration::from_secs(30), assigned).await.expect("the second member in time");
    assert!(assigned.expect("the reader"), "the second member ended before its assignment");
    let shared = owned_by(&[&first], Duration::from_secs(15), |owned| !owned.is_empty() && *owned != all).await;
    assert!(!shared.is_empty() && shared != all, "the first member shares with the second: {shared:?}");
    child.kill().expect("kill the member");
    child.wait().expect("reap the member");
    let killed = Instant::now();
    let second = RawMember::join(&bootstrap, &topic);

    // Long after the dead member's session ended, the living own only part of the topic.
    let session = options().session_timeout;
    tokio::time::sleep((killed + session + Duration::from_secs(10)).saturating_duration_since(Instant::now())).await;
    let owned = owned_by(&[&first, &second], Duration::ZERO, |_| true).await;
    let orphaned: Vec<i32> = all.difference(&owned).copied().collect();
    assert!(
        !orphaned.is_empty(),
        "the living members own every partition {:?} after the kill: tansu no longer gives a dead \
         member partitions",
        killed.elapsed()
    );
    eprintln!("{:?} after the kill, no living member owns {orphaned:?}", killed.elapsed());

    // Another member joining forms the group again, without the dead one.
    let third = RawMember::join(&bootstrap, &topic);
    let owned = owned_by(&[&first, &second, &third], Duration::from_secs(20), |owned| *owned == all).await;
    assert_eq!(owned, all, "after another member joined");
}
