//! `weir`: the command-line front of the platform: `weir up` runs every service in one
//! process on the embedded default; `weir bench` measures.

mod bench;
mod data_dir;
mod up;

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
    /// Measure the platform on this machine and print a table.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up(args) => up::run(args).await,
        Command::Bench { scenario } => bench::run(scenario).await,
    }
}
