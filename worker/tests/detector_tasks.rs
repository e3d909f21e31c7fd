//! Train and score task handlers against the real Redis, on a small slice of Fashion-MNIST.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kka_shared::config::{Config, DetectorKind, DetectorSettings};
use kka_shared::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::{ScoreTask, TaskBody, TaskMessage, TaskSummary, TrainTask};
use kka_shared::records::{AnomalyRecord, CheckpointMeta, Recipe};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use kka_worker::data::DatasetCache;
use kka_worker::detector::{from_bytes, Expectation};
use kka_worker::tasks::score::ScoreHandler;
use kka_worker::tasks::train::TrainHandler;
use kka_worker::tasks::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use tokio_util::sync::CancellationToken;

const DATASET: &str = "[dataset]\nnormal_classes = [1]\ntrain_limit = 300\ntest_limit = 500\n";

/// A Redis-backed test fixture: prefix, runtime, store, dataset cache and fingerprint.
struct Fixture {
    prefix: TestPrefix,
    runtime: tokio::runtime::Runtime,
    store: Store,
    datasets: Arc<DatasetCache>,
    fingerprint: String,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let prefix = TestPrefix::new(label, DATASET);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let store = runtime.block_on(Store::connect(&prefix.config.store)).unwrap();
        let datasets = Arc::new(DatasetCache::new(prefix.config.dataset.clone()));
        let fingerprint = datasets.fingerprint(&prefix.config.dataset.protocol).unwrap();
        Fixture { prefix, runtime, store, datasets, fingerprint }
    }

    fn config(&self) -> &Config {
        &self.prefix.config
    }

    fn context(&self, slice: Duration) -> TaskContext {
        TaskContext {
            worker: WorkerId::new("detector-test").unwrap(),
            config: Arc::new(self.config().clone()),
            store: self.store.clone(),
            runtime: self.runtime.handle().clone(),
            cancel: CancellationToken::new(),
            slice_deadline: Instant::now() + slice,
        }
    }

    fn message(&self, experiment: &ExperimentId, round: u32, kind: TaskKind, body: TaskBody) -> TaskMessage {
        let id = TaskId::new(experiment.clone(), RoundIndex(round), kind, 0);
        TaskMessage::new(id, self.fingerprint.clone(), self.config().dataset.protocol.clone(), body)
    }

    fn detector_settings(&self, kind: DetectorKind) -> DetectorSettings {
        DetectorSettings { kind, pretrain_epochs: 1, epochs: 2, batch_size: 64, lr: 1e-3, ..self.config().detector.clone() }
    }

    /// Run a handler until it returns `Done`, committing like the runner; returns the summary
    /// and the number of slices.
    fn run_to_done(&self, handler: &dyn TaskHandler, task: &TaskMessage, slice: Duration) -> (TaskSummary, usize) {
        let mut slices = 0;
        loop {
            match handler.handle(task, &self.context(slice)) {
                Ok(HandlerOutput::Done { writes, summary }) => {
                    self.runtime.block_on(self.store.commit_task(&task.task_id, writes, &summary)).unwrap();
                    return (summary, slices);
                }
                Ok(HandlerOutput::Sliced) => slices += 1,
                Err(error) => panic!("task {} failed: {error}", task.task_id),
            }
        }
    }

    /// Store `count` test images of anomalous classes as round-`round` anomalies.
    fn store_anomalies(&self, experiment: &ExperimentId, round: u32, count: usize) -> Vec<AnomalyId> {
        let data = self.datasets.get(&self.config().dataset.protocol).unwrap();
        let task_id = TaskId::new(experiment.clone(), RoundIndex(round), TaskKind::Generate, 0);
        let mut pipe = redis::pipe();
        let mut ids = Vec::new();
        let rows = data.test_is_anomaly.iter().enumerate().filter(|(_, &anomaly)| anomaly).map(|(row, _)| row).take(count);
        for (index, row) in rows.enumerate() {
            let id = AnomalyId::new(experiment.clone(), RoundIndex(round), 0, index as u32);
            let image = data.test.images.get(row as i64).multiply_scalar(255.0).round().to_kind(tch::Kind::Uint8).flatten(0, -1);
            let pixels = Vec::<u8>::try_from(&image).unwrap();
            self.store.add_anomaly_writes(&mut pipe, &record(id.clone(), task_id.clone()), &pixels);
            ids.push(id);
        }
        let () = self.runtime.block_on(pipe.query_async(&mut self.store.connection())).unwrap();
        ids
    }

    fn checkpoint(&self, experiment: &ExperimentId, round: u32) -> (Vec<u8>, CheckpointMeta) {
        let bytes = self.runtime.block_on(self.store.load_checkpoint(experiment, RoundIndex(round))).unwrap().unwrap();
        let meta = self.runtime.block_on(self.store.checkpoint_meta(experiment, RoundIndex(round))).unwrap().unwrap();
        (bytes, meta)
    }
}

