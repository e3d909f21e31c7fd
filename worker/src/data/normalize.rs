//! Preprocessing of [0, 1] image batches before they reach a network.

use kka_shared::config::Preprocessing;
use tch::Tensor;

/// Smallest standard deviation a channel is divided by, so that a constant channel maps to 0
/// instead of NaN.
const MIN_STD: f64 = 1e-6;

/// The configured preprocessing with its fitted per-channel statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    preprocessing: Preprocessing,
    /// Per-channel mean of the training normals, in [0, 1] units; empty for `scale`.
    mean: Vec<f64>,
    /// Per-channel standard deviation of the training normals, in [0, 1] units; empty for `scale`.
    std: Vec<f64>,
}

impl Normalizer {
    /// Create the identity on [0, 1] batches.
    pub fn scale() -> Self {
        Self { preprocessing: Preprocessing::Scale, mean: Vec::new(), std: Vec::new() }
    }

    /// Fit `preprocessing` on u8 images (N×C×H×W with `shape` = [C, H, W]), usually the
    /// training normals.
    pub fn fit(preprocessing: Preprocessing, pixels: &[u8], shape: [usize; 3]) -> Self {
        match preprocessing {
            Preprocessing::Scale => Self::scale(),
            Preprocessing::Standardize => {
                let (mean, std) = channel_statistics(pixels, shape);
                Self { preprocessing, mean, std }
            }
        }
    }

    /// Rebuild a normalizer from saved statistics, as written by a checkpoint.
    pub fn from_parts(preprocessing: Preprocessing, mean: Vec<f64>, std: Vec<f64>) -> Self {
        Self { preprocessing, mean, std }
    }

    pub fn preprocessing(&self) -> Preprocessing {
        self.preprocessing
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn std(&self) -> &[f64] {
        &self.std
    }

    /// Apply the preprocessing to a batch of [0, 1] images (N×C×H×W, any device).
    pub fn apply(&self, batch: &Tensor) -> Result<Tensor, tch::TchError> {
        if self.preprocessing == Preprocessing::Scale {
            return Ok(batch.shallow_clone());
        }
        let mean = self.channel_tensor(&self.mean, batch)?;
        let std = self.channel_tensor(&self.std, batch)?;
        batch.f_sub(&mean)?.f_div(&std)
    }

    /// Per-channel values as a 1×C×1×1 tensor of the batch's kind and device.
    fn channel_tensor(&self, values: &[f64], batch: &Tensor) -> Result<Tensor, tch::TchError> {
        let channels = values.len() as i64;
        Tensor::f_from_slice(values)?
            .f_to_dtype(batch.kind(), false, false)?
            .to_device(batch.device())
            .f_view([1, channels, 1, 1])
    }
}

/// Per-channel mean and population standard deviation of u8 images (N×C×H×W), in [0, 1] units.
fn channel_statistics(pixels: &[u8], shape: [usize; 3]) -> (Vec<f64>, Vec<f64>) {
    let [channels, height, width] = shape;
    let plane = (height * width).max(1);
    let mut sums = vec![0f64; channels];
    let mut squares = vec![0f64; channels];
    for (offset, &value) in pixels.iter().enumerate() {
        let channel = (offset / plane) % channels;
        let value = f64::from(value) / 255.0;
        sums[channel] += value;
        squares[channel] += value * value;
    }

    let count = (pixels.len() / channels.max(1)).max(1) as f64;
    let mut mean = Vec::with_capacity(channels);
    let mut std = Vec::with_capacity(channels);
    for channel in 0..channels {
        let m = sums[channel] / count;
        let variance = (squares[channel] / count - m * m).max(0.0);
        mean.push(m);
        std.push(variance.sqrt().max(MIN_STD));
    }
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardize_uses_per_channel_statistics() {
        // Two 1×2 images with two channels: channel 0 is 0 and 255, channel 1 is constant 51.
        let pixels = [0, 255, 51, 51, 255, 0, 51, 51];
        let normalizer = Normalizer::fit(Preprocessing::Standardize, &pixels, [2, 1, 2]);
        assert_eq!(normalizer.mean(), &[0.5, 0.2]);
        assert!((normalizer.std()[0] - 0.5).abs() < 1e-12);
        assert_eq!(normalizer.std()[1], MIN_STD);

        let batch = Tensor::from_slice(&[0.0f32, 1.0, 0.2, 0.2]).view([1, 2, 1, 2]);
        let output = Vec::<f32>::try_from(normalizer.apply(&batch).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(output, vec![-1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn scale_is_identity() {
        let normalizer = Normalizer::fit(Preprocessing::Scale, &[1, 2, 3], [1, 1, 3]);
        let batch = Tensor::from_slice(&[0.25f32, 0.5]).view([1, 1, 1, 2]);
        let output = Vec::<f32>::try_from(normalizer.apply(&batch).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(output, vec![0.25, 0.5]);
    }
}
