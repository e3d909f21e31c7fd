//! The consume, run, commit, acknowledge loop of a worker process.
//!
//! For each delivery the runner:
//!
//! 1. decodes it; a message that fails to decode (too large, unknown version, malformed) is
//!    copied to the dead-letter queue with the reason and acknowledged;
//! 2. opens one tracing span for the attempt, with the task id, experiment, round, kind, worker
//!    and attempt number;
//! 3. if Redis already marks the task done, re-sends its completion event from the stored
//!    summary and acknowledges, without running the body again;
//! 4. otherwise runs the handler of the task's kind on a blocking thread, catching panics (the
//!    built-in noop handler, which does no work, runs inline);
//! 5. settles the delivery by the handler's result:
//!    - `Done`: commits the writes, the done marker and the summary in one Redis transaction,
//!      publishes the completion event with a confirm, then acknowledges;
//!    - `Sliced`: re-publishes the same message with a confirm, then acknowledges;
//!    - retryable error: waits `worker.retry_delay_ms` (doubling per attempt), re-publishes with
//!      the attempt header incremented, then acknowledges; the attempt that reaches
//!      `worker.max_attempts` is treated as fatal;
//!    - fatal error or panic: records the error in `P:exp:E:failed`, dead-letters a copy with
//!      the reason, publishes a `Failed` event, then acknowledges.
//!
//! A delivery is acknowledged only after everything it causes is durable, so a worker that dies
//! at any point loses nothing: RabbitMQ redelivers, and the idempotent writes or the done check
//! make the second run harmless. When Redis or RabbitMQ fails while a delivery is being settled,
//! the delivery goes back to its queue after the retry delay, without counting an attempt.
//!
//! # The consumer acknowledgement timeout
//!
//! RabbitMQ closes the channel of a consumer that keeps a delivery unacknowledged for longer
//! than its `consumer_timeout` (30 minutes by default; RabbitMQ 3.10 cannot set it per queue),
//! and every delivery on that channel goes back to the queue. kka keeps each delivery short
//! instead of raising the timeout or acknowledging early, which would lose a task when its
//! worker dies:
//!
//! - generate and score tasks are sharded by the coordinator, so each one takes seconds;
//! - a train task handler checks [`TaskContext::slice_deadline`] (start + `worker.task_slice_secs`,
//!   1200 s by default) between epochs. Past it, the handler saves its progress to Redis and
//!   returns [`HandlerOutput::Sliced`]; the runner re-publishes the same message, waits for the
//!   confirm and only then acknowledges. The next worker to take it continues from the saved
//!   progress;
//! - a delivery can also wait in this process for a free slot when `broker.prefetch` exceeds
//!   `worker.concurrency`. One that waited for more than half of the time a slice leaves under
//!   the default timeout goes back to its queue instead of starting late.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kka_shared::broker::{Broker, BrokerError, Consumer, DeliveryHandle, Incoming, Outgoing};
use kka_shared::config::{Config, WorkerSettings};
use kka_shared::ids::{TaskKind, WorkerId, MAX_NAME_LEN};
use kka_shared::messages::{CompletionEvent, TaskBody, TaskMessage, TaskOutcome, TaskSummary};
use kka_shared::store::workers::{DatasetStatus, WorkerRecord};
use kka_shared::store::{Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::tasks::generate::GenerateHandler;
use crate::tasks::score::ScoreHandler;
use crate::tasks::train::TrainHandler;
use crate::tasks::{HandlerOutput, TaskContext, TaskError, TaskHandler};

/// The handler of each task kind this worker can run.
pub type Handlers = HashMap<TaskKind, Arc<dyn TaskHandler>>;

/// Builds the handler of every task kind that this build can run.
/// The three libtorch handlers share one dataset cache, so the files are read once per process.
pub fn handlers(config: &Config) -> Handlers {
    let dataset_cache = Arc::new(crate::data::DatasetCache::new(config.dataset.clone()));
    let mut handlers: Handlers = HashMap::new();
    handlers.insert(TaskKind::Noop, builtin_noop());
    handlers.insert(TaskKind::Generate, Arc::new(GenerateHandler::new(Arc::clone(&dataset_cache), config)));
    handlers.insert(TaskKind::Score, Arc::new(ScoreHandler::new(Arc::clone(&dataset_cache), config)));
    handlers.insert(TaskKind::Train, Arc::new(TrainHandler::new(dataset_cache, config)));
    handlers
}

/// Returns the built-in noop handler. It is one shared instance, so that the runner can tell it
/// apart from other handlers and run it inline: it does no work, and a blocking thread would
/// add two thread switches to every no-op task.
pub fn builtin_noop() -> Arc<dyn TaskHandler> {
    static NOOP: OnceLock<Arc<NoopHandler>> = OnceLock::new();
    let noop: Arc<NoopHandler> = Arc::clone(NOOP.get_or_init(|| Arc::new(NoopHandler)));
    noop
}

fn is_builtin_noop(handler: &Arc<dyn TaskHandler>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(handler), Arc::as_ptr(&builtin_noop()))
}