fn record(id: AnomalyId, task_id: TaskId) -> AnomalyRecord {
    AnomalyRecord {
        round: id.round,
        id,
        task_id,
        concept_id: "test-image".into(),
        concept: "an image of another class".into(),
        recipe: Recipe { operation: "identity".into(), params: Default::default(), severity: 1.0 },
        severity: 1.0,
        generator: "test".into(),
        generator_version: "0".into(),
        source_index: None,
        seed: 0,
        shape: [1, 28, 28],
    }
}

#[test]
fn train_then_score_stores_results() {
    let fixture = Fixture::new("det-train-score");
    let experiment = fixture.prefix.experiment("tasks");
    let trainer = TrainHandler::new(Arc::clone(&fixture.datasets), fixture.config());
    let scorer = ScoreHandler::new(Arc::clone(&fixture.datasets), fixture.config());

    let baseline = TrainTask { detector: fixture.detector_settings(DetectorKind::DeepSvdd), anomalies: vec![], seed: 7 };
    let task = fixture.message(&experiment, 0, TaskKind::Train, TaskBody::Train(baseline));
    let (summary, _) = fixture.run_to_done(&trainer, &task, Duration::from_secs(600));
    let TaskSummary::Trained { auroc, epochs, .. } = summary else { panic!("unexpected summary {summary:?}") };
    assert!(auroc > 0.7, "AUROC {auroc}");
    assert_eq!(epochs, 2);

    let (_, meta) = fixture.checkpoint(&experiment, 0);
    let data = fixture.datasets.get(&fixture.config().dataset.protocol).unwrap();
    assert_eq!(meta.validation_scores.len(), data.validation.len());
    assert_eq!(meta.validation_knn_distances.len(), data.validation.len());
    assert!(meta.validation_knn_distances.iter().all(|d| d.is_finite() && *d >= 0.0));
    assert_eq!(meta.dataset_fingerprint, fixture.fingerprint);

    let anomalies = fixture.store_anomalies(&experiment, 1, 30);
    let sad = TrainTask { detector: fixture.detector_settings(DetectorKind::DeepSad), anomalies: anomalies.clone(), seed: 7 };
    let task = fixture.message(&experiment, 1, TaskKind::Train, TaskBody::Train(sad));
    fixture.run_to_done(&trainer, &task, Duration::from_secs(600));
    assert_eq!(fixture.checkpoint(&experiment, 1).1.detector, DetectorKind::DeepSad);

    let score = ScoreTask { anomalies: anomalies.clone(), checkpoint_rounds: vec![RoundIndex(1), RoundIndex(0)], knn: 5 };
    let task = fixture.message(&experiment, 2, TaskKind::Score, TaskBody::Score(score));
    let (summary, _) = fixture.run_to_done(&scorer, &task, Duration::from_secs(600));
    assert_eq!(summary, TaskSummary::Scored { count: 30 });
    for round in [0, 1] {
        let scores = fixture.runtime.block_on(fixture.store.scores(&experiment, RoundIndex(round), &anomalies)).unwrap();
        assert!(scores.iter().all(|score| score.is_some_and(|s| s.score.is_finite() && s.knn_distance > 0.0)), "round {round}");
    }

    // A second shard reuses the cached detectors and gives the same scores for the same images.
    let again = ScoreTask { anomalies: anomalies[..5].to_vec(), checkpoint_rounds: vec![RoundIndex(0)], knn: 5 };
    let task = TaskMessage { task_id: TaskId::new(experiment.clone(), RoundIndex(2), TaskKind::Score, 1), ..fixture.message(&experiment, 2, TaskKind::Score, TaskBody::Score(again)) };
    let Ok(HandlerOutput::Done { .. }) = scorer.handle(&task, &fixture.context(Duration::from_secs(600))) else { panic!("second shard failed") };
}

