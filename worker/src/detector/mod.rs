//! Anomaly detectors on libtorch: Deep SAD, Deep SVDD (Deep SAD without labelled anomalies)
//! and an outlier-exposure classifier, behind the [`Detector`] trait.
//!
//! - [`net`]: the LeNet-style encoders, decoders and the classifier head.
//! - [`training`]: a resumable training run (autoencoder pretraining, then the detector), which
//!   can save its progress between epochs.
//! - [`deep_sad`], [`outlier_exposure`]: the trained detectors and their losses.
//! - [`checkpoint`]: safetensors bytes of weights plus metadata.
//! - [`optim`]: Adam with saveable moments.
//! - [`knn`]: mean distances to the k nearest training embeddings.

pub mod checkpoint;
pub mod deep_sad;
pub mod knn;
pub mod net;
pub mod optim;
pub mod outlier_exposure;
pub mod training;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use kka_shared::config::{DetectorKind, DetectorSettings, Preprocessing};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::Normalizer;
pub use deep_sad::DeepSad;
pub use net::Architecture;
pub use outlier_exposure::OutlierExposure;
pub use training::{EpochReport, Phase, Training};

/// Images per forward pass when scoring or embedding without gradients.
pub const INFERENCE_BATCH: i64 = 512;

/// Format tag of detector checkpoints.
pub const CHECKPOINT_FORMAT: &str = "kka-detector-v1";

/// Errors of building, training, scoring or loading a detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("images of shape {shape:?} (C, H, W) do not fit network {network}; use 1×28×28 images (mnist-lenet, fmnist-lenet) or 3×32×32 images (cifar10-lenet), or set detector.network")]
    UnsupportedShape { shape: [i64; 3], network: &'static str },
    #[error("{kind} needs labelled anomalies, but none were given; train deep-svdd instead or pass anomalies")]
    NoAnomalies { kind: DetectorKind },
    #[error("images have shape {found:?}, but the detector takes batches of N×{expected:?} (C, H, W); use images of the training dataset's shape")]
    InputShape { found: Vec<i64>, expected: [i64; 3] },
    #[error("the checkpoint does not match the network: {reason}")]
    Mismatch { reason: String },
    #[error("the checkpoint or progress bytes are invalid: {reason}")]
    Corrupt { reason: String },
    #[error("failed to encode a checkpoint: {0}")]
    Encode(String),
    #[error("device {device} is not available: {reason}; use worker.device = \"cpu\" or a CUDA ordinal that exists")]
    DeviceUnavailable { device: String, reason: String },
    #[error("training diverged: the {phase} loss of epoch {epoch} is {loss}; lower detector.lr or check the input data")]
    Diverged { phase: &'static str, epoch: u32, loss: f64 },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Detector metadata stored beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorInfo {
    pub kind: DetectorKind,
    /// Name of the [`Architecture`].
    pub architecture: String,
    pub settings: DetectorSettings,
    /// Input channels, height and width.
    pub shape: [i64; 3],
    pub dataset_fingerprint: String,
    pub normalization: NormalizationInfo,
}

/// The fitted preprocessing, in a serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizationInfo {
    pub preprocessing: Preprocessing,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl NormalizationInfo {
    pub fn of(normalizer: &Normalizer) -> Self {
        Self { preprocessing: normalizer.preprocessing(), mean: normalizer.mean().to_vec(), std: normalizer.std().to_vec() }
    }

    pub fn normalizer(&self) -> Normalizer {
        Normalizer::from_parts(self.preprocessing, self.mean.clone(), self.std.clone())
    }
}

/// A trained anomaly detector. Inputs are image batches with values in [0, 1] (N×C×H×W, any
/// device); the detector applies its own preprocessing.
pub trait Detector: Send {
    fn info(&self) -> &DetectorInfo;

    /// Anomaly scores, one per image; higher is more anomalous.
    fn score(&self, images: &Tensor) -> Result<Vec<f64>, DetectorError>;

    /// Encoder representations φ(x), N×rep_dim, on the CPU.
    fn embed(&self, images: &Tensor) -> Result<Tensor, DetectorError>;

    /// Serialize weights and metadata as safetensors bytes.
    fn to_bytes(&self) -> Result<Vec<u8>, DetectorError>;
}

/// What a caller expects of a checkpoint before it is loaded.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub kind: Option<DetectorKind>,
    /// Input channels, height and width.
    pub shape: Option<[i64; 3]>,
    pub dataset_fingerprint: Option<String>,
}

