//! Per-anomaly plans: which concept, severity, source and donor image each anomaly uses.
//!
//! Anomaly `i` of a task draws everything from its own seed, derived from the task seed and
//! `i`, so its plan and pixels do not depend on which other anomalies share its batch.

use kka_shared::messages::GeneratorState;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::GeneratorError;
use crate::knowledge::Concept;

/// ChaCha stream of the draws that choose an anomaly's concept, severity and images.
const PLAN_STREAM: u64 = 0;
/// ChaCha stream of the draws an operation makes (positions, angles, noise).
const EDIT_STREAM: u64 = 1;

/// Mix a 64-bit value with one step of SplitMix64, a bijective mixer.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of anomaly `index` of a task with seed `task_seed`.
pub fn anomaly_seed(task_seed: u64, index: u32) -> u64 {
    splitmix64(splitmix64(task_seed) ^ u64::from(index))
}

/// The random generator an operation draws from for the anomaly with this seed.
pub fn edit_rng(seed: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(EDIT_STREAM);
    rng
}

/// The plan of one anomaly: its seed, concept, severity and images.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyPlan {
    /// Index of the anomaly within its task or folder.
    pub index: u32,
    pub seed: u64,
    /// Position of the concept in the list the plan was drawn from.
    pub concept: usize,
    /// Severity in [0, 1].
    pub severity: f64,
    /// Row of the source image in the normal training set.
    pub source_row: usize,
    /// Row of a second normal image, for operations that paste from another image.
    pub donor_row: usize,
}

/// Sampling settings: severity range and the generator state's weights.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Cumulative concept weights, last entry 1.
    concept_cdf: Vec<f64>,
    /// Cumulative severity bin weights, last entry 1.
    severity_cdf: Vec<f64>,
    severity_min: f64,
    severity_max: f64,
}

impl Sampler {
    /// Check the state against the concepts and the bin count, and build the sampler.
    pub fn new(
        concepts: &[Concept],
        state: &GeneratorState,
        severity_min: f64,
        severity_max: f64,
        severity_bins: usize,
    ) -> Result<Sampler, GeneratorError> {
        if concepts.is_empty() {
            return Err(GeneratorError::InvalidState("there are no concepts to sample from".into()));
        }
        let concept_weights = concept_weights(concepts, state)?;
        let severity_weights = severity_weights(state, severity_bins)?;
        Ok(Sampler {
            concept_cdf: cumulative("concept_weights", &concept_weights)?,
            severity_cdf: cumulative("severity_weights", &severity_weights)?,
            severity_min,
            severity_max,
        })
    }

    /// Draw the plan of anomaly `index` of a task with seed `task_seed`, over `rows` normal
    /// images.
    pub fn plan(&self, concepts: &[Concept], task_seed: u64, index: u32, rows: usize) -> AnomalyPlan {
        let seed = anomaly_seed(task_seed, index);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(PLAN_STREAM);

        let concept = pick(&self.concept_cdf, rng.random::<f64>());
        let bin = pick(&self.severity_cdf, rng.random::<f64>());
        let within: f64 = rng.random();
        let sampled = self.severity_min
            + (bin as f64 + within) / self.severity_cdf.len() as f64 * (self.severity_max - self.severity_min);
        let severity = concepts[concept].severity.unwrap_or(sampled).clamp(0.0, 1.0);

        let source_row = rng.random_range(0..rows.max(1));
        let donor_row = if rows > 1 { (source_row + rng.random_range(1..rows)) % rows } else { 0 };
        AnomalyPlan { index, seed, concept, severity, source_row, donor_row }
    }
}

/// Weight per concept: the state's weight, the mean of the given weights for concepts it does
/// not list, or 1 for all when it lists none.
fn concept_weights(concepts: &[Concept], state: &GeneratorState) -> Result<Vec<f64>, GeneratorError> {
    for (id, weight) in &state.concept_weights {
        if !(weight.is_finite() && *weight >= 0.0) {
            return Err(GeneratorError::InvalidState(format!("concept weight {id} = {weight} is not a finite value >= 0")));
        }
    }
    let listed: Vec<f64> =
        concepts.iter().filter_map(|concept| state.concept_weights.get(&concept.id).copied()).collect();
    let fallback = if listed.is_empty() { 1.0 } else { listed.iter().sum::<f64>() / listed.len() as f64 };
    Ok(concepts.iter().map(|concept| state.concept_weights.get(&concept.id).copied().unwrap_or(fallback)).collect())
}

