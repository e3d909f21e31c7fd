//! Checks that run before any task is queued: the coordinator's own dataset copy, and live
//! workers with the same dataset for every task kind a curriculum needs.

use std::time::{Duration, Instant};

use kka_shared::config::DatasetSettings;
use kka_shared::dataset::{files_digest, fingerprint, DatasetFilesError};
use kka_shared::ids::TaskKind;
use kka_shared::store::workers::WorkerRecord;
use kka_shared::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Task kinds a curriculum experiment queues.
pub const CURRICULUM_KINDS: [TaskKind; 3] = [TaskKind::Generate, TaskKind::Score, TaskKind::Train];

/// How often the worker registry is read while waiting for workers.
const WORKER_POLL: Duration = Duration::from_secs(1);

/// A failed pre-flight check.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("the coordinator cannot read its own dataset copy: {0}")]
    Dataset(#[from] DatasetFilesError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no live kka-worker consumes {missing} tasks under store.key_prefix {prefix:?} after waiting {waited_secs} s (curriculum.worker_wait_secs); start workers with `kka-worker run` and the same broker and store settings")]
    NoWorker { missing: String, prefix: String, waited_secs: u64 },
    #[error("worker {worker} on {host} cannot read its dataset at {path}: {error}; install the dataset there or fix dataset.path in that worker's config")]
    WorkerDatasetMissing { worker: String, host: String, path: String, error: String },
    #[error("worker {} on {} has a different dataset at {} (files digest {}) than the coordinator at {} (files digest {}); give every machine the same dataset files and dataset.format", .0.worker, .0.host, .0.path, .0.theirs, .0.ours_path, .0.ours)]
    WorkerDatasetDiffers(Box<DatasetMismatch>),
    #[error("interrupted while waiting for workers")]
    Interrupted,
}

/// A worker whose dataset files differ from the coordinator's.
#[derive(Debug)]
pub struct DatasetMismatch {
    pub worker: String,
    pub host: String,
    pub path: String,
    /// The worker's files digest.
    pub theirs: String,
    pub ours_path: String,
    /// The coordinator's files digest.
    pub ours: String,
}

/// The coordinator's view of its dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetIdentity {
    /// SHA-256 of the dataset files, as workers report it.
    pub files_digest: String,
    /// Fingerprint every task carries: the files digest, format and one-class protocol.
    pub fingerprint: String,
}

/// Hashes the dataset files. Reads every file, so call it off the async runtime.
pub fn dataset_identity(settings: &DatasetSettings) -> Result<DatasetIdentity, PreflightError> {
    let digest = files_digest(settings.format, &settings.path)?;
    let fingerprint = fingerprint(&digest, settings.format, &settings.protocol);
    Ok(DatasetIdentity { files_digest: digest, fingerprint })
}

/// Checks every live worker's dataset against `identity`.
pub fn check_worker_datasets(
    workers: &[WorkerRecord],
    settings: &DatasetSettings,
    identity: &DatasetIdentity,
) -> Result<(), PreflightError> {
    for worker in workers {
        let dataset = &worker.dataset;
        let Some(theirs) = &dataset.files_digest else {
            return Err(PreflightError::WorkerDatasetMissing {
                worker: worker.id.to_string(),
                host: worker.host.clone(),
                path: dataset.path.clone(),
                error: dataset.error.clone().unwrap_or_else(|| "no files digest reported".into()),
            });
        };
        if *theirs != identity.files_digest {
            return Err(PreflightError::WorkerDatasetDiffers(Box::new(DatasetMismatch {
                worker: worker.id.to_string(),
                host: worker.host.clone(),
                path: dataset.path.clone(),
                theirs: theirs.clone(),
                ours_path: settings.path.display().to_string(),
                ours: identity.files_digest.clone(),
            })));
        }
    }
    Ok(())
}

/// Task kinds in `kinds` that no worker in `workers` consumes.
pub fn uncovered_kinds(workers: &[WorkerRecord], kinds: &[TaskKind]) -> Vec<TaskKind> {
    kinds.iter().copied().filter(|kind| !workers.iter().any(|w| w.task_kinds.contains(kind))).collect()
}

