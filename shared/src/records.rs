//! Records that workers store in Redis and the coordinator reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::DetectorKind;
use crate::ids::{AnomalyId, RoundIndex, TaskId};

/// The machine-usable part of an anomaly concept: an edit operation, its parameters and how far
/// from normal it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Operation name, such as `rotate` or `cutpaste`.
    pub operation: String,
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    /// Distance from normal in [0, 1]: low is subtle, high is gross.
    pub severity: f64,
}

/// Provenance of one generated anomaly, enough to audit, export and reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRecord {
    pub id: AnomalyId,
    pub task_id: TaskId,
    pub round: RoundIndex,
    /// Id of the concept in the knowledge base or LLM reply.
    pub concept_id: String,
    /// The textual anomaly description.
    pub concept: String,
    pub recipe: Recipe,
    pub severity: f64,
    pub generator: String,
    pub generator_version: String,
    /// Index of the source image in the dataset's training split file, if one was used.
    pub source_index: Option<u32>,
    pub seed: u64,
    /// Channels, height and width of the stored pixels.
    pub shape: [u32; 3],
}

/// Scores of one anomaly under one round's detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRecord {
    /// Anomaly score; higher means more anomalous.
    pub score: f64,
    /// Mean embedding distance to the k nearest normal training images.
    pub knn_distance: f64,
}

/// What a train task stores beside the checkpoint bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub round: RoundIndex,
    pub detector: DetectorKind,
    pub auroc: f64,
    pub aupr: f64,
    pub epochs: u32,
    pub train_seconds: f64,
    /// Scores of the held-out normal validation images, which calibrate the hard/easy threshold.
    pub validation_scores: Vec<f64>,
    /// Mean k-NN embedding distances of the validation images to the training images, which
    /// calibrate the similarity rule.
    pub validation_knn_distances: Vec<f64>,
    pub dataset_fingerprint: String,
}
