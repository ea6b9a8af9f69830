//! Black-box tests of the processing service: `doc.uploaded` in through a real bus, raw bytes
//! from real blob storage (a directory), the real worker process with real Tesseract and
//! poppler; `doc.processed` and the text and thumbnail blobs out.
//!
//! Workers that misbehave on purpose are shell wrappers around the real worker: they crash or
//! hang on PDFs and hand anything else to the real worker, so one test shows both that the bad
//! document fails alone and that the next one is processed.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, local::LocalFileSystem, path::Path as BlobPath,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_contracts::{DocumentFailed, DocumentProcessed, DocumentUploaded, EXCERPT_CHARS, MediaType, topics};
use weir_core::RouterOptions;
use weir_processing::{Config, Service, WorkerCommand};
use weir_samples::{DocClass, render};
use weir_testkit::app::{TestWorld, Watch};

/// OCR is slow and these tests share two cores: wait this long for an outcome.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(180);
/// The most a clean render may differ from its text, in characters per character.
const MAX_CER: f64 = 0.03;

const WORKER: &str = env!("CARGO_BIN_EXE_weir-process-worker");

// ---------------------------------------------------------------------------------------------
// The service under test.

struct App {
    world: TestWorld,
    blobs: Arc<dyn ObjectStore>,
    _blob_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<weir_processing::Result<()>>,
}

impl App {
    /// The service with the real worker and default limits, changed by `adjust`.
    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let blob_dir = tempfile::tempdir().expect("a blob dir");
        let blobs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(blob_dir.path()).expect("a local blob store"));
        Self::start_with(blobs, blob_dir, adjust).await
    }

    async fn start_with(
        blobs: Arc<dyn ObjectStore>,
        blob_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let world = TestWorld::new();
        let mut config = Config::new(WorkerCommand::new(WORKER, Vec::<String>::new()));
        config.work_dir = world.dir.path().to_owned();
        config.router = RouterOptions { drain_timeout: Duration::from_secs(2), ..config.router };
        adjust(&mut config);
        let kernel = world.kernel("processing").await;
        let service = Service::build(kernel, blobs.clone(), config).await.expect("the service builds");
        let stop = CancellationToken::new();
        let task = tokio::spawn(service.run(stop.clone()));
        Self { world, blobs, _blob_dir: blob_dir, stop, task }
    }

    /// Stores `bytes` as an upload would and announces it.
    async fn upload(&self, bytes: &[u8], media_type: MediaType) -> DocumentUploaded {
        let uploaded = self.uploaded(bytes, media_type);
        self.blobs.put(&BlobPath::from(uploaded.blob_key.as_str()), PutPayload::from(bytes.to_vec())).await.unwrap();
        self.world.publish("documents", &uploaded).await;
        uploaded
    }

    /// The announcement of an upload of `bytes` (nothing stored, nothing published).
    fn uploaded(&self, bytes: &[u8], media_type: MediaType) -> DocumentUploaded {
        let (document_id, user_id) = (Uuid::now_v7(), Uuid::now_v7());
        DocumentUploaded {
            document_id,
            user_id,
            filename: format!("upload.{media_type:?}").to_lowercase(),
            media_type,
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            blob_key: format!("raw/{user_id}/{document_id}"),
        }
    }

    async fn blob(&self, key: &str) -> Vec<u8> {
        self.blobs.get(&BlobPath::from(key)).await.expect("the blob exists").bytes().await.unwrap().to_vec()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the service task").expect("the service stops cleanly");
    }
}

/// Waits for the outcome of `document`: processed (`Ok`) or failed (`Err`). Other documents'
/// outcomes stay in the watch for later calls.
async fn outcome(watch: &mut Watch, document: Uuid) -> Result<DocumentProcessed, DocumentFailed> {
    let deadline = Instant::now() + OUTCOME_PATIENCE;
    let subject = document.to_string();
    loop {
        if let Some(event) = watch.seen().iter().find(|e| e.subject == subject) {
            match event.kind.as_str() {
                "document_processed" => return Ok(event.data().expect("a valid document_processed")),
                "document_failed" => return Err(event.data().expect("a valid document_failed")),
                other => panic!("unexpected {other} on doc.processed"),
            }
        }
        assert!(Instant::now() < deadline, "no outcome for document {document} within {OUTCOME_PATIENCE:?}");
        // Reads more events into `seen`.
        watch.try_expect::<DocumentProcessed>(Duration::from_millis(200), |p| p.document_id == document).await;
    }
}

