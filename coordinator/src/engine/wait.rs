//! Publishing a phase's unfinished tasks and waiting until every task of the phase is done.
//!
//! Completion events wake the coordinator as soon as a task finishes and carry the seconds its
//! body ran. Redis stays the source of truth: a poll of the done set and the failure hash every
//! [`POLL_INTERVAL`] catches tasks whose event was lost or sent before this process listened.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kka_shared::ids::{RoundIndex, TaskId};
use kka_shared::messages::{TaskMessage, TaskOutcome};
use kka_shared::store::experiments::{Phase, PhaseTiming};

use super::{Engine, EngineError};

/// How often Redis is polled for finished and failed tasks while waiting.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often the worker registry is checked for live workers while waiting.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Task ids listed in a timeout error; the rest are counted.
const MAX_LISTED_TASKS: usize = 10;

/// Completion times seen during one phase.
#[derive(Debug, Default)]
struct Timeline {
    /// (start, end) of each task body, in seconds since the phase started.
    intervals: Vec<(f64, f64)>,
    task_seconds: f64,
    events: u32,
}

impl Timeline {
    fn record(&mut self, received_after: f64, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        self.intervals.push((received_after - seconds, received_after));
        self.task_seconds += seconds;
        self.events += 1;
    }

    fn timing(&self, wall_seconds: f64, tasks: usize) -> PhaseTiming {
        PhaseTiming {
            wall_seconds,
            busy_seconds: union_length(&self.intervals, wall_seconds),
            task_seconds: self.task_seconds,
            tasks: u32::try_from(tasks).unwrap_or(u32::MAX),
            events: self.events,
        }
    }
}

/// Total length of the union of `intervals`, each clipped to [0, limit].
pub fn union_length(intervals: &[(f64, f64)], limit: f64) -> f64 {
    let mut clipped: Vec<(f64, f64)> = intervals
        .iter()
        .map(|&(start, end)| (start.clamp(0.0, limit), end.clamp(0.0, limit)))
        .filter(|(start, end)| end > start)
        .collect();
    clipped.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (start, end) in clipped {
        current = match current {
            Some((open_start, open_end)) if start <= open_end => Some((open_start, open_end.max(end))),
            Some((open_start, open_end)) => {
                total += open_end - open_start;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0.0, |(start, end)| end - start)
}

impl Engine {
    /// Publishes the tasks that are not done yet and waits for all of `tasks` to finish.
    pub(super) async fn run_tasks(&mut self, round: RoundIndex, phase: Phase, tasks: &[TaskMessage]) -> Result<PhaseTiming, EngineError> {
        let started = Instant::now();
        let ids: Vec<TaskId> = tasks.iter().map(|task| task.task_id.clone()).collect();
        let done = self.services.store.tasks_done(&self.planner.experiment, &ids).await?;
        let pending: Vec<TaskMessage> =
            tasks.iter().zip(&done).filter(|(_, done)| !**done).map(|(task, _)| task.clone()).collect();

        if !pending.is_empty() {
            self.services.broker.publish_tasks(&pending).await?;
        }
        tracing::info!(round = round.0, %phase, tasks = tasks.len(), published = pending.len(), "phase started");
        if self.should_stop_after_publishing(round, phase) {
            return Err(EngineError::Stopped { round: round.previous().unwrap_or(RoundIndex::BASELINE) });
        }

        let timeline = self.wait_for(round, phase, &ids, pending.iter().map(|t| t.task_id.clone()).collect(), started).await?;
        let wall = started.elapsed().as_secs_f64();
        tracing::info!(round = round.0, %phase, seconds = wall, events = timeline.events, "phase finished");
        Ok(timeline.timing(wall, tasks.len()))
    }

    async fn wait_for(
        &mut self,
        round: RoundIndex,
        phase: Phase,
        all: &[TaskId],
        mut remaining: BTreeSet<TaskId>,
        started: Instant,
    ) -> Result<Timeline, EngineError> {
        let phase_ids: HashSet<&TaskId> = all.iter().collect();
        let mut counted: HashSet<TaskId> = HashSet::new();
        let mut timeline = Timeline::default();
        let bar = self.progress_bar(round, phase, all.len(), all.len() - remaining.len());
        let deadline = started + Duration::from_secs(self.planner.config.curriculum.phase_timeout_secs);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        let mut last_worker_check = Instant::now();
        let mut events_open = true;

        while !remaining.is_empty() {
            tokio::select! {
                () = self.options.cancel.cancelled() => return Err(EngineError::Interrupted),
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(timed_out(round, phase, self.planner.config.curriculum.phase_timeout_secs, &remaining));
                }
                received = self.events.next(), if events_open => {
                    let Some(received) = received else {
                        tracing::warn!("the completion event consumer stopped; waiting by polling Redis only");
                        events_open = false;
                        continue;
                    };
                    let event = &received.event;
                    if phase_ids.contains(&event.task_id) {
                        if let TaskOutcome::Failed { error } = &event.outcome {
                            if self.failure_is_current(&event.task_id).await? {
                                return Err(EngineError::TaskFailed { task: event.task_id.clone(), error: error.clone() });
                            }
                            tracing::info!(task = %event.task_id, %error, "ignoring a failure event from before the last resume");
                            if let Err(error) = received.ack().await {
                                tracing::warn!(%error, task = %event.task_id, "failed to acknowledge a completion event; it will arrive again");
                            }
                            continue;
                        }
                        if counted.insert(event.task_id.clone()) {
                            let received_after = received.incoming.received_at.saturating_duration_since(started).as_secs_f64();
                            timeline.record(received_after, event.seconds);
                        }
                        if remaining.remove(&event.task_id) {
                            bar.inc(1);
                        }
                    }
                    if let Err(error) = received.ack().await {
                        tracing::warn!(%error, task = %event.task_id, "failed to acknowledge a completion event; it will arrive again");
                    }
                }
                _ = poll.tick() => {
                    self.check_failures(&phase_ids).await?;
                    let still: Vec<TaskId> = remaining.iter().cloned().collect();
                    let done = self.services.store.tasks_done(&self.planner.experiment, &still).await?;
                    for (task, done) in still.into_iter().zip(done) {
                        if done && remaining.remove(&task) {
                            bar.inc(1);
                        }
                    }
                    if last_worker_check.elapsed() >= WORKER_CHECK_INTERVAL {
                        last_worker_check = Instant::now();
                        self.warn_without_workers(round, phase, remaining.len()).await;
                    }
                }
            }
        }
        bar.finish_and_clear();
        Ok(timeline)
    }

    /// Checks that a failure event is not stale: `kka-coordinator resume` clears the failure
    /// records of a failed experiment, but the failure events of the last run may still wait in
    /// its event queue. A runner records the failure before it publishes the event.
    async fn failure_is_current(&self, task: &TaskId) -> Result<bool, EngineError> {
        Ok(self.services.store.task_failure(task).await?.is_some())
    }

    async fn check_failures(&self, phase_ids: &HashSet<&TaskId>) -> Result<(), EngineError> {
        let failures = self.services.store.failures(&self.planner.experiment).await?;
        match failures.into_iter().find(|(task, _)| phase_ids.contains(task)) {
            Some((task, error)) => Err(EngineError::TaskFailed { task, error }),
            None => Ok(()),
        }
    }

    async fn warn_without_workers(&self, round: RoundIndex, phase: Phase, remaining: usize) {
        match self.services.store.live_workers().await {
            Ok(workers) if workers.is_empty() => {
                tracing::warn!(round = round.0, %phase, remaining, "no live worker; the tasks wait in RabbitMQ until a kka-worker starts");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "failed to read the worker registry"),
        }
    }

    fn progress_bar(&self, round: RoundIndex, phase: Phase, total: usize, done: usize) -> ProgressBar {
        if !self.options.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} tasks, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("round {round} {phase}"));
        bar.set_position(done as u64);
        bar.enable_steady_tick(Duration::from_millis(500));
        bar
    }
}

