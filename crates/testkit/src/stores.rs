//! The storage conformance suite: every database adapter must pass it, so that the kernel's
//! stores (event store, outbox, inbox, checkpoints, projections, sagas, timers, leases) behave
//! the same on SQLite and PostgreSQL.
//!
//! To instantiate it for a new adapter, implement [`DatabaseFactory`] (each call returns a
//! fresh, empty database) and invoke [`store_conformance_tests!`] in a test file:
//!
//! ```text
//! weir_testkit::store_conformance_tests!(MyFactory);
//! ```

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde_json::json;
use weir_core::{
    Db, Event, Keyring,
    bus::{self, Capabilities, Message, Publisher},
    db::{Dialect, Transaction},
    store::{
        self, checkpoints,
        event_store::{self, ExpectedVersion, Recorded},
        inbox, lease,
        outbox::{self, Outbox},
        projection::{self, Projection},
        sagas,
    },
};

/// Opens fresh databases for the suite.
#[async_trait]
pub trait DatabaseFactory: Send + Sync {
    /// A new, empty database (the kernel's tables are installed by the suite).
    async fn fresh(&self) -> Db;
}

async fn fresh(factory: &dyn DatabaseFactory) -> Db {
    let db = factory.fresh().await;
    store::install(db.as_ref()).await.expect("installing the kernel tables");
    // Installing twice is harmless.
    store::install(db.as_ref()).await.expect("installing the kernel tables again");
    db
}

fn event(kind: &str, subject: &str, n: i64) -> Event {
    Event::new("testkit", kind, subject, &json!({ "n": n })).unwrap()
}

/// A publisher that remembers what it was given: the outbox relay's observable effect.
#[derive(Default, Clone)]
pub struct RecordingPublisher {
    pub published: Arc<Mutex<Vec<(String, Message)>>>,
    /// When set, every publish fails (a broker outage).
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> bus::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(bus::Error::Closed);
        }
        self.published.lock().unwrap().extend(messages.into_iter().map(|m| (topic.to_owned(), m)));
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { ordered_per_key: true, persistent: false, consumer_groups: false, delayed_redelivery: false }
    }
}

