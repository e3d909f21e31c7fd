//! The split step: hard/easy decisions, pools, the generator update and the DPO export of one
//! round, committed to Redis in one transaction.

use std::time::Instant;

use kka_shared::config::KnowledgeSourceKind;
use kka_shared::ids::{AnomalyId, RoundIndex, TaskId, TaskKind};
use kka_shared::messages::GeneratorState;
use kka_shared::records::{AnomalyRecord, CheckpointMeta, ScoreRecord};
use kka_shared::store::experiments::{ExperimentConfig, ExperimentState, Phase, PhaseTiming, PoolKind, SplitCommit};

use super::{Engine, EngineError};
use crate::curriculum::dpo::{self, ScoredDescription};
use crate::curriculum::pools::{merge_and_cap, PoolEntry};
use crate::curriculum::split::{hard_fraction, Threshold};
use crate::curriculum::update::{update_generator_state, Outcome, UpdateSettings};

/// One new anomaly with its provenance and its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredAnomaly {
    pub id: AnomalyId,
    pub record: AnomalyRecord,
    /// Score under the detector that splits the round, round r − 1's.
    pub score: ScoreRecord,
    /// Score under round 0's detector.
    pub baseline: ScoreRecord,
}

/// Hard/easy decisions of one round's new anomalies.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSplit {
    pub hard: Vec<PoolEntry>,
    pub easy: Vec<PoolEntry>,
    pub hard_fraction_new: f64,
    pub hard_fraction_new_vs_baseline: f64,
    pub outcomes: Vec<Outcome>,
    pub hard_descriptions: Vec<ScoredDescription>,
    pub easy_descriptions: Vec<ScoredDescription>,
}

/// Splits scored anomalies with the splitting detector's threshold, and measures the hard
/// fraction under round 0's threshold as well.
pub fn split_round(anomalies: &[ScoredAnomaly], threshold: &Threshold, baseline_threshold: &Threshold) -> RoundSplit {
    let mut split = RoundSplit {
        hard: Vec::new(),
        easy: Vec::new(),
        hard_fraction_new: hard_fraction(threshold, anomalies.iter().map(|a| &a.score)),
        hard_fraction_new_vs_baseline: hard_fraction(baseline_threshold, anomalies.iter().map(|a| &a.baseline)),
        outcomes: Vec::with_capacity(anomalies.len()),
        hard_descriptions: Vec::new(),
        easy_descriptions: Vec::new(),
    };
    for anomaly in anomalies {
        let hard = threshold.is_hard(&anomaly.score);
        let entry = PoolEntry { id: anomaly.id.clone(), score: anomaly.score.score };
        let description = ScoredDescription { description: anomaly.record.concept.clone(), score: anomaly.score.score };
        if hard {
            split.hard.push(entry);
            split.hard_descriptions.push(description);
        } else {
            split.easy.push(entry);
            split.easy_descriptions.push(description);
        }
        split.outcomes.push(Outcome { concept_id: anomaly.record.concept_id.clone(), severity: anomaly.record.severity, hard });
    }
    split
}

/// Label of the normal classes in prompts, built as the worker builds it: `knowledge.class_names`
/// when set, else the dataset's class names, joined with " or ".
pub fn class_label(config: &ExperimentConfig) -> String {
    let dataset_names = kka_shared::prompt::class_names(config.dataset.format);
    let names = if config.knowledge.class_names.is_empty() { &dataset_names } else { &config.knowledge.class_names };
    // NOTE: folder datasets name classes after their folders, which only the worker reads, so
    // their DPO prompts contain "class K" where the worker's prompt has the folder name.
    let labels: Vec<String> = config
        .dataset
        .protocol
        .normal_classes
        .iter()
        .map(|&label| names.get(label as usize).cloned().unwrap_or_else(|| format!("class {label}")))
        .collect();
    labels.join(" or ")
}

