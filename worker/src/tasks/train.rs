//! The train task: fit the round's detector on the normal training images plus the listed
//! anomalies, evaluate it, and store the checkpoint with its metadata.
//!
//! Between epochs the handler checks the slice deadline and the shutdown token. Past either it
//! saves the run's progress to `P:exp:E:progress:T` and returns [`HandlerOutput::Sliced`]; the
//! next attempt of the task resumes from that progress and ends with the same weights as an
//! uninterrupted run. The commit that stores the checkpoint also deletes the progress.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kka_shared::config::{Config, Device, DetectorSettings};
use kka_shared::messages::{TaskBody, TaskMessage, TaskSummary, TrainTask};
use kka_shared::records::CheckpointMeta;

use super::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use crate::data::{anomaly_images, DataError, DatasetCache, OneClassData};
use crate::detector::knn::mean_knn_distance;
use crate::detector::{torch_device, Detector, DetectorError, Training};
use crate::metrics::{aupr, auroc};

/// Runs train tasks.
pub struct TrainHandler {
    datasets: Arc<DatasetCache>,
    device: Device,
}

/// Test metrics and validation statistics of a trained detector.
struct Evaluation {
    auroc: f64,
    aupr: f64,
    validation_scores: Vec<f64>,
    validation_knn_distances: Vec<f64>,
}

impl TrainHandler {
    pub fn new(dataset_cache: Arc<DatasetCache>, config: &Config) -> TrainHandler {
        TrainHandler { datasets: dataset_cache, device: config.worker.device }
    }

    fn run(&self, task: &TaskMessage, body: &TrainTask, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        let settings = DetectorSettings { seed: body.seed, ..body.detector.clone() };
        settings.validate().context("the task's detector settings are invalid").map_err(TaskError::Fatal)?;
        let device = torch_device(self.device).map_err(|error| TaskError::Retryable(error.into()))?;
        let data = load_data(&self.datasets, task)?;
        let anomalies = load_anomaly_images(task, &body.anomalies, &data, context)?;

        let Some(training) = self.train(task, &settings, &data, anomalies.as_ref(), device, context)? else {
            return Ok(HandlerOutput::Sliced);
        };
        let train_seconds = training.elapsed_seconds();
        let detector = training.finish().map_err(detector_error)?;

        let knn = knn_of_experiment(task, context)?;
        let evaluation = evaluate(detector.as_ref(), &data, knn)?;
        let bytes = detector.to_bytes().map_err(detector_error)?;
        let meta = CheckpointMeta {
            round: task.round(),
            detector: settings.kind,
            auroc: evaluation.auroc,
            aupr: evaluation.aupr,
            epochs: settings.epochs,
            train_seconds,
            validation_scores: evaluation.validation_scores,
            validation_knn_distances: evaluation.validation_knn_distances,
            dataset_fingerprint: data.fingerprint.clone(),
        };
        tracing::info!(auroc = meta.auroc, aupr = meta.aupr, train_seconds, checkpoint_bytes = bytes.len(), "detector trained");

        let mut writes = redis::pipe();
        context.store.add_checkpoint_writes(&mut writes, task.experiment(), &bytes, &meta);
        context.store.add_progress_delete(&mut writes, &task.task_id);
        let summary = TaskSummary::Trained { auroc: meta.auroc, aupr: meta.aupr, train_seconds, epochs: settings.epochs };
        Ok(HandlerOutput::Done { writes, summary })
    }

    /// Train until finished, or save progress and return `None` when the slice deadline passes
    /// or the worker shuts down.
    fn train(
        &self,
        task: &TaskMessage,
        settings: &DetectorSettings,
        data: &OneClassData,
        anomalies: Option<&tch::Tensor>,
        device: tch::Device,
        context: &TaskContext,
    ) -> Result<Option<Training>, TaskError> {
        let mut training = start_or_resume(task, settings, data, anomalies, device, context)?;
        while !training.is_finished() {
            let report = training.run_epoch().map_err(detector_error)?;
            tracing::debug!(phase = report.phase.as_str(), epoch = report.epoch, loss = report.loss, "epoch finished");
            if training.is_finished() {
                break;
            }
            let cancelled = context.cancel.is_cancelled();
            if cancelled || Instant::now() >= context.slice_deadline {
                let progress = training.save_progress().map_err(detector_error)?;
                context.runtime.block_on(context.store.save_progress(&task.task_id, &progress))?;
                tracing::info!(epochs_done = training.epochs_done(), cancelled, progress_bytes = progress.len(), "train task sliced");
                return Ok(None);
            }
        }
        Ok(Some(training))
    }
}

