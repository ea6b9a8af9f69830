//! Black-box harness for the `weir` binary: start `weir up` (or, in `serve.rs`, `weir serve`)
//! as a real process on free loopback ports, talk to it only over HTTP, kill it, restart it on
//! the same data directory.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `weir` process with an HTTP listener at `url` and its stderr in `log`; killed when
/// dropped.
pub struct Process {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Process {
    /// Waits until `path` answers with a success; fails with the log's tail when the process
    /// exits first or does not answer within [`PATIENCE`].
    pub async fn wait_for(&mut self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before it was ready; log:\n{}", self.url, self.log_tail());
            }
            if let Ok(r) = reqwest::get(format!("{}{path}", self.url)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not become ready; log:\n{}", self.url, self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL: no chance to flush or drain anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn client(&self) -> Client {
        Client { http: reqwest::Client::new(), url: self.url.clone() }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `weir up` (its process's fields and methods are reached through it).
pub struct Weir {
    pub process: Process,
    pub gateway: String,
    /// The classification service's gRPC endpoint.
    pub grpc: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log_filter: String,
}

impl std::ops::Deref for Weir {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Weir {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

struct Ports {
    http: u16,
    gateway: u16,
    grpc: u16,
}

/// A temporary directory and the (not yet created) data directory inside it.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

pub use weir_testkit::free_port;

impl Weir {
    /// Starts `weir up` on `data_dir` with `extra` flags and waits until it is ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_logged(data_dir, extra, "info").await
    }

    /// Like [`start`](Self::start) with a log filter (`WEIR_LOG`).
    pub async fn start_logged(data_dir: &Path, extra: &[&str], log_filter: &str) -> Self {
        let ports = Ports { http: free_port(), gateway: free_port(), grpc: free_port() };
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, ports, args, log_filter.to_owned()).await
    }

    async fn spawn(data_dir: &Path, ports: Ports, args: Vec<String>, log_filter: String) -> Self {
        let Ports { http: port, gateway: gateway_port, grpc: grpc_port } = ports;
        let log = data_dir.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--payment-gateway-listen", &format!("127.0.0.1:{gateway_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--log-format", "json"])
            .args(&args)
            .env("WEIR_LOG", &log_filter)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("the weir binary starts");
        let mut weir = Self {
            process: Process { child, url: format!("http://127.0.0.1:{port}"), log },
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            data_dir: data_dir.to_path_buf(),
            args,
            log_filter,
        };
        weir.wait_for("/readyz").await;
        weir
    }

    /// Starts the same configuration again on the same data dir and ports.
    pub async fn restart(&self) -> Self {
        let port = |url: &str| url.rsplit(':').next().unwrap().parse().unwrap();
        let ports = Ports { http: port(&self.url), gateway: port(&self.gateway), grpc: port(&self.grpc) };
        Self::spawn(&self.data_dir, ports, self.args.clone(), self.log_filter.clone()).await
    }

    /// SIGINT (Ctrl-C) and waits for a clean exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "weir up did not stop after Ctrl-C; log:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The simulated gateway's ledger.
    pub async fn ledger(&self) -> Value {
        reqwest::get(format!("{}/v1/ledger", self.gateway)).await.unwrap().json().await.unwrap()
    }
}

/// The public API, as a user's curl would call it.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
}

pub struct User {
    pub id: String,
    pub email: String,
    pub token: String,
}

impl Client {
    /// `GET {path}` with `token`, its body as JSON.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
    }

    pub async fn register(&self, email: &str) -> User {
        let password = "correct horse battery staple";
        let response = self
            .http
            .post(format!("{}/v1/users", self.url))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "register: {}", response.text().await.unwrap());
        let id = response.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_owned();
        let token = self.login(email, password).await;
        User { id, email: email.to_owned(), token }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .http
            .post(format!("{}/v1/auth/token", self.url))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn products(&self) -> Vec<Value> {
        let body: Value =
            self.http.get(format!("{}/v1/products", self.url)).send().await.unwrap().json().await.unwrap();
        body["items"].as_array().unwrap().clone()
    }

    pub async fn product(&self, id: &str) -> Value {
        self.http.get(format!("{}/v1/products/{id}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// The product with `sku`.
    pub async fn product_by_sku(&self, sku: &str) -> Value {
        self.products().await.into_iter().find(|p| p["sku"] == sku).unwrap_or_else(|| panic!("no product {sku}"))
    }

    pub async fn place_order_raw(&self, token: &str, body: Value) -> reqwest::Response {
        self.http.post(format!("{}/v1/orders", self.url)).bearer_auth(token).json(&body).send().await.unwrap()
    }

    /// Places an order and returns its id.
    pub async fn place_order(&self, user: &User, product_id: &str, quantity: u32) -> String {
        let response = self
            .place_order_raw(&user.token, json!({ "items": [{ "product_id": product_id, "quantity": quantity }] }))
            .await;
        assert_eq!(response.status(), 202, "order: {}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "PENDING");
        body["order_id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, token: &str, id: &str) -> reqwest::Response {
        self.http.get(format!("{}/v1/orders/{id}", self.url)).bearer_auth(token).send().await.unwrap()
    }

    /// Polls until the order is COMPLETED or CANCELLED; returns its view.
    pub async fn wait_for_outcome(&self, token: &str, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let response = self.order(token, id).await;
            if response.status() == 200 {
                let view: Value = response.json().await.unwrap();
                if view["status"] == "COMPLETED" || view["status"] == "CANCELLED" {
                    return view;
                }
                assert!(Instant::now() < deadline, "order {id} still {} after {PATIENCE:?}", view["status"]);
            } else {
                assert!(Instant::now() < deadline, "order {id} not readable: {}", response.status());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn notifications(&self, token: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request =
                self.http.get(format!("{}/v1/notifications", self.url)).bearer_auth(token).query(&[("limit", "100")]);
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c)]);
            }
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            all.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
    }

    /// Polls until the user has `n` notifications.
    pub async fn wait_for_notifications(&self, token: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let all = self.notifications(token).await;
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Client {
    /// `POST /v1/documents` with one `file` part.
    pub async fn upload_raw(&self, token: &str, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        self.http
            .post(format!("{}/v1/documents", self.url))
            .bearer_auth(token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap()
    }

    /// Uploads a document and returns its id.
    pub async fn upload(&self, user: &User, filename: &str, bytes: Vec<u8>) -> String {
        let response = self.upload_raw(&user.token, filename, bytes).await;
        assert_eq!(response.status(), 202, "upload {filename}: {}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "UPLOADED", "{body}");
        body["document_id"].as_str().unwrap().to_owned()
    }

    pub async fn document(&self, token: &str, id: &str, part: &str) -> reqwest::Response {
        self.http.get(format!("{}/v1/documents/{id}{part}", self.url)).bearer_auth(token).send().await.unwrap()
    }

    /// Polls until the document is CLASSIFIED or FAILED; returns its view. OCR is slow, so the
    /// patience is longer than for orders.
    pub async fn wait_for_document(&self, token: &str, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE * 3;
        loop {
            let view: Value = self.document(token, id, "").await.json().await.unwrap();
            if view["status"] == "CLASSIFIED" || view["status"] == "FAILED" {
                return view;
            }
            assert!(Instant::now() < deadline, "document {id} still {} after {:?}", view["status"], PATIENCE * 3);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asserts the response is a problem+json with `status`; returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}
