//! `weir`: the command-line front of the platform. Today it runs the kernel's benchmarks;
//! `up`, `serve`, `dlq` and the rest arrive with the services.

mod bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weir", version, about = "Event-driven microservices: run, inspect and measure Weir")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the platform on this machine and print a table.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench { scenario } => bench::run(scenario).await,
    }
}
