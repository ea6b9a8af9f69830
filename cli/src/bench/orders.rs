//! `weir bench orders`: a load generator against a running `weir up`.
//!
//! It registers users, places orders from a fixed number of concurrent clients (optionally
//! paced to a total rate) for a set time, then waits until every order is COMPLETED or
//! CANCELLED. Accept latency is measured by the client (request → 202). Accept → completed
//! latency is measured by the server's own clock: the order's `created_at` (when
//! `order_created` was recorded) to its `updated_at` (when its outcome was recorded), so
//! polling does not distort it. RSS and CPU time come from the server's `/metrics`; CPU per
//! order (the server's CPU time from the start of the load until every outcome is in, over the
//! orders) depends far less on the machine's other load than rates do.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{latency_histogram, ms, per_second, progress, table};

#[derive(Args)]
pub struct OrdersArgs {
    /// Base URL of a running `weir up`.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Users to register and spread the orders over.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Concurrent clients placing orders.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to place orders, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Pace the load to this many orders per second in total (default: as fast as accepted).
    #[arg(long)]
    rate: Option<u64>,
}

struct Tally {
    /// (user, order id) of every accepted order.
    accepted: Vec<(usize, String)>,
    accept_latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Orders refused with 503 because too many were pending (load shedding).
    shed: u64,
}

/// Why an order was not placed.
pub(super) enum NotPlaced {
    /// `503` because too many orders were pending (load shedding): the client waits what the
    /// server's `Retry-After` asks for (1 s if it names no number of seconds), then goes on.
    Shed(Duration),
    /// Anything else, as a short label for the error table.
    Failed(String),
}

