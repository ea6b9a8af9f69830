//! `weir serve`: the order pipeline as separate processes on the distributed components — one
//! PostgreSQL database per service on the local server, and a bus: NATS JetStream, or Kafka for
//! events with RabbitMQ for commands (the split the seeds recommend) — with two processes of
//! orders and of payments sharing their work, one of each killed midway; and the document
//! platform, on NATS and on Kafka. Black-box: each process is the real binary, reached only over
//! HTTP. PostgreSQL, NATS and RabbitMQ must run (`.ci/run` starts them; a missing one fails);
//! each Kafka test starts a tansu broker of its own.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Client, PATIENCE, Process, free_port};
use serde_json::Value;
use uuid::Uuid;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The bus a deployment runs on: `weir serve`'s bus arguments (the prefix aside), and the broker
/// the test started for it.
struct Bus {
    args: Vec<String>,
    nats: bool,
    /// A killed process is replaced, as a supervisor would: on tansu the survivors of a group
    /// never get a dead member's partitions until a member joins (see weir-bus-kafka's tests).
    replace_the_killed: bool,
    /// The processes of a service share its commands. On RabbitMQ a group's partition queue has
    /// one active consumer, the first process to subscribe; the others stand by.
    shares_commands: bool,
    _broker: Option<weir_testkit::server::Server>,
}

impl Bus {
    fn nats() -> Self {
        let args = vec!["--bus".into(), NATS_URL.into()];
        Self { args, nats: true, replace_the_killed: false, shares_commands: true, _broker: None }
    }

    /// Events over a Kafka broker of the test's own, commands and saga timers over RabbitMQ.
    fn kafka_and_rabbitmq() -> Self {
        let tansu = weir_testkit::server::tansu();
        // The broker forgets the deployment's queues a minute after it ends.
        let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f?queue_expiry=60";
        let args = vec![
            "--bus".into(),
            format!("kafka://127.0.0.1:{}?batch_messages=1", tansu.port()),
            "--bus-route".into(),
            format!("*.commands={amqp}"),
            "--bus-route".into(),
            format!("saga.timeouts={amqp}"),
        ];
        Self { args, nats: false, replace_the_killed: true, shares_commands: false, _broker: Some(tansu) }
    }

    /// Everything over a Kafka broker of the test's own.
    fn kafka() -> Self {
        let tansu = weir_testkit::server::tansu();
        let args = vec!["--bus".into(), format!("kafka://127.0.0.1:{}?batch_messages=1", tansu.port())];
        Self { args, nats: false, replace_the_killed: true, shares_commands: true, _broker: Some(tansu) }
    }
}

