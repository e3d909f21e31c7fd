//! The tasks of each phase. Every task and anomaly id and every seed follows from the config,
//! the round and the shard, so planning a phase again gives the same messages.

use kka_shared::config::{DetectorKind, DetectorSettings};
use kka_shared::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId, TaskKind};
use kka_shared::messages::{GenerateTask, ScoreTask, TaskBody, TaskMessage, TrainTask};
use kka_shared::store::experiments::{ExperimentConfig, ExperimentState};

use crate::curriculum::seeds::{derive_seed, SeedPurpose};

/// Builder of an experiment's task messages.
#[derive(Debug, Clone)]
pub struct Planner {
    pub experiment: ExperimentId,
    pub config: ExperimentConfig,
    pub dataset_fingerprint: String,
}

impl Planner {
    fn message(&self, round: RoundIndex, shard: u32, body: TaskBody) -> TaskMessage {
        let id = TaskId::new(self.experiment.clone(), round, body.kind(), shard);
        TaskMessage::new(id, self.dataset_fingerprint.clone(), self.config.dataset.protocol.clone(), body)
    }

    fn seed(&self, round: RoundIndex, kind: TaskKind, shard: u32) -> u64 {
        derive_seed(self.config.curriculum.seed, round, SeedPurpose::Task(kind, shard))
    }

    /// Anomaly counts of the round's generate shards: full shards, then the remainder.
    pub fn generate_shard_counts(&self) -> Vec<u32> {
        let total = self.config.curriculum.anomalies_per_round;
        let size = self.config.curriculum.generate_shard_size.max(1);
        (0..total.div_ceil(size)).map(|shard| size.min(total - shard * size)).collect()
    }

    /// Ids of the anomalies that the round's generate tasks write, in (shard, index) order.
    pub fn round_anomaly_ids(&self, round: RoundIndex) -> Vec<AnomalyId> {
        let mut ids = Vec::new();
        for (shard, count) in (0u32..).zip(self.generate_shard_counts()) {
            ids.extend((0..count).map(|index| AnomalyId::new(self.experiment.clone(), round, shard, index)));
        }
        ids
    }

    /// Builds the round's generate tasks, carrying the generator state and the examples in `state`.
    pub fn generate_tasks(&self, round: RoundIndex, state: &ExperimentState) -> Vec<TaskMessage> {
        let config = &self.config;
        (0u32..)
            .zip(self.generate_shard_counts())
            .map(|(shard, count)| {
                let task = GenerateTask {
                    count,
                    seed: self.seed(round, TaskKind::Generate, shard),
                    generator: config.generator.clone(),
                    knowledge: config.knowledge.clone(),
                    state: state.generator_state.clone(),
                    hard_examples: state.hard_examples.clone(),
                    easy_examples: state.easy_examples.clone(),
                };
                self.message(round, shard, TaskBody::Generate(task))
            })
            .collect()
    }

    /// Lists the rounds whose checkpoints score round `round`'s anomalies: the previous round's,
    /// which splits them, and round 0's, the fixed yardstick.
    pub fn checkpoint_rounds(round: RoundIndex) -> Vec<RoundIndex> {
        let mut rounds = vec![round.previous().unwrap_or(RoundIndex::BASELINE), RoundIndex::BASELINE];
        rounds.dedup();
        rounds
    }

    /// Builds the round's score tasks over its new anomalies.
    pub fn score_tasks(&self, round: RoundIndex) -> Vec<TaskMessage> {
        let ids = self.round_anomaly_ids(round);
        let size = self.config.curriculum.score_shard_size.max(1) as usize;
        (0u32..)
            .zip(ids.chunks(size))
            .map(|(shard, chunk)| {
                let task = ScoreTask {
                    anomalies: chunk.to_vec(),
                    checkpoint_rounds: Self::checkpoint_rounds(round),
                    knn: self.config.curriculum.knn,
                };
                self.message(round, shard, TaskBody::Score(task))
            })
            .collect()
    }

    /// Returns the detector settings of a round: Deep SVDD in round 0, `curriculum.detector` after.
    pub fn detector(&self, round: RoundIndex) -> DetectorSettings {
        let kind = if round == RoundIndex::BASELINE { DetectorKind::DeepSvdd } else { self.config.curriculum.detector };
        DetectorSettings { kind, ..self.config.detector.clone() }
    }