fn timed_out(round: RoundIndex, phase: Phase, seconds: u64, remaining: &BTreeSet<TaskId>) -> EngineError {
    let listed: Vec<String> = remaining.iter().take(MAX_LISTED_TASKS).map(ToString::to_string).collect();
    let more = remaining.len().saturating_sub(MAX_LISTED_TASKS);
    let mut stuck = listed.join(", ");
    if more > 0 {
        stuck.push_str(&format!(" and {more} more"));
    }
    EngineError::PhaseTimedOut { round, phase, seconds, stuck }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlaps() {
        let intervals = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)];
        assert_eq!(union_length(&intervals, 10.0), 4.0);
    }

    #[test]
    fn union_clips_to_the_phase() {
        let intervals = [(-3.0, 1.0), (9.0, 12.0)];
        assert_eq!(union_length(&intervals, 10.0), 2.0);
    }

    #[test]
    fn union_of_nothing_is_zero() {
        assert_eq!(union_length(&[], 10.0), 0.0);
        assert_eq!(union_length(&[(4.0, 4.0)], 10.0), 0.0);
    }

    #[test]
    fn timeline_sums_task_seconds() {
        let mut timeline = Timeline::default();
        timeline.record(5.0, 4.0);
        timeline.record(6.0, 4.0);
        timeline.record(7.0, f64::NAN);
        let timing = timeline.timing(8.0, 3);
        assert_eq!(timing.task_seconds, 8.0);
        assert_eq!(timing.busy_seconds, 5.0);
        assert_eq!(timing.events, 3);
        assert_eq!(timing.tasks, 3);
    }

    #[test]
    fn timeout_lists_first_tasks_and_counts_rest() {
        let experiment = kka_shared::ids::ExperimentId::new("t").unwrap();
        let remaining: BTreeSet<TaskId> = (0..12)
            .map(|shard| TaskId::new(experiment.clone(), RoundIndex(1), kka_shared::ids::TaskKind::Score, shard))
            .collect();
        let error = timed_out(RoundIndex(1), Phase::Score, 60, &remaining).to_string();
        assert!(error.contains("t/r1/score/0"), "{error}");
        assert!(error.contains("and 2 more"), "{error}");
        assert!(error.contains("60"), "{error}");
    }
}
