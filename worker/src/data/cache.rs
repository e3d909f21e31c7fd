//! Per-process dataset cache: the files are decoded once, each protocol is cut once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kka_shared::config::{DatasetProtocol, DatasetSettings};

use super::{load_raw, DataError, OneClassData, RawDataset, SplitPlan};

/// Decoded dataset files and split plans, shared by all tasks of a worker process.
///
/// `tch::Tensor` is not `Sync`, so the cache keeps u8 pixels and index lists, and every
/// [`get`](DatasetCache::get) copies the selected pixels into new tensors. That copy takes
/// milliseconds; decoding the files happens once per process.
pub struct DatasetCache {
    settings: DatasetSettings,
    raw: Mutex<Option<Arc<RawDataset>>>,
    /// Split plans by the protocol's JSON text.
    plans: Mutex<HashMap<String, Arc<SplitPlan>>>,
}

impl DatasetCache {
    pub fn new(settings: DatasetSettings) -> Self {
        Self { settings, raw: Mutex::new(None), plans: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &DatasetSettings {
        &self.settings
    }

    /// The decoded files, read on first use. A failed read is retried on the next call.
    pub fn raw(&self) -> Result<Arc<RawDataset>, DataError> {
        // Holding the lock while decoding makes concurrent first callers wait instead of
        // decoding the same files twice.
        let mut slot = self.raw.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(raw) = slot.as_ref() {
            return Ok(Arc::clone(raw));
        }
        let raw = Arc::new(load_raw(self.settings.format, &self.settings.path)?);
        *slot = Some(Arc::clone(&raw));
        Ok(raw)
    }

    /// The split plan of `protocol`, cut on first use.
    pub fn plan(&self, protocol: &DatasetProtocol) -> Result<Arc<SplitPlan>, DataError> {
        let raw = self.raw()?;
        // Serialising a struct of numbers and enums cannot fail.
        let key = serde_json::to_string(protocol).unwrap_or_default();
        let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = plans.get(&key) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(SplitPlan::new(&raw, protocol)?);
        plans.insert(key, Arc::clone(&plan));
        Ok(plan)
    }

    /// The one-class data of `protocol`, as new tensors.
    // The Arc is the agreed interface, but `tch::Tensor` is not `Sync`, so the data stays on
    // the calling thread; each call builds fresh tensors for that reason.
    #[allow(clippy::arc_with_non_send_sync)]
    pub fn get(&self, protocol: &DatasetProtocol) -> Result<Arc<OneClassData>, DataError> {
        let raw = self.raw()?;
        let plan = self.plan(protocol)?;
        Ok(Arc::new(plan.materialize(&raw)?))
    }

    /// Like [`get`](DatasetCache::get), but fails with [`DataError::FingerprintMismatch`] when
    /// this worker's data under `protocol` has another fingerprint than `expected_fingerprint`.
    pub fn get_checked(&self, protocol: &DatasetProtocol, expected_fingerprint: &str) -> Result<Arc<OneClassData>, DataError> {
        let plan = self.plan(protocol)?;
        if plan.fingerprint != expected_fingerprint {
            return Err(DataError::FingerprintMismatch {
                expected: expected_fingerprint.to_owned(),
                local: plan.fingerprint.clone(),
            });
        }
        self.get(protocol)
    }

    /// This worker's fingerprint of `protocol`, without building tensors.
    pub fn fingerprint(&self, protocol: &DatasetProtocol) -> Result<String, DataError> {
        Ok(self.plan(protocol)?.fingerprint.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::fixtures::write_dataset;
    use kka_shared::config::DatasetFormat;

    fn settings(dir: &std::path::Path) -> DatasetSettings {
        let protocol = DatasetProtocol { normal_classes: vec![1], ..DatasetProtocol::default() };
        DatasetSettings { format: DatasetFormat::Mnist, path: dir.to_owned(), protocol }
    }

    #[test]
    fn files_are_decoded_once() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 20, true);
        let settings = settings(dir.path());
        let cache = DatasetCache::new(settings.clone());
        let first = cache.get(&settings.protocol).unwrap();

        // With the files gone, the cache still serves data and fingerprints.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let second = cache.get(&settings.protocol).unwrap();
        assert_eq!(first.train.indices, second.train.indices);
        assert_eq!(first.fingerprint, second.fingerprint);
        let other = DatasetProtocol { normal_classes: vec![2], ..settings.protocol.clone() };
        assert!(cache.get(&other).is_ok());
    }

    #[test]
    fn fingerprint_matches_load_one_class_and_shared_hash() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 20, false);
        let settings = settings(dir.path());
        let cache = DatasetCache::new(settings.clone());
        let data = crate::data::load_one_class(&settings, &settings.protocol).unwrap();
        let digest = kka_shared::dataset::files_digest(settings.format, &settings.path).unwrap();
        let expected = kka_shared::dataset::fingerprint(&digest, settings.format, &settings.protocol);
        assert_eq!(data.fingerprint, expected);
        assert_eq!(cache.fingerprint(&settings.protocol).unwrap(), expected);
        assert!(cache.get_checked(&settings.protocol, &expected).is_ok());
    }

    #[test]
    fn fingerprint_mismatch_names_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 20, false);
        let settings = settings(dir.path());
        let cache = DatasetCache::new(settings.clone());
        let error = cache.get_checked(&settings.protocol, "feedface").unwrap_err();
        let local = cache.fingerprint(&settings.protocol).unwrap();
        assert!(matches!(error, DataError::FingerprintMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("feedface") && message.contains(&local), "{message}");
    }

    #[test]
    fn failed_read_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let cache = DatasetCache::new(settings.clone());
        assert!(matches!(cache.get(&settings.protocol), Err(DataError::Files(_))));
        write_dataset(dir.path(), 20, false);
        assert!(cache.get(&settings.protocol).is_ok());
    }
}