async fn processed(watch: &mut Watch, document: Uuid) -> DocumentProcessed {
    match outcome(watch, document).await {
        Ok(processed) => processed,
        Err(failed) => panic!("document {document} failed: {}", failed.reason),
    }
}

async fn failed(watch: &mut Watch, document: Uuid) -> DocumentFailed {
    match outcome(watch, document).await {
        Ok(_) => panic!("document {document} was processed; expected it to fail"),
        Err(failed) => failed,
    }
}

// ---------------------------------------------------------------------------------------------
// Text comparison.

/// Words separated by single spaces: layout is not what OCR is judged on.
fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// Character error rate of `ocr` against `truth`: edits per character of the truth.
fn cer(truth: &str, ocr: &str) -> f64 {
    let truth: Vec<char> = normalise(truth).chars().collect();
    let ocr: Vec<char> = normalise(ocr).chars().collect();
    levenshtein(&truth, &ocr) as f64 / truth.len().max(1) as f64
}

#[test]
fn character_error_rate_counts_edits_per_character() {
    assert_eq!(cer("abcd", "abcd"), 0.0);
    assert_eq!(cer("abcd", "abxd"), 0.25);
    assert_eq!(cer("a  b\nc", "a b c"), 0.0);
    assert_eq!(cer("abcd", ""), 1.0);
}

/// A short business letter that is not from the sample generator, so the OCR tests do not
/// depend on it.
const LETTER: &str = "Northwind Traders Ltd, 42 Harbour Road, Bristol BS1 4QA
Invoice INV-2024-0117, issued 14 March 2024
Bill to: Contoso Pharmaceuticals, attention of Dr. Maria Keller
Consulting services, February: 36 hours at 95.00 EUR = 3,420.00 EUR
Travel expenses (receipts enclosed): 212.40 EUR
Total due within 30 days: 3,632.40 EUR
Please quote the invoice number with your payment. Thank you for your business.";

fn assert_thumbnail(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(&[0xFF, 0xD8, 0xFF]), "the thumbnail is a JPEG");
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).expect("the thumbnail decodes");
    let (w, h) = (image.width(), image.height());
    assert!(
        w.max(h) <= 256 && w.max(h) >= 200,
        "thumbnail is {w} × {h}; its longest side should be 256 or a little less"
    );
    (w, h)
}

// ---------------------------------------------------------------------------------------------
// Images.

