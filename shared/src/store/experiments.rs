//! Curriculum experiment state: config, round and phase, pools and round results.
//!
//! Keys, besides those in the table in `store/mod.rs`:
//!
//! | key | type | contents |
//! |---|---|---|
//! | `P:exp:E:config` | string | the experiment sections of the config, [`ExperimentConfig`] JSON |
//! | `P:exp:E:state` | hash | [`ExperimentState`], one field per member, `generator_state` as JSON |
//! | `P:exp:E:rounds` | hash | round number → [`RoundRecord`] JSON |
//! | `P:exp:E:pool:hard`, `P:exp:E:pool:easy` | sorted set | anomaly id, scored by the detector that split it |
//!
//! Every change of phase is one MULTI/EXEC transaction together with the results it depends on,
//! so a crash leaves the experiment either before or after a transition, never half-way.

use std::collections::BTreeMap;
use std::path::PathBuf;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::config::{
    CurriculumSettings, DatasetSettings, DetectorSettings, GeneratorSettings, KnowledgeSettings,
};
use crate::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId};
use crate::messages::GeneratorState;
use crate::records::{AnomalyRecord, CheckpointMeta, ScoreRecord};

/// The config sections that define an experiment. The broker, store, telemetry and worker
/// sections are left out: they describe where a process runs, and a resumed run takes them from
/// its own config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub dataset: DatasetSettings,
    pub detector: DetectorSettings,
    pub generator: GeneratorSettings,
    pub knowledge: KnowledgeSettings,
    pub curriculum: CurriculumSettings,
}

impl ExperimentConfig {
    /// Copies the experiment sections out of a validated config.
    pub fn from_config(config: &crate::config::Config) -> Self {
        ExperimentConfig {
            dataset: config.dataset.clone(),
            detector: config.detector.clone(),
            generator: config.generator.clone(),
            knowledge: config.knowledge.clone(),
            curriculum: config.curriculum.clone(),
        }
    }

    /// Replaces the experiment sections of `raw` with these, keeping its broker, store,
    /// telemetry and worker sections. The result still needs validating.
    pub fn apply_to(self, raw: crate::config::RawConfig) -> crate::config::RawConfig {
        crate::config::RawConfig {
            dataset: self.dataset,
            detector: self.detector,
            generator: self.generator,
            knowledge: self.knowledge,
            curriculum: self.curriculum,
            ..raw
        }
    }
}

/// Step of a round. Round 0 has only [`Phase::Train`]; rounds 1..=R go through all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Generate,
    Score,
    /// The coordinator splits the scored anomalies into the pools; no task runs.
    Split,
    Train,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Generate, Phase::Score, Phase::Split, Phase::Train];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Generate => "generate",
            Phase::Score => "score",
            Phase::Split => "split",
            Phase::Train => "train",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == text)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an experiment still has work to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    /// Running now, or interrupted and waiting for `kka-coordinator resume`.
    Running,
    Finished,
    /// Stopped by a task that failed for good. `error` names the task.
    Failed,
}

impl ExperimentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentStatus::Running => "running",
            ExperimentStatus::Finished => "finished",
            ExperimentStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<ExperimentStatus> {
        [ExperimentStatus::Running, ExperimentStatus::Finished, ExperimentStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// Progress of an experiment, stored as the fields of the `P:exp:E:state` hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentState {
    pub round: RoundIndex,
    pub phase: Phase,
    pub status: ExperimentStatus,
    /// Sampling weights for the generate tasks of the current round, or of the next one once the
    /// current round is split.
    pub generator_state: GeneratorState,
    /// Hard and easy anomaly descriptions of the last split round, for an LLM knowledge source.
    pub hard_examples: Vec<String>,
    pub easy_examples: Vec<String>,
    /// Dataset fingerprint every task carries.
    pub dataset_fingerprint: String,
    /// Output folder, such as `runs`. The report and DPO files go to `<output_dir>/<experiment>`.
    pub output_dir: PathBuf,
    /// Error that stopped a failed experiment.
    pub error: Option<String>,
    /// Creation time, in seconds since the Unix epoch.
    pub created_at: u64,
}

/// Wall time and task time of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTiming {
    /// Seconds from the first publish to the last completion, as the coordinator saw them.
    pub wall_seconds: f64,
    /// Seconds of the phase's wall time during which at least one task body ran, from the
    /// completion events' `seconds`.
    pub busy_seconds: f64,
    /// Sum of the task bodies' seconds over all tasks of the phase.
    pub task_seconds: f64,
    /// Tasks the phase ran.
    pub tasks: u32,
    /// Completion events received. Fewer than `tasks` when tasks finished while no coordinator
    /// listened, as before a resume; `busy_seconds` then misses their time.
    pub events: u32,
}

