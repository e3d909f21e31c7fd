//! The experiment report: `report.json`, `report.md`, `report.svg` and the table printed at the
//! end of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kka_shared::store::experiments::{ExperimentConfig, ExperimentState, Phase, PhaseTiming, RoundRecord};
use serde::{Deserialize, Serialize};

/// The whole report, as written to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub experiment: String,
    /// `running`, `finished` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub config: ConfigSummary,
    /// Test AUROC and AUPR of the round-0 Deep SVDD detector; `null` before it finished.
    pub baseline_auroc: Option<f64>,
    pub baseline_aupr: Option<f64>,
    pub baseline_seconds: f64,
    /// KKA rounds 1..=R that have been split, in order.
    pub rounds: Vec<RoundReport>,
    /// Wall seconds per phase, summed over all rounds.
    pub phase_seconds: PhaseSeconds,
    /// Share of phase wall time during which no task body ran: publishing, queueing, waiting
    /// for events and the coordinator's own work. `null` when no task reported its time.
    pub orchestration_share: Option<f64>,
    /// The same share per task phase (`generate`, `score`, `train`), over all rounds. Short
    /// phases show the per-task overhead that the long train phases hide.
    pub orchestration_share_by_phase: BTreeMap<String, f64>,
    /// Sum of all phases' wall seconds.
    pub total_seconds: f64,
}

/// One KKA round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u32,
    pub hard_ratio: f64,
    /// `null` until the round's train task finished.
    pub auroc: Option<f64>,
    pub aupr: Option<f64>,
    pub generated: u32,
    pub hard_fraction_new: f64,
    pub hard_fraction_new_vs_baseline: f64,
    pub hard_pool: u32,
    pub easy_pool: u32,
    /// Wall seconds of the round's phases.
    pub seconds: f64,
    pub phase_seconds: PhaseSeconds,
    pub labelled_hard: u32,
    pub labelled_easy: u32,
    pub threshold: f64,
    pub baseline_threshold: f64,
    pub dpo_pairs: u32,
}

/// Wall seconds per phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PhaseSeconds {
    pub generate: f64,
    pub score: f64,
    pub split: f64,
    pub train: f64,
}

impl PhaseSeconds {
    fn from_phases(phases: &BTreeMap<Phase, PhaseTiming>) -> Self {
        let wall = |phase| phases.get(&phase).map_or(0.0, |timing: &PhaseTiming| timing.wall_seconds);
        PhaseSeconds {
            generate: wall(Phase::Generate),
            score: wall(Phase::Score),
            split: wall(Phase::Split),
            train: wall(Phase::Train),
        }
    }

    fn add(&mut self, other: &PhaseSeconds) {
        self.generate += other.generate;
        self.score += other.score;
        self.split += other.split;
        self.train += other.train;
    }

    fn total(&self) -> f64 {
        self.generate + self.score + self.split + self.train
    }
}

/// The settings that shape the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub dataset: String,
    pub normal_classes: Vec<u32>,
    pub train_limit: usize,
    pub test_limit: usize,
    pub rounds: u32,
    pub anomalies_per_round: u32,
    pub labelled_anomalies: u32,
    pub detector: String,
    pub epochs: u32,
    pub generator: String,
    pub knowledge_source: String,
    pub schedule: serde_json::Value,
    pub split: serde_json::Value,
    pub pool_cap: u32,
    pub pool_policy: String,
    pub update_lr: f64,
    pub update_floor: f64,
    pub seed: u64,
}

impl ConfigSummary {
    pub fn new(config: &ExperimentConfig) -> Self {
        let curriculum = &config.curriculum;
        ConfigSummary {
            dataset: enum_name(&config.dataset.format),
            normal_classes: config.dataset.protocol.normal_classes.clone(),
            train_limit: config.dataset.protocol.train_limit,
            test_limit: config.dataset.protocol.test_limit,
            rounds: curriculum.rounds,
            anomalies_per_round: curriculum.anomalies_per_round,
            labelled_anomalies: curriculum.labelled_anomalies,
            detector: curriculum.detector.to_string(),
            epochs: config.detector.epochs,
            generator: enum_name(&config.generator.kind),
            knowledge_source: enum_name(&config.knowledge.source),
            schedule: serde_json::to_value(&curriculum.schedule).unwrap_or_default(),
            split: serde_json::to_value(&curriculum.split).unwrap_or_default(),
            pool_cap: curriculum.pool_cap,
            pool_policy: enum_name(&curriculum.pool_policy),
            update_lr: curriculum.update_lr,
            update_floor: curriculum.update_floor,
            seed: curriculum.seed,
        }
    }
}