pub async fn run(args: OrdersArgs) -> anyhow::Result<()> {
    ensure!(args.users > 0 && args.concurrency > 0, "--users and --concurrency must be at least 1");
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("no ready `weir up` at {base}: start one with `weir up` (or pass --url)"))?;
    let idle_rss = rss(&http, &base).await;

    let tokens = Arc::new(register_users(&http, &base, args.users).await?);
    let products = Arc::new(plentiful_products(&http, &base).await?);

    let cpu_before = cpu_seconds(&http, &base).await;

    // Load.
    let duration = Duration::from_secs(args.seconds);
    let tally = Arc::new(Mutex::new(Tally {
        accepted: Vec::new(),
        accept_latency: latency_histogram(),
        errors: BTreeMap::new(),
        shed: 0,
    }));
    let bar = progress(args.rate.map_or(0, |r| r * args.seconds), "placing orders");
    let peak_rss = Arc::new(AtomicU64::new(idle_rss.unwrap_or(0)));
    let sampler = tokio::spawn({
        let (http, base, peak) = (http.clone(), base.clone(), peak_rss.clone());
        async move {
            loop {
                if let Some(r) = rss(&http, &base).await {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let started = Instant::now();
    let interval = args.rate.map(|r| Duration::from_secs_f64(args.concurrency as f64 / r.max(1) as f64));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.concurrency {
        let (http, base, tokens, products, tally, bar) =
            (http.clone(), base.clone(), tokens.clone(), products.clone(), tally.clone(), bar.clone());
        clients.spawn(async move {
            let mut n = client;
            let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(client as f64 / args.concurrency as f64));
            let mut next = started + offset;
            while started.elapsed() < duration {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let user = n % tokens.len();
                let product = &products[n % products.len()];
                n += args.concurrency;
                let sent = Instant::now();
                let outcome = place(&http, &base, &tokens[user], product).await;
                let latency = sent.elapsed().as_micros() as u64;
                let mut wait = None;
                {
                    let mut tally = tally.lock().expect("not poisoned");
                    match outcome {
                        Ok(order_id) => {
                            tally.accept_latency.saturating_record(latency.max(1));
                            tally.accepted.push((user, order_id));
                        }
                        Err(NotPlaced::Shed(retry_after)) => {
                            tally.shed += 1;
                            wait = Some(retry_after);
                        }
                        Err(NotPlaced::Failed(e)) => *tally.errors.entry(e).or_default() += 1,
                    }
                }
                bar.inc(1);
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let load_time = started.elapsed();
    bar.finish_and_clear();
    let Tally { accepted, accept_latency, errors, shed } =
        Arc::try_unwrap(tally).ok().expect("every client finished").into_inner().expect("not poisoned");

    // Completion.
    let outcomes = wait_for_outcomes(&http, &base, &tokens, &accepted).await?;
    sampler.abort();
    let cpu_after = cpu_seconds(&http, &base).await;
    let mut completion = latency_histogram();
    let (mut completed, mut cancelled) = (0u64, 0u64);
    let (mut first_created, mut last_finished) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for outcome in &outcomes {
        match outcome.status.as_str() {
            "COMPLETED" => completed += 1,
            _ => cancelled += 1,
        }
        let took = (outcome.finished - outcome.created).num_microseconds().unwrap_or(0).max(1) as u64;
        completion.saturating_record(took);
        first_created = Some(first_created.map_or(outcome.created, |t| t.min(outcome.created)));
        last_finished = Some(last_finished.map_or(outcome.finished, |t| t.max(outcome.finished)));
    }
    let processing_time = match (first_created, last_finished) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };

    let mut out = table(&["measure", "value"]);
    let accepted_count = accepted.len() as u64;
    out.add_row(["orders accepted".to_owned(), accepted_count.to_string()]);
    out.add_row(["accepted/s".to_owned(), per_second(accepted_count, load_time)]);
    out.add_row(["completed / cancelled".to_owned(), format!("{completed} / {cancelled}")]);
    out.add_row(["completed/s (first accept → last outcome)".to_owned(), per_second(completed, processing_time)]);
    for (label, h) in [("accept", &accept_latency), ("accept → outcome", &completion)] {
        out.add_row([
            format!("{label} p50 / p95 / p99"),
            format!("{} / {} / {}", ms(h, 0.5), ms(h, 0.95), ms(h, 0.99)),
        ]);
    }
    let errors_total: u64 = errors.values().sum();
    let error_text = if errors.is_empty() {
        "0".to_owned()
    } else {
        format!("{errors_total} ({})", errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
    };
    out.add_row(["errors".to_owned(), error_text]);
    out.add_row(["refused with 503, too many pending (the client waits its Retry-After)".to_owned(), shed.to_string()]);
    let cpu_per_order = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if !outcomes.is_empty() => {
            format!("{:.2} ms", (after - before) * 1000.0 / outcomes.len() as f64)
        }
        _ => "unknown".to_owned(),
    };
    out.add_row(["server CPU per order (user + system)".to_owned(), cpu_per_order]);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    out.add_row(["RSS idle (before load)".to_owned(), idle_rss.map_or("unknown".into(), mib)]);
    out.add_row(["RSS peak (sampled every 0.5 s)".to_owned(), mib(peak_rss.load(Ordering::Relaxed))]);
    println!("{out}");
    println!(
        "Load: {} clients{} for {} s, {} users. Accept latency is measured by this client; accept → outcome by the server's clock.",
        args.concurrency,
        args.rate.map_or(String::new(), |r| format!(" paced to {r}/s")),
        args.seconds,
        args.users
    );
    Ok(())
}

pub(super) async fn register_users(http: &reqwest::Client, base: &str, users: usize) -> anyhow::Result<Vec<String>> {
    let bar = progress(users as u64, "registering users");
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let password = "bench-password-1234";
    let mut tokens = Vec::new();
    for n in 0..users {
        let email = format!("bench-{run_id}-{n}@example.com");
        let credentials = json!({ "email": email, "password": password });
        http.post(format!("{base}/v1/users"))
            .json(&credentials)
            .send()
            .await?
            .error_for_status()
            .context("registering a benchmark user failed")?;
        let token: Value = http.post(format!("{base}/v1/auth/token")).json(&credentials).send().await?.json().await?;
        tokens.push(token["access_token"].as_str().context("login returned no access_token")?.to_owned());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Products with ample stock, so the benchmark measures completions, not sell-outs.
pub(super) async fn plentiful_products(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let body: Value = http.get(format!("{base}/v1/products")).send().await?.json().await?;
    let products: Vec<String> = body["items"]
        .as_array()
        .context("GET /v1/products returned no items")?
        .iter()
        .filter(|p| p["available"].as_i64().unwrap_or(0) > 1_000_000)
        .filter_map(|p| p["product_id"].as_str().map(str::to_owned))
        .collect();
    ensure!(!products.is_empty(), "the catalog has no product with ample stock to order");
    Ok(products)
}

/// Places one order.
pub(super) async fn place(http: &reqwest::Client, base: &str, token: &str, product: &str) -> Result<String, NotPlaced> {
    let failed = |label: &str| NotPlaced::Failed(label.to_owned());
    let response = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(token)
        .json(&json!({ "items": [{ "product_id": product, "quantity": 1 }] }))
        .send()
        .await
        .map_err(|e| failed(if e.is_timeout() { "timeout" } else { "connection" }))?;
    match response.status() {
        StatusCode::ACCEPTED => {}
        StatusCode::SERVICE_UNAVAILABLE => return Err(NotPlaced::Shed(retry_after(response.headers()))),
        status => return Err(NotPlaced::Failed(format!("HTTP {}", status.as_u16()))),
    }
    let body: Value = response.json().await.map_err(|_| failed("bad body"))?;
    body["order_id"].as_str().map(str::to_owned).ok_or_else(|| failed("no order_id"))
}

/// The wait a `Retry-After` header asks for in seconds (its HTTP-date form is not used by Weir),
/// 1 s if it is missing or unreadable.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let seconds = headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    Duration::from_secs(seconds.unwrap_or(1).clamp(1, 60))
}

struct Outcome {
    status: String,
    created: DateTime<Utc>,
    finished: DateTime<Utc>,
}

/// Pages through each user's orders until every accepted order has an outcome.
async fn wait_for_outcomes(
    http: &reqwest::Client,
    base: &str,
    tokens: &[String],
    accepted: &[(usize, String)],
) -> anyhow::Result<Vec<Outcome>> {
    let bar = progress(accepted.len() as u64, "waiting for outcomes");
    let mut pending: BTreeMap<usize, std::collections::HashSet<&str>> = BTreeMap::new();
    for (user, order) in accepted {
        pending.entry(*user).or_default().insert(order);
    }
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "{} orders still unfinished after 120 s",
            pending.values().map(|s| s.len()).sum::<usize>()
        );
        for (user, orders) in pending.iter_mut() {
            let mut cursor: Option<String> = None;
            loop {
                let mut request =
                    http.get(format!("{base}/v1/orders")).bearer_auth(&tokens[*user]).query(&[("limit", "100")]);
                if let Some(c) = &cursor {
                    request = request.query(&[("cursor", c)]);
                }
                let page: Value = request.send().await?.error_for_status()?.json().await?;
                for view in page["items"].as_array().context("GET /v1/orders returned no items")? {
                    let status = view["status"].as_str().unwrap_or_default();
                    let id = view["order_id"].as_str().unwrap_or_default();
                    if (status == "COMPLETED" || status == "CANCELLED") && orders.remove(id) {
                        outcomes.push(Outcome {
                            status: status.to_owned(),
                            created: timestamp(&view["created_at"])?,
                            finished: timestamp(&view["updated_at"])?,
                        });
                        bar.inc(1);
                    }
                }
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                if cursor.is_none() || orders.is_empty() {
                    break;
                }
            }
        }
        pending.retain(|_, orders| !orders.is_empty());
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

pub(super) fn timestamp(value: &Value) -> anyhow::Result<DateTime<Utc>> {
    let text = value.as_str().context("an order view without a timestamp")?;
    Ok(DateTime::parse_from_rfc3339(text).with_context(|| format!("bad timestamp {text:?}"))?.with_timezone(&Utc))
}

/// A gauge or counter without labels from the server's `/metrics`.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
        .and_then(|rest| rest.trim().parse::<f64>().ok())
}

/// The server's resident memory, in bytes.
async fn rss(http: &reqwest::Client, base: &str) -> Option<u64> {
    metric(http, base, "process_resident_memory_bytes").await.map(|v| v as u64)
}

/// The server's CPU seconds so far (read by the server when `/metrics` is scraped).
async fn cpu_seconds(http: &reqwest::Client, base: &str) -> Option<f64> {
    metric(http, base, "process_cpu_seconds_total").await
}
