//! Black-box tests of the documents service: uploads through HTTP (the real application stack,
//! so the route's own body limit is tested under the application's 64 KiB default), events in
//! and out through a real bus, blobs in a real `LocalFileSystem` object store.
//!
//! "Nothing written" is checked from outside: the caller's list, the blob store's listing, the
//! spool directory, and the bus — after the refusals, one good upload is the *first*
//! `DocumentUploaded` on `doc.uploaded` (the outbox relays in commit order).
//!
//! Where a test must know that an event was handled before it looks for the absence of an
//! effect, it uses a barrier: a later event about the same document on the same topic (handled
//! strictly after, since the router keeps per-key order) that does have a visible effect.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, local::LocalFileSystem, path::Path as BlobPath};
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, LOCATION},
    multipart::{Form, Part},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{
    DocumentClassified, DocumentFailed, DocumentMetadata, DocumentProcessed, DocumentUploaded, MediaType, topics,
};
use weir_core::RouterOptions;
use weir_documents::{Config, Service};
use weir_http::app::{App as HttpApp, AppOptions};
use weir_testkit::app::{PATIENCE, TestWorld};

const MIB: usize = 1024 * 1024;
const LIMIT: usize = 50 * MIB;
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

// ---------------------------------------------------------------------------------------------
// Test files with real magic bytes.

