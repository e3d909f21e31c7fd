//! Moving the procedural generator's sampling weights toward what produced hard anomalies.
//!
//! Each concept (and each severity bin) c has a sampling probability p_c and an observed hard
//! rate h_c in the round. The share of hard anomalies that c would produce is t_c ∝ p_c · h_c,
//! so t is where the weights should go. The update is p ← (1 − lr) · p + lr · t, after which
//! every probability is raised to at least `floor` and the rest rescaled, so that no concept or
//! bin stops being sampled. Hard rates are shrunk toward the round's overall rate with a prior of
//! [`PRIOR_SAMPLES`] samples, so a concept drawn twice cannot swing the weights alone.

use std::collections::BTreeMap;

use kka_shared::messages::GeneratorState;

/// Weight of the round's overall hard rate in each concept's or bin's hard-rate estimate,
/// counted in samples.
pub const PRIOR_SAMPLES: f64 = 2.0;

/// Split result of one generated anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub concept_id: String,
    /// Severity in [0, 1] as the generator recorded it.
    pub severity: f64,
    pub hard: bool,
}

/// Step settings of the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateSettings {
    /// Step toward the target distribution, in [0, 1].
    pub lr: f64,
    /// Smallest probability any concept or bin keeps, in [0, 1).
    pub floor: f64,
    pub severity_min: f64,
    pub severity_max: f64,
    pub severity_bins: usize,
}

/// Returns the generator state for the next round. With no outcomes, or no hard anomaly at all,
/// the weights keep their current distribution; they are still normalised and floored.
pub fn update_generator_state(state: &GeneratorState, outcomes: &[Outcome], settings: &UpdateSettings) -> GeneratorState {
    GeneratorState {
        concept_weights: update_concepts(&state.concept_weights, outcomes, settings),
        severity_weights: update_severity(&state.severity_weights, outcomes, settings),
    }
}

fn update_concepts(weights: &BTreeMap<String, f64>, outcomes: &[Outcome], settings: &UpdateSettings) -> BTreeMap<String, f64> {
    let mut names: Vec<String> = weights.keys().cloned().collect();
    names.extend(outcomes.iter().map(|o| o.concept_id.clone()));
    names.sort();
    names.dedup();
    if names.is_empty() {
        return BTreeMap::new();
    }

    // A concept without a weight gets the mean weight, as the generator itself assumes.
    let known: Vec<f64> = weights.values().copied().filter(|w| w.is_finite() && *w >= 0.0).collect();
    let mean = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    let current: Vec<f64> = names.iter().map(|name| weights.get(name).copied().unwrap_or(mean)).collect();

    let position = |outcome: &Outcome| names.binary_search(&outcome.concept_id).ok();
    let updated = step(&current, outcomes.iter().map(|o| (position(o), o.hard)), settings);
    names.into_iter().zip(updated).collect()
}

fn update_severity(weights: &[f64], outcomes: &[Outcome], settings: &UpdateSettings) -> Vec<f64> {
    let bins = settings.severity_bins.max(1);
    let current = if weights.len() == bins { weights.to_vec() } else { vec![1.0; bins] };
    let bin_of = |outcome: &Outcome| Some(severity_bin(outcome.severity, settings));
    step(&current, outcomes.iter().map(|o| (bin_of(o), o.hard)), settings)
}

/// Index of the severity bin that `severity` falls in; bins split [min, max] evenly and values
/// outside the range go to the nearest end bin.
pub fn severity_bin(severity: f64, settings: &UpdateSettings) -> usize {
    let bins = settings.severity_bins.max(1);
    let width = settings.severity_max - settings.severity_min;
    if width.is_nan() || width <= 0.0 || !severity.is_finite() {
        return 0;
    }
    let position = (severity - settings.severity_min) / width * bins as f64;
    (position.max(0.0) as usize).min(bins - 1)
}

