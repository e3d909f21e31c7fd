//! Batched tensor helpers for the procedural operations.
//!
//! Coordinates are fractions of the image side: pixel column `j` of a W-wide image has
//! `x = (j + 0.5) / W`. Every helper works image by image along the batch dimension with
//! elementwise ops, pooling or sampling, so an image's result does not depend on its batch.

use tch::{Device, Kind, TchError, Tensor};

pub type TchResult<T> = Result<T, TchError>;

/// `grid_sampler` interpolation mode 0 is bilinear.
const BILINEAR: i64 = 0;
/// `grid_sampler` padding mode 1 repeats the border pixels.
const BORDER: i64 = 1;

/// Shape and pixel-centre coordinates of a batch.
pub struct Canvas {
    pub n: i64,
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    pub device: Device,
    /// Pixel-centre x in (0, 1), shape [1, 1, 1, W].
    pub xs: Tensor,
    /// Pixel-centre y in (0, 1), shape [1, 1, H, 1].
    pub ys: Tensor,
}

impl Canvas {
    pub fn of(images: &Tensor) -> TchResult<Canvas> {
        let (n, channels, height, width) = images.size4()?;
        let device = images.device();
        let xs = centres(width, device)?.f_view_([1, 1, 1, width])?;
        let ys = centres(height, device)?.f_view_([1, 1, height, 1])?;
        Ok(Canvas { n, channels, height, width, device, xs, ys })
    }

    /// Convert one value per image to an f32 tensor of shape [n, 1, 1, 1].
    pub fn column(&self, values: &[f64]) -> TchResult<Tensor> {
        per_image(values, self.device)?.f_view_([values.len() as i64, 1, 1, 1])
    }

    /// Convert `k` values per image to an f32 tensor of shape [n, k, 1, 1].
    pub fn columns(&self, values: &[f64], k: i64) -> TchResult<Tensor> {
        per_image(values, self.device)?.f_view_([values.len() as i64 / k, k, 1, 1])
    }

    /// Width of one pixel as a fraction of the image width.
    pub fn pixel(&self) -> f64 {
        1.0 / self.width.max(1) as f64
    }
}

fn centres(count: i64, device: Device) -> TchResult<Tensor> {
    let values: Vec<f32> = (0..count).map(|i| (i as f32 + 0.5) / count as f32).collect();
    Tensor::f_from_slice(&values)?.f_to(device)
}

fn per_image(values: &[f64], device: Device) -> TchResult<Tensor> {
    let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::f_from_slice(&values)?.f_to(device)
}

/// `x + (target - x) * weight`, broadcasting `target` and `weight`.
pub fn blend(x: &Tensor, target: &Tensor, weight: &Tensor) -> TchResult<Tensor> {
    x.f_add(&target.f_sub(x)?.f_mul(weight)?)
}

/// Build a mask that is 1 inside the axis-aligned rectangles and 0 outside, shape [n, 1, H, W].
pub fn rect_mask(canvas: &Canvas, cx: &Tensor, cy: &Tensor, half_w: &Tensor, half_h: &Tensor) -> TchResult<Tensor> {
    let inside_x = canvas.xs.f_sub(cx)?.f_abs()?.f_le_tensor(half_w)?;
    let inside_y = canvas.ys.f_sub(cy)?.f_abs()?.f_le_tensor(half_h)?;
    inside_x.f_logical_and(&inside_y)?.f_to_dtype(Kind::Float, false, false)
}

/// Build soft ellipse masks, shape [n, 1, H, W]: 1 inside two thirds of the radius, fading to
/// 0 at the radius.
pub fn soft_ellipse(canvas: &Canvas, cx: &Tensor, cy: &Tensor, rx: &Tensor, ry: &Tensor) -> TchResult<Tensor> {
    let dx = canvas.xs.f_sub(cx)?.f_div(rx)?.f_square()?;
    let dy = canvas.ys.f_sub(cy)?.f_div(ry)?.f_square()?;
    let distance = dx.f_add(&dy)?.f_sqrt()?;
    distance.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(3.0)?.f_clamp(0.0, 1.0)
}

