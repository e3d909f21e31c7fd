//! `kka-coordinator bench`: throughput and latency of the task path with no-op tasks, through
//! the real broker, store and worker processes.
//!
//! The benchmark starts its own `kka-worker run` processes (the `kka-worker` binary next to this
//! executable unless `--worker-binary` names another) under a fresh queue and key prefix, so it
//! measures a clean system and deletes everything it created afterwards. Two runs follow a
//! warm-up:
//!
//! - throughput: all tasks are published at once as one batch, and the run ends when the last
//!   completion event arrives. Each task's latency runs from its creation to its event.
//! - latency: one task at a time, each published only after the previous task's event arrived.
//!   Each latency runs from just before the publish to the arrival of the event.
//!
//! Every message stays persistent and confirmed, and workers acknowledge only after the Redis
//! commit, exactly as in real runs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use kka_shared::broker::{Broker, EventConsumer};
use kka_shared::config::Config;
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind};
use kka_shared::messages::{NoopTask, TaskBody, TaskMessage, TaskOutcome, TaskSummary};
use kka_shared::store::Store;
use serde::Serialize;
use tokio::process::{Child, Command};

/// Arguments of `kka-coordinator bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml, passed to the workers too.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub tasks: u32,
    /// Tasks in the one-at-a-time latency run.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub latency_tasks: u32,
    /// Tasks sent before the measured runs, to warm up connections and caches.
    #[arg(long, default_value_t = 1_000)]
    pub warmup_tasks: u32,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// worker.concurrency of each worker process.
    #[arg(long, default_value_t = 64)]
    pub worker_concurrency: usize,
    /// broker.prefetch of each worker process.
    #[arg(long, default_value_t = 512)]
    pub prefetch: u16,
    /// The kka-worker binary; defaults to the one next to this executable.
    #[arg(long)]
    pub worker_binary: Option<PathBuf>,
    /// Seconds each run may take before the benchmark fails.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Figures of one measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub tasks: u32,
    pub seconds: f64,
    pub tasks_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Settings and figures of a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub workers: u32,
    pub worker_concurrency: usize,
    pub prefetch: u16,
    pub throughput: RunFigures,
    pub latency: RunFigures,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.throughput;
        let l = &self.latency;
        writeln!(f, "workers {} x concurrency {}, prefetch {}", self.workers, self.worker_concurrency, self.prefetch)?;
        writeln!(
            f,
            "throughput run: {} tasks in {:.3} s = {:.0} tasks/s; end-to-end latency p50 {:.2} ms, p99 {:.2} ms",
            t.tasks, t.seconds, t.tasks_per_sec, t.p50_ms, t.p99_ms
        )?;
        write!(
            f,
            "latency run: {} tasks one at a time = {:.0} tasks/s; end-to-end latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.tasks, l.tasks_per_sec, l.p50_ms, l.p99_ms, l.max_ms
        )
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("failed to load the config")?;
    kka_shared::telemetry::init(&config.telemetry, false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let report = runtime.block_on(run(config, &args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Run the benchmark under a fresh prefix and clean up afterwards.
pub async fn run(config: Config, args: &Args) -> anyhow::Result<BenchReport> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let prefix = format!("bench-{stamp}-{}", std::process::id());
    let config = with_prefix(config, &prefix)?;
    let experiment = ExperimentId::new(prefix.clone())?;
    let store = Store::connect(&config.store).await?;
    let broker = Broker::connect(&config.broker, "kka-coordinator bench").await?;
    let mut events = broker.consume_events(&experiment).await?;
    tracing::info!(%prefix, workers = args.workers, "benchmark started");

    let mut workers = spawn_workers(args, &prefix)?;
    let result = measure(&broker, &store, &mut events, &experiment, args).await;
    stop_workers(&mut workers).await;

    events.close().await;
    if let Err(error) = delete_everything(&broker, &store, &experiment, &prefix).await {
        tracing::warn!(error = %format!("{error:#}"), %prefix, "failed to clean up after the benchmark");
    }
    broker.close().await;
    result
}

fn with_prefix(config: Config, prefix: &str) -> anyhow::Result<Config> {
    let mut raw = config.into_raw();
    raw.broker.queue_prefix = prefix.to_owned();
    raw.store.key_prefix = prefix.to_owned();
    Ok(raw.validate()?)
}

async fn measure(
    broker: &Broker,
    store: &Store,
    events: &mut EventConsumer,
    experiment: &ExperimentId,
    args: &Args,
) -> anyhow::Result<BenchReport> {
    let timeout = Duration::from_secs(args.timeout_secs);
    wait_for_workers(store, args.workers, timeout).await?;
    let mut shards = 0..u32::MAX;

    if args.warmup_tasks > 0 {
        throughput_run(broker, events, experiment, &mut shards, args.warmup_tasks, timeout).await.context("warm-up failed")?;
    }
    let throughput = throughput_run(broker, events, experiment, &mut shards, args.tasks, timeout).await?;
    tracing::info!(tasks_per_sec = throughput.tasks_per_sec, "throughput run done");
    let latency = latency_run(broker, events, experiment, &mut shards, args.latency_tasks, timeout).await?;
    tracing::info!(p50_ms = latency.p50_ms, "latency run done");
    Ok(BenchReport {
        workers: args.workers,
        worker_concurrency: args.worker_concurrency,
        prefetch: args.prefetch,
        throughput,
        latency,
    })
}

fn now_micros() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_micros()).unwrap_or(u64::MAX)
}

