//! Black-box tests of `PgDatabase` against the real local server, one fresh database each.
//! They fail loudly (never skip) when PostgreSQL is down: see `fresh_test_database`.

use std::time::{Duration, Instant};

use weir_core::db::{Database, Error, Migration, Row, Value, migrate};
use weir_store_postgres::{Options, PgDatabase, fresh_test_database, fresh_test_database_with};

async fn one_connection() -> PgDatabase {
    fresh_test_database_with(Options { pool_size: 1, ..Options::default() }).await
}

async fn count(db: &PgDatabase, table: &str) -> i64 {
    let rows = db.query(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count");
    rows[0].i64(0).expect("count is an integer")
}

/// Sessions of this database that sit inside a transaction: a leaked transaction shows here.
async fn idle_in_transaction(db: &PgDatabase) -> i64 {
    let rows = db
        .query(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    rows[0].i64(0).expect("integer")
}

/// Waits until no session of the database is inside a transaction: a dropped transaction rolls
/// back in the background, so its session may still be in one for a moment; one that stays
/// there leaked.
async fn wait_until_none_in_transaction(db: &PgDatabase, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle_in_transaction(db).await > 0 {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_items(db: &PgDatabase) {
    let mut tx = db.begin().await.expect("begin");
    tx.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL)", &[]).await.expect("create");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let db = fresh_test_database().await;
    let mut tx = db.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE all_types (
            id BIGINT PRIMARY KEY, i2 SMALLINT, i4 INTEGER, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION,
            t TEXT, v VARCHAR(40), c CHAR(3), j JSON, jb JSONB, u UUID, b BYTEA, flag BOOLEAN)",
        &[],
    )
    .await
    .unwrap();
    let insert = "INSERT INTO all_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
    let full = vec![
        Value::Int(1),
        Value::Int(-32768),
        Value::Int(i32::MAX.into()),
        Value::Int(i64::MIN),
        Value::Real(1.5),
        Value::Real(-1.0e300),
        Value::Text("héllo, wörld ✓".into()),
        Value::Text(String::new()),
        Value::Text("abc".into()),
        Value::Text(r#"{"a": [1, 2]}"#.into()),
        Value::Text(r#"{"b": true}"#.into()),
        Value::Text("0190a4c2-7d3e-7b5e-8f00-1234567890ab".into()),
        Value::Blob(vec![0, 1, 2, 255]),
        Value::Int(1),
    ];
    let nulls: Vec<Value> = std::iter::once(Value::Int(2)).chain(std::iter::repeat_n(Value::Null, 13)).collect();
    let mut other = full.clone();
    other[0] = Value::Int(3);
    other[3] = Value::Int(i64::MAX);
    other[5] = Value::Int(7); // an integer bound to a float column
    other[12] = Value::Blob(Vec::new());
    other[13] = Value::Int(0);
    assert_eq!(tx.execute_many(insert, &[full.clone(), nulls.clone(), other]).await.unwrap(), 3);
    tx.commit().await.unwrap();

    let rows = db.query("SELECT * FROM all_types ORDER BY id", &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0], Row(full));
    assert_eq!(rows[1], Row(nulls));
    let third = &rows[2].0;
    assert_eq!(third[3], Value::Int(i64::MAX));
    assert_eq!(third[5], Value::Real(7.0));
    assert_eq!(third[12], Value::Blob(Vec::new()));
    assert_eq!(third[13], Value::Int(0));

    // Parameters compare against typed columns too, and special floats survive.
    let rows = db.query("SELECT id FROM all_types WHERE i2 = $1 AND flag = $2", &[(-32768).into(), true.into()]).await;
    assert_eq!(rows.unwrap(), vec![Row(vec![Value::Int(1)])]);
    let rows = db.query("SELECT $1::float8, $2::float8", &[f64::INFINITY.into(), f64::NAN.into()]).await.unwrap();
    assert_eq!(rows[0].0[0], Value::Real(f64::INFINITY));
    assert!(matches!(rows[0].0[1], Value::Real(v) if v.is_nan()));

    // Types the port has no Value for but that read naturally: OID and NAME.
    let rows = db.query("SELECT 'pg_class'::regclass::oid, current_database()::name", &[]).await.unwrap();
    assert!(matches!(rows[0].0[0], Value::Int(v) if v > 0));
    assert!(matches!(&rows[0].0[1], Value::Text(name) if name.starts_with("weir_test_")));
}

#[tokio::test]
async fn bad_values_and_types_are_clear_errors() {
    let db = fresh_test_database().await;
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        ("SELECT $1::int2", vec![Value::Int(40_000)], "out of range for int2"),
        ("SELECT $1::int4", vec![Value::Int(i64::from(i32::MAX) + 1)], "out of range for int4"),
        ("SELECT $1::bool", vec![Value::Int(2)], "cannot send an integer as a parameter of type bool"),
        ("SELECT $1::float4", vec![Value::Real(1e300)], "out of range for float4"),
        ("SELECT $1::bigint", vec![Value::Text("1".into())], "cannot send text as a parameter of type int8"),
        ("SELECT $1::bytea", vec![Value::Text("x".into())], "cannot send text as a parameter of type bytea"),
        ("SELECT $1::uuid", vec![Value::Text("nope".into())], "is not a UUID"),
        ("SELECT $1::numeric", vec![Value::Int(1)], "parameter of type numeric"),
    ];
    for (sql, params, expected) in cases {
        match db.query(sql, &params).await {
            Err(Error::Other(message)) => assert!(message.contains(expected), "{sql}: {message}"),
            other => panic!("{sql}: expected Error::Other containing {expected:?}, got {other:?}"),
        }
    }
    match db.query("SELECT 1.5::numeric AS price", &[]).await {
        Err(Error::Decode(message)) => {
            assert!(message.contains("`price`") && message.contains("numeric"), "{message}")
        }
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    match db.query("SELEC 1", &[]).await {
        Err(Error::Other(message)) => assert!(message.contains("syntax error"), "{message}"),
        other => panic!("expected a syntax error, got {other:?}"),
    }
    // NULL goes to any parameter type.
    let rows = db.query("SELECT $1::numeric IS NULL", &[Value::Null]).await.unwrap();
    assert_eq!(rows[0].0[0], Value::Int(1));
}

#[tokio::test]
async fn unique_violation_is_classified_and_aborts_the_transaction() {
    let db = fresh_test_database().await;
    create_items(&db).await;
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[1.into(), "a".into()]).await.unwrap();
    match tx.execute("INSERT INTO items VALUES ($1, $2)", &[1.into(), "b".into()]).await {
        Err(Error::UniqueViolation(message)) => assert!(message.contains("items_pkey"), "{message}"),
        other => panic!("expected UniqueViolation, got {other:?}"),
    }
    // PostgreSQL aborts the transaction; the adapter says so instead of committing nothing.
    match tx.execute("INSERT INTO items VALUES ($1, $2)", &[2.into(), "c".into()]).await {
        Err(Error::Other(message)) => assert!(message.contains("aborted"), "{message}"),
        other => panic!("expected an aborted-transaction error, got {other:?}"),
    }
    assert!(tx.commit().await.is_err(), "commit after a failed statement must not report success");
    assert_eq!(count(&db, "items").await, 0);

    // Outside a transaction, and inside execute_many, too.
    db.begin().await.unwrap().execute("INSERT INTO items VALUES (5, 'x')", &[]).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES (5, 'x')", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let rows = vec![vec![6.into(), "y".into()], vec![5.into(), "dup".into()], vec![7.into(), "z".into()]];
    assert!(matches!(
        tx.execute_many("INSERT INTO items VALUES ($1, $2)", &rows).await,
        Err(Error::UniqueViolation(_))
    ));
    drop(tx);
    assert_eq!(count(&db, "items").await, 1);
}

#[tokio::test]
async fn dropped_transaction_rolls_back_and_the_connection_is_clean() {
    // One connection: whatever the dropped transaction leaves behind, the next user gets.
    let db = one_connection().await;
    create_items(&db).await;

    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES (1, 'uncommitted')", &[]).await.unwrap();
    drop(tx);
    assert_eq!(count(&db, "items").await, 0, "a leaked transaction would show its own row here");

    // A transaction left in the aborted state must not poison the pooled connection.
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES (2, 'a')", &[]).await.unwrap();
    assert!(tx.execute("SELECT 1/0", &[]).await.is_err());
    drop(tx);
    assert_eq!(count(&db, "items").await, 0);
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES (3, 'b')", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "items").await, 1);

    // A statement cancelled mid-flight: its outcome is unknown, so the transaction refuses
    // to go on, and dropping it still rolls back.
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO items VALUES (4, 'c')", &[]).await.unwrap();
    let slow = tx.execute("SELECT pg_sleep(0.3)", &[]);
    assert!(tokio::time::timeout(Duration::from_millis(20), slow).await.is_err());
    assert!(tx.execute("INSERT INTO items VALUES (5, 'd')", &[]).await.is_err());
    assert!(tx.commit().await.is_err());
    assert_eq!(count(&db, "items").await, 1);
    assert_eq!(idle_in_transaction(&db).await, 0);
    assert_eq!(db.pool_status().size, 1, "the connection went back to the pool");
}

#[test]
fn transaction_dropped_outside_a_runtime_closes_its_connection() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (db, tx) = runtime.block_on(async {
        let db = one_connection().await;
        create_items(&db).await;
        let mut tx = db.begin().await.unwrap();
        tx.execute("INSERT INTO items VALUES (1, 'x')", &[]).await.unwrap();
        (db, tx)
    });
    // No runtime here to spawn a rollback on: the connection must leave the pool instead.
    drop(tx);
    assert_eq!(db.pool_status().size, 0);
    runtime.block_on(async {
        assert_eq!(count(&db, "items").await, 0);
        // The server notices the closed session shortly; nothing may stay in a transaction.
        wait_until_none_in_transaction(&db, "the dropped session is still inside a transaction").await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_transactions() {
    let db = fresh_test_database_with(Options { pool_size: 8, ..Options::default() }).await;
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL)", &[]).await.unwrap();
    tx.execute("CREATE TABLE log (task BIGINT, i BIGINT, PRIMARY KEY (task, i))", &[]).await.unwrap();
    tx.execute("INSERT INTO counter VALUES (1, 0)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    let (tasks, per_task) = (64_i64, 20_i64);
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let mut tx = db.begin().await.unwrap();
                    tx.execute("INSERT INTO log VALUES ($1, $2)", &[task.into(), i.into()]).await.unwrap();
                    let n = tx.query("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n", &[]).await.unwrap();
                    assert!(n[0].i64(0).unwrap() >= 1);
                    // Every fourth transaction is abandoned; it must leave no trace.
                    if i % 4 == 3 {
                        drop(tx);
                    } else {
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    // A leaked transaction would hold the counter's row lock forever: fail, don't hang.
    let all = futures::future::try_join_all(handles);
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("transactions stalled").unwrap();
    let committed = tasks * per_task * 3 / 4;
    assert_eq!(count(&db, "log").await, committed);
    let n = db.query("SELECT n FROM counter", &[]).await.unwrap();
    assert_eq!(n[0].i64(0).unwrap(), committed);
    assert!(db.pool_status().size <= 8);
    // Each task's last transaction was abandoned: its rollback may still be on its way.
    wait_until_none_in_transaction(&db, "an abandoned transaction was never rolled back").await;
}

#[tokio::test]
async fn execute_many_pipelines_ten_thousand_rows() {
    let db = fresh_test_database().await;
    let mut tx = db.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE events (stream TEXT NOT NULL, version BIGINT NOT NULL, type TEXT NOT NULL,
                              payload BYTEA NOT NULL, PRIMARY KEY (stream, version))",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let insert = "INSERT INTO events (stream, version, type, payload) VALUES ($1, $2, $3, $4)";
    let rows = |stream: &str, n: i64| -> Vec<Vec<Value>> {
        (0..n).map(|v| vec![stream.into(), v.into(), "order_created".into(), vec![b'x'; 200].into()]).collect()
    };

    let batch = rows("pipelined", 10_000);
    let started = Instant::now();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(tx.execute_many(insert, &batch).await.unwrap(), 10_000);
    tx.commit().await.unwrap();
    let pipelined = started.elapsed();

    // The same work one round trip at a time, for comparison.
    let one_by_one = rows("sequential", 2_000);
    let started = Instant::now();
    let mut tx = db.begin().await.unwrap();
    for row in &one_by_one {
        tx.execute(insert, row).await.unwrap();
    }
    tx.commit().await.unwrap();
    let sequential = started.elapsed();

    println!(
        "execute_many: 10000 rows in {pipelined:?} = {:.0} rows/s; one execute per row: {:.0} rows/s",
        10_000.0 / pipelined.as_secs_f64(),
        2_000.0 / sequential.as_secs_f64()
    );
    let rows = db
        .query("SELECT count(*), min(version), max(version) FROM events WHERE stream = $1", &["pipelined".into()])
        .await;
    assert_eq!(rows.unwrap(), vec![Row(vec![Value::Int(10_000), Value::Int(0), Value::Int(9_999)])]);
    assert_eq!(count(&db, "events").await, 12_000);
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders",
        sqlite: "CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)",
        postgres: "CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)",
    },
    Migration {
        version: 2,
        name: "orders_status",
        sqlite: "ALTER TABLE orders ADD COLUMN status TEXT; CREATE INDEX orders_status ON orders (status)",
        postgres: "ALTER TABLE orders ADD COLUMN status TEXT; CREATE INDEX orders_status ON orders (status)",
    },
];

async fn applied(db: &PgDatabase) -> Vec<Row> {
    db.query("SELECT owner, version FROM weir_migrations ORDER BY owner, version", &[]).await.unwrap()
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = fresh_test_database().await;
    migrate(&db, "orders", MIGRATIONS).await.unwrap();
    migrate(&db, "orders", MIGRATIONS).await.unwrap();
    migrate(&db, "orders", &MIGRATIONS[..1]).await.unwrap();
    let expected: Vec<Row> = (1..=2).map(|v| Row(vec!["orders".into(), Value::Int(v)])).collect();
    assert_eq!(applied(&db).await, expected);
    db.query("SELECT id, total, status FROM orders", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_concurrently_without_error() {
    // Each round is a new database, because only the very first migration of a database
    // races on creating `weir_migrations`.
    for _ in 0..3 {
        let db = fresh_test_database().await;
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { migrate(&db, "orders", MIGRATIONS).await })
            })
            .collect();
        for run in runs {
            run.await.unwrap().expect("concurrent migrate");
        }
        let expected: Vec<Row> = (1..=2).map(|v| Row(vec!["orders".into(), Value::Int(v)])).collect();
        assert_eq!(applied(&db).await, expected);
    }
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 has no PostgreSQL: the error must be retryable, not a bug report.
    let started = Instant::now();
    match PgDatabase::connect("postgres://postgres@127.0.0.1:1/postgres").await {
        Err(error @ Error::Unavailable(_)) => assert!(error.is_transient()),
        other => panic!("expected Error::Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(matches!(PgDatabase::connect("not a url").await, Err(Error::Other(_))));
}
