use clap::{Parser, Subcommand};

/// kka coordinator: schedules KKA curriculum rounds over RabbitMQ and Redis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a KKA curriculum experiment: a Deep SVDD baseline, then rounds of generating,
    /// scoring, splitting and training.
    Run(kka_coordinator::cli::run::Args),
    /// Continue an interrupted or failed experiment from its state in Redis.
    Resume(kka_coordinator::cli::resume::Args),
    /// Show an experiment's round, phase, task counts, queue depths and pools, or list experiments.
    Status(kka_coordinator::cli::status::Args),
    /// Write a stored round's anomalies as PNG files with a manifest.
    Export(kka_coordinator::cli::export::Args),
    /// Send no-op tasks through RabbitMQ to the workers and collect their results from Redis.
    Smoke(kka_coordinator::cli::smoke::Args),
    /// Measure task throughput and latency of the broker and store with no-op tasks.
    Bench(kka_coordinator::cli::bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => kka_coordinator::cli::run::main(args),
        Command::Resume(args) => kka_coordinator::cli::resume::main(args),
        Command::Status(args) => kka_coordinator::cli::status::main(args),
        Command::Export(args) => kka_coordinator::cli::export::main(args),
        Command::Smoke(args) => kka_coordinator::cli::smoke::main(args),
        Command::Bench(args) => kka_coordinator::cli::bench::main(args),
    }
}
