//! `weir bench`: throughput and latency of the platform with durable settings, printed as tables.

mod bus;
mod documents;
mod orders;
mod transports;

use std::time::Duration;

use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum Scenario {
    /// Every transport (SQLite log, NATS, Kafka, RabbitMQ, Redis) beside its broker's own client:
    /// publish, consume + ack, end-to-end latency; then event-store appends on SQLite and
    /// PostgreSQL.
    Bus(bus::BusArgs),
    /// Load a running `weir up`: register users, place orders at a set concurrency for a set
    /// time, wait for every order to finish, and report throughput, latency and memory.
    Orders(orders::OrdersArgs),
    /// The Tuesday test: flood document processing with multi-page scans while probing
    /// `GET /v1/documents` and `POST /v1/orders`; report their latency, pages/s through the
    /// pipeline and raw `tesseract` pages/s on the same pages.
    Documents(documents::DocumentsArgs),
}

pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Bus(args) => bus::run(args).await,
        Scenario::Orders(args) => orders::run(args).await,
        Scenario::Documents(args) => documents::run(args).await,
    }
}

/// Microseconds from 1 µs to 60 s, three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {per_sec}").unwrap().progress_chars("=> "),
    );
    bar
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

fn per_second(count: u64, elapsed: Duration) -> String {
    format!("{:.0}", count as f64 / elapsed.as_secs_f64().max(1e-9))
}
