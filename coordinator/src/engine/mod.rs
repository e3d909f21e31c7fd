//! The curriculum state machine: it reads the experiment's round and phase from Redis, runs that
//! step, and commits the step's results together with the next phase.
//!
//! Round 0 trains the Deep SVDD baseline. Each round r ≥ 1 generates anomalies and scores them
//! with the detectors of rounds r − 1 and 0. It splits them into the hard and easy pools and
//! moves the generator toward hard anomalies. Then it trains the round's detector on labelled
//! anomalies from both pools. Because every step starts from the state in Redis and every task is
//! deterministic, a stopped coordinator continues with `kka-coordinator resume`.

mod split;
#[cfg(test)]
mod tests;
mod train;
mod wait;

use std::path::PathBuf;

use kka_shared::broker::{Broker, BrokerError, EventConsumer};
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId};
use kka_shared::store::experiments::{ExperimentState, ExperimentStatus, Phase, RoundRecord};
use kka_shared::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::plan::Planner;
use crate::report::Report;

pub use wait::union_length;

/// Connections to RabbitMQ and Redis.
#[derive(Debug, Clone)]
pub struct Services {
    pub broker: Broker,
    pub store: Store,
}

/// Run options besides the experiment's config.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Show a progress bar per phase on stderr.
    pub progress: bool,
    /// Stop once round N is done and round N + 1's generate tasks are queued, leaving the
    /// experiment for `kka-coordinator resume`. For tests of resuming.
    pub stop_after_round: Option<u32>,
    /// Cancelled on SIGINT or SIGTERM: the run stops waiting and leaves the experiment resumable.
    pub cancel: CancellationToken,
}

/// Reason a run stopped before the experiment finished.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("task {task} failed: {error}; fix the cause, then continue with `kka-coordinator resume {}`", task.experiment)]
    TaskFailed { task: TaskId, error: String },
    #[error("round {round} {phase} phase timed out after {seconds} s (curriculum.phase_timeout_secs) with unfinished tasks: {stuck}; check that kka-worker processes run and consume this broker.queue_prefix, then resume")]
    PhaseTimedOut { round: RoundIndex, phase: Phase, seconds: u64, stuck: String },
    #[error("{what} is missing from Redis although {task} is marked done; the worker's results were lost or deleted, so start a new experiment")]
    MissingResult { what: String, task: TaskId },
    #[error("invalid result of {task}: {reason}")]
    InvalidResult { task: TaskId, reason: String },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("experiment {0} has no state in Redis; it was deleted while running")]
    NoState(ExperimentId),
    #[error("stopped after round {round} as requested by --stop-after-round")]
    Stopped { round: RoundIndex },
    #[error("interrupted")]
    Interrupted,
}

impl EngineError {
    /// Whether the experiment should be marked failed: the error will repeat until someone
    /// fixes its cause. Interruptions and connection errors leave it resumable as it is.
    fn marks_failure(&self) -> bool {
        matches!(
            self,
            EngineError::TaskFailed { .. }
                | EngineError::PhaseTimedOut { .. }
                | EngineError::MissingResult { .. }
                | EngineError::InvalidResult { .. }
        )
    }
}

/// Runs one experiment from its stored state to the end.
pub struct Engine {
    planner: Planner,
    services: Services,
    options: EngineOptions,
    events: EventConsumer,
    /// `<output_dir>/<experiment>`: report and DPO files.
    run_dir: PathBuf,
}

impl Engine {
    /// Starts consuming the experiment's completion events. The event queue must exist before
    /// any task is published, so that no event is dropped.
    pub async fn start(planner: Planner, services: Services, options: EngineOptions, output_dir: PathBuf) -> Result<Engine, EngineError> {
        let events = services.broker.consume_events(&planner.experiment).await?;
        let run_dir = output_dir.join(planner.experiment.as_str());
        Ok(Engine { planner, services, options, events, run_dir })
    }

    /// Runs steps until the experiment finishes, and returns its report. On a failure that
    /// needs a fix, the experiment is marked failed first.
    pub async fn run(mut self) -> Result<Report, EngineError> {
        let result = self.run_steps().await;
        if let Err(error) = &result {
            if error.marks_failure() {
                self.mark_failed(error).await;
            }
        }
        let report = self.write_report().await;
        self.events.close().await;
        result?;
        report
    }

    async fn run_steps(&mut self) -> Result<(), EngineError> {
        loop {
            let state = self.state().await?;
            if state.status == ExperimentStatus::Finished {
                return Ok(());
            }
            match state.phase {
                Phase::Generate | Phase::Score => self.task_phase(state).await?,
                Phase::Split => self.split(state).await?,
                Phase::Train => self.train(state).await?,
            }
        }
    }

    async fn state(&self) -> Result<ExperimentState, EngineError> {
        let experiment = &self.planner.experiment;
        self.services.store.experiment_state(experiment).await?.ok_or_else(|| EngineError::NoState(experiment.clone()))
    }

    async fn round_record(&self, round: RoundIndex) -> Result<RoundRecord, EngineError> {
        let mut records = self.services.store.round_records(&self.planner.experiment).await?;
        Ok(records.remove(&round.0).unwrap_or_else(|| RoundRecord::new(round)))
    }

    /// Runs a generate or score phase and moves on to the next phase.
    async fn task_phase(&mut self, state: ExperimentState) -> Result<(), EngineError> {
        let round = state.round;
        let (tasks, next_phase) = match state.phase {
            Phase::Generate => (self.planner.generate_tasks(round, &state), Phase::Score),
            _ => (self.planner.score_tasks(round), Phase::Split),
        };
        let timing = self.run_tasks(round, state.phase, &tasks).await?;

        let mut record = self.round_record(round).await?;
        record.phases.insert(state.phase, timing);
        let next = ExperimentState { phase: next_phase, ..state };
        self.services.store.commit_round(&self.planner.experiment, &record, &next).await?;
        Ok(())
    }

    fn should_stop_after_publishing(&self, round: RoundIndex, phase: Phase) -> bool {
        phase == Phase::Generate && self.options.stop_after_round.is_some_and(|stop| round.0 == stop + 1)
    }

    async fn mark_failed(&self, error: &EngineError) {
        let experiment = &self.planner.experiment;
        let state = match self.services.store.experiment_state(experiment).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(store_error) => {
                tracing::error!(%store_error, %experiment, "failed to read the state to mark the experiment failed");
                return;
            }
        };
        let failed = ExperimentState { status: ExperimentStatus::Failed, error: Some(error.to_string()), ..state };
        if let Err(store_error) = self.services.store.save_state(experiment, &failed).await {
            tracing::error!(%store_error, %experiment, "failed to mark the experiment failed");
        }
    }

    /// Writes the report files from the current Redis state and returns the report.
    pub async fn write_report(&self) -> Result<Report, EngineError> {
        let experiment = &self.planner.experiment;
        let state = self.state().await?;
        let records = self.services.store.round_records(experiment).await?;
        let report = Report::build(experiment.as_str(), &self.planner.config, &state, &records);
        report.write(&self.run_dir).map_err(|source| EngineError::Write { path: self.run_dir.clone(), source })?;
        Ok(report)
    }
}
