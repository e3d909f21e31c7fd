use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Which detector a train task fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// Deep SAD without labelled anomalies: the baseline of every experiment.
    DeepSvdd,
    /// Deep SAD: a hypersphere around normal embeddings that labelled anomalies are pushed out of.
    DeepSad,
    /// The Deep SAD encoder with a binary head, trained with BCE on normals versus anomalies.
    OutlierExposure,
}

impl DetectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::DeepSvdd => "deep-svdd",
            DetectorKind::DeepSad => "deep-sad",
            DetectorKind::OutlierExposure => "outlier-exposure",
        }
    }

    /// Whether training needs labelled anomalies.
    pub fn needs_anomalies(self) -> bool {
        !matches!(self, DetectorKind::DeepSvdd)
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Network architecture of a detector's encoder (and of the pretraining autoencoder's decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkKind {
    /// `mnist-lenet` for 1×28×28 images and `cifar10-lenet` for 3×32×32 images.
    #[default]
    Auto,
    /// 1×28×28 input: two 5×5 conv blocks of 8 and 4 channels, a 32-dimensional representation.
    MnistLenet,
    /// 1×28×28 input: two 5×5 conv blocks of 16 and 32 channels, a 128-unit hidden layer and a
    /// 64-dimensional representation.
    FmnistLenet,
    /// 3×32×32 input: three 5×5 conv blocks of 32, 64 and 128 channels, a 128-dimensional
    /// representation.
    Cifar10Lenet,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Auto => "auto",
            NetworkKind::MnistLenet => "mnist-lenet",
            NetworkKind::FmnistLenet => "fmnist-lenet",
            NetworkKind::Cifar10Lenet => "cifar10-lenet",
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Detector hyperparameters. They travel inside train tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    pub kind: DetectorKind,
    /// Encoder architecture; `auto` picks one by image shape.
    pub network: NetworkKind,
    /// Training epochs of the detector itself.
    pub epochs: u32,
    /// Autoencoder pretraining epochs whose encoder weights initialise the detector; 0 skips it.
    pub pretrain_epochs: u32,
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Epochs after which the learning rate is multiplied by 0.1.
    pub lr_milestones: Vec<u32>,
    /// L2 weight decay of Adam while training the detector.
    pub weight_decay: f64,
    /// L2 weight decay of Adam during autoencoder pretraining.
    pub pretrain_weight_decay: f64,
    /// Deep SAD weight η of the labelled-anomaly term.
    pub eta: f64,
    /// Small constant ε in the labelled-anomaly term η·(‖φ(x)−c‖² + ε)⁻¹.
    pub eps: f64,
    /// Coordinates of the centre c with a magnitude below this are pushed to ±`center_eps`,
    /// because a zero coordinate can be matched trivially by zero weights.
    pub center_eps: f64,
    /// Seed of weight initialisation and batch order.
    pub seed: u64,
}

impl DetectorSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epochs == 0 {
            return Err(ConfigError::invalid("detector.epochs", 0, "use at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("detector.batch_size", 0, "use at least 1, such as 128"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::invalid("detector.lr", self.lr, "use a positive learning rate, such as 1e-4"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ConfigError::invalid("detector.weight_decay", self.weight_decay, "use a value of 0 or more"));
        }
        if !(self.pretrain_weight_decay >= 0.0 && self.pretrain_weight_decay.is_finite()) {
            return Err(ConfigError::invalid(
                "detector.pretrain_weight_decay",
                self.pretrain_weight_decay,
                "use a value of 0 or more",
            ));
        }
        if !(self.center_eps >= 0.0 && self.center_eps < 1.0) {
            return Err(ConfigError::invalid("detector.center_eps", self.center_eps, "use a value in [0, 1), such as 0.1"));
        }
        if !(self.eta > 0.0 && self.eta.is_finite()) {
            return Err(ConfigError::invalid("detector.eta", self.eta, "use a positive weight, such as 1.0"));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(ConfigError::invalid("detector.eps", self.eps, "use a small positive value, such as 1e-6"));
        }
        if let Some(late) = self.lr_milestones.iter().find(|&&m| m == 0 || m >= self.epochs) {
            return Err(ConfigError::Conflict {
                first: "detector.lr_milestones",
                second: "detector.epochs",
                fix: format!("milestone {late} must lie in 1..{}, inside the training epochs", self.epochs),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn unknown_detector_is_rejected() {
        let error = Config::from_toml("[detector]\nkind = \"isolation-forest\"\n").unwrap_err().to_string();
        assert!(error.contains("isolation-forest"), "{error}");
    }

    #[test]
    fn milestone_past_epochs_names_both_keys() {
        let error = Config::from_toml("[detector]\nepochs = 5\nlr_milestones = [10]\n").unwrap_err().to_string();
        assert!(error.contains("detector.lr_milestones") && error.contains("detector.epochs"), "{error}");
    }

    #[test]
    fn negative_pretrain_weight_decay_is_rejected() {
        let error = Config::from_toml("[detector]\npretrain_weight_decay = -1.0\n").unwrap_err().to_string();
        assert!(error.contains("detector.pretrain_weight_decay"), "{error}");
    }

    #[test]
    fn center_eps_out_of_range_is_rejected() {
        let error = Config::from_toml("[detector]\ncenter_eps = 2.0\n").unwrap_err().to_string();
        assert!(error.contains("detector.center_eps"), "{error}");
    }

    #[test]
    fn network_parses_kebab_case() {
        let config = Config::from_toml("[detector]\nnetwork = \"fmnist-lenet\"\n").unwrap();
        assert_eq!(config.detector.network, super::NetworkKind::FmnistLenet);
        let error = Config::from_toml("[detector]\nnetwork = \"resnet\"\n").unwrap_err().to_string();
        assert!(error.contains("resnet"), "{error}");
    }

    #[test]
    fn non_positive_learning_rate_is_rejected() {
        let error = Config::from_toml("[detector]\nlr = 0.0\n").unwrap_err().to_string();
        assert!(error.contains("detector.lr"), "{error}");
    }
}