/// One deployment: a database per service (dropped at the end), a bus prefix of its own and a
/// shared key directory.
struct Deployment {
    prefix: String,
    bus: Bus,
    /// Each service's database.
    databases: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(bus: Bus) -> Self {
        Self {
            prefix: format!("serve_{}", Uuid::now_v7().simple()),
            bus,
            databases: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The database URL of `service`'s processes.
    fn database_url(&self, service: &str) -> String {
        let (_, database) = self.databases.iter().find(|(s, _)| s == service).expect("the service was started");
        format!("postgres://postgres@127.0.0.1:5432/{database}")
    }

    /// Starts `weir serve <service>` on a free port and waits until it answers. Processes of
    /// one service share its database.
    async fn serve(&mut self, service: &str, extra: &[&str]) -> Process {
        let database = match self.databases.iter().find(|(s, _)| s == service) {
            Some((_, database)) => database.clone(),
            None => {
                // The test-database prefix, so that a run that dies before dropping them has
                // them swept by a later one.
                let database = format!("{}{}", weir_store_postgres::TEST_DATABASE_PREFIX, Uuid::now_v7().simple());
                self.databases.push((service.to_owned(), database.clone()));
                database
            }
        };
        let port = free_port();
        let log = self.dir.path().join(format!("{service}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", service, "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
            .args(["--bus-prefix", &self.prefix])
            .args(&self.bus.args)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(extra)
            .env("WEIR_DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{database}"))
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the weir binary starts");
        let mut served = Process { child, url: format!("http://127.0.0.1:{port}"), log };
        let ready = if service == "payment-gateway" { "/v1/ledger" } else { "/readyz" };
        served.wait_for(ready).await;
        served
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The processes' logs, kept for whoever reads the failure.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("the deployment's logs are in {}", kept.display());
        }
        let databases = std::mem::take(&mut self.databases);
        let prefix = self.prefix.clone();
        let nats = self.bus.nats;
        // Best effort, on a runtime of its own: the test's may be gone when a test panics.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                for (_, name) in databases {
                    let _ = weir_store_postgres::drop_database(ADMIN_URL, &name).await;
                }
                let bus = if nats {
                    weir_bus_nats::NatsBus::connect(NATS_URL, weir_bus_nats::Options::with_prefix(prefix)).await.ok()
                } else {
                    None
                };
                if let Some(bus) = bus {
                    for topic in TOPICS {
                        let _ = bus.delete_topic(topic).await;
                        let _ = bus.delete_topic(&format!("{topic}.dlq")).await;
                    }
                }
            })
        })
        .join();
    }
}

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Every topic the order pipeline's services publish or subscribe to.
const TOPICS: [&str; 11] = [
    "users",
    "inventory",
    "inventory.commands",
    "orders",
    "orders.commands",
    "payments",
    "payments.commands",
    "saga.timeouts",
    "doc.uploaded",
    "doc.processed",
    "doc.classified",
];