/// Runs no-op tasks: records the completion with the send time, so the coordinator can measure
/// the round trip.
#[derive(Debug, Default)]
pub struct NoopHandler;

impl TaskHandler for NoopHandler {
    fn handle(&self, task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        let TaskBody::Noop(body) = &task.body else {
            return Err(TaskError::fatal(anyhow::anyhow!("the noop handler got a {} task", task.kind())));
        };
        Ok(HandlerOutput::Done {
            writes: redis::pipe(),
            summary: TaskSummary::Noop { sent_at_micros: body.sent_at_micros },
        })
    }
}

/// Error that stops a runner from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("worker {worker} has no task kind to consume: {reason}")]
    NothingToConsume { worker: WorkerId, reason: String },
}

/// Counts of what a runner did, logged when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub sliced: u64,
    /// Deliveries of tasks already done, whose completion event was re-sent from Redis.
    pub already_done: u64,
    /// Deliveries that failed to decode.
    pub dead_lettered: u64,
    /// Deliveries returned to their queue unprocessed.
    pub requeued: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    sliced: AtomicU64,
    already_done: AtomicU64,
    dead_lettered: AtomicU64,
    requeued: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RunStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RunStats {
            succeeded: load(&self.succeeded),
            failed: load(&self.failed),
            retried: load(&self.retried),
            sliced: load(&self.sliced),
            already_done: load(&self.already_done),
            dead_lettered: load(&self.dead_lettered),
            requeued: load(&self.requeued),
        }
    }
}

