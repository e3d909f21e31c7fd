//! Redis keys for experiment state, anomalies, pools and checkpoints.
//!
//! Every key starts with the configured prefix `P` (`store.key_prefix`):
//!
//! | key | type | contents |
//! |---|---|---|
//! | `P:exp:E:config` | string | the experiment's validated config, JSON |
//! | `P:exp:E:state` | hash | round, phase and other coordinator state |
//! | `P:exp:E:done` | set | ids of finished tasks |
//! | `P:exp:E:results` | hash | task id → [`TaskSummary`] JSON |
//! | `P:exp:E:anomaly:A` | hash | `meta` ([`AnomalyRecord`](crate::records::AnomalyRecord) JSON), `pixels` (u8, C×H×W) |
//! | `P:exp:E:scores:rK` | hash | anomaly id → [`ScoreRecord`](crate::records::ScoreRecord) JSON under round K's detector |
//! | `P:exp:E:ckpt:rK` | string | round K's detector checkpoint, bytes |
//! | `P:exp:E:ckpt:rK:meta` | string | [`CheckpointMeta`](crate::records::CheckpointMeta) JSON |
//! | `P:exp:E:pool:hard`, `P:exp:E:pool:easy` | sorted set | anomaly ids scored by the splitting detector |
//! | `P:exp:E:progress:T` | string | saved progress of a sliced train task T |
//! | `P:exp:E:failed` | hash | task id → error text of a task that failed for good |
//! | `P:workers:W` | string | worker W's liveness record, JSON, with a TTL |
//! | `P:llm-cache:H` | string | an LLM reply, by prompt hash |
//!
//! Task results are written idempotently: every key a task writes follows from its task id, and
//! [`Store::commit_task`] applies the writes, marks the task done and stores its summary in one
//! MULTI/EXEC transaction. A redelivered task rewrites the same values.

mod anomalies;
mod detectors;
pub mod experiments;
mod llm_cache;
pub mod workers;

pub use anomalies::StoredAnomaly;
pub use llm_cache::llm_request_hash;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::config::StoreSettings;
use crate::ids::{ExperimentId, TaskId};
use crate::messages::TaskSummary;

/// A Redis failure, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to connect to Redis at {url}: {source}; start Redis or fix store.url (KKA__STORE__URL)")]
    Connect { url: String, source: redis::RedisError },
    #[error("Redis {operation} failed: {source}")]
    Redis { operation: &'static str, source: redis::RedisError },
    #[error("stored value at {key} is invalid: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    pub fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
        move |source| StoreError::Redis { operation, source }
    }

    /// Whether retrying later may succeed: connection problems are, corrupt values are not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. })
    }
}

/// A handle on the kka keys in one Redis database. Cheap to clone; clones share one
/// auto-reconnecting connection.
#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Store {
    /// Connect and check the server answers PING.
    pub async fn connect(settings: &StoreSettings) -> Result<Store, StoreError> {
        let url = settings.url.redacted();
        let connect_error = |source| StoreError::Connect { url: url.clone(), source };
        let client = redis::Client::open(settings.url.expose()).map_err(connect_error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(30)))
            .set_number_of_retries(4);
        let mut connection =
            ConnectionManager::new_with_config(client, config).await.map_err(connect_error)?;
        let _: String = redis::cmd("PING").query_async(&mut connection).await.map_err(connect_error)?;
        Ok(Store { connection, prefix: settings.key_prefix.clone() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection for commands this module has no method for.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// `P:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// `P:exp:<experiment>:<suffix>`.
    pub fn experiment_key(&self, experiment: &ExperimentId, suffix: &str) -> String {
        format!("{}:exp:{experiment}:{suffix}", self.prefix)
    }

    /// Whether the task's results are already committed.
    pub async fn is_task_done(&self, task: &TaskId) -> Result<bool, StoreError> {
        let key = self.experiment_key(&task.experiment, "done");
        self.connection().sismember(key, task.to_string()).await.map_err(StoreError::redis("SISMEMBER"))
    }

    /// Apply a task's writes, mark it done and store its summary, all in one transaction.
    /// `writes` must hold only commands whose keys follow from the task id, so that a
    /// redelivered task rewrites the same values.
    pub async fn commit_task(
        &self,
        task: &TaskId,
        writes: redis::Pipeline,
        summary: &TaskSummary,
    ) -> Result<(), StoreError> {
        let mut pipe = writes;
        pipe.atomic();
        let id = task.to_string();
        pipe.sadd(self.experiment_key(&task.experiment, "done"), &id).ignore();
        pipe.hset(self.experiment_key(&task.experiment, "results"), &id, crate::messages::encode(summary)).ignore();
        let () = pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("MULTI/EXEC commit"))?;
        Ok(())
    }

    /// The summary a finished task stored, if any.
    pub async fn task_summary(&self, task: &TaskId) -> Result<Option<TaskSummary>, StoreError> {
        let key = self.experiment_key(&task.experiment, "results");
        let raw: Option<Vec<u8>> =
            self.connection().hget(&key, task.to_string()).await.map_err(StoreError::redis("HGET"))?;
        raw.map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt { key, reason: error.to_string() })
        })
        .transpose()
    }

    /// Delete every key under the prefix and return how many were removed. For tests and for
    /// `kka-coordinator` clean-up commands; never called on a shared prefix by accident because
    /// the caller passes the prefix it expects.
    pub async fn delete_all(&self, expected_prefix: &str) -> Result<u64, StoreError> {
        assert_eq!(expected_prefix, self.prefix, "delete_all called with a different prefix");
        let mut connection = self.connection();
        let pattern = format!("{}:*", self.prefix);
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
