//! Black-box tests of `SqliteLog` through the bus ports.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use weir_core::bus::{Delivery, Error, Message, Publisher, Subscriber, Subscription, TYPE_HEADER, TypeFilter};
use weir_store_sqlite::{Browse, Disposal, LetterError, LetterQuery, LogOptions, SqliteLog};

const PATIENCE: Duration = Duration::from_secs(10);

fn options() -> LogOptions {
    LogOptions { lease_ttl: Duration::from_secs(2), ..LogOptions::default() }
}

fn open(path: &Path) -> SqliteLog {
    SqliteLog::open(path.join("log.sqlite"), options()).expect("open the log")
}

fn msg(key: &str, seq: usize) -> Message {
    Message::new(key, format!("{key}#{seq}"))
}

fn label(d: &Delivery) -> String {
    String::from_utf8(d.message.payload.to_vec()).expect("utf-8 payload")
}

async fn next(sub: &mut Subscription, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, sub.next()).await.ok().flatten()
}

async fn expect(sub: &mut Subscription, what: &str) -> Delivery {
    next(sub, PATIENCE).await.unwrap_or_else(|| panic!("no delivery: {what}"))
}

/// Acks everything until `expected` has been seen; returns the labels in delivery order.
async fn consume_all(sub: &mut Subscription, expected: &HashSet<String>) -> Vec<String> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    while !expected.is_subset(&seen) {
        let d = next(sub, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("stalled after {} of {} messages", seen.len(), expected.len()));
        let l = label(&d);
        d.ack().await.expect("ack");
        seen.insert(l.clone());
        order.push(l);
    }
    order
}

/// Nothing arrives within `quiet`.
async fn assert_quiet(sub: &mut Subscription, quiet: Duration) {
    if let Some(d) = next(sub, quiet).await {
        panic!("unexpected delivery {}", label(&d));
    }
}