fn noop_task(experiment: &ExperimentId, shard: u32) -> TaskMessage {
    let id = TaskId::new(experiment.clone(), RoundIndex(0), TaskKind::Noop, shard);
    let body = TaskBody::Noop(NoopTask { sent_at_micros: now_micros() });
    TaskMessage::new(id, String::new(), Default::default(), body)
}

/// Latencies from 1 µs to one hour, in microseconds. Longer values are recorded as one hour.
fn histogram() -> Histogram<u64> {
    // These bounds and three significant figures are valid, so building cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("the histogram bounds are valid")
}

fn figures(tasks: u32, seconds: f64, latencies: &Histogram<u64>) -> RunFigures {
    let ms = |micros: u64| micros as f64 / 1000.0;
    RunFigures {
        tasks,
        seconds,
        tasks_per_sec: f64::from(tasks) / seconds.max(f64::EPSILON),
        p50_ms: ms(latencies.value_at_quantile(0.5)),
        p99_ms: ms(latencies.value_at_quantile(0.99)),
        max_ms: ms(latencies.max()),
    }
}

/// Publish `count` tasks as one batch and wait for all their events.
async fn throughput_run(
    broker: &Broker,
    events: &mut EventConsumer,
    experiment: &ExperimentId,
    shards: &mut std::ops::Range<u32>,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<RunFigures> {
    let first = shards.start;
    let tasks: Vec<TaskMessage> = shards.take(count as usize).map(|shard| noop_task(experiment, shard)).collect();
    let started = Instant::now();
    let publisher = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.publish_tasks(&tasks).await })
    };

    let mut seen = vec![false; count as usize];
    let mut received = 0;
    let mut latencies = histogram();
    let deadline = started + timeout;
    while received < count {
        let (shard, sent_at_micros) = next_completion(events, deadline).await?;
        let Some(slot) = shard.checked_sub(first).and_then(|offset| seen.get_mut(offset as usize)) else { continue };
        if !*slot {
            *slot = true;
            received += 1;
            latencies.saturating_record(now_micros().saturating_sub(sent_at_micros));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    publisher.await.context("the publishing task panicked")??;
    Ok(figures(count, seconds, &latencies))
}

/// Publish one task at a time, each after the previous task's event arrived.
async fn latency_run(
    broker: &Broker,
    events: &mut EventConsumer,
    experiment: &ExperimentId,
    shards: &mut std::ops::Range<u32>,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<RunFigures> {
    let mut latencies = histogram();
    let started = Instant::now();
    let deadline = started + timeout;
    for shard in shards.take(count as usize) {
        let task = noop_task(experiment, shard);
        let sent = Instant::now();
        let wait_for_event = async {
            loop {
                let (received_shard, _) = next_completion(events, deadline).await?;
                if received_shard == shard {
                    return anyhow::Ok(sent.elapsed());
                }
            }
        };
        let (published, latency) = tokio::join!(broker.publish_task(&task), wait_for_event);
        published?;
        latencies.saturating_record(u64::try_from(latency?.as_micros()).unwrap_or(u64::MAX));
    }
    Ok(figures(count, started.elapsed().as_secs_f64(), &latencies))
}

/// The shard and send time of the next completion event, acknowledged.
async fn next_completion(events: &mut EventConsumer, deadline: Instant) -> anyhow::Result<(u32, u64)> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let received = match tokio::time::timeout(remaining, events.next()).await {
        Ok(Some(received)) => received,
        Ok(None) => bail!("the event consumer stopped because the broker connection was closed"),
        Err(_) => bail!("timed out waiting for completion events; raise --timeout-secs or check the worker logs"),
    };
    if let Err(error) = received.ack().await {
        tracing::warn!(%error, "failed to acknowledge a completion event");
    }
    match &received.event.outcome {
        TaskOutcome::Succeeded { summary: TaskSummary::Noop { sent_at_micros } } => {
            Ok((received.event.task_id.shard, *sent_at_micros))
        }
        TaskOutcome::Succeeded { summary } => bail!("task {} returned {summary:?}, not a noop summary", received.event.task_id),
        TaskOutcome::Failed { error } => bail!("task {} failed: {error}", received.event.task_id),
    }
}

fn worker_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.worker_binary {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("failed to find this executable's path")?;
    let path = exe.with_file_name("kka-worker");
    if !path.is_file() {
        bail!("{} is missing; build it with `cargo build -p kka-worker` or pass --worker-binary", path.display());
    }
    Ok(path)
}

fn spawn_workers(args: &Args, prefix: &str) -> anyhow::Result<Vec<Child>> {
    let binary = worker_binary(args)?;
    let mut workers = Vec::new();
    for index in 1..=args.workers {
        let mut command = Command::new(&binary);
        command.arg("run").arg("--id").arg(format!("{prefix}-w{index}"));
        if let Some(config) = &args.config {
            command.arg("--config").arg(config);
        }
        command
            .env("KKA__BROKER__QUEUE_PREFIX", prefix)
            .env("KKA__STORE__KEY_PREFIX", prefix)
            .env("KKA__WORKER__CONCURRENCY", args.worker_concurrency.to_string())
            .env("KKA__BROKER__PREFETCH", args.prefetch.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            // Per-task logs would cost the workers time that the benchmark should measure.
            command.env("KKA__TELEMETRY__FILTER", "warn");
        }
        let child = command.spawn().with_context(|| format!("failed to start {}", binary.display()))?;
        workers.push(child);
    }
    Ok(workers)
}

async fn wait_for_workers(store: &Store, count: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let live = store.live_workers().await?.iter().filter(|worker| worker.task_kinds.contains(&TaskKind::Noop)).count();
        if live >= count as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("only {live} of {count} workers registered within {timeout:?}; check their output above");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stop the workers with SIGTERM, then SIGKILL those still running after 30 s.
async fn stop_workers(workers: &mut [Child]) {
    for worker in workers.iter() {
        if let Some(pid) = worker.id() {
            let sent = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if !matches!(sent, Ok(status) if status.success()) {
                tracing::warn!(pid, "failed to send SIGTERM to a worker");
            }
        }
    }
    for worker in workers.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(30), worker.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::warn!(%status, "a worker exited with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "failed to wait for a worker"),
            Err(_) => {
                tracing::warn!("a worker did not stop within 30 s; killing it");
                let _ = worker.kill().await;
            }
        }
    }
}

/// Delete the benchmark's queues, exchanges and keys.
async fn delete_everything(broker: &Broker, store: &Store, experiment: &ExperimentId, prefix: &str) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    broker.delete_event_queue(experiment).await?;
    let topology = broker.topology();
    let channel = broker.channel().await?;
    let mut queues: Vec<String> = TaskKind::ALL.iter().map(|kind| topology.task_queue(*kind)).collect();
    queues.push(topology.dead_letter_queue());
    for queue in queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in [topology.dead_letter_exchange(), topology.events_exchange()] {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    channel.close(200, "done".into()).await?;
    store.delete_all(prefix).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_compute_rate_and_percentiles() {
        let mut latencies = histogram();
        for micros in 1..=100 {
            latencies.record(micros * 10).unwrap();
        }
        let result = figures(100, 0.5, &latencies);
        assert_eq!(result.tasks_per_sec, 200.0);
        assert!((result.p50_ms - 0.5).abs() < 0.01, "{}", result.p50_ms);
        assert!((result.p99_ms - 0.99).abs() < 0.01, "{}", result.p99_ms);
        assert!((result.max_ms - 1.0).abs() < 0.01, "{}", result.max_ms);
    }

    #[test]
    fn prefix_replaces_queue_and_key_prefix() {
        let config = with_prefix(Config::from_toml("").unwrap(), "bench-1").unwrap();
        assert_eq!(config.broker.queue_prefix, "bench-1");
        assert_eq!(config.store.key_prefix, "bench-1");
    }
}