/// Resample every image through its own 2×3 affine matrix, which maps output coordinates in
/// [-1, 1] to input coordinates. Pixels from outside the image repeat the border.
pub fn affine(images: &Tensor, thetas: &[[f64; 6]]) -> TchResult<Tensor> {
    let (n, channels, height, width) = images.size4()?;
    let flat: Vec<f32> = thetas.iter().flat_map(|theta| theta.iter().map(|&v| v as f32)).collect();
    let theta = Tensor::f_from_slice(&flat)?.f_to(images.device())?.f_view_([n, 2, 3])?;
    let grid = Tensor::f_affine_grid_generator(&theta, [n, channels, height, width], false)?;
    sample(images, &grid)
}

/// Sample bilinearly at `grid` ([n, H, W, 2], x then y, in [-1, 1]) with border padding.
pub fn sample(images: &Tensor, grid: &Tensor) -> TchResult<Tensor> {
    images.f_grid_sampler(grid, BILINEAR, BORDER, false)
}

/// Morphological dilation (`dilate = true`) or erosion with a 3×3 square, `steps` times.
pub fn morphology_chain(images: &Tensor, steps: usize, dilate: bool) -> TchResult<Vec<Tensor>> {
    let mut chain = vec![images.shallow_clone()];
    for _ in 0..steps {
        let Some(last) = chain.last() else { break };
        let next = if dilate { max_pool3(last)? } else { max_pool3(&last.f_neg()?)?.f_neg()? };
        chain.push(next);
    }
    Ok(chain)
}

/// 3×3 maximum filter as two separable passes of elementwise maxima over shifted slices, which
/// is several times faster on the CPU than `max_pool2d` with stride 1. Replicated borders give
/// the same result as ignoring pixels outside the image.
fn max_pool3(images: &Tensor) -> TchResult<Tensor> {
    let (_, _, height, width) = images.size4()?;
    let padded = images.f_replication_pad2d([1, 1, 0, 0])?;
    let rows = padded.f_narrow(3, 0, width)?.f_maximum(&padded.f_narrow(3, 1, width)?)?.f_maximum(&padded.f_narrow(3, 2, width)?)?;
    let padded = rows.f_replication_pad2d([0, 0, 1, 1])?;
    padded.f_narrow(2, 0, height)?.f_maximum(&padded.f_narrow(2, 1, height)?)?.f_maximum(&padded.f_narrow(2, 2, height)?)
}

/// Mix the levels of `chain` at a fractional step per image: image `i` gets
/// `chain[k] * (1 - f) + chain[k + 1] * f` for `steps[i] = k + f`.
pub fn fractional_step(canvas: &Canvas, chain: &[Tensor], steps: &[f64]) -> TchResult<Tensor> {
    let last = chain.len().saturating_sub(1);
    let mut result: Option<Tensor> = None;
    for (level, tensor) in chain.iter().enumerate() {
        let weights: Vec<f64> = steps.iter().map(|&step| step_weight(step.min(last as f64), level)).collect();
        let term = tensor.f_mul(&canvas.column(&weights)?)?;
        result = Some(match result {
            Some(sum) => sum.f_add(&term)?,
            None => term,
        });
    }
    match result {
        Some(sum) => Ok(sum),
        None => Err(TchError::Kind("fractional_step needs a non-empty chain".into())),
    }
}

/// Weight of chain level `level` for a fractional step: a tent function centred on the level.
fn step_weight(step: f64, level: usize) -> f64 {
    (1.0 - (step - level as f64).abs()).max(0.0)
}

/// Gaussian blur with one standard deviation per image, in pixels, as two 1-D passes over
/// replicated borders. Each tap is an elementwise multiply-add, which keeps results
/// independent of the batch.
pub fn gaussian_blur(canvas: &Canvas, images: &Tensor, sigmas: &[f64]) -> TchResult<Tensor> {
    let max_sigma = sigmas.iter().copied().fold(0.0_f64, f64::max);
    let radius = ((3.0 * max_sigma).ceil() as i64).clamp(1, 12);
    let taps: Vec<Vec<f64>> = sigmas.iter().map(|&sigma| gaussian_taps(sigma, radius)).collect();

    let horizontal = blur_pass(canvas, images, &taps, radius, 3)?;
    blur_pass(canvas, &horizontal, &taps, radius, 2)
}

