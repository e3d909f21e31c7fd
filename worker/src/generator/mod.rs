//! Generators that turn anomaly concepts into images.
//!
//! - [`plan`]: per-anomaly seeds and the sampling of concept, severity and source image.
//! - [`procedural`]: knowledge-guided libtorch edits of normal images (the default).
//! - [`torchscript`]: a user TorchScript module, `forward(normal_batch, condition)`.
//! - [`http_image`]: an OpenAI-compatible image API.
//! - [`pipeline`]: planning, batching and pixel conversion shared by the task and the CLI.

pub mod http_image;
pub mod pipeline;
pub mod plan;
pub mod procedural;
pub mod torchscript;

use std::path::PathBuf;

use kka_shared::config::{GeneratorKind, GeneratorSettings};
use tch::Tensor;

use crate::knowledge::Concept;
pub use pipeline::{generate_anomalies, GeneratedAnomaly, GenerationJob};
pub use plan::{anomaly_seed, AnomalyPlan, Sampler};

/// Error raised when anomalies could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("invalid generator state: {0}")]
    InvalidState(String),
    #[error("tensor operation failed in {operation}: {source}")]
    Tensor { operation: String, source: tch::TchError },
    #[error("there are no normal training images to edit; check dataset.normal_classes and dataset.train_limit")]
    NoSources,
    #[error("failed to load TorchScript module {path}: {source}; check generator.torchscript_path")]
    LoadModule { path: PathBuf, source: tch::TchError },
    #[error("TorchScript module {path}: {reason}")]
    ModuleOutput { path: PathBuf, reason: String },
    #[error("image API at {url} failed after {attempts} attempts: {reason}")]
    ImageApiUnavailable { url: String, attempts: u32, reason: String },
    #[error("image API at {url} rejected the request with HTTP {status}: {excerpt}; check generator.image_api_model and the API key in ${key_env}")]
    ImageApiRejected { url: String, status: u16, excerpt: String, key_env: String },
    #[error("image API at {url} sent no usable image in {attempts} attempts: {reason}")]
    ImageApiMalformed { url: String, attempts: u32, reason: String },
    #[error("generator {generator} returned shape {found:?}, expected {expected:?} (N×C×H×W)")]
    OutputShape { generator: &'static str, found: Vec<i64>, expected: Vec<i64> },
    #[error("generator set-up failed: {0}")]
    Setup(String),
    #[error("generation was cancelled")]
    Cancelled,
}

impl GeneratorError {
    /// Return whether retrying the task later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GeneratorError::ImageApiUnavailable { .. } | GeneratorError::Cancelled)
    }
}

/// The inputs of one generator call.
pub struct Batch<'a> {
    pub plans: &'a [AnomalyPlan],
    pub concepts: &'a [Concept],
    /// f32 N×C×H×W in [0, 1] on the generator's device: the source image of each plan.
    pub sources: &'a Tensor,
    /// f32 N×C×H×W in [0, 1] on the generator's device: the donor image of each plan, or the
    /// sources again when no plan's concept uses a donor ([`Generator::uses_donor`]).
    pub donors: &'a Tensor,
}

impl Batch<'_> {
    pub fn concept_of(&self, row: usize) -> &Concept {
        &self.concepts[self.plans[row].concept]
    }
}

/// Turns planned anomalies into images.
pub trait Generator {
    /// Name recorded in each anomaly's provenance.
    fn name(&self) -> &'static str;

    /// Version recorded in each anomaly's provenance: changes when the output would.
    fn version(&self) -> String;

    /// Return whether the output edits the source image. A text-to-image generator does not,
    /// and its anomalies record no source index.
    fn uses_source(&self) -> bool {
        true
    }

    /// Return whether anomalies of `concept` paste from a second normal image, so the pipeline
    /// gathers donors only when some plan needs them.
    fn uses_donor(&self, _concept: &Concept) -> bool {
        false
    }

    /// Return the batching key of `concept`. The pipeline sorts plans by this key before it
    /// cuts batches, so plans with the same key share batches and sit next to each other.
    /// The default keeps the plans in index order.
    fn batch_key(&self, _concept: &Concept) -> usize {
        0
    }

    /// Generate one image per plan: f32 N×C×H×W in [0, 1], the shape of `batch.sources`.
    fn generate(&mut self, batch: &Batch<'_>) -> Result<Tensor, GeneratorError>;
}

/// Map a configured worker device to the libtorch device.
pub fn torch_device(device: kka_shared::config::Device) -> tch::Device {
    match device {
        kka_shared::config::Device::Cpu => tch::Device::Cpu,
        kka_shared::config::Device::Cuda(ordinal) => tch::Device::Cuda(ordinal),
    }
}

/// Build the generator that `generator.kind` names. The HTTP image generator runs its
/// requests on `runtime`.
pub fn build_generator(
    settings: &GeneratorSettings,
    device: tch::Device,
    runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Generator>, GeneratorError> {
    match settings.kind {
        GeneratorKind::Procedural => Ok(Box::new(procedural::ProceduralGenerator)),
        GeneratorKind::Torchscript => {
            let Some(path) = &settings.torchscript_path else {
                return Err(GeneratorError::Setup("generator.torchscript_path is unset; set the path of a TorchScript module".into()));
            };
            Ok(Box::new(torchscript::TorchScriptGenerator::load(path, device)?))
        }
        GeneratorKind::HttpImage => Ok(Box::new(http_image::HttpImageGenerator::new(settings, runtime.clone())?)),
    }
}
