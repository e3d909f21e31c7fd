//! `kka-worker run`: consume tasks from RabbitMQ until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kka_shared::broker::Broker;
use kka_shared::config::Config;
use kka_shared::store::Store;

use crate::runner::{self, Runner};

/// How long the process waits at exit for handler threads that ignored the cancel token.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Arguments of `kka-worker run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write logs as JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// Worker id for logs, events and the liveness record; overrides worker.id.
    #[arg(long)]
    pub id: Option<String>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("failed to load the config")?;
    kka_shared::telemetry::init(&config.telemetry, args.json_logs);
    let worker = runner::worker_id(args.id.as_deref(), &config.worker).context("invalid worker id; use --id or worker.id")?;
    if config.worker.threads > 0 {
        tch::set_num_threads(i32::try_from(config.worker.threads).unwrap_or(i32::MAX));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kka-worker")
        .build()
        .context("failed to start the async runtime")?;
    let result = runtime.block_on(run(config, worker));
    // A handler that ignores its cancel token would otherwise keep the process alive.
    runtime.shutdown_timeout(EXIT_WAIT);
    result
}

async fn run(config: Config, worker: kka_shared::ids::WorkerId) -> anyhow::Result<()> {
    let shutdown = kka_shared::shutdown::on_signal();
    let store = Store::connect(&config.store).await.context("failed to connect to Redis")?;
    let broker = Broker::connect(&config.broker, &format!("kka-worker {worker}"))
        .await
        .context("failed to connect to RabbitMQ")?;

    let handlers = runner::handlers(&config);
    let runner = Runner::new(Arc::new(config), worker, store, broker.clone(), handlers);
    let result = runner.run(shutdown).await;
    broker.close().await;
    result.context("the worker stopped with an error")?;
    Ok(())
}
