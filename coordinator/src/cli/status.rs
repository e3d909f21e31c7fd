//! `kka-coordinator status`: where an experiment is, or which experiments exist.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use kka_shared::broker::Broker;
use kka_shared::config::Config;
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind};
use kka_shared::store::experiments::{ExperimentState, Phase};
use kka_shared::store::Store;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;

use super::common;
use crate::plan::Planner;

/// Arguments of `kka-coordinator status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment to show; without it, list the experiments under store.key_prefix.
    pub experiment: Option<String>,
    /// Config file for the broker and store settings, layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One experiment in the list.
#[derive(Debug, Serialize)]
pub struct ListEntry {
    pub experiment: String,
    pub status: String,
    pub round: u32,
    pub rounds: u32,
    pub phase: String,
}

/// The status of one experiment.
#[derive(Debug, Serialize)]
pub struct ExperimentStatusView {
    pub experiment: String,
    pub status: String,
    pub error: Option<String>,
    pub round: u32,
    pub rounds: u32,
    pub phase: String,
    /// Tasks of the current phase.
    pub tasks_total: usize,
    pub tasks_done: usize,
    /// Tasks of this experiment recorded as failed for good.
    pub tasks_failed: usize,
    pub hard_pool: u64,
    pub easy_pool: u64,
    /// Messages waiting per queue, or `None` when RabbitMQ could not be asked.
    pub queues: Option<BTreeMap<String, u32>>,
    /// Test AUROC per finished round.
    pub auroc: BTreeMap<u32, f64>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = common::validate(common::load_raw_config(args.config.as_deref())?)?;
    kka_shared::telemetry::init(&config.telemetry, false);
    common::runtime()?.block_on(status(config, args))
}

async fn status(config: Config, args: Args) -> anyhow::Result<()> {
    let store = common::connect_store(&config).await?;
    let Some(name) = &args.experiment else {
        let entries = list(&store).await?;
        print_list(&entries, args.json, store.prefix())?;
        return Ok(());
    };

    let experiment = ExperimentId::new(name.as_str()).context("invalid experiment id")?;
    let view = experiment_status(&config, &store, &experiment).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

async fn list(store: &Store) -> anyhow::Result<Vec<ListEntry>> {
    let mut entries = Vec::new();
    for experiment in store.list_experiments().await? {
        let (Some(state), Some(config)) =
            (store.experiment_state(&experiment).await?, store.experiment_config(&experiment).await?)
        else {
            continue;
        };
        entries.push(ListEntry {
            experiment: experiment.to_string(),
            status: state.status.as_str().to_owned(),
            round: state.round.0,
            rounds: config.curriculum.rounds,
            phase: state.phase.to_string(),
        });
    }
    Ok(entries)
}

fn print_list(entries: &[ListEntry], json: bool, prefix: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
    } else if entries.is_empty() {
        println!("no experiments under store.key_prefix {prefix:?}");
    } else {
        println!("{:<40} {:<9} {:>7} phase", "experiment", "status", "round");
        for entry in entries {
            println!("{:<40} {:<9} {:>3}/{:<3} {}", entry.experiment, entry.status, entry.round, entry.rounds, entry.phase);
        }
    }
    Ok(())
}