pub async fn event_store_appends_and_reads(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let dialect = db.dialect();
    let mut tx = db.begin().await.unwrap();
    let v = event_store::append(
        tx.as_mut(),
        dialect,
        "order-1",
        ExpectedVersion::NoStream,
        &[event("a", "order-1", 1), event("b", "order-1", 2)],
    )
    .await
    .unwrap();
    assert_eq!(v.version, 2);
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    event_store::append(tx.as_mut(), dialect, "order-2", ExpectedVersion::Any, &[event("a", "order-2", 3)])
        .await
        .unwrap();
    event_store::append(tx.as_mut(), dialect, "order-1", ExpectedVersion::Exact(2), &[event("c", "order-1", 4)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let stream = event_store::read_stream(db.as_ref(), "order-1", 0).await.unwrap();
    assert_eq!(stream.iter().map(|r| r.event.kind.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(stream.iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(event_store::read_stream(db.as_ref(), "order-1", 2).await.unwrap().len(), 1);
    let all = event_store::read_all(db.as_ref(), 0, 100).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position), "positions increase");
    assert_eq!(all[0].event.data::<serde_json::Value>().unwrap(), json!({"n": 1}));
    assert_eq!(v.position, all[1].position, "append returns the position of its last event");
    let tail = event_store::read_all(db.as_ref(), all[1].position, 100).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(event_store::read_all(db.as_ref(), 0, 1).await.unwrap().len(), 1);

    // A batch larger than one INSERT chunk keeps versions contiguous and order intact.
    let big: Vec<Event> = (0..450).map(|i| event("big", "big", i)).collect();
    let mut tx = db.begin().await.unwrap();
    let appended = event_store::append(tx.as_mut(), dialect, "big", ExpectedVersion::NoStream, &big).await.unwrap();
    assert_eq!(appended.version, 450);
    tx.commit().await.unwrap();
    let stored = event_store::read_stream(db.as_ref(), "big", 0).await.unwrap();
    assert_eq!(stored.iter().map(|r| r.version).collect::<Vec<_>>(), (1..=450).collect::<Vec<_>>());
    assert_eq!(stored.iter().map(|r| r.event.id).collect::<Vec<_>>(), big.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(appended.position, stored[449].position, "the last chunk's last position");
}

pub async fn event_store_detects_conflicts(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let dialect = db.dialect();
    let append = |expected, n| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let r = event_store::append(tx.as_mut(), dialect, "s", expected, &[event("e", "s", n)]).await;
            if r.is_ok() {
                tx.commit().await.unwrap();
            }
            r
        }
    };
    append(ExpectedVersion::NoStream, 1).await.unwrap();
    assert!(matches!(append(ExpectedVersion::NoStream, 2).await, Err(store::Error::Conflict { .. })));
    assert!(matches!(append(ExpectedVersion::Exact(0), 2).await, Err(store::Error::Conflict { .. })));
    assert!(matches!(append(ExpectedVersion::Exact(5), 2).await, Err(store::Error::Conflict { .. })));
    append(ExpectedVersion::Exact(1), 2).await.unwrap();

    // Concurrent writers expecting the same version: exactly one wins.
    let racers: Vec<_> = (0..8).map(|i| tokio::spawn(append(ExpectedVersion::Exact(2), 10 + i))).collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => wins += 1,
            Err(store::Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(event_store::read_stream(db.as_ref(), "s", 0).await.unwrap().len(), 3);
}

pub async fn event_store_positions_follow_commit_order(factory: &dyn DatabaseFactory) {
    // A reader that has seen position p never later finds a new event below p.
    let db = fresh(factory).await;
    let dialect = db.dialect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                // Every kind of expectation: each reads and takes positions at its own points.
                for i in 0..25 {
                    let stream = format!("w{w}-{i}");
                    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(1), ExpectedVersion::Any] {
                        let mut tx = db.begin().await.unwrap();
                        event_store::append(tx.as_mut(), dialect, &stream, expected, &[event("e", &stream, i)])
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    // Tail the log while they write; an event committed below what the reader has seen would
    // never be read, and the count would come out short.
    let mut seen = 0i64;
    let mut count = 0;
    let mut tail = async |seen: &mut i64| {
        for r in event_store::read_all(db.as_ref(), *seen, 1000).await.unwrap() {
            assert!(r.position > *seen);
            *seen = r.position;
            count += 1;
        }
    };
    while !writers.iter().all(|w| w.is_finished()) {
        tail(&mut seen).await;
        tokio::task::yield_now().await;
    }
    tail(&mut seen).await;
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(count, 300, "every event was read once, none appeared behind the reader");
}

pub async fn event_store_readers_stop_at_positions_that_may_still_commit(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let dialect = db.dialect();
    let begin_append = |stream: &'static str| {
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let appended =
                event_store::append(tx.as_mut(), dialect, stream, ExpectedVersion::NoStream, &[event("e", stream, 1)])
                    .await
                    .unwrap();
            (tx, appended.position)
        }
    };
    // What a reader finds past `after`, once it finds anything (a gap's holders may be ending).
    let streams_after = |after: i64| {
        let db = db.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let read = event_store::read_all(db.as_ref(), after, 10).await.unwrap();
                if !read.is_empty() || std::time::Instant::now() > deadline {
                    return read.into_iter().map(|r| r.stream).collect::<Vec<_>>();
                }
            }
        }
    };
    let (tx, first) = begin_append("first").await;
    tx.commit().await.unwrap();
    // A rolled-back append (on PostgreSQL it leaves a gap in the positions) holds nothing up.
    let (tx, _) = begin_append("rolled back").await;
    drop(tx);
    let (tx, after) = begin_append("after").await;
    tx.commit().await.unwrap();
    assert_eq!(streams_after(first).await, ["after"]);

    if dialect == Dialect::Postgres {
        // An append still running took a position below one committed since: a reader stops
        // before it (for as long as it waits), and reads both once it commits.
        let (held, _) = begin_append("held").await;
        let (tx, _) = begin_append("later").await;
        tx.commit().await.unwrap();
        let started = std::time::Instant::now();
        assert!(event_store::read_all(db.as_ref(), after, 10).await.unwrap().is_empty(), "read past a running append");
        assert!(started.elapsed() >= event_store::GAP_WAIT);
        held.commit().await.unwrap();
        assert_eq!(streams_after(after).await, ["held", "later"]);
    }
}

