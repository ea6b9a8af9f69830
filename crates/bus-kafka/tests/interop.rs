//! Interop with the seeds' own Python client, confluent-kafka (librdkafka), through
//! `interop/kafka_client.py`: Weir's contract events as another Kafka client reads them — the
//! CloudEvents binding's headers, the data against `schemas/`, the signature, the partition of
//! each key — and another client's events as Weir's router handles them, or dead-letters them
//! when unsigned. Each test starts a `tansu` of its own; python3 with confluent-kafka and
//! jsonschema must be installed (`scripts/test` installs them): a missing module fails the test
//! with the pip command that installs it.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use weir_bus_kafka::{KafkaBus, Options};
use weir_contracts::{Contract, Currency, Money, OrderCreated, PricedLine, ProductAdded, ProductPriceChanged};
use weir_core::{
    Context, Db, Event, Handler, HandlerError, Kernel, Keyring, Outgoing, Router, RouterOptions,
    bus::{Publisher, Subscriber},
    router::dead_letter,
    store::{self, outbox::Outbox},
};
use weir_testkit::server::Server;

const PARTITIONS: u32 = 16;
const PREFIX: &str = "interop";
/// The key both sides sign with: Weir's keyring and the Python producer share it.
const KEY_ID: &str = "interop-key";
const SECRET: &[u8; 32] = b"interop secret of thirty-two b!!";

fn options() -> Options {
    Options {
        prefix: PREFIX.to_owned(),
        partitions: PARTITIONS,
        session_timeout: Duration::from_secs(6),
        heartbeat_interval: Duration::from_millis(500),
        fetch_wait: Duration::from_millis(100),
        commit_interval: Duration::from_millis(100),
        // One record per batch: see the crate docs on tansu.
        batch_messages: Some(1),
        ..Options::default()
    }
}

fn bootstrap(server: &Server) -> String {
    format!("127.0.0.1:{}", server.port())
}

async fn connect(server: &Server) -> KafkaBus {
    KafkaBus::connect(&bootstrap(server), options())
        .await
        .unwrap_or_else(|e| panic!("cannot use tansu: {e}\n{}", server.log_tail()))
}

const PIP: &str = "python3 -m pip install 'confluent-kafka>=2.12,<3' 'jsonschema>=4,<5'";