async fn experiment_status(config: &Config, store: &Store, experiment: &ExperimentId) -> anyhow::Result<ExperimentStatusView> {
    let not_found = || anyhow::anyhow!("experiment {experiment} not found under store.key_prefix {:?}; run `kka-coordinator status` to list experiments", store.prefix());
    let stored = store.experiment_config(experiment).await?.ok_or_else(not_found)?;
    let state = store.experiment_state(experiment).await?.ok_or_else(not_found)?;
    let planner = Planner { experiment: experiment.clone(), config: stored, dataset_fingerprint: state.dataset_fingerprint.clone() };

    let tasks = phase_task_ids(&planner, &state);
    let done = store.tasks_done(experiment, &tasks).await?;
    let failed = store.failures(experiment).await?;
    let (hard_pool, easy_pool) = store.pool_sizes(experiment).await?;
    let records = store.round_records(experiment).await?;
    let auroc = records.iter().filter_map(|(round, r)| r.training.map(|t| (*round, t.auroc))).collect();

    Ok(ExperimentStatusView {
        experiment: experiment.to_string(),
        status: state.status.as_str().to_owned(),
        error: state.error.clone(),
        round: state.round.0,
        rounds: planner.config.curriculum.rounds,
        phase: state.phase.to_string(),
        tasks_total: tasks.len(),
        tasks_done: done.iter().filter(|d| **d).count(),
        tasks_failed: failed.len(),
        hard_pool,
        easy_pool,
        queues: queue_depths(config, experiment).await,
        auroc,
    })
}

/// Ids of the current phase's tasks; the split runs none.
fn phase_task_ids(planner: &Planner, state: &ExperimentState) -> Vec<TaskId> {
    let round = state.round;
    match state.phase {
        Phase::Generate => planner.generate_tasks(round, state).into_iter().map(|t| t.task_id).collect(),
        Phase::Score => planner.score_tasks(round).into_iter().map(|t| t.task_id).collect(),
        Phase::Split => Vec::new(),
        Phase::Train => vec![TaskId::new(planner.experiment.clone(), round, TaskKind::Train, 0)],
    }
}

/// Messages waiting in the task queues, the dead-letter queue and the experiment's event queue.
/// Returns `None`, after logging why, when RabbitMQ cannot be reached.
async fn queue_depths(config: &Config, experiment: &ExperimentId) -> Option<BTreeMap<String, u32>> {
    let broker = match Broker::connect(&config.broker, "kka-coordinator status").await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::warn!(%error, "failed to connect to RabbitMQ; queue depths are not shown");
            return None;
        }
    };
    let topology = broker.topology().clone();
    let mut names: Vec<String> = [TaskKind::Generate, TaskKind::Score, TaskKind::Train].iter().map(|k| topology.task_queue(*k)).collect();
    names.push(topology.dead_letter_queue());
    names.push(topology.event_queue(experiment));

    let mut depths = BTreeMap::new();
    for name in names {
        if let Some(depth) = queue_depth(&broker, &name).await {
            depths.insert(name, depth);
        }
    }
    broker.close().await;
    Some(depths)
}

/// Messages in one queue, or `None` when it does not exist. A passive declare of a missing
/// queue closes its channel, so each queue gets a fresh channel.
async fn queue_depth(broker: &Broker, name: &str) -> Option<u32> {
    let channel = broker.channel().await.ok()?;
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare(name.into(), options, FieldTable::default()).await.ok()?;
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
    Some(queue.message_count())
}

fn render(view: &ExperimentStatusView) -> String {
    let mut text = format!(
        "experiment {}: {}, round {} of {}, phase {}\n",
        view.experiment, view.status, view.round, view.rounds, view.phase
    );
    if let Some(error) = &view.error {
        text.push_str(&format!("error: {error}\n"));
    }
    text.push_str(&format!(
        "tasks of this phase: {}/{} done, {} failed in the experiment\n",
        view.tasks_done, view.tasks_total, view.tasks_failed
    ));
    text.push_str(&format!("pools: hard {}, easy {}\n", view.hard_pool, view.easy_pool));
    match &view.queues {
        Some(queues) => {
            let listed: Vec<String> = queues.iter().map(|(name, depth)| format!("{name} {depth}")).collect();
            text.push_str(&format!("queues: {}\n", listed.join(", ")));
        }
        None => text.push_str("queues: RabbitMQ unreachable\n"),
    }
    for (round, auroc) in &view.auroc {
        let label = if *round == RoundIndex::BASELINE.0 { " (baseline)" } else { "" };
        text.push_str(&format!("round {round}{label}: test AUROC {auroc:.4}\n"));
    }
    text
}