pub async fn snapshots_keep_the_newest(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    assert_eq!(event_store::load_snapshot(db.as_ref(), "s").await.unwrap(), None);
    let mut tx = db.begin().await.unwrap();
    event_store::save_snapshot(tx.as_mut(), "s", 5, b"five").await.unwrap();
    event_store::save_snapshot(tx.as_mut(), "s", 3, b"three").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(event_store::load_snapshot(db.as_ref(), "s").await.unwrap(), Some((5, b"five".to_vec())));
    let mut tx = db.begin().await.unwrap();
    event_store::save_snapshot(tx.as_mut(), "s", 9, b"nine").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(event_store::load_snapshot(db.as_ref(), "s").await.unwrap(), Some((9, b"nine".to_vec())));
}

pub async fn outbox_publishes_only_committed_events_in_order(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let keyring = Keyring::generate("k1");
    let outbox = Outbox::new(keyring.clone());
    let publisher = RecordingPublisher::default();

    let mut tx = db.begin().await.unwrap();
    let events: Vec<Event> = (0..5).map(|i| event("e", "k", i)).collect();
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    outbox.enqueue(tx.as_mut(), "orders", events).await.unwrap();
    outbox.enqueue(tx.as_mut(), "payments", vec![event("p", "k", 9)]).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let mut rolled_back = db.begin().await.unwrap();
    outbox.enqueue(rolled_back.as_mut(), "orders", vec![event("never", "k", 0)]).await.unwrap();
    drop(rolled_back);
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 6);

    let relay = outbox.relay(db.clone(), Arc::new(publisher.clone()));
    // A broker outage: nothing is lost, rows stay.
    publisher.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(relay.round("me").await.is_err());
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 6);
    publisher.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(relay.round("me").await.unwrap(), 6);
    assert_eq!(relay.round("me").await.unwrap(), 0, "a published row is not published again");
    assert_eq!(relay.delete_published().await.unwrap(), 6);
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 0);
    assert_eq!(relay.round("me").await.unwrap(), 0);

    let published = publisher.published.lock().unwrap().clone();
    let orders: Vec<Event> =
        published.iter().filter(|(t, _)| t == "orders").map(|(_, m)| Event::from_message(m).unwrap()).collect();
    assert_eq!(orders.iter().map(|e| e.id).collect::<Vec<_>>(), ids, "in order, none from the rolled-back transaction");
    assert!(orders.iter().all(|e| keyring.verify(e).is_ok()), "outbox events are signed");
    assert_eq!(published.iter().filter(|(t, _)| t == "payments").count(), 1);
}

pub async fn outbox_rejects_invalid_topics(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let outbox = Outbox::new(Keyring::generate("k"));
    let mut tx = db.begin().await.unwrap();
    assert!(outbox.enqueue(tx.as_mut(), "bad topic!", vec![event("e", "k", 1)]).await.is_err());
}

