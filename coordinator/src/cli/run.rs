//! `kka-coordinator run`: start a KKA curriculum experiment and run it to the end.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use kka_shared::config::Config;
use kka_shared::ids::{ExperimentId, RoundIndex};
use kka_shared::messages::GeneratorState;
use kka_shared::store::experiments::{ExperimentConfig, ExperimentState, ExperimentStatus, Phase};

use super::common;
use crate::engine::{EngineOptions, Services};
use crate::plan::Planner;

/// Arguments of `kka-coordinator run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Experiment id; default `<format>-c<classes>-<unix seconds>`.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Normal class label, replacing dataset.normal_classes.
    #[arg(long)]
    pub normal_class: Option<u32>,
    /// Folder for `<experiment>/report.json`, `report.md`, `report.svg` and `dpo/`.
    #[arg(long, default_value = "runs")]
    pub output: PathBuf,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// Stop once this round is done and the next round's generate tasks are queued.
    #[arg(long, hide = true)]
    pub stop_after_round: Option<u32>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    kka_shared::telemetry::init(&config.telemetry, args.json_logs);
    let experiment = match &args.experiment {
        Some(name) => ExperimentId::new(name.as_str()).context("invalid --experiment")?,
        None => default_experiment_id(&config)?,
    };
    common::runtime()?.block_on(run(config, experiment, args))
}

/// Loads the config, applies `--normal-class` and validates the result.
fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut raw = common::load_raw_config(args.config.as_deref())?;
    if let Some(class) = args.normal_class {
        raw.dataset.protocol.normal_classes = vec![class];
    }
    common::validate(raw)
}

fn default_experiment_id(config: &Config) -> anyhow::Result<ExperimentId> {
    let classes: Vec<String> = config.dataset.protocol.normal_classes.iter().map(u32::to_string).collect();
    let format = serde_json::to_value(config.dataset.format)?;
    let name = format!("{}-c{}-{}", format.as_str().unwrap_or("data"), classes.join("-"), unix_seconds());
    ExperimentId::new(name).context("the default experiment id is invalid; pass --experiment")
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

async fn run(config: Config, experiment: ExperimentId, args: Args) -> anyhow::Result<()> {
    let cancel = kka_shared::shutdown::on_signal();
    let store = common::connect_store(&config).await?;
    if store.experiment_exists(&experiment).await? {
        anyhow::bail!(
            "experiment {experiment} already exists under store.key_prefix {:?}; continue it with `kka-coordinator resume {experiment}` or pick another --experiment",
            store.prefix()
        );
    }
    let broker = common::connect_broker(&config, &experiment).await?;
    let identity = common::dataset_identity(&config).await?;
    common::check_workers(&config, &store, &identity, &cancel).await?;

    let state = ExperimentState {
        round: RoundIndex::BASELINE,
        phase: Phase::Train,
        status: ExperimentStatus::Running,
        generator_state: GeneratorState::default(),
        hard_examples: Vec::new(),
        easy_examples: Vec::new(),
        dataset_fingerprint: identity.fingerprint.clone(),
        output_dir: args.output.clone(),
        error: None,
        created_at: unix_seconds(),
    };
    let experiment_config = ExperimentConfig::from_config(&config);
    store.create_experiment(&experiment, &experiment_config, &state).await?;
    tracing::info!(%experiment, rounds = config.curriculum.rounds, "experiment created");

    let planner = Planner { experiment, config: experiment_config, dataset_fingerprint: identity.fingerprint };
    let options = EngineOptions { progress: common::progress_enabled(), stop_after_round: args.stop_after_round, cancel };
    common::drive(planner, Services { broker, store }, options, args.output).await?;
    Ok(())
}