/// Results of one round as the coordinator recorded them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRecord {
    pub round: RoundIndex,
    /// Share ρ_r of labelled anomalies drawn from the hard pool.
    pub hard_ratio: f64,
    /// Anomalies generated and scored this round.
    pub generated: u32,
    /// New anomalies that the splitting detector (round r − 1) marked hard.
    pub hard_new: u32,
    /// `hard_new / generated`.
    pub hard_fraction_new: f64,
    /// Share of new anomalies that round 0's detector marks hard under the same rule.
    pub hard_fraction_new_vs_baseline: f64,
    /// Threshold of the split rule under round r − 1's detector.
    pub threshold: f64,
    /// Threshold of the split rule under round 0's detector.
    pub baseline_threshold: f64,
    /// Pool sizes after the split.
    pub hard_pool: u32,
    pub easy_pool: u32,
    /// Labelled anomalies in the train task from each pool, repeats counted.
    pub labelled_hard: u32,
    pub labelled_easy: u32,
    /// Preference pairs exported for DPO.
    pub dpo_pairs: u32,
    pub phases: BTreeMap<Phase, PhaseTiming>,
    /// Filled in when the round's train task finishes.
    pub training: Option<TrainingResult>,
}

impl RoundRecord {
    /// Creates an empty record of `round`: zero counts, no timings, no training result.
    pub fn new(round: RoundIndex) -> Self {
        RoundRecord {
            round,
            hard_ratio: 0.0,
            generated: 0,
            hard_new: 0,
            hard_fraction_new: 0.0,
            hard_fraction_new_vs_baseline: 0.0,
            threshold: 0.0,
            baseline_threshold: 0.0,
            hard_pool: 0,
            easy_pool: 0,
            labelled_hard: 0,
            labelled_easy: 0,
            dpo_pairs: 0,
            phases: BTreeMap::new(),
            training: None,
        }
    }
}

/// The evaluation of a round's trained detector on the test split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingResult {
    pub auroc: f64,
    pub aupr: f64,
    pub epochs: u32,
    pub train_seconds: f64,
}

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Hard,
    Easy,
}

impl PoolKind {
    fn suffix(self) -> &'static str {
        match self {
            PoolKind::Hard => "pool:hard",
            PoolKind::Easy => "pool:easy",
        }
    }
}

/// The writes of one split: the new pools, the round's record and the state that follows.
#[derive(Debug, Clone)]
pub struct SplitCommit<'a> {
    pub hard_pool: &'a [(AnomalyId, f64)],
    pub easy_pool: &'a [(AnomalyId, f64)],
    pub record: &'a RoundRecord,
    pub next: &'a ExperimentState,
}