pub async fn inbox_deduplicates_within_transactions(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let id = uuid::Uuid::now_v7();
    let mut tx = db.begin().await.unwrap();
    assert!(inbox::record(tx.as_mut(), "payments", id).await.unwrap());
    drop(tx); // rolled back: not recorded
    assert!(!inbox::contains(db.as_ref(), "payments", id).await.unwrap());
    let mut tx = db.begin().await.unwrap();
    assert!(inbox::record(tx.as_mut(), "payments", id).await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(!inbox::record(tx.as_mut(), "payments", id).await.unwrap(), "a duplicate");
    assert!(inbox::record(tx.as_mut(), "inventory", id).await.unwrap(), "other consumers are independent");
    tx.commit().await.unwrap();
    assert!(inbox::contains(db.as_ref(), "inventory", id).await.unwrap());
    assert_eq!(inbox::prune(db.as_ref(), store::now_millis() - 60_000).await.unwrap(), 0, "nothing is old enough");
    assert_eq!(inbox::prune(db.as_ref(), store::now_millis() + 1000).await.unwrap(), 2);
    assert!(!inbox::contains(db.as_ref(), "payments", id).await.unwrap());
}

pub async fn inbox_records_many_at_once(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let (seen, new, twice) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut tx = db.begin().await.unwrap();
    assert!(inbox::record(tx.as_mut(), "payments", seen).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    assert!(inbox::record_many(tx.as_mut(), "payments", &[]).await.unwrap().is_empty());
    let fresh = inbox::record_many(tx.as_mut(), "payments", &[seen, new, twice, twice]).await.unwrap();
    assert_eq!(fresh, HashSet::from([new, twice]), "the one seen before is a duplicate; one listed twice is new once");
    let again = inbox::record_many(tx.as_mut(), "payments", &[new, twice]).await.unwrap();
    assert!(again.is_empty(), "recorded within the transaction: {again:?}");
    assert_eq!(inbox::record_many(tx.as_mut(), "inventory", &[seen]).await.unwrap(), HashSet::from([seen]));
    drop(tx);
    assert!(!inbox::contains(db.as_ref(), "payments", new).await.unwrap(), "rolled back with its transaction");
}

pub async fn inbox_pruning_goes_on_chunk_by_chunk(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    let ids: Vec<uuid::Uuid> = (0..12_000).map(|_| uuid::Uuid::now_v7()).collect();
    for id in &ids {
        assert!(inbox::record(tx.as_mut(), "payments", *id).await.unwrap());
    }
    tx.commit().await.unwrap();
    assert_eq!(inbox::prune(db.as_ref(), store::now_millis() + 1000).await.unwrap(), 12_000);
    let left = db.query("SELECT count(*) FROM weir_inbox", &[]).await.unwrap();
    assert_eq!(left[0].i64(0).unwrap(), 0);
}

/// A read model counting events per stream, for the checkpoint and projection cases.
struct Counts;

#[async_trait]
impl Projection for Counts {
    fn name(&self) -> &str {
        "counts"
    }
    async fn reset(&self, tx: &mut dyn Transaction) -> store::Result<()> {
        tx.execute("DELETE FROM test_counts", &[]).await?;
        Ok(())
    }
    async fn apply(&self, tx: &mut dyn Transaction, e: &Recorded) -> store::Result<()> {
        tx.execute(
            "INSERT INTO test_counts (stream, n) VALUES ($1, 1)
             ON CONFLICT (stream) DO UPDATE SET n = test_counts.n + 1",
            &[e.stream.as_str().into()],
        )
        .await?;
        Ok(())
    }
}

async fn counts(db: &Db) -> Vec<(String, i64)> {
    db.query("SELECT stream, n FROM test_counts ORDER BY stream", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.text(0).unwrap().to_owned(), r.i64(1).unwrap()))
        .collect()
}

pub async fn projections_checkpoint_and_rebuild(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE test_counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)", &[]).await.unwrap();
    for (stream, n) in [("a", 3), ("b", 2)] {
        let events: Vec<Event> = (0..n).map(|i| event("e", stream, i)).collect();
        event_store::append(tx.as_mut(), db.dialect(), stream, ExpectedVersion::Any, &events).await.unwrap();
    }
    tx.commit().await.unwrap();

    assert_eq!(checkpoints::load(db.as_ref(), "counts").await.unwrap(), 0);
    assert_eq!(projection::catch_up(db.as_ref(), &Counts, 2).await.unwrap().applied, 5);
    assert_eq!(counts(&db).await, [("a".into(), 3), ("b".into(), 2)]);
    let again = projection::catch_up(db.as_ref(), &Counts, 2).await.unwrap();
    assert_eq!(again.applied, 0, "nothing applied twice");
    let checkpoint = checkpoints::load(db.as_ref(), "counts").await.unwrap();
    assert!(checkpoint > 0);
    assert_eq!(again.position, checkpoint, "catch_up reports the checkpoint it left");
    // A runner with a stale idea of the checkpoint re-reads from the real one: nothing twice.
    let stale = projection::apply_batch(db.as_ref(), &Counts, 2, 0).await.unwrap();
    assert_eq!(stale, projection::CaughtUp { applied: 0, position: checkpoint });
    assert_eq!(counts(&db).await, [("a".into(), 3), ("b".into(), 2)]);

    // A checkpoint saved in a rolled-back transaction does not move.
    let mut tx = db.begin().await.unwrap();
    checkpoints::save(tx.as_mut(), "counts", checkpoint + 100).await.unwrap();
    drop(tx);
    assert_eq!(checkpoints::load(db.as_ref(), "counts").await.unwrap(), checkpoint);

    // Corrupt the read model, then rebuild it from position 0.
    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE test_counts SET n = 99", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(projection::rebuild(db.as_ref(), &Counts, 100).await.unwrap().applied, 5);
    assert_eq!(counts(&db).await, [("a".into(), 3), ("b".into(), 2)]);
}