impl Engine {
    pub(super) async fn split(&mut self, state: ExperimentState) -> Result<(), EngineError> {
        let started = Instant::now();
        let round = state.round;
        let splitter = round.previous().unwrap_or(RoundIndex::BASELINE);
        let rule = &self.planner.config.curriculum.split;
        let threshold = calibrate(rule, &self.checkpoint_meta(splitter).await?, splitter, &self.planner.experiment)?;
        let baseline_threshold =
            calibrate(rule, &self.checkpoint_meta(RoundIndex::BASELINE).await?, RoundIndex::BASELINE, &self.planner.experiment)?;

        let anomalies = self.load_scored(round, splitter).await?;
        let split = split_round(&anomalies, &threshold, &baseline_threshold);
        let (hard_pool, easy_pool) = self.merged_pools(&split).await?;
        let dpo_pairs = self.export_dpo(round, &state, &split)?;
        let next_state = self.next_generator_state(&state, &split);

        let mut record = self.round_record(round).await?;
        let curriculum = &self.planner.config.curriculum;
        record.hard_ratio = curriculum.schedule.ratio(round.0, curriculum.rounds);
        record.generated = u32::try_from(anomalies.len()).unwrap_or(u32::MAX);
        record.hard_new = u32::try_from(split.hard.len()).unwrap_or(u32::MAX);
        record.hard_fraction_new = split.hard_fraction_new;
        record.hard_fraction_new_vs_baseline = split.hard_fraction_new_vs_baseline;
        record.threshold = threshold.value();
        record.baseline_threshold = baseline_threshold.value();
        record.hard_pool = u32::try_from(hard_pool.len()).unwrap_or(u32::MAX);
        record.easy_pool = u32::try_from(easy_pool.len()).unwrap_or(u32::MAX);
        record.dpo_pairs = dpo_pairs;
        let wall_seconds = started.elapsed().as_secs_f64();
        record.phases.insert(Phase::Split, PhaseTiming { wall_seconds, ..PhaseTiming::default() });

        let hard_pool: Vec<(AnomalyId, f64)> = hard_pool.into_iter().map(|e| (e.id, e.score)).collect();
        let easy_pool: Vec<(AnomalyId, f64)> = easy_pool.into_iter().map(|e| (e.id, e.score)).collect();
        let next = ExperimentState { phase: Phase::Train, ..next_state };
        let commit = SplitCommit { hard_pool: &hard_pool, easy_pool: &easy_pool, record: &record, next: &next };
        self.services.store.commit_split(&self.planner.experiment, &commit).await?;
        tracing::info!(
            round = round.0,
            hard = split.hard.len(),
            easy = split.easy.len(),
            hard_fraction_new = split.hard_fraction_new,
            hard_fraction_new_vs_baseline = split.hard_fraction_new_vs_baseline,
            threshold = threshold.value(),
            hard_pool = hard_pool.len(),
            easy_pool = easy_pool.len(),
            "round split"
        );
        Ok(())
    }

    pub(super) async fn checkpoint_meta(&self, round: RoundIndex) -> Result<CheckpointMeta, EngineError> {
        let experiment = &self.planner.experiment;
        self.services.store.checkpoint_meta(experiment, round).await?.ok_or_else(|| EngineError::MissingResult {
            what: format!("round {round}'s checkpoint metadata"),
            task: TaskId::new(experiment.clone(), round, TaskKind::Train, 0),
        })
    }

    /// Loads the round's anomalies with their scores, checking that every one is present.
    async fn load_scored(&self, round: RoundIndex, splitter: RoundIndex) -> Result<Vec<ScoredAnomaly>, EngineError> {
        let store = &self.services.store;
        let experiment = &self.planner.experiment;
        let ids = self.planner.round_anomaly_ids(round);
        let records = store.anomaly_records(&ids).await?;
        let scores = store.scores(experiment, splitter, &ids).await?;
        let baseline_scores = if splitter == RoundIndex::BASELINE {
            scores.clone()
        } else {
            store.scores(experiment, RoundIndex::BASELINE, &ids).await?
        };

        let mut anomalies = Vec::with_capacity(ids.len());
        for (index, id) in ids.into_iter().enumerate() {
            let generate_task = TaskId::new(experiment.clone(), round, TaskKind::Generate, id.shard);
            let score_shard = index / self.planner.config.curriculum.score_shard_size.max(1) as usize;
            let score_task = TaskId::new(experiment.clone(), round, TaskKind::Score, u32::try_from(score_shard).unwrap_or(u32::MAX));
            let record = records[index].clone().ok_or_else(|| EngineError::MissingResult { what: format!("anomaly {id}"), task: generate_task })?;
            let score = checked_score(scores[index], &id, splitter, &score_task)?;
            let baseline = checked_score(baseline_scores[index], &id, RoundIndex::BASELINE, &score_task)?;
            anomalies.push(ScoredAnomaly { id, record, score, baseline });
        }
        Ok(anomalies)
    }

