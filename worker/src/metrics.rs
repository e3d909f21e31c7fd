//! Ranking metrics of anomaly scores, with anomalies as the positive class and higher scores
//! meaning more anomalous.
//!
//! Both metrics are undefined when the labels hold only one class; they then return
//! [`MetricError::OneClass`] instead of NaN.

use std::cmp::Ordering;

/// Errors of metric computation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("{scores} scores but {labels} labels; pass one label per score")]
    LengthMismatch { scores: usize, labels: usize },
    #[error("score {index} is {value}, not a finite number; the detector diverged or was fed invalid input")]
    NonFinite { index: usize, value: f64 },
    #[error("the metric needs both classes, but the labels hold {positives} anomalies and {negatives} normals")]
    OneClass { positives: usize, negatives: usize },
}

/// Area under the ROC curve: the probability that a random anomaly scores above a random
/// normal, counting ties as 1/2 (the Mann–Whitney U statistic divided by n₊·n₋).
pub fn auroc(scores: &[f64], is_anomaly: &[bool]) -> Result<f64, MetricError> {
    let (positives, negatives) = check(scores, is_anomaly)?;
    let order = ascending_order(scores);

    // Sum the midranks (1-based) of the anomalies; tied scores share the mean of their ranks.
    let mut positive_rank_sum = 0.0;
    for group in tie_groups(scores, &order) {
        let first_rank = group.start as f64 + 1.0;
        let last_rank = group.end as f64;
        let midrank = (first_rank + last_rank) / 2.0;
        let group_positives = order[group].iter().filter(|&&i| is_anomaly[i]).count();
        positive_rank_sum += midrank * group_positives as f64;
    }

    let (p, n) = (positives as f64, negatives as f64);
    let u = positive_rank_sum - p * (p + 1.0) / 2.0;
    Ok(u / (p * n))
}

/// Area under the precision-recall curve as average precision: Σ (Rₖ − Rₖ₋₁)·Pₖ over the
/// thresholds k from the highest score down. Tied scores form one threshold, so their order
/// does not matter.
pub fn aupr(scores: &[f64], is_anomaly: &[bool]) -> Result<f64, MetricError> {
    let (positives, _) = check(scores, is_anomaly)?;
    let mut order = ascending_order(scores);
    order.reverse();

    let mut true_positives = 0usize;
    let mut seen = 0usize;
    let mut average_precision = 0.0;
    for group in tie_groups(scores, &order) {
        let group_positives = order[group.clone()].iter().filter(|&&i| is_anomaly[i]).count();
        true_positives += group_positives;
        seen += group.len();
        let precision = true_positives as f64 / seen as f64;
        average_precision += group_positives as f64 / positives as f64 * precision;
    }
    Ok(average_precision)
}

/// Check lengths, finiteness and that both classes occur; return (positives, negatives).
fn check(scores: &[f64], is_anomaly: &[bool]) -> Result<(usize, usize), MetricError> {
    if scores.len() != is_anomaly.len() {
        return Err(MetricError::LengthMismatch { scores: scores.len(), labels: is_anomaly.len() });
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, value)| !value.is_finite()) {
        return Err(MetricError::NonFinite { index, value });
    }
    let positives = is_anomaly.iter().filter(|&&a| a).count();
    let negatives = is_anomaly.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricError::OneClass { positives, negatives });
    }
    Ok((positives, negatives))
}

/// Indices of `scores` sorted by ascending score. Scores are finite, so the order is total.
fn ascending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(Ordering::Equal));
    order
}

/// Runs of positions in `order` (sorted either way) whose scores are equal.
fn tie_groups(scores: &[f64], order: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    for position in 1..=order.len() {
        if position == order.len() || scores[order[position]] != scores[order[start]] {
            groups.push(start..position);
            start = position;
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auroc_perfect_and_inverted() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &labels).unwrap(), 1.0);
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &labels).unwrap(), 0.0);
    }

    #[test]
    fn auroc_hand_computed_case() {
        // Pairs (anomaly, normal): 0.8 beats 0.1, 0.4 and 0.35; 0.5 beats 0.1, 0.4, 0.35 too;
        // 0.3 beats only 0.1. That is 7 of 9 pairs.
        let scores = [0.1, 0.4, 0.35, 0.8, 0.5, 0.3];
        let labels = [false, false, false, true, true, true];
        assert!(close(auroc(&scores, &labels).unwrap(), 7.0 / 9.0));
    }

    #[test]
    fn auroc_counts_ties_as_half() {
        // The anomaly ties one normal (1/2) and beats the other (1): 1.5 of 2 pairs.
        let scores = [0.5, 0.2, 0.5];
        let labels = [false, false, true];
        assert!(close(auroc(&scores, &labels).unwrap(), 0.75));
        // All scores equal: every pair is a tie.
        assert!(close(auroc(&[1.0; 4], &[true, false, true, false]).unwrap(), 0.5));
    }

    #[test]
    fn aupr_hand_computed_case() {
        // Descending: 0.9 (a), 0.8 (n), 0.7 (a), 0.1 (n).
        // Thresholds: recall 1/2 at precision 1, then recall 1 at precision 2/3.
        let scores = [0.9, 0.8, 0.7, 0.1];
        let labels = [true, false, true, false];
        assert!(close(aupr(&scores, &labels).unwrap(), 0.5 * 1.0 + 0.5 * 2.0 / 3.0));
    }

    #[test]
    fn aupr_treats_ties_as_one_threshold() {
        // 0.9 (a) then a tie of one anomaly and one normal at 0.5, then a normal.
        // Thresholds: recall 1/2 at precision 1; recall 1 at precision 2/3.
        let scores = [0.5, 0.9, 0.5, 0.1];
        let labels = [false, true, true, false];
        let expected = 0.5 + 0.5 * 2.0 / 3.0;
        assert!(close(aupr(&scores, &labels).unwrap(), expected));
        // Swapping the tied pair's positions changes nothing.
        let swapped = [0.5, 0.9, 0.5, 0.1];
        let swapped_labels = [true, true, false, false];
        assert!(close(aupr(&swapped, &swapped_labels).unwrap(), expected));
        // All tied: precision is the anomaly share.
        assert!(close(aupr(&[2.0; 4], &[true, false, false, false]).unwrap(), 0.25));
    }

    #[test]
    fn aupr_perfect_ranking_is_one() {
        assert_eq!(aupr(&[0.1, 0.9, 0.8], &[false, true, true]).unwrap(), 1.0);
    }

    #[test]
    fn one_class_labels_are_an_error() {
        let error = auroc(&[0.1, 0.2], &[true, true]).unwrap_err();
        assert_eq!(error, MetricError::OneClass { positives: 2, negatives: 0 });
        let error = aupr(&[0.1, 0.2], &[false, false]).unwrap_err();
        assert_eq!(error, MetricError::OneClass { positives: 0, negatives: 2 });
        assert!(matches!(auroc(&[], &[]), Err(MetricError::OneClass { .. })));
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert_eq!(auroc(&[0.1], &[true, false]).unwrap_err(), MetricError::LengthMismatch { scores: 1, labels: 2 });
        let error = aupr(&[0.1, f64::NAN], &[true, false]).unwrap_err();
        assert!(matches!(error, MetricError::NonFinite { index: 1, .. }), "{error}");
    }
}
