//! Hard/easy splitting of scored anomalies.
//!
//! A detector score is higher for more anomalous inputs. An anomaly is hard when the detector
//! scores it like a normal image: at or below a threshold calibrated on held-out normal
//! validation images (quantile rule), or close to the normal training embeddings (similarity
//! rule).

use kka_shared::config::SplitRule;
use kka_shared::ids::RoundIndex;
use kka_shared::records::{CheckpointMeta, ScoreRecord};

/// Error of threshold calibration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SplitError {
    #[error("round {round}'s checkpoint has no validation scores, so the quantile threshold cannot be calibrated; retrain it with dataset.validation_fraction > 0")]
    NoValidationScores { round: RoundIndex },
    #[error("round {round}'s checkpoint has a non-finite validation score ({value}); the detector diverged, try a lower detector.lr")]
    NonFiniteValidation { round: RoundIndex, value: f64 },
}

/// Computes the q-quantile of `values`, interpolating linearly between the two nearest order statistics
/// (NumPy's default `linear` method). `q` is clamped to [0, 1]. Returns `None` for an empty
/// slice or one that contains NaN.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);

    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * weight)
}

/// A calibrated split rule, ready to classify score records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Hard if `score <= tau`.
    Score { tau: f64 },
    /// Hard if `knn_distance <= max_distance`.
    Distance { max_distance: f64 },
}

impl Threshold {
    /// Calibrates `rule` on the validation data of the checkpoint that scores the anomalies.
    pub fn calibrate(rule: &SplitRule, meta: &CheckpointMeta) -> Result<Threshold, SplitError> {
        match *rule {
            SplitRule::Quantile { q, margin } => {
                if let Some(&value) = meta.validation_scores.iter().find(|v| !v.is_finite()) {
                    return Err(SplitError::NonFiniteValidation { round: meta.round, value });
                }
                let tau = quantile(&meta.validation_scores, q)
                    .ok_or(SplitError::NoValidationScores { round: meta.round })?;
                Ok(Threshold::Score { tau: tau + margin })
            }
            SplitRule::Similarity { max_distance } => Ok(Threshold::Distance { max_distance }),
        }
    }

    /// Checks whether an anomaly with this score record is hard. A NaN score or distance is easy,
    /// because no comparison with NaN holds; callers reject NaN scores before splitting.
    pub fn is_hard(&self, record: &ScoreRecord) -> bool {
        match *self {
            Threshold::Score { tau } => record.score <= tau,
            Threshold::Distance { max_distance } => record.knn_distance <= max_distance,
        }
    }

    /// Returns the threshold value, for reports.
    pub fn value(&self) -> f64 {
        match *self {
            Threshold::Score { tau } => tau,
            Threshold::Distance { max_distance } => max_distance,
        }
    }
}

/// Share of `records` that `threshold` marks hard, or 0 for an empty slice.
pub fn hard_fraction<'a>(threshold: &Threshold, records: impl IntoIterator<Item = &'a ScoreRecord>) -> f64 {
    let (mut hard, mut total) = (0usize, 0usize);
    for record in records {
        total += 1;
        if threshold.is_hard(record) {
            hard += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        hard as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::DetectorKind;

    fn meta(validation_scores: Vec<f64>) -> CheckpointMeta {
        CheckpointMeta {
            round: RoundIndex(2),
            detector: DetectorKind::DeepSad,
            auroc: 0.9,
            aupr: 0.8,
            epochs: 1,
            train_seconds: 1.0,
            validation_scores,
            validation_knn_distances: vec![],
            dataset_fingerprint: "f".into(),
        }
    }

    fn record(score: f64, knn_distance: f64) -> ScoreRecord {
        ScoreRecord { score, knn_distance }
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let values = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&values, 0.0), Some(1.0));
        assert_eq!(quantile(&values, 1.0), Some(4.0));
        assert_eq!(quantile(&values, 0.5), Some(2.5));
        // numpy.quantile([1, 2, 3, 4], 0.9) == 3.7
        assert!((quantile(&values, 0.9).unwrap() - 3.7).abs() < 1e-12);
    }

    #[test]
    fn quantile_of_single_value_is_that_value() {
        assert_eq!(quantile(&[7.5], 0.3), Some(7.5));
    }

    #[test]
    fn quantile_rejects_empty_and_nan() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0, f64::NAN], 0.5), None);
    }

    #[test]
    fn quantile_clamps_q() {
        assert_eq!(quantile(&[1.0, 2.0], 1.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0], -1.0), Some(1.0));
    }

    #[test]
    fn quantile_rule_adds_margin() {
        let rule = SplitRule::Quantile { q: 1.0, margin: 0.5 };
        let threshold = Threshold::calibrate(&rule, &meta(vec![1.0, 3.0, 2.0])).unwrap();
        assert_eq!(threshold, Threshold::Score { tau: 3.5 });
    }

    #[test]
    fn quantile_rule_marks_low_scores_hard() {
        let threshold = Threshold::Score { tau: 2.0 };
        assert!(threshold.is_hard(&record(2.0, 100.0)));
        assert!(threshold.is_hard(&record(-1.0, 100.0)));
        assert!(!threshold.is_hard(&record(2.0001, 0.0)));
        assert!(!threshold.is_hard(&record(f64::NAN, 0.0)));
    }

    #[test]
    fn similarity_rule_uses_knn_distance() {
        let rule = SplitRule::Similarity { max_distance: 0.3 };
        let threshold = Threshold::calibrate(&rule, &meta(vec![])).unwrap();
        assert!(threshold.is_hard(&record(99.0, 0.3)));
        assert!(!threshold.is_hard(&record(0.0, 0.31)));
    }

    #[test]
    fn quantile_rule_without_validation_names_round() {
        let rule = SplitRule::Quantile { q: 0.95, margin: 0.0 };
        let error = Threshold::calibrate(&rule, &meta(vec![])).unwrap_err();
        assert_eq!(error, SplitError::NoValidationScores { round: RoundIndex(2) });
        assert!(error.to_string().contains("round 2"));
    }

    #[test]
    fn quantile_rule_rejects_infinite_validation() {
        let rule = SplitRule::Quantile { q: 0.95, margin: 0.0 };
        let error = Threshold::calibrate(&rule, &meta(vec![1.0, f64::INFINITY])).unwrap_err();
        assert!(matches!(error, SplitError::NonFiniteValidation { .. }), "{error}");
    }

    #[test]
    fn hard_fraction_counts_hard_records() {
        let threshold = Threshold::Score { tau: 1.0 };
        let records = [record(0.5, 0.0), record(1.5, 0.0), record(1.0, 0.0), record(3.0, 0.0)];
        assert_eq!(hard_fraction(&threshold, &records), 0.5);
        assert_eq!(hard_fraction(&threshold, &[]), 0.0);
    }
}