/// Returns the serde name of a unit enum variant, such as `fashion-mnist`.
fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

impl Report {
    /// Builds the report from the experiment's config, state and round records in Redis.
    pub fn build(
        experiment: &str,
        config: &ExperimentConfig,
        state: &ExperimentState,
        records: &BTreeMap<u32, RoundRecord>,
    ) -> Report {
        let baseline = records.get(&0);
        let baseline_training = baseline.and_then(|record| record.training);
        let rounds: Vec<RoundReport> = records.values().filter(|r| r.round.0 > 0).map(round_report).collect();

        let mut phase_seconds = baseline.map(|r| PhaseSeconds::from_phases(&r.phases)).unwrap_or_default();
        for round in &rounds {
            phase_seconds.add(&round.phase_seconds);
        }
        Report {
            experiment: experiment.to_owned(),
            status: state.status.as_str().to_owned(),
            error: state.error.clone(),
            config: ConfigSummary::new(config),
            baseline_auroc: baseline_training.map(|t| t.auroc),
            baseline_aupr: baseline_training.map(|t| t.aupr),
            baseline_seconds: baseline.map_or(0.0, |r| PhaseSeconds::from_phases(&r.phases).total()),
            rounds,
            phase_seconds,
            orchestration_share: orchestration_share(records.values().flat_map(|r| r.phases.iter())),
            orchestration_share_by_phase: share_by_phase(records),
            total_seconds: phase_seconds.total(),
        }
    }

    /// Writes `report.json`, `report.md` and `report.svg` into `dir` and returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let json_path = dir.join("report.json");
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        std::fs::write(&json_path, json)?;

        let markdown_path = dir.join("report.md");
        std::fs::write(&markdown_path, self.markdown())?;

        let plot_path = dir.join("report.svg");
        crate::plot::write_svg(self, &plot_path).map_err(std::io::Error::other)?;
        Ok(vec![json_path, markdown_path, plot_path])
    }

    /// Formats the per-round table as Markdown, which also reads well as plain text.
    pub fn table(&self) -> String {
        let mut table = String::from(
            "| round | hard ratio | AUROC | AUPR | generated | hard new (r-1) | hard new (r0) | hard pool | easy pool | seconds |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let _ = writeln!(
            table,
            "| 0 | - | {} | {} | - | - | - | - | - | {:.1} |",
            optional(self.baseline_auroc),
            optional(self.baseline_aupr),
            self.baseline_seconds
        );
        for round in &self.rounds {
            let _ = writeln!(
                table,
                "| {} | {:.3} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {:.1} |",
                round.round,
                round.hard_ratio,
                optional(round.auroc),
                optional(round.aupr),
                round.generated,
                round.hard_fraction_new,
                round.hard_fraction_new_vs_baseline,
                round.hard_pool,
                round.easy_pool,
                round.seconds
            );
        }
        table
    }

    /// Formats the whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut text = format!("# KKA experiment {}\n\nStatus: {}", self.experiment, self.status);
        if let Some(error) = &self.error {
            let _ = write!(text, " ({error})");
        }
        let config = &self.config;
        let _ = write!(
            text,
            "\n\nDataset {} with normal classes {:?}; {} rounds of {} generated anomalies; {} labelled \
             anomalies per round; detector {} ({} epochs) against a deep-svdd baseline; generator {}, \
             knowledge source {}; seed {}.\n\n",
            config.dataset,
            config.normal_classes,
            config.rounds,
            config.anomalies_per_round,
            config.labelled_anomalies,
            config.detector,
            config.epochs,
            config.generator,
            config.knowledge_source,
            config.seed
        );
        text.push_str(&self.table());
        let _ = write!(
            text,
            "\n\"hard new (r-1)\" is the share of the round's new anomalies that the previous round's \
             detector marked hard; \"hard new (r0)\" is the same share under the fixed round-0 detector.\n\n\
             Phase wall seconds: generate {:.1}, score {:.1}, split {:.1}, train {:.1}, total {:.1}. \
             Orchestration share (phase wall time with no task body running): {}{}.\n",
            self.phase_seconds.generate,
            self.phase_seconds.score,
            self.phase_seconds.split,
            self.phase_seconds.train,
            self.total_seconds,
            self.orchestration_share.map_or("unknown".to_owned(), |share| format!("{:.1} %", share * 100.0)),
            self.per_phase_shares()
        );
        text
    }
}