/// Waits up to `wait` until live workers cover every curriculum task kind, then checks their
/// datasets. Returns the live workers.
pub async fn wait_for_workers(
    store: &Store,
    settings: &DatasetSettings,
    identity: &DatasetIdentity,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<WorkerRecord>, PreflightError> {
    let started = Instant::now();
    let mut logged = false;
    loop {
        let workers = store.live_workers().await?;
        check_worker_datasets(&workers, settings, identity)?;
        let missing = uncovered_kinds(&workers, &CURRICULUM_KINDS);
        if missing.is_empty() {
            tracing::info!(workers = workers.len(), "live workers found");
            return Ok(workers);
        }
        if started.elapsed() >= wait {
            let missing: Vec<&str> = missing.iter().map(|kind| kind.as_str()).collect();
            return Err(PreflightError::NoWorker {
                missing: missing.join(", "),
                prefix: store.prefix().to_owned(),
                waited_secs: wait.as_secs(),
            });
        }
        if !logged {
            tracing::info!(wait_secs = wait.as_secs(), "waiting for live workers");
            logged = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(PreflightError::Interrupted),
            () = tokio::time::sleep(WORKER_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::{Config, DatasetFormat, Device};
    use kka_shared::ids::WorkerId;
    use kka_shared::store::workers::DatasetStatus;

    fn worker(name: &str, digest: Option<&str>, kinds: &[TaskKind]) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new(name).unwrap(),
            host: "host-a".into(),
            pid: 1,
            device: Device::Cpu,
            task_kinds: kinds.to_vec(),
            started_at: 0,
            dataset: DatasetStatus {
                format: DatasetFormat::FashionMnist,
                path: "/data/fmnist".into(),
                files_digest: digest.map(str::to_owned),
                error: digest.is_none().then(|| "file missing".to_owned()),
            },
        }
    }

    fn identity() -> DatasetIdentity {
        DatasetIdentity { files_digest: "aaa".into(), fingerprint: "f".into() }
    }

    #[test]
    fn matching_workers_pass() {
        let settings = Config::from_toml("").unwrap().dataset.clone();
        let workers = [worker("w1", Some("aaa"), &CURRICULUM_KINDS)];
        assert!(check_worker_datasets(&workers, &settings, &identity()).is_ok());
    }

    #[test]
    fn worker_without_dataset_is_named() {
        let settings = Config::from_toml("").unwrap().dataset.clone();
        let workers = [worker("w1", Some("aaa"), &CURRICULUM_KINDS), worker("w2", None, &CURRICULUM_KINDS)];
        let error = check_worker_datasets(&workers, &settings, &identity()).unwrap_err().to_string();
        assert!(error.contains("w2"), "{error}");
        assert!(error.contains("/data/fmnist"), "{error}");
        assert!(error.contains("file missing"), "{error}");
    }

    #[test]
    fn worker_with_other_dataset_is_named() {
        let settings = Config::from_toml("").unwrap().dataset.clone();
        let workers = [worker("w3", Some("bbb"), &CURRICULUM_KINDS)];
        let error = check_worker_datasets(&workers, &settings, &identity()).unwrap_err().to_string();
        assert!(error.contains("w3"), "{error}");
        assert!(error.contains("bbb"), "{error}");
        assert!(error.contains("aaa"), "{error}");
    }

    #[test]
    fn uncovered_kinds_lists_missing() {
        let workers = [worker("w1", Some("aaa"), &[TaskKind::Generate]), worker("w2", Some("aaa"), &[TaskKind::Train])];
        assert_eq!(uncovered_kinds(&workers, &CURRICULUM_KINDS), vec![TaskKind::Score]);
        assert_eq!(uncovered_kinds(&[], &CURRICULUM_KINDS), CURRICULUM_KINDS.to_vec());
    }

    #[test]
    fn identity_of_missing_dataset_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("[dataset]\npath = \"{}\"\n", dir.path().display());
        let settings = Config::from_toml(&toml).unwrap().dataset.clone();
        let error = dataset_identity(&settings).unwrap_err().to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
    }
}
