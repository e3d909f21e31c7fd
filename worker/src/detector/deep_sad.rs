//! Deep SAD (Ruff et al., "Deep Semi-Supervised Anomaly Detection", ICLR 2020) and Deep SVDD,
//! its special case without labelled anomalies.
//!
//! The encoder φ maps images close to a centre c fixed before training: the loss of an
//! unlabelled or normal image is ‖φ(x)−c‖², and that of a labelled anomaly is
//! η·(‖φ(x)−c‖² + ε)⁻¹, which pushes it away. The anomaly score is ‖φ(x)−c‖².

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::net::{load_named, named_tensors, Architecture, Encoder};
use super::{checkpoint, Detector, DetectorError, DetectorInfo};
use crate::data::Normalizer;

/// Name of the centre in checkpoints.
pub const CENTER_TENSOR: &str = "center";

/// A trained Deep SAD or Deep SVDD detector.
#[derive(Debug)]
pub struct DeepSad {
    info: DetectorInfo,
    normalizer: Normalizer,
    store: VarStore,
    encoder: Encoder,
    /// The centre c, rep_dim, on the detector's device.
    center: Tensor,
}

impl DeepSad {
    pub(crate) fn new(info: DetectorInfo, store: VarStore, encoder: Encoder, center: Tensor) -> DeepSad {
        let normalizer = info.normalization.normalizer();
        DeepSad { info, normalizer, store, encoder, center }
    }

    /// Rebuild a detector from checkpoint tensors.
    pub fn from_tensors(info: DetectorInfo, tensors: &BTreeMap<String, Tensor>, device: Device) -> Result<DeepSad, DetectorError> {
        let architecture = parse_architecture(&info)?;
        let (mut store, encoder) = super::with_init_lock(|| {
            let store = VarStore::new(Device::Cpu);
            let encoder = Encoder::new(store.root() / "encoder", architecture);
            (store, encoder)
        });
        let copied = load_named(&store, "encoder.", tensors)?;
        check_no_extra(tensors, copied + 1)?;

        let center = tensors
            .get(CENTER_TENSOR)
            .ok_or_else(|| DetectorError::Mismatch { reason: format!("tensor {CENTER_TENSOR} is missing") })?;
        if center.size() != [architecture.rep_dim()] {
            return Err(DetectorError::Mismatch {
                reason: format!("the centre has shape {:?}, the network's representation has {}", center.size(), architecture.rep_dim()),
            });
        }
        store.set_device(device);
        let center = center.f_to_device(device)?;
        Ok(DeepSad::new(info, store, encoder, center))
    }

    pub fn center(&self) -> &Tensor {
        &self.center
    }

    pub fn store(&self) -> &VarStore {
        &self.store
    }
}

impl Detector for DeepSad {
    fn info(&self) -> &DetectorInfo {
        &self.info
    }

    fn score(&self, images: &Tensor) -> Result<Vec<f64>, DetectorError> {
        super::check_images(images, self.info.shape)?;
        let distances = super::batched_inference(images, &self.normalizer, self.store.device(), |batch| {
            squared_distance(&self.encoder.forward(batch, false)?, &self.center)
        })?;
        super::to_f64_vec(&distances)
    }

    fn embed(&self, images: &Tensor) -> Result<Tensor, DetectorError> {
        super::check_images(images, self.info.shape)?;
        super::batched_inference(images, &self.normalizer, self.store.device(), |batch| self.encoder.forward(batch, false))
    }

    fn to_bytes(&self) -> Result<Vec<u8>, DetectorError> {
        let mut tensors = named_tensors(&self.store)?;
        tensors.insert(CENTER_TENSOR.to_string(), self.center.f_to_device(Device::Cpu)?);
        checkpoint::encode(&tensors, super::checkpoint_metadata(&self.info))
    }
}

/// ‖z − c‖² per row of `embeddings` (N×rep_dim).
pub(crate) fn squared_distance(embeddings: &Tensor, center: &Tensor) -> Result<Tensor, tch::TchError> {
    embeddings.f_sub(center)?.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)
}

