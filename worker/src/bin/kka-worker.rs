use clap::{Parser, Subcommand};

/// kka worker: runs KKA generate, score and train tasks with libtorch.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume tasks from RabbitMQ until SIGINT or SIGTERM.
    Run(kka_worker::cli::run::Args),
    /// Train a detector on one normal class and evaluate it, without RabbitMQ or Redis.
    Baseline(kka_worker::cli::baseline::Args),
    /// Generate anomaly images into a folder, without RabbitMQ or Redis.
    Generate(kka_worker::cli::generate::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => kka_worker::cli::run::main(args),
        Command::Baseline(args) => kka_worker::cli::baseline::main(args),
        Command::Generate(args) => kka_worker::cli::generate::main(args),
    }
}
