//! The procedural generator: determinism, shapes, value ranges and severity monotonicity.

mod generator_support;

use std::collections::BTreeMap;

use kka_shared::messages::GeneratorState;
use kka_shared::prompt::{OperationFamily, OPERATIONS};
use kka_worker::generator::procedural::ProceduralGenerator;
use kka_worker::generator::{generate_anomalies, Batch, GenerationJob, Generator, Sampler};
use kka_worker::knowledge::Concept;
use tch::{Device, Kind, Tensor};

use generator_support::synthetic_batch;

/// One concept per catalogue operation, with default parameters.
fn all_operations() -> Vec<Concept> {
    OPERATIONS
        .iter()
        .map(|spec| Concept::new(spec.name, &format!("{} edit", spec.name), spec.name, &BTreeMap::new(), None, None).unwrap())
        .collect()
}

fn job<'a>(images: &'a Tensor, indices: &'a [u32], concepts: &'a [Concept], sampler: &'a Sampler, range: std::ops::Range<u32>, batch_size: usize) -> GenerationJob<'a> {
    GenerationJob { images, indices, concepts, sampler, seed: 11, range, batch_size, device: Device::Cpu }
}

fn pixels_of(images: &Tensor, concepts: &[Concept], range: std::ops::Range<u32>, batch_size: usize) -> Vec<Vec<u8>> {
    let sampler = Sampler::new(concepts, &GeneratorState::default(), 0.0, 1.0, 5).unwrap();
    let indices: Vec<u32> = (0..images.size()[0] as u32).collect();
    let job = job(images, &indices, concepts, &sampler, range, batch_size);
    generate_anomalies(&job, &mut ProceduralGenerator, &|| false).unwrap().into_iter().map(|a| a.pixels).collect()
}

#[test]
fn same_seed_same_pixels_any_batching() {
    let images = synthetic_batch(12, 1, 28, 28);
    let concepts = all_operations();

    let whole = pixels_of(&images, &concepts, 0..96, 96);
    let small_batches = pixels_of(&images, &concepts, 0..96, 7);
    assert_eq!(whole.len(), 96);
    assert_eq!(whole, small_batches, "output depends on batch composition");

    // Anomaly 50 alone equals anomaly 50 of the whole run.
    let alone = pixels_of(&images, &concepts, 50..51, 1);
    assert_eq!(alone[0], whole[50]);

    let again = pixels_of(&images, &concepts, 0..96, 32);
    assert_eq!(whole, again);
}

#[test]
fn unsorted_batch_matches_pipeline() {
    let images = synthetic_batch(10, 1, 28, 28);
    let concepts = all_operations();
    let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.0, 1.0, 5).unwrap();
    let indices: Vec<u32> = (0..10).collect();
    let expected = pixels_of(&images, &concepts, 0..48, 48);

    // Plans in index order mix operations, so the generator takes its scatter path.
    let plans: Vec<_> = (0..48).map(|i| sampler.plan(&concepts, 11, i, indices.len())).collect();
    let rows = |pick: fn(&kka_worker::generator::AnomalyPlan) -> usize| {
        let rows: Vec<i64> = plans.iter().map(|plan| pick(plan) as i64).collect();
        images.index_select(0, &Tensor::from_slice(&rows))
    };
    let sources = rows(|plan| plan.source_row);
    let donors = rows(|plan| plan.donor_row);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &donors };
    let output = ProceduralGenerator.generate(&batch).unwrap();
    let pixels = kka_worker::generator::pipeline::to_pixels(&output).unwrap();
    for (index, image) in pixels.chunks(28 * 28).enumerate() {
        assert_eq!(image, &expected[index][..], "anomaly {index}");
    }
}

#[test]
fn rgb_output_is_deterministic() {
    let images = synthetic_batch(6, 3, 32, 32);
    let concepts = all_operations();
    let whole = pixels_of(&images, &concepts, 0..48, 48);
    let split = pixels_of(&images, &concepts, 0..48, 5);
    assert_eq!(whole, split);
}

#[test]
fn different_seeds_differ() {
    let images = synthetic_batch(8, 1, 28, 28);
    let concepts = all_operations();
    let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.0, 1.0, 5).unwrap();
    let indices: Vec<u32> = (0..8).collect();
    let mut first = job(&images, &indices, &concepts, &sampler, 0..32, 32);
    let a: Vec<Vec<u8>> = generate_anomalies(&first, &mut ProceduralGenerator, &|| false).unwrap().into_iter().map(|x| x.pixels).collect();
    first.seed = 12;
    let b: Vec<Vec<u8>> = generate_anomalies(&first, &mut ProceduralGenerator, &|| false).unwrap().into_iter().map(|x| x.pixels).collect();
    assert_ne!(a, b);
}

/// Edits per operation in [`edit_all`].
const EDITS_PER_OPERATION: usize = 8;