/// Updates a probability vector from (category, hard) observations.
fn step(current: &[f64], observations: impl Iterator<Item = (Option<usize>, bool)>, settings: &UpdateSettings) -> Vec<f64> {
    let probabilities = normalise(current);
    let mut drawn = vec![0.0; current.len()];
    let mut hard = vec![0.0; current.len()];
    for (category, is_hard) in observations {
        let Some(category) = category else { continue };
        drawn[category] += 1.0;
        if is_hard {
            hard[category] += 1.0;
        }
    }

    let total_drawn: f64 = drawn.iter().sum();
    let total_hard: f64 = hard.iter().sum();
    if total_hard == 0.0 {
        return apply_floor(&probabilities, settings.floor);
    }
    let overall_rate = total_hard / total_drawn;
    let target: Vec<f64> = (0..current.len())
        .map(|c| probabilities[c] * (hard[c] + PRIOR_SAMPLES * overall_rate) / (drawn[c] + PRIOR_SAMPLES))
        .collect();
    let target = normalise(&target);

    let lr = settings.lr.clamp(0.0, 1.0);
    let moved: Vec<f64> = probabilities.iter().zip(&target).map(|(p, t)| (1.0 - lr) * p + lr * t).collect();
    apply_floor(&moved, settings.floor)
}

/// Scales non-negative finite weights to sum to 1; all-zero or invalid input becomes uniform.
fn normalise(weights: &[f64]) -> Vec<f64> {
    let clean: Vec<f64> = weights.iter().map(|&w| if w.is_finite() && w > 0.0 { w } else { 0.0 }).collect();
    let sum: f64 = clean.iter().sum();
    if sum > 0.0 {
        clean.iter().map(|w| w / sum).collect()
    } else {
        vec![1.0 / weights.len() as f64; weights.len()]
    }
}

