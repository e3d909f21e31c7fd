//! Versioned task messages and completion events.
//!
//! Every message on the wire is JSON with a top-level `version` field. A consumer first reads
//! only that field, so a message from a newer or older protocol is rejected with a clear reason
//! (and dead-lettered by the broker layer) instead of being misread.

use serde::{Deserialize, Serialize};

use crate::config::{DatasetProtocol, DetectorSettings, GeneratorSettings, KnowledgeSettings};
use crate::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};

/// The protocol version this build writes and accepts.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a message could not be decoded. The broker layer puts the reason on the dead-letter copy.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {size} bytes, above the limit of {limit} bytes (broker.max_payload_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not JSON with a numeric `version` field: {0}")]
    NoVersion(serde_json::Error),
    #[error("message has protocol version {found}, but this build speaks version {PROTOCOL_VERSION}; run coordinator and workers from the same release")]
    UnknownVersion { found: u64 },
    #[error("message does not match protocol version {PROTOCOL_VERSION}: {0}")]
    Malformed(serde_json::Error),
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Decode a versioned message, checking size, then version, then shape.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(DecodeError::NoVersion)?;
    if probe.version != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnknownVersion { found: probe.version });
    }
    serde_json::from_slice(bytes).map_err(DecodeError::Malformed)
}

/// Encode a message as JSON. Encoding our own types cannot fail: they hold no maps with
/// non-string keys and no non-finite floats are rejected by serde_json (they become `null`).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("kka message types always serialize to JSON")
}

/// A task on one of the task queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub version: u32,
    pub task_id: TaskId,
    /// Hash of the dataset files and the one-class protocol the coordinator used. A worker whose
    /// own data gives a different hash rejects the task.
    pub dataset_fingerprint: String,
    pub dataset: DatasetProtocol,
    pub body: TaskBody,
}

impl TaskMessage {
    pub fn new(task_id: TaskId, dataset_fingerprint: String, dataset: DatasetProtocol, body: TaskBody) -> Self {
        Self { version: PROTOCOL_VERSION, task_id, dataset_fingerprint, dataset, body }
    }

    pub fn kind(&self) -> TaskKind {
        self.body.kind()
    }

    pub fn experiment(&self) -> &ExperimentId {
        &self.task_id.experiment
    }

    pub fn round(&self) -> RoundIndex {
        self.task_id.round
    }
}

/// What a task asks a worker to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskBody {
    Generate(GenerateTask),
    Score(ScoreTask),
    Train(TrainTask),
    Noop(NoopTask),
}

impl TaskBody {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskBody::Generate(_) => TaskKind::Generate,
            TaskBody::Score(_) => TaskKind::Score,
            TaskBody::Train(_) => TaskKind::Train,
            TaskBody::Noop(_) => TaskKind::Noop,
        }
    }
}

/// Generate `count` anomalies for one shard. Anomaly `i` of the shard gets the id
/// `AnomalyId::new(experiment, round, shard, i)` and a seed derived from `seed` and `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateTask {
    pub count: u32,
    pub seed: u64,
    pub generator: GeneratorSettings,
    pub knowledge: KnowledgeSettings,
    /// Sampling state of the procedural generator, moved toward hard anomalies each round.
    pub state: GeneratorState,
    /// Descriptions of the previous round's hard anomalies, which an LLM source is asked to prefer.
    #[serde(default)]
    pub hard_examples: Vec<String>,
    /// Descriptions of the previous round's easy anomalies, which an LLM source is asked to avoid.
    #[serde(default)]
    pub easy_examples: Vec<String>,
}

/// Sampling weights over concepts and severity bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GeneratorState {
    /// Weight per concept id. Concepts missing here get the mean weight; an empty map means uniform.
    #[serde(default)]
    pub concept_weights: std::collections::BTreeMap<String, f64>,
    /// Weight per severity bin, bins splitting [severity_min, severity_max] evenly. Empty means uniform.
    #[serde(default)]
    pub severity_weights: Vec<f64>,
}

/// Score anomalies with the detector checkpoints of the given rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreTask {
    pub anomalies: Vec<AnomalyId>,
    /// Rounds whose checkpoints score the anomalies: the previous round's, and round 0's as a
    /// fixed yardstick.
    pub checkpoint_rounds: Vec<RoundIndex>,
    /// How many nearest normal training embeddings the similarity distance averages over.
    pub knn: u32,
}