fn pdf(text: &str) -> Vec<u8> {
    format!(
        "%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n% {text}\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )
    .into_bytes()
}

fn png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([seed, (x * 16) as u8, (y * 20) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("a PNG encodes");
    out.into_inner()
}

fn jpeg(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([seed, (x * 8) as u8, (y * 10) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Jpeg).expect("a JPEG encodes");
    out.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// The service under test.

/// The service's database engine.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

struct App {
    world: TestWorld,
    url: String,
    http: reqwest::Client,
    blobs: Arc<LocalFileSystem>,
    spool_dir: PathBuf,
    stop: CancellationToken,
}

impl App {
    async fn start() -> Self {
        Self::start_with(Store::Sqlite, None).await
    }

    async fn start_with(store: Store, clamd: Option<SocketAddr>) -> Self {
        let world = TestWorld::new();
        let blob_dir = world.dir.path().join("blobs");
        std::fs::create_dir_all(&blob_dir).unwrap();
        let blobs = Arc::new(LocalFileSystem::new_with_prefix(&blob_dir).unwrap());
        let spool_dir = world.dir.path().join("spool");
        let kernel = match store {
            Store::Sqlite => world.kernel("documents").await,
            Store::Postgres => world.postgres_kernel().await,
        };
        let config = Config { clamd, router: RouterOptions::default(), ..Config::new(&spool_dir) };
        let service = Service::build(kernel, blobs.clone(), config).await.expect("the service builds");
        // The production stack, with its 64 KiB default body limit and 30 s request timeout.
        let options =
            AppOptions { rate_limit: weir_http::app::RateLimit { per_second: 0, burst: 0 }, ..Default::default() };
        let router = HttpApp::new(options).routes(service.routes()).build(world.tokens.clone(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(weir_http::app::serve(listener, router, stop.clone()));
        let run_stop = stop.clone();
        tokio::spawn(async move { service.run(run_stop).await.expect("the service runs") });
        Self { world, url, http: reqwest::Client::new(), blobs, spool_dir, stop }
    }

    fn token(&self, user: Uuid) -> String {
        self.world.tokens.issue(user).token
    }

    async fn upload_form(&self, user: Uuid, form: Form) -> (StatusCode, Value, Option<String>) {
        let response = self
            .http
            .post(format!("{}/v1/documents", self.url))
            .bearer_auth(self.token(user))
            .multipart(form)
            .send()
            .await
            .expect("the upload request is answered");
        read(response).await
    }

    async fn upload(&self, user: Uuid, filename: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let form = Form::new().part("file", Part::bytes(bytes).file_name(filename.to_owned()));
        let (status, body, _) = self.upload_form(user, form).await;
        (status, body)
    }

    /// Uploads and expects a 202; returns the document view.
    async fn accepted(&self, user: Uuid, filename: &str, bytes: Vec<u8>) -> Value {
        let (status, body) = self.upload(user, filename, bytes).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    async fn get(&self, user: Uuid, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("the request is answered");
        let (status, body, _) = read(response).await;
        (status, body)
    }

    /// The raw answer of a GET: status, content type, bytes.
    async fn get_raw(&self, user: Uuid, path: &str) -> (StatusCode, String, Bytes) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("the request is answered");
        let status = response.status();
        let content_type =
            response.headers().get(CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (status, content_type, response.bytes().await.unwrap())
    }

    /// Every document of `user`, following the cursors.
    async fn list_all(&self, user: Uuid) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/documents?limit=100&cursor={c}"),
                None => "/v1/documents?limit=100".to_owned(),
            };
            let (status, page) = self.get(user, &path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    async fn blob_keys(&self) -> Vec<String> {
        let metas: Vec<_> = self.blobs.list(None).try_collect().await.expect("the blob store lists");
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    }

    async fn blob(&self, key: &str) -> Bytes {
        self.blobs.get(&BlobPath::from(key)).await.expect("the blob exists").bytes().await.unwrap()
    }

    async fn put_blob(&self, key: &str, bytes: Vec<u8>) {
        self.blobs.put(&BlobPath::from(key), bytes.into()).await.expect("the blob is stored");
    }

    fn spool_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.spool_dir).expect("the spool directory exists").map(|e| e.unwrap().path()).collect()
    }

    /// No document of `user`, no blob, no spool file.
    async fn assert_nothing_written(&self, user: Uuid, case: &str) {
        assert_eq!(self.list_all(user).await, Vec::<Value>::new(), "{case}: a document was recorded");
        assert_eq!(self.blob_keys().await, Vec::<String>::new(), "{case}: a blob was stored");
        assert_eq!(self.spool_files(), Vec::<PathBuf>::new(), "{case}: a spool file was left");
    }

    /// Polls `GET /v1/documents/{id}` until `done` holds for it.
    async fn wait_for(&self, user: Uuid, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, document) = self.get(user, &format!("/v1/documents/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{document}");
            if done(&document) {
                return document;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; the document is {document}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn events(&self, user: Uuid, id: &str) -> Vec<Value> {
        let (status, log) = self.get(user, &format!("/v1/documents/{id}/events")).await;
        assert_eq!(status, StatusCode::OK, "{log}");
        log.as_array().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value, Option<String>) {
    let status = response.status();
    let location = response.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
    let problem = response.headers().get(CONTENT_TYPE).is_some_and(|v| v == "application/problem+json");
    let text = response.text().await.unwrap();
    if !status.is_success() {
        assert!(problem, "a {status} answer must be problem+json: {text}");
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), location)
}

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, says: &str, case: &str) {
    assert_eq!(status, expected, "{case}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{case}: the problem should say {says:?}; it says {detail:?}");
}

fn id_of(document: &Value) -> String {
    document["document_id"].as_str().expect("the view has a document_id").to_owned()
}

fn processed(document_id: Uuid, user_id: Uuid, excerpt: &str) -> DocumentProcessed {
    DocumentProcessed {
        document_id,
        user_id,
        filename: "invoice.pdf".to_owned(),
        media_type: MediaType::Pdf,
        text_key: format!("text/{user_id}/{document_id}"),
        thumbnail_key: format!("thumbnails/{user_id}/{document_id}"),
        excerpt: excerpt.to_owned(),
        text_chars: 1234,
        metadata: DocumentMetadata {
            pages: 2,
            width: 1240,
            height: 1754,
            sha256: "ab".repeat(32),
            title: Some("Invoice 42".to_owned()),
            author: Some("ACME".to_owned()),
            ocr_pages: 0,
            text_layer_pages: 2,
        },
    }
}

fn classified(document_id: Uuid, user_id: Uuid, label: &str, model: &str) -> DocumentClassified {
    DocumentClassified {
        document_id,
        user_id,
        filename: "invoice.pdf".to_owned(),
        label: label.to_owned(),
        confidence: 0.875,
        model_version: model.to_owned(),
    }
}

fn failed(document_id: Uuid, user_id: Uuid, reason: &str) -> DocumentFailed {
    DocumentFailed {
        document_id,
        user_id,
        filename: "invoice.pdf".to_owned(),
        stage: "processing".to_owned(),
        reason: reason.to_owned(),
    }
}

/// The audit log as (event, from, to) triples.
fn transitions(log: &[Value]) -> Vec<(String, String, String)> {
    log.iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["from_status"].as_str().unwrap_or("-").to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn t(event: &str, from: &str, to: &str) -> (String, String, String) {
    (event.to_owned(), from.to_owned(), to.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Accepted uploads.

#[tokio::test]
async fn pdf_png_and_jpeg_uploads_are_stored_recorded_and_announced() {
    let app = App::start().await;
    let mut uploaded = app.world.watch(topics::DOC_UPLOADED).await;
    let user = Uuid::now_v7();
    let files = [
        ("invoice.pdf", pdf("invoice"), MediaType::Pdf),
        ("scan.png", png(7), MediaType::Png),
        ("photo.JPG", jpeg(3), MediaType::Jpeg),
    ];
    let mut ids = Vec::new();
    for (name, bytes, media_type) in files {
        let (status, view, location) =
            app.upload_form(user, Form::new().part("file", Part::bytes(bytes.clone()).file_name(name))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{view}");
        let id = id_of(&view);
        assert_eq!(location.as_deref(), Some(format!("/v1/documents/{id}").as_str()));
        assert_eq!(view["status"], "UPLOADED");
        assert_eq!(view["filename"], name);
        assert_eq!(view["media_type"], media_type.mime());
        assert_eq!(view["size_bytes"], bytes.len());
        assert_eq!(view["sha256"], sha256(&bytes));

        let document_id = Uuid::parse_str(&id).unwrap();
        let (event, envelope) = uploaded.expect::<DocumentUploaded>(|e| e.document_id == document_id).await;
        assert_eq!(
            event,
            DocumentUploaded {
                document_id,
                user_id: user,
                filename: name.to_owned(),
                media_type,
                size_bytes: bytes.len() as u64,
                sha256: sha256(&bytes),
                blob_key: format!("raw/{user}/{id}"),
            }
        );
        assert_eq!(envelope.subject, id, "the document id is the ordering key");
        assert_eq!(app.blob(&event.blob_key).await, bytes, "the stored bytes are the uploaded bytes");

        let (status, fetched) = app.get(user, &format!("/v1/documents/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fetched, view, "GET shows what the upload answered");
        ids.push(id);
    }
    // The history, newest first.
    let listed: Vec<String> = app.list_all(user).await.iter().map(id_of).collect();
    ids.reverse();
    assert_eq!(listed, ids);
    assert_eq!(app.spool_files(), Vec::<PathBuf>::new(), "spool files are deleted once stored");
    let log = app.events(user, &ids[0]).await;
    assert_eq!(transitions(&log), vec![t("document_uploaded", "-", "UPLOADED")]);
}

#[tokio::test]
async fn the_history_is_paged_newest_first() {
    let app = App::start().await;
    let user = Uuid::now_v7();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id_of(&app.accepted(user, &format!("page-{i}.png"), png(i)).await));
    }
    ids.reverse();
    let (status, first) = app.get(user, "/v1/documents?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let page_ids: Vec<String> = first["items"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(page_ids, ids[..2]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = app.get(user, &format!("/v1/documents?limit=2&cursor={cursor}")).await;
    let page_ids: Vec<String> = second["items"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(page_ids, ids[2..4]);
    let cursor = second["next_cursor"].as_str().expect("a last page");
    let (_, third) = app.get(user, &format!("/v1/documents?limit=2&cursor={cursor}")).await;
    assert_eq!(third["items"].as_array().unwrap().len(), 1);
    assert!(third["next_cursor"].is_null());

    let (status, body) = app.get(user, "/v1/documents?limit=0").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "limit", "limit=0");
    let (status, body) = app.get(user, "/v1/documents?cursor=page2").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "cursor", "a bad cursor");
}

#[tokio::test]
async fn many_concurrent_uploads_all_land_with_distinct_ids() {
    let app = App::start().await;
    let mut uploaded = app.world.watch(topics::DOC_UPLOADED).await;
    let users = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    const N: usize = 24;
    let uploads = (0..N).map(|i| {
        let app = &app;
        let user = users[i % users.len()];
        async move {
            let (name, bytes) =
                if i % 2 == 0 { (format!("{i}.png"), png(i as u8)) } else { (format!("{i}.pdf"), pdf(&i.to_string())) };
            let view = app.accepted(user, &name, bytes.clone()).await;
            (user, id_of(&view), sha256(&bytes))
        }
    });
    let results = futures::future::join_all(uploads).await;
    let mut ids: Vec<&str> = results.iter().map(|(_, id, _)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every upload got its own id");
    for user in users {
        let expected = results.iter().filter(|(u, _, _)| *u == user).count();
        assert_eq!(app.list_all(user).await.len(), expected);
    }
    assert_eq!(app.blob_keys().await.len(), N);
    let mut announced = Vec::new();
    for _ in 0..N {
        let (event, _) = uploaded.expect::<DocumentUploaded>(|_| true).await;
        announced.push((event.user_id, event.document_id.to_string(), event.sha256));
    }
    let mut expected = results.clone();
    expected.sort();
    announced.sort();
    assert_eq!(announced, expected, "each upload was announced once, with its owner and hash");
    assert_eq!(app.spool_files(), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------------------------
// Refused uploads.

#[tokio::test]
async fn bad_uploads_get_a_clear_problem_and_leave_nothing_behind() {
    let app = App::start().await;
    let mut uploaded = app.world.watch(topics::DOC_UPLOADED).await;
    let user = Uuid::now_v7();
    let mut eicar_in_a_pdf = pdf("looks harmless");
    eicar_in_a_pdf.extend_from_slice(EICAR);
    let long_name = format!("{}.pdf", "a".repeat(252));
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("0 bytes", "empty.pdf", Vec::new(), StatusCode::UNPROCESSABLE_ENTITY, "the file is empty (0 bytes)"),
        (
            "a .pdf name on PNG bytes",
            "report.pdf",
            png(1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "named \"report.pdf\" but the content is a PNG image",
        ),
        (
            "a .jpg name on PDF bytes",
            "photo.jpg",
            pdf("x"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "the content is a PDF document",
        ),
        (
            "an unknown type",
            "notes.txt",
            b"just some text".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not a PDF, PNG or JPEG",
        ),
        (
            "a GIF named .png",
            "cat.png",
            gif,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/pdf, image/png, image/jpeg",
        ),
        (
            "the EICAR string",
            "eicar.com",
            EICAR.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "virus found: Eicar-Test-Signature",
        ),
        (
            "EICAR inside a PDF",
            "clean.pdf",
            eicar_in_a_pdf,
            StatusCode::UNPROCESSABLE_ENTITY,
            "virus found: Eicar-Test-Signature",
        ),
        ("path traversal", "../../etc/passwd.pdf", pdf("x"), StatusCode::UNPROCESSABLE_ENTITY, "path separator"),
        ("a Windows path", "C:\\Users\\me\\report.pdf", pdf("x"), StatusCode::UNPROCESSABLE_ENTITY, "path separator"),
        ("a parent directory name", "..", pdf("x"), StatusCode::UNPROCESSABLE_ENTITY, "`..`"),
        ("a control character", "report\t.pdf", pdf("x"), StatusCode::UNPROCESSABLE_ENTITY, "control characters"),
        ("a 256-byte name", &long_name, pdf("x"), StatusCode::UNPROCESSABLE_ENTITY, "at most 255"),
    ];
    for (case, filename, bytes, expected, says) in cases {
        let (status, body) = app.upload(user, filename, bytes).await;
        assert_problem(status, &body, expected, says, case);
        app.assert_nothing_written(user, case).await;
    }

    // Form-level mistakes.
    let forms: Vec<(&str, Form, StatusCode, &str)> = vec![
        (
            "no filename",
            Form::new().part("file", Part::bytes(pdf("x"))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no filename",
        ),
        (
            "no file field",
            Form::new().part("document", Part::bytes(pdf("x")).file_name("a.pdf")),
            StatusCode::BAD_REQUEST,
            "unexpected form field \"document\"",
        ),
        ("an empty form", Form::new(), StatusCode::BAD_REQUEST, "one field named `file`"),
        (
            "two files",
            Form::new()
                .part("file", Part::bytes(pdf("one")).file_name("one.pdf"))
                .part("file", Part::bytes(pdf("two")).file_name("two.pdf")),
            StatusCode::BAD_REQUEST,
            "more than one `file` field",
        ),
    ];
    for (case, form, expected, says) in forms {
        let (status, body, _) = app.upload_form(user, form).await;
        assert_problem(status, &body, expected, says, case);
        app.assert_nothing_written(user, case).await;
    }
    let response = app
        .http
        .post(format!("{}/v1/documents", app.url))
        .bearer_auth(app.token(user))
        .header(CONTENT_TYPE, "application/pdf")
        .body(pdf("raw"))
        .send()
        .await
        .unwrap();
    let (status, body, _) = read(response).await;
    assert_problem(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "multipart/form-data", "not multipart");
    let response = app
        .http
        .post(format!("{}/v1/documents", app.url))
        .multipart(Form::new().part("file", Part::bytes(pdf("x")).file_name("a.pdf")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.assert_nothing_written(user, "after all the refusals").await;

    // Nothing reached the outbox either: the first announced upload is this good one.
    let good = app.accepted(user, "good.pdf", pdf("good")).await;
    let (first, _) = uploaded.expect::<DocumentUploaded>(|_| true).await;
    assert_eq!(first.document_id.to_string(), id_of(&good), "a refused upload was announced");
    assert_eq!(app.list_all(user).await.len(), 1);
    assert_eq!(app.blob_keys().await.len(), 1);
}

/// A streamed request body: `%PDF-1.4` and then spaces, `len` bytes in all, made chunk by
/// chunk so the test never holds the whole file.
fn big_pdf(len: usize) -> (reqwest::Body, String) {
    fn chunk(i: usize, len: usize) -> Vec<u8> {
        let size = MIB.min(len - i * MIB);
        let mut bytes = vec![b' '; size];
        if i == 0 {
            bytes[..9].copy_from_slice(b"%PDF-1.4\n");
        }
        bytes
    }
    let chunks = len.div_ceil(MIB);
    let mut hasher = Sha256::new();
    for i in 0..chunks {
        hasher.update(chunk(i, len));
    }
    let stream = futures::stream::iter(0..chunks).map(move |i| Ok::<_, std::io::Error>(Bytes::from(chunk(i, len))));
    (reqwest::Body::wrap_stream(stream), hex::encode(hasher.finalize()))
}

#[tokio::test]
async fn the_limit_is_50_mib_and_one_byte_more_is_refused() {
    let app = App::start().await;
    let user = Uuid::now_v7();

    let (body, too_big_sha) = big_pdf(LIMIT + 1);
    let form = Form::new().part("file", Part::stream_with_length(body, (LIMIT + 1) as u64).file_name("big.pdf"));
    let (status, problem, _) = app.upload_form(user, form).await;
    assert_problem(
        status,
        &problem,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the limit of 50 MiB (52428800 bytes)",
        "50 MiB + 1",
    );
    app.assert_nothing_written(user, "50 MiB + 1").await;

    // Refused before its content is read (a bad name): the rest of a large body is still read
    // and discarded, so the client gets the problem rather than a reset connection.
    let (body, _) = big_pdf(20 * MIB);
    let form = Form::new().part("file", Part::stream_with_length(body, (20 * MIB) as u64).file_name("../../big.pdf"));
    let (status, problem, _) = app.upload_form(user, form).await;
    assert_problem(
        status,
        &problem,
        StatusCode::UNPROCESSABLE_ENTITY,
        "path separator",
        "a large body with a bad name",
    );
    app.assert_nothing_written(user, "a large body with a bad name").await;

    let (body, sha) = big_pdf(LIMIT);
    assert_ne!(sha, too_big_sha);
    let form = Form::new().part("file", Part::stream_with_length(body, LIMIT as u64).file_name("big.pdf"));
    let (status, view, _) = app.upload_form(user, form).await;
    assert_eq!(status, StatusCode::ACCEPTED, "exactly 50 MiB is accepted: {view}");
    assert_eq!(view["size_bytes"], LIMIT);
    assert_eq!(view["sha256"], sha);
    let key = format!("raw/{user}/{}", id_of(&view));
    let meta = app.blobs.head(&BlobPath::from(key.as_str())).await.expect("the blob is stored");
    assert_eq!(meta.size, LIMIT as u64);
    assert_eq!(app.spool_files(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn when_recording_fails_the_blob_is_deleted_again() {
    let app = App::start().await;
    let user = Uuid::now_v7();
    // Break the audit table behind the service's back: the upload's transaction then fails
    // after its blob was stored.
    let db = weir_store_sqlite::SqliteDatabase::open(app.world.dir.path().join("documents.db")).unwrap();
    let mut tx = weir_core::Database::begin(&db).await.unwrap();
    tx.execute("ALTER TABLE document_events RENAME TO broken_events", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let (status, body) = app.upload(user, "invoice.pdf", pdf("x")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    app.assert_nothing_written(user, "a failed transaction").await;
}

// ---------------------------------------------------------------------------------------------
// Ownership.

#[tokio::test]
async fn another_users_document_is_not_found_on_every_endpoint() {
    let app = App::start().await;
    let (owner, stranger) = (Uuid::now_v7(), Uuid::now_v7());
    let view = app.accepted(owner, "invoice.pdf", pdf("mine")).await;
    let id = id_of(&view);
    let document_id = Uuid::parse_str(&id).unwrap();
    // Processed, so that the thumbnail and text exist for the owner.
    app.put_blob(&format!("thumbnails/{owner}/{id}"), jpeg(1)).await;
    app.put_blob(&format!("text/{owner}/{id}"), b"mine".to_vec()).await;
    app.world.publish("processing", &processed(document_id, owner, "mine")).await;
    app.wait_for(owner, &id, "PROCESSED", |d| d["status"] == "PROCESSED").await;

    for suffix in ["", "/thumbnail", "/text", "/events"] {
        let path = format!("/v1/documents/{id}{suffix}");
        let (status, _, _) = app.get_raw(owner, &path).await;
        assert_eq!(status, StatusCode::OK, "the owner reads {path}");
        let (status, body) = app.get(stranger, &path).await;
        assert_problem(status, &body, StatusCode::NOT_FOUND, "you have no document", &path);
    }
    assert_eq!(app.list_all(stranger).await, Vec::<Value>::new());
    let (status, body) = app.get(owner, "/v1/documents/42").await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "not a document id", "a bad id");
}

// ---------------------------------------------------------------------------------------------
// The read model.

#[tokio::test]
async fn processing_and_classification_fill_in_the_document() {
    let app = App::start().await;
    let user = Uuid::now_v7();
    let view = app.accepted(user, "invoice.pdf", pdf("Invoice 42")).await;
    let id = id_of(&view);
    let document_id = Uuid::parse_str(&id).unwrap();

    for what in ["thumbnail", "text"] {
        let (status, body) = app.get(user, &format!("/v1/documents/{id}/{what}")).await;
        assert_problem(status, &body, StatusCode::NOT_FOUND, "not processed yet", what);
    }

    let thumbnail = jpeg(9);
    let text = "INVOICE 42\nACME GmbH\nTotal due: 1.234,00 EUR\n".repeat(30);
    app.put_blob(&format!("thumbnails/{user}/{id}"), thumbnail.clone()).await;
    app.put_blob(&format!("text/{user}/{id}"), text.clone().into_bytes()).await;
    app.world.publish("processing", &processed(document_id, user, "INVOICE 42 ACME GmbH")).await;
    let document = app.wait_for(user, &id, "PROCESSED", |d| d["status"] == "PROCESSED").await;
    assert_eq!(document["excerpt"], "INVOICE 42 ACME GmbH");
    assert_eq!(document["text_chars"], 1234);
    assert_eq!(document["metadata"]["pages"], 2);
    assert_eq!(document["metadata"]["title"], "Invoice 42");
    assert_eq!(document["metadata"]["author"], "ACME");
    assert_eq!(document["metadata"]["text_layer_pages"], 2);
    assert!(document["label"].is_null());

    let (status, content_type, bytes) = app.get_raw(user, &format!("/v1/documents/{id}/thumbnail")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "image/jpeg"));
    assert_eq!(bytes, thumbnail);
    let (status, content_type, bytes) = app.get_raw(user, &format!("/v1/documents/{id}/text")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "text/plain; charset=utf-8"));
    assert_eq!(bytes, text.as_bytes());

    app.world.publish("classification", &classified(document_id, user, "invoice", "nb-2024-06")).await;
    let document = app.wait_for(user, &id, "CLASSIFIED", |d| d["status"] == "CLASSIFIED").await;
    assert_eq!(document["label"], "invoice");
    assert_eq!(document["confidence"], 0.875);
    assert_eq!(document["model_version"], "nb-2024-06");
    assert_eq!(document["excerpt"], "INVOICE 42 ACME GmbH", "classification keeps what processing said");
    let listed = app.list_all(user).await;
    assert_eq!((listed[0]["status"].as_str(), listed[0]["label"].as_str()), (Some("CLASSIFIED"), Some("invoice")));

    let log = app.events(user, &id).await;
    assert_eq!(
        transitions(&log),
        vec![
            t("document_uploaded", "-", "UPLOADED"),
            t("document_processed", "UPLOADED", "PROCESSED"),
            t("document_classified", "PROCESSED", "CLASSIFIED"),
        ]
    );
    assert!(log[2]["detail"].as_str().unwrap().contains("invoice"), "{}", log[2]);
}

#[tokio::test]
async fn a_failure_is_shown_with_its_reason() {
    let app = App::start().await;
    let user = Uuid::now_v7();
    let id = id_of(&app.accepted(user, "broken.pdf", pdf("broken")).await);
    let document_id = Uuid::parse_str(&id).unwrap();
    app.world.publish("processing", &failed(document_id, user, "the PDF parser ran out of time")).await;
    let document = app.wait_for(user, &id, "FAILED", |d| d["status"] == "FAILED").await;
    assert_eq!(document["failure_reason"], "the PDF parser ran out of time");
    assert_eq!(document["failure_stage"], "processing");
    let (status, body) = app.get(user, &format!("/v1/documents/{id}/thumbnail")).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "it failed (the PDF parser ran out of time)", "thumbnail");
    assert_eq!(
        transitions(&app.events(user, &id).await),
        vec![t("document_uploaded", "-", "UPLOADED"), t("document_failed", "UPLOADED", "FAILED")]
    );
}

#[tokio::test]
async fn duplicate_and_late_events_never_take_the_status_back() {
    let app = App::start().await;
    let user = Uuid::now_v7();

    // Document A: classified before its processing arrives (the topics are independent).
    let a = id_of(&app.accepted(user, "a.pdf", pdf("a")).await);
    let a_id = Uuid::parse_str(&a).unwrap();
    let classification = classified(a_id, user, "invoice", "m1");
    let event = app.world.publish("classification", &classification).await;
    app.world.publish_event(topics::DOC_CLASSIFIED, event).await; // redelivered: same event id
    app.world.publish("classification", &classification).await; // restated: a new id, same content
    // Barrier: a reclassification by a newer model, after the duplicates on the same key.
    app.world.publish("classification", &classified(a_id, user, "receipt", "m2")).await;
    app.wait_for(user, &a, "the reclassification", |d| d["model_version"] == "m2").await;
    // A late failure (ignored: the document is classified), then the late processing result
    // (its data is kept, its status is not) — the same topic and key, so in this order.
    app.world.publish("processing", &failed(a_id, user, "too late")).await;
    app.world.publish("processing", &processed(a_id, user, "late text")).await;
    let document = app.wait_for(user, &a, "the late excerpt", |d| d["excerpt"] == "late text").await;
    assert_eq!(document["status"], "CLASSIFIED", "a late event took the status back: {document}");
    assert_eq!(document["label"], "receipt");
    assert!(document["failure_reason"].is_null(), "{document}");
    assert_eq!(
        transitions(&app.events(user, &a).await),
        vec![
            t("document_uploaded", "-", "UPLOADED"),
            t("document_classified", "UPLOADED", "CLASSIFIED"),
            t("document_classified", "CLASSIFIED", "CLASSIFIED"),
            t("document_processed", "CLASSIFIED", "CLASSIFIED"),
        ]
    );

    // Document B: processing results delivered three times, then a classification-stage failure.
    let b = id_of(&app.accepted(user, "b.pdf", pdf("b")).await);
    let b_id = Uuid::parse_str(&b).unwrap();
    let result = processed(b_id, user, "first");
    let event = app.world.publish("processing", &result).await;
    app.world.publish_event(topics::DOC_PROCESSED, event).await;
    app.world.publish("processing", &processed(b_id, user, "restated")).await;
    app.world
        .publish("processing", &DocumentFailed { stage: "classification".to_owned(), ..failed(b_id, user, "no model") })
        .await;
    let document = app.wait_for(user, &b, "FAILED", |d| d["status"] == "FAILED").await;
    assert_eq!(document["excerpt"], "first", "the first processing result is kept");
    assert_eq!(document["failure_stage"], "classification");
    assert_eq!(
        transitions(&app.events(user, &b).await),
        vec![
            t("document_uploaded", "-", "UPLOADED"),
            t("document_processed", "UPLOADED", "PROCESSED"),
            t("document_failed", "PROCESSED", "FAILED"),
        ]
    );
    // A classification that comes after all still wins.
    app.world.publish("classification", &classified(b_id, user, "letter", "m2")).await;
    app.wait_for(user, &b, "CLASSIFIED", |d| d["status"] == "CLASSIFIED").await;
}

#[tokio::test]
async fn events_about_unknown_documents_change_nothing() {
    let app = App::start().await;
    let user = Uuid::now_v7();
    let stranger_doc = Uuid::now_v7();
    app.world.publish("processing", &processed(stranger_doc, user, "who?")).await;
    app.world.publish("classification", &classified(stranger_doc, user, "invoice", "m1")).await;
    // Then a real document goes the whole way; the unknown one never appears.
    let id = id_of(&app.accepted(user, "real.pdf", pdf("real")).await);
    let document_id = Uuid::parse_str(&id).unwrap();
    app.world.publish("classification", &classified(document_id, user, "invoice", "m1")).await;
    app.wait_for(user, &id, "CLASSIFIED", |d| d["status"] == "CLASSIFIED").await;
    let listed: Vec<String> = app.list_all(user).await.iter().map(id_of).collect();
    assert_eq!(listed, vec![id]);
}

#[tokio::test]
async fn the_whole_flow_runs_on_postgresql() {
    let app = App::start_with(Store::Postgres, None).await;
    let mut uploaded = app.world.watch(topics::DOC_UPLOADED).await;
    let user = Uuid::now_v7();
    // Concurrent uploads.
    let uploads = (0..6u8).map(|i| {
        let app = &app;
        async move { app.accepted(user, &format!("{i}.png"), png(i)).await }
    });
    let ids: Vec<String> = futures::future::join_all(uploads).await.iter().map(id_of).collect();
    assert_eq!(app.list_all(user).await.len(), ids.len());
    for _ in &ids {
        uploaded.expect::<DocumentUploaded>(|_| true).await;
    }
    // Both topics at once for every document, classification first: the two handlers of one
    // document take turns on its row, and the status ends CLASSIFIED with the excerpt kept.
    for id in &ids {
        let document_id = Uuid::parse_str(id).unwrap();
        app.world.publish("classification", &classified(document_id, user, "receipt", "m1")).await;
        app.world.publish("processing", &processed(document_id, user, "RECEIPT")).await;
    }
    for id in &ids {
        let document = app
            .wait_for(user, id, "classified and processed", |d| {
                d["status"] == "CLASSIFIED" && d["excerpt"] == "RECEIPT"
            })
            .await;
        assert_eq!(document["confidence"], 0.875);
        assert_eq!(document["metadata"]["pages"], 2);
        assert_eq!(app.events(user, id).await.len(), 3, "uploaded, classified, processed");
    }
    let (status, body) = app.upload(user, "report.pdf", png(1)).await;
    assert_problem(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "the content is a PNG image", "a wrong name");
    assert_eq!(app.list_all(user).await.len(), ids.len());
}

// ---------------------------------------------------------------------------------------------
// clamd: a real ClamAV daemon (Debian's clamav-daemon), started by the test on a loopback port
// with a signature database of its own: the MD5 signature (`sigtool --md5`) of one file.

/// A running `clamd`; killed when dropped.
struct Clamd {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Clamd {
    /// Starts clamd with one signature: the whole of `infected`, named `signature`.
    async fn start(infected: &[u8], signature: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let digest = format!("{:x}", md5_of(infected));
        std::fs::write(db.join("weir-test.hdb"), format!("{digest}:{}:{signature}\n", infected.len())).unwrap();
        let port = weir_testkit::free_port();
        let config = dir.path().join("clamd.conf");
        std::fs::write(
            &config,
            format!(
                "Foreground yes\nDatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nStreamMaxLength 60M\n\
                 LogFile {}\n",
                db.display(),
                dir.path().join("clamd.log").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("clamd")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs ClamAV's clamd ({e}): install it with `apt-get install clamav-daemon` \
                     (scripts/deps does), then rerun"
                )
            });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let clamd = Self { child, addr, _dir: dir };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "clamd did not listen on {addr} within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        clamd
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MD5, as ClamAV's hash signatures use it (`md5sum` from coreutils computes it here).
fn md5_of(bytes: &[u8]) -> u128 {
    use std::io::Write;
    let mut md5 = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils)");
    md5.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = md5.wait_with_output().unwrap();
    u128::from_str_radix(String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap(), 16).unwrap()
}

#[tokio::test]
async fn clamd_scans_every_upload_and_its_verdict_is_final() {
    let mut infected = pdf("innocent-looking");
    infected.extend_from_slice(b"WEIR-TEST-MALWARE");
    let clamd = Clamd::start(&infected, "Weir-Test-Malware").await;
    let app = App::start_with(Store::Sqlite, Some(clamd.addr)).await;
    let user = Uuid::now_v7();
    // The signature is the whole file's hash: clamd finds it only if it got every byte.
    let (status, body) = app.upload(user, "innocent.pdf", infected.clone()).await;
    assert_problem(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "virus found: Weir-Test-Malware", "clamd FOUND");
    app.assert_nothing_written(user, "clamd FOUND").await;

    app.accepted(user, "clean.png", png(5)).await;
    // One byte different is another file.
    let mut changed = infected.clone();
    changed.push(b'\n');
    app.accepted(user, "changed.pdf", changed).await;
    // The built-in EICAR scan still runs first.
    let (status, body) = app.upload(user, "eicar.com", EICAR.to_vec()).await;
    assert_problem(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "Eicar-Test-Signature", "EICAR with clamd");
}

#[tokio::test]
async fn an_unreachable_clamd_refuses_uploads_instead_of_letting_them_in() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clamd = listener.local_addr().unwrap();
    drop(listener);
    let app = App::start_with(Store::Sqlite, Some(clamd)).await;
    let user = Uuid::now_v7();
    let (status, body) = app.upload(user, "invoice.pdf", pdf("x")).await;
    assert_problem(status, &body, StatusCode::SERVICE_UNAVAILABLE, "virus scanner is unavailable", "clamd down");
    app.assert_nothing_written(user, "clamd down").await;
}

// ---------------------------------------------------------------------------------------------
// The service itself.

#[tokio::test]
async fn spool_files_left_by_a_crash_are_cleared_at_start() {
    let world = TestWorld::new();
    let spool = world.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join(format!("{}.upload", Uuid::now_v7())), b"half an upload").unwrap();
    std::fs::write(spool.join("keep.txt"), b"not ours").unwrap();
    let blobs = Arc::new(LocalFileSystem::new_with_prefix(world.dir.path()).unwrap());
    Service::build(world.kernel("documents").await, blobs, Config::new(&spool)).await.unwrap();
    let left: Vec<String> =
        std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["keep.txt".to_owned()]);
}

#[tokio::test]
async fn the_routes_are_documented() {
    let world = TestWorld::new();
    let blobs = Arc::new(LocalFileSystem::new_with_prefix(world.dir.path()).unwrap());
    let service = Service::build(world.kernel("documents").await, blobs, Config::new(world.dir.path().join("spool")))
        .await
        .unwrap();
    let openapi = service.routes().into_openapi();
    let paths: Vec<&String> = openapi.paths.paths.keys().collect();
    for path in [
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/documents/{id}/thumbnail",
        "/v1/documents/{id}/text",
        "/v1/documents/{id}/events",
    ] {
        assert!(paths.iter().any(|p| p.as_str() == path), "{path} is missing from {paths:?}");
    }
    let upload = openapi.paths.paths["/v1/documents"].post.as_ref().expect("POST /v1/documents is documented");
    let json = serde_json::to_value(upload).unwrap();
    assert!(json["requestBody"]["content"]["multipart/form-data"].is_object(), "{json}");
    for status in ["202", "400", "413", "415", "422", "503"] {
        assert!(json["responses"][status].is_object(), "{status} is not documented: {json}");
    }
}
