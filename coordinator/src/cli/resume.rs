//! `kka-coordinator resume`: continue an interrupted or failed experiment from its Redis state.
//!
//! The experiment sections of the config (dataset, detector, generator, knowledge, curriculum)
//! come from Redis, so the experiment continues exactly as it started. The broker, store,
//! telemetry and worker sections come from this invocation's config.

use std::path::PathBuf;

use anyhow::Context;
use kka_shared::ids::ExperimentId;
use kka_shared::store::experiments::{ExperimentState, ExperimentStatus};
use kka_shared::store::Store;

use super::common;
use crate::engine::{EngineOptions, Services};
use crate::plan::Planner;
use crate::report::Report;

/// Arguments of `kka-coordinator resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Id of the experiment to continue.
    pub experiment: String,
    /// Config file for the broker, store and telemetry settings, layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder; default the one the experiment was started with.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// Stop once this round is done and the next round's generate tasks are queued.
    #[arg(long, hide = true)]
    pub stop_after_round: Option<u32>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let raw = common::load_raw_config(args.config.as_deref())?;
    let local = common::validate(raw.clone())?;
    kka_shared::telemetry::init(&local.telemetry, args.json_logs);
    let experiment = ExperimentId::new(args.experiment.as_str()).context("invalid experiment id")?;
    common::runtime()?.block_on(resume(raw, local, experiment, args))
}

async fn resume(
    raw: kka_shared::config::RawConfig,
    local: kka_shared::config::Config,
    experiment: ExperimentId,
    args: Args,
) -> anyhow::Result<()> {
    let cancel = kka_shared::shutdown::on_signal();
    let store = common::connect_store(&local).await?;
    let (stored, mut state) = load_experiment(&store, &experiment).await?;
    let config = common::validate(stored.clone().apply_to(raw))
        .with_context(|| format!("the stored config of experiment {experiment} is not valid with this build"))?;
    let output = args.output.clone().unwrap_or_else(|| state.output_dir.clone());

    if state.status == ExperimentStatus::Finished {
        let records = store.round_records(&experiment).await?;
        let report = Report::build(experiment.as_str(), &stored, &state, &records);
        let run_dir = output.join(experiment.as_str());
        report.write(&run_dir).with_context(|| format!("failed to write the report to {}", run_dir.display()))?;
        println!("experiment {experiment} already finished\n{}", report.table());
        println!("report: {}", run_dir.join("report.json").display());
        return Ok(());
    }

    let identity = common::dataset_identity(&config).await?;
    if identity.fingerprint != state.dataset_fingerprint {
        anyhow::bail!(
            "the dataset at {} differs from the one experiment {experiment} started with (fingerprint {} instead of {}); restore the original files or start a new experiment",
            config.dataset.path.display(),
            identity.fingerprint,
            state.dataset_fingerprint
        );
    }
    let broker = common::connect_broker(&config, &experiment).await?;
    common::check_workers(&config, &store, &identity, &cancel).await?;

    state = reopen(&store, &experiment, state, output.clone()).await?;
    tracing::info!(%experiment, round = state.round.0, phase = %state.phase, "resuming experiment");
    let planner = Planner { experiment, config: stored, dataset_fingerprint: identity.fingerprint };
    let options = EngineOptions { progress: common::progress_enabled(), stop_after_round: args.stop_after_round, cancel };
    common::drive(planner, Services { broker, store }, options, output).await?;
    Ok(())
}

async fn load_experiment(
    store: &Store,
    experiment: &ExperimentId,
) -> anyhow::Result<(kka_shared::store::experiments::ExperimentConfig, ExperimentState)> {
    let not_found = || {
        anyhow::anyhow!(
            "experiment {experiment} not found under store.key_prefix {:?}; list experiments with `kka-coordinator status`",
            store.prefix()
        )
    };
    let stored = store.experiment_config(experiment).await?.ok_or_else(not_found)?;
    let state = store.experiment_state(experiment).await?.ok_or_else(not_found)?;
    Ok((stored, state))
}

/// Marks the experiment running again. A failed experiment's task failures are cleared, so
/// the tasks that failed run again.
async fn reopen(store: &Store, experiment: &ExperimentId, state: ExperimentState, output: PathBuf) -> anyhow::Result<ExperimentState> {
    if state.status == ExperimentStatus::Failed {
        let failures = store.failures(experiment).await?;
        if !failures.is_empty() {
            let mut pipe = redis::pipe();
            for task in failures.keys() {
                store.add_clear_failure(&mut pipe, task);
            }
            let () = pipe.query_async(&mut store.connection()).await.context("failed to clear the task failures in Redis")?;
        }
        tracing::info!(%experiment, cleared = failures.len(), error = state.error.as_deref().unwrap_or(""), "clearing the failure of the last run");
    }
    let state = ExperimentState { status: ExperimentStatus::Running, error: None, output_dir: output, ..state };
    store.save_state(experiment, &state).await?;
    Ok(state)
}