fn labels(messages: &[Message]) -> HashSet<String> {
    messages.iter().map(|m| String::from_utf8(m.payload.to_vec()).expect("utf-8")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_consume_with_headers() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let caps = Publisher::capabilities(&log);
    assert_eq!(caps, Subscriber::capabilities(&log));
    assert!(caps.ordered_per_key && caps.persistent && caps.consumer_groups && caps.delayed_redelivery);
    let sent = msg("k", 0).with_header("ce-type", "order_created").with_header("traceparent", "00-ab-cd-01");
    log.publish("orders", vec![sent.clone()]).await.expect("publish");
    let mut sub = log.subscribe("orders", "billing").await.expect("subscribe");
    let d = expect(&mut sub, "the message").await;
    assert_eq!(d.message, sent);
    assert_eq!(d.topic, "orders");
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("ack");
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_with_concurrent_publishers_and_acks() {
    const KEYS: usize = 12;
    const PER_KEY: usize = 40;
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (p..KEYS).step_by(4).map(|k| format!("key{k}")).collect();
                for seq in 0..PER_KEY {
                    let batch = keys.iter().map(|k| msg(k, seq)).collect();
                    log.publish("t", batch).await.expect("publish");
                }
            })
        })
        .collect();
    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut early = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..KEYS * PER_KEY {
        let d = expect(&mut sub, "the next message").await;
        let l = label(&d);
        let (key, seq) = l.split_once('#').expect("label");
        let seq: usize = seq.parse().expect("seq");
        if seq > 0 && !acked.lock().expect("lock").contains(&format!("{key}#{}", seq - 1)) {
            early.push(l.clone());
        }
        order.entry(key.to_owned()).or_default().push(seq);
        let acked = acked.clone();
        acks.spawn(async move {
            tokio::time::sleep(Duration::from_millis((seq % 3) as u64)).await;
            acked.lock().expect("lock").insert(l);
            d.ack().await
        });
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    while let Some(result) = acks.join_next().await {
        result.expect("ack task").expect("ack");
    }
    assert!(early.is_empty(), "delivered before the previous message of its key was acked: {early:?}");
    for (key, seqs) in order {
        assert_eq!(seqs, (0..PER_KEY).collect::<Vec<_>>(), "{key} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_after_the_delay_with_a_higher_attempt() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    log.publish("t", vec![msg("k", 0)]).await.expect("publish");
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let first = expect(&mut sub, "first").await;
    assert_eq!(first.attempt, 1);
    let nacked = Instant::now();
    first.nack(Duration::from_millis(500)).await.expect("nack");
    let second = expect(&mut sub, "redelivery").await;
    assert!(nacked.elapsed() >= Duration::from_millis(490), "redelivered after {:?}", nacked.elapsed());
    assert_eq!((label(&second), second.attempt), ("k#0".to_owned(), 2));
    second.nack(Duration::ZERO).await.expect("nack");
    let third = expect(&mut sub, "second redelivery").await;
    assert_eq!(third.attempt, 3);
    third.ack().await.expect("ack");
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_holds_back_only_its_own_key() {
    let dir = tempfile::tempdir().expect("dir");
    // One partition: every key shares the nacked key's partition.
    let log = SqliteLog::open(dir.path().join("log.sqlite"), LogOptions { partitions: 1, ..options() }).expect("open");
    let mut published = vec![msg("held", 0), msg("held", 1), msg("held", 2)];
    published.extend((0..30).map(|k| msg(&format!("other{k}"), 0)));
    log.publish("t", published).await.expect("publish");
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let delay = Duration::from_millis(800);
    let mut nacked_at = None;
    let mut held = Vec::new();
    let mut others = 0;
    while held.len() < 3 {
        let d = expect(&mut sub, "a message").await;
        let l = label(&d);
        if l == "held#0" && nacked_at.is_none() {
            nacked_at = Some(Instant::now());
            d.nack(delay).await.expect("nack");
            continue;
        }
        if l.starts_with("held") {
            if held.is_empty() {
                assert_eq!(others, 30, "other keys waited for the nacked key");
                assert!(nacked_at.expect("nacked").elapsed() >= delay - Duration::from_millis(10));
                assert_eq!(d.attempt, 2);
            } else {
                assert_eq!(d.attempt, 1, "parked messages were never delivered before");
            }
            held.push(l);
        } else {
            others += 1;
        }
        d.ack().await.expect("ack");
    }
    assert_eq!(held, ["held#0", "held#1", "held#2"]);
    // A later message of the key flows normally once its queue is empty.
    log.publish("t", vec![msg("held", 3)]).await.expect("publish");
    let d = expect(&mut sub, "held#3").await;
    assert_eq!((label(&d), d.attempt), ("held#3".to_owned(), 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_unsettled_comes_back() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    log.publish("t", vec![msg("k", 0), msg("k", 1)]).await.expect("publish");
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let d = expect(&mut sub, "first").await;
    assert_eq!(label(&d), "k#0");
    drop(d);
    let again = expect(&mut sub, "redelivery").await;
    assert_eq!((label(&again), again.attempt), ("k#0".to_owned(), 2));
    again.ack().await.expect("ack");
    let d = expect(&mut sub, "second").await;
    assert_eq!(label(&d), "k#1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_hands_unsettled_messages_to_the_next_member() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let published: Vec<Message> = (0..20).map(|i| msg(&format!("k{}", i % 4), i / 4)).collect();
    log.publish("t", published.clone()).await.expect("publish");
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let mut acked = HashSet::new();
    while acked.len() < 5 {
        let d = expect(&mut sub, "a message").await;
        acked.insert(label(&d));
        d.ack().await.expect("ack");
    }
    let held = expect(&mut sub, "a message to hold").await;
    let held_label = label(&held);
    drop(sub);
    // Settling after the subscription is gone is allowed; it may fail with `Closed`.
    assert!(matches!(held.ack().await, Ok(()) | Err(Error::Closed)));
    let mut sub = log.subscribe("t", "g").await.expect("resubscribe");
    let missing: HashSet<String> = labels(&published).difference(&acked).cloned().collect();
    let order = consume_all(&mut sub, &missing).await;
    assert!(order.contains(&held_label));
    assert!(!order.iter().any(|l| acked.contains(l)), "acked messages came back: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_member_gets_only_its_types_in_order_and_passes_the_rest() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let typed = |key: &str, seq, kind: &str| {
        let mut m = msg(key, seq);
        m.headers.insert(TYPE_HEADER.into(), kind.into());
        m
    };
    let published = vec![
        typed("a", 0, "wanted"),
        typed("a", 1, "ignored"),
        msg("a", 2),
        typed("b", 3, "ignored"),
        typed("a", 4, "wanted"),
    ];
    log.publish("t", published.clone()).await.expect("publish");
    let wants: TypeFilter = Arc::new(|kind: &str| kind == "wanted");
    let mut sub = log.subscribe_filtered("t", "g", wants).await.expect("subscribe");
    // One key, in order; the message without a type header is delivered.
    for expected in ["a#0", "a#2", "a#4"] {
        let d = expect(&mut sub, expected).await;
        assert_eq!(label(&d), expected);
        d.ack().await.expect("ack");
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    drop(sub);
    // The group's position passed the refused messages too: the next member gets nothing.
    let mut next_member = log.subscribe("t", "g").await.expect("resubscribe");
    assert_quiet(&mut next_member, Duration::from_millis(500)).await;
    // Another group, unfiltered, gets all five.
    let mut other = log.subscribe("t", "other").await.expect("subscribe");
    assert_eq!(consume_all(&mut other, &labels(&published)).await.len(), 5);
}

/// The types a filtered member refuses never reach its router, so the log counts them in the
/// router's metric. (nextest runs each test in its own process: the global recorder is this
/// test's alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_types_are_counted_as_skipped() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this process");
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let typed = |key: &str, seq, kind: &str| {
        let mut m = msg(key, seq);
        m.headers.insert(TYPE_HEADER.into(), kind.into());
        m
    };
    let published: Vec<Message> =
        (0..6).map(|i| typed(&format!("k{i}"), i, if i % 3 == 0 { "wanted" } else { "ignored" })).collect();
    log.publish("t", published).await.expect("publish");
    let wants: TypeFilter = Arc::new(|kind: &str| kind == "wanted");
    let mut sub = log.subscribe_filtered("t", "g", wants).await.expect("subscribe");
    for _ in 0..2 {
        expect(&mut sub, "a wanted message").await.ack().await.expect("ack");
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    let rendered = metrics.render();
    let line = rendered.lines().find(|l| l.starts_with("weir_handler_skipped_total{")).unwrap_or_else(|| {
        panic!("no weir_handler_skipped_total in:\n{rendered}");
    });
    assert!(line.contains(r#"topic="t""#) && line.contains(r#"group="g""#), "{line}");
    assert!(line.ends_with(" 4"), "four of six refused: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_everything() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let mut early = log.subscribe("t", "early").await.expect("subscribe");
    let published: Vec<Message> = (0..50).map(|i| msg(&format!("k{}", i % 7), i)).collect();
    log.publish("t", published.clone()).await.expect("publish");
    let mut late = log.subscribe("t", "late").await.expect("subscribe");
    let expected = labels(&published);
    let (a, b) = tokio::join!(consume_all(&mut early, &expected), consume_all(&mut late, &expected));
    assert_eq!(a.len(), 50);
    assert_eq!(b.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_load() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let subs = vec![log.subscribe("t", "g").await.expect("a"), log.subscribe("t", "g").await.expect("b")];
    let published: Vec<Message> = (0..200).map(|i| msg(&format!("k{i}"), 0)).collect();
    let total = Arc::new(Mutex::new(HashSet::new()));
    let workers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            let total = total.clone();
            tokio::spawn(async move {
                let mut mine = 0;
                let deadline = Instant::now() + PATIENCE;
                while total.lock().expect("lock").len() < 200 && Instant::now() < deadline {
                    let Some(d) = next(&mut sub, Duration::from_millis(100)).await else { continue };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    total.lock().expect("lock").insert(label(&d));
                    d.ack().await.expect("ack");
                    mine += 1;
                }
                mine
            })
        })
        .collect();
    log.publish("t", published).await.expect("publish");
    let mut shares = Vec::new();
    for w in workers {
        shares.push(w.await.expect("worker"));
    }
    assert_eq!(total.lock().expect("lock").len(), 200);
    assert!(shares.iter().all(|s| *s > 0), "the load was not shared: {shares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reopen_without_loss_and_resumes_from_the_position() {
    let dir = tempfile::tempdir().expect("dir");
    let published: Vec<Message> = (0..100).map(|i| msg(&format!("k{}", i % 5), i)).collect();
    let mut acked = HashSet::new();
    {
        let log = open(dir.path());
        log.publish("t", published.clone()).await.expect("publish");
        let mut sub = log.subscribe("t", "g").await.expect("subscribe");
        while acked.len() < 40 {
            let d = expect(&mut sub, "before restart").await;
            acked.insert(label(&d));
            d.ack().await.expect("ack");
        }
        let _held = expect(&mut sub, "held across the restart").await;
        log.close().await;
    }
    let log = open(dir.path());
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let missing: HashSet<String> = labels(&published).difference(&acked).cloned().collect();
    let order = consume_all(&mut sub, &missing).await;
    assert_eq!(order.len(), missing.len(), "acked messages came back after a clean close: {order:?}");
    let mut fresh = log.subscribe("t", "fresh").await.expect("subscribe");
    consume_all(&mut fresh, &labels(&published)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_persist_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = open(dir.path());
        log.publish("t", vec![msg("k", 0), msg("k", 1)]).await.expect("publish");
        let mut sub = log.subscribe("t", "g").await.expect("subscribe");
        let d = expect(&mut sub, "first").await;
        d.nack(Duration::from_millis(300)).await.expect("nack");
        log.close().await;
    }
    let log = open(dir.path());
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let d = expect(&mut sub, "after restart").await;
    assert_eq!((label(&d), d.attempt), ("k#0".to_owned(), 2));
    d.ack().await.expect("ack");
    let d = expect(&mut sub, "the parked message").await;
    assert_eq!((label(&d), d.attempt), ("k#1".to_owned(), 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_of_a_crashed_member_is_taken_over() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("log.sqlite");
    let log = open(dir.path());
    log.publish("t", vec![msg("a", 0), msg("b", 0), msg("c", 0)]).await.expect("publish");
    // A member of another process held every partition and died: its leases expire soon.
    {
        let conn = rusqlite::Connection::open(&path).expect("raw connection");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
        conn.execute(
            "INSERT INTO members (grp, topic_id, owner, expires_at)
             SELECT 'g', id, 'ghost', ?1 FROM topics WHERE name = 't'",
            [now + 700],
        )
        .expect("ghost member");
        conn.execute(
            "WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n < 7)
             INSERT INTO leases (grp, topic_id, partition, owner, expires_at)
             SELECT 'g', (SELECT id FROM topics WHERE name = 't'), n, 'ghost', ?1 FROM p",
            [now + 700],
        )
        .expect("ghost leases");
    }
    let started = Instant::now();
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let first = expect(&mut sub, "after the takeover").await;
    assert!(started.elapsed() >= Duration::from_millis(600), "took a lease that was still alive");
    first.ack().await.expect("ack");
    let expected = HashSet::from(["a#0".to_owned(), "b#0".to_owned(), "c#0".to_owned()]);
    let mut rest = HashSet::new();
    while rest.len() < 2 {
        let d = expect(&mut sub, "the rest").await;
        rest.insert(label(&d));
        d.ack().await.expect("ack");
    }
    assert!(rest.is_subset(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_message_arrives_intact() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let payload: Vec<u8> = (0..1 << 20).map(|i: usize| (i % 251) as u8).collect();
    log.publish("t", vec![Message::new("big", payload.clone()), msg("big", 1)]).await.expect("publish");
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let d = expect(&mut sub, "the big message").await;
    assert!(d.message.payload == payload);
    d.ack().await.expect("ack");
    assert_eq!(label(&expect(&mut sub, "the next").await), "big#1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("dir");
    let log = SqliteLog::open(dir.path().join("log.sqlite"), LogOptions { max_message_bytes: 1000, ..options() })
        .expect("open");
    assert!(matches!(log.publish("a b", vec![msg("k", 0)]).await, Err(Error::InvalidName(_))));
    assert!(matches!(log.subscribe("t", "").await, Err(Error::InvalidName(_))));
    assert!(matches!(log.subscribe("", "g").await, Err(Error::InvalidName(_))));
    let too_large = log.publish("t", vec![Message::new("k", vec![0u8; 1001])]).await;
    assert!(matches!(too_large, Err(Error::TooLarge { size: 1002, limit: 1000 })), "{too_large:?}");
    log.publish("t", Vec::new()).await.expect("an empty batch is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions_and_publishing() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let waiting = tokio::spawn(async move { sub.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.close().await;
    assert!(tokio::time::timeout(PATIENCE, waiting).await.expect("next() returned").expect("task"));
    assert!(matches!(log.publish("t", vec![msg("k", 0)]).await, Err(Error::Closed)));
    assert!(matches!(log.subscribe("t", "g").await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_what_every_group_passed() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    log.publish("t", (0..10).map(|i| msg("k", i)).collect()).await.expect("publish");
    let mut fast = log.subscribe("t", "fast").await.expect("subscribe");
    let mut slow = log.subscribe("t", "slow").await.expect("subscribe");
    consume_all(&mut fast, &labels(&(0..10).map(|i| msg("k", i)).collect::<Vec<_>>())).await;
    consume_all(&mut slow, &labels(&(0..4).map(|i| msg("k", i)).collect::<Vec<_>>())).await;
    // Positions are committed in batches a few milliseconds apart; closing flushes them.
    drop((fast, slow));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.prune(Duration::from_secs(3600)).await.expect("prune"), 0, "nothing is old enough");
    let deleted = log.prune(Duration::ZERO).await.expect("prune");
    assert_eq!(deleted, 4, "only what the slow group passed");
    let mut fresh = log.subscribe("t", "new").await.expect("subscribe");
    let order = consume_all(&mut fresh, &labels(&(4..10).map(|i| msg("k", i)).collect::<Vec<_>>())).await;
    assert_eq!(order.first().map(String::as_str), Some("k#4"), "a new group starts at the oldest retained message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_goes_on_chunk_by_chunk_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    // More than one prune operation deletes, in several batches of publishes.
    const N: usize = 12_000;
    for batch in 0..(N / 1_000) {
        log.publish("t", (0..1_000).map(|i| msg(&format!("k{}", i % 50), batch * 1_000 + i)).collect()).await.unwrap();
    }
    dead_letters_of_orders(&log, 2).await;
    let mut sub = log.subscribe("t", "g").await.unwrap();
    let mut audit = log.subscribe("orders.dlq", "audit").await.unwrap();
    consume_all(&mut sub, &labels(&(0..N).map(|i| msg(&format!("k{}", i % 50), i)).collect::<Vec<_>>())).await;
    consume_all(&mut audit, &["order-1#0", "order-1#1"].map(String::from).into()).await;
    drop((sub, audit));
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(log.prune(Duration::ZERO).await.unwrap(), N as u64, "every settled message, in chunks");
    assert_eq!(log.dead_letters(LetterQuery::default()).await.unwrap().total, 2, "settled dead letters stay");
    assert_eq!(log.prune(Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_keep_their_messages_apart() {
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let mut subs = HashMap::new();
    for t in 0..20 {
        subs.insert(format!("topic{t}"), log.subscribe(&format!("topic{t}"), "g").await.expect("subscribe"));
    }
    for t in 0..20 {
        log.publish(&format!("topic{t}"), vec![msg(&format!("topic{t}"), 0)]).await.expect("publish");
    }
    for (topic, sub) in &mut subs {
        let d = expect(sub, topic).await;
        assert_eq!((d.topic.as_str(), label(&d)), (topic.as_str(), format!("{topic}#0")));
    }
}

/// Prints throughput for a quick look (debug build, so far below the release figure); asserts
/// only that everything arrived. `cargo run --release --example throughput` measures properly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_smoke() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().expect("dir");
    let log = open(dir.path());
    let mut sub = log.subscribe("t", "g").await.expect("subscribe");
    let started = Instant::now();
    let publisher = {
        let log = log.clone();
        tokio::spawn(async move {
            for b in 0..N / 500 {
                let batch = (0..500).map(|i| msg(&format!("k{}", i % 64), b * 500 + i)).collect();
                log.publish("t", batch).await.expect("publish");
            }
        })
    };
    for _ in 0..N {
        expect(&mut sub, "the next message").await.ack().await.expect("ack");
    }
    publisher.await.expect("publisher");
    let secs = started.elapsed().as_secs_f64();
    println!("{N} messages published, consumed and acked in {secs:.2}s: {:.0}/s", N as f64 / secs);
}

/// Two handles on one file stand for two processes: publishes of one reach the other through
/// the fallback poll, and members in both share the group's partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_file() {
    let dir = tempfile::tempdir().expect("dir");
    let fast_poll = LogOptions { poll_interval: Duration::from_millis(100), ..options() };
    let a = SqliteLog::open(dir.path().join("log.sqlite"), fast_poll.clone()).expect("open a");
    let b = SqliteLog::open(dir.path().join("log.sqlite"), fast_poll).expect("open b");
    let mut sub_a = a.subscribe("t", "g").await.expect("subscribe a");
    let mut sub_b = b.subscribe("t", "g").await.expect("subscribe b");
    // Membership spreads through heartbeats (at most a second apart) across handles.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let published: Vec<Message> = (0..100).map(|i| msg(&format!("k{i}"), 0)).collect();
    b.publish("t", published.clone()).await.expect("publish");
    let expected = labels(&published);
    let mut seen_a = HashSet::new();
    let mut seen_b = HashSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seen_a.union(&seen_b).count() < expected.len() && Instant::now() < deadline {
        tokio::select! {
            Some(d) = sub_a.next() => { seen_a.insert(label(&d)); d.ack().await.expect("ack"); }
            Some(d) = sub_b.next() => { seen_b.insert(label(&d)); d.ack().await.expect("ack"); }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let all: HashSet<String> = seen_a.union(&seen_b).cloned().collect();
    assert_eq!(all, expected);
    assert!(!seen_a.is_empty() && !seen_b.is_empty(), "one member got everything: {} / {}", seen_a.len(), seen_b.len());
}

/// Letters as the router writes them: `orders` messages a group gave up on.
async fn dead_letters_of_orders(log: &SqliteLog, count: usize) {
    for n in 0..count {
        let message = msg("order-1", n).with_header(TYPE_HEADER, "order_created");
        let reason = weir_core::router::Reason::Permanent(format!("poison #{n}"));
        weir_core::router::dead_letter::send(log, &message, "orders", "payments", 3, &reason).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_without_being_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    dead_letters_of_orders(&log, 3).await;
    log.publish("orders", vec![msg("order-2", 0)]).await.unwrap();
    let reason = weir_core::router::Reason::Undecodable("not JSON".into());
    weir_core::router::dead_letter::send(&log, &msg("doc-1", 0), "doc.uploaded", "processing", 1, &reason)
        .await
        .unwrap();

    let all = log.dead_letters(LetterQuery::default()).await.unwrap();
    assert_eq!(all.total, 4);
    let topics: Vec<&str> = all.letters.iter().map(|l| l.topic.as_str()).collect();
    assert_eq!(topics, ["orders", "orders", "orders", "doc.uploaded"], "oldest first, ordinary messages left out");
    let first = &all.letters[0].message;
    assert_eq!(label_of(first), "order-1#0");
    assert_eq!(first.headers[weir_core::router::dead_letter::REASON], "permanent error: poison #0");
    assert_eq!(first.headers[weir_core::router::dead_letter::GROUP], "payments");

    let page = |after, limit| LetterQuery { topic: Some("orders".into()), after, limit };
    let first_page = log.dead_letters(page(0, 2)).await.unwrap();
    assert_eq!((first_page.letters.len(), first_page.total), (2, 3));
    let rest = log.dead_letters(page(first_page.letters[1].id, 2)).await.unwrap();
    assert_eq!(rest.letters.iter().map(|l| label_of(&l.message)).collect::<Vec<_>>(), ["order-1#2"]);

    let one = log.dead_letter(all.letters[3].id).await.unwrap().expect("the letter");
    assert_eq!(one.topic, "doc.uploaded");
    assert!(log.dead_letter(all.letters[2].id + 1).await.unwrap().is_none(), "an ordinary message is no letter");

    // Listing consumed nothing: a group on the dead-letter topic still gets every letter.
    let mut sub = log.subscribe("orders.dlq", "audit").await.unwrap();
    consume_all(&mut sub, &["order-1#0", "order-1#1", "order-1#2"].map(String::from).into()).await;
}

fn label_of(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_letter_reaches_its_topic_once_and_leaves_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sub = log.subscribe("orders", "payments").await.unwrap();
    dead_letters_of_orders(&log, 2).await;
    let letters = log.dead_letters(LetterQuery::default()).await.unwrap().letters;

    let topics = log.dispose(vec![letters[1].id], Disposal::Redrive).await.unwrap();
    assert_eq!(topics, ["orders"]);
    let d = expect(&mut sub, "the redriven message").await;
    assert_eq!(label(&d), "order-1#1");
    assert_eq!(d.attempt, 1, "a redriven message starts its attempts again");
    assert!(d.message.headers.keys().all(|h| !h.starts_with("weir-dlq-")), "{:?}", d.message.headers);
    assert_eq!(d.message.headers[TYPE_HEADER], "order_created");
    assert_eq!(
        d.message.headers[weir_core::router::dead_letter::REDRIVEN_FOR],
        "payments",
        "for the group that gave up"
    );
    d.ack().await.unwrap();
    assert_quiet(&mut sub, Duration::from_millis(300)).await;

    let left = log.dead_letters(LetterQuery::default()).await.unwrap();
    assert_eq!(left.letters.iter().map(|l| l.id).collect::<Vec<_>>(), [letters[0].id]);
    // Redriving it again finds nothing: it is not sent twice.
    let again = log.dispose(vec![letters[1].id], Disposal::Redrive).await.unwrap_err();
    assert!(matches!(again, LetterError::NotFound(id) if id == letters[1].id), "{again}");
    assert!(again.to_string().contains("weir dlq list"), "the error says what to do: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_id_changes_nothing_and_discard_removes_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sub = log.subscribe("orders", "payments").await.unwrap();
    dead_letters_of_orders(&log, 2).await;
    let ids: Vec<i64> = log.dead_letters(LetterQuery::default()).await.unwrap().letters.iter().map(|l| l.id).collect();

    // An ordinary message is not a dead letter, nor is an id that does not exist.
    log.publish("orders", vec![msg("order-9", 0)]).await.unwrap();
    let ordinary = expect(&mut sub, "the ordinary message").await;
    ordinary.ack().await.unwrap();
    for bad in [ids[1] + 1, 9_999] {
        let e = log.dispose(vec![ids[0], bad], Disposal::Redrive).await.unwrap_err();
        assert!(matches!(e, LetterError::NotFound(id) if id == bad), "{e}");
    }
    assert_quiet(&mut sub, Duration::from_millis(700)).await;
    assert_eq!(log.dead_letters(LetterQuery::default()).await.unwrap().total, 2, "nothing was taken");

    assert_eq!(log.dispose(ids.clone(), Disposal::Discard).await.unwrap(), ["orders", "orders"]);
    assert_eq!(log.dead_letters(LetterQuery::default()).await.unwrap().total, 0);
    assert_quiet(&mut sub, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_redriven_by_another_process_reaches_the_running_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let running = open(dir.path());
    let mut sub = running.subscribe("orders", "payments").await.unwrap();
    dead_letters_of_orders(&running, 1).await;

    // `weir dlq redrive` opens the same file beside the running process.
    let operator = open(dir.path());
    let id = operator.dead_letters(LetterQuery::default()).await.unwrap().letters[0].id;
    operator.dispose(vec![id], Disposal::Redrive).await.unwrap();
    operator.close().await;

    let d = expect(&mut sub, "the message redriven from the other handle").await;
    assert_eq!(label(&d), "order-1#0");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_reads_every_topic_in_publication_order_without_consuming() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sub = log.subscribe("orders", "payments").await.unwrap();
    assert_eq!(log.last_id().await.unwrap(), 0, "an empty log");
    log.publish("orders", vec![msg("a", 0), msg("b", 0)]).await.unwrap();
    log.publish("doc.uploaded", vec![msg("d", 0)]).await.unwrap();
    log.publish("doc.processed", vec![msg("d", 1)]).await.unwrap();
    log.publish("orders", vec![msg("a", 1)]).await.unwrap();

    let browse = |topics: Option<&str>, after, limit| Browse { topics: topics.map(String::from), after, limit };
    let all = log.browse(browse(None, 0, 100)).await.unwrap();
    let seen: Vec<(&str, String)> = all.iter().map(|s| (s.topic.as_str(), label_of(&s.message))).collect();
    assert_eq!(
        seen,
        [("orders", "a#0"), ("orders", "b#0"), ("doc.uploaded", "d#0"), ("doc.processed", "d#1"), ("orders", "a#1")]
            .map(|(t, l)| (t, l.to_owned()))
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id && w[0].published_at_ms <= w[1].published_at_ms));
    let docs = log.browse(browse(Some("doc.*"), 0, 100)).await.unwrap();
    assert_eq!(docs.iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(), ["doc.uploaded", "doc.processed"]);
    let page = log.browse(browse(Some("orders"), all[0].id, 1)).await.unwrap();
    assert_eq!(label_of(&page[0].message), "b#0");

    let end = log.last_id().await.unwrap();
    assert_eq!(end, all[4].id);
    assert!(log.browse(browse(None, end, 100)).await.unwrap().is_empty());
    log.publish("orders", vec![msg("c", 0)]).await.unwrap();
    assert_eq!(label_of(&log.browse(browse(None, end, 100)).await.unwrap()[0].message), "c#0");

    // The group still gets everything: browsing consumed nothing.
    consume_all(&mut sub, &["a#0", "b#0", "a#1", "c#0"].map(String::from).into()).await;
}