impl TaskHandler for TrainHandler {
    fn handle(&self, task: &TaskMessage, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        let TaskBody::Train(body) = &task.body else {
            return Err(TaskError::fatal(anyhow::anyhow!("the train handler received a {} task", task.kind())));
        };
        self.run(task, body, context)
    }
}

/// Resume from saved progress when there is valid progress, and start afresh otherwise.
fn start_or_resume(
    task: &TaskMessage,
    settings: &DetectorSettings,
    data: &OneClassData,
    anomalies: Option<&tch::Tensor>,
    device: tch::Device,
    context: &TaskContext,
) -> Result<Training, TaskError> {
    let saved = context.runtime.block_on(context.store.load_progress(&task.task_id))?;
    if let Some(bytes) = saved {
        match Training::resume(&bytes, data, anomalies, settings, device) {
            Ok(training) => {
                tracing::info!(epochs_done = training.epochs_done(), "train task resumed from saved progress");
                return Ok(training);
            }
            Err(error) => tracing::warn!(%error, "saved progress is unusable; training from the start"),
        }
    }
    Training::new(data, anomalies, settings, device).map_err(detector_error)
}

/// Load the one-class data, rejecting a fingerprint mismatch for good.
pub(crate) fn load_data(datasets: &DatasetCache, task: &TaskMessage) -> Result<Arc<OneClassData>, TaskError> {
    datasets.get_checked(&task.dataset, &task.dataset_fingerprint).map_err(|error| {
        // A read failure may be a transient file-system problem; everything else is in the data.
        let retryable = matches!(error, DataError::Read { .. });
        let error = anyhow::Error::new(error).context(format!("failed to load the dataset for task {}", task.task_id));
        if retryable {
            TaskError::Retryable(error)
        } else {
            TaskError::Fatal(error)
        }
    })
}

/// Load the listed anomalies from Redis as [0, 1] images, or `None` for an empty list.
pub(crate) fn load_anomaly_images(
    task: &TaskMessage,
    ids: &[kka_shared::ids::AnomalyId],
    data: &OneClassData,
    context: &TaskContext,
) -> Result<Option<tch::Tensor>, TaskError> {
    if ids.is_empty() {
        return Ok(None);
    }
    let stored = context.runtime.block_on(context.store.load_anomalies(ids))?;
    let images = anomaly_images(&stored, data.shape)
        .with_context(|| format!("invalid anomalies in task {}", task.task_id))
        .map_err(TaskError::Fatal)?;
    Ok(Some(images))
}

/// k of the experiment's similarity rule, from its stored config, or from this worker's config
/// when the experiment has none stored.
fn knn_of_experiment(task: &TaskMessage, context: &TaskContext) -> Result<usize, TaskError> {
    let stored = context.runtime.block_on(context.store.experiment_config(task.experiment()))?;
    let knn = stored.map_or(context.config.curriculum.knn, |config| config.curriculum.knn);
    Ok(knn as usize)
}

/// Test AUROC and AUPR, validation scores and validation k-NN distances to the training normals.
fn evaluate(detector: &dyn Detector, data: &OneClassData, knn: usize) -> Result<Evaluation, TaskError> {
    let test_scores = detector.score(&data.test.images).map_err(detector_error)?;
    let metric_error = |error| TaskError::Fatal(anyhow::Error::new(error).context("failed to evaluate the detector on the test split"));
    let auroc = auroc(&test_scores, &data.test_is_anomaly).map_err(metric_error)?;
    let aupr = aupr(&test_scores, &data.test_is_anomaly).map_err(metric_error)?;

    let validation_scores = detector.score(&data.validation.images).map_err(detector_error)?;
    let train_embeddings = detector.embed(&data.train.images).map_err(detector_error)?;
    let validation_embeddings = detector.embed(&data.validation.images).map_err(detector_error)?;
    let validation_knn_distances = mean_knn_distance(&validation_embeddings, &train_embeddings, knn).map_err(detector_error)?;
    Ok(Evaluation { auroc, aupr, validation_scores, validation_knn_distances })
}

/// Detector failures come from the data, settings or checkpoint, so retrying would fail again.
pub(crate) fn detector_error(error: DetectorError) -> TaskError {
    TaskError::Fatal(error.into())
}
