//! Weir and a client outside it on one RabbitMQ broker: the seeds' Python client, pika, runs
//! `interop/rabbitmq_client.py` against the broker at 127.0.0.1:5672. It reads Weir's signed
//! contract events off a topic's log and validates them against `schemas/`; and it publishes a
//! signed `product_added` that a Weir router handles, while an unsigned and a garbled one end
//! in the topic's dead letters. Each test works under its own prefix and deletes what it
//! created. A missing Python module fails the test with the command that installs it.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use common::{PARTITIONS, Recording, Used};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir_contracts::{Contract, Currency, Money, OrderCreated, PricedLine, ProductAdded};
use weir_core::{
    Context, Db, Event, Handler, HandlerError, Kernel, Keyring, Outgoing, Router, RouterOptions,
    bus::{Message, Publisher, Subscriber, dead_letter_topic},
    router::dead_letter,
    store::{self, outbox::Outbox},
};

const PIP: &str = "python3 -m pip install 'pika>=1.3,<2' 'jsonschema>=4,<5'";

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

    /// Runs the Python client with `args` after the common ones; its standard output, or a
    /// failure with its standard error.
    async fn python(&self, command: &str, topic: &str, args: &[&str]) -> String {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut all = vec!["interop/rabbitmq_client.py", command, "--url", common::URL, "--prefix", &self.prefix];
        all.extend(["--topic", topic]);
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let output = tokio::task::spawn_blocking(move || {
            let modules = Command::new("python3").args(["-c", "import pika, jsonschema"]).current_dir(&root).output();
            match modules {
                Ok(out) if out.status.success() => {}
                Ok(out) => panic!(
                    "\n\nthe interop tests need the Python modules pika and jsonschema:\n{}\nInstall them with:\n\n    {PIP}\n\n",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => panic!("\n\nthe interop tests need python3 ({e}); then:\n\n    {PIP}\n\n"),
            }
            Command::new("python3").args(&all).current_dir(&root).output().expect("python3 runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmq_client.py {command} failed ({}):\n{}\n{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        common::delete_used(&self.prefix, &self.used);
    }
}

fn keyring() -> (Keyring, String) {
    let secret = Keyring::random_secret();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    (Keyring::new("partner-2025", secret), hex)
}

fn eur(amount: i64) -> Money {
    Money::new(amount, Currency::EUR)
}

fn signed(contract: &impl Contract, keyring: &Keyring) -> Event {
    let mut event = contract.to_event("interop-test");
    keyring.sign(&mut event);
    event
}

/// What the Python reader prints for `event`.
fn line(event: &Event) -> Value {
    json!({
        "type": event.kind,
        "id": event.id.to_string(),
        "subject": event.subject,
        "data": event.data::<Value>().unwrap(),
    })
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_reads_and_validates_weirs_signed_contract_events() {
    let fixture = Fixture::new().await;
    let (keyring, secret) = keyring();
    let products: Vec<Event> = (0..3)
        .map(|n| {
            let product = ProductAdded {
                product_id: uuid::Uuid::now_v7(),
                sku: format!("SKU-{n}"),
                name: format!("Product – {n} ü"),
                price: eur(1999 + n),
            };
            signed(&product, &keyring)
        })
        .collect();
    let order = OrderCreated {
        order_id: uuid::Uuid::now_v7(),
        user_id: uuid::Uuid::now_v7(),
        items: vec![PricedLine { product_id: uuid::Uuid::now_v7(), quantity: 2, unit_price: eur(500) }],
        total: eur(1000),
    };
    let orders = vec![signed(&order, &keyring)];
    for (topic, events) in [(ProductAdded::TOPIC, &products), (OrderCreated::TOPIC, &orders)] {
        fixture.bus.publish(topic, events.iter().map(Event::to_message).collect()).await.unwrap();
    }

    for (topic, events) in [(ProductAdded::TOPIC, &products), (OrderCreated::TOPIC, &orders)] {
        let count = events.len().to_string();
        let read = fixture.python("read", topic, &["--count", &count, "--secret-hex", &secret]).await;
        let expected: Vec<Value> = events.iter().map(line).collect();
        assert_eq!(lines(&read), expected, "{topic}: every event, in order, valid and signed");
    }

    // A reader that is told of more events than there are says so and fails.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let prefix = fixture.prefix.clone();
    let too_many = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["interop/rabbitmq_client.py", "read", "--url", common::URL, "--prefix", &prefix])
            .args(["--topic", OrderCreated::TOPIC, "--count", "2", "--timeout", "2"])
            .current_dir(root)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("only 1 of 2 events"), "{too_many:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reader_refuses_an_event_its_schema_does_not_allow() {
    let fixture = Fixture::new().await;
    let (keyring, secret) = keyring();
    // Valid CloudEvents headers, but data its schema refuses (no sku, no name, no price).
    let mut wrong = Event::new("interop-test", "product_added", "p-1", &json!({ "product_id": "p-1" })).unwrap();
    keyring.sign(&mut wrong);
    fixture.bus.publish(ProductAdded::TOPIC, vec![wrong.to_message()]).await.unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let prefix = fixture.prefix.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["interop/rabbitmq_client.py", "read", "--url", common::URL, "--prefix", &prefix])
            .args(["--topic", ProductAdded::TOPIC, "--count", "1", "--secret-hex", &secret])
            .current_dir(root)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("invalid event") && stderr.contains("'sku' is a required property"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing printed for an invalid event");
}

/// Records the products it is handed.
struct Catalog {
    products: Arc<Mutex<Vec<(Event, ProductAdded)>>>,
}

#[async_trait]
impl Handler for Catalog {
    async fn handle(&self, event: &Event, _ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let product = ProductAdded::decode(event)
            .ok_or_else(|| HandlerError::permanent(format!("not a product_added: {}", event.kind)))??;
        self.products.lock().unwrap().push((event.clone(), product));
        Ok(Vec::new())
    }
}

async fn next_message(subscription: &mut weir_core::Subscription, what: &str) -> Message {
    let delivery = tokio::time::timeout(Duration::from_secs(20), subscription.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 20 s"))
        .expect("the subscription ended");
    let message = delivery.message.clone();
    delivery.ack().await.unwrap();
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weir_router_handles_what_pika_publishes_and_dead_letters_the_rest() {
    let fixture = Fixture::new().await;
    let (keyring, secret) = keyring();
    let dir = tempfile::tempdir().unwrap();
    let db: Db = Arc::new(weir_store_sqlite::SqliteDatabase::open(dir.path().join("weir.db")).unwrap());
    store::install(db.as_ref()).await.unwrap();
    let bus = Arc::new(fixture.bus.clone());
    let kernel = Kernel { db, outbox: Outbox::new(keyring), publisher: bus.clone(), subscriber: bus.clone() };
    let topic = ProductAdded::TOPIC;
    let group = "catalog";
    // The topic and the group exist before the outside producer publishes (as with services
    // that subscribe when they start); the router then joins the group.
    drop(fixture.bus.subscribe(topic, group).await.unwrap());

    let partitions = PARTITIONS.to_string();
    let publish = |variant: &'static str| {
        let (fixture, secret, partitions) = (&fixture, secret.clone(), partitions.clone());
        async move {
            let args = ["--key-id", "partner-2025", "--secret-hex", &secret, "--partitions", &partitions];
            let out = fixture.python("publish", topic, &[&args[..], &["--variant", variant]].concat()).await;
            serde_json::from_str::<Value>(out.trim()).unwrap()
        }
    };
    let good = publish("signed").await;
    let unsigned = publish("unsigned").await;
    let garbage = publish("garbage").await;

    let products = Arc::new(Mutex::new(Vec::new()));
    let options = RouterOptions { drain_timeout: Duration::from_secs(5), ..RouterOptions::default() };
    let router = Router::new(kernel.clone(), options).route(topic, group, Catalog { products: products.clone() });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (kernel, shutdown) = (kernel.clone(), shutdown.clone());
        async move { kernel.run(router, shutdown).await }
    });

    let mut letters = fixture.bus.subscribe(&dead_letter_topic(topic), "inspector").await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let letter = next_message(&mut letters, "dead letter").await;
        let id = letter.headers.get("ce-id").cloned().unwrap_or_default();
        reasons.push((id, letter.headers[dead_letter::REASON].clone(), letter.headers[dead_letter::GROUP].clone()));
    }
    reasons.sort_by_key(|(id, _, _)| id != unsigned["id"].as_str().unwrap());
    let [(unsigned_id, unsigned_reason, unsigned_group), (garbage_id, garbage_reason, _)] = &reasons[..] else {
        unreachable!()
    };
    assert_eq!(unsigned_id, unsigned["id"].as_str().unwrap());
    assert_eq!(unsigned_reason, "bad signature: the event is not signed");
    assert_eq!(unsigned_group, group);
    assert_eq!(garbage_id, garbage["id"].as_str().unwrap());
    assert!(garbage_reason.starts_with("undecodable: "), "{garbage_reason}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while products.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the signed product was not handled within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for anything that should not reach the handler to do so anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running).await.unwrap().unwrap().unwrap();

    let products = products.lock().unwrap();
    assert_eq!(products.len(), 1, "only the signed event reached the handler");
    let (event, product) = &products[0];
    assert_eq!(event.id.to_string(), good["id"].as_str().unwrap());
    assert_eq!(event.subject, good["subject"].as_str().unwrap());
    assert_eq!(event.source, "python-producer");
    assert_eq!(event.signature.as_ref().map(|s| s.key_id.as_str()), Some("partner-2025"));
    assert_eq!(product.product_id.to_string(), event.subject);
    assert_eq!((product.sku.as_str(), product.name.as_str()), ("PY-1", "Made in Python"));
    assert_eq!(product.price, eur(1999));
}