    /// Computes the pools after adding the round's anomalies, capped by `curriculum.pool_policy`.
    async fn merged_pools(&self, split: &RoundSplit) -> Result<(Vec<PoolEntry>, Vec<PoolEntry>), EngineError> {
        let curriculum = &self.planner.config.curriculum;
        let cap = curriculum.pool_cap as usize;
        let mut merged = Vec::with_capacity(2);
        for (kind, new) in [(PoolKind::Hard, &split.hard), (PoolKind::Easy, &split.easy)] {
            let current: Vec<PoolEntry> = self
                .services
                .store
                .pool(&self.planner.experiment, kind)
                .await?
                .into_iter()
                .map(|(id, score)| PoolEntry { id, score })
                .collect();
            merged.push(merge_and_cap(&current, new, cap, curriculum.pool_policy));
        }
        let easy = merged.pop().unwrap_or_default();
        let hard = merged.pop().unwrap_or_default();
        Ok((hard, easy))
    }

    /// Writes the round's DPO pairs to `dpo/round_<r>.jsonl` and returns how many there are.
    /// The prompt is the one an LLM knowledge source got for this round.
    fn export_dpo(&self, round: RoundIndex, state: &ExperimentState, split: &RoundSplit) -> Result<u32, EngineError> {
        let config = &self.planner.config;
        let prompt = kka_shared::prompt::anomaly_prompt(
            &class_label(config),
            &config.knowledge.captions,
            &state.hard_examples,
            &state.easy_examples,
        );
        let pairs = dpo::build_pairs(&prompt, &split.hard_descriptions, &split.easy_descriptions);
        let path = self.run_dir.join("dpo").join(format!("round_{round}.jsonl"));
        dpo::write_jsonl(&path, &pairs).map_err(|source| EngineError::Write { path, source })?;
        Ok(u32::try_from(pairs.len()).unwrap_or(u32::MAX))
    }

    /// Builds the state for the next round: updated sampling weights, and the round's hard and
    /// easy descriptions when an LLM proposes the next round's concepts.
    fn next_generator_state(&self, state: &ExperimentState, split: &RoundSplit) -> ExperimentState {
        let config = &self.planner.config;
        let settings = UpdateSettings {
            lr: config.curriculum.update_lr,
            floor: config.curriculum.update_floor,
            severity_min: config.generator.severity_min,
            severity_max: config.generator.severity_max,
            severity_bins: config.generator.severity_bins,
        };
        let generator_state: GeneratorState = update_generator_state(&state.generator_state, &split.outcomes, &settings);
        let (hard_examples, easy_examples) = if config.knowledge.source == KnowledgeSourceKind::Llm {
            let limit = kka_shared::prompt::MAX_PROMPT_ITEMS;
            let mut hard = dpo::distinct_descriptions(&split.hard_descriptions, false);
            let mut easy = dpo::distinct_descriptions(&split.easy_descriptions, true);
            hard.truncate(limit);
            easy.truncate(limit);
            (hard, easy)
        } else {
            (Vec::new(), Vec::new())
        };
        ExperimentState { generator_state, hard_examples, easy_examples, ..state.clone() }
    }
}

fn calibrate(
    rule: &kka_shared::config::SplitRule,
    meta: &CheckpointMeta,
    round: RoundIndex,
    experiment: &kka_shared::ids::ExperimentId,
) -> Result<Threshold, EngineError> {
    Threshold::calibrate(rule, meta).map_err(|error| EngineError::InvalidResult {
        task: TaskId::new(experiment.clone(), round, TaskKind::Train, 0),
        reason: error.to_string(),
    })
}

