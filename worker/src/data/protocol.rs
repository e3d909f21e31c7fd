//! The one-class protocol: which images form the train, validation and test splits.
//!
//! Train: the normal-class images of the training split, shuffled with `split_seed`, cut to
//! `train_limit`, minus a validation slice of `validation_fraction` (at least one image).
//! Test: the whole test split, or a stratified subsample of `test_limit` images that keeps each
//! class's share (largest remainders get the leftover places). Index lists are kept sorted, so
//! the result does not depend on the order of `normal_classes`.

use std::collections::{BTreeMap, BTreeSet};

use kka_shared::config::DatasetProtocol;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::{DataError, ImageSet, Normalizer, OneClassData, RawDataset, RawSplit};

/// Stream of the seeded generator that subsamples the test split, so it differs from the
/// stream that cuts the training split.
const TEST_STREAM: u64 = 1;

/// The indices of each one-class split, the fitted preprocessing and the fingerprint.
#[derive(Debug, Clone)]
pub struct SplitPlan {
    /// Indices into the training split file.
    pub train: Vec<u32>,
    /// Indices into the training split file, disjoint from `train`.
    pub validation: Vec<u32>,
    /// Indices into the test split file.
    pub test: Vec<u32>,
    pub normal_classes: BTreeSet<u32>,
    pub normalizer: Normalizer,
    pub fingerprint: String,
}

impl SplitPlan {
    /// Cut `raw` by `protocol`.
    pub fn new(raw: &RawDataset, protocol: &DatasetProtocol) -> Result<SplitPlan, DataError> {
        protocol.validate()?;
        let normal_classes: BTreeSet<u32> = protocol.normal_classes.iter().copied().collect();
        check_normal_classes(raw, &normal_classes)?;

        let (train, validation) = cut_train(&raw.train, &normal_classes, protocol)?;
        let test = cut_test(&raw.test, protocol.test_limit, protocol.split_seed);
        check_test(&raw.test, &test, &normal_classes)?;

        let train_pixels = gather(&raw.train, &train, raw.image_len());
        let normalizer = Normalizer::fit(protocol.preprocessing, &train_pixels, raw.shape);
        let fingerprint = kka_shared::dataset::fingerprint(&raw.files_digest, raw.format, protocol);
        Ok(SplitPlan { train, validation, test, normal_classes, normalizer, fingerprint })
    }

    /// Copy the planned images into tensors.
    pub fn materialize(&self, raw: &RawDataset) -> Result<OneClassData, DataError> {
        let test_is_anomaly =
            self.test.iter().map(|&i| !self.normal_classes.contains(&raw.test.labels[i as usize])).collect();
        Ok(OneClassData {
            train: image_set(raw, &raw.train, &self.train)?,
            validation: image_set(raw, &raw.train, &self.validation)?,
            test: image_set(raw, &raw.test, &self.test)?,
            test_is_anomaly,
            shape: raw.shape.map(|dim| dim as i64),
            fingerprint: self.fingerprint.clone(),
            normalizer: self.normalizer.clone(),
            class_names: raw.class_names.clone(),
        })
    }
}

fn check_normal_classes(raw: &RawDataset, normal_classes: &BTreeSet<u32>) -> Result<(), DataError> {
    let present: BTreeSet<u32> = raw.train.labels.iter().copied().collect();
    match normal_classes.iter().find(|class| !present.contains(class)) {
        None => Ok(()),
        Some(&class) => Err(DataError::NormalClassMissing { class, available: describe_classes(&present, &raw.class_names) }),
    }
}

/// "0 (T-shirt/top), 1 (Trouser), ..." for error messages, cut after 20 classes.
fn describe_classes(classes: &BTreeSet<u32>, names: &[String]) -> String {
    let mut parts: Vec<String> = classes
        .iter()
        .take(20)
        .map(|&class| match names.get(class as usize) {
            Some(name) => format!("{class} ({name})"),
            None => class.to_string(),
        })
        .collect();
    if classes.len() > 20 {
        parts.push(format!("and {} more", classes.len() - 20));
    }
    if parts.is_empty() {
        return "none".into();
    }
    parts.join(", ")
}

