//! Steps shared by the curriculum subcommands: config loading, connections, pre-flight checks
//! and driving the engine to the end.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use kka_shared::broker::Broker;
use kka_shared::config::{Config, RawConfig};
use kka_shared::ids::ExperimentId;
use kka_shared::store::Store;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError, EngineOptions, Services};
use crate::plan::Planner;
use crate::preflight::{self, DatasetIdentity};
use crate::report::Report;

/// Loads the config layers: defaults, the `--config` file, `KKA__*` environment variables.
pub fn load_raw_config(file: Option<&Path>) -> anyhow::Result<RawConfig> {
    RawConfig::load(file, std::env::vars()).context("failed to load the config")
}

/// Validates a config. The error names the command-line input to fix.
pub fn validate(raw: RawConfig) -> anyhow::Result<Config> {
    raw.validate().context("invalid config; fix the --config file or the KKA__* environment variables")
}

/// Builds a multi-threaded Tokio runtime for one subcommand.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the Tokio runtime")
}

/// Connects to Redis; the error names the redacted URL and `KKA__STORE__URL`.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::connect(&config.store).await?)
}

/// Connects to RabbitMQ; the error names the redacted URL and `KKA__BROKER__URL`.
pub async fn connect_broker(config: &Config, experiment: &ExperimentId) -> anyhow::Result<Broker> {
    Ok(Broker::connect(&config.broker, &format!("kka-coordinator {experiment}")).await?)
}

/// Hashes the coordinator's dataset copy on a blocking thread.
pub async fn dataset_identity(config: &Config) -> anyhow::Result<DatasetIdentity> {
    let settings = config.dataset.clone();
    let identity = tokio::task::spawn_blocking(move || preflight::dataset_identity(&settings))
        .await
        .context("the dataset hashing thread panicked")??;
    Ok(identity)
}

/// Waits for live workers with the coordinator's dataset, as `curriculum.worker_wait_secs` allows.
pub async fn check_workers(config: &Config, store: &Store, identity: &DatasetIdentity, cancel: &CancellationToken) -> anyhow::Result<()> {
    let wait = Duration::from_secs(config.curriculum.worker_wait_secs);
    preflight::wait_for_workers(store, &config.dataset, identity, wait, cancel).await?;
    Ok(())
}

/// Whether progress bars should be drawn: only when stderr is a terminal.
pub fn progress_enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// Runs the experiment's remaining steps and prints the outcome. Returns the report when the
/// experiment finished, `None` when it stopped early as `--stop-after-round` asked.
pub async fn drive(
    planner: Planner,
    services: Services,
    options: EngineOptions,
    output_dir: PathBuf,
) -> anyhow::Result<Option<Report>> {
    let experiment = planner.experiment.clone();
    let broker = services.broker.clone();
    let engine = Engine::start(planner, services, options, output_dir.clone()).await?;
    let run_dir = output_dir.join(experiment.as_str());

    match engine.run().await {
        Ok(report) => {
            // Late duplicate events of a finished experiment have no reader, so drop its queue.
            if let Err(error) = broker.delete_event_queue(&experiment).await {
                tracing::warn!(%error, %experiment, "failed to delete the event queue of the finished experiment");
            }
            broker.close().await;
            println!("{}", report.table());
            println!("report: {}", run_dir.join("report.json").display());
            Ok(Some(report))
        }
        Err(EngineError::Stopped { round }) => {
            broker.close().await;
            println!("stopped after round {round}; continue with `kka-coordinator resume {experiment}`");
            Ok(None)
        }
        Err(EngineError::Interrupted) => {
            broker.close().await;
            anyhow::bail!("interrupted; continue with `kka-coordinator resume {experiment}`")
        }
        Err(error) => {
            broker.close().await;
            Err(anyhow::Error::new(error).context(format!("experiment {experiment} stopped; the partial report is in {}", run_dir.display())))
        }
    }
}