fn gaussian_taps(sigma: f64, radius: i64) -> Vec<f64> {
    let sigma = sigma.max(1e-3);
    let raw: Vec<f64> = (-radius..=radius).map(|k| (-(k * k) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|weight| weight / total).collect()
}

fn blur_pass(canvas: &Canvas, images: &Tensor, taps: &[Vec<f64>], radius: i64, dim: i64) -> TchResult<Tensor> {
    let padding = if dim == 3 { [radius, radius, 0, 0] } else { [0, 0, radius, radius] };
    let padded = images.f_replication_pad2d(padding)?;
    let length = if dim == 3 { canvas.width } else { canvas.height };

    let mut sum: Option<Tensor> = None;
    for offset in 0..(2 * radius + 1) {
        let weights: Vec<f64> = taps.iter().map(|tap| tap[offset as usize]).collect();
        let term = padded.f_narrow(dim, offset, length)?.f_mul(&canvas.column(&weights)?)?;
        sum = Some(match sum {
            Some(total) => total.f_add(&term)?,
            None => term,
        });
    }
    sum.ok_or_else(|| TchError::Kind("blur_pass needs at least one tap".into()))
}

/// Estimate the background as the per-image, per-channel median of the border pixels, shape
/// [n, C, 1, 1]. An object touching less than half of the border does not move it.
pub fn border_median(canvas: &Canvas, images: &Tensor) -> TchResult<Tensor> {
    let (h, w) = (canvas.height, canvas.width);
    let (n, c) = (canvas.n, canvas.channels);
    let sides = [
        images.f_narrow(2, 0, 1)?.f_reshape([n, c, w])?,
        images.f_narrow(2, h - 1, 1)?.f_reshape([n, c, w])?,
        images.f_narrow(3, 0, 1)?.f_reshape([n, c, h])?,
        images.f_narrow(3, w - 1, 1)?.f_reshape([n, c, h])?,
    ];
    let (median, _) = Tensor::f_cat(&sides, 2)?.f_median_dim(2, true)?;
    median.f_unsqueeze(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_taps_sum_to_one() {
        let taps = gaussian_taps(1.5, 5);
        assert_eq!(taps.len(), 11);
        assert!((taps.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(taps[5] > taps[4]);
    }

    #[test]
    fn step_weights_interpolate() {
        assert_eq!(step_weight(1.25, 1), 0.75);
        assert_eq!(step_weight(1.25, 2), 0.25);
        assert_eq!(step_weight(1.25, 0), 0.0);
    }

    #[test]
    fn rect_mask_covers_expected_pixels() {
        let images = Tensor::zeros([1, 1, 10, 10], (Kind::Float, Device::Cpu));
        let canvas = Canvas::of(&images).unwrap();
        let c = canvas.column(&[0.5]).unwrap();
        let half = canvas.column(&[0.2]).unwrap();
        let mask = rect_mask(&canvas, &c, &c, &half, &half).unwrap();
        // Centres 0.35, 0.45, 0.55, 0.65 lie within 0.2 of 0.5: 4 × 4 pixels.
        assert_eq!(mask.sum(Kind::Float).double_value(&[]), 16.0);
    }

    #[test]
    fn max_pool3_matches_libtorch() {
        let images = Tensor::rand([3, 2, 9, 7], (Kind::Float, Device::Cpu));
        let expected = images.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
        let difference = (max_pool3(&images).unwrap() - expected).abs().max().double_value(&[]);
        assert_eq!(difference, 0.0);
    }

    #[test]
    fn border_median_ignores_an_object_at_the_edge() {
        let images = Tensor::zeros([1, 2, 6, 6], (Kind::Float, Device::Cpu));
        let _ = images.narrow(3, 2, 2).fill_(0.9);
        let canvas = Canvas::of(&images).unwrap();
        let median = border_median(&canvas, &images).unwrap();
        assert_eq!(median.size(), vec![1, 2, 1, 1]);
        assert_eq!(median.double_value(&[0, 1, 0, 0]), 0.0);
    }
}
