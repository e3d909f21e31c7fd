//! Worker liveness records under `P:workers:W`, and task failures under `P:exp:E:failed`.
//!
//! A worker writes its record at start-up with a TTL of three heartbeats and rewrites it every
//! heartbeat, so the record of a worker that died without cleaning up expires on its own. The
//! coordinator reads the records to learn which workers are alive and whether their dataset
//! copy matches its own before it queues tasks.

use std::collections::BTreeMap;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::config::{DatasetFormat, Device};
use crate::ids::{ExperimentId, TaskId, TaskKind, WorkerId};

/// Heartbeats a worker may miss before its record expires.
pub const MISSED_HEARTBEATS: u64 = 3;

/// State of a worker's dataset files at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetStatus {
    pub format: DatasetFormat,
    pub path: String,
    /// [`crate::dataset::files_digest`] of the files, when they could be read.
    pub files_digest: Option<String>,
    /// Error text, when the files could not be read.
    pub error: Option<String>,
}

/// One live worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub device: Device,
    /// Task kinds the worker consumes.
    pub task_kinds: Vec<TaskKind>,
    /// Start time, in seconds since the Unix epoch.
    pub started_at: u64,
    pub dataset: DatasetStatus,
}

impl Store {
    fn worker_key(&self, worker: &WorkerId) -> String {
        self.key(&format!("workers:{worker}"))
    }

    /// Write or refresh a worker's record with a TTL of [`MISSED_HEARTBEATS`] heartbeats.
    pub async fn put_worker(&self, record: &WorkerRecord, heartbeat_secs: u64) -> Result<(), StoreError> {
        let ttl = heartbeat_secs.saturating_mul(MISSED_HEARTBEATS).max(1);
        let json = crate::messages::encode(record);
        self.connection().set_ex(self.worker_key(&record.id), json, ttl).await.map_err(StoreError::redis("SET EX worker"))
    }

    /// Delete a worker's record, as a worker does when it stops.
    pub async fn remove_worker(&self, worker: &WorkerId) -> Result<(), StoreError> {
        self.connection().del(self.worker_key(worker)).await.map_err(StoreError::redis("DEL worker"))
    }

    /// Lists the records of all workers whose record has not expired, sorted by worker id.
    pub async fn live_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let keys = self.scan_keys(&self.key("workers:*")).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> =
            self.connection().mget(&keys).await.map_err(StoreError::redis("MGET workers"))?;

        let mut records = Vec::with_capacity(keys.len());
        // A record that expired between SCAN and MGET comes back as nil and is skipped.
        for (key, value) in keys.into_iter().zip(values) {
            let Some(bytes) = value else { continue };
            let record: WorkerRecord = serde_json::from_slice(&bytes)
                .map_err(|error| StoreError::Corrupt { key, reason: error.to_string() })?;
            records.push(record);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection();
        let mut iter: redis::AsyncIter<String> =
            connection.scan_match(pattern).await.map_err(StoreError::redis("SCAN"))?;
        let mut keys = Vec::new();
        while let Some(key) = futures::StreamExt::next(&mut iter).await {
            keys.push(key.map_err(StoreError::redis("SCAN"))?);
        }
        Ok(keys)
    }

    fn failed_key(&self, experiment: &ExperimentId) -> String {
        self.experiment_key(experiment, "failed")
    }

    /// Record that a task failed for good, with the error text.
    pub async fn record_task_failure(&self, task: &TaskId, error: &str) -> Result<(), StoreError> {
        let key = self.failed_key(&task.experiment);
        self.connection().hset(key, task.to_string(), error).await.map_err(StoreError::redis("HSET failed"))
    }

    /// Add the write that clears a task's failure record to the task's commit, so that a task
    /// run again after a fix no longer counts as failed.
    pub fn add_clear_failure(&self, pipe: &mut redis::Pipeline, task: &TaskId) {
        pipe.hdel(self.failed_key(&task.experiment), task.to_string()).ignore();
    }

    /// Returns the error text of a task that failed for good, if it did.
    pub async fn task_failure(&self, task: &TaskId) -> Result<Option<String>, StoreError> {
        let key = self.failed_key(&task.experiment);
        self.connection().hget(key, task.to_string()).await.map_err(StoreError::redis("HGET failed"))
    }

    /// Lists every task of the experiment that failed for good, with its error text.
    pub async fn failures(&self, experiment: &ExperimentId) -> Result<BTreeMap<TaskId, String>, StoreError> {
        let key = self.failed_key(experiment);
        let raw: BTreeMap<String, String> =
            self.connection().hgetall(&key).await.map_err(StoreError::redis("HGETALL failed"))?;
        raw.into_iter()
            .map(|(task, error)| {
                let task = task.parse().map_err(|e: crate::ids::InvalidId| StoreError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                Ok((task, error))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_record_round_trips_json() {
        let record = WorkerRecord {
            id: WorkerId::new("w1").unwrap(),
            host: "host".into(),
            pid: 42,
            device: Device::Cpu,
            task_kinds: vec![TaskKind::Noop, TaskKind::Train],
            started_at: 1_700_000_000,
            dataset: DatasetStatus {
                format: DatasetFormat::FashionMnist,
                path: "/data".into(),
                files_digest: None,
                error: Some("missing".into()),
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"device\":\"cpu\""), "{json}");
        assert_eq!(serde_json::from_str::<WorkerRecord>(&json).unwrap(), record);
    }
}
