//! `weir bench documents` — the Tuesday test. It floods document processing with multi-page
//! scans while probing `GET /v1/documents` and `POST /v1/orders` at a steady pace, and reports
//! the probes' latency at rest and under the flood (processing is bulkheaded: it must not slow
//! them), the pipeline's pages/s, and raw `tesseract` on the same pages for comparison.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::Value;
use weir_samples::{DocClass, render};

use super::{latency_histogram, ms, orders, per_second, progress, table};

#[derive(Args)]
pub struct DocumentsArgs {
    /// Base URL of a running `weir up`.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Scanned documents to upload.
    #[arg(long, default_value_t = 1000)]
    documents: usize,
    /// Pages per scanned document.
    #[arg(long, default_value_t = 3)]
    pages: usize,
    /// Concurrent uploads.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Probe requests per second, each of `GET /v1/documents` and `POST /v1/orders`.
    #[arg(long, default_value_t = 20)]
    probe_rate: u64,
    /// Seconds of probing before the flood, for the latency at rest.
    #[arg(long, default_value_t = 5)]
    rest_seconds: u64,
    /// Resolution at which the raw `tesseract` comparison renders the pages (the samples'
    /// scans are 150 dpi; the processing service renders a scan at its own resolution).
    #[arg(long, default_value_t = 150)]
    dpi: u32,
    /// The classification service's gRPC address, for classifications/s.
    #[arg(long, env = "WEIR_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    grpc_url: String,
    /// The data directory of that `weir up` (for its service token).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    data_dir: std::path::PathBuf,
}

/// Distinct documents in the pool the uploads cycle through.
const POOL: usize = 12;

pub async fn run(args: DocumentsArgs) -> anyhow::Result<()> {
    ensure!(args.documents > 0 && args.pages > 0 && args.concurrency > 0, "counts must be at least 1");
    let http = reqwest::Client::new();
    let base = args.url.trim_end_matches('/').to_owned();
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("no ready `weir up` at {base}: start one with `weir up` (or pass --url)"))?;
    let tokens = orders::register_users(&http, &base, 2).await?;
    let (uploader, prober) = (tokens[0].clone(), tokens[1].clone());
    let products = orders::plentiful_products(&http, &base).await?;

    let pool = scans(args.pages);

    // The probes, at rest and then through the flood.
    let probes = Probes::start(&http, &base, &prober, &products[0], args.probe_rate);
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let at_rest = probes.take();

    let bar = progress(args.documents as u64, "uploading scans");
    let started = Instant::now();
    let uploaded = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut uploaders = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, base, token, pool, uploaded, next, bar) =
            (http.clone(), base.clone(), uploader.clone(), pool.clone(), uploaded.clone(), next.clone(), bar.clone());
        let total = args.documents;
        uploaders.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let (name, bytes) = &pool[n % pool.len()];
                let id = upload(&http, &base, &token, &format!("{n:04}-{name}"), bytes.clone()).await?;
                uploaded.lock().expect("not poisoned").push(id);
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = uploaders.join_next().await {
        joined??;
    }
    bar.finish_and_clear();
    let upload_time = started.elapsed();
    let ids = std::mem::take(&mut *uploaded.lock().expect("not poisoned"));
    let outcomes = wait_for_documents(&http, &base, &uploader, &ids).await?;
    let under_flood = probes.stop().await;

    let classified = outcomes.iter().filter(|o| o.status == "CLASSIFIED").count();
    let failed = outcomes.len() - classified;
    let first = outcomes.iter().map(|o| o.created).min().context("no document finished")?;
    let last = outcomes.iter().map(|o| o.finished).max().context("no document finished")?;
    let pipeline_time = (last - first).to_std().unwrap_or_default();
    let pages = (classified * args.pages) as u64;
    let pipeline_pages_per_s = pages as f64 / pipeline_time.as_secs_f64().max(1e-9);

    let raw = raw_tesseract(&pool, args.dpi).await?;
    let classifications = classifications_per_second(&args.grpc_url, &args.data_dir).await?;

    let mut out = table(&["measure", "value"]);
    out.add_row(["scans uploaded".to_owned(), format!("{} × {} pages", ids.len(), args.pages)]);
    out.add_row(["uploads/s".to_owned(), per_second(ids.len() as u64, upload_time)]);
    out.add_row(["classified / failed".to_owned(), format!("{classified} / {failed}")]);
    out.add_row(["pipeline (first upload → last label)".to_owned(), format!("{:.1} s", pipeline_time.as_secs_f64())]);
    out.add_row(["pages/s through the pipeline".to_owned(), format!("{pipeline_pages_per_s:.2}")]);
    out.add_row([
        format!("pages/s of raw tesseract ({} processes)", raw.processes),
        format!("{:.2} ({} pages)", raw.pages_per_s, raw.pages),
    ]);
    out.add_row([
        "pipeline overhead vs raw tesseract".to_owned(),
        format!("{:+.1}%", (raw.pages_per_s / pipeline_pages_per_s.max(1e-9) - 1.0) * 100.0),
    ]);
    out.add_row([
        "documents labelled per pipeline second".to_owned(),
        format!("{:.2}", classified as f64 / pipeline_time.as_secs_f64().max(1e-9)),
    ]);
    out.add_row(["classifications/s (gRPC ClassifyBatch, 100 per batch)".to_owned(), format!("{classifications:.0}")]);
    for (phase, probes) in [("at rest", &at_rest), ("under the flood", &under_flood)] {
        for (what, h) in [("GET /v1/documents", &probes.list), ("POST /v1/orders", &probes.order)] {
            out.add_row([
                format!("{what} {phase}: p50 / p95 / p99 (n)"),
                format!("{} / {} / {} ({})", ms(h, 0.5), ms(h, 0.95), ms(h, 0.99), h.len()),
            ]);
        }
    }
    let errors = under_flood.errors + at_rest.errors;
    out.add_row(["probe errors".to_owned(), errors.to_string()]);
    println!("{out}");
    println!(
        "Probes: {}/s each, measured by this client. Pipeline time by the server's clock (created_at → updated_at).",
        args.probe_rate
    );
    Ok(())
}

