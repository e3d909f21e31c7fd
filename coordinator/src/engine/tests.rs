//! Engine tests against the real RabbitMQ and Redis, with a stub worker that completes tasks with
//! deterministic fake results instead of libtorch work.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kka_shared::broker::Broker;
use kka_shared::config::Config;
use kka_shared::ids::{AnomalyId, ExperimentId, RoundIndex, TaskKind, WorkerId};
use kka_shared::messages::{CompletionEvent, TaskBody, TaskMessage, TaskOutcome, TaskSummary};
use kka_shared::records::{AnomalyRecord, CheckpointMeta, Recipe, ScoreRecord};
use kka_shared::store::experiments::{ExperimentConfig, ExperimentState, ExperimentStatus, Phase, PoolKind};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, EngineOptions, Services};
use crate::plan::Planner;

const SMALL: &str = "[curriculum]\nrounds = 2\nanomalies_per_round = 30\ngenerate_shard_size = 8\nscore_shard_size = 7\nlabelled_anomalies = 12\npool_cap = 100\nphase_timeout_secs = 30\n";

/// Behaviour of the stub worker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StubMode {
    Succeed,
    /// Report the first score task as failed for good.
    FailScore,
}

/// A fake score in [0, 2): stable per (anomaly, round), and lower for concept "c0" so that the
/// generator update has something to learn.
fn fake_score(id: &AnomalyId, round: RoundIndex, concept: &str) -> f64 {
    let hash = crate::curriculum::seeds::derive_seed(u64::from(id.index), RoundIndex(id.round.0 * 100 + round.0), crate::curriculum::seeds::SeedPurpose::Task(TaskKind::Score, id.shard));
    let base = (hash % 1000) as f64 / 1000.0;
    if concept == "c0" {
        base * 0.6
    } else {
        base + 0.5
    }
}

fn concept_of(seed: u64, index: u32) -> String {
    format!("c{}", (seed.wrapping_add(u64::from(index))) % 3)
}

/// Runs the stub worker on a thread of its own, with its own connections, until `cancel`.
fn spawn_stub_worker(config: Config, mode: StubMode, cancel: CancellationToken) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let broker = Broker::connect(&config.broker, "stub-worker").await.expect("connect RabbitMQ");
            let store = Store::connect(&config.store).await.expect("connect Redis");
            stub_worker(&broker, &store, mode, cancel).await;
            broker.close().await;
        });
    })
}

async fn stub_worker(broker: &Broker, store: &Store, mode: StubMode, cancel: CancellationToken) {
    let mut consumer = broker.consume_tasks(&[TaskKind::Generate, TaskKind::Score, TaskKind::Train]).await.expect("consume tasks");
    let worker = WorkerId::new("stub").expect("valid worker id");
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => break,
            incoming = consumer.next() => match incoming { Some(incoming) => incoming, None => break },
        };
        let Some(task) = broker.decode_or_dead_letter::<TaskMessage>(&incoming).await else { continue };
        let outcome = if mode == StubMode::FailScore && task.kind() == TaskKind::Score {
            store.record_task_failure(&task.task_id, "stub failure").await.expect("record failure");
            TaskOutcome::Failed { error: "stub failure".into() }
        } else {
            let summary = answer(store, &task).await;
            TaskOutcome::Succeeded { summary }
        };
        let event = CompletionEvent::new(task.task_id.clone(), worker.clone(), 0.01, outcome);
        broker.publish_event(&event).await.expect("publish event");
        incoming.ack().await.expect("ack");
    }
    consumer.close().await;
}

async fn answer(store: &Store, task: &TaskMessage) -> TaskSummary {
    let experiment = task.experiment().clone();
    let mut pipe = redis::pipe();
    let summary = match &task.body {
        TaskBody::Generate(generate) => {
            for index in 0..generate.count {
                let id = AnomalyId::new(experiment.clone(), task.round(), task.task_id.shard, index);
                let concept_id = concept_of(generate.seed, index);
                let record = AnomalyRecord {
                    id,
                    task_id: task.task_id.clone(),
                    round: task.round(),
                    concept: format!("a {concept_id} defect"),
                    concept_id,
                    recipe: Recipe { operation: "blur".into(), params: BTreeMap::new(), severity: 0.5 },
                    severity: f64::from(index % 10) / 10.0,
                    generator: "stub".into(),
                    generator_version: "1".into(),
                    source_index: Some(index),
                    seed: generate.seed,
                    shape: [1, 2, 2],
                };
                store.add_anomaly_writes(&mut pipe, &record, &[0, 64, 128, 255]);
            }
            TaskSummary::Generated { count: generate.count }
        }
        TaskBody::Score(score) => {
            let records = store.anomaly_records(&score.anomalies).await.expect("read anomalies");
            for round in &score.checkpoint_rounds {
                let scores: Vec<(AnomalyId, ScoreRecord)> = score
                    .anomalies
                    .iter()
                    .zip(&records)
                    .map(|(id, record)| {
                        let concept = record.as_ref().map_or("", |r| r.concept_id.as_str());
                        (id.clone(), ScoreRecord { score: fake_score(id, *round, concept), knn_distance: 1.0 })
                    })
                    .collect();
                store.add_score_writes(&mut pipe, &experiment, *round, &scores);
            }
            TaskSummary::Scored { count: u32::try_from(score.anomalies.len()).expect("small") }
        }
        TaskBody::Train(train) => {
            let auroc = 0.7 + 0.01 * f64::from(task.round().0) + 0.001 * train.anomalies.len() as f64;
            let meta = CheckpointMeta {
                round: task.round(),
                detector: train.detector.kind,
                auroc,
                aupr: auroc / 2.0,
                epochs: 1,
                train_seconds: 0.01,
                validation_scores: (0..20).map(|i| f64::from(i) / 20.0).collect(),
                validation_knn_distances: vec![1.0; 20],
                dataset_fingerprint: task.dataset_fingerprint.clone(),
            };
            store.add_checkpoint_writes(&mut pipe, &experiment, b"stub checkpoint", &meta);
            TaskSummary::Trained { auroc, aupr: auroc / 2.0, train_seconds: 0.01, epochs: 1 }
        }
        TaskBody::Noop(noop) => TaskSummary::Noop { sent_at_micros: noop.sent_at_micros },
    };
    store.commit_task(&task.task_id, pipe, &summary).await.expect("commit task");
    summary
}

