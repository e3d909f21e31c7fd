//! The train step: draw labelled anomalies from the pools, train the round's detector, record
//! its evaluation and move to the next round.

use kka_shared::ids::{RoundIndex, TaskId, TaskKind};
use kka_shared::store::experiments::{ExperimentState, ExperimentStatus, Phase, PoolKind, TrainingResult};

use super::{Engine, EngineError};
use crate::curriculum::pools::{sample_labelled, LabelledSample, PoolEntry};
use crate::curriculum::seeds::{derive_seed, SeedPurpose};

impl Engine {
    pub(super) async fn train(&mut self, state: ExperimentState) -> Result<(), EngineError> {
        let round = state.round;
        let sample = if round == RoundIndex::BASELINE { None } else { Some(self.labelled_sample(round).await?) };
        let anomalies = sample.as_ref().map(|s| s.ids.clone()).unwrap_or_default();
        let task = self.planner.train_task(round, anomalies);
        let timing = self.run_tasks(round, Phase::Train, std::slice::from_ref(&task)).await?;

        let meta = self.checkpoint_meta(round).await?;
        if !(meta.auroc.is_finite() && meta.aupr.is_finite()) {
            return Err(EngineError::InvalidResult {
                task: task.task_id.clone(),
                reason: format!("the checkpoint metadata has AUROC {} and AUPR {}", meta.auroc, meta.aupr),
            });
        }
        let mut record = self.round_record(round).await?;
        record.training = Some(TrainingResult { auroc: meta.auroc, aupr: meta.aupr, epochs: meta.epochs, train_seconds: meta.train_seconds });
        record.phases.insert(Phase::Train, timing);
        if let Some(sample) = &sample {
            record.labelled_hard = u32::try_from(sample.hard.wanted).unwrap_or(u32::MAX);
            record.labelled_easy = u32::try_from(sample.easy.wanted).unwrap_or(u32::MAX);
        }

        let rounds = self.planner.config.curriculum.rounds;
        let next = if round.0 >= rounds {
            ExperimentState { status: ExperimentStatus::Finished, ..state }
        } else {
            ExperimentState { round: round.next(), phase: Phase::Generate, ..state }
        };
        self.services.store.commit_round(&self.planner.experiment, &record, &next).await?;
        tracing::info!(round = round.0, auroc = meta.auroc, aupr = meta.aupr, "round trained");
        self.write_report().await?;
        Ok(())
    }

    /// Draws the round's labelled anomalies from the pools, logging a warning per short pool.
    async fn labelled_sample(&self, round: RoundIndex) -> Result<LabelledSample, EngineError> {
        let store = &self.services.store;
        let experiment = &self.planner.experiment;
        let curriculum = &self.planner.config.curriculum;
        let to_entries = |pool: Vec<(kka_shared::ids::AnomalyId, f64)>| -> Vec<PoolEntry> {
            pool.into_iter().map(|(id, score)| PoolEntry { id, score }).collect()
        };
        let hard = to_entries(store.pool(experiment, PoolKind::Hard).await?);
        let easy = to_entries(store.pool(experiment, PoolKind::Easy).await?);

        let ratio = curriculum.schedule.ratio(round.0, curriculum.rounds);
        let seed = derive_seed(curriculum.seed, round, SeedPurpose::LabelledSample);
        let sample = sample_labelled(&hard, &easy, curriculum.labelled_anomalies as usize, ratio, seed);
        for (pool, draw) in [("hard", sample.hard), ("easy", sample.easy)] {
            if draw.is_short() {
                tracing::warn!(round = round.0, pool, wanted = draw.wanted, available = draw.available, "pool is short; sampling it with replacement");
            }
        }
        if sample.ids.is_empty() {
            return Err(EngineError::InvalidResult {
                task: TaskId::new(experiment.clone(), round, TaskKind::Score, 0),
                reason: "both pools are empty after the split, so there is nothing to train on".into(),
            });
        }
        Ok(sample)
    }
}