impl Report {
    /// Formats the per-phase orchestration shares as " (generate 1.2 %, ...)", or "" without any.
    fn per_phase_shares(&self) -> String {
        if self.orchestration_share_by_phase.is_empty() {
            return String::new();
        }
        let parts: Vec<String> =
            self.orchestration_share_by_phase.iter().map(|(phase, share)| format!("{phase} {:.1} %", share * 100.0)).collect();
        format!(" ({})", parts.join(", "))
    }
}

fn round_report(record: &RoundRecord) -> RoundReport {
    let phase_seconds = PhaseSeconds::from_phases(&record.phases);
    RoundReport {
        round: record.round.0,
        hard_ratio: record.hard_ratio,
        auroc: record.training.map(|t| t.auroc),
        aupr: record.training.map(|t| t.aupr),
        generated: record.generated,
        hard_fraction_new: record.hard_fraction_new,
        hard_fraction_new_vs_baseline: record.hard_fraction_new_vs_baseline,
        hard_pool: record.hard_pool,
        easy_pool: record.easy_pool,
        seconds: phase_seconds.total(),
        phase_seconds,
        labelled_hard: record.labelled_hard,
        labelled_easy: record.labelled_easy,
        threshold: record.threshold,
        baseline_threshold: record.baseline_threshold,
        dpo_pairs: record.dpo_pairs,
    }
}

/// Computes 1 − busy / wall over the phases whose task time is known. A phase that ran no task
/// (the split) counts fully as orchestration. Phases with tasks but no completion event are left
/// out, because their busy time is unknown.
pub fn orchestration_share<'a>(phases: impl Iterator<Item = (&'a Phase, &'a PhaseTiming)>) -> Option<f64> {
    let (mut busy, mut wall) = (0.0, 0.0);
    for (_, timing) in phases {
        if timing.tasks > 0 && timing.events == 0 {
            continue;
        }
        busy += timing.busy_seconds.min(timing.wall_seconds);
        wall += timing.wall_seconds;
    }
    if wall > 0.0 {
        Some((1.0 - busy / wall).clamp(0.0, 1.0))
    } else {
        None
    }
}

fn share_by_phase(records: &BTreeMap<u32, RoundRecord>) -> BTreeMap<String, f64> {
    let mut shares = BTreeMap::new();
    for phase in [Phase::Generate, Phase::Score, Phase::Train] {
        let phases = records.values().flat_map(|r| r.phases.iter()).filter(|(p, _)| **p == phase);
        if let Some(share) = orchestration_share(phases) {
            shares.insert(phase.to_string(), share);
        }
    }
    shares
}

