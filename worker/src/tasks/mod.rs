//! What a worker does with each task kind.
//!
//! The runner decodes a delivery, checks the dataset fingerprint, and calls the
//! [`TaskHandler`] for the task's kind on a blocking thread, because libtorch work must stay off
//! the async runtime. The handler returns the Redis writes of its results; the runner commits
//! them atomically with the task's completion, then acknowledges the delivery.

pub mod generate;
pub mod score;
pub mod train;

use std::sync::Arc;
use std::time::Instant;

use kka_shared::config::Config;
use kka_shared::ids::WorkerId;
use kka_shared::messages::{TaskMessage, TaskSummary};
use kka_shared::store::Store;
use tokio_util::sync::CancellationToken;

/// What a handler needs besides the task itself.
#[derive(Clone)]
pub struct TaskContext {
    pub worker: WorkerId,
    pub config: Arc<Config>,
    pub store: Store,
    /// Handle of the async runtime, for Redis calls from the handler's blocking thread
    /// (`runtime.block_on(store...)`).
    pub runtime: tokio::runtime::Handle,
    /// Cancelled when the worker is shutting down and the grace period has run out.
    pub cancel: CancellationToken,
    /// A long task that passes this instant saves its progress and returns
    /// [`HandlerOutput::Sliced`], so the delivery is acknowledged well within RabbitMQ's
    /// consumer acknowledgement timeout.
    pub slice_deadline: Instant,
}

/// The result of a handler that did not fail.
pub enum HandlerOutput {
    /// The task finished. `writes` holds its results, to be committed with the completion.
    Done { writes: redis::Pipeline, summary: TaskSummary },
    /// The task saved its progress to Redis and wants the same message re-published, so that
    /// a worker continues from the saved progress.
    Sliced,
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Retrying later may succeed: a service was unreachable, or the worker is shutting down.
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Retrying would fail the same way: bad input, a dataset mismatch, a corrupt checkpoint.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

impl TaskError {
    pub fn fatal(error: impl Into<anyhow::Error>) -> Self {
        TaskError::Fatal(error.into())
    }

    pub fn retryable(error: impl Into<anyhow::Error>) -> Self {
        TaskError::Retryable(error.into())
    }
}

impl From<kka_shared::store::StoreError> for TaskError {
    fn from(error: kka_shared::store::StoreError) -> Self {
        if error.is_retryable() {
            TaskError::Retryable(error.into())
        } else {
            TaskError::Fatal(error.into())
        }
    }
}

/// Runs one kind of task. Called on a blocking thread; may block for as long as the task takes.
pub trait TaskHandler: Send + Sync {
    fn handle(&self, task: &TaskMessage, context: &TaskContext) -> Result<HandlerOutput, TaskError>;
}