fn severity_weights(state: &GeneratorState, bins: usize) -> Result<Vec<f64>, GeneratorError> {
    if state.severity_weights.is_empty() {
        return Ok(vec![1.0; bins.max(1)]);
    }
    if state.severity_weights.len() != bins {
        return Err(GeneratorError::InvalidState(format!(
            "the state has {} severity weights but generator.severity_bins is {bins}; send one weight per bin",
            state.severity_weights.len()
        )));
    }
    Ok(state.severity_weights.clone())
}

fn cumulative(name: &str, weights: &[f64]) -> Result<Vec<f64>, GeneratorError> {
    if let Some(bad) = weights.iter().find(|weight| !(weight.is_finite() && **weight >= 0.0)) {
        return Err(GeneratorError::InvalidState(format!("{name} contains {bad}; weights must be finite and >= 0")));
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(GeneratorError::InvalidState(format!("{name} sum to 0; give at least one a positive weight")));
    }

    let mut running = 0.0;
    let mut cdf: Vec<f64> = weights
        .iter()
        .map(|weight| {
            running += weight / total;
            running
        })
        .collect();
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    Ok(cdf)
}

/// Index of the first cumulative weight above `u`, skipping zero-weight entries.
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.iter().position(|&bound| u < bound).unwrap_or(cdf.len() - 1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn concepts(count: usize) -> Vec<Concept> {
        (0..count)
            .map(|i| Concept::new(&format!("c{i}"), "d", "flip", &BTreeMap::new(), None, None).unwrap())
            .collect()
    }

    #[test]
    fn seeds_differ_per_index_and_task() {
        assert_ne!(anomaly_seed(1, 0), anomaly_seed(1, 1));
        assert_ne!(anomaly_seed(1, 0), anomaly_seed(2, 0));
        assert_eq!(anomaly_seed(7, 3), anomaly_seed(7, 3));
    }

    #[test]
    fn plans_are_deterministic_and_in_range() {
        let concepts = concepts(3);
        let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.2, 0.6, 4).unwrap();
        for index in 0..200 {
            let plan = sampler.plan(&concepts, 9, index, 50);
            assert_eq!(plan, sampler.plan(&concepts, 9, index, 50));
            assert!((0.2..=0.6).contains(&plan.severity), "{}", plan.severity);
            assert!(plan.source_row < 50);
            assert!(plan.donor_row < 50);
            assert_ne!(plan.source_row, plan.donor_row);
        }
    }

    #[test]
    fn weights_steer_concepts_and_severity() {
        let concepts = concepts(3);
        let state = GeneratorState {
            concept_weights: [("c1".to_string(), 1.0), ("c0".to_string(), 0.0), ("c2".to_string(), 0.0)].into(),
            severity_weights: vec![0.0, 0.0, 1.0],
        };
        let sampler = Sampler::new(&concepts, &state, 0.0, 0.9, 3).unwrap();
        for index in 0..100 {
            let plan = sampler.plan(&concepts, 1, index, 10);
            assert_eq!(plan.concept, 1);
            assert!(plan.severity >= 0.6, "{}", plan.severity);
        }
    }

    #[test]
    fn unlisted_concepts_get_the_mean_weight() {
        let concepts = concepts(2);
        let state = GeneratorState { concept_weights: [("c0".to_string(), 3.0)].into(), ..Default::default() };
        assert_eq!(concept_weights(&concepts, &state).unwrap(), vec![3.0, 3.0]);
    }

    #[test]
    fn fixed_concept_severity_wins() {
        let concept = Concept::new("fixed", "d", "flip", &BTreeMap::new(), None, Some(0.9)).unwrap();
        let sampler = Sampler::new(std::slice::from_ref(&concept), &GeneratorState::default(), 0.0, 0.1, 2).unwrap();
        assert_eq!(sampler.plan(std::slice::from_ref(&concept), 1, 0, 5).severity, 0.9);
    }

    #[test]
    fn invalid_states_are_rejected() {
        let concepts = concepts(2);
        let wrong_bins = GeneratorState { severity_weights: vec![1.0; 3], ..Default::default() };
        let error = Sampler::new(&concepts, &wrong_bins, 0.0, 1.0, 5).unwrap_err().to_string();
        assert!(error.contains("severity_bins is 5"), "{error}");

        let negative = GeneratorState { concept_weights: [("c0".to_string(), -1.0)].into(), ..Default::default() };
        let error = Sampler::new(&concepts, &negative, 0.0, 1.0, 5).unwrap_err().to_string();
        assert!(error.contains("c0"), "{error}");

        let zeros = GeneratorState { severity_weights: vec![0.0; 2], ..Default::default() };
        let error = Sampler::new(&concepts, &zeros, 0.0, 1.0, 2).unwrap_err().to_string();
        assert!(error.contains("sum to 0"), "{error}");

        assert!(Sampler::new(&[], &GeneratorState::default(), 0.0, 1.0, 2).is_err());
    }
}
