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
    /// Send no-op tasks through RabbitMQ to the workers and collect their results from Redis.
    Smoke(kka_coordinator::cli::smoke::Args),
    /// Measure task throughput and latency of the broker and store with no-op tasks.
    Bench(kka_coordinator::cli::bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Smoke(args) => kka_coordinator::cli::smoke::main(args),
        Command::Bench(args) => kka_coordinator::cli::bench::main(args),
    }
}