/// Replicas of a service each run its projector on the one database: however their batches
/// interleave, every event is applied once and the checkpoint never moves back.
pub async fn projections_apply_each_event_once_under_concurrent_runners(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE test_counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    const STREAMS: i64 = 4;
    const PER_STREAM: i64 = 30;
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..PER_STREAM {
                for s in 0..STREAMS {
                    let stream = format!("s{s}");
                    let mut tx = db.begin().await.unwrap();
                    let events = [event("e", &stream, i)];
                    event_store::append(tx.as_mut(), db.dialect(), &stream, ExpectedVersion::Any, &events)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            }
        })
    };
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut highest = 0;
                for _ in 0..200 {
                    projection::catch_up(db.as_ref(), &Counts, 3).await.unwrap();
                    let saved = checkpoints::load(db.as_ref(), "counts").await.unwrap();
                    assert!(saved >= highest, "the checkpoint moved back from {highest} to {saved}");
                    highest = saved;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for runner in runners {
        runner.await.unwrap();
    }
    projection::catch_up(db.as_ref(), &Counts, 3).await.unwrap();
    let expected: Vec<(String, i64)> = (0..STREAMS).map(|s| (format!("s{s}"), PER_STREAM)).collect();
    assert_eq!(counts(&db).await, expected, "an event was applied twice or never");
}

