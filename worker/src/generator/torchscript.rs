//! A user-supplied TorchScript generator: `forward(normal_batch, condition) -> anomaly_batch`.
//!
//! `normal_batch` is f32 N×C×H×W in [0, 1] on the worker's device. `condition` is f32 N×D
//! with D = [`condition_dim`]: a one-hot of the concept's operation over
//! [`kka_shared::prompt::OPERATIONS`], then the operation's parameters in catalogue order,
//! padded with zeros to [`kka_shared::prompt::max_params`], then the severity. The output must
//! have the input's shape; values are clamped to [0, 1].

use std::path::{Path, PathBuf};

use kka_shared::prompt::{max_params, operation_index, OPERATIONS};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::{Batch, Generator, GeneratorError};
use crate::knowledge::Concept;

/// Width of the condition vector.
pub fn condition_dim() -> usize {
    OPERATIONS.len() + max_params() + 1
}

/// Build the condition vector of one anomaly.
pub fn condition_vector(concept: &Concept, severity: f64) -> Vec<f32> {
    let mut vector = vec![0.0_f32; condition_dim()];
    let spec = concept.spec();
    if let Some(index) = operation_index(spec.name) {
        vector[index] = 1.0;
    }
    for (position, param) in spec.params.iter().enumerate() {
        vector[OPERATIONS.len() + position] = concept.param(param.name) as f32;
    }
    vector[condition_dim() - 1] = severity as f32;
    vector
}

/// A TorchScript module loaded on the worker's device.
pub struct TorchScriptGenerator {
    module: tch::CModule,
    path: PathBuf,
    /// First 12 hex digits of the module file's SHA-256, recorded as the generator version.
    digest: String,
}

impl TorchScriptGenerator {
    pub fn load(path: &Path, device: tch::Device) -> Result<TorchScriptGenerator, GeneratorError> {
        let bytes = std::fs::read(path).map_err(|error| GeneratorError::LoadModule {
            path: path.to_owned(),
            source: tch::TchError::FileFormat(error.to_string()),
        })?;
        let digest = hex::encode(Sha256::digest(&bytes))[..12].to_owned();
        let mut module = tch::CModule::load_on_device(path, device)
            .map_err(|source| GeneratorError::LoadModule { path: path.to_owned(), source })?;
        module.set_eval();
        tracing::info!(path = %path.display(), digest = %digest, ?device, "torchscript generator loaded");
        Ok(TorchScriptGenerator { module, path: path.to_owned(), digest })
    }

    fn output_error(&self, reason: String) -> GeneratorError {
        GeneratorError::ModuleOutput { path: self.path.clone(), reason }
    }
}

impl Generator for TorchScriptGenerator {
    fn name(&self) -> &'static str {
        "torchscript"
    }

    fn version(&self) -> String {
        self.digest.clone()
    }

    fn generate(&mut self, batch: &Batch<'_>) -> Result<Tensor, GeneratorError> {
        let tensor_error = |source| GeneratorError::Tensor { operation: "torchscript condition".into(), source };
        let flat: Vec<f32> = batch
            .plans
            .iter()
            .flat_map(|plan| condition_vector(&batch.concepts[plan.concept], plan.severity))
            .collect();
        let condition = Tensor::f_from_slice(&flat)
            .and_then(|tensor| tensor.f_view_([batch.plans.len() as i64, condition_dim() as i64]))
            .and_then(|tensor| tensor.f_to(batch.sources.device()))
            .map_err(tensor_error)?;

        let output = tch::no_grad(|| self.module.forward_ts(&[batch.sources, &condition]))
            .map_err(|error| self.output_error(format!("forward failed: {error}")))?;
        self.check_output(&output, batch.sources)
    }
}

impl TorchScriptGenerator {
    fn check_output(&self, output: &Tensor, sources: &Tensor) -> Result<Tensor, GeneratorError> {
        if output.size() != sources.size() {
            return Err(self.output_error(format!(
                "forward returned shape {:?}, expected the input's shape {:?} (N×C×H×W)",
                output.size(),
                sources.size()
            )));
        }
        if !matches!(output.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(self.output_error(format!("forward returned {:?} values, expected floats in [0, 1]", output.kind())));
        }
        let tensor_error = |source| GeneratorError::Tensor { operation: "torchscript output".into(), source };
        let output = output.f_to_dtype(Kind::Float, false, false).map_err(tensor_error)?;
        let finite = output.f_isfinite().and_then(|mask| mask.f_all()).map_err(tensor_error)?;
        if !bool::try_from(&finite).map_err(tensor_error)? {
            return Err(self.output_error("forward returned NaN or infinite values".into()));
        }
        output.f_clamp(0.0, 1.0).map_err(tensor_error)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn condition_vector_layout() {
        let params: BTreeMap<String, f64> = [("max_degrees".to_string(), 90.0)].into();
        let concept = Concept::new("c", "d", "rotate", &params, None, None).unwrap();
        let vector = condition_vector(&concept, 0.25);
        assert_eq!(vector.len(), condition_dim());
        let rotate = operation_index("rotate").unwrap();
        assert_eq!(vector[rotate], 1.0);
        assert_eq!(vector.iter().take(OPERATIONS.len()).sum::<f32>(), 1.0);
        assert_eq!(vector[OPERATIONS.len()], 90.0, "max_degrees is rotate's first parameter");
        assert_eq!(vector[condition_dim() - 1], 0.25);
    }
}
