//! `weir`: the command-line front of the platform: `weir up` runs every service in one
//! process on the embedded default, `weir serve` one service on PostgreSQL and NATS JetStream;
//! `weir events tail` follows its bus and `weir dlq` reads and
//! redrives its dead letters; `weir replay` rebuilds a read model; `weir bench` measures.

mod bench;
mod bus;
mod classifier;
mod classify;
mod data_dir;
mod dlq;
mod events;
mod gateway;
mod replay;
mod runtime;
mod samples;
mod serve;
mod services;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weir", version, about = "Event-driven microservices: run, inspect and measure Weir")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process on the embedded default (SQLite under a data
    /// directory, keys generated on first run) and serve the HTTP API.
    Up(up::UpArgs),
    /// Run one service in its own process, on PostgreSQL and NATS JetStream; run several
    /// processes of a service to share its work.
    Serve(serve::ServeArgs),
    /// Measure the platform on this machine and print a table.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
    /// The embedded bus's messages, read beside a running `weir up`.
    Events {
        #[command(subcommand)]
        command: events::Command,
    },
    /// Rebuild a read model from its service's event store (with `weir up` stopped).
    Replay(replay::ReplayArgs),
    /// Dead letters of the embedded bus: list, show, redrive or discard them.
    Dlq {
        #[command(subcommand)]
        command: dlq::Command,
    },
    /// Write example documents to upload: a PDF invoice, a scanned contract, a receipt image.
    Samples(samples::SamplesArgs),
    /// Classify text with the running classification service (a gRPC client).
    Classify(classify::ClassifyArgs),
    /// Train, evaluate and regenerate the corpus of the document classifier.
    Classifier {
        #[command(subcommand)]
        command: classifier::Command,
    },
    /// Parts of `weir up` that run as their own processes.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Subcommand)]
enum Internal {
    /// One document's OCR, text extraction and thumbnail, isolated from `weir up` (a request as
    /// JSON on stdin, reports on stdout).
    ProcessDocument,
}

/// An error ends the command with one line saying what went wrong and why (`error: …: …`, the
/// causes joined), never a stack trace — even under `RUST_BACKTRACE`, which anyhow would
/// otherwise honour.
fn main() -> ExitCode {
    run(Cli::parse().command).unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        // No async runtime: the worker is one blocking job in its own process.
        Command::Internal(Internal::ProcessDocument) => Ok(weir_processing::worker::main()),
        Command::Up(args) => block_on(up::run(args)),
        Command::Serve(args) => block_on(serve::run(args)),
        Command::Bench { scenario } => block_on(bench::run(scenario)),
        Command::Classify(args) => block_on(classify::run(args)),
        Command::Dlq { command } => block_on(dlq::run(command)),
        Command::Events { command } => block_on(events::run(command)),
        Command::Replay(args) => block_on(replay::run(args)),
        Command::Samples(args) => samples::run(args).map(|()| ExitCode::SUCCESS),
        Command::Classifier { command } => classifier::run(command).map(|()| ExitCode::SUCCESS),
    }
}

fn block_on(job: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()?.block_on(job)?;
    Ok(ExitCode::SUCCESS)
}
