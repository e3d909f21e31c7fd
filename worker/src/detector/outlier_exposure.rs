//! Outlier exposure as a plain binary classifier: the Deep SAD encoder plus a dense head with a
//! bias, trained with binary cross-entropy on normal images (label 0) against labelled
//! anomalies (label 1). The anomaly score is the sigmoid probability of the anomaly class.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::{Device, Reduction, Tensor};

use super::deep_sad::{check_no_extra, parse_architecture};
use super::net::{load_named, named_tensors, Encoder, Head};
use super::{checkpoint, Detector, DetectorError, DetectorInfo};
use crate::data::Normalizer;

/// A trained outlier-exposure classifier.
#[derive(Debug)]
pub struct OutlierExposure {
    info: DetectorInfo,
    normalizer: Normalizer,
    store: VarStore,
    encoder: Encoder,
    head: Head,
}

impl OutlierExposure {
    pub(crate) fn new(info: DetectorInfo, store: VarStore, encoder: Encoder, head: Head) -> OutlierExposure {
        let normalizer = info.normalization.normalizer();
        OutlierExposure { info, normalizer, store, encoder, head }
    }

    /// Rebuild a classifier from checkpoint tensors.
    pub fn from_tensors(
        info: DetectorInfo,
        tensors: &BTreeMap<String, Tensor>,
        device: Device,
    ) -> Result<OutlierExposure, DetectorError> {
        let architecture = parse_architecture(&info)?;
        let (mut store, encoder, head) = super::with_init_lock(|| {
            let store = VarStore::new(Device::Cpu);
            let encoder = Encoder::new(store.root() / "encoder", architecture);
            let head = Head::new(store.root() / "head", architecture.rep_dim());
            (store, encoder, head)
        });
        let copied = load_named(&store, "", tensors)?;
        check_no_extra(tensors, copied)?;
        store.set_device(device);
        Ok(OutlierExposure::new(info, store, encoder, head))
    }

    pub fn store(&self) -> &VarStore {
        &self.store
    }
}

impl Detector for OutlierExposure {
    fn info(&self) -> &DetectorInfo {
        &self.info
    }

    fn score(&self, images: &Tensor) -> Result<Vec<f64>, DetectorError> {
        super::check_images(images, self.info.shape)?;
        let probabilities = super::batched_inference(images, &self.normalizer, self.store.device(), |batch| {
            self.head.forward(&self.encoder.forward(batch, false)?)?.f_sigmoid()
        })?;
        super::to_f64_vec(&probabilities)
    }

    fn embed(&self, images: &Tensor) -> Result<Tensor, DetectorError> {
        super::check_images(images, self.info.shape)?;
        super::batched_inference(images, &self.normalizer, self.store.device(), |batch| self.encoder.forward(batch, false))
    }

    fn to_bytes(&self) -> Result<Vec<u8>, DetectorError> {
        checkpoint::encode(&named_tensors(&self.store)?, super::checkpoint_metadata(&self.info))
    }
}

/// Mean binary cross-entropy of the head's logits against `is_anomaly` (1 anomaly, 0 normal).
pub(crate) fn loss(logits: &Tensor, is_anomaly: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_binary_cross_entropy_with_logits(is_anomaly, None::<&Tensor>, None::<&Tensor>, Reduction::Mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_binary_cross_entropy() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0]);
        // −ln σ(0) = ln 2 and −ln(1 − σ(2)) = ln(1 + e²).
        let expected = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        let value = loss(&logits, &targets).unwrap().double_value(&[]);
        assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
    }
}
