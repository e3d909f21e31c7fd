//! Detector checkpoints, anomaly scores and the saved progress of sliced train tasks.
//!
//! Keys: `P:exp:E:ckpt:rK` (checkpoint bytes), `P:exp:E:ckpt:rK:meta` ([`CheckpointMeta`]
//! JSON), `P:exp:E:scores:rK` (hash: anomaly id → [`ScoreRecord`] JSON) and
//! `P:exp:E:progress:T` (progress bytes of train task T). Readers of scores and checkpoint
//! metadata for the coordinator are in `experiments.rs`.

use redis::AsyncCommands;

use super::{Store, StoreError};
use crate::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId};
use crate::records::{CheckpointMeta, ScoreRecord};

impl Store {
    /// `P:exp:E:ckpt:rK`.
    pub fn checkpoint_key(&self, experiment: &ExperimentId, round: RoundIndex) -> String {
        self.experiment_key(experiment, &format!("ckpt:r{round}"))
    }

    /// `P:exp:E:ckpt:rK:meta`.
    pub fn checkpoint_meta_key(&self, experiment: &ExperimentId, round: RoundIndex) -> String {
        self.experiment_key(experiment, &format!("ckpt:r{round}:meta"))
    }

    /// `P:exp:E:scores:rK`.
    pub fn scores_key(&self, experiment: &ExperimentId, round: RoundIndex) -> String {
        self.experiment_key(experiment, &format!("scores:r{round}"))
    }

    /// `P:exp:E:progress:T`.
    pub fn progress_key(&self, task: &TaskId) -> String {
        self.experiment_key(&task.experiment, &format!("progress:{task}"))
    }

    /// Add the writes that store round `meta.round`'s checkpoint and its metadata to a task's
    /// pipeline.
    pub fn add_checkpoint_writes(&self, pipe: &mut redis::Pipeline, experiment: &ExperimentId, bytes: &[u8], meta: &CheckpointMeta) {
        pipe.set(self.checkpoint_key(experiment, meta.round), bytes).ignore();
        pipe.set(self.checkpoint_meta_key(experiment, meta.round), crate::messages::encode(meta)).ignore();
    }

    /// Round `round`'s checkpoint bytes, or `None` before its train task finished.
    pub async fn load_checkpoint(&self, experiment: &ExperimentId, round: RoundIndex) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.checkpoint_key(experiment, round);
        self.connection().get(&key).await.map_err(StoreError::redis("GET checkpoint"))
    }

    /// Add the writes that store scores under round `round`'s detector to a task's pipeline.
    /// HSET overwrites, so a redelivered score task rewrites the same fields.
    pub fn add_score_writes(
        &self,
        pipe: &mut redis::Pipeline,
        experiment: &ExperimentId,
        round: RoundIndex,
        scores: &[(AnomalyId, ScoreRecord)],
    ) {
        if scores.is_empty() {
            return;
        }
        let fields: Vec<(String, Vec<u8>)> =
            scores.iter().map(|(id, record)| (id.to_string(), crate::messages::encode(record))).collect();
        pipe.hset_multiple(self.scores_key(experiment, round), &fields).ignore();
    }

    /// Store the progress of a sliced train task, replacing earlier progress.
    pub async fn save_progress(&self, task: &TaskId, bytes: &[u8]) -> Result<(), StoreError> {
        let () = self.connection().set(self.progress_key(task), bytes).await.map_err(StoreError::redis("SET progress"))?;
        Ok(())
    }

    /// Load the saved progress of a train task, if it was sliced before.
    pub async fn load_progress(&self, task: &TaskId) -> Result<Option<Vec<u8>>, StoreError> {
        self.connection().get(self.progress_key(task)).await.map_err(StoreError::redis("GET progress"))
    }

    /// Add the deletion of a train task's saved progress to its pipeline, so the progress goes
    /// in the same transaction that commits the checkpoint.
    pub fn add_progress_delete(&self, pipe: &mut redis::Pipeline, task: &TaskId) {
        pipe.del(self.progress_key(task)).ignore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DetectorKind;
    use crate::ids::TaskKind;
    use crate::messages::TaskSummary;
    use crate::testing::TestPrefix;

    fn meta(round: u32) -> CheckpointMeta {
        CheckpointMeta {
            round: RoundIndex(round),
            detector: DetectorKind::DeepSvdd,
            auroc: 0.9,
            aupr: 0.8,
            epochs: 3,
            train_seconds: 1.5,
            validation_scores: vec![0.1, 0.2],
            validation_knn_distances: vec![1.0, 2.0],
            dataset_fingerprint: "f".into(),
        }
    }

    #[tokio::test]
    async fn checkpoint_and_progress_commit_together() {
        let prefix = TestPrefix::new("detectors-ckpt", "");
        let store = Store::connect(&prefix.config.store).await.unwrap();
        let experiment = prefix.experiment("exp");
        let task = TaskId::new(experiment.clone(), RoundIndex(2), TaskKind::Train, 0);

        store.save_progress(&task, b"partial").await.unwrap();
        assert_eq!(store.load_progress(&task).await.unwrap().as_deref(), Some(&b"partial"[..]));

        let mut pipe = redis::pipe();
        store.add_checkpoint_writes(&mut pipe, &experiment, b"\x00weights\xff", &meta(2));
        store.add_progress_delete(&mut pipe, &task);
        let summary = TaskSummary::Trained { auroc: 0.9, aupr: 0.8, train_seconds: 1.5, epochs: 3 };
        store.commit_task(&task, pipe, &summary).await.unwrap();

        let bytes = store.load_checkpoint(&experiment, RoundIndex(2)).await.unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"\x00weights\xff"[..]));
        assert_eq!(store.checkpoint_meta(&experiment, RoundIndex(2)).await.unwrap(), Some(meta(2)));
        assert_eq!(store.load_progress(&task).await.unwrap(), None);
        assert_eq!(store.load_checkpoint(&experiment, RoundIndex(3)).await.unwrap(), None);
        prefix.clean_up().await.unwrap();
    }

    #[tokio::test]
    async fn scores_are_written_per_anomaly() {
        let prefix = TestPrefix::new("detectors-scores", "");
        let store = Store::connect(&prefix.config.store).await.unwrap();
        let experiment = prefix.experiment("exp");
        let ids: Vec<AnomalyId> = (0..3).map(|i| AnomalyId::new(experiment.clone(), RoundIndex(1), 0, i)).collect();
        let records: Vec<(AnomalyId, ScoreRecord)> =
            ids.iter().enumerate().map(|(i, id)| (id.clone(), ScoreRecord { score: i as f64, knn_distance: 0.5 })).collect();

        let mut pipe = redis::pipe();
        store.add_score_writes(&mut pipe, &experiment, RoundIndex(0), &records[..2]);
        let () = pipe.query_async(&mut store.connection()).await.unwrap();

        let loaded = store.scores(&experiment, RoundIndex(0), &ids).await.unwrap();
        assert_eq!(loaded[0], Some(records[0].1));
        assert_eq!(loaded[1], Some(records[1].1));
        assert_eq!(loaded[2], None);
        prefix.clean_up().await.unwrap();
    }
}