/// Mean Deep SAD loss of a batch. `is_anomaly` is 1 for labelled anomalies and 0 for the rest.
pub(crate) fn loss(embeddings: &Tensor, center: &Tensor, is_anomaly: &Tensor, eta: f64, eps: f64) -> Result<Tensor, tch::TchError> {
    let distance = squared_distance(embeddings, center)?;
    let anomaly_term = distance.f_add_scalar(eps)?.f_reciprocal()?.f_mul_scalar(eta)?;
    let normal_weight = is_anomaly.f_neg()?.f_add_scalar(1.0)?;
    let per_image = distance.f_mul(&normal_weight)?.f_add(&anomaly_term.f_mul(is_anomaly)?)?;
    per_image.f_mean(Kind::Float)
}

/// Compute the centre c: the mean representation of `inputs` (preprocessed normals on the encoder's
/// device) in evaluation mode, with coordinates of magnitude below `center_eps` pushed to
/// ±`center_eps` (zero goes to +`center_eps`).
pub(crate) fn compute_center(encoder: &Encoder, inputs: &Tensor, batch_size: i64, center_eps: f64) -> Result<Tensor, tch::TchError> {
    let _guard = tch::no_grad_guard();
    let count = inputs.size()[0];
    let mut sum: Option<Tensor> = None;
    let mut start = 0;
    while start < count {
        let length = batch_size.min(count - start);
        let batch_sum = encoder.forward(&inputs.f_narrow(0, start, length)?, false)?.f_sum_dim_intlist(0, false, Kind::Float)?;
        sum = Some(match sum {
            None => batch_sum,
            Some(total) => total.f_add(&batch_sum)?,
        });
        start += length;
    }

    let mean = match sum {
        Some(total) => total.f_div_scalar(count as f64)?,
        None => Tensor::f_zeros([encoder.architecture().rep_dim()], (Kind::Float, inputs.device()))?,
    };
    push_small_coordinates(&mean, center_eps)
}

/// Replace coordinates of magnitude below `center_eps` by ±`center_eps`, keeping the sign
/// (zero becomes +`center_eps`), because a zero coordinate is matched trivially by zero weights.
fn push_small_coordinates(mean: &Tensor, center_eps: f64) -> Result<Tensor, tch::TchError> {
    let small = mean.f_abs()?.f_lt(center_eps)?;
    let non_negative = mean.f_ge(0.0)?;
    let positive_eps = Tensor::f_full_like(mean, center_eps)?;
    let negative_eps = Tensor::f_full_like(mean, -center_eps)?;
    let pushed = positive_eps.f_where_self(&non_negative, &negative_eps)?;
    pushed.f_where_self(&small, mean)
}

pub(crate) fn parse_architecture(info: &DetectorInfo) -> Result<Architecture, DetectorError> {
    let architecture = Architecture::from_name(&info.architecture)
        .ok_or_else(|| DetectorError::Corrupt { reason: format!("unknown architecture {:?}", info.architecture) })?;
    if architecture.input_shape() != info.shape {
        return Err(DetectorError::Corrupt {
            reason: format!("architecture {} does not take images of shape {:?}", architecture.name(), info.shape),
        });
    }
    Ok(architecture)
}

/// Reject a checkpoint with more tensors than the network uses, such as one of another kind.
pub(crate) fn check_no_extra(tensors: &BTreeMap<String, Tensor>, used: usize) -> Result<(), DetectorError> {
    if tensors.len() > used {
        return Err(DetectorError::Mismatch {
            reason: format!("it holds {} tensors but the network uses {used}; was it saved by another detector kind?", tensors.len()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_mixes_normal_and_anomaly_terms() {
        let embeddings = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let center = Tensor::from_slice(&[0.0f32, 0.0]);
        let is_anomaly = Tensor::from_slice(&[0.0f32, 1.0]);
        // Normal: ‖(1, 0)‖² = 1. Anomaly: 2 · 1/(4 + 0) = 0.5. Mean 0.75.
        let value = loss(&embeddings, &center, &is_anomaly, 2.0, 0.0).unwrap().double_value(&[]);
        assert!((value - 0.75).abs() < 1e-6, "{value}");
    }

    #[test]
    fn center_pushes_small_coordinates_out() {
        let mean = Tensor::from_slice(&[0.05f32, -0.05, 0.5, 0.0, -0.3]);
        let center = Vec::<f32>::try_from(push_small_coordinates(&mean, 0.1).unwrap()).unwrap();
        assert_eq!(center, vec![0.1, -0.1, 0.5, 0.1, -0.3]);
    }
}