pub async fn sagas_use_optimistic_concurrency(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    assert_eq!(sagas::load(tx.as_mut(), "fulfilment", "o-1").await.unwrap(), None);
    assert_eq!(sagas::save(tx.as_mut(), "fulfilment", "o-1", b"started", 0, false).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let saga = sagas::load(tx.as_mut(), "fulfilment", "o-1").await.unwrap().unwrap();
    assert_eq!((saga.state.as_slice(), saga.version, saga.done), (&b"started"[..], 1, false));
    assert!(matches!(
        sagas::save(tx.as_mut(), "fulfilment", "o-1", b"x", 0, false).await,
        Err(store::Error::Conflict { .. })
    ));
    assert!(matches!(
        sagas::save(tx.as_mut(), "fulfilment", "o-1", b"x", 7, false).await,
        Err(store::Error::Conflict { .. })
    ));
    assert_eq!(sagas::save(tx.as_mut(), "fulfilment", "o-1", b"paid", 1, true).await.unwrap(), 2);
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let saga = sagas::load(tx.as_mut(), "fulfilment", "o-1").await.unwrap().unwrap();
    assert_eq!((saga.state.as_slice(), saga.version, saga.done), (&b"paid"[..], 2, true));
}

pub async fn finished_sagas_are_forgotten_after_their_retention(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    let ids =
        [("running", false), ("finished-long-ago", true), ("finished-an-hour-ago", true), ("finished-just-now", true)];
    for (id, done) in ids {
        sagas::save(tx.as_mut(), "fulfilment", id, b"s", 0, done).await.unwrap();
    }
    tx.commit().await.unwrap();
    let hour_ago = store::now_millis() - 3_600_000;
    let mut tx = db.begin().await.unwrap();
    let sql =
        "UPDATE weir_sagas SET updated_at = $1 WHERE id IN ('running', 'finished-long-ago', 'finished-an-hour-ago')";
    assert_eq!(tx.execute(sql, &[hour_ago.into()]).await.unwrap(), 3);
    tx.commit().await.unwrap();

    let minute_ago = store::now_millis() - 60_000;
    assert_eq!(sagas::prune(db.as_ref(), minute_ago, 1).await.unwrap(), 1, "at most the limit");
    assert_eq!(sagas::prune(db.as_ref(), minute_ago, 10).await.unwrap(), 1);
    assert_eq!(sagas::prune(db.as_ref(), minute_ago, 10).await.unwrap(), 0);
    let left = db.query("SELECT id FROM weir_sagas ORDER BY id", &[]).await.unwrap();
    let left: Vec<&str> = left.iter().map(|r| r.text(0).unwrap()).collect();
    assert_eq!(left, ["finished-just-now", "running"], "a running saga is kept however old");
}

pub async fn the_scheduler_forgets_a_backlog_a_chunk_per_round(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let mut tx = db.begin().await.unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        sagas::save(tx.as_mut(), "fulfilment", id, b"s", 0, true).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let hour_ago = store::now_millis() - 3_600_000;
    assert_eq!(tx.execute("UPDATE weir_sagas SET updated_at = $1", &[hour_ago.into()]).await.unwrap(), 5);
    tx.commit().await.unwrap();
    let left = async || db.query("SELECT count(*) FROM weir_sagas", &[]).await.unwrap()[0].i64(0).unwrap();

    let mut scheduler = sagas::Scheduler::new(db.clone(), Outbox::new(Keyring::generate("k")));
    scheduler.retention = Some(Duration::from_secs(60));
    scheduler.prune_chunk = 2;
    let mut next = Instant::now() + Duration::from_secs(60);
    scheduler.prune_when_due(&mut next).await;
    assert_eq!(left().await, 5, "nothing before it is time");
    next = Instant::now();
    for expected in [3, 1] {
        scheduler.prune_when_due(&mut next).await;
        assert_eq!(left().await, expected, "one chunk per round");
        assert!(next <= Instant::now(), "a full chunk: the next round goes on");
    }
    scheduler.prune_when_due(&mut next).await;
    assert_eq!(left().await, 0);
    assert!(next > Instant::now() + Duration::from_secs(3000), "a short chunk: the backlog is gone, next in an hour");
}

pub async fn timers_fire_once_through_the_outbox(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let outbox = Outbox::new(Keyring::generate("k"));
    let now = store::now_millis();
    let (due, later, cancelled) = (event("due", "o-1", 1), event("later", "o-2", 2), event("cancelled", "o-3", 3));
    let mut tx = db.begin().await.unwrap();
    sagas::schedule(tx.as_mut(), "t-due", now - 10, "saga", &event("replaced", "o-1", 0)).await.unwrap();
    sagas::schedule(tx.as_mut(), "t-due", now - 10, "saga", &due).await.unwrap();
    sagas::schedule(tx.as_mut(), "t-later", now + 60_000, "saga", &later).await.unwrap();
    sagas::schedule(tx.as_mut(), "t-cancelled", now - 10, "saga", &cancelled).await.unwrap();
    assert!(sagas::cancel(tx.as_mut(), "t-cancelled").await.unwrap());
    assert!(!sagas::cancel(tx.as_mut(), "t-cancelled").await.unwrap());
    tx.commit().await.unwrap();

    let scheduler = sagas::Scheduler::new(db.clone(), outbox.clone());
    assert_eq!(scheduler.fire_due().await.unwrap(), 1);
    assert_eq!(scheduler.fire_due().await.unwrap(), 0, "a timer fires once");
    let publisher = RecordingPublisher::default();
    outbox.relay(db.clone(), Arc::new(publisher.clone())).round("me").await.unwrap();
    let published = publisher.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "saga");
    assert_eq!(Event::from_message(&published[0].1).unwrap().id, due.id);
}