/// A running stub worker, stopped on drop so that a failed test does not leave it consuming
/// (and re-declaring) queues after the prefix was cleaned up.
struct StubWorker {
    cancel: CancellationToken,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl StubWorker {
    fn stop(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            handle.join().expect("stub worker ends");
        }
    }
}

impl Drop for StubWorker {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

struct Harness {
    prefix: TestPrefix,
    services: Services,
    output: tempfile::TempDir,
}

impl Harness {
    async fn new(label: &str, overrides: &str) -> Harness {
        let prefix = TestPrefix::new(label, overrides);
        let broker = Broker::connect(&prefix.config.broker, "engine-test").await.expect("RabbitMQ must run for these tests");
        let store = Store::connect(&prefix.config.store).await.expect("Redis must run for these tests");
        Harness { prefix, services: Services { broker, store }, output: tempfile::tempdir().expect("temp dir") }
    }

    fn config(&self) -> &Config {
        &self.prefix.config
    }

    fn start_worker(&self, mode: StubMode) -> StubWorker {
        let cancel = CancellationToken::new();
        let handle = spawn_stub_worker(self.config().clone(), mode, cancel.clone());
        StubWorker { cancel, handle: Some(handle) }
    }

    async fn create(&self, name: &str) -> Planner {
        let experiment = self.prefix.experiment(name);
        let config = ExperimentConfig::from_config(self.config());
        let state = ExperimentState {
            round: RoundIndex::BASELINE,
            phase: Phase::Train,
            status: ExperimentStatus::Running,
            generator_state: Default::default(),
            hard_examples: vec![],
            easy_examples: vec![],
            dataset_fingerprint: "fp".into(),
            output_dir: self.output.path().to_owned(),
            error: None,
            created_at: 0,
        };
        self.services.store.create_experiment(&experiment, &config, &state).await.expect("create experiment");
        Planner { experiment, config, dataset_fingerprint: "fp".into() }
    }

    async fn run(&self, planner: &Planner, stop_after_round: Option<u32>) -> Result<crate::report::Report, EngineError> {
        let options = EngineOptions { progress: false, stop_after_round, cancel: CancellationToken::new() };
        let engine = Engine::start(planner.clone(), self.services.clone(), options, self.output.path().to_owned()).await?;
        engine.run().await
    }