/// The pool of scanned PDFs: `(file name, bytes)`, varied classes.
fn scans(pages: usize) -> Arc<Vec<(String, bytes::Bytes)>> {
    let pool = (0..POOL)
        .map(|n| {
            let class = DocClass::ALL[n % DocClass::ALL.len()];
            let texts: Vec<String> = (0..pages).map(|p| weir_samples::generate(class, (n * 100 + p) as u64)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            (format!("{}-scan.pdf", class.as_str()), bytes::Bytes::from(render::scanned_pdf(&refs)))
        })
        .collect();
    Arc::new(pool)
}

async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    bytes: bytes::Bytes,
) -> anyhow::Result<String> {
    let part = reqwest::multipart::Part::stream(bytes).file_name(name.to_owned()).mime_str("application/pdf")?;
    let response = http
        .post(format!("{base}/v1/documents"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    ensure!(response.status() == 202, "upload answered {}: {}", response.status(), response.text().await?);
    let body: Value = response.json().await?;
    Ok(body["document_id"].as_str().context("an upload without document_id")?.to_owned())
}

struct Outcome {
    status: String,
    created: DateTime<Utc>,
    finished: DateTime<Utc>,
}

/// Pages through the uploader's documents until every one is CLASSIFIED or FAILED.
async fn wait_for_documents(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
) -> anyhow::Result<Vec<Outcome>> {
    let bar = progress(ids.len() as u64, "processing");
    let mut pending: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut outcomes = Vec::new();
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        ensure!(
            last_progress.elapsed() < Duration::from_secs(600),
            "no document finished for 10 minutes; {} still pending",
            pending.len()
        );
        let mut cursor: Option<String> = None;
        loop {
            let mut request = http.get(format!("{base}/v1/documents")).bearer_auth(token).query(&[("limit", "100")]);
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c)]);
            }
            let page: Value = request.send().await?.error_for_status()?.json().await?;
            for view in page["items"].as_array().context("GET /v1/documents returned no items")? {
                let status = view["status"].as_str().unwrap_or_default();
                let id = view["document_id"].as_str().unwrap_or_default();
                if (status == "CLASSIFIED" || status == "FAILED") && pending.remove(id) {
                    outcomes.push(Outcome {
                        status: status.to_owned(),
                        created: orders::timestamp(&view["created_at"])?,
                        finished: orders::timestamp(&view["updated_at"])?,
                    });
                    bar.inc(1);
                    last_progress = Instant::now();
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() || pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

/// What the probes measured, and their failures.
struct ProbeResult {
    list: Histogram<u64>,
    order: Histogram<u64>,
    errors: u64,
}

impl ProbeResult {
    fn new() -> Self {
        Self { list: latency_histogram(), order: latency_histogram(), errors: 0 }
    }
}

/// Two paced probes: one lists documents, one places an order.
struct Probes {
    tally: Arc<Mutex<ProbeResult>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Probes {
    fn start(http: &reqwest::Client, base: &str, token: &str, product: &str, rate: u64) -> Self {
        let tally = Arc::new(Mutex::new(ProbeResult::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        for is_order in [false, true] {
            let (http, base, token, product, tally) =
                (http.clone(), base.to_owned(), token.to_owned(), product.to_owned(), tally.clone());
            tasks.spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let sent = Instant::now();
                    let ok = if is_order {
                        orders::place(&http, &base, &token, &product).await.is_ok()
                    } else {
                        let r = http
                            .get(format!("{base}/v1/documents"))
                            .query(&[("limit", "20")])
                            .bearer_auth(&token)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                            _ => false,
                        }
                    };
                    let micros = (sent.elapsed().as_micros() as u64).max(1);
                    let mut tally = tally.lock().expect("not poisoned");
                    if !ok {
                        tally.errors += 1;
                    } else if is_order {
                        tally.order.saturating_record(micros);
                    } else {
                        tally.list.saturating_record(micros);
                    }
                }
            });
        }
        Self { tally, tasks }
    }

    /// What was measured so far; the probes go on from empty histograms.
    fn take(&self) -> ProbeResult {
        std::mem::replace(&mut *self.tally.lock().expect("not poisoned"), ProbeResult::new())
    }

    async fn stop(mut self) -> ProbeResult {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.take()
    }
}

/// The classifier's own rate: batches of generated documents through gRPC for five seconds.
async fn classifications_per_second(url: &str, data_dir: &std::path::Path) -> anyhow::Result<f64> {
    let token = crate::data_dir::read_grpc_token(data_dir)?;
    let mut classifier = weir_classification::client::connect(url, &token).await?;
    let texts: Vec<String> = weir_samples::corpus(7, 17).into_iter().map(|s| s.text).take(100).collect();
    let started = Instant::now();
    let mut classified = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        let batch =
            texts.iter().map(|t| weir_classification::proto::ClassifyRequest { text: t.clone(), document_id: None });
        let answer = classifier.classify_batch(futures::stream::iter(batch.collect::<Vec<_>>())).await?;
        classified += answer.into_inner().results.len();
    }
    Ok(classified as f64 / started.elapsed().as_secs_f64())
}

