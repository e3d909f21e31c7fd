//! The procedural generator: knowledge-guided edits of normal images with libtorch ops.
//!
//! A batch is split by operation and each operation runs once on its sub-batch, so cheap edits
//! cost a few tensor ops per batch instead of per image. Every random choice comes from the
//! anomaly's own ChaCha stream ([`super::plan::edit_rng`]), so an anomaly's pixels depend only
//! on its seed, concept, severity and source images, not on the rest of its batch.
//!
//! NOTE: the tests run on the CPU only. On CUDA the ops are the same, but libtorch's kernels
//! may round differently, so pixels can differ from a CPU run of the same seed.

mod global;
mod local;
mod noise;
pub mod tensors;

use kka_shared::prompt::{operation_index, OPERATIONS};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::plan::edit_rng;
use super::{Batch, Generator, GeneratorError};
use crate::knowledge::Concept;
use tensors::{Canvas, TchResult};

/// Version recorded with every procedural anomaly. Bump it when an operation's output changes.
pub const PROCEDURAL_VERSION: &str = "1";

/// One anomaly inside an operation's sub-batch.
pub struct OpItem<'a> {
    pub concept: &'a Concept,
    pub severity: f64,
    pub rng: ChaCha8Rng,
}

impl OpItem<'_> {
    pub fn param(&self, name: &str) -> f64 {
        self.concept.param(name)
    }

    pub fn rng_uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.rng.random::<f64>()
    }

    pub fn random_sign(&mut self) -> f64 {
        if self.rng.random::<bool>() {
            1.0
        } else {
            -1.0
        }
    }

    /// Return the sign of a direction parameter, or a random sign when it is 0.
    pub fn sign_param(&mut self, name: &str) -> f64 {
        let value = self.param(name);
        if value > 0.0 {
            1.0
        } else if value < 0.0 {
            -1.0
        } else {
            self.random_sign()
        }
    }

    /// Return the centre coordinate in parameter `name`, or a random one at which a region of
    /// `extent` (fraction of the side) fits when the parameter is negative.
    pub fn position(&mut self, name: &str, extent: f64) -> f64 {
        let random = self.uniform_fit(extent);
        let given = self.param(name);
        if given >= 0.0 {
            given
        } else {
            random
        }
    }

    /// Draw a random centre at which a region of `extent` fits inside [0, 1].
    pub fn uniform_fit(&mut self, extent: f64) -> f64 {
        let half = (extent / 2.0).min(0.5);
        self.rng_uniform(half, 1.0 - half)
    }

    /// Return the `count` parameter, rounded and clamped to 1..=4.
    pub fn count(&self) -> usize {
        (self.param("count").round().max(1.0) as usize).min(4)
    }
}

/// Edits normal images with the operations of [`kka_shared::prompt::OPERATIONS`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ProceduralGenerator;

impl Generator for ProceduralGenerator {
    fn name(&self) -> &'static str {
        "procedural"
    }

    fn version(&self) -> String {
        PROCEDURAL_VERSION.to_owned()
    }

    fn uses_donor(&self, concept: &Concept) -> bool {
        uses_donor(&concept.operation)
    }

    fn batch_key(&self, concept: &Concept) -> usize {
        operation_index(&concept.operation).unwrap_or(usize::MAX)
    }

    fn generate(&mut self, batch: &Batch<'_>) -> Result<Tensor, GeneratorError> {
        let tensor_error = |operation: &str| {
            let operation = operation.to_owned();
            move |source| GeneratorError::Tensor { operation, source }
        };
        let groups = operation_groups(batch);

        // The pipeline sorts plans by operation, so each group is usually one run of rows and
        // the edited runs can be joined in order without a scatter.
        if groups.iter().all(|(_, rows)| is_run(rows)) {
            let mut parts = Vec::with_capacity(groups.len());
            let mut ordered: Vec<(i64, &str, &[i64])> = groups.iter().map(|(name, rows)| (rows[0], *name, &rows[..])).collect();
            ordered.sort_by_key(|(first, _, _)| *first);
            for (_, name, rows) in ordered {
                parts.push(apply_group(batch, name, rows).map_err(tensor_error(name))?);
            }
            let joined = Tensor::f_cat(&parts, 0).map_err(tensor_error("join groups"))?;
            return joined.f_clamp(0.0, 1.0).map_err(tensor_error("clamp"));
        }

        let mut result = batch.sources.f_zeros_like().map_err(tensor_error("allocate output"))?;
        for (name, rows) in &groups {
            let edited = apply_group(batch, name, rows).map_err(tensor_error(name))?;
            let index = Tensor::f_from_slice(rows).and_then(|t| t.f_to(batch.sources.device())).map_err(tensor_error(name))?;
            let _ = result.f_index_copy_(0, &index, &edited).map_err(tensor_error(name))?;
        }
        result.f_clamp(0.0, 1.0).map_err(tensor_error("clamp"))
    }
}