/// An experiment id is already taken.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("experiment {0} already exists under this store.key_prefix; resume it with `kka-coordinator resume {0}` or pick another --experiment")]
    Exists(ExperimentId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    fn corrupt(&self, key: String, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { key, reason: reason.to_string() }
    }

    /// Creates an experiment: stores its config and initial state, unless the id is taken.
    pub async fn create_experiment(
        &self,
        experiment: &ExperimentId,
        config: &ExperimentConfig,
        state: &ExperimentState,
    ) -> Result<(), CreateError> {
        let config_key = self.experiment_key(experiment, "config");
        let created: bool = self
            .connection()
            .set_nx(&config_key, crate::messages::encode(config))
            .await
            .map_err(StoreError::redis("SETNX config"))?;
        if !created {
            return Err(CreateError::Exists(experiment.clone()));
        }
        self.save_state(experiment, state).await?;
        Ok(())
    }

    /// Checks whether any key of the experiment's config or state exists, without parsing them.
    pub async fn experiment_exists(&self, experiment: &ExperimentId) -> Result<bool, StoreError> {
        let keys = [self.experiment_key(experiment, "config"), self.experiment_key(experiment, "state")];
        let count: u64 = self.connection().exists(&keys[..]).await.map_err(StoreError::redis("EXISTS"))?;
        Ok(count > 0)
    }

    /// Reads the experiment's stored config, or `None` when there is no such experiment.
    pub async fn experiment_config(&self, experiment: &ExperimentId) -> Result<Option<ExperimentConfig>, StoreError> {
        let key = self.experiment_key(experiment, "config");
        let raw: Option<Vec<u8>> = self.connection().get(&key).await.map_err(StoreError::redis("GET config"))?;
        raw.map(|bytes| serde_json::from_slice(&bytes).map_err(|error| self.corrupt(key, error))).transpose()
    }

    /// Ids of every experiment under the key prefix, sorted.
    pub async fn list_experiments(&self) -> Result<Vec<ExperimentId>, StoreError> {
        let pattern = format!("{}:exp:*:config", self.prefix);
        let mut connection = self.connection();
        let mut iter: redis::AsyncIter<String> =
            connection.scan_match(&pattern).await.map_err(StoreError::redis("SCAN"))?;
        let mut ids = Vec::new();
        let head = format!("{}:exp:", self.prefix);
        while let Some(key) = futures::StreamExt::next(&mut iter).await {
            let key = key.map_err(StoreError::redis("SCAN"))?;
            let name = key.strip_prefix(&head).and_then(|rest| rest.strip_suffix(":config"));
            // A key that matches the pattern without a valid id in it was not written by kka, so skip it.
            if let Some(id) = name.and_then(|name| ExperimentId::new(name).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Replaces the experiment's state.
    pub async fn save_state(&self, experiment: &ExperimentId, state: &ExperimentState) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.add_state_writes(&mut pipe, experiment, state);
        let () = pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("HSET state"))?;
        Ok(())
    }

    fn add_state_writes(&self, pipe: &mut redis::Pipeline, experiment: &ExperimentId, state: &ExperimentState) {
        let key = self.experiment_key(experiment, "state");
        let fields: Vec<(&str, String)> = vec![
            ("round", state.round.0.to_string()),
            ("phase", state.phase.as_str().to_owned()),
            ("status", state.status.as_str().to_owned()),
            ("generator_state", json(&state.generator_state)),
            ("hard_examples", json(&state.hard_examples)),
            ("easy_examples", json(&state.easy_examples)),
            ("dataset_fingerprint", state.dataset_fingerprint.clone()),
            ("output_dir", state.output_dir.to_string_lossy().into_owned()),
            ("error", state.error.clone().unwrap_or_default()),
            ("created_at", state.created_at.to_string()),
        ];
        pipe.hset_multiple(&key, &fields).ignore();
    }

    /// Reads the experiment's state, or `None` when there is no such experiment.
    pub async fn experiment_state(&self, experiment: &ExperimentId) -> Result<Option<ExperimentState>, StoreError> {
        let key = self.experiment_key(experiment, "state");
        let fields: BTreeMap<String, String> =
            self.connection().hgetall(&key).await.map_err(StoreError::redis("HGETALL state"))?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_state(&fields).map(Some).map_err(|reason| self.corrupt(key, reason))
    }

    /// Checks which of `tasks` are marked done, returning one flag per task in the same order.
    pub async fn tasks_done(&self, experiment: &ExperimentId, tasks: &[TaskId]) -> Result<Vec<bool>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.experiment_key(experiment, "done");
        let members: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        redis::cmd("SMISMEMBER")
            .arg(&key)
            .arg(&members)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::redis("SMISMEMBER done"))
    }

    /// Scores of `ids` under round `round`'s detector, in the same order; `None` where missing.
    pub async fn scores(
        &self,
        experiment: &ExperimentId,
        round: RoundIndex,
        ids: &[AnomalyId],
    ) -> Result<Vec<Option<ScoreRecord>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.scores_key(experiment, round);
        let fields: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::redis("HMGET scores"))?;
        raw.into_iter()
            .map(|value| {
                value
                    .map(|bytes| serde_json::from_slice(&bytes).map_err(|error| self.corrupt(key.clone(), error)))
                    .transpose()
            })
            .collect()
    }

    /// Round `round`'s checkpoint metadata, or `None` before its train task finished.
    pub async fn checkpoint_meta(
        &self,
        experiment: &ExperimentId,
        round: RoundIndex,
    ) -> Result<Option<CheckpointMeta>, StoreError> {
        let key = self.checkpoint_meta_key(experiment, round);
        let raw: Option<Vec<u8>> = self.connection().get(&key).await.map_err(StoreError::redis("GET checkpoint meta"))?;
        raw.map(|bytes| serde_json::from_slice(&bytes).map_err(|error| self.corrupt(key, error))).transpose()
    }

    /// Provenance records of `ids`, without pixels, in the same order; `None` where missing.
    pub async fn anomaly_records(&self, ids: &[AnomalyId]) -> Result<Vec<Option<AnomalyRecord>>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.experiment_key(&id.experiment, &format!("anomaly:{id}")), "meta");
        }
        let raw: Vec<Option<Vec<u8>>> =
            pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("HGET anomaly meta"))?;
        ids.iter()
            .zip(raw)
            .map(|(id, value)| {
                let key = self.experiment_key(&id.experiment, &format!("anomaly:{id}"));
                value.map(|bytes| serde_json::from_slice(&bytes).map_err(|error| self.corrupt(key, error))).transpose()
            })
            .collect()
    }

    /// Reads a pool's members and scores, sorted by id.
    pub async fn pool(&self, experiment: &ExperimentId, kind: PoolKind) -> Result<Vec<(AnomalyId, f64)>, StoreError> {
        let key = self.experiment_key(experiment, kind.suffix());
        let raw: Vec<(String, f64)> =
            self.connection().zrange_withscores(&key, 0, -1).await.map_err(StoreError::redis("ZRANGE pool"))?;
        let mut entries = raw
            .into_iter()
            .map(|(member, score)| {
                member.parse::<AnomalyId>().map(|id| (id, score)).map_err(|error| self.corrupt(key.clone(), error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Sizes of the hard and easy pools.
    pub async fn pool_sizes(&self, experiment: &ExperimentId) -> Result<(u64, u64), StoreError> {
        let mut pipe = redis::pipe();
        pipe.zcard(self.experiment_key(experiment, PoolKind::Hard.suffix()));
        pipe.zcard(self.experiment_key(experiment, PoolKind::Easy.suffix()));
        pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("ZCARD pools"))
    }

    /// Applies a split in one transaction: replaces both pools, stores the round's record and
    /// moves the state on. Running it twice with the same arguments leaves the same keys.
    pub async fn commit_split(&self, experiment: &ExperimentId, split: &SplitCommit<'_>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (kind, entries) in [(PoolKind::Hard, split.hard_pool), (PoolKind::Easy, split.easy_pool)] {
            let key = self.experiment_key(experiment, kind.suffix());
            pipe.del(&key).ignore();
            // ZADD takes (score, member) pairs; chunks keep each command a reasonable size.
            for chunk in entries.chunks(1000) {
                let items: Vec<(f64, String)> = chunk.iter().map(|(id, score)| (*score, id.to_string())).collect();
                pipe.zadd_multiple(&key, &items).ignore();
            }
        }
        self.add_round_write(&mut pipe, experiment, split.record);
        self.add_state_writes(&mut pipe, experiment, split.next);
        let () = pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("MULTI/EXEC split"))?;
        Ok(())
    }

    /// Stores a round's record and the state that follows in one transaction.
    pub async fn commit_round(
        &self,
        experiment: &ExperimentId,
        record: &RoundRecord,
        next: &ExperimentState,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_round_write(&mut pipe, experiment, record);
        self.add_state_writes(&mut pipe, experiment, next);
        let () = pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("MULTI/EXEC round"))?;
        Ok(())
    }

    fn add_round_write(&self, pipe: &mut redis::Pipeline, experiment: &ExperimentId, record: &RoundRecord) {
        let key = self.experiment_key(experiment, "rounds");
        pipe.hset(&key, record.round.0, json(record)).ignore();
    }

    /// Reads every stored round record, by round.
    pub async fn round_records(&self, experiment: &ExperimentId) -> Result<BTreeMap<u32, RoundRecord>, StoreError> {
        let key = self.experiment_key(experiment, "rounds");
        let raw: BTreeMap<u32, String> = self.connection().hgetall(&key).await.map_err(StoreError::redis("HGETALL rounds"))?;
        raw.into_iter()
            .map(|(round, text)| {
                serde_json::from_str(&text).map(|record| (round, record)).map_err(|error| self.corrupt(key.clone(), error))
            })
            .collect()
    }

    /// Deletes every key of one experiment and returns how many were removed.
    pub async fn delete_experiment(&self, experiment: &ExperimentId) -> Result<u64, StoreError> {
        let pattern = self.experiment_key(experiment, "*");
        let mut connection = self.connection();
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> =
                connection.scan_match(&pattern).await.map_err(StoreError::redis("SCAN"))?;
            let mut keys = Vec::new();
            while let Some(key) = futures::StreamExt::next(&mut iter).await {
                keys.push(key.map_err(StoreError::redis("SCAN"))?);
            }
            keys
        };
        let mut removed = 0;
        for chunk in keys.chunks(500) {
            let count: u64 = connection.unlink(chunk).await.map_err(StoreError::redis("UNLINK"))?;
            removed += count;
        }
        Ok(removed)
    }
}

