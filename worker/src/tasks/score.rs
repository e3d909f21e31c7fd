//! The score task: score one shard of anomalies with the detectors of the listed rounds and
//! measure their k-NN embedding distance to the normal training images.
//!
//! Decoded detectors and their training-image embeddings are cached per process, keyed by
//! experiment, round and a hash of the checkpoint bytes, so the shards of a round decode the
//! checkpoint once and a re-created experiment never reuses a stale detector.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use kka_shared::config::{Config, Device};
use kka_shared::ids::{ExperimentId, RoundIndex};
use kka_shared::messages::{ScoreTask, TaskBody, TaskMessage, TaskSummary};
use kka_shared::records::ScoreRecord;
use sha2::{Digest, Sha256};

use super::train::{detector_error, load_anomaly_images, load_data};
use super::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use crate::data::{DatasetCache, OneClassData};
use crate::detector::knn::mean_knn_distance;
use crate::detector::{from_bytes, torch_device, Detector, Expectation};

/// Decoded detectors kept per process; the oldest is dropped beyond this.
const CACHED_DETECTORS: usize = 8;

/// A decoded detector and the embeddings of the training normals under it.
struct CachedDetector {
    detector: Box<dyn Detector>,
    /// Embeddings of the training normals, N×rep_dim, on the CPU.
    train_embeddings: tch::Tensor,
}

/// Cache key: experiment, round and the SHA-256 of the checkpoint bytes.
type CacheKey = (ExperimentId, RoundIndex, [u8; 32]);

/// Runs score tasks.
pub struct ScoreHandler {
    datasets: Arc<DatasetCache>,
    device: Device,
    /// Cached detectors, oldest first. Each has its own lock, so shards of different rounds
    /// score in parallel.
    detectors: Mutex<Vec<(CacheKey, Arc<Mutex<CachedDetector>>)>>,
}

impl ScoreHandler {
    pub fn new(dataset_cache: Arc<DatasetCache>, config: &Config) -> ScoreHandler {
        ScoreHandler { datasets: dataset_cache, device: config.worker.device, detectors: Mutex::new(Vec::new()) }
    }

    fn run(&self, task: &TaskMessage, body: &ScoreTask, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        if body.knn == 0 {
            return Err(TaskError::fatal(anyhow::anyhow!("score task {} has knn = 0; curriculum.knn must be at least 1", task.task_id)));
        }
        let device = torch_device(self.device).map_err(|error| TaskError::Retryable(error.into()))?;
        let data = load_data(&self.datasets, task)?;
        let Some(images) = load_anomaly_images(task, &body.anomalies, &data, context)? else {
            return Ok(HandlerOutput::Done { writes: redis::pipe(), summary: TaskSummary::Scored { count: 0 } });
        };

        let mut writes = redis::pipe();
        for &round in &body.checkpoint_rounds {
            let cached = self.detector(task, round, &data, device, context)?;
            let cached = cached.lock().unwrap_or_else(PoisonError::into_inner);
            let scores = cached.detector.score(&images).map_err(detector_error)?;
            let embeddings = cached.detector.embed(&images).map_err(detector_error)?;
            let distances = mean_knn_distance(&embeddings, &cached.train_embeddings, body.knn as usize).map_err(detector_error)?;

            let records: Vec<_> = body
                .anomalies
                .iter()
                .zip(scores.iter().zip(&distances))
                .map(|(id, (&score, &knn_distance))| (id.clone(), ScoreRecord { score, knn_distance }))
                .collect();
            context.store.add_score_writes(&mut writes, task.experiment(), round, &records);
        }
        tracing::info!(anomalies = body.anomalies.len(), rounds = body.checkpoint_rounds.len(), "anomalies scored");
        Ok(HandlerOutput::Done { writes, summary: TaskSummary::Scored { count: body.anomalies.len() as u32 } })
    }

    /// Return the cached detector of `round`, decoding its checkpoint on a miss.
    fn detector(
        &self,
        task: &TaskMessage,
        round: RoundIndex,
        data: &OneClassData,
        device: tch::Device,
        context: &TaskContext,
    ) -> Result<Arc<Mutex<CachedDetector>>, TaskError> {
        let experiment = task.experiment();
        let bytes = context.runtime.block_on(context.store.load_checkpoint(experiment, round))?.ok_or_else(|| {
            TaskError::fatal(anyhow::anyhow!(
                "round {round}'s checkpoint of experiment {experiment} is missing; its train task must finish before score tasks that use it"
            ))
        })?;
        let key: CacheKey = (experiment.clone(), round, Sha256::digest(&bytes).into());
        if let Some(cached) = self.cached(&key) {
            return Ok(cached);
        }

        let expected = Expectation { kind: None, shape: Some(data.shape), dataset_fingerprint: Some(task.dataset_fingerprint.clone()) };
        let detector = from_bytes(&bytes, &expected, device)
            .with_context(|| format!("failed to load round {round}'s checkpoint of experiment {experiment}"))
            .map_err(TaskError::Fatal)?;
        let train_embeddings = detector.embed(&data.train.images).map_err(detector_error)?;
        let cached = Arc::new(Mutex::new(CachedDetector { detector, train_embeddings }));
        self.insert(key, Arc::clone(&cached));
        tracing::debug!(%round, "checkpoint decoded and cached");
        Ok(cached)
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<Mutex<CachedDetector>>> {
        let detectors = self.detectors.lock().unwrap_or_else(PoisonError::into_inner);
        detectors.iter().find(|(cached_key, _)| cached_key == key).map(|(_, cached)| Arc::clone(cached))
    }

    fn insert(&self, key: CacheKey, cached: Arc<Mutex<CachedDetector>>) {
        let mut detectors = self.detectors.lock().unwrap_or_else(PoisonError::into_inner);
        if detectors.iter().any(|(cached_key, _)| *cached_key == key) {
            return;
        }
        if detectors.len() >= CACHED_DETECTORS {
            detectors.remove(0);
        }
        detectors.push((key, cached));
    }
}

impl TaskHandler for ScoreHandler {
    fn handle(&self, task: &TaskMessage, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        let TaskBody::Score(body) = &task.body else {
            return Err(TaskError::fatal(anyhow::anyhow!("the score handler received a {} task", task.kind())));
        };
        self.run(task, body, context)
    }
}
