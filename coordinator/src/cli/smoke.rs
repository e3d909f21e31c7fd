//! `kka-coordinator smoke`: send no-op tasks through RabbitMQ to the workers, wait for their
//! completion events and check each task's summary in Redis.
//!
//! The smoke job uses its own experiment id, `smoke-<unix time>-<pid>`, so it can run beside real
//! experiments on the same broker and Redis, and it deletes its event queue and keys at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kka_shared::broker::{Broker, EventConsumer};
use kka_shared::config::Config;
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::{NoopTask, TaskBody, TaskMessage, TaskOutcome, TaskSummary};
use kka_shared::store::Store;

/// Arguments of `kka-coordinator smoke`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of no-op tasks to send.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tasks: u32,
    /// Seconds to wait for all completion events before failing.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Wait, within the timeout, until this many live workers consume noop tasks before
    /// sending; 0 sends at once and lets the tasks wait in the queue.
    #[arg(long, default_value_t = 0)]
    pub wait_workers: usize,
    /// Write logs as JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("failed to load the config")?;
    kka_shared::telemetry::init(&config.telemetry, args.json_logs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let report = runtime.block_on(run(&config, &args))?;
    println!("{report}");
    Ok(())
}

/// Result of a successful smoke job.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    pub tasks: u32,
    /// Seconds from the first publish to the last completion event.
    pub seconds: f64,
    /// How many tasks each worker completed.
    pub served_by: BTreeMap<WorkerId, u32>,
}

impl std::fmt::Display for SmokeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workers: Vec<String> = self.served_by.iter().map(|(worker, count)| format!("{worker} ({count})")).collect();
        write!(f, "smoke ok: {} tasks in {:.3} s, served by {}", self.tasks, self.seconds, workers.join(", "))
    }
}

/// Run the smoke job: publish, collect events, verify Redis, clean up.
pub async fn run(config: &Config, args: &Args) -> anyhow::Result<SmokeReport> {
    let experiment = smoke_experiment_id()?;
    let store = Store::connect(&config.store).await?;
    let broker = Broker::connect(&config.broker, &format!("kka-coordinator {experiment}")).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    tracing::info!(%experiment, tasks = args.tasks, "smoke job started");

    let result = async {
        wait_for_workers(&store, args.wait_workers, deadline).await?;
        let mut events = broker.consume_events(&experiment).await?;
        let tasks = noop_tasks(config, &experiment, args.tasks);
        let started = Instant::now();
        broker.publish_tasks(&tasks).await.context("failed to publish the smoke tasks")?;
        let served_by = collect_events(&mut events, &store, &tasks, deadline).await;
        let seconds = started.elapsed().as_secs_f64();
        events.close().await;
        let served_by = served_by?;
        verify_summaries(&store, &tasks).await?;
        Ok(SmokeReport { tasks: args.tasks, seconds, served_by })
    }
    .await;

    clean_up(&broker, &store, &experiment).await;
    broker.close().await;
    result
}

fn smoke_experiment_id() -> anyhow::Result<ExperimentId> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(ExperimentId::new(format!("smoke-{}-{}", now.as_secs(), std::process::id()))?)
}

fn now_micros() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

fn noop_tasks(config: &Config, experiment: &ExperimentId, count: u32) -> Vec<TaskMessage> {
    let sent_at_micros = now_micros();
    (0..count)
        .map(|shard| {
            let id = TaskId::new(experiment.clone(), RoundIndex(0), TaskKind::Noop, shard);
            // Noop tasks read no data, so they carry no dataset fingerprint.
            let body = TaskBody::Noop(NoopTask { sent_at_micros });
            TaskMessage::new(id, String::new(), config.dataset.protocol.clone(), body)
        })
        .collect()
}