/// What a process's routers handled: `weir_handler_total` summed over its labels.
async fn handled(process: &Process) -> f64 {
    let text = reqwest::get(format!("{}/metrics", process.url)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("weir_handler_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_pipeline_runs_as_separate_processes_on_postgresql_and_nats() {
    order_pipeline(Deployment::new(Bus::nats())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_pipeline_runs_on_kafka_for_events_and_rabbitmq_for_commands() {
    order_pipeline(Deployment::new(Bus::kafka_and_rabbitmq())).await;
}

async fn order_pipeline(mut deployment: Deployment) {
    // A slow gateway, so that charges are in flight when a payments process is killed.
    let gateway = deployment.serve("payment-gateway", &["--payment-latency-ms", "300"]).await;
    let users = deployment.serve("users", &[]).await;
    let inventory = deployment.serve("inventory", &[]).await;
    let mut orders_a = deployment.serve("orders", &[]).await;
    let mut orders_b = deployment.serve("orders", &[]).await;
    let mut payments_a = deployment.serve("payments", &["--payment-gateway-url", &gateway.url]).await;
    let _payments_b = deployment.serve("payments", &["--payment-gateway-url", &gateway.url]).await;
    let _saga = deployment.serve("saga", &[]).await;
    let notifications = deployment.serve("notifications", &[]).await;
    let upstreams: Vec<&str> =
        [&users, &inventory, &orders_a, &orders_b, &notifications].iter().map(|p| p.url.as_str()).collect();
    let gateway_args: Vec<&str> = upstreams.iter().flat_map(|url| ["--upstream", url]).collect();
    let front = deployment.serve("gateway", &gateway_args).await;
    let api = front.client();

    // A user registers and orders through the gateway, which learnt every route from the
    // services' OpenAPI documents; the token users issued is good with every service.
    let user = api.register("ada@example.com").await;
    let stock = api.clone();
    let plentiful = stock.products().await.into_iter().max_by_key(|p| p["available"].as_i64().unwrap()).unwrap();
    let product_id = plentiful["product_id"].as_str().unwrap();
    let before = stock.product(product_id).await;
    let (a, b) = (orders_a.client(), orders_b.client());
    let first = first_order(&api, &user, product_id).await;
    let view = api.wait_for_outcome(&user.token, &first).await;
    assert_eq!(view["status"], "COMPLETED", "{view}");
    let notified = api.wait_for_notifications(&user.token, 1).await;
    assert_eq!(notified.len(), 1, "{notified:?}");

    // Orders placed on both orders processes at once all complete, and either process lists
    // them all — though one payments process is killed (SIGKILL) while they are being charged:
    // its unsettled deliveries come back to the other after the bus's ack wait, and charges are
    // idempotent by key at the gateway, so none is lost and none is made twice.
    let placed: Vec<String> = futures::future::join_all((0..20).map(|i| {
        let (client, user) = (if i % 2 == 0 { &a } else { &b }, &user);
        async move { client.place_order(user, product_id, 1).await }
    }))
    .await;
    payments_a.kill();
    let _replacement = match deployment.bus.replace_the_killed {
        true => Some(deployment.serve("payments", &["--payment-gateway-url", &gateway.url]).await),
        false => None,
    };
    for id in &placed {
        let view = a.wait_for_outcome(&user.token, id).await;
        assert_eq!(view["status"], "COMPLETED", "{view}");
    }
    let listed = a.get_json(&user.token, "/v1/orders?limit=100").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 21, "{listed}");
    if deployment.bus.shares_commands {
        assert!(
            handled(&orders_a).await > 0.0 && handled(&orders_b).await > 0.0,
            "the bus shares orders' work between its two processes"
        );
    }

    // One orders process dies; the other carries on with what comes next, and the gateway
    // passes over the dead one (two orders: one of them is its turn).
    orders_a.kill();
    let ready = reqwest::get(format!("{}/readyz", front.url)).await.unwrap();
    assert_eq!(ready.status(), 200, "orders is still served: {}", ready.text().await.unwrap());
    for _ in 0..2 {
        let after = api.place_order(&user, product_id, 1).await;
        assert_eq!(api.wait_for_outcome(&user.token, &after).await["status"], "COMPLETED");
    }
    let unknown = api.http.get(format!("{}/v1/nothing-here", api.url)).send().await.unwrap();
    common::assert_problem(unknown, 404).await;

    // Money and stock agree: one charge per order, the stock moved by what was sold.
    let ledger: Value = reqwest::get(format!("{}/v1/ledger", gateway.url)).await.unwrap().json().await.unwrap();
    assert_eq!((ledger["charges"].as_i64(), ledger["refunds"].as_i64()), (Some(23), Some(0)), "{ledger}");
    let sold = before["stock"]["sold"].as_i64().unwrap() + 24;
    let after = wait_for_sold(&stock, product_id, sold).await;
    assert_eq!(after["stock"]["sold"].as_i64(), Some(sold), "{after}");
    assert_eq!(after["stock"]["reserved"].as_i64(), Some(0), "{after}");
    let notified = notifications.client().wait_for_notifications(&user.token, 23).await;
    assert_eq!(notified.len(), 23, "one notification per order");

    // The operator rebuilds orders' read model from its event store in its PostgreSQL database
    // (its processes stopped), and an orders process started afterwards lists every order.
    orders_b.kill();
    let database = deployment.database_url("orders");
    let replay = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["replay", "orders.order_views", "--database-url", &database])
        .output()
        .expect("weir replay runs");
    assert!(replay.status.success(), "weir replay failed: {}", String::from_utf8_lossy(&replay.stderr));
    assert!(String::from_utf8_lossy(&replay.stdout).starts_with("Replayed "), "{replay:?}");
    let orders = deployment.serve("orders", &[]).await;
    let listed = orders.client().get_json(&user.token, "/v1/orders?limit=100").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 23, "{listed}");
}

/// Places the first order, once orders has learnt the catalog from inventory's events (a
/// process that just started may not have read them yet).
async fn first_order(orders: &Client, user: &common::User, product_id: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    let body = serde_json::json!({ "items": [{ "product_id": product_id, "quantity": 2 }] });
    loop {
        let response = orders.place_order_raw(&user.token, body.clone()).await;
        if response.status() == 202 {
            return response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
        }
        let problem = response.text().await.unwrap();
        assert!(Instant::now() < deadline, "orders never accepted the product: {problem}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the product until `sold` units are sold (selling follows completion).
async fn wait_for_sold(inventory: &Client, product_id: &str, sold: i64) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let product = inventory.product(product_id).await;
        if product["stock"]["sold"].as_i64() == Some(sold) || Instant::now() > deadline {
            return product;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_platform_runs_as_separate_processes_on_postgresql_and_nats() {
    document_platform(Deployment::new(Bus::nats())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_platform_runs_as_separate_processes_on_kafka() {
    document_platform(Deployment::new(Bus::kafka())).await;
}

async fn document_platform(mut deployment: Deployment) {
    use weir_samples::{DocClass, generate, render};
    let grpc = format!("127.0.0.1:{}", free_port());
    let users = deployment.serve("users", &[]).await;
    let documents = deployment.serve("documents", &[]).await;
    let _processing = deployment.serve("processing", &["--ocr-workers", "1"]).await;
    let _classification = deployment.serve("classification", &["--grpc-listen", &grpc]).await;
    let notifications = deployment.serve("notifications", &[]).await;
    let front = deployment
        .serve("gateway", &["--upstream", &format!("{},{},{}", users.url, documents.url, notifications.url)])
        .await;

    let user = users.client().register("ada@example.com").await;
    // Uploads stream through the gateway (multipart, as curl -F sends them).
    let client = front.client();
    let invoice = client
        .upload(&user, "march-invoice.pdf", render::text_pdf(&[&generate(DocClass::Invoice, 11)], None, None))
        .await;
    let receipt = client.upload(&user, "receipt.png", render::png(&generate(DocClass::Receipt, 14))).await;
    for (id, label) in [(&invoice, "invoice"), (&receipt, "receipt")] {
        let view = client.wait_for_document(&user.token, id).await;
        assert_eq!((view["status"].as_str(), view["label"].as_str()), (Some("CLASSIFIED"), Some(label)), "{view}");
    }
    // A body above the gateway's replay buffer streams to the service; its refusal comes back.
    let junk = client.upload_raw(&user.token, "junk.bin", vec![7u8; 3 << 20]).await;
    common::assert_problem(junk, 415).await;
    let thumbnail = client.document(&user.token, &receipt, "/thumbnail").await;
    assert_eq!(thumbnail.status(), 200, "processing wrote the thumbnail to the blobs documents reads");
    let notified = client.wait_for_notifications(&user.token, 2).await;
    assert_eq!(notified.len(), 2, "{notified:?}");
    let grpc_health = tokio::net::TcpStream::connect(&grpc).await;
    assert!(grpc_health.is_ok(), "classification serves gRPC on {grpc}");
}

/// A bus URL that cannot work fails `weir serve` at once, saying what to do, before any
/// database is touched, and never shows a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bus_url_is_a_clear_error_at_start() {
    let cases = [
        (vec!["--bus", "foo://127.0.0.1:1"], "unknown scheme \"foo\"; use nats://, kafka://, amqp:// or redis://"),
        (vec!["--bus", "kafka://127.0.0.1:1"], "is a Kafka broker running there"),
        (vec!["--bus", "kafka://127.0.0.1:1?batch=1"], "unknown setting \"batch\""),
        (
            vec!["--bus", "amqp://guest:hunter2@127.0.0.1:1/%2f"],
            "amqp://guest:***@127.0.0.1:1/%2f: is RabbitMQ running",
        ),
        (vec!["--bus", "redis://:hunter2@127.0.0.1:1"], "redis://:***@127.0.0.1:1: is redis-server"),
        (vec!["--bus", "nats://127.0.0.1:1"], "is nats-server running with JetStream"),
        (vec!["--bus-route", "orders commands=nats://127.0.0.1:4222"], "bad pattern"),
        (vec!["--bus-route", "*.commands"], "write it as PATTERN=URL"),
    ];
    for (args, expected) in cases {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "users", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env("WEIR_DATABASE_URL", "postgres://postgres@127.0.0.1:1/never_touched")
            .output()
            .expect("the weir binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?} showed the password:\n{stderr}");
        assert!(!stderr.contains("database"), "{args:?} got as far as the database:\n{stderr}");
        assert!(started.elapsed() < Duration::from_secs(20), "{args:?} took {:?} to fail", started.elapsed());
    }
}