pub async fn the_relay_deletes_published_rows_soon_and_misses_no_late_commit(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let outbox = Outbox::new(Keyring::generate("k1"));
    let publisher = RecordingPublisher::default();
    let kinds = |p: &RecordingPublisher| -> Vec<String> {
        p.published.lock().unwrap().iter().map(|(_, m)| Event::from_message(m).unwrap().kind).collect()
    };
    let relay = outbox.relay(db.clone(), Arc::new(publisher.clone()));
    // On PostgreSQL a row's seq is taken at insert, so a lower seq can commit after a higher one
    // was published. (SQLite has one writer: there a lower seq always commits first.)
    let late = if db.dialect() == Dialect::Postgres {
        let mut tx = db.begin().await.unwrap();
        outbox.enqueue(tx.as_mut(), "t", vec![event("late", "k1", 0)]).await.unwrap();
        Some(tx)
    } else {
        None
    };
    let mut tx = db.begin().await.unwrap();
    outbox.enqueue(tx.as_mut(), "t", vec![event("early", "k2", 1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(relay.round("me").await.unwrap(), 1);
    assert_eq!(relay.round("me").await.unwrap(), 0, "published rows are not published again before their delete");
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 1, "deleted later, together");
    if let Some(tx) = late {
        tx.commit().await.unwrap();
    }
    assert_eq!(relay.delete_published().await.unwrap(), 1);
    let expected_late = usize::from(db.dialect() == Dialect::Postgres);
    assert_eq!(relay.round("me").await.unwrap(), expected_late, "after the delete, rounds read from the start again");
    relay.delete_published().await.unwrap();
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 0);
    let mut seen = kinds(&publisher);
    seen.sort();
    let wanted: Vec<String> = ["early", "late"].iter().take(1 + expected_late).map(|k| (*k).to_owned()).collect();
    assert_eq!(seen, wanted, "each row published exactly once");

    // A running relay deletes what it published within `delete_after`, without being woken.
    lease::release(db.as_ref(), "weir-outbox-relay", "me").await.unwrap();
    let relay = outbox.relay(db.clone(), Arc::new(publisher.clone())).with_options(outbox::RelayOptions {
        delete_after: Duration::from_millis(100),
        poll: Duration::from_secs(30),
        ..outbox::RelayOptions::default()
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let mut tx = db.begin().await.unwrap();
    outbox.enqueue(tx.as_mut(), "t", (2..5).map(|n| event("more", "k3", n)).collect()).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while outbox::backlog(db.as_ref()).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "published rows were never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kinds(&publisher).iter().filter(|k| *k == "more").count(), 3);
    shutdown.cancel();
    running.await.unwrap();
}

pub async fn leases_are_exclusive_until_they_expire(factory: &dyn DatabaseFactory) {
    let db = fresh(factory).await;
    let short = Duration::from_millis(300);
    assert!(lease::acquire(db.as_ref(), "relay", "a", short).await.unwrap());
    assert!(lease::acquire(db.as_ref(), "relay", "a", short).await.unwrap(), "renewal");
    assert!(!lease::acquire(db.as_ref(), "relay", "b", short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lease::acquire(db.as_ref(), "relay", "b", short).await.unwrap(), "taken over after expiry");
    lease::release(db.as_ref(), "relay", "b").await.unwrap();
    assert!(lease::acquire(db.as_ref(), "relay", "a", short).await.unwrap(), "free after release");

    // A remembered answer stands for half the lease's life when held (within the lease, which
    // nobody else can take before it expires), a quarter when not; the database is not asked in
    // between, so a release behind the holder's back — which a running owner never does — goes
    // unseen until then.
    let (ttl, holder, other) = (Duration::from_secs(4), lease::Remembered::default(), lease::Remembered::default());
    assert!(holder.hold(db.as_ref(), "job", "a", ttl).await.unwrap());
    assert!(!other.hold(db.as_ref(), "job", "b", ttl).await.unwrap());
    lease::release(db.as_ref(), "job", "a").await.unwrap();
    assert!(holder.hold(db.as_ref(), "job", "a", ttl).await.unwrap(), "remembered as held");
    assert!(!other.hold(db.as_ref(), "job", "b", ttl).await.unwrap(), "remembered as not held");
    tokio::time::sleep(ttl / 4 + Duration::from_millis(100)).await;
    assert!(other.hold(db.as_ref(), "job", "b", ttl).await.unwrap(), "asked again after a quarter of the lease");
    assert!(holder.hold(db.as_ref(), "job", "a", ttl).await.unwrap(), "still remembered as held");
}

pub async fn transactions_are_atomic(factory: &dyn DatabaseFactory) {
    // The property the router relies on: inbox record, state change and outbox row commit together.
    let db = fresh(factory).await;
    let outbox = Outbox::new(Keyring::generate("k"));
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE test_state (k TEXT PRIMARY KEY, v BIGINT NOT NULL)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let id = uuid::Uuid::now_v7();
    let mut tx = db.begin().await.unwrap();
    inbox::record(tx.as_mut(), "c", id).await.unwrap();
    tx.execute("INSERT INTO test_state (k, v) VALUES ($1, $2)", &["x".into(), 1i64.into()]).await.unwrap();
    outbox.enqueue(tx.as_mut(), "t", vec![event("e", "x", 1)]).await.unwrap();
    // A failing statement does not poison the transaction's other work when rolled back whole.
    drop(tx);
    assert!(!inbox::contains(db.as_ref(), "c", id).await.unwrap());
    assert!(db.query("SELECT v FROM test_state", &[]).await.unwrap().is_empty());
    assert_eq!(outbox::backlog(db.as_ref()).await.unwrap(), 0);
}

/// Expands to one `#[tokio::test]` per case, for the factory expression given.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::__suite_cases!(stores, $factory;
            event_store_appends_and_reads, event_store_detects_conflicts,
            event_store_positions_follow_commit_order, event_store_readers_stop_at_positions_that_may_still_commit,
            snapshots_keep_the_newest,
            outbox_publishes_only_committed_events_in_order, outbox_rejects_invalid_topics,
            inbox_deduplicates_within_transactions, inbox_records_many_at_once, inbox_pruning_goes_on_chunk_by_chunk,
            projections_checkpoint_and_rebuild, projections_apply_each_event_once_under_concurrent_runners,
            sagas_use_optimistic_concurrency, finished_sagas_are_forgotten_after_their_retention,
            the_scheduler_forgets_a_backlog_a_chunk_per_round,
            timers_fire_once_through_the_outbox,
            the_relay_deletes_published_rows_soon_and_misses_no_late_commit,
            leases_are_exclusive_until_they_expire, transactions_are_atomic);
    };
}
