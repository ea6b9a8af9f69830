//! The HTTP gateway of the distributed mode (`weir serve gateway`): one address in front of the
//! `weir serve` processes. It learns each upstream's routes from the upstream's own OpenAPI
//! document, so there is no route table to keep; upstreams that serve the same routes (replicas
//! of one service) take turns, and a replica that refuses connections is skipped. Requests and
//! answers stream through untouched — the upstream's status, headers and problem bodies — inside
//! the platform's stack (request id, trace context, metrics, timeout, per-user rate limit), and
//! the gateway serves the merged OpenAPI document and `/docs` of everything behind it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use tracing::warn;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use weir_http::{Problem, app::App};

/// Paths every process serves for itself; the gateway answers them for itself too.
const OWN_PATHS: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"];

/// How long the gateway waits at start for an upstream's OpenAPI document.
const DISCOVERY: Duration = Duration::from_secs(30);

/// The processes that serve one set of routes, taken in turn.
struct Replicas {
    urls: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
}

/// Adds to `app` a route for every path the `upstreams` serve, forwarding to them, and a
/// readiness check per upstream. Waits for each upstream to answer (processes start together).
pub async fn routes(mut app: App, upstreams: &[String]) -> anyhow::Result<App> {
    if upstreams.is_empty() {
        bail!("the gateway needs the services behind it: pass --upstream http://HOST:PORT once per process");
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("cannot build the gateway's HTTP client")?;
    // Upstreams with the same paths are replicas of one service.
    let mut services: BTreeMap<Vec<String>, (Vec<String>, OpenApi)> = BTreeMap::new();
    for url in upstreams {
        let url = url.trim_end_matches('/').to_owned();
        let openapi = discover(&client, &url).await?;
        let paths: Vec<String> =
            openapi.paths.paths.keys().filter(|p| !OWN_PATHS.contains(&p.as_str())).cloned().collect();
        services.entry(paths).or_insert_with(|| (Vec::new(), openapi)).0.push(url);
    }
    let mut seen = BTreeMap::new();
    for (paths, (urls, mut openapi)) in services {
        for path in &paths {
            if let Some(other) = seen.insert(path.clone(), urls.clone()) {
                bail!("{path} is served by both {other:?} and {urls:?}: give each service's processes once");
            }
        }
        app = app.readiness(format!("upstream {}", urls.join(" | ")), ready_when_one_is(client.clone(), urls.clone()));
        let replicas = Arc::new(Replicas { urls, next: AtomicUsize::new(0), client: client.clone() });
        openapi.paths.paths.retain(|path, _| !OWN_PATHS.contains(&path.as_str()));
        let mut router = OpenApiRouter::with_openapi(openapi);
        for path in &paths {
            router = router.route(path, any(forward).with_state(replicas.clone()));
        }
        app = app.try_routes(router).with_context(|| format!("cannot put {:?} behind the gateway", replicas.urls))?;
    }
    Ok(app)
}

/// A service behind the gateway is ready when one of its processes is: the others' deaths
/// cost capacity, not the routes.
fn ready_when_one_is(
    client: reqwest::Client,
    urls: Vec<String>,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
    move || {
        let (client, urls) = (client.clone(), urls.clone());
        Box::pin(async move {
            let mut why = Vec::new();
            for url in &urls {
                match client.get(format!("{url}/readyz")).send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => why.push(format!("{url} answers {}", r.status())),
                    Err(_) => why.push(format!("{url} is unreachable")),
                }
            }
            Err(why.join("; "))
        })
    }
}

/// The upstream's OpenAPI document, waiting for it to start.
async fn discover(client: &reqwest::Client, url: &str) -> anyhow::Result<OpenApi> {
    let deadline = Instant::now() + DISCOVERY;
    loop {
        let attempt = async {
            let response = client.get(format!("{url}/openapi.json")).send().await?.error_for_status()?;
            anyhow::Ok(response.json::<OpenApi>().await?)
        };
        match attempt.await {
            Ok(openapi) => return Ok(openapi),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "no OpenAPI document at {url}/openapi.json after {DISCOVERY:?}: is a `weir serve` process there?"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not to the message.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name == header::HOST
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    headers.iter().filter(|(name, _)| !hop_by_hop(name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// Request bodies up to this size are held, so that a replica that refuses the connection
/// can be skipped for the next; larger ones (uploads) stream to one replica.
const REPLAYABLE: usize = 1 << 20;

/// Sends the request to the next replica; one that refuses the connection (the request never
/// left) is skipped for the next. An answer, whatever its status, is the client's.
async fn forward(State(replicas): State<Arc<Replicas>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str()).to_owned();
    let headers = end_to_end(&parts.headers);
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let (mut stream, held) = match length {
        Some(n) if n > REPLAYABLE => (Some(body), None),
        _ if chunked => (Some(body), None),
        _ => match axum::body::to_bytes(body, REPLAYABLE).await {
            Ok(bytes) => (None, Some(bytes)),
            Err(_) => return Problem::bad_request("the request body could not be read").into_response(),
        },
    };
    let first = replicas.next.fetch_add(1, Ordering::Relaxed);
    let count = replicas.urls.len();
    for i in 0..count {
        let url = &replicas.urls[(first + i) % count];
        let body = match (&held, stream.take()) {
            (Some(bytes), _) => reqwest::Body::from(bytes.clone()),
            (None, Some(stream)) => reqwest::Body::wrap_stream(stream.into_data_stream()),
            (None, None) => break, // a streamed body went with the first try
        };
        let attempt = replicas
            .client
            .request(parts.method.clone(), format!("{url}{path}"))
            .headers(headers.clone())
            .body(body)
            .send()
            .await;
        match attempt {
            Ok(answer) => {
                let mut response = Response::builder().status(answer.status());
                if let Some(h) = response.headers_mut() {
                    *h = end_to_end(answer.headers());
                }
                return response
                    .body(Body::from_stream(answer.bytes_stream()))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
            }
            Err(e) if e.is_connect() => {
                warn!(upstream = %url, error = %e, "an upstream refused the connection");
            }
            Err(e) => {
                warn!(upstream = %url, error = %e, "the upstream failed");
                return bad_gateway("the service behind this route did not answer in full; try again shortly");
            }
        }
    }
    bad_gateway("no process of the service behind this route accepts connections; try again shortly")
}

fn bad_gateway(detail: &str) -> Response {
    Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", detail).into_response()
}