fn json<T: Serialize>(value: &T) -> String {
    // Our record types hold only strings, numbers and maps with string-like keys.
    String::from_utf8(crate::messages::encode(value)).unwrap_or_default()
}

fn parse_state(fields: &BTreeMap<String, String>) -> Result<ExperimentState, String> {
    let field = |name: &str| fields.get(name).map(String::as_str).ok_or_else(|| format!("field {name} is missing"));
    let number = |name: &str| -> Result<u64, String> {
        field(name)?.parse().map_err(|_| format!("field {name} is not an unsigned integer"))
    };
    let parsed = |name: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(field(name)?).map_err(|error| format!("field {name}: {error}"))
    };
    let round = u32::try_from(number("round")?).map_err(|_| "field round is too large".to_owned())?;
    let error = field("error")?;
    Ok(ExperimentState {
        round: RoundIndex(round),
        phase: Phase::parse(field("phase")?).ok_or("field phase is not a phase name")?,
        status: ExperimentStatus::parse(field("status")?).ok_or("field status is not a status name")?,
        generator_state: serde_json::from_value(parsed("generator_state")?).map_err(|e| e.to_string())?,
        hard_examples: serde_json::from_value(parsed("hard_examples")?).map_err(|e| e.to_string())?,
        easy_examples: serde_json::from_value(parsed("easy_examples")?).map_err(|e| e.to_string())?,
        dataset_fingerprint: field("dataset_fingerprint")?.to_owned(),
        output_dir: PathBuf::from(field("output_dir")?),
        error: if error.is_empty() { None } else { Some(error.to_owned()) },
        created_at: number("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StoreSettings};

    async fn store() -> Store {
        let settings = StoreSettings {
            key_prefix: format!("test-exp-{}", uuid::Uuid::new_v4().simple()),
            ..Config::from_toml("").unwrap().store.clone()
        };
        Store::connect(&settings).await.expect("Redis must run on 127.0.0.1:6379 for these tests")
    }

    fn experiment_config() -> ExperimentConfig {
        let config = Config::from_toml("").unwrap();
        ExperimentConfig {
            dataset: config.dataset.clone(),
            detector: config.detector.clone(),
            generator: config.generator.clone(),
            knowledge: config.knowledge.clone(),
            curriculum: config.curriculum.clone(),
        }
    }

    fn state(round: u32, phase: Phase) -> ExperimentState {
        let mut generator_state = GeneratorState::default();
        generator_state.concept_weights.insert("tear".into(), 0.75);
        generator_state.severity_weights = vec![0.5, 0.5];
        ExperimentState {
            round: RoundIndex(round),
            phase,
            status: ExperimentStatus::Running,
            generator_state,
            hard_examples: vec!["a faint stain".into()],
            easy_examples: vec![],
            dataset_fingerprint: "abc".into(),
            output_dir: PathBuf::from("runs"),
            error: None,
            created_at: 1_700_000_000,
        }
    }

    fn id(experiment: &ExperimentId, index: u32) -> AnomalyId {
        AnomalyId::new(experiment.clone(), RoundIndex(1), 0, index)
    }

    #[tokio::test]
    async fn create_stores_config_and_state() {
        let store = store().await;
        let experiment = ExperimentId::new("e1").unwrap();
        store.create_experiment(&experiment, &experiment_config(), &state(0, Phase::Train)).await.unwrap();

        assert!(store.experiment_exists(&experiment).await.unwrap());
        assert!(!store.experiment_exists(&ExperimentId::new("other").unwrap()).await.unwrap());
        assert_eq!(store.experiment_config(&experiment).await.unwrap(), Some(experiment_config()));
        assert_eq!(store.experiment_state(&experiment).await.unwrap(), Some(state(0, Phase::Train)));
        assert_eq!(store.list_experiments().await.unwrap(), vec![experiment.clone()]);
        store.delete_all(&store.prefix().to_owned()).await.unwrap();
    }

    #[tokio::test]
    async fn create_rejects_taken_id() {
        let store = store().await;
        let experiment = ExperimentId::new("taken").unwrap();
        store.create_experiment(&experiment, &experiment_config(), &state(0, Phase::Train)).await.unwrap();
        let error = store.create_experiment(&experiment, &experiment_config(), &state(3, Phase::Score)).await.unwrap_err();
        assert!(matches!(error, CreateError::Exists(_)), "{error}");
        assert!(error.to_string().contains("kka-coordinator resume taken"), "{error}");
        assert_eq!(store.experiment_state(&experiment).await.unwrap(), Some(state(0, Phase::Train)));
        store.delete_all(&store.prefix().to_owned()).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_experiment_reads_as_none() {
        let store = store().await;
        let experiment = ExperimentId::new("nobody").unwrap();
        assert_eq!(store.experiment_config(&experiment).await.unwrap(), None);
        assert_eq!(store.experiment_state(&experiment).await.unwrap(), None);
        assert_eq!(store.checkpoint_meta(&experiment, RoundIndex(0)).await.unwrap(), None);
        assert_eq!(store.scores(&experiment, RoundIndex(0), &[id(&experiment, 0)]).await.unwrap(), vec![None]);
        assert_eq!(store.anomaly_records(&[id(&experiment, 0)]).await.unwrap(), vec![None]);
        assert!(store.round_records(&experiment).await.unwrap().is_empty());
        assert_eq!(store.pool_sizes(&experiment).await.unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn split_commit_replaces_pools_and_is_idempotent() {
        let store = store().await;
        let experiment = ExperimentId::new("split").unwrap();
        store.create_experiment(&experiment, &experiment_config(), &state(1, Phase::Split)).await.unwrap();
        let hard = vec![(id(&experiment, 0), 0.5), (id(&experiment, 1), -1.0)];
        let easy = vec![(id(&experiment, 2), 7.0)];
        let record = RoundRecord { generated: 3, hard_new: 2, ..RoundRecord::new(RoundIndex(1)) };
        let next = state(1, Phase::Train);
        let split = SplitCommit { hard_pool: &hard, easy_pool: &easy, record: &record, next: &next };

        store.commit_split(&experiment, &split).await.unwrap();
        store.commit_split(&experiment, &split).await.unwrap();

        assert_eq!(store.pool(&experiment, PoolKind::Hard).await.unwrap(), hard);
        assert_eq!(store.pool(&experiment, PoolKind::Easy).await.unwrap(), easy);
        assert_eq!(store.pool_sizes(&experiment).await.unwrap(), (2, 1));
        assert_eq!(store.round_records(&experiment).await.unwrap()[&1], record);
        assert_eq!(store.experiment_state(&experiment).await.unwrap().unwrap().phase, Phase::Train);

        let smaller = vec![(id(&experiment, 1), -1.0)];
        let split = SplitCommit { hard_pool: &smaller, easy_pool: &easy, record: &record, next: &next };
        store.commit_split(&experiment, &split).await.unwrap();
        assert_eq!(store.pool(&experiment, PoolKind::Hard).await.unwrap(), smaller);
        store.delete_all(&store.prefix().to_owned()).await.unwrap();
    }

    #[tokio::test]
    async fn tasks_done_follows_the_done_set() {
        let store = store().await;
        let experiment = ExperimentId::new("done").unwrap();
        let tasks: Vec<TaskId> =
            (0..3).map(|shard| TaskId::new(experiment.clone(), RoundIndex(1), crate::ids::TaskKind::Score, shard)).collect();
        let summary = crate::messages::TaskSummary::Scored { count: 1 };
        store.commit_task(&tasks[1], redis::pipe(), &summary).await.unwrap();

        assert_eq!(store.tasks_done(&experiment, &tasks).await.unwrap(), vec![false, true, false]);
        assert!(store.tasks_done(&experiment, &[]).await.unwrap().is_empty());
        assert_eq!(store.delete_experiment(&experiment).await.unwrap(), 2);
        assert_eq!(store.tasks_done(&experiment, &tasks).await.unwrap(), vec![false, false, false]);
    }

    #[tokio::test]
    async fn corrupt_state_names_the_key() {
        let store = store().await;
        let experiment = ExperimentId::new("corrupt").unwrap();
        let key = store.experiment_key(&experiment, "state");
        let () = store.connection().hset(&key, "round", "x").await.unwrap();
        let error = store.experiment_state(&experiment).await.unwrap_err().to_string();
        assert!(error.contains(&key), "{error}");
        store.delete_all(&store.prefix().to_owned()).await.unwrap();
    }

    #[test]
    fn state_round_trips_through_fields() {
        let original = state(2, Phase::Score);
        let store_fields: BTreeMap<String, String> = [
            ("round", "2"),
            ("phase", "score"),
            ("status", "running"),
            ("generator_state", r#"{"concept_weights":{"tear":0.75},"severity_weights":[0.5,0.5]}"#),
            ("hard_examples", r#"["a faint stain"]"#),
            ("easy_examples", "[]"),
            ("dataset_fingerprint", "abc"),
            ("output_dir", "runs"),
            ("error", ""),
            ("created_at", "1700000000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(parse_state(&store_fields).unwrap(), original);
    }
}
