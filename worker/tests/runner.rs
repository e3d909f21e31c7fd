//! The task runner end to end in one process, against the real RabbitMQ and Redis: tasks flow
//! from the queue through a handler into Redis and out as completion events.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kka_shared::broker::{Broker, EventConsumer, Outgoing};
use kka_shared::config::DatasetProtocol;
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::{
    CompletionEvent, NoopTask, ScoreTask, TaskBody, TaskMessage, TaskOutcome, TaskSummary,
};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use kka_worker::runner::{self, Handlers, RunStats, Runner};
use kka_worker::tasks::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A runner started on the test's runtime, with the coordinator's side of the broker.
struct Harness {
    env: TestPrefix,
    experiment: ExperimentId,
    broker: Broker,
    store: Store,
    events: EventConsumer,
    shutdown: CancellationToken,
    runner: JoinHandle<RunStats>,
    worker_broker: Broker,
}

impl Harness {
    async fn start(label: &str, overrides: &str, handlers: Handlers) -> Harness {
        let env = TestPrefix::new(label, overrides);
        let experiment = env.experiment("exp");
        let config = Arc::new(env.config.clone());
        let store = Store::connect(&config.store).await.unwrap();
        let broker = Broker::connect(&config.broker, "runner-test-coordinator").await.unwrap();
        let events = broker.consume_events(&experiment).await.unwrap();

        let worker_broker = Broker::connect(&config.broker, "runner-test-worker").await.unwrap();
        let worker = WorkerId::new("w-test").unwrap();
        let runner = Runner::new(Arc::clone(&config), worker, store.clone(), worker_broker.clone(), handlers);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let runner = tokio::spawn(async move { runner.run(token).await.expect("runner failed") });
        Harness { env, experiment, broker, store, events, shutdown, runner, worker_broker }
    }

    fn noop(&self, shard: u32, sent_at_micros: u64) -> TaskMessage {
        let id = TaskId::new(self.experiment.clone(), RoundIndex(0), TaskKind::Noop, shard);
        TaskMessage::new(id, String::new(), DatasetProtocol::default(), TaskBody::Noop(NoopTask { sent_at_micros }))
    }

    async fn next_event(&mut self) -> CompletionEvent {
        let received = tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("no completion event in time")
            .expect("event consumer ended");
        assert!(received.ack().await.unwrap());
        received.event
    }

    async fn stop(self) -> (RunStats, TestPrefix, Broker, Store) {
        self.shutdown.cancel();
        let stats = tokio::time::timeout(WAIT, self.runner).await.expect("runner did not stop in time").unwrap();
        self.worker_broker.close().await;
        let mut events = self.events;
        events.close().await;
        (stats, self.env, self.broker, self.store)
    }
}

fn handlers_with(kind: TaskKind, handler: impl TaskHandler + 'static) -> Handlers {
    let mut handlers = Handlers::new();
    handlers.insert(kind, Arc::new(handler));
    handlers
}

fn succeeded_summary(event: &CompletionEvent) -> &TaskSummary {
    match &event.outcome {
        TaskOutcome::Succeeded { summary } => summary,
        TaskOutcome::Failed { error } => panic!("task {} failed: {error}", event.task_id),
    }
}

fn failed_error(event: &CompletionEvent) -> &str {
    match &event.outcome {
        TaskOutcome::Failed { error } => error,
        TaskOutcome::Succeeded { .. } => panic!("task {} succeeded, expected a failure", event.task_id),
    }
}

#[tokio::test]
async fn noop_tasks_flow_to_redis_and_events() {
    let config = kka_shared::config::Config::from_toml("").unwrap();
    let mut harness = Harness::start("runner-flow", "[worker]\nconcurrency = 4\n", runner::handlers(&config)).await;
    let tasks: Vec<TaskMessage> = (0..20).map(|shard| harness.noop(shard, 1000 + u64::from(shard))).collect();
    harness.broker.publish_tasks(&tasks).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..tasks.len() {
        let event = harness.next_event().await;
        assert_eq!(event.worker.as_str(), "w-test");
        let TaskSummary::Noop { sent_at_micros } = succeeded_summary(&event) else { panic!("not a noop summary") };
        assert_eq!(*sent_at_micros, 1000 + u64::from(event.task_id.shard));
        seen.push(event.task_id.shard);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<u32>>());
    for task in &tasks {
        assert!(harness.store.is_task_done(&task.task_id).await.unwrap(), "{} not done", task.task_id);
    }

    let live = harness.store.live_workers().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id.as_str(), "w-test");
    assert!(live[0].task_kinds.contains(&TaskKind::Noop));

    let (stats, _env, _broker, store) = harness.stop().await;
    assert_eq!(stats.succeeded, 20);
    assert_eq!(stats.failed, 0);
    assert!(store.live_workers().await.unwrap().is_empty(), "the liveness record is removed at stop");
}

