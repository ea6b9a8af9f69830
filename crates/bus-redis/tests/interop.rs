//! Weir and a client outside Weir on one Redis: the seeds' Python client, redis-py, running
//! `interop/redis_client.py` against the machine's Redis at 127.0.0.1:6379. Weir's contract events
//! published through [`RedisBus`] are read by a consumer group of Python's own and validated
//! against `schemas/` (signatures included); a `product_added` published by Python — signed as
//! Weir's keyring signs, on the partition stream of its key — is handled by a Weir router, and an
//! unsigned one is dead-lettered. Each test uses a key prefix of its own and deletes its keys at
//! the end. A missing `python3`, Python module or Redis is a failure, never a skip.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_bus_redis::{Options, RedisBus};
use weir_contracts::{Contract, Currency, Money, OrderCreated, PricedLine, ProductAdded, ProductPriceChanged};
use weir_core::{
    Context, Event, Handler, HandlerError, Kernel, Keyring, Outgoing, Router, RouterOptions,
    bus::{Publisher, Subscriber, dead_letter_topic, partition_of},
    router::dead_letter,
    store::{self, outbox::Outbox},
};
use weir_store_sqlite::SqliteDatabase;

const URL: &str = "redis://127.0.0.1:6379";
const PARTITIONS: u32 = 16;

fn unique(what: &str) -> String {
    format!("{what}-{}", Uuid::now_v7().simple())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn connect(prefix: &str) -> RedisBus {
    let options = Options { partitions: PARTITIONS, ..Options::with_prefix(prefix) };
    RedisBus::connect(URL, options).await.unwrap_or_else(|e| panic!("cannot use Redis at {URL}: {e}"))
}

/// Deletes a prefix's keys from the shared server when the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(URL) else { return };
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

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Checks once that `python3` runs and has the modules the script needs.
fn check_python() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let output = std::process::Command::new("python3")
            .args(["-c", "import redis, jsonschema"])
            .output()
            .map_err(|e| format!("cannot run python3: {e}; install Python 3"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}\nThe interop tests need redis-py and jsonschema: python3 -m pip install redis jsonschema",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    });
    if let Err(e) = checked {
        panic!("{e}");
    }
}

/// Runs `python3 interop/redis_client.py <args>` from the repository's root; its stdout lines
/// as JSON. Fails the test, with the script's stderr, when it fails.
async fn python(args: &[impl AsRef<str>]) -> Vec<Value> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    check_python();
    let output = tokio::process::Command::new("python3")
        .arg("interop/redis_client.py")
        .args(&args)
        .current_dir(repository())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python3 interop/redis_client.py {} failed ({}):\n{}\nstdout:\n{stdout}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))).collect()
}

/// What the Python reader prints for `event`.
fn line_of(event: &Event) -> Value {
    json!({
        "type": event.kind,
        "id": event.id.to_string(),
        "subject": event.subject,
        "data": serde_json::from_slice::<Value>(&event.data).unwrap(),
    })
}

fn product(name: &str, cents: i64) -> ProductAdded {
    ProductAdded {
        product_id: Uuid::now_v7(),
        sku: format!("SKU-{cents}"),
        name: name.to_owned(),
        price: Money::new(cents, Currency::EUR),
    }
}

#[tokio::test]
async fn partitions_are_computed_alike_in_python() {
    let keys = ["order-1", "k1", "", "ü-键", "0192f0c4-7d55-7c2e-9a1b-3c4d5e6f7a8b", "a much longer key than most"];
    for partitions in [1, 7, 16] {
        let mut args = vec!["partition".to_owned(), "--partitions".to_owned(), partitions.to_string()];
        args.extend(keys.iter().map(|k| (*k).to_owned()));
        let lines = python(&args).await;
        assert_eq!(lines.len(), keys.len());
        for (key, line) in keys.iter().zip(&lines) {
            assert_eq!(line["key"], *key);
            assert_eq!(line["partition"], partition_of(key, partitions), "key {key:?} of {partitions} partitions");
        }
    }
}

/// Weir publishes signed contract events; redis-py reads them as a consumer group of its own,
/// finds every field where the crate docs say, validates each against its schema and verifies
/// its signature.
#[tokio::test]
async fn python_reads_and_validates_what_weir_publishes() {
    let prefix = unique("interop");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(&prefix).await;
    let secret = Keyring::random_secret();
    let keyring = Keyring::new("weir-1", secret.clone());
    let sign = |mut event: Event| {
        keyring.sign(&mut event);
        event
    };

    // The inventory topic: three products, the first one's price changed after it was added
    // (one key, two events: they must come in that order).
    let products = [product("Café crème — 250 g", 1299), product("Tea", 450), product("Mug \"large\"", 899)];
    let mut inventory: Vec<Event> = products.iter().map(|p| sign(p.to_event("inventory"))).collect();
    let repriced = ProductPriceChanged { product_id: products[0].product_id, price: Money::new(1399, Currency::EUR) };
    inventory.push(sign(repriced.to_event("inventory")));
    // The orders topic: two orders, in another batch each.
    let orders: Vec<Event> = (0..2)
        .map(|n| {
            let line = PricedLine { product_id: products[n].product_id, quantity: 2, unit_price: products[n].price };
            let total = Money::new(products[n].price.amount * 2, Currency::EUR);
            let order = OrderCreated { order_id: Uuid::now_v7(), user_id: Uuid::now_v7(), items: vec![line], total };
            sign(order.to_event("orders"))
        })
        .collect();

    bus.publish(ProductAdded::TOPIC, inventory.iter().map(Event::to_message).collect()).await.unwrap();
    for order in &orders {
        bus.publish(OrderCreated::TOPIC, vec![order.to_message()]).await.unwrap();
    }

    let secret_hex = hex(&secret);
    for (topic, events) in [(ProductAdded::TOPIC, &inventory), (OrderCreated::TOPIC, &orders)] {
        let count = events.len().to_string();
        let read = python(&[
            "read",
            "--url",
            URL,
            "--prefix",
            &prefix,
            "--topic",
            topic,
            "--count",
            &count,
            "--secret-hex",
            &secret_hex,
            "--timeout",
            "20",
        ])
        .await;
        let by_id = |lines: &[Value]| -> BTreeMap<String, Value> {
            lines.iter().map(|l| (l["id"].as_str().unwrap().to_owned(), l.clone())).collect()
        };
        assert_eq!(by_id(&read), by_id(&events.iter().map(line_of).collect::<Vec<_>>()), "topic {topic}");
        if topic == ProductAdded::TOPIC {
            let position = |id: Uuid| read.iter().position(|l| l["id"] == id.to_string()).unwrap();
            assert!(position(inventory[0].id) < position(inventory[3].id), "one key's events in publish order");
        }
    }
    // Python's group read and acked everything: nothing of it is left.
    for topic in [ProductAdded::TOPIC, OrderCreated::TOPIC] {
        assert_eq!(bus.lag(topic, "python-reader").await.unwrap(), 0, "{topic}");
    }
}