/// Shuffle the normal training images, apply the limit and cut the validation slice.
fn cut_train(
    split: &RawSplit,
    normal_classes: &BTreeSet<u32>,
    protocol: &DatasetProtocol,
) -> Result<(Vec<u32>, Vec<u32>), DataError> {
    let mut normals: Vec<u32> =
        (0..split.len() as u32).filter(|&i| normal_classes.contains(&split.labels[i as usize])).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(protocol.split_seed);
    normals.shuffle(&mut rng);
    if protocol.train_limit > 0 {
        normals.truncate(protocol.train_limit);
    }

    let available = normals.len();
    let validation_count = ((available as f64 * protocol.validation_fraction).round() as usize).max(1);
    if available <= validation_count {
        return Err(DataError::EmptySplit {
            split: "training",
            detail: format!(
                "{available} normal images, {validation_count} of them held out for validation (validation_fraction {})",
                protocol.validation_fraction
            ),
            fix: "raise dataset.train_limit or add normal classes",
        });
    }

    let mut validation = normals[..validation_count].to_vec();
    let mut train = normals[validation_count..].to_vec();
    validation.sort_unstable();
    train.sort_unstable();
    Ok((train, validation))
}

/// The test indices: all of them, or a stratified subsample of `limit`.
fn cut_test(split: &RawSplit, limit: usize, seed: u64) -> Vec<u32> {
    let total = split.len();
    if limit == 0 || limit >= total {
        return (0..total as u32).collect();
    }

    let mut by_class: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (index, &label) in split.labels.iter().enumerate() {
        by_class.entry(label).or_default().push(index as u32);
    }
    let quotas = stratified_quotas(&by_class, limit, total);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(TEST_STREAM);
    let mut chosen = Vec::with_capacity(limit);
    for (indices, quota) in by_class.into_values().zip(quotas) {
        let mut indices = indices;
        indices.shuffle(&mut rng);
        chosen.extend_from_slice(&indices[..quota]);
    }
    chosen.sort_unstable();
    chosen
}

/// Per-class sample sizes summing to `limit`, proportional to class sizes (largest remainder).
fn stratified_quotas(by_class: &BTreeMap<u32, Vec<u32>>, limit: usize, total: usize) -> Vec<usize> {
    let exact: Vec<f64> = by_class.values().map(|indices| indices.len() as f64 * limit as f64 / total as f64).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|share| share.floor() as usize).collect();
    let mut order: Vec<usize> = (0..exact.len()).collect();
    // Largest fractional part first; ties go to the smaller class label, which sorts first.
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let mut leftover = limit - quotas.iter().sum::<usize>();
    for class in order {
        if leftover == 0 {
            break;
        }
        quotas[class] += 1;
        leftover -= 1;
    }
    quotas
}

/// A test split must hold normal and anomalous images, or AUROC is undefined.
fn check_test(split: &RawSplit, test: &[u32], normal_classes: &BTreeSet<u32>) -> Result<(), DataError> {
    let anomalies = test.iter().filter(|&&i| !normal_classes.contains(&split.labels[i as usize])).count();
    let normals = test.len() - anomalies;
    if normals == 0 || anomalies == 0 {
        return Err(DataError::EmptySplit {
            split: "test",
            detail: format!("{normals} normal and {anomalies} anomalous test images"),
            fix: "the test split needs both normal and anomalous classes; check dataset.normal_classes and dataset.test_limit",
        });
    }
    Ok(())
}

/// Concatenate the pixels of the images at `indices`.
fn gather(split: &RawSplit, indices: &[u32], image_len: usize) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(indices.len() * image_len);
    for &index in indices {
        let start = index as usize * image_len;
        pixels.extend_from_slice(&split.pixels[start..start + image_len]);
    }
    pixels
}