/// Panics on a noop task sent at time 666, succeeds otherwise.
struct PanicOn666;

impl TaskHandler for PanicOn666 {
    fn handle(&self, task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        if matches!(task.body, TaskBody::Noop(NoopTask { sent_at_micros: 666 })) {
            panic!("boom in the handler");
        }
        Ok(HandlerOutput::Done { writes: redis::pipe(), summary: TaskSummary::Noop { sent_at_micros: 1 } })
    }
}

#[tokio::test]
async fn handler_panic_becomes_failed_event() {
    let mut harness = Harness::start("runner-panic", "", handlers_with(TaskKind::Noop, PanicOn666)).await;
    let doomed = harness.noop(1, 666);
    let fine = harness.noop(2, 5);
    harness.broker.publish_task(&doomed).await.unwrap();
    harness.broker.publish_task(&fine).await.unwrap();

    // The two tasks settle concurrently, so their events may come in either order.
    let mut events = [harness.next_event().await, harness.next_event().await];
    events.sort_by_key(|event| event.task_id.shard);
    assert_eq!(events[0].task_id, doomed.task_id);
    assert!(failed_error(&events[0]).contains("panicked: boom in the handler"), "{}", failed_error(&events[0]));
    assert_eq!(events[1].task_id, fine.task_id, "the worker keeps going after a panic");
    succeeded_summary(&events[1]);

    let recorded = harness.store.task_failure(&doomed.task_id).await.unwrap().expect("failure recorded in Redis");
    assert!(recorded.contains("boom"), "{recorded}");
    assert!(!harness.store.is_task_done(&doomed.task_id).await.unwrap());
    let letter = harness.broker.take_dead_letter().await.unwrap().expect("a dead-lettered copy");
    assert!(letter.reason.unwrap().contains("boom"));

    let (stats, ..) = harness.stop().await;
    assert_eq!((stats.failed, stats.succeeded), (1, 1));
}

/// Blocks until the runner cancels it, then gives up as retryable.
struct WaitForCancel {
    started: Arc<tokio::sync::Notify>,
}