/// Load a detector from [`Detector::to_bytes`] output onto `device`, checking `expected`.
pub fn from_bytes(bytes: &[u8], expected: &Expectation, device: Device) -> Result<Box<dyn Detector>, DetectorError> {
    let (tensors, metadata) = checkpoint::decode(bytes)?;
    let format = checkpoint::required(&metadata, checkpoint::FORMAT_KEY)?;
    if format != CHECKPOINT_FORMAT {
        return Err(DetectorError::Corrupt { reason: format!("format is {format:?}, expected {CHECKPOINT_FORMAT:?}") });
    }
    let info: DetectorInfo = checkpoint::required_json(&metadata, "info")?;
    check_expectation(&info, expected)?;

    match info.kind {
        DetectorKind::DeepSvdd | DetectorKind::DeepSad => Ok(Box::new(DeepSad::from_tensors(info, &tensors, device)?)),
        DetectorKind::OutlierExposure => Ok(Box::new(OutlierExposure::from_tensors(info, &tensors, device)?)),
    }
}

fn check_expectation(info: &DetectorInfo, expected: &Expectation) -> Result<(), DetectorError> {
    let mismatch = |reason: String| Err(DetectorError::Mismatch { reason });
    if let Some(kind) = expected.kind {
        if kind != info.kind {
            return mismatch(format!("it holds a {} detector, expected {kind}", info.kind));
        }
    }
    if let Some(shape) = expected.shape {
        if shape != info.shape {
            return mismatch(format!("it takes images of shape {:?}, expected {shape:?}", info.shape));
        }
    }
    if let Some(fingerprint) = &expected.dataset_fingerprint {
        if *fingerprint != info.dataset_fingerprint {
            return mismatch(format!(
                "it was trained on dataset fingerprint {}, expected {fingerprint}",
                info.dataset_fingerprint
            ));
        }
    }
    Ok(())
}

/// Metadata of a checkpoint: the format tag and the info as JSON.
fn checkpoint_metadata(info: &DetectorInfo) -> HashMap<String, String> {
    // Serialising plain structs of numbers, strings and enums cannot fail.
    let info_json = serde_json::to_string(info).unwrap_or_default();
    HashMap::from([(checkpoint::FORMAT_KEY.to_string(), CHECKPOINT_FORMAT.to_string()), ("info".to_string(), info_json)])
}

/// Map a configured device to a libtorch device, checking that it exists.
pub fn torch_device(device: kka_shared::config::Device) -> Result<Device, DetectorError> {
    match device {
        kka_shared::config::Device::Cpu => Ok(Device::Cpu),
        kka_shared::config::Device::Cuda(ordinal) => {
            let unavailable = |reason: String| DetectorError::DeviceUnavailable { device: device.to_string(), reason };
            if !tch::Cuda::is_available() {
                return Err(unavailable("this libtorch build or machine has no CUDA".into()));
            }
            let count = tch::Cuda::device_count();
            if ordinal as i64 >= count {
                return Err(unavailable(format!("only {count} CUDA devices are present")));
            }
            Ok(Device::Cuda(ordinal))
        }
    }
}

/// Set libtorch's intra-op CPU threads; 0 keeps libtorch's default. The setting is global to
/// the process.
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Serialises weight initialisation, which draws from libtorch's process-global generator, so
/// that concurrent training runs each get the weights of their own seed.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Run `init` with libtorch's global generator seeded with `seed` and no other initialisation
/// running at the same time.
pub(crate) fn with_seed<T>(seed: u64, init: impl FnOnce() -> T) -> T {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed as i64);
    init()
}

/// Run `init`, which draws random weights that are overwritten afterwards, without disturbing a
/// seeded initialisation in another thread.
pub(crate) fn with_init_lock<T>(init: impl FnOnce() -> T) -> T {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    init()
}

/// Apply `forward` to `images` in batches of [`INFERENCE_BATCH`] without gradients, after
/// preprocessing, and concatenate the outputs on the CPU.
pub(crate) fn batched_inference(
    images: &Tensor,
    normalizer: &Normalizer,
    device: Device,
    forward: impl Fn(&Tensor) -> Result<Tensor, tch::TchError>,
) -> Result<Tensor, DetectorError> {
    let _guard = tch::no_grad_guard();
    let count = images.size().first().copied().unwrap_or(0);
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < count {
        let length = INFERENCE_BATCH.min(count - start);
        let batch = images.f_narrow(0, start, length)?.f_to_device(device)?;
        let output = forward(&normalizer.apply(&batch)?)?;
        outputs.push(output.f_to_device(Device::Cpu)?);
        start += length;
    }
    if outputs.is_empty() {
        return Ok(Tensor::f_empty([0], (tch::Kind::Float, Device::Cpu))?);
    }
    Ok(Tensor::f_cat(&outputs, 0)?)
}

/// Check that `images` is an N×C×H×W batch of `shape`.
pub(crate) fn check_images(images: &Tensor, shape: [i64; 3]) -> Result<(), DetectorError> {
    let size = images.size();
    if size.len() != 4 || size[1..] != shape {
        return Err(DetectorError::InputShape { found: size, expected: shape });
    }
    Ok(())
}

/// Convert a 1-D CPU tensor to f64 values.
pub(crate) fn to_f64_vec(tensor: &Tensor) -> Result<Vec<f64>, DetectorError> {
    Ok(Vec::<f64>::try_from(tensor.f_to_kind(tch::Kind::Double)?.f_flatten(0, -1)?)?)
}