/// Records the `product_added` events it handles.
struct Catalog {
    handled: mpsc::UnboundedSender<(Event, ProductAdded)>,
}

#[async_trait]
impl Handler for Catalog {
    fn accepts(&self, kind: &str) -> bool {
        kind == ProductAdded::KIND
    }

    async fn handle(&self, event: &Event, _ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        let product = ProductAdded::decode(event).expect("only product_added is accepted")?;
        let _ = self.handled.send((event.clone(), product));
        Ok(Vec::new())
    }
}

/// redis-py publishes a `product_added` signed with a key Weir knows, to the partition stream of
/// its key: a Weir router decodes, verifies and handles it. An unsigned one goes to the
/// dead-letter topic with its reason, never to the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weir_router_handles_what_python_publishes() {
    let prefix = unique("interop");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open(dir.path().join("catalog.db")).unwrap();
    store::install(&db).await.unwrap();
    let secret = Keyring::random_secret();
    let kernel = Kernel {
        db: Arc::new(db),
        outbox: Outbox::new(Keyring::new("python-1", secret.clone())),
        publisher: Arc::new(bus.clone()),
        subscriber: Arc::new(bus.clone()),
    };
    let topic = ProductAdded::TOPIC;

    let (signed_id, unsigned_id) = (Uuid::new_v4(), Uuid::new_v4());
    let (signed_id_text, unsigned_id_text, secret_hex) = (signed_id.to_string(), unsigned_id.to_string(), hex(&secret));
    let publish = |extra: &[&str]| {
        let mut args = vec!["publish", "--url", URL, "--prefix", &prefix, "--topic", topic, "--partitions", "16"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let signed_args = publish(&[
        "--key-id",
        "python-1",
        "--secret-hex",
        &secret_hex,
        "--product-id",
        &signed_id_text,
        "--name",
        "Ünïcode",
    ]);
    let unsigned_args = publish(&["--unsigned", "--product-id", &unsigned_id_text]);
    let published = python(&signed_args).await.remove(0);
    let unsigned = python(&unsigned_args).await.remove(0);
    // Python put each where Weir puts a message of that key.
    let streams = bus.streams(topic).unwrap();
    for (line, key) in [(&published, &signed_id_text), (&unsigned, &unsigned_id_text)] {
        assert_eq!(line["stream"], streams[partition_of(key, PARTITIONS) as usize], "{line}");
    }

    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let router = Router::new(kernel.clone(), RouterOptions::default()).route(topic, "catalog", Catalog { handled });
    let shutdown = CancellationToken::new();
    let running = {
        let (kernel, shutdown) = (kernel.clone(), shutdown.clone());
        tokio::spawn(async move { kernel.run(router, shutdown).await })
    };

    let (event, product) = timeout(Duration::from_secs(20), handled_rx.recv())
        .await
        .expect("the router handles Python's event within 20 s")
        .expect("the handler is alive");
    assert_eq!(event.id.to_string(), published["id"]);
    assert_eq!(event.source, "python-producer");
    assert_eq!(event.subject, signed_id_text);
    assert_eq!(event.signature.as_ref().map(|s| s.key_id.as_str()), Some("python-1"));
    assert!(kernel.keyring().verify(&event).is_ok());
    let expected = ProductAdded {
        product_id: signed_id,
        sku: "PY-1".into(),
        name: "Ünïcode".into(),
        price: Money::new(1999, Currency::EUR),
    };
    assert_eq!(product, expected);

    let mut letters = bus.subscribe(&dead_letter_topic(topic), "interop-reader").await.unwrap();
    let letter = timeout(Duration::from_secs(20), letters.next())
        .await
        .expect("the unsigned event is dead-lettered within 20 s")
        .expect("the subscription is open");
    let headers = &letter.message.headers;
    assert_eq!(headers["ce-id"], unsigned["id"]);
    assert_eq!(letter.message.key, unsigned_id_text);
    assert_eq!(headers[dead_letter::REASON], "bad signature: the event is not signed");
    assert_eq!(headers[dead_letter::ORIGINAL_TOPIC], topic);
    assert_eq!(headers[dead_letter::GROUP], "catalog");
    letter.ack().await.unwrap();
    assert!(handled_rx.try_recv().is_err(), "the unsigned event never reached the handler");

    shutdown.cancel();
    timeout(Duration::from_secs(15), running).await.expect("the router stops").unwrap().unwrap();
}