    /// Builds the round's train task on the given labelled anomalies.
    ///
    /// Every round's detector uses the same seed, so rounds differ only in their labelled
    /// anomalies and detector kind, not in weight initialisation or batch order.
    pub fn train_task(&self, round: RoundIndex, anomalies: Vec<AnomalyId>) -> TaskMessage {
        let task = TrainTask {
            detector: self.detector(round),
            anomalies,
            seed: self.seed(RoundIndex::BASELINE, TaskKind::Train, 0) ^ self.config.detector.seed,
        };
        self.message(round, 0, TaskBody::Train(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::Config;
    use kka_shared::messages::GeneratorState;
    use kka_shared::store::experiments::{ExperimentStatus, Phase};

    fn planner(curriculum: &str) -> Planner {
        let config = Config::from_toml(curriculum).unwrap();
        Planner {
            experiment: ExperimentId::new("plan").unwrap(),
            config: ExperimentConfig {
                dataset: config.dataset.clone(),
                detector: config.detector.clone(),
                generator: config.generator.clone(),
                knowledge: config.knowledge.clone(),
                curriculum: config.curriculum.clone(),
            },
            dataset_fingerprint: "fp".into(),
        }
    }

    fn state() -> ExperimentState {
        ExperimentState {
            round: RoundIndex(1),
            phase: Phase::Generate,
            status: ExperimentStatus::Running,
            generator_state: GeneratorState::default(),
            hard_examples: vec!["hard".into()],
            easy_examples: vec!["easy".into()],
            dataset_fingerprint: "fp".into(),
            output_dir: "runs".into(),
            error: None,
            created_at: 0,
        }
    }

    const SHARDS: &str = "[curriculum]\nanomalies_per_round = 450\ngenerate_shard_size = 200\nscore_shard_size = 100\n";

    #[test]
    fn generate_shards_cover_the_round() {
        let planner = planner(SHARDS);
        assert_eq!(planner.generate_shard_counts(), vec![200, 200, 50]);
        let tasks = planner.generate_tasks(RoundIndex(2), &state());
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[2].task_id.to_string(), "plan/r2/generate/2");
        let TaskBody::Generate(last) = &tasks[2].body else { panic!("not a generate task") };
        assert_eq!(last.count, 50);
        assert_eq!(last.hard_examples, vec!["hard".to_owned()]);
    }

    #[test]
    fn generate_seeds_ignore_the_experiment_id() {
        let first = planner(SHARDS);
        let mut second = planner(SHARDS);
        second.experiment = ExperimentId::new("other").unwrap();
        let seeds = |p: &Planner| -> Vec<u64> {
            p.generate_tasks(RoundIndex(1), &state())
                .iter()
                .map(|t| match &t.body {
                    TaskBody::Generate(g) => g.seed,
                    _ => unreachable!("generate_tasks returns generate tasks"),
                })
                .collect()
        };
        assert_eq!(seeds(&first), seeds(&second));
        let distinct: std::collections::HashSet<u64> = seeds(&first).into_iter().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn score_tasks_chunk_the_round_anomalies() {
        let planner = planner(SHARDS);
        let tasks = planner.score_tasks(RoundIndex(3));
        assert_eq!(tasks.len(), 5);
        let TaskBody::Score(first) = &tasks[0].body else { panic!("not a score task") };
        assert_eq!(first.anomalies.len(), 100);
        assert_eq!(first.checkpoint_rounds, vec![RoundIndex(2), RoundIndex(0)]);
        assert_eq!(first.anomalies[0].to_string(), "plan.r3.s0.0");
        let TaskBody::Score(last) = &tasks[4].body else { panic!("not a score task") };
        assert_eq!(last.anomalies.len(), 50);
        assert_eq!(last.anomalies[49].to_string(), "plan.r3.s2.49");
    }

    #[test]
    fn round_one_scores_with_baseline_once() {
        assert_eq!(Planner::checkpoint_rounds(RoundIndex(1)), vec![RoundIndex(0)]);
    }

    #[test]
    fn baseline_trains_deep_svdd() {
        let planner = planner("");
        let TaskBody::Train(baseline) = planner.train_task(RoundIndex(0), vec![]).body else { panic!("not a train task") };
        assert_eq!(baseline.detector.kind, DetectorKind::DeepSvdd);
        let TaskBody::Train(later) = planner.train_task(RoundIndex(2), vec![]).body else { panic!("not a train task") };
        assert_eq!(later.detector.kind, DetectorKind::DeepSad);
        assert_eq!(later.seed, baseline.seed);
    }
}