/// Runs `python3 interop/kafka_client.py args…` from the repository's root, off the runtime;
/// returns its JSON lines. Panics with its stderr when it fails.
async fn kafka_client(args: Vec<String>) -> Vec<Json> {
    tokio::task::spawn_blocking(move || {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let check = Command::new("python3").args(["-c", "import confluent_kafka, jsonschema"]).output();
        match check {
            Err(e) => panic!("cannot run python3 ({e}): install Python 3, then {PIP}"),
            Ok(out) if !out.status.success() => panic!(
                "the interop tests need confluent-kafka and jsonschema in python3: run {PIP}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Ok(_) => {}
        }
        let out = Command::new("python3")
            .arg("interop/kafka_client.py")
            .args(&args)
            .current_dir(&root)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kafka_client.py {} failed ({}):\n{}\n{stdout}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
            .collect()
    })
    .await
    .expect("the python client's thread")
}

/// Reads `count` events of Weir's `topic` with the Python consumer, checking their signatures.
async fn python_reads(server: &Server, bus: &KafkaBus, topic: &str, count: usize) -> Vec<Json> {
    let topic = bus.kafka_topic(topic).unwrap();
    let args = ["read", "--bootstrap", &bootstrap(server), "--topic", &topic, "--count", &count.to_string()];
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    args.extend(["--secret-hex".to_owned(), hex(SECRET)]);
    let lines = kafka_client(args).await;
    assert_eq!(lines.len(), count, "{lines:#?}");
    lines
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signed<C: Contract>(keyring: &Keyring, payload: &C, source: &str) -> Event {
    let mut event = payload.to_event(source);
    keyring.sign(&mut event);
    event
}

/// Checks what the Python reader printed against what Weir published, in publish order: every
/// event once, valid (the reader validated it against its schema and verified its signature),
/// its data as sent, keyed by its subject on the partition librdkafka's murmur2 picks for the
/// key, and each key's events in publish order.
fn check_read(lines: &[Json], published: &[Event]) {
    let by_id: HashMap<&str, &Json> = lines.iter().map(|line| (line["id"].as_str().unwrap(), line)).collect();
    assert_eq!(by_id.len(), published.len(), "each event once: {lines:#?}");
    let mut partitions = Vec::new();
    for event in published {
        let id = event.id.to_string();
        let line = by_id.get(id.as_str()).unwrap_or_else(|| panic!("event {id} was not read: {lines:#?}"));
        assert_eq!(line["type"], event.kind);
        assert_eq!(line["subject"], event.subject);
        assert_eq!(line["key"], event.subject, "the record key is the subject");
        assert_eq!(line["data"], serde_json::from_slice::<Json>(&event.data).unwrap());
        assert_eq!(line["verified"], true, "the reader checked the signature");
        assert_eq!(
            line["partition"], line["murmur2_partition"],
            "key {} is on the partition librdkafka's murmur2 partitioner picks",
            event.subject
        );
        partitions.push(line["partition"].as_i64().unwrap());
    }
    partitions.sort_unstable();
    partitions.dedup();
    assert!(partitions.len() > 1, "the keys spread over partitions: {partitions:?}");
    // Per key, the reader met the events in publish order.
    let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in lines {
        seen.entry(line["key"].as_str().unwrap()).or_default().push(line["id"].as_str().unwrap());
    }
    for (key, ids) in seen {
        let expected: Vec<String> = published.iter().filter(|e| e.subject == key).map(|e| e.id.to_string()).collect();
        assert_eq!(ids, expected, "key {key}'s events in publish order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_reads_and_validates_weirs_contract_events() {
    let server = weir_testkit::server::tansu();
    let bus = connect(&server).await;
    let keyring = Keyring::new(KEY_ID, SECRET.to_vec());

    // Inventory: each product added, then its price changed — one key, two events in order.
    let mut inventory = Vec::new();
    for n in 0..8 {
        let product_id = uuid::Uuid::now_v7();
        let added = ProductAdded {
            product_id,
            sku: format!("sku-{n}"),
            name: format!("Kettle, model {n} — «ß»"),
            price: Money::new(1999 + n, Currency::EUR),
        };
        let changed = ProductPriceChanged { product_id, price: Money::new(1499 + n, Currency::EUR) };
        inventory.push(signed(&keyring, &added, "inventory"));
        inventory.push(signed(&keyring, &changed, "inventory"));
    }
    bus.publish(ProductAdded::TOPIC, inventory.iter().map(Event::to_message).collect()).await.unwrap();

    let orders: Vec<Event> = (0..8)
        .map(|n| {
            let unit_price = Money::new(250, Currency::USD);
            let created = OrderCreated {
                order_id: uuid::Uuid::now_v7(),
                user_id: uuid::Uuid::now_v7(),
                items: vec![PricedLine { product_id: uuid::Uuid::now_v7(), quantity: n + 1, unit_price }],
                total: unit_price.checked_mul(i64::from(n + 1)).unwrap(),
            };
            signed(&keyring, &created, "orders")
        })
        .collect();
    bus.publish(OrderCreated::TOPIC, orders.iter().map(Event::to_message).collect()).await.unwrap();

    let read = python_reads(&server, &bus, ProductAdded::TOPIC, inventory.len()).await;
    check_read(&read, &inventory);
    let read = python_reads(&server, &bus, OrderCreated::TOPIC, orders.len()).await;
    check_read(&read, &orders);
    bus.close().await;
}

/// Records each product it is handed in the `products` table, in the router's transaction.
struct Catalog;

#[async_trait]
impl Handler for Catalog {
    fn accepts(&self, kind: &str) -> bool {
        kind == ProductAdded::KIND
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let product = ProductAdded::decode(event).ok_or_else(|| HandlerError::permanent("not a product_added"))??;
        ctx.tx()
            .execute(
                "INSERT INTO products (event_id, source, product_id, sku, name, amount, currency) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    event.id.to_string().into(),
                    event.source.clone().into(),
                    product.product_id.to_string().into(),
                    product.sku.into(),
                    product.name.into(),
                    product.price.amount.into(),
                    product.price.currency.to_string().into(),
                ],
            )
            .await?;
        Ok(Vec::new())
    }
}

/// Waits until the broker has `topic` (the router creates it as it subscribes), asking with a
/// client that creates nothing.
async fn wait_for_topic(server: &Server, topic: String) {
    let bootstrap = bootstrap(server);
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a metadata client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(5)).expect("metadata");
            if metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            {
                return;
            }
            assert!(Instant::now() < deadline, "the router did not create {topic}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("the metadata thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirs_router_handles_what_the_python_client_publishes() {
    let server = weir_testkit::server::tansu();
    let bus = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let db: Db = Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.path().join("weir.db")).unwrap());
    store::install(db.as_ref()).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE products (event_id TEXT NOT NULL, source TEXT NOT NULL, product_id TEXT NOT NULL, \
         sku TEXT NOT NULL, name TEXT NOT NULL, amount BIGINT NOT NULL, currency TEXT NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let kernel = Kernel {
        db: db.clone(),
        outbox: Outbox::new(Keyring::new(KEY_ID, SECRET.to_vec())),
        publisher: Arc::new(bus.clone()),
        subscriber: Arc::new(bus.clone()),
    };
    let router = Router::new(kernel.clone(), RouterOptions::default()).route(ProductAdded::TOPIC, "catalog", Catalog);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (kernel, shutdown) = (kernel.clone(), shutdown.clone());
        async move { kernel.run(router, shutdown).await }
    });
    let topic = bus.kafka_topic(ProductAdded::TOPIC).unwrap();
    wait_for_topic(&server, topic.clone()).await;

    let publish = |unsigned: bool| {
        let mut args: Vec<String> =
            ["publish", "--bootstrap", &bootstrap(&server), "--topic", &topic].into_iter().map(str::to_owned).collect();
        args.extend(["--key-id".to_owned(), KEY_ID.to_owned(), "--secret-hex".to_owned(), hex(SECRET)]);
        if unsigned {
            args.push("--unsigned".to_owned());
        }
        kafka_client(args)
    };
    let signed = publish(false).await.remove(0);
    let unsigned = publish(true).await.remove(0);

    // The signed event is verified, decoded and handled.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = db
            .query("SELECT event_id, source, product_id, sku, name, amount, currency FROM products", &[])
            .await
            .unwrap();
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "the router did not handle the Python client's event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = &rows[0];
    assert_eq!(row.text(0).unwrap(), signed["id"].as_str().unwrap());
    assert_eq!(row.text(1).unwrap(), "python-producer");
    assert_eq!(row.text(2).unwrap(), signed["subject"].as_str().unwrap());
    assert_eq!(row.text(3).unwrap(), signed["data"]["sku"].as_str().unwrap());
    assert_eq!(row.text(4).unwrap(), "Python kettle");
    assert_eq!((row.i64(5).unwrap(), row.text(6).unwrap()), (2999, "EUR"));

    // The unsigned one never reaches the handler: it is a dead letter, saying why.
    let mut letters = bus.subscribe(&weir_core::bus::dead_letter_topic(ProductAdded::TOPIC), "reader").await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(20), letters.next())
        .await
        .expect("the unsigned event is dead-lettered")
        .expect("the dead-letter subscription is open");
    let headers = &letter.message.headers;
    assert_eq!(headers["ce-id"], unsigned["id"].as_str().unwrap());
    assert_eq!(headers[dead_letter::REASON], "bad signature: the event is not signed");
    assert_eq!(headers[dead_letter::ORIGINAL_TOPIC], ProductAdded::TOPIC);
    assert_eq!(headers[dead_letter::GROUP], "catalog");
    letter.ack().await.unwrap();

    shutdown.cancel();
    run.await.unwrap().unwrap();
    let rows = db.query("SELECT event_id FROM products", &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "only the signed event was handled");
    bus.close().await;
}
