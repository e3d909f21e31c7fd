//! Generated anomalies: provenance and pixels, under `P:exp:E:anomaly:A`.

use redis::AsyncCommands;

use super::{Store, StoreError};
use crate::ids::{AnomalyId, ExperimentId};
use crate::records::AnomalyRecord;

/// A stored anomaly: its provenance and its pixels (u8, C×H×W as in `record.shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnomaly {
    pub record: AnomalyRecord,
    pub pixels: Vec<u8>,
}

impl Store {
    fn anomaly_key(&self, id: &AnomalyId) -> String {
        self.experiment_key(&id.experiment, &format!("anomaly:{id}"))
    }

    /// Add the writes that store one anomaly to a task's pipeline.
    pub fn add_anomaly_writes(&self, pipe: &mut redis::Pipeline, record: &AnomalyRecord, pixels: &[u8]) {
        let key = self.anomaly_key(&record.id);
        pipe.hset(&key, "meta", crate::messages::encode(record)).ignore();
        pipe.hset(&key, "pixels", pixels).ignore();
    }

    /// Load anomalies by id, in the given order. A missing or corrupt anomaly is an error that
    /// names it.
    pub async fn load_anomalies(&self, ids: &[AnomalyId]) -> Result<Vec<StoredAnomaly>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.anomaly_key(id)).arg("meta").arg("pixels");
        }
        let rows: Vec<(Option<Vec<u8>>, Option<Vec<u8>>)> =
            pipe.query_async(&mut self.connection()).await.map_err(StoreError::redis("HMGET anomalies"))?;
        ids.iter().zip(rows).map(|(id, row)| self.parse_anomaly(id, row)).collect()
    }

    fn parse_anomaly(
        &self,
        id: &AnomalyId,
        row: (Option<Vec<u8>>, Option<Vec<u8>>),
    ) -> Result<StoredAnomaly, StoreError> {
        let key = self.anomaly_key(id);
        let corrupt = |reason: String| StoreError::Corrupt { key: key.clone(), reason };
        let (Some(meta), Some(pixels)) = row else {
            return Err(corrupt("the anomaly is missing; was its generate task committed?".into()));
        };
        let record: AnomalyRecord = serde_json::from_slice(&meta).map_err(|e| corrupt(e.to_string()))?;
        let expected: u32 = record.shape.iter().product();
        if pixels.len() != expected as usize {
            return Err(corrupt(format!("{} pixel bytes for shape {:?}", pixels.len(), record.shape)));
        }
        Ok(StoredAnomaly { record, pixels })
    }

    /// Ids of all anomalies of one round, sorted.
    pub async fn anomaly_ids_of_round(
        &self,
        experiment: &ExperimentId,
        round: crate::ids::RoundIndex,
    ) -> Result<Vec<AnomalyId>, StoreError> {
        let pattern = self.experiment_key(experiment, &format!("anomaly:{experiment}.r{round}.s*"));
        let mut connection = self.connection();
        let mut iter: redis::AsyncIter<String> =
            connection.scan_match(&pattern).await.map_err(StoreError::redis("SCAN"))?;
        let mut ids = Vec::new();
        let prefix_len = self.experiment_key(experiment, "anomaly:").len();
        while let Some(key) = futures::StreamExt::next(&mut iter).await {
            let key = key.map_err(StoreError::redis("SCAN"))?;
            let id = key[prefix_len..]
                .parse()
                .map_err(|e: crate::ids::InvalidId| StoreError::Corrupt { key: key.clone(), reason: e.to_string() })?;
            ids.push(id);
        }
        ids.sort();
        Ok(ids)
    }
}