/// Wait until `count` live workers consume noop tasks, or fail at the deadline.
async fn wait_for_workers(store: &Store, count: usize, deadline: Instant) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    loop {
        let workers = store.live_workers().await?;
        let serving = workers.iter().filter(|worker| worker.task_kinds.contains(&TaskKind::Noop)).count();
        if serving >= count {
            tracing::info!(serving, "workers ready");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {count} live workers that consume noop tasks, found {serving}; start them with `kka-worker run` using the same broker and store prefixes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for one completion event per task. Returns how many tasks each worker completed.
async fn collect_events(
    events: &mut EventConsumer,
    store: &Store,
    tasks: &[TaskMessage],
    deadline: Instant,
) -> anyhow::Result<BTreeMap<WorkerId, u32>> {
    let mut missing: BTreeSet<TaskId> = tasks.iter().map(|task| task.task_id.clone()).collect();
    let mut served_by = BTreeMap::new();
    let mut failures = Vec::new();
    while !missing.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(remaining, events.next()).await else {
            return Err(timeout_error(store, tasks.len(), &missing).await);
        };
        let Some(received) = received else { bail!("the event consumer stopped because the broker connection was closed") };
        let event = &received.event;
        // A redelivered task sends its event again; count each task once.
        if missing.remove(&event.task_id) {
            *served_by.entry(event.worker.clone()).or_insert(0) += 1;
            if let TaskOutcome::Failed { error } = &event.outcome {
                failures.push(format!("{}: {error}", event.task_id));
            }
        }
        if let Err(error) = received.ack().await {
            tracing::warn!(%error, "failed to acknowledge a completion event");
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} smoke tasks failed: {}", failures.len(), tasks.len(), failures.join("; "));
    }
    Ok(served_by)
}

async fn timeout_error(store: &Store, total: usize, missing: &BTreeSet<TaskId>) -> anyhow::Error {
    let workers = match store.live_workers().await {
        Ok(workers) => workers.iter().filter(|worker| worker.task_kinds.contains(&TaskKind::Noop)).count().to_string(),
        Err(error) => format!("unknown ({error})"),
    };
    let examples: Vec<String> = missing.iter().take(3).map(ToString::to_string).collect();
    anyhow::anyhow!(
        "timed out: {} of {total} completion events missing (for example {}); live workers consuming noop tasks: {workers}; start workers with `kka-worker run` using the same broker.queue_prefix, or raise --timeout-secs",
        missing.len(),
        examples.join(", ")
    )
}

/// Checks that Redis contains the summary that each task's completion event promised.
async fn verify_summaries(store: &Store, tasks: &[TaskMessage]) -> anyhow::Result<()> {
    for task in tasks {
        let TaskBody::Noop(body) = &task.body else { continue };
        let expected = TaskSummary::Noop { sent_at_micros: body.sent_at_micros };
        match store.task_summary(&task.task_id).await? {
            Some(summary) if summary == expected => {}
            Some(summary) => bail!("task {} has summary {summary:?} in Redis, expected {expected:?}", task.task_id),
            None => bail!("task {} sent a completion event but has no summary in Redis", task.task_id),
        }
        if !store.is_task_done(&task.task_id).await? {
            bail!("task {} has a summary but is not in the done set", task.task_id);
        }
    }
    Ok(())
}

/// Delete the smoke experiment's event queue and keys; failures are logged, not returned.
async fn clean_up(broker: &Broker, store: &Store, experiment: &ExperimentId) {
    if let Err(error) = broker.delete_event_queue(experiment).await {
        tracing::warn!(%error, %experiment, "failed to delete the smoke event queue");
    }
    let keys: Vec<String> = ["done", "results", "failed"].iter().map(|suffix| store.experiment_key(experiment, suffix)).collect();
    let deleted: Result<u64, _> = redis::AsyncCommands::del(&mut store.connection(), &keys).await;
    if let Err(error) = deleted {
        tracing::warn!(%error, %experiment, "failed to delete the smoke experiment's keys");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_names_workers_and_counts() {
        let mut served_by = BTreeMap::new();
        served_by.insert(WorkerId::new("w1").unwrap(), 3);
        served_by.insert(WorkerId::new("w2").unwrap(), 2);
        let report = SmokeReport { tasks: 5, seconds: 0.25, served_by };
        assert_eq!(report.to_string(), "smoke ok: 5 tasks in 0.250 s, served by w1 (3), w2 (2)");
    }

    #[test]
    fn smoke_tasks_are_noop_with_distinct_shards() {
        let config = Config::from_toml("").unwrap();
        let experiment = ExperimentId::new("smoke-1").unwrap();
        let tasks = noop_tasks(&config, &experiment, 4);
        let shards: Vec<u32> = tasks.iter().map(|task| task.task_id.shard).collect();
        assert_eq!(shards, [0, 1, 2, 3]);
        assert!(tasks.iter().all(|task| task.kind() == TaskKind::Noop));
    }
}