struct Raw {
    pages: usize,
    processes: usize,
    pages_per_s: f64,
}

/// Raw `tesseract` on the pool's pages: each page rendered once with `pdftoppm` at `dpi`
/// (not timed), then OCR'd by the `tesseract` command, one process per core, timed.
async fn raw_tesseract(pool: &[(String, bytes::Bytes)], dpi: u32) -> anyhow::Result<Raw> {
    let dir = tempfile::tempdir()?;
    let mut images = Vec::new();
    for (n, (_, pdf)) in pool.iter().enumerate() {
        let path = dir.path().join(format!("{n}.pdf"));
        std::fs::write(&path, pdf)?;
        let prefix = dir.path().join(format!("{n}-page"));
        let status = tokio::process::Command::new("pdftoppm")
            .args(["-r", &dpi.to_string(), "-gray", "-png"])
            .arg(&path)
            .arg(&prefix)
            .status()
            .await
            .context("cannot run pdftoppm (Debian package poppler-utils)")?;
        ensure!(status.success(), "pdftoppm failed on a benchmark scan");
    }
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "png") {
            images.push(path);
        }
    }
    let processes = std::thread::available_parallelism().map_or(2, |n| n.get());
    let queue = Arc::new(Mutex::new(images.clone()));
    let bar = progress(images.len() as u64, "raw tesseract");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..processes {
        let (queue, bar) = (queue.clone(), bar.clone());
        workers.spawn(async move {
            loop {
                let Some(image) = queue.lock().expect("not poisoned").pop() else { return Ok::<_, anyhow::Error>(()) };
                let status = tokio::process::Command::new("tesseract")
                    .arg(&image)
                    .arg("stdout")
                    .env("OMP_THREAD_LIMIT", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .context("cannot run tesseract (Debian package tesseract-ocr)")?;
                ensure!(status.success(), "tesseract failed on {}", image.display());
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    bar.finish_and_clear();
    Ok(Raw { pages: images.len(), processes, pages_per_s: images.len() as f64 / started.elapsed().as_secs_f64() })
}