/// Train the round's detector on the normal training data plus the listed anomalies, save the
/// checkpoint and evaluate it on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTask {
    pub detector: DetectorSettings,
    /// Labelled anomalies, hard and easy mixed by the coordinator. May repeat an id when a pool
    /// ran short and was sampled with replacement.
    pub anomalies: Vec<AnomalyId>,
    pub seed: u64,
}

/// A task that does nothing but record its completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoopTask {
    /// Time the coordinator published the task, in microseconds since the Unix epoch.
    pub sent_at_micros: u64,
}

/// A completion event, sent by a worker to the coordinator after the task's results are in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionEvent {
    pub version: u32,
    pub task_id: TaskId,
    pub worker: WorkerId,
    /// Seconds the task body ran, excluding queueing and acknowledgement.
    pub seconds: f64,
    pub outcome: TaskOutcome,
}

impl CompletionEvent {
    pub fn new(task_id: TaskId, worker: WorkerId, seconds: f64, outcome: TaskOutcome) -> Self {
        Self { version: PROTOCOL_VERSION, task_id, worker, seconds, outcome }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOutcome {
    Succeeded { summary: TaskSummary },
    /// The task failed for good: retrying it would fail the same way.
    Failed { error: String },
}

/// A small summary of a finished task. The full results live in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSummary {
    Generated { count: u32 },
    Scored { count: u32 },
    Trained { auroc: f64, aupr: f64, train_seconds: f64, epochs: u32 },
    Noop { sent_at_micros: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ExperimentId;

    fn noop_message() -> TaskMessage {
        let id = TaskId::new(ExperimentId::new("exp").unwrap(), RoundIndex(1), TaskKind::Noop, 4);
        TaskMessage::new(id, "abc".into(), DatasetProtocol::default(), TaskBody::Noop(NoopTask { sent_at_micros: 7 }))
    }

    #[test]
    fn task_message_round_trips() {
        let message = noop_message();
        let bytes = encode(&message);
        let decoded: TaskMessage = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(decoded.kind(), TaskKind::Noop);
    }

    #[test]
    fn decode_rejects_oversized_payload() {
        let bytes = encode(&noop_message());
        let error = decode::<TaskMessage>(&bytes, 10).unwrap_err();
        assert!(matches!(error, DecodeError::TooLarge { limit: 10, .. }), "{error}");
    }

    #[test]
    fn decode_rejects_unknown_version() {
        let mut value = serde_json::to_value(noop_message()).unwrap();
        value["version"] = 99.into();
        let error = decode::<TaskMessage>(&serde_json::to_vec(&value).unwrap(), 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::UnknownVersion { found: 99 }), "{error}");
        assert!(error.to_string().contains("version 99"));
    }

    #[test]
    fn decode_rejects_garbage_and_missing_version() {
        assert!(matches!(decode::<TaskMessage>(b"\xff\x00", 100), Err(DecodeError::NoVersion(_))));
        assert!(matches!(decode::<TaskMessage>(b"{\"task\":1}", 100), Err(DecodeError::NoVersion(_))));
        assert!(matches!(decode::<TaskMessage>(b"[1,2]", 100), Err(DecodeError::NoVersion(_))));
    }

    #[test]
    fn decode_rejects_wrong_shape() {
        let mut value = serde_json::to_value(noop_message()).unwrap();
        value["body"]["kind"] = "paint".into();
        let error = decode::<TaskMessage>(&serde_json::to_vec(&value).unwrap(), 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed(_)), "{error}");

        let mut value = serde_json::to_value(noop_message()).unwrap();
        value["surprise"] = true.into();
        let error = decode::<TaskMessage>(&serde_json::to_vec(&value).unwrap(), 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
    }

    #[test]
    fn completion_event_round_trips() {
        let event = CompletionEvent::new(
            noop_message().task_id,
            WorkerId::new("w1").unwrap(),
            0.25,
            TaskOutcome::Succeeded { summary: TaskSummary::Trained { auroc: 0.9, aupr: 0.5, train_seconds: 3.0, epochs: 2 } },
        );
        let decoded: CompletionEvent = decode(&encode(&event), 1 << 20).unwrap();
        assert_eq!(decoded, event);
    }
}
