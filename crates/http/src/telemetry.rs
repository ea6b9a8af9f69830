//! Process-wide logging and metrics: call [`init_logging`] and [`install_metrics`] once at
//! start-up (a second call is harmless, so tests may call them freely).

mod json_lines;
mod process;

use std::{io::IsTerminal, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, registry::LookupSpan, util::SubscriberInitExt};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, with the fields of every enclosing span (`trace_id`,
    /// `request_id`...) in `spans`: for machines.
    Json,
    /// Human-readable lines with their span context, coloured on a terminal.
    Pretty,
    /// Pretty when stderr is a terminal, else JSON.
    #[default]
    Auto,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{variable} is not a valid log filter: {source}")]
    Filter {
        variable: &'static str,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global logger, writing to stderr. The filter comes from `WEIR_LOG`, else
/// `RUST_LOG` (e.g. `info,weir_orders=debug`), else `info`. A second call returns
/// [`Error::AlreadyInstalled`] and changes nothing.
pub fn init_logging(format: LogFormat) -> Result<(), Error> {
    let filter = filter_from_env()?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let layer = if json {
        json_layer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    tracing_subscriber::registry().with(filter).with(layer).try_init().map_err(Error::AlreadyInstalled)
}

fn filter_from_env() -> Result<EnvFilter, Error> {
    for variable in ["WEIR_LOG", "RUST_LOG"] {
        if let Ok(directives) = std::env::var(variable)
            && !directives.trim().is_empty()
        {
            return EnvFilter::try_new(with_quiet(&directives)).map_err(|source| Error::Filter { variable, source });
        }
    }
    Ok(EnvFilter::new(with_quiet("info")))
}

/// Libraries' logs that say nothing to an operator, unless the directives name them: lapin logs
/// at ERROR every channel the broker closes, and the RabbitMQ transport closes one on purpose
/// whenever it asks about a queue that does not exist yet (its lag gauges ask every few
/// seconds); the transport reports real failures itself.
fn with_quiet(directives: &str) -> String {
    if directives.contains("lapin") { directives.to_owned() } else { format!("lapin::channel=off,{directives}") }
}

/// JSON lines: the event's fields at the top level and every enclosing span, outermost first,
/// in `spans`, so a line logged deep inside a handler still carries the request span's
/// `trace_id` and `request_id`.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    json_lines::JsonLines::new(writer)
}

/// Histogram buckets (seconds) for every metric named `*_seconds`: 1 ms to 30 s, dense where
/// HTTP handlers and event handlers usually land.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global Prometheus recorder behind the `metrics` facade and returns the handle
/// `/metrics` renders. Later calls return the same handle. If some other recorder was
/// installed first, the returned handle renders nothing and a warning is logged.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed; /metrics will be empty");
                return handle;
            }
            describe();
            // Histograms hold raw samples until upkeep folds them in; without a scrape they
            // would grow, so fold them in on a timer.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("weir-metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            if let Err(error) = spawned {
                tracing::warn!(%error, "could not start metrics upkeep; histograms are folded in at each scrape");
            }
            handle
        })
        .clone()
}

/// The exposition `/metrics` answers: what the recorder holds, then the process's CPU time,
/// memory and threads (`process_*`, read as it is rendered).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    process::render(&mut out);
    out
}

fn describe() {
    metrics::describe_counter!(crate::app::REQUESTS_TOTAL, "HTTP requests answered, by method, route and status");
    metrics::describe_histogram!(
        crate::app::REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency, by method and route"
    );
    weir_core::router::backlog::describe();
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the JSON lines layer writes while `log` runs.
    fn logged(log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_inside_a_request_span_carry_its_trace_id() {
        let text = logged(|| {
            let request =
                tracing::info_span!("request", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", request_id = "r-1");
            let _request = request.enter();
            tracing::info!(order_id = 7, "in the handler");
            let inner = tracing::info_span!("reserve", sku = "A");
            let _inner = inner.enter();
            tracing::info!("deeper");
        });
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "in the handler");
        assert_eq!(lines[0]["order_id"], 7);
        for line in &lines {
            let spans = line["spans"].as_array().unwrap();
            assert_eq!(spans[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
            assert_eq!(spans[0]["request_id"], "r-1", "{line}");
        }
        assert_eq!(lines[1]["spans"][1]["sku"], "A");
        assert_eq!(lines[1]["spans"][1]["name"], "reserve");
        assert!(lines[1].get("span").is_none(), "the innermost span is the last of spans, not repeated: {}", lines[1]);
    }

    #[test]
    fn json_lines_hold_every_kind_of_field_escaped() {
        let text = logged(|| {
            let span = tracing::info_span!("handle", topic = "orders", attempt = tracing::field::Empty);
            span.record("attempt", 2);
            let _entered = span.enter();
            let error = std::io::Error::other("disk \"full\"\nretry");
            tracing::warn!(error = %error, ratio = 0.5, nan = f64::NAN, ok = true, delta = -3, "it {} failed", "really");
        });
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "it really failed");
        assert_eq!(line["error"], "disk \"full\"\nretry");
        assert_eq!((line["ratio"].clone(), line["nan"].clone()), (serde_json::json!(0.5), serde_json::json!("NaN")));
        assert_eq!((line["ok"].clone(), line["delta"].clone()), (serde_json::json!(true), serde_json::json!(-3)));
        assert_eq!(line["spans"], serde_json::json!([{ "name": "handle", "topic": "orders", "attempt": 2 }]));
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn installing_metrics_twice_returns_the_same_recorder() {
        let first = install_metrics();
        let second = install_metrics();
        metrics::counter!("weir_http_test_installs_total").increment(1);
        assert!(first.render().contains("weir_http_test_installs_total"));
        assert!(second.render().contains("weir_http_test_installs_total"));
    }

    #[test]
    fn a_second_logger_is_an_error_not_a_panic() {
        // The first may fail too if another test installed one; the second must fail.
        let _ = init_logging(LogFormat::Json);
        assert!(matches!(init_logging(LogFormat::Json), Err(Error::AlreadyInstalled(_))));
    }
}