fn optional(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::Config;
    use kka_shared::ids::RoundIndex;
    use kka_shared::messages::GeneratorState;
    use kka_shared::store::experiments::{ExperimentStatus, TrainingResult};

    fn config() -> ExperimentConfig {
        let config = Config::from_toml("").unwrap();
        ExperimentConfig {
            dataset: config.dataset.clone(),
            detector: config.detector.clone(),
            generator: config.generator.clone(),
            knowledge: config.knowledge.clone(),
            curriculum: config.curriculum.clone(),
        }
    }

    fn state() -> ExperimentState {
        ExperimentState {
            round: RoundIndex(2),
            phase: Phase::Train,
            status: ExperimentStatus::Running,
            generator_state: GeneratorState::default(),
            hard_examples: vec![],
            easy_examples: vec![],
            dataset_fingerprint: "f".into(),
            output_dir: "runs".into(),
            error: None,
            created_at: 0,
        }
    }

    fn timing(wall: f64, busy: f64, tasks: u32, events: u32) -> PhaseTiming {
        PhaseTiming { wall_seconds: wall, busy_seconds: busy, task_seconds: busy, tasks, events }
    }

    fn records() -> BTreeMap<u32, RoundRecord> {
        let mut baseline = RoundRecord::new(RoundIndex(0));
        baseline.training = Some(TrainingResult { auroc: 0.8, aupr: 0.4, epochs: 2, train_seconds: 9.0 });
        baseline.phases.insert(Phase::Train, timing(10.0, 9.0, 1, 1));

        let mut first = RoundRecord::new(RoundIndex(1));
        first.hard_ratio = 0.25;
        first.generated = 60;
        first.hard_fraction_new = 0.5;
        first.hard_fraction_new_vs_baseline = 0.5;
        first.hard_pool = 30;
        first.easy_pool = 30;
        first.training = Some(TrainingResult { auroc: 0.85, aupr: 0.5, epochs: 2, train_seconds: 9.0 });
        first.phases.insert(Phase::Generate, timing(4.0, 3.0, 2, 2));
        first.phases.insert(Phase::Score, timing(2.0, 1.0, 1, 1));
        first.phases.insert(Phase::Split, timing(1.0, 0.0, 0, 0));
        first.phases.insert(Phase::Train, timing(10.0, 9.0, 1, 1));

        let mut second = RoundRecord::new(RoundIndex(2));
        second.hard_ratio = 0.75;
        second.generated = 60;
        second.phases.insert(Phase::Generate, timing(3.0, 0.0, 2, 0));
        BTreeMap::from([(0, baseline), (1, first), (2, second)])
    }

    #[test]
    fn report_json_has_the_documented_shape() {
        let report = Report::build("exp-1", &config(), &state(), &records());
        let value = serde_json::to_value(&report).unwrap();

        assert_eq!(value["experiment"], "exp-1");
        assert_eq!(value["baseline_auroc"], 0.8);
        let rounds = value["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2);
        for key in [
            "round",
            "hard_ratio",
            "auroc",
            "aupr",
            "generated",
            "hard_fraction_new",
            "hard_fraction_new_vs_baseline",
            "hard_pool",
            "easy_pool",
            "seconds",
        ] {
            assert!(rounds[0].get(key).is_some(), "rounds[0] lacks {key}");
        }
        assert_eq!(rounds[0]["round"], 1);
        assert_eq!(rounds[0]["auroc"], 0.85);
        assert!(rounds[1]["auroc"].is_null());
        assert_eq!(rounds[0]["seconds"], 17.0);
        assert!(value["config"]["rounds"].is_number());
        assert!(value["phase_seconds"]["train"].is_number());
    }

    #[test]
    fn phase_seconds_sum_over_rounds() {
        let report = Report::build("exp-1", &config(), &state(), &records());
        assert_eq!(report.phase_seconds, PhaseSeconds { generate: 7.0, score: 2.0, split: 1.0, train: 20.0 });
        assert_eq!(report.total_seconds, 30.0);
        assert_eq!(report.baseline_seconds, 10.0);
    }

    #[test]
    fn orchestration_share_skips_phases_without_events() {
        // Known phases: walls 10 + 4 + 2 + 1 + 10 = 27, busy 9 + 3 + 1 + 0 + 9 = 22.
        let report = Report::build("exp-1", &config(), &state(), &records());
        let share = report.orchestration_share.unwrap();
        assert!((share - 5.0 / 27.0).abs() < 1e-12, "{share}");
    }

    #[test]
    fn orchestration_share_by_phase_separates_phases() {
        let report = Report::build("exp-1", &config(), &state(), &records());
        let shares = &report.orchestration_share_by_phase;
        assert!((shares["train"] - 2.0 / 20.0).abs() < 1e-12, "{shares:?}");
        assert!((shares["generate"] - 1.0 / 4.0).abs() < 1e-12, "{shares:?}");
        assert!((shares["score"] - 0.5).abs() < 1e-12, "{shares:?}");
        assert!(!shares.contains_key("split"));
    }

    #[test]
    fn orchestration_share_is_none_without_time() {
        assert_eq!(orchestration_share(std::iter::empty()), None);
    }

    #[test]
    fn table_lists_baseline_and_rounds() {
        let table = Report::build("exp-1", &config(), &state(), &records()).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[2].starts_with("| 0 | - | 0.8000 |"), "{}", lines[2]);
        assert!(lines[3].starts_with("| 1 | 0.250 | 0.8500 |"), "{}", lines[3]);
        assert!(lines[4].contains("| - |"), "{}", lines[4]);
    }

    #[test]
    fn write_creates_all_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::build("exp-1", &config(), &state(), &records());
        let paths = report.write(dir.path()).unwrap();
        assert_eq!(paths.len(), 3);
        let back: Report = serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap();
        assert_eq!(back, report);
        assert!(std::fs::read_to_string(&paths[1]).unwrap().contains("| 1 | 0.250"));
        assert!(std::fs::read_to_string(&paths[2]).unwrap().starts_with("<svg"));
    }
}