/// Rows of the batch per operation, in catalogue order.
fn operation_groups<'a>(batch: &Batch<'a>) -> Vec<(&'static str, Vec<i64>)> {
    OPERATIONS
        .iter()
        .map(|spec| {
            let rows: Vec<i64> =
                (0..batch.plans.len() as i64).filter(|&row| batch.concept_of(row as usize).operation == spec.name).collect();
            (spec.name, rows)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect()
}

/// Return whether rows are consecutive, such as 4, 5, 6.
fn is_run(rows: &[i64]) -> bool {
    rows.windows(2).all(|pair| pair[1] == pair[0] + 1)
}

/// Return whether an operation pastes from a donor image.
fn uses_donor(operation: &str) -> bool {
    matches!(operation, "cutpaste" | "part_swap")
}

/// Run one operation on the rows of the batch that use it. A run of rows is sliced without a
/// copy.
fn apply_group(batch: &Batch<'_>, operation: &str, rows: &[i64]) -> TchResult<Tensor> {
    let select = |tensor: &Tensor| -> TchResult<Tensor> {
        if is_run(rows) {
            tensor.f_narrow(0, rows[0], rows.len() as i64)
        } else {
            let index = Tensor::f_from_slice(rows)?.f_to(tensor.device())?;
            tensor.f_index_select(0, &index)
        }
    };
    let images = select(batch.sources)?;
    let donors = if uses_donor(operation) { select(batch.donors)? } else { images.shallow_clone() };
    let mut items: Vec<OpItem<'_>> = rows
        .iter()
        .map(|&row| {
            let plan = &batch.plans[row as usize];
            OpItem { concept: batch.concept_of(row as usize), severity: plan.severity, rng: edit_rng(plan.seed) }
        })
        .collect();

    let canvas = Canvas::of(&images)?;
    let items = &mut items[..];
    match operation {
        "erase" => local::erase(&canvas, &images, items),
        "cutpaste" => local::cutpaste(&canvas, &images, &donors, items),
        "perlin" => local::perlin(&canvas, &images, items),
        "warp" => local::warp(&canvas, &images, items),
        "intensity" => local::intensity(&canvas, &images, items),
        "blur" => local::blur(&canvas, &images, items),
        "noise" => local::noise(&canvas, &images, items),
        "strokes" => local::strokes(&canvas, &images, items),
        "blobs" => local::blobs(&canvas, &images, items),
        "rotate" => global::rotate(&images, items),
        "flip" => global::flip(&canvas, &images, items),
        "squeeze" => global::squeeze(&images, items),
        "thickness" => global::thickness(&canvas, &images, items),
        "stripes" => global::stripes(&canvas, &images, items),
        "part_swap" => global::part_swap(&canvas, &images, &donors, items),
        "fill_gaps" => global::fill_gaps(&canvas, &images, items),
        other => Err(tch::TchError::Kind(format!("operation {other} is in the catalogue but has no implementation"))),
    }
}