#[test]
fn sliced_training_matches_uninterrupted() {
    let fixture = Fixture::new("det-sliced");
    let whole = fixture.prefix.experiment("whole");
    let sliced = fixture.prefix.experiment("sliced");
    let trainer = TrainHandler::new(Arc::clone(&fixture.datasets), fixture.config());
    let settings = DetectorSettings { epochs: 3, ..fixture.detector_settings(DetectorKind::DeepSvdd) };
    let body = TrainTask { detector: settings, anomalies: vec![], seed: 3 };

    let task = fixture.message(&whole, 0, TaskKind::Train, TaskBody::Train(body.clone()));
    let (_, slices) = fixture.run_to_done(&trainer, &task, Duration::from_secs(600));
    assert_eq!(slices, 0);

    // A deadline in the past slices after every epoch but the last: 1 pretraining + 3 epochs.
    let task = fixture.message(&sliced, 0, TaskKind::Train, TaskBody::Train(body));
    let (_, slices) = fixture.run_to_done(&trainer, &task, Duration::ZERO);
    assert_eq!(slices, 3);
    let progress = fixture.runtime.block_on(fixture.store.load_progress(&task.task_id)).unwrap();
    assert!(progress.is_none(), "the commit deletes the progress");

    let (whole_bytes, whole_meta) = fixture.checkpoint(&whole, 0);
    let (sliced_bytes, sliced_meta) = fixture.checkpoint(&sliced, 0);
    assert_eq!(whole_meta.auroc, sliced_meta.auroc);
    assert_eq!(whole_meta.validation_scores, sliced_meta.validation_scores);
    let data = fixture.datasets.get(&fixture.config().dataset.protocol).unwrap();
    let whole_detector = from_bytes(&whole_bytes, &Expectation::default(), tch::Device::Cpu).unwrap();
    let sliced_detector = from_bytes(&sliced_bytes, &Expectation::default(), tch::Device::Cpu).unwrap();
    assert_eq!(whole_detector.score(&data.test.images).unwrap(), sliced_detector.score(&data.test.images).unwrap());
}

#[test]
fn fingerprint_mismatch_is_fatal() {
    let fixture = Fixture::new("det-fingerprint");
    let experiment = fixture.prefix.experiment("mismatch");
    let trainer = TrainHandler::new(Arc::clone(&fixture.datasets), fixture.config());
    let body = TrainTask { detector: fixture.detector_settings(DetectorKind::DeepSvdd), anomalies: vec![], seed: 0 };
    let mut task = fixture.message(&experiment, 0, TaskKind::Train, TaskBody::Train(body));
    task.dataset_fingerprint = "0000".into();

    let error = trainer.handle(&task, &fixture.context(Duration::from_secs(600))).err().unwrap();
    assert!(matches!(error, TaskError::Fatal(_)), "{error}");
    assert!(error.to_string().contains("fingerprint"), "{error}");
}

#[test]
fn missing_checkpoint_or_anomaly_is_fatal() {
    let fixture = Fixture::new("det-missing");
    let experiment = fixture.prefix.experiment("missing");
    let scorer = ScoreHandler::new(Arc::clone(&fixture.datasets), fixture.config());
    let anomalies = fixture.store_anomalies(&experiment, 1, 2);

    let score = ScoreTask { anomalies: anomalies.clone(), checkpoint_rounds: vec![RoundIndex(0)], knn: 5 };
    let task = fixture.message(&experiment, 1, TaskKind::Score, TaskBody::Score(score));
    let error = scorer.handle(&task, &fixture.context(Duration::from_secs(600))).err().unwrap();
    assert!(matches!(error, TaskError::Fatal(_)), "{error}");
    assert!(error.to_string().contains("checkpoint"), "{error}");

    let unknown = vec![AnomalyId::new(experiment.clone(), RoundIndex(1), 9, 9)];
    let trainer = TrainHandler::new(Arc::clone(&fixture.datasets), fixture.config());
    let body = TrainTask { detector: fixture.detector_settings(DetectorKind::DeepSad), anomalies: unknown, seed: 0 };
    let task = fixture.message(&experiment, 1, TaskKind::Train, TaskBody::Train(body));
    let error = trainer.handle(&task, &fixture.context(Duration::from_secs(600))).err().unwrap();
    assert!(matches!(error, TaskError::Fatal(_)), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
}
