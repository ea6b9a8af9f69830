//! Black-box tests of `SqliteDatabase` through the `Database` port.

use std::{sync::Arc, time::Duration};

use weir_core::db::{Database, Error, Migration, Value, migrate};
use weir_store_sqlite::SqliteDatabase;

const SCHEMA: &[Migration] = &[Migration {
    version: 1,
    name: "items",
    sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score REAL, data BLOB)",
    postgres: "",
}];

async fn fresh() -> (tempfile::TempDir, SqliteDatabase) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteDatabase::open(dir.path().join("db.sqlite")).expect("open");
    migrate(&db, "test", SCHEMA).await.expect("migrate");
    (dir, db)
}

async fn count(db: &SqliteDatabase) -> i64 {
    db.query("SELECT count(*) FROM items", &[]).await.expect("count")[0].i64(0).expect("int")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_are_all_durable_after_reopen() {
    let (dir, db) = fresh().await;
    let db = Arc::new(db);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", &[i.into(), format!("item-{i}").into()])
                    .await?;
                tx.commit().await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("commit");
    }
    assert_eq!(count(&db).await, 200, "committed data is visible to readers at once");
    drop(db);
    let reopened = SqliteDatabase::open(dir.path().join("db.sqlite")).expect("reopen");
    assert_eq!(count(&reopened).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_leaves_no_trace_while_its_batch_mates_commit() {
    let (_dir, db) = fresh().await;
    let db = Arc::new(db);
    // Interleave committing and abandoned transactions so they share physical batches.
    let tasks: Vec<_> = (0..100i64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", &[i.into(), format!("n{i}").into()]).await?;
                if i % 2 == 0 {
                    tx.commit().await
                } else {
                    drop(tx);
                    Ok(())
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("transaction");
    }
    let rows = db.query("SELECT id FROM items ORDER BY id", &[]).await.expect("query");
    let ids: Vec<i64> = rows.iter().map(|r| r.i64(0).expect("id")).collect();
    assert_eq!(ids, (0..100).step_by(2).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_transaction_sees_its_own_writes_and_others_see_them_only_after_commit() {
    let (_dir, db) = fresh().await;
    let mut tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items (name) VALUES ($1)", &["x".into()]).await.expect("insert");
    let inside = tx.query("SELECT count(*) FROM items", &[]).await.expect("query");
    assert_eq!(inside[0].i64(0).expect("int"), 1);
    assert_eq!(count(&db).await, 0, "uncommitted writes are invisible to readers");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db).await, 1);
}

#[tokio::test]
async fn unique_violations_are_classified_and_leave_the_transaction_usable() {
    let (_dir, db) = fresh().await;
    let mut tx = db.begin().await.expect("begin");
    tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')", &[]).await.expect("first");
    let dup_name = tx.execute("INSERT INTO items (id, name) VALUES (2, 'a')", &[]).await;
    assert!(matches!(dup_name, Err(Error::UniqueViolation(_))), "{dup_name:?}");
    let dup_key = tx.execute("INSERT INTO items (id, name) VALUES (1, 'b')", &[]).await;
    assert!(matches!(dup_key, Err(Error::UniqueViolation(_))), "{dup_key:?}");
    let not_null = tx.execute("INSERT INTO items (id) VALUES (3)", &[]).await;
    assert!(matches!(not_null, Err(Error::Other(_))), "{not_null:?}");
    let bad_sql = tx.execute("INSERT INTO nowhere VALUES (1)", &[]).await;
    assert!(matches!(&bad_sql, Err(Error::Other(m)) if m.contains("nowhere")), "{bad_sql:?}");
    tx.execute("INSERT INTO items (id, name) VALUES (4, 'd')", &[]).await.expect("still usable");
    tx.commit().await.expect("commit");
    assert_eq!(count(&db).await, 2);
}

#[tokio::test]
async fn params_of_every_type_round_trip() {
    let (_dir, db) = fresh().await;
    let values = [
        Value::Null,
        Value::Int(i64::MIN),
        Value::Int(42),
        Value::Real(-1.5e300),
        Value::Text("héllo $1 'quoted'".into()),
        Value::Text(String::new()),
        Value::Blob(vec![0, 255, 1, 2]),
        Value::Blob(Vec::new()),
    ];
    let mut tx = db.begin().await.expect("begin");
    tx.execute("CREATE TABLE anything (v)", &[]).await.expect("create");
    for v in &values {
        tx.execute("INSERT INTO anything (v) VALUES ($1)", std::slice::from_ref(v)).await.expect("insert");
    }
    tx.commit().await.expect("commit");
    let rows = db.query("SELECT v FROM anything ORDER BY rowid", &[]).await.expect("select");
    let back: Vec<Value> = rows.into_iter().map(|r| r.0.into_iter().next().expect("column")).collect();
    assert_eq!(back, values);
    // Parameters bind by number, not by order of appearance.
    let rows = db.query("SELECT $2 || '-' || $1", &["a".into(), "b".into()]).await.expect("select");
    assert_eq!(rows[0].text(0).expect("text"), "b-a");
}

#[tokio::test]
async fn execute_many_and_returning_count_rows() {
    let (_dir, db) = fresh().await;
    let mut tx = db.begin().await.expect("begin");
    let rows: Vec<Vec<Value>> = (0..50).map(|i| vec![Value::Int(i), Value::Text(format!("m{i}"))]).collect();
    let changed = tx.execute_many("INSERT INTO items (id, name) VALUES ($1, $2)", &rows).await.expect("many");
    assert_eq!(changed, 50);
    let changed = tx.execute("UPDATE items SET score = 1.0 WHERE id < $1 RETURNING id", &[10.into()]).await;
    assert_eq!(changed.expect("update"), 10);
    tx.commit().await.expect("commit");
    assert_eq!(count(&db).await, 50);
}

#[tokio::test]
async fn read_only_queries_cannot_write() {
    let (_dir, db) = fresh().await;
    let result = db.query("INSERT INTO items (name) VALUES ('x')", &[]).await;
    assert!(result.is_err());
    assert_eq!(count(&db).await, 0);
}

#[tokio::test]
async fn migrations_apply_once() {
    let (_dir, db) = fresh().await;
    migrate(&db, "test", SCHEMA).await.expect("second run is a no-op");
    let applied = db.query("SELECT count(*) FROM weir_migrations", &[]).await.expect("query");
    assert_eq!(applied[0].i64(0).expect("int"), 1);
}

#[tokio::test]
async fn a_second_process_waiting_on_the_write_lock_is_reported_unavailable_or_waits() {
    // Another connection holding the write lock briefly: our transaction waits (busy timeout)
    // instead of failing.
    let (dir, db) = fresh().await;
    let other = rusqlite_free_lock(dir.path().join("db.sqlite"));
    let mut tx = tokio::time::timeout(Duration::from_secs(10), db.begin()).await.expect("no deadlock").expect("begin");
    tx.execute("INSERT INTO items (name) VALUES ('after lock')", &[]).await.expect("insert");
    tx.commit().await.expect("commit");
    other.join().expect("locker thread");
    assert_eq!(count(&db).await, 2);
}

/// Holds the database's write lock from another connection for 200 ms, writing one row.
fn rusqlite_free_lock(path: std::path::PathBuf) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let other = SqliteDatabase::open(&path).expect("second handle");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut tx = other.begin().await.expect("begin");
            tx.execute("INSERT INTO items (name) VALUES ('locker')", &[]).await.expect("insert");
            ready_tx.send(()).expect("ready");
            std::thread::sleep(Duration::from_millis(200));
            tx.commit().await.expect("commit");
        });
    });
    ready_rx.recv().expect("locker ready");
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_foreign_key_violation_fails_only_its_own_transaction() {
    let (_dir, db) = fresh().await;
    let mut tx = db.begin().await.expect("begin");
    tx.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)", &[]).await.expect("parent");
    tx.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY,
            parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        &[],
    )
    .await
    .expect("child");
    tx.execute("INSERT INTO parent (id) VALUES (1)", &[]).await.expect("a parent");
    tx.commit().await.expect("commit");
    let db = Arc::new(db);
    let tasks: Vec<_> = (0..40i64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let parent = if i % 4 == 0 { 999 } else { 1 };
                let mut tx = db.begin().await?;
                tx.execute("INSERT INTO child (id, parent_id) VALUES ($1, $2)", &[i.into(), parent.into()]).await?;
                tx.commit().await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t.await.expect("task");
        if i % 4 == 0 {
            assert!(matches!(&outcome, Err(Error::Other(m)) if m.contains("FOREIGN KEY")), "{outcome:?}");
        } else {
            outcome.expect("a valid child commits despite invalid batch-mates");
        }
    }
    let children = db.query("SELECT count(*) FROM child", &[]).await.expect("count");
    assert_eq!(children[0].i64(0).expect("int"), 30);
}