/// Raises every probability below `floor` to `floor` and rescales the others so the sum stays
/// 1. When `floor` times the number of categories reaches 1, the result is uniform.
fn apply_floor(probabilities: &[f64], floor: f64) -> Vec<f64> {
    let n = probabilities.len();
    if floor <= 0.0 || n == 0 {
        return probabilities.to_vec();
    }
    if floor * n as f64 >= 1.0 {
        return vec![1.0 / n as f64; n];
    }

    // Each pass pins at least one more category to the floor, so at most n passes run.
    let mut pinned = vec![false; n];
    loop {
        let free_mass = 1.0 - floor * pinned.iter().filter(|&&p| p).count() as f64;
        let free_sum: f64 = (0..n).filter(|&i| !pinned[i]).map(|i| probabilities[i]).sum();
        if free_sum <= 0.0 {
            return vec![1.0 / n as f64; n];
        }
        let result: Vec<f64> = (0..n)
            .map(|i| if pinned[i] { floor } else { probabilities[i] / free_sum * free_mass })
            .collect();
        let newly_low: Vec<usize> = (0..n).filter(|&i| !pinned[i] && result[i] < floor).collect();
        if newly_low.is_empty() {
            return result;
        }
        for i in newly_low {
            pinned[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lr: f64, floor: f64) -> UpdateSettings {
        UpdateSettings { lr, floor, severity_min: 0.0, severity_max: 1.0, severity_bins: 4 }
    }

    fn outcome(concept: &str, severity: f64, hard: bool) -> Outcome {
        Outcome { concept_id: concept.into(), severity, hard }
    }

    /// 10 draws of each of a, b, c: a is hard 8 times, b 2 times, c never.
    fn round_outcomes() -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (concept, hard_count, severity) in [("a", 8, 0.1), ("b", 2, 0.6), ("c", 0, 0.9)] {
            for i in 0..10 {
                outcomes.push(outcome(concept, severity, i < hard_count));
            }
        }
        outcomes
    }

    fn sum(values: impl IntoIterator<Item = f64>) -> f64 {
        values.into_iter().sum()
    }

    #[test]
    fn mass_moves_toward_hard_concepts() {
        let next = update_generator_state(&GeneratorState::default(), &round_outcomes(), &settings(0.5, 0.0));
        let weights = &next.concept_weights;
        assert!(weights["a"] > 1.0 / 3.0, "{weights:?}");
        assert!(weights["a"] > weights["b"], "{weights:?}");
        assert!(weights["b"] > weights["c"], "{weights:?}");
        assert!(weights["c"] < 1.0 / 3.0, "{weights:?}");
    }

    #[test]
    fn weights_sum_to_one() {
        let next = update_generator_state(&GeneratorState::default(), &round_outcomes(), &settings(0.7, 0.05));
        assert!((sum(next.concept_weights.values().copied()) - 1.0).abs() < 1e-12);
        assert!((sum(next.severity_weights.iter().copied()) - 1.0).abs() < 1e-12);
        assert_eq!(next.severity_weights.len(), 4);
    }

    #[test]
    fn floor_holds_after_many_rounds() {
        let floor = 0.05;
        let mut state = GeneratorState::default();
        for _ in 0..50 {
            state = update_generator_state(&state, &round_outcomes(), &settings(1.0, floor));
        }
        for (concept, weight) in &state.concept_weights {
            assert!(*weight >= floor - 1e-12, "{concept} fell to {weight}");
        }
        for (bin, weight) in state.severity_weights.iter().enumerate() {
            assert!(*weight >= floor - 1e-12, "bin {bin} fell to {weight}");
        }
        assert!((sum(state.concept_weights.values().copied()) - 1.0).abs() < 1e-12);
        assert!(state.concept_weights["a"] > 0.5, "{:?}", state.concept_weights);
    }

    #[test]
    fn severity_mass_moves_toward_hard_bins() {
        let next = update_generator_state(&GeneratorState::default(), &round_outcomes(), &settings(0.5, 0.0));
        let bins = &next.severity_weights;
        // Severity 0.1 (bin 0) is mostly hard, 0.9 (bin 3) never; bin 1 was not drawn.
        assert!(bins[0] > 0.25, "{bins:?}");
        assert!(bins[3] < 0.25, "{bins:?}");
        assert!(bins[0] > bins[2], "{bins:?}");
        assert!(bins[2] > bins[3], "{bins:?}");
    }

    #[test]
    fn zero_step_keeps_distribution() {
        let mut state = GeneratorState::default();
        state.concept_weights.insert("a".into(), 3.0);
        state.concept_weights.insert("b".into(), 1.0);
        let next = update_generator_state(&state, &[outcome("a", 0.5, false), outcome("b", 0.5, true)], &settings(0.0, 0.0));
        assert!((next.concept_weights["a"] - 0.75).abs() < 1e-12);
        assert!((next.concept_weights["b"] - 0.25).abs() < 1e-12);
    }

    #[test]
    fn no_hard_anomaly_keeps_distribution() {
        let outcomes: Vec<Outcome> = round_outcomes().into_iter().map(|o| Outcome { hard: false, ..o }).collect();
        let next = update_generator_state(&GeneratorState::default(), &outcomes, &settings(1.0, 0.0));
        for weight in next.concept_weights.values() {
            assert!((weight - 1.0 / 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn unseen_concept_gets_mean_weight() {
        let mut state = GeneratorState::default();
        state.concept_weights.insert("a".into(), 0.5);
        state.concept_weights.insert("b".into(), 0.5);
        let next = update_generator_state(&state, &[outcome("new", 0.5, false)], &settings(0.0, 0.0));
        assert!((next.concept_weights["new"] - 1.0 / 3.0).abs() < 1e-12, "{:?}", next.concept_weights);
    }

    #[test]
    fn floor_too_high_gives_uniform() {
        assert_eq!(apply_floor(&[0.9, 0.1], 0.6), vec![0.5, 0.5]);
    }

    #[test]
    fn floor_rescales_the_rest() {
        let floored = apply_floor(&[0.97, 0.02, 0.01], 0.05);
        assert_eq!(floored[1], 0.05);
        assert_eq!(floored[2], 0.05);
        assert!((floored[0] - 0.9).abs() < 1e-12);
    }

    #[test]
    fn severity_bins_cover_range() {
        let s = UpdateSettings { lr: 0.5, floor: 0.0, severity_min: 0.2, severity_max: 1.0, severity_bins: 4 };
        assert_eq!(severity_bin(0.2, &s), 0);
        assert_eq!(severity_bin(0.39, &s), 0);
        assert_eq!(severity_bin(0.41, &s), 1);
        assert_eq!(severity_bin(1.0, &s), 3);
        assert_eq!(severity_bin(0.0, &s), 0);
        assert_eq!(severity_bin(f64::NAN, &s), 0);
    }

    #[test]
    fn wrong_length_severity_weights_restart_uniform() {
        let state = GeneratorState { concept_weights: BTreeMap::new(), severity_weights: vec![1.0, 0.0] };
        let next = update_generator_state(&state, &[], &settings(0.5, 0.0));
        assert_eq!(next.severity_weights, vec![0.25; 4]);
    }
}