/// Returns the worker id from `--id`, else `worker.id`, else `<hostname>-<pid>`.
pub fn worker_id(explicit: Option<&str>, settings: &WorkerSettings) -> Result<WorkerId, kka_shared::ids::InvalidId> {
    match explicit.filter(|id| !id.is_empty()).or(Some(settings.id.as_str()).filter(|id| !id.is_empty())) {
        Some(id) => WorkerId::new(id),
        None => WorkerId::new(default_worker_name(&hostname(), std::process::id())),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// `<host>-<pid>` with characters that ids do not allow replaced by `-`, cut to fit an id.
fn default_worker_name(host: &str, pid: u32) -> String {
    let suffix = format!("-{pid}");
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(MAX_NAME_LEN - suffix.len())
        .collect();
    format!("{host}{suffix}")
}

/// Returns the maximum time a delivery may wait in this process before its handler starts. A
/// slice takes up to `task_slice_secs`, so half of what remains of RabbitMQ's default acknowledgement timeout
/// is left as margin for the commit and for one epoch running past the deadline.
fn max_local_wait(settings: &WorkerSettings) -> Duration {
    let budget = WorkerSettings::RABBITMQ_CONSUMER_TIMEOUT_SECS.saturating_sub(settings.task_slice_secs);
    Duration::from_secs((budget / 2).max(1))
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A worker process's task loop. Build it with [`Runner::new`] and drive it with [`Runner::run`].
pub struct Runner {
    shared: Arc<Shared>,
}

/// State that every task of a runner shares.
struct Shared {
    config: Arc<Config>,
    worker: WorkerId,
    store: Store,
    broker: Broker,
    handlers: Handlers,
    /// Digest of this worker's dataset files; `None` when they could not be read.
    files_digest: Mutex<Option<String>>,
    /// Limits the handlers running at once to `worker.concurrency`.
    slots: Arc<Semaphore>,
    /// Cancelled when shutdown starts: deliveries that have not started go back to their queue.
    stopping: CancellationToken,
    /// Cancelled when the shutdown grace period ends; handlers see it as `TaskContext::cancel`.
    task_cancel: CancellationToken,
    /// Deliveries not settled yet, by a local sequence number, so that shutdown can return them
    /// to their queues.
    unsettled: Mutex<HashMap<u64, DeliveryHandle>>,
    next_sequence: AtomicU64,
    counters: Counters,
}

impl Runner {
    pub fn new(config: Arc<Config>, worker: WorkerId, store: Store, broker: Broker, handlers: Handlers) -> Runner {
        let slots = Arc::new(Semaphore::new(config.worker.concurrency));
        Runner {
            shared: Arc::new(Shared {
                config,
                worker,
                store,
                broker,
                handlers,
                files_digest: Mutex::new(None),
                slots,
                stopping: CancellationToken::new(),
                task_cancel: CancellationToken::new(),
                unsettled: Mutex::new(HashMap::new()),
                next_sequence: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// Registers the worker and consumes until `shutdown` is cancelled. Then it stops
    /// gracefully: it stops consuming, lets tasks in progress finish for up to
    /// `worker.shutdown_grace_secs`, returns the rest to their queues and removes the liveness
    /// record. The broker connection stays open for the caller to close.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunStats, RunnerError> {
        let shared = &self.shared;
        let dataset = shared.check_dataset().await;
        let kinds = shared.consumed_kinds(&dataset)?;
        let record = shared.worker_record(kinds.clone(), dataset);
        shared.store.put_worker(&record, shared.config.worker.heartbeat_secs).await?;
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(shared.store.clone(), record, shared.config.worker.heartbeat_secs, heartbeat_stop.clone()));

        let consumer = match shared.broker.consume_tasks(&kinds).await {
            Ok(consumer) => consumer,
            Err(error) => {
                heartbeat_stop.cancel();
                shared.remove_record().await;
                return Err(error.into());
            }
        };
        tracing::info!(
            worker = %shared.worker,
            kinds = ?kinds,
            concurrency = shared.config.worker.concurrency,
            prefetch = shared.broker.settings().prefetch,
            "worker started"
        );

        let mut consumer = consumer;
        let mut tasks = JoinSet::new();
        self.consume(&mut consumer, &mut tasks, &shutdown).await;
        let stats = self.shut_down(consumer, tasks).await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        shared.remove_record().await;
        tracing::info!(worker = %shared.worker, ?stats, "worker stopped");
        Ok(stats)
    }

    async fn consume(&self, consumer: &mut Consumer, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                incoming = consumer.next() => {
                    let Some(incoming) = incoming else {
                        tracing::warn!("task consumer ended because the broker connection was closed");
                        return;
                    };
                    let sequence = self.shared.track(&incoming);
                    tasks.spawn(Arc::clone(&self.shared).process(incoming, sequence));
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
            }
        }
    }

    async fn shut_down(&self, mut consumer: Consumer, mut tasks: JoinSet<()>) -> RunStats {
        let shared = &self.shared;
        let grace = Duration::from_secs(shared.config.worker.shutdown_grace_secs);
        tracing::info!(unsettled = tasks.len(), grace_secs = grace.as_secs(), "stopping: waiting for tasks in progress");
        shared.stopping.cancel();
        consumer.cancel().await;

        let drain = async {
            while let Some(joined) = tasks.join_next().await {
                log_join(joined);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            shared.task_cancel.cancel();
            let unsettled = shared.take_unsettled();
            tracing::warn!(count = unsettled.len(), "grace period over; returning unfinished tasks to their queues");
            for delivery in unsettled {
                if let Err(error) = delivery.requeue().await {
                    tracing::warn!(%error, "failed to requeue a delivery; closing the channel returns it");
                }
                Counters::add(&shared.counters.requeued);
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        consumer.close().await;
        shared.counters.snapshot()
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        if error.is_panic() {
            tracing::error!(%error, "a delivery's task panicked outside its handler");
        }
    }
}

/// Refreshes the liveness record every heartbeat until `stop` is cancelled. Logs a failure once
/// per run of failures, and the recovery.
async fn heartbeat(store: Store, record: WorkerRecord, heartbeat_secs: u64, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(heartbeat_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match store.put_worker(&record, heartbeat_secs).await {
            Ok(()) if failing => {
                tracing::info!("liveness record refreshed again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "failed to refresh the liveness record; retrying every heartbeat");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Outcome of one handler call.
enum HandlerResult {
    Output(HandlerOutput),
    Error(TaskError),
    Panic(String),
}

impl Shared {
    /// Reads the dataset files once, on a blocking thread, for the liveness record and the
    /// fingerprint check.
    async fn check_dataset(&self) -> DatasetStatus {
        let settings = self.config.dataset.clone();
        let path = settings.path.display().to_string();
        let digest = tokio::task::spawn_blocking(move || kka_shared::dataset::files_digest(settings.format, &settings.path)).await;
        let (files_digest, error) = match digest {
            Ok(Ok(digest)) => (Some(digest), None),
            Ok(Err(error)) => (None, Some(error.to_string())),
            Err(error) => (None, Some(format!("the dataset check failed: {error}"))),
        };
        if let Some(error) = &error {
            tracing::error!(%error, path = %path, "dataset unavailable; only noop tasks will be consumed");
        }
        *self.files_digest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = files_digest.clone();
        DatasetStatus { format: self.config.dataset.format, path, files_digest, error }
    }

    /// Returns the configured kinds that have a handler and, except noop, a readable dataset.
    fn consumed_kinds(&self, dataset: &DatasetStatus) -> Result<Vec<TaskKind>, RunnerError> {
        let mut kinds = Vec::new();
        for kind in &self.config.worker.task_kinds {
            if kinds.contains(kind) {
                continue;
            }
            if !self.handlers.contains_key(kind) {
                tracing::warn!(%kind, "this build has no handler for the task kind; not consuming it");
                continue;
            }
            if *kind != TaskKind::Noop && dataset.files_digest.is_none() {
                continue;
            }
            kinds.push(*kind);
        }
        if kinds.is_empty() {
            let reason = format!(
                "worker.task_kinds = {:?}, handlers for {:?}, dataset error {:?}; add noop to worker.task_kinds or fix dataset.path",
                self.config.worker.task_kinds,
                self.handlers.keys().collect::<Vec<_>>(),
                dataset.error
            );
            return Err(RunnerError::NothingToConsume { worker: self.worker.clone(), reason });
        }
        Ok(kinds)
    }

    fn worker_record(&self, task_kinds: Vec<TaskKind>, dataset: DatasetStatus) -> WorkerRecord {
        WorkerRecord {
            id: self.worker.clone(),
            host: hostname(),
            pid: std::process::id(),
            device: self.config.worker.device,
            task_kinds,
            started_at: unix_seconds(),
            dataset,
        }
    }

    async fn remove_record(&self) {
        if let Err(error) = self.store.remove_worker(&self.worker).await {
            tracing::warn!(%error, "failed to remove the liveness record; it expires on its own");
        }
    }

    fn track(&self, incoming: &Incoming) -> u64 {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        self.lock_unsettled().insert(sequence, incoming.handle());
        sequence
    }

    fn settle(&self, sequence: u64) {
        self.lock_unsettled().remove(&sequence);
    }

    fn take_unsettled(&self) -> Vec<DeliveryHandle> {
        self.lock_unsettled().drain().map(|(_, delivery)| delivery).collect()
    }

    fn lock_unsettled(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DeliveryHandle>> {
        self.unsettled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Handles one delivery from arrival to acknowledgement.
    async fn process(self: Arc<Self>, incoming: Incoming, sequence: u64) {
        let slot = tokio::select! {
            slot = Arc::clone(&self.slots).acquire_owned() => slot,
            () = self.stopping.cancelled() => {
                self.requeue(&incoming, "the worker is stopping").await;
                self.settle(sequence);
                return;
            }
        };
        // Acquiring fails only on a closed semaphore, and nothing in this module closes `slots`.
        let Ok(slot) = slot else { return };

        let waited = incoming.received_at.elapsed();
        if waited > max_local_wait(&self.config.worker) {
            tracing::warn!(waited_secs = waited.as_secs(), queue = %incoming.queue, "delivery waited too long for a free slot; requeueing it");
            self.requeue(&incoming, "it waited too long").await;
        } else if let Some(task) = self.broker.decode_or_dead_letter::<TaskMessage>(&incoming).await {
            let span = tracing::info_span!(
                "task",
                task_id = %task.task_id,
                experiment = %task.experiment(),
                round = task.round().0,
                kind = %task.kind(),
                worker = %self.worker,
                attempt = incoming.attempt(),
            );
            self.run_task(Arc::new(task), &incoming, slot).instrument(span).await;
        } else {
            Counters::add(&self.counters.dead_lettered);
        }
        self.settle(sequence);
    }

    async fn run_task(&self, task: Arc<TaskMessage>, incoming: &Incoming, slot: OwnedSemaphorePermit) {
        let expected_queue = self.broker.topology().task_queue(task.kind());
        if incoming.queue != expected_queue {
            return self.reroute(&task, incoming, &expected_queue).await;
        }
        match self.store.is_task_done(&task.task_id).await {
            Ok(true) => {
                if self.resend_completion(&task, incoming).await {
                    return;
                }
            }
            Ok(false) => {}
            Err(error) => return self.requeue_later(incoming, &format!("failed to check whether the task is done: {error}")).await,
        }

        let started = Instant::now();
        let result = self.call_handler(&task).await;
        let seconds = started.elapsed().as_secs_f64();
        drop(slot);

        match result {
            HandlerResult::Output(HandlerOutput::Done { writes, summary }) => {
                self.finish_done(&task, incoming, writes, summary, seconds).await;
            }
            HandlerResult::Output(HandlerOutput::Sliced) => self.finish_sliced(&task, incoming, seconds).await,
            HandlerResult::Error(TaskError::Retryable(error)) => self.finish_retryable(&task, incoming, &format!("{error:#}")).await,
            HandlerResult::Error(TaskError::Fatal(error)) => self.finish_fatal(&task, incoming, &format!("{error:#}")).await,
            HandlerResult::Panic(message) => self.finish_fatal(&task, incoming, &format!("the handler panicked: {message}")).await,
        }
    }

    /// Checks the dataset fingerprint, then runs the handler on a blocking thread, or inline for
    /// the built-in noop handler.
    async fn call_handler(&self, task: &Arc<TaskMessage>) -> HandlerResult {
        if let Err(error) = self.check_fingerprint(task) {
            return HandlerResult::Error(error);
        }
        let Some(handler) = self.handlers.get(&task.kind()).cloned() else {
            let error = anyhow::anyhow!("worker {} has no handler for {} tasks", self.worker, task.kind());
            return HandlerResult::Error(TaskError::Fatal(error));
        };
        let context = TaskContext {
            worker: self.worker.clone(),
            config: Arc::clone(&self.config),
            store: self.store.clone(),
            runtime: tokio::runtime::Handle::current(),
            cancel: self.task_cancel.clone(),
            slice_deadline: Instant::now() + Duration::from_secs(self.config.worker.task_slice_secs),
        };
        let task = Arc::clone(task);
        let joined = if is_builtin_noop(&handler) {
            Ok(std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&task, &context))))
        } else {
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&task, &context)))
            })
            .await
        };
        match joined {
            Ok(Ok(Ok(output))) => HandlerResult::Output(output),
            Ok(Ok(Err(error))) => HandlerResult::Error(error),
            Ok(Err(panic)) => HandlerResult::Panic(panic_message(panic.as_ref())),
            Err(error) => HandlerResult::Panic(format!("the handler thread failed: {error}")),
        }
    }

    /// Rejects a non-noop task whose dataset fingerprint differs from this worker's data.
    fn check_fingerprint(&self, task: &TaskMessage) -> Result<(), TaskError> {
        if task.kind() == TaskKind::Noop {
            return Ok(());
        }
        let digest = self.files_digest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let Some(digest) = digest else {
            let error = anyhow::anyhow!("worker {} could not read its dataset at start-up", self.worker);
            return Err(TaskError::Retryable(error));
        };
        let local = kka_shared::dataset::fingerprint(&digest, self.config.dataset.format, &task.dataset);
        if local == task.dataset_fingerprint {
            return Ok(());
        }
        Err(TaskError::Fatal(anyhow::anyhow!(
            "dataset fingerprint mismatch: the task expects {}, but worker {} computes {} from {} ({:?}); give every worker the same dataset files and dataset.format",
            task.dataset_fingerprint,
            self.worker,
            local,
            self.config.dataset.path.display(),
            self.config.dataset.format,
        )))
    }

    async fn finish_done(&self, task: &TaskMessage, incoming: &Incoming, writes: redis::Pipeline, summary: TaskSummary, seconds: f64) {
        let mut writes = writes;
        self.store.add_clear_failure(&mut writes, &task.task_id);
        if let Err(error) = self.store.commit_task(&task.task_id, writes, &summary).await {
            return self.requeue_later(incoming, &format!("failed to commit the task's results: {error}")).await;
        }

        let outcome = TaskOutcome::Succeeded { summary };
        let event = CompletionEvent::new(task.task_id.clone(), self.worker.clone(), seconds, outcome);
        if let Err(error) = self.broker.publish_event(&event).await {
            // The results are committed; a redelivery finds the task done and sends the event.
            return self.requeue_later(incoming, &format!("failed to publish the completion event: {error}")).await;
        }
        self.ack(incoming).await;
        Counters::add(&self.counters.succeeded);
        if task.kind() == TaskKind::Noop {
            tracing::debug!(seconds, "task done");
        } else {
            tracing::info!(seconds, "task done");
        }
    }

    /// Re-sends the completion event of a task that is already done and acknowledges the
    /// delivery. Returns `false` when the stored summary is missing, so that the task runs again.
    async fn resend_completion(&self, task: &TaskMessage, incoming: &Incoming) -> bool {
        let summary = match self.store.task_summary(&task.task_id).await {
            Ok(Some(summary)) => summary,
            Ok(None) => {
                tracing::warn!("task is marked done but has no stored summary; running it again");
                return false;
            }
            Err(error) => {
                self.requeue_later(incoming, &format!("failed to read the stored summary: {error}")).await;
                return true;
            }
        };
        let outcome = TaskOutcome::Succeeded { summary };
        let event = CompletionEvent::new(task.task_id.clone(), self.worker.clone(), 0.0, outcome);
        if let Err(error) = self.broker.publish_event(&event).await {
            self.requeue_later(incoming, &format!("failed to re-send the completion event: {error}")).await;
            return true;
        }
        self.ack(incoming).await;
        Counters::add(&self.counters.already_done);
        tracing::info!("task already done; re-sent its completion event");
        true
    }

    async fn finish_sliced(&self, task: &TaskMessage, incoming: &Incoming, seconds: f64) {
        let message = Outgoing::task_payload(self.broker.topology(), task.kind(), incoming.payload().to_vec())
            .with_attempt(incoming.attempt());
        if let Err(error) = self.broker.publish(&message).await {
            return self.requeue_later(incoming, &format!("failed to re-publish the sliced task: {error}")).await;
        }
        self.ack(incoming).await;
        Counters::add(&self.counters.sliced);
        tracing::info!(seconds, "task slice finished; re-published the task to continue from its saved progress");
    }

    async fn finish_retryable(&self, task: &TaskMessage, incoming: &Incoming, error: &str) {
        // NOTE: only handler errors count attempts. A task that kills its worker process (an
        // abort in libtorch, the OOM killer) is redelivered by RabbitMQ without limit.
        let attempt = incoming.attempt();
        let max_attempts = self.config.worker.max_attempts;
        if attempt >= max_attempts {
            let error = format!("gave up after {attempt} attempts: {error}");
            return self.finish_fatal(task, incoming, &error).await;
        }

        let delay = self.config.worker.retry_delay(attempt);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(%error, attempt, max_attempts, delay_ms, "task failed; retrying");
        if !self.sleep_unless_stopping(delay).await {
            return self.requeue(incoming, "the worker is stopping").await;
        }
        let message = Outgoing::task_payload(self.broker.topology(), task.kind(), incoming.payload().to_vec())
            .with_attempt(attempt + 1);
        if let Err(error) = self.broker.publish(&message).await {
            return self.requeue_later(incoming, &format!("failed to re-publish the task for a retry: {error}")).await;
        }
        self.ack(incoming).await;
        Counters::add(&self.counters.retried);
    }

    async fn finish_fatal(&self, task: &TaskMessage, incoming: &Incoming, error: &str) {
        tracing::error!(%error, "task failed for good");
        if let Err(store_error) = self.store.record_task_failure(&task.task_id, error).await {
            return self.requeue_later(incoming, &format!("failed to record the task failure: {store_error}")).await;
        }
        // The failure is recorded in Redis, which the coordinator trusts over events, so the
        // two broker steps below log their errors instead of holding the delivery back.
        if let Err(broker_error) = self.broker.dead_letter(incoming.payload(), error, &incoming.queue).await {
            tracing::error!(error = %broker_error, "failed to dead-letter the failed task");
        }
        let outcome = TaskOutcome::Failed { error: error.to_owned() };
        let event = CompletionEvent::new(task.task_id.clone(), self.worker.clone(), 0.0, outcome);
        if let Err(broker_error) = self.broker.publish_event(&event).await {
            tracing::error!(error = %broker_error, "failed to publish the failure event");
        }
        self.ack(incoming).await;
        Counters::add(&self.counters.failed);
    }

    /// Send a task that arrived on another kind's queue to its own queue.
    async fn reroute(&self, task: &TaskMessage, incoming: &Incoming, expected_queue: &str) {
        tracing::warn!(queue = %incoming.queue, expected = %expected_queue, "task arrived on the wrong queue; moving it");
        let message = Outgoing::task_payload(self.broker.topology(), task.kind(), incoming.payload().to_vec())
            .with_attempt(incoming.attempt());
        if let Err(error) = self.broker.publish(&message).await {
            return self.requeue_later(incoming, &format!("failed to move the task to its queue: {error}")).await;
        }
        self.ack(incoming).await;
    }

    async fn ack(&self, incoming: &Incoming) {
        match incoming.ack().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("delivery could not be acknowledged because its channel closed; RabbitMQ delivers it again"),
            Err(error) => tracing::warn!(%error, "failed to acknowledge the delivery; RabbitMQ delivers it again"),
        }
    }

    /// Return a delivery to its queue after the first retry delay, without counting an attempt,
    /// because a service failed rather than the task.
    async fn requeue_later(&self, incoming: &Incoming, reason: &str) {
        let delay = self.config.worker.retry_delay(1);
        tracing::error!(%reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "failed to settle the task; requeueing it");
        self.sleep_unless_stopping(delay).await;
        self.requeue(incoming, reason).await;
    }

    async fn requeue(&self, incoming: &Incoming, reason: &str) {
        match incoming.requeue().await {
            Ok(true) => tracing::debug!(%reason, "delivery returned to its queue"),
            Ok(false) => tracing::debug!(%reason, "delivery already settled or its channel closed"),
            Err(error) => tracing::warn!(%error, %reason, "failed to requeue the delivery; closing the channel returns it"),
        }
        Counters::add(&self.counters.requeued);
    }

    /// Sleep for `delay`; returns `false` early when shutdown starts.
    async fn sleep_unless_stopping(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stopping.cancelled() => false,
        }
    }
}

/// Returns the text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_worker_name_is_a_valid_id() {
        let name = default_worker_name("my host.example.com", 1234);
        assert_eq!(name, "my-host.example.com-1234");
        assert!(WorkerId::new(default_worker_name(&"h".repeat(200), 99)).is_ok());
    }

    #[test]
    fn worker_id_prefers_flag_then_config() {
        let mut settings = kka_shared::config::Config::from_toml("").unwrap().worker.clone();
        settings.id = "from-config".into();
        assert_eq!(worker_id(Some("from-flag"), &settings).unwrap().as_str(), "from-flag");
        assert_eq!(worker_id(None, &settings).unwrap().as_str(), "from-config");
        settings.id.clear();
        assert!(worker_id(None, &settings).unwrap().as_str().ends_with(&format!("-{}", std::process::id())));
        assert!(worker_id(Some("bad id"), &settings).is_err());
    }

    #[test]
    fn local_wait_leaves_room_for_a_slice() {
        let mut settings = kka_shared::config::Config::from_toml("").unwrap().worker.clone();
        settings.task_slice_secs = 1200;
        assert_eq!(max_local_wait(&settings), Duration::from_secs(300));
        settings.task_slice_secs = 1799;
        assert_eq!(max_local_wait(&settings), Duration::from_secs(1));
    }

    #[test]
    fn only_builtin_noop_runs_inline() {
        assert!(is_builtin_noop(&builtin_noop()));
        let other: Arc<dyn TaskHandler> = Arc::new(NoopHandler);
        assert!(!is_builtin_noop(&other));
    }

    #[test]
    fn panic_message_reads_text_payloads() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42u8), "a panic with a non-text payload");
    }
}