async fn ocr_image(media_type: MediaType, bytes: Vec<u8>, truth: &str) {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let uploaded = app.upload(&bytes, media_type).await;
    let started = Instant::now();
    let done = processed(&mut watch, uploaded.document_id).await;
    let text = String::from_utf8(app.blob(&done.text_key).await).expect("the text is UTF-8");
    let rate = cer(truth, &text);
    println!("{media_type:?}: CER {:.2}% ({} chars) in {:.2?}", rate * 100.0, truth.len(), started.elapsed());
    assert!(rate <= MAX_CER, "CER {rate:.4} is above {MAX_CER}; OCR read:\n{text}");
    for word in ["Northwind", "INV-2024-0117", "Contoso", "3,632.40"] {
        assert!(text.contains(word), "{word:?} is missing from the OCR text:\n{text}");
    }

    let image = image::load_from_memory(&bytes).unwrap();
    let m = &done.metadata;
    assert_eq!((m.pages, m.ocr_pages, m.text_layer_pages), (1, 1, 0));
    assert_eq!((m.width, m.height), (image.width(), image.height()));
    assert_eq!(m.sha256, uploaded.sha256);
    assert_eq!((m.title.as_deref(), m.author.as_deref()), (None, None));
    assert_eq!(done.text_key, format!("text/{}/{}", uploaded.user_id, uploaded.document_id));
    assert_eq!(done.thumbnail_key, format!("thumbnails/{}/{}", uploaded.user_id, uploaded.document_id));
    assert_eq!(done.excerpt, text, "a short text is its own excerpt");
    assert_eq!(done.text_chars, text.chars().count() as u64);
    assert_eq!(
        (done.filename.as_str(), done.media_type, done.user_id),
        (uploaded.filename.as_str(), media_type, uploaded.user_id)
    );
    let (w, h) = assert_thumbnail(&app.blob(&done.thumbnail_key).await);
    assert_eq!(w > h, image.width() > image.height(), "the thumbnail keeps the page's orientation");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_png_is_read_by_ocr() {
    ocr_image(MediaType::Png, render::png(LETTER), LETTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_is_read_by_ocr() {
    ocr_image(MediaType::Jpeg, render::jpeg(LETTER), LETTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_documents_of_every_class_are_read_with_a_small_error_rate() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let mut total = (0.0, 0usize);
    for (seed, class) in DocClass::ALL.into_iter().enumerate() {
        let truth = weir_samples::generate(class, seed as u64 + 7);
        let uploaded = app.upload(&render::png(&truth), MediaType::Png).await;
        let done = processed(&mut watch, uploaded.document_id).await;
        let text = String::from_utf8(app.blob(&done.text_key).await).unwrap();
        let rate = cer(&truth, &text);
        println!("{}: CER {:.2}% over {} chars", class.as_str(), rate * 100.0, truth.chars().count());
        assert!(rate <= MAX_CER, "{}: CER {rate:.4} is above {MAX_CER}; OCR read:\n{text}", class.as_str());
        let expected_excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
        assert_eq!(done.excerpt, expected_excerpt);
        total.0 += rate * truth.chars().count() as f64;
        total.1 += truth.chars().count();
    }
    println!("all classes: CER {:.2}%", total.0 / total.1 as f64 * 100.0);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// PDFs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_with_a_text_layer_is_read_from_it_with_its_title_and_author() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let pages = ["First page: Northwind Traders invoice INV-2024-0117.", "Second page: total due 3,632.40 EUR."];
    let bytes = render::text_pdf(&pages, Some("Invoice INV-2024-0117"), Some("Northwind Billing"));
    let uploaded = app.upload(&bytes, MediaType::Pdf).await;
    let done = processed(&mut watch, uploaded.document_id).await;

    let m = &done.metadata;
    assert_eq!((m.pages, m.text_layer_pages, m.ocr_pages), (2, 2, 0), "every page from the text layer, none OCR'd");
    assert_eq!(m.title.as_deref(), Some("Invoice INV-2024-0117"));
    assert_eq!(m.author.as_deref(), Some("Northwind Billing"));
    assert_eq!(m.sha256, uploaded.sha256);
    // A4 at 300 dpi.
    assert!((2470..=2490).contains(&m.width) && (3500..=3520).contains(&m.height), "{} × {}", m.width, m.height);
    let text = String::from_utf8(app.blob(&done.text_key).await).unwrap();
    assert_eq!(normalise(&text), normalise(&pages.join("\n")), "the text layer is taken exactly, pages in order");
    assert_thumbnail(&app.blob(&done.thumbnail_key).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanned_pdf_is_read_by_ocr_page_by_page() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let pages = [
        "Page one of the scan. Northwind Traders, invoice INV-2024-0117.",
        "Page two of the scan. Consulting services, 36 hours at 95.00 EUR.",
        "Page three of the scan. Total due within 30 days: 3,632.40 EUR.",
    ];
    let bytes = render::scanned_pdf(&pages);
    let uploaded = app.upload(&bytes, MediaType::Pdf).await;
    let started = Instant::now();
    let done = processed(&mut watch, uploaded.document_id).await;
    let elapsed = started.elapsed();

    let m = &done.metadata;
    assert_eq!((m.pages, m.ocr_pages, m.text_layer_pages), (3, 3, 0), "every page OCR'd");
    assert_eq!((m.title.as_deref(), m.author.as_deref()), (None, None));
    // Rendered at the scan's own 150 dpi (A4 is 1240 px wide there), not blown up to 300.
    assert!((1235..=1245).contains(&m.width), "first page rendered {} px wide", m.width);
    let text = String::from_utf8(app.blob(&done.text_key).await).unwrap();
    let rate = cer(&pages.join("\n"), &text);
    println!("scanned PDF: 3 pages in {elapsed:.2?}, CER {:.2}%", rate * 100.0);
    assert!(rate <= MAX_CER, "CER {rate:.4}; OCR read:\n{text}");
    let positions: Vec<usize> =
        ["Page one", "Page two", "Page three"].iter().map(|p| text.find(p).expect("every page is read")).collect();
    assert!(positions.is_sorted(), "pages keep their order: {positions:?}");
    assert_thumbnail(&app.blob(&done.thumbnail_key).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_pdf_fails_with_a_reason_and_the_next_document_is_processed() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let whole = render::text_pdf(&["A page that will be cut off."], Some("Cut"), None);
    let truncated = app.upload(&whole[..whole.len() * 2 / 3], MediaType::Pdf).await;
    let next = app.upload(&whole, MediaType::Pdf).await;

    let failure = failed(&mut watch, truncated.document_id).await;
    assert_eq!(failure.stage, "processing");
    assert!(failure.reason.contains("damaged or truncated"), "reason: {}", failure.reason);
    assert_eq!((failure.user_id, failure.filename.as_str()), (truncated.user_id, truncated.filename.as_str()));
    processed(&mut watch, next.document_id).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken input.

/// A PNG that declares `width` × `height` gray pixels and holds the first `rows` of them, all
/// zero: a few kilobytes that decode to as many bytes as it declares pixels.
fn bomb_png(width: u32, height: u32, rows: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit gray, deflate, no filter, no interlace
    let rows = vec![0u8; (width as usize + 1) * rows as usize];
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&rows).unwrap();
    let data = encoder.finish().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &data);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_fails_quickly_from_its_header() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let bomb = bomb_png(100_000, 100_000, 64);
    assert!(bomb.len() < 100_000, "the bomb is small: {} bytes", bomb.len());
    let started = Instant::now();
    let uploaded = app.upload(&bomb, MediaType::Png).await;
    let failure = failed(&mut watch, uploaded.document_id).await;
    assert!(failure.reason.contains("100000 × 100000 pixels"), "reason: {}", failure.reason);
    assert!(failure.reason.contains("40.0 megapixels"), "reason: {}", failure.reason);
    assert!(started.elapsed() < Duration::from_secs(10), "refused in {:?}", started.elapsed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_needs_more_memory_than_allowed_fails_alone() {
    // 6000 × 6000 is under the pixel limit, but OCR needs more than 150 MiB for it.
    let app = App::start(|c| c.limits.memory_bytes = 150 * 1024 * 1024).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let uploaded = app.upload(&bomb_png(6000, 6000, 6000), MediaType::Png).await;
    let failure = failed(&mut watch, uploaded.document_id).await;
    assert_eq!(failure.reason, "processing needed more than 150 MiB of memory");
    app.stop().await;
}

/// A worker that runs `on_pdf` for PDFs and the real worker for everything else.
fn misbehaving_on_pdfs(on_pdf: &str) -> WorkerCommand {
    let script = format!(
        r#"request=$(cat); case "$request" in *'"media_type":"pdf"'*) {on_pdf};; esac; printf '%s' "$request" | exec "$0""#
    );
    WorkerCommand::new("sh", ["-c".to_owned(), script, WORKER.to_owned()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_fails_its_document_and_the_service_goes_on() {
    let app = App::start(|c| c.worker = misbehaving_on_pdfs("kill -SEGV $$")).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let crashing = app.upload(&render::text_pdf(&["crash"], None, None), MediaType::Pdf).await;
    let failure = failed(&mut watch, crashing.document_id).await;
    assert_eq!(failure.reason, "the processor crashed (SIGSEGV)");
    let next = app.upload(&render::png("After the crash"), MediaType::Png).await;
    let done = processed(&mut watch, next.document_id).await;
    assert!(done.excerpt.contains("After the crash"), "{}", done.excerpt);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_hangs_is_killed_at_the_deadline_and_the_service_goes_on() {
    // A distinctive sleep, to look for it among the processes afterwards.
    let app = App::start(|c| {
        c.worker = misbehaving_on_pdfs("sleep 7301");
        c.limits.timeout = Duration::from_secs(2);
        c.limits.timeout_per_page = Duration::from_secs(5);
        c.workers = 1;
    })
    .await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let started = Instant::now();
    let hanging = app.upload(&render::text_pdf(&["hang"], None, None), MediaType::Pdf).await;
    let next = app.upload(&render::png("After the hang"), MediaType::Png).await;
    let failure = failed(&mut watch, hanging.document_id).await;
    // It never reported a page count, so the deadline is the bare timeout.
    assert_eq!(failure.reason, "processing took longer than 2 s");
    assert!(started.elapsed() < Duration::from_secs(15), "failed after {:?}", started.elapsed());
    // One worker slot: the next document ran only after the hung one was killed.
    let done = processed(&mut watch, next.document_id).await;
    assert!(done.excerpt.contains("After the hang"), "{}", done.excerpt);
    assert!(!process_running("sleep 7301"), "the hung worker's whole process group is killed");
    app.stop().await;
}

/// Whether a process with this command line exists.
fn process_running(command_line: &str) -> bool {
    let wanted: Vec<u8> = command_line.replace(' ', "\0").into_bytes();
    std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c.strip_suffix(b"\0").unwrap_or(&c) == wanted)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_runs_out_of_memory_is_reported_so() {
    let app = App::start(|c| {
        c.worker = misbehaving_on_pdfs("echo 'memory allocation of 1073741824 bytes failed' >&2; kill -ABRT $$");
        c.limits.memory_bytes = 512 * 1024 * 1024;
    })
    .await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let uploaded = app.upload(&render::text_pdf(&["big"], None, None), MediaType::Pdf).await;
    let failure = failed(&mut watch, uploaded.document_id).await;
    assert_eq!(failure.reason, "processing needed more than 512 MiB of memory");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_altered_blob_fails_the_document() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let missing = app.uploaded(b"%PDF-1.7 never stored", MediaType::Pdf);
    app.world.publish("documents", &missing).await;
    let failure = failed(&mut watch, missing.document_id).await;
    assert_eq!(failure.reason, "the uploaded file is no longer in storage");

    let altered = app.uploaded(&render::png("original"), MediaType::Png);
    let other = render::png("altered");
    app.blobs.put(&BlobPath::from(altered.blob_key.as_str()), PutPayload::from(other)).await.unwrap();
    app.world.publish("documents", &altered).await;
    let failure = failed(&mut watch, altered.document_id).await;
    assert_eq!(failure.reason, "the stored file does not match the upload (its SHA-256 differs)");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_is_not_the_documents_fault() {
    let app = App::start(|c| {
        c.worker = WorkerCommand::new("/nonexistent/weir-process-worker", Vec::<String>::new());
        c.router.retry.immediate_attempts = 1;
        c.router.retry.base_delay = Duration::from_millis(50);
        c.router.retry.max_delay = Duration::from_millis(100);
    })
    .await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let uploaded = app.upload(&render::png("never processed"), MediaType::Png).await;
    let seen = watch.drain(Duration::from_secs(3)).await;
    assert!(
        seen.iter().all(|e| e.subject != uploaded.document_id.to_string()),
        "no outcome is announced while the worker cannot start: {seen:?}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotence and transient failures.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_upload_delivered_twice_is_announced_once() {
    let app = App::start(|_| {}).await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let bytes = render::png("Delivered twice");
    let uploaded = app.uploaded(&bytes, MediaType::Png);
    app.blobs.put(&BlobPath::from(uploaded.blob_key.as_str()), PutPayload::from(bytes)).await.unwrap();
    let event = app.world.publish("documents", &uploaded).await;
    app.world.publish_event(topics::DOC_UPLOADED, event).await;
    // The same document announced again under a new event id (an upload restated).
    app.world.publish("documents", &uploaded).await;
    processed(&mut watch, uploaded.document_id).await;
    let seen = watch.drain(Duration::from_secs(5)).await;
    let announcements = seen.iter().filter(|e| e.subject == uploaded.document_id.to_string()).count();
    assert_eq!(announcements, 1, "one announcement per document: {seen:?}");
    app.stop().await;
}

/// Blob storage that is unavailable for the first `failures` reads.
#[derive(Debug)]
struct Flaky {
    inner: LocalFileSystem,
    failures: usize,
    reads: AtomicUsize,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &BlobPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &BlobPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &BlobPath, options: GetOptions) -> object_store::Result<GetResult> {
        if self.reads.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(object_store::Error::Generic { store: "flaky", source: "connection refused".into() });
        }
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<BlobPath>>,
    ) -> BoxStream<'static, object_store::Result<BlobPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&BlobPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&BlobPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &BlobPath, to: &BlobPath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_blob_storage_is_retried_not_failed() {
    let blob_dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky {
        inner: LocalFileSystem::new_with_prefix(blob_dir.path()).unwrap(),
        failures: 3,
        reads: AtomicUsize::new(0),
    });
    let app = App::start_with(flaky.clone(), blob_dir, |c| {
        c.router.retry.base_delay = Duration::from_millis(50);
        c.router.retry.max_delay = Duration::from_millis(200);
    })
    .await;
    let mut watch = app.world.watch(topics::DOC_PROCESSED).await;
    let uploaded = app.upload(&render::png("Worth the wait"), MediaType::Png).await;
    let done = processed(&mut watch, uploaded.document_id).await;
    assert!(done.excerpt.contains("Worth the wait"), "{}", done.excerpt);
    assert!(flaky.reads.load(Ordering::SeqCst) > 3, "the failed reads were retried");
    app.stop().await;
}