    /// Pools keyed by (round, shard, index), so experiments with different ids compare.
    async fn pools(&self, experiment: &ExperimentId) -> Vec<Vec<((u32, u32, u32), String)>> {
        let mut pools = Vec::new();
        for kind in [PoolKind::Hard, PoolKind::Easy] {
            let pool = self.services.store.pool(experiment, kind).await.expect("read pool");
            pools.push(pool.into_iter().map(|(id, score)| ((id.round.0, id.shard, id.index), format!("{score:.9}"))).collect());
        }
        pools
    }
}

fn dpo_lines(dir: &Path, experiment: &ExperimentId, round: u32) -> Vec<serde_json::Value> {
    let path = dir.join(experiment.as_str()).join("dpo").join(format!("round_{round}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines().map(|line| serde_json::from_str(line).expect("DPO line is JSON")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_runs_rounds_to_the_end() {
    let harness = Harness::new("engine-full", SMALL).await;
    let worker = harness.start_worker(StubMode::Succeed);
    let planner = harness.create("full").await;

    let report = harness.run(&planner, None).await.expect("experiment finishes");
    worker.stop();

    assert_eq!(report.status, "finished");
    assert_eq!(report.baseline_auroc, Some(0.7));
    assert_eq!(report.rounds.len(), 2);
    for round in &report.rounds {
        assert_eq!(round.generated, 30);
        assert!(round.auroc.is_some(), "round {} has no AUROC", round.round);
        assert!(round.hard_fraction_new > 0.0, "{}", round.hard_fraction_new);
        assert!(round.hard_fraction_new < 1.0, "{}", round.hard_fraction_new);
        assert_eq!(round.labelled_hard + round.labelled_easy, 12);
    }
    assert_eq!(report.rounds[0].hard_ratio, 0.25);
    assert_eq!(report.rounds[1].hard_ratio, 0.75);
    assert_eq!(report.rounds[1].hard_pool + report.rounds[1].easy_pool, 60);

    let state = harness.services.store.experiment_state(&planner.experiment).await.unwrap().unwrap();
    assert_eq!(state.status, ExperimentStatus::Finished);
    let weights = &state.generator_state.concept_weights;
    assert!(weights["c0"] > weights["c1"], "the stub's hard concept c0 should gain weight: {weights:?}");

    let run_dir = harness.output.path().join(planner.experiment.as_str());
    for file in ["report.json", "report.md", "report.svg"] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }
    let pairs = dpo_lines(harness.output.path(), &planner.experiment, 1);
    assert!(!pairs.is_empty());
    assert!(pairs[0]["prompt"].as_str().unwrap().contains("T-shirt/top"));
    assert_ne!(pairs[0]["chosen"], pairs[0]["rejected"]);
    harness.prefix.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_run_matches_uninterrupted_run() {
    let harness = Harness::new("engine-resume", SMALL).await;
    let worker = harness.start_worker(StubMode::Succeed);

    let straight = harness.create("straight").await;
    harness.run(&straight, None).await.expect("uninterrupted run finishes");

    let interrupted = harness.create("interrupted").await;
    let stopped = harness.run(&interrupted, Some(1)).await.unwrap_err();
    assert!(matches!(stopped, EngineError::Stopped { round: RoundIndex(1) }), "{stopped}");
    let state = harness.services.store.experiment_state(&interrupted.experiment).await.unwrap().unwrap();
    assert_eq!((state.round, state.phase), (RoundIndex(2), Phase::Generate));
    harness.run(&interrupted, None).await.expect("resumed run finishes");
    worker.stop();

    assert_eq!(harness.pools(&straight.experiment).await, harness.pools(&interrupted.experiment).await);
    let records = |experiment: &ExperimentId| {
        let store = harness.services.store.clone();
        let experiment = experiment.clone();
        async move {
            store
                .round_records(&experiment)
                .await
                .unwrap()
                .into_values()
                .map(|r| (r.round, r.hard_new, r.hard_pool, r.easy_pool, r.labelled_hard, r.training.map(|t| t.auroc)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(records(&straight.experiment).await, records(&interrupted.experiment).await);
    assert_eq!(
        dpo_lines(harness.output.path(), &straight.experiment, 2),
        dpo_lines(harness.output.path(), &interrupted.experiment, 2)
    );
    harness.prefix.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_task_stops_and_marks_experiment() {
    let harness = Harness::new("engine-fail", SMALL).await;
    let worker = harness.start_worker(StubMode::FailScore);
    let planner = harness.create("fails").await;

    let error = harness.run(&planner, None).await.unwrap_err();
    worker.stop();

    assert!(matches!(error, EngineError::TaskFailed { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("fails/r1/score/"), "{message}");
    assert!(message.contains("stub failure"), "{message}");
    let state = harness.services.store.experiment_state(&planner.experiment).await.unwrap().unwrap();
    assert_eq!(state.status, ExperimentStatus::Failed);
    assert_eq!(state.phase, Phase::Score);
    assert!(state.error.unwrap().contains("stub failure"));
    harness.prefix.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_without_workers_times_out() {
    let overrides = SMALL.replace("phase_timeout_secs = 30", "phase_timeout_secs = 1");
    let harness = Harness::new("engine-timeout", &overrides).await;
    let planner = harness.create("stuck").await;

    let started = std::time::Instant::now();
    let error = harness.run(&planner, None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));

    let message = error.to_string();
    assert!(matches!(error, EngineError::PhaseTimedOut { .. }), "{message}");
    assert!(message.contains("stuck/r0/train/0"), "{message}");
    assert!(message.contains("curriculum.phase_timeout_secs"), "{message}");
    harness.prefix.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_failure_event_is_ignored() {
    let harness = Harness::new("engine-stale", SMALL).await;
    let planner = harness.create("stale").await;
    let broker = &harness.services.broker;
    broker.declare_event_queue(&planner.experiment).await.unwrap();
    let task = kka_shared::ids::TaskId::new(planner.experiment.clone(), RoundIndex(0), TaskKind::Train, 0);
    let failed = TaskOutcome::Failed { error: "failed before the resume".into() };
    broker.publish_event(&CompletionEvent::new(task, WorkerId::new("old").unwrap(), 1.0, failed)).await.unwrap();

    let worker = harness.start_worker(StubMode::Succeed);
    let report = harness.run(&planner, None).await.expect("a stale failure event does not stop the run");
    worker.stop();

    assert_eq!(report.status, "finished");
    harness.prefix.clean_up().await.unwrap();
}