fn checked_score(score: Option<ScoreRecord>, id: &AnomalyId, round: RoundIndex, task: &TaskId) -> Result<ScoreRecord, EngineError> {
    let score = score.ok_or_else(|| EngineError::MissingResult {
        what: format!("the score of anomaly {id} under round {round}'s detector"),
        task: task.clone(),
    })?;
    if !score.score.is_finite() || score.knn_distance.is_nan() {
        return Err(EngineError::InvalidResult {
            task: task.clone(),
            reason: format!("anomaly {id} has score {} and k-NN distance {} under round {round}'s detector", score.score, score.knn_distance),
        });
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::Config;
    use kka_shared::ids::ExperimentId;
    use kka_shared::records::Recipe;

    fn anomaly(index: u32, concept: &str, score: f64, baseline: f64) -> ScoredAnomaly {
        let experiment = ExperimentId::new("split").unwrap();
        let id = AnomalyId::new(experiment.clone(), RoundIndex(2), 0, index);
        let record = AnomalyRecord {
            id: id.clone(),
            task_id: TaskId::new(experiment, RoundIndex(2), TaskKind::Generate, 0),
            round: RoundIndex(2),
            concept_id: concept.into(),
            concept: format!("a {concept}"),
            recipe: Recipe { operation: "blur".into(), params: Default::default(), severity: 0.5 },
            severity: 0.5,
            generator: "procedural".into(),
            generator_version: "1".into(),
            source_index: Some(index),
            seed: 1,
            shape: [1, 28, 28],
        };
        ScoredAnomaly {
            id,
            record,
            score: ScoreRecord { score, knn_distance: 1.0 },
            baseline: ScoreRecord { score: baseline, knn_distance: 1.0 },
        }
    }

    #[test]
    fn split_round_sorts_into_pools() {
        let anomalies = [anomaly(0, "stain", 0.5, 5.0), anomaly(1, "tear", 2.0, 0.1), anomaly(2, "stain", 1.0, 0.2)];
        let split = split_round(&anomalies, &Threshold::Score { tau: 1.0 }, &Threshold::Score { tau: 0.15 });

        assert_eq!(split.hard.iter().map(|e| e.id.index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(split.easy.iter().map(|e| e.id.index).collect::<Vec<_>>(), vec![1]);
        assert!((split.hard_fraction_new - 2.0 / 3.0).abs() < 1e-12);
        assert!((split.hard_fraction_new_vs_baseline - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(split.hard[0].score, 0.5);
        assert_eq!(split.outcomes.iter().filter(|o| o.hard).count(), 2);
        assert_eq!(split.hard_descriptions[0].description, "a stain");
        assert_eq!(split.easy_descriptions[0].description, "a tear");
    }

    #[test]
    fn class_label_uses_dataset_names() {
        let config = Config::from_toml("[dataset]\nnormal_classes = [0, 9]\n").unwrap();
        let experiment = ExperimentConfig {
            dataset: config.dataset.clone(),
            detector: config.detector.clone(),
            generator: config.generator.clone(),
            knowledge: config.knowledge.clone(),
            curriculum: config.curriculum.clone(),
        };
        assert_eq!(class_label(&experiment), "T-shirt/top or Ankle boot");
    }

    #[test]
    fn checked_score_rejects_missing_and_nan() {
        let experiment = ExperimentId::new("split").unwrap();
        let id = AnomalyId::new(experiment.clone(), RoundIndex(1), 0, 3);
        let task = TaskId::new(experiment, RoundIndex(1), TaskKind::Score, 0);
        let missing = checked_score(None, &id, RoundIndex(0), &task).unwrap_err().to_string();
        assert!(missing.contains("split.r1.s0.3"), "{missing}");
        assert!(missing.contains("split/r1/score/0"), "{missing}");
        let nan = checked_score(Some(ScoreRecord { score: f64::NAN, knn_distance: 0.0 }), &id, RoundIndex(0), &task);
        assert!(matches!(nan, Err(EngineError::InvalidResult { .. })));
    }
}
