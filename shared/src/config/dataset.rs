use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// On-disk dataset formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// MNIST IDX files, plain or `.gz`.
    Mnist,
    /// Fashion-MNIST IDX files, plain or `.gz`.
    FashionMnist,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files, fine labels.
    Cifar100,
    /// PNG or JPEG images in `train/<class>/` and `test/<class>/` folders.
    Folder,
}

/// How pixel values are normalised before they reach a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preprocessing {
    /// Divide by 255, giving values in [0, 1].
    #[default]
    Scale,
    /// Scale, then subtract the per-channel mean and divide by the standard deviation of the
    /// normal training images only.
    Standardize,
}

/// Where the dataset files are. Each worker reads its own copy; tasks carry a fingerprint to
/// check that every copy is the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    pub format: DatasetFormat,
    pub path: PathBuf,
    /// The one-class protocol, which travels with every task.
    #[serde(flatten)]
    pub protocol: DatasetProtocol,
}

/// The one-class protocol: which classes are normal and how the splits are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetProtocol {
    pub normal_classes: Vec<u32>,
    /// Share of the normal training images held out to calibrate thresholds, in (0, 0.5].
    pub validation_fraction: f64,
    pub preprocessing: Preprocessing,
    /// Use at most this many normal training images (0 means all), for quick runs and tests.
    pub train_limit: usize,
    /// Use at most this many test images, a sample of the whole split that keeps each class's
    /// share (0 means all).
    pub test_limit: usize,
    /// Seed of the shuffles that cut the validation slice and the limits.
    pub split_seed: u64,
}

impl Default for DatasetProtocol {
    fn default() -> Self {
        Self {
            normal_classes: vec![0],
            validation_fraction: 0.1,
            preprocessing: Preprocessing::Scale,
            train_limit: 0,
            test_limit: 0,
            split_seed: 0,
        }
    }
}

impl DatasetSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.protocol.validate()
    }
}

impl DatasetProtocol {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.normal_classes.is_empty() {
            return Err(ConfigError::invalid("dataset.normal_classes", "[]", "list at least one class, such as [0]"));
        }
        let mut sorted = self.normal_classes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.normal_classes.len() {
            return Err(ConfigError::invalid("dataset.normal_classes", format!("{:?}", self.normal_classes), "list each class once"));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction <= 0.5) {
            return Err(ConfigError::invalid(
                "dataset.validation_fraction",
                self.validation_fraction,
                "use a value in (0, 0.5], such as 0.1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn empty_or_repeated_classes_are_rejected() {
        let error = Config::from_toml("[dataset]\nnormal_classes = []\n").unwrap_err().to_string();
        assert!(error.contains("dataset.normal_classes"), "{error}");
        let error = Config::from_toml("[dataset]\nnormal_classes = [1, 1]\n").unwrap_err().to_string();
        assert!(error.contains("dataset.normal_classes"), "{error}");
    }

    #[test]
    fn validation_fraction_must_be_in_range() {
        for bad in ["0.0", "0.9", "-0.1"] {
            let error = Config::from_toml(&format!("[dataset]\nvalidation_fraction = {bad}\n")).unwrap_err().to_string();
            assert!(error.contains("dataset.validation_fraction"), "{error}");
        }
    }

    #[test]
    fn unknown_format_is_rejected() {
        let error = Config::from_toml("[dataset]\nformat = \"imagenet\"\n").unwrap_err().to_string();
        assert!(error.contains("imagenet"), "{error}");
    }
}