impl TaskHandler for WaitForCancel {
    fn handle(&self, _task: &TaskMessage, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        self.started.notify_one();
        for _ in 0..3000 {
            if context.cancel.is_cancelled() {
                return Err(TaskError::retryable(anyhow::anyhow!("cancelled by shutdown")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(TaskError::fatal(anyhow::anyhow!("never cancelled")))
    }
}

#[tokio::test]
async fn shutdown_requeues_unfinished_delivery() {
    let started = Arc::new(tokio::sync::Notify::new());
    let handler = WaitForCancel { started: Arc::clone(&started) };
    let harness =
        Harness::start("runner-shutdown", "[worker]\nshutdown_grace_secs = 1\n", handlers_with(TaskKind::Noop, handler)).await;
    let task = harness.noop(1, 7);
    harness.broker.publish_task(&task).await.unwrap();
    tokio::time::timeout(WAIT, started.notified()).await.expect("the handler never started");

    let (stats, _env, broker, store) = harness.stop().await;
    assert_eq!(stats.requeued, 1);
    assert_eq!(stats.succeeded + stats.failed + stats.retried, 0);
    assert!(!store.is_task_done(&task.task_id).await.unwrap());

    // The task is back in its queue for the next worker, flagged as redelivered.
    let mut consumer = broker.consume_tasks(&[TaskKind::Noop]).await.unwrap();
    let incoming = tokio::time::timeout(WAIT, consumer.next()).await.expect("task not requeued").unwrap();
    assert!(incoming.redelivered());
    let decoded: TaskMessage = broker.decode_or_dead_letter(&incoming).await.unwrap();
    assert_eq!(decoded.task_id, task.task_id);
    assert!(incoming.ack().await.unwrap());
    consumer.close().await;
}

/// Fails the test if called: for tasks whose body must be skipped.
struct MustNotRun;

impl TaskHandler for MustNotRun {
    fn handle(&self, task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        Err(TaskError::fatal(anyhow::anyhow!("the body of {} ran again", task.task_id)))
    }
}

#[tokio::test]
async fn done_task_resends_stored_event() {
    let mut harness = Harness::start("runner-done", "", handlers_with(TaskKind::Noop, MustNotRun)).await;
    let task = harness.noop(3, 9);
    let summary = TaskSummary::Noop { sent_at_micros: 123 };
    harness.store.commit_task(&task.task_id, redis::pipe(), &summary).await.unwrap();

    harness.broker.publish_task(&task).await.unwrap();
    let event = harness.next_event().await;
    assert_eq!(event.task_id, task.task_id);
    assert_eq!(succeeded_summary(&event), &summary, "the event carries the stored summary");

    let (stats, ..) = harness.stop().await;
    assert_eq!(stats.already_done, 1);
    assert_eq!(stats.succeeded, 0);
}

/// Fails with a retryable error every time, counting the calls.
struct AlwaysRetryable {
    calls: Arc<AtomicU32>,
}

impl TaskHandler for AlwaysRetryable {
    fn handle(&self, _task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(TaskError::retryable(anyhow::anyhow!("service unavailable")))
    }
}

#[tokio::test]
async fn retryable_error_gives_up_after_max_attempts() {
    let calls = Arc::new(AtomicU32::new(0));
    let handler = AlwaysRetryable { calls: Arc::clone(&calls) };
    let overrides = "[worker]\nmax_attempts = 3\nretry_delay_ms = 10\n";
    let mut harness = Harness::start("runner-retry", overrides, handlers_with(TaskKind::Noop, handler)).await;
    let task = harness.noop(4, 1);
    harness.broker.publish_task(&task).await.unwrap();

    let event = harness.next_event().await;
    let error = failed_error(&event);
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(error.contains("service unavailable"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (stats, ..) = harness.stop().await;
    assert_eq!((stats.retried, stats.failed), (2, 1));
}

/// Returns `Sliced` on its first call and `Done` on the next, like a train task that saved its
/// progress once.
struct SliceOnce {
    calls: Arc<AtomicU32>,
}

impl TaskHandler for SliceOnce {
    fn handle(&self, _task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(HandlerOutput::Sliced);
        }
        Ok(HandlerOutput::Done { writes: redis::pipe(), summary: TaskSummary::Noop { sent_at_micros: 2 } })
    }
}

#[tokio::test]
async fn sliced_task_is_republished_and_finishes() {
    let calls = Arc::new(AtomicU32::new(0));
    let handler = SliceOnce { calls: Arc::clone(&calls) };
    let mut harness = Harness::start("runner-slice", "", handlers_with(TaskKind::Noop, handler)).await;
    let task = harness.noop(5, 1);
    harness.broker.publish_task(&task).await.unwrap();

    let event = harness.next_event().await;
    assert_eq!(event.task_id, task.task_id);
    succeeded_summary(&event);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (stats, ..) = harness.stop().await;
    assert_eq!((stats.sliced, stats.succeeded), (1, 1));
}

#[tokio::test]
async fn poison_delivery_is_dead_lettered_and_worker_continues() {
    let config = kka_shared::config::Config::from_toml("").unwrap();
    let mut harness = Harness::start("runner-poison", "", runner::handlers(&config)).await;
    let topology = harness.broker.topology().clone();
    harness
        .broker
        .publish(&Outgoing::task_payload(&topology, TaskKind::Noop, b"not a task".to_vec()))
        .await
        .unwrap();
    let task = harness.noop(6, 1);
    harness.broker.publish_task(&task).await.unwrap();

    let event = harness.next_event().await;
    assert_eq!(event.task_id, task.task_id);
    let letter = harness.broker.take_dead_letter().await.unwrap().expect("the poison message is dead-lettered");
    assert_eq!(letter.payload, b"not a task");

    let (stats, ..) = harness.stop().await;
    assert_eq!((stats.dead_lettered, stats.succeeded), (1, 1));
}

/// Succeeds on any score task; the fingerprint check runs before it.
struct ScoreNothing;

impl TaskHandler for ScoreNothing {
    fn handle(&self, _task: &TaskMessage, _context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        Ok(HandlerOutput::Done { writes: redis::pipe(), summary: TaskSummary::Scored { count: 0 } })
    }
}

#[tokio::test]
async fn dataset_fingerprint_mismatch_fails_task() {
    let overrides = "[worker]\ntask_kinds = [\"score\"]\n";
    let mut harness = Harness::start("runner-fingerprint", overrides, handlers_with(TaskKind::Score, ScoreNothing)).await;
    let body = TaskBody::Score(ScoreTask { anomalies: Vec::new(), checkpoint_rounds: Vec::new(), knn: 1 });
    let id = TaskId::new(harness.experiment.clone(), RoundIndex(1), TaskKind::Score, 0);
    let task = TaskMessage::new(id, "not-the-right-fingerprint".into(), DatasetProtocol::default(), body);
    harness.broker.publish_task(&task).await.unwrap();

    let event = harness.next_event().await;
    let error = failed_error(&event);
    assert!(error.contains("dataset fingerprint mismatch"), "{error}");
    assert!(error.contains("not-the-right-fingerprint"), "{error}");
    let (stats, ..) = harness.stop().await;
    assert_eq!(stats.failed, 1);
}