fn image_set(raw: &RawDataset, split: &RawSplit, indices: &[u32]) -> Result<ImageSet, DataError> {
    let pixels = gather(split, indices, raw.image_len());
    let [c, h, w] = raw.shape.map(|dim| dim as i64);
    let images = Tensor::f_from_slice(&pixels)?
        .f_view([indices.len() as i64, c, h, w])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?;
    Ok(ImageSet {
        images,
        labels: indices.iter().map(|&i| split.labels[i as usize]).collect(),
        indices: indices.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::{DatasetFormat, Preprocessing};

    /// A 1×1×2 dataset with `per_class` images of each of `classes` classes in both splits.
    fn raw(classes: u32, per_class: usize) -> RawDataset {
        let labels: Vec<u32> = (0..classes as usize * per_class).map(|i| i as u32 % classes).collect();
        let pixels: Vec<u8> = labels.iter().flat_map(|&label| [label as u8 * 10, 255]).collect();
        let split = RawSplit { pixels, labels };
        RawDataset {
            format: DatasetFormat::Mnist,
            train: split.clone(),
            test: split,
            shape: [1, 1, 2],
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            files_digest: "digest".into(),
        }
    }

    fn protocol(normal_classes: Vec<u32>) -> DatasetProtocol {
        DatasetProtocol { normal_classes, ..DatasetProtocol::default() }
    }

    #[test]
    fn train_and_validation_hold_only_normals() {
        let raw = raw(4, 50);
        let plan = SplitPlan::new(&raw, &protocol(vec![1, 3])).unwrap();
        assert_eq!(plan.validation.len(), 10);
        assert_eq!(plan.train.len(), 90);
        for &index in plan.train.iter().chain(&plan.validation) {
            assert!([1, 3].contains(&raw.train.labels[index as usize]));
        }
        let overlap = plan.train.iter().filter(|index| plan.validation.contains(index)).count();
        assert_eq!(overlap, 0);
    }

    #[test]
    fn split_seed_changes_validation_slice() {
        let raw = raw(2, 100);
        let a = SplitPlan::new(&raw, &protocol(vec![0])).unwrap();
        let b = SplitPlan::new(&raw, &DatasetProtocol { split_seed: 9, ..protocol(vec![0]) }).unwrap();
        let again = SplitPlan::new(&raw, &protocol(vec![0])).unwrap();
        assert_ne!(a.validation, b.validation);
        assert_eq!(a.validation, again.validation);
        assert_ne!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn train_limit_caps_normals() {
        let raw = raw(2, 100);
        let plan = SplitPlan::new(&raw, &DatasetProtocol { train_limit: 30, ..protocol(vec![0]) }).unwrap();
        assert_eq!(plan.train.len() + plan.validation.len(), 30);
        assert_eq!(plan.validation.len(), 3);
    }

    #[test]
    fn test_limit_is_stratified() {
        let mut raw = raw(2, 100);
        // Class 0 gets three quarters of the test split.
        raw.test.labels = (0..200).map(|i| u32::from(i % 4 == 3)).collect();
        let plan = SplitPlan::new(&raw, &DatasetProtocol { test_limit: 41, ..protocol(vec![0]) }).unwrap();
        assert_eq!(plan.test.len(), 41);
        let anomalies = plan.test.iter().filter(|&&i| raw.test.labels[i as usize] == 1).count();
        // 41 × 1/4 = 10.25 anomalies, 41 × 3/4 = 30.75 normals: the larger remainder wins the spare place.
        assert_eq!(anomalies, 10);
        assert!(plan.test.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn missing_normal_class_lists_available() {
        let error = SplitPlan::new(&raw(3, 10), &protocol(vec![7])).unwrap_err();
        assert!(matches!(error, DataError::NormalClassMissing { class: 7, .. }), "{error}");
        assert!(error.to_string().contains("0 (0), 1 (1), 2 (2)"), "{error}");
    }

    #[test]
    fn too_few_normals_is_an_empty_split() {
        let error = SplitPlan::new(&raw(3, 1), &protocol(vec![0])).unwrap_err();
        assert!(matches!(error, DataError::EmptySplit { split: "training", .. }), "{error}");
    }

    #[test]
    fn all_classes_normal_leaves_no_test_anomalies() {
        let error = SplitPlan::new(&raw(2, 10), &protocol(vec![0, 1])).unwrap_err();
        assert!(matches!(error, DataError::EmptySplit { split: "test", .. }), "{error}");
    }

    #[test]
    fn materialize_scales_and_labels() {
        let raw = raw(2, 10);
        let plan = SplitPlan::new(&raw, &protocol(vec![1])).unwrap();
        let data = plan.materialize(&raw).unwrap();
        assert_eq!(data.train.images.size(), vec![plan.train.len() as i64, 1, 1, 2]);
        let first = Vec::<f32>::try_from(data.train.images.get(0).flatten(0, -1)).unwrap();
        assert_eq!(first, vec![10.0 / 255.0, 1.0]);
        assert_eq!(data.test_is_anomaly.iter().filter(|&&a| a).count(), 10);
        assert_eq!(data.test.labels.len(), 20);
    }

    #[test]
    fn standardize_is_fitted_on_train_only() {
        let raw = raw(2, 20);
        let plan =
            SplitPlan::new(&raw, &DatasetProtocol { preprocessing: Preprocessing::Standardize, ..protocol(vec![1]) }).unwrap();
        // Every class-1 image is [10, 255]: the mean over both pixels is (10 + 255) / 2 / 255.
        let expected = (10.0 + 255.0) / 2.0 / 255.0;
        assert!((plan.normalizer.mean()[0] - expected).abs() < 1e-12);
    }

    #[test]
    fn invalid_protocol_is_rejected() {
        let error = SplitPlan::new(&raw(2, 10), &protocol(vec![])).unwrap_err();
        assert!(error.to_string().contains("dataset.normal_classes"), "{error}");
    }
}