/// Run every operation at one severity on a batch and return the raw generator output.
fn edit_all(images: &Tensor, severity: f64) -> (Tensor, Tensor, Vec<Concept>) {
    let concepts = all_operations();
    let n = images.size()[0] as usize;
    let plans: Vec<_> = (0..concepts.len() * EDITS_PER_OPERATION)
        .map(|i| kka_worker::generator::AnomalyPlan {
            index: i as u32,
            seed: kka_worker::generator::anomaly_seed(3, i as u32),
            concept: i % concepts.len(),
            severity,
            // Spread each operation's edits over different source images.
            source_row: (i * 7 + i / concepts.len()) % n,
            donor_row: (i * 7 + i / concepts.len() + 1) % n,
        })
        .collect();
    let rows: Vec<i64> = plans.iter().map(|p| p.source_row as i64).collect();
    let donor_rows: Vec<i64> = plans.iter().map(|p| p.donor_row as i64).collect();
    let sources = images.index_select(0, &Tensor::from_slice(&rows));
    let donors = images.index_select(0, &Tensor::from_slice(&donor_rows));
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &donors };
    let output = ProceduralGenerator.generate(&batch).unwrap();
    (sources, output, concepts)
}

#[test]
fn shapes_and_ranges_grey_and_rgb() {
    for (channels, side) in [(1, 28), (3, 32)] {
        let images = synthetic_batch(5, channels, side, side);
        let (sources, output, _) = edit_all(&images, 0.8);
        assert_eq!(output.size(), sources.size(), "{channels}×{side}");
        assert_eq!(output.kind(), Kind::Float);
        let min = output.min().double_value(&[]);
        let max = output.max().double_value(&[]);
        assert!(min >= 0.0, "{channels}×{side}: min {min}");
        assert!(max <= 1.0, "{channels}×{side}: max {max}");
        assert!(bool::try_from(output.isfinite().all()).unwrap());
    }
}

/// Mean absolute pixel change per operation, averaged over its edits.
fn change_per_operation(images: &Tensor, severity: f64) -> Vec<(String, OperationFamily, f64)> {
    let (sources, output, concepts) = edit_all(images, severity);
    let change = (&output - &sources).abs().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    let change: Vec<f64> = Vec::<f64>::try_from(&change.to_kind(Kind::Double)).unwrap();
    concepts
        .iter()
        .enumerate()
        .map(|(op, concept)| {
            let values: Vec<f64> = change.iter().skip(op).step_by(concepts.len()).copied().collect();
            (concept.operation.clone(), concept.family, values.iter().sum::<f64>() / values.len() as f64)
        })
        .collect()
}

#[test]
fn every_operation_changes_the_image() {
    let images = synthetic_batch(8, 1, 28, 28);
    for (operation, _, change) in change_per_operation(&images, 1.0) {
        assert!(change > 0.004, "{operation} changed the image by only {change}");
    }
}

#[test]
fn change_grows_with_severity_per_family() {
    for (channels, side) in [(1, 28), (3, 32)] {
        let images = synthetic_batch(16, channels, side, side);
        for family in [OperationFamily::Local, OperationFamily::Global] {
            let mut previous = -1.0;
            for severity in [0.1, 0.4, 0.7, 1.0] {
                let changes = change_per_operation(&images, severity);
                let family_changes: Vec<f64> = changes.iter().filter(|(_, f, _)| *f == family).map(|(_, _, c)| *c).collect();
                let mean = family_changes.iter().sum::<f64>() / family_changes.len() as f64;
                assert!(mean > previous, "{family} {channels}×{side}: change {mean} at severity {severity} is not above {previous}");
                previous = mean;
            }
        }
    }
}

#[test]
fn change_grows_with_severity_per_operation() {
    let images = synthetic_batch(16, 1, 28, 28);
    let low = change_per_operation(&images, 0.2);
    let high = change_per_operation(&images, 1.0);
    for ((operation, _, low), (_, _, high)) in low.iter().zip(&high) {
        assert!(high > low, "{operation}: change {high} at severity 1 is not above {low} at severity 0.2");
    }
}

#[test]
fn cancelled_job_stops() {
    let images = synthetic_batch(4, 1, 28, 28);
    let concepts = all_operations();
    let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.0, 1.0, 5).unwrap();
    let indices: Vec<u32> = (0..4).collect();
    let job = job(&images, &indices, &concepts, &sampler, 0..8, 4);
    let error = generate_anomalies(&job, &mut ProceduralGenerator, &|| true).unwrap_err();
    assert!(matches!(error, kka_worker::generator::GeneratorError::Cancelled), "{error}");
}

#[test]
fn empty_training_set_is_an_error() {
    let images = Tensor::zeros([0, 1, 28, 28], (Kind::Float, Device::Cpu));
    let concepts = all_operations();
    let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.0, 1.0, 5).unwrap();
    let job = job(&images, &[], &concepts, &sampler, 0..2, 4);
    let error = generate_anomalies(&job, &mut ProceduralGenerator, &|| false).unwrap_err();
    assert!(error.to_string().contains("no normal training images"), "{error}");
}
