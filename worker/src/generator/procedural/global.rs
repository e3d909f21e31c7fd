//! Global edits: each changes the whole object's pose, shape, thickness or appearance.

use tch::{Kind, Tensor};

use super::tensors::{affine, blend, border_median, fractional_step, morphology_chain, Canvas, TchResult};
use super::OpItem;

/// Rotate about the centre by `max_degrees` times severity, in the item's direction.
// NOTE: angles are exact for square images; non-square images also get a slight shear.
pub fn rotate(images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let thetas: Vec<[f64; 6]> = items
        .iter_mut()
        .map(|item| {
            let sign = item.sign_param("direction");
            let angle = (sign * item.param("max_degrees") * item.severity).to_radians();
            let (sin, cos) = angle.sin_cos();
            [cos, -sin, 0.0, sin, cos, 0.0]
        })
        .collect();
    affine(images, &thetas)
}

/// Mirror a central band whose share of the image is the severity, so severity 1 flips the
/// whole image. The band is centred, so it maps onto itself.
pub fn flip(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let mut result = images.shallow_clone();
    for axis in [0.0, 1.0] {
        let rows: Vec<i64> = (0..items.len() as i64).filter(|&i| items[i as usize].param("axis") == axis).collect();
        if rows.is_empty() {
            continue;
        }
        let index = Tensor::f_from_slice(&rows)?.f_to(canvas.device)?;
        let subset = images.f_index_select(0, &index)?;
        let half_bands: Vec<f64> = rows.iter().map(|&i| items[i as usize].severity / 2.0).collect();
        let half_bands = canvas.column(&half_bands)?;

        let (dim, centres) = if axis == 0.0 { (3, &canvas.xs) } else { (2, &canvas.ys) };
        let band = centres.f_sub_scalar(0.5)?.f_abs()?.f_le_tensor(&half_bands)?;
        let flipped = subset.f_flip([dim])?.f_where_self(&band, &subset)?;
        result = result.f_index_copy(0, &index, &flipped)?;
    }
    Ok(result)
}

/// Squeeze (direction -1) or stretch (+1) along one axis by `max_factor` times severity.
pub fn squeeze(images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let thetas: Vec<[f64; 6]> = items
        .iter_mut()
        .map(|item| {
            let factor = 1.0 + item.sign_param("direction") * item.param("max_factor") * item.severity;
            // The matrix maps output to input coordinates, so it contains the inverse factor.
            let inverse = 1.0 / factor.max(0.05);
            if item.param("axis") == 0.0 {
                [inverse, 0.0, 0.0, 0.0, 1.0, 0.0]
            } else {
                [1.0, 0.0, 0.0, 0.0, inverse, 0.0]
            }
        })
        .collect();
    affine(images, &thetas)
}

/// Dilate (thicker) or erode (thinner) with a radius of `radius` times severity pixels,
/// interpolating between whole 3×3 steps. `radius` is given for a 28-pixel image.
pub fn thickness(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let scale = canvas.width.min(canvas.height) as f64 / 28.0;
    let mut grow_steps = Vec::with_capacity(items.len());
    let mut shrink_steps = Vec::with_capacity(items.len());
    let mut grows = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let steps = item.param("radius") * scale * item.severity;
        let grow = item.sign_param("direction") > 0.0;
        grow_steps.push(if grow { steps } else { 0.0 });
        shrink_steps.push(if grow { 0.0 } else { steps });
        grows.push(if grow { 1.0 } else { 0.0 });
    }

    let max_steps = grow_steps.iter().chain(&shrink_steps).copied().fold(0.0, f64::max).ceil() as usize;
    let grown = fractional_step(canvas, &morphology_chain(images, max_steps, true)?, &grow_steps)?;
    let shrunk = fractional_step(canvas, &morphology_chain(images, max_steps, false)?, &shrink_steps)?;
    blend(&shrunk, &grown, &canvas.column(&grows)?)
}

/// Close gaps and holes: dilate, then erode by the same radius. The radius is `radius` times
/// severity pixels for a 28-pixel image.
pub fn fill_gaps(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let scale = canvas.width.min(canvas.height) as f64 / 28.0;
    let steps: Vec<f64> = items.iter().map(|item| item.param("radius") * scale * item.severity).collect();
    let max_steps = steps.iter().copied().fold(0.0, f64::max).ceil() as usize;

    let dilated = morphology_chain(images, max_steps, true)?;
    let mut closed = Vec::with_capacity(dilated.len());
    for (level, tensor) in dilated.iter().enumerate() {
        let eroded = morphology_chain(tensor, level, false)?;
        closed.push(eroded.last().map_or_else(|| tensor.shallow_clone(), Tensor::shallow_clone));
    }
    fractional_step(canvas, &closed, &steps)
}

/// Paint stripes or checks inside the object's silhouette by inverting the pixels under the
/// pattern. Severity sets how far toward the inverse they go.
pub fn stripes(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let n = items.len();
    let (mut cos, mut sin, mut frequency, mut phase_u, mut phase_v, mut checks, mut strength) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for item in items.iter_mut() {
        let angle = item.param("angle");
        let angle = if angle < 0.0 { item.rng_uniform(0.0, 180.0) } else { angle };
        let (s, c) = angle.to_radians().sin_cos();
        cos.push(c);
        sin.push(s);
        frequency.push(std::f64::consts::TAU / item.param("period"));
        phase_u.push(item.rng_uniform(0.0, std::f64::consts::TAU));
        phase_v.push(item.rng_uniform(0.0, std::f64::consts::TAU));
        checks.push(item.param("checks").round());
        strength.push(item.severity);
    }

    let (cos, sin) = (canvas.column(&cos)?, canvas.column(&sin)?);
    let x = canvas.xs.f_sub_scalar(0.5)?;
    let y = canvas.ys.f_sub_scalar(0.5)?;
    let u = x.f_mul(&cos)?.f_add(&y.f_mul(&sin)?)?;
    let v = y.f_mul(&cos)?.f_sub(&x.f_mul(&sin)?)?;
    let frequency = canvas.column(&frequency)?;
    let first = square_wave(&u, &frequency, &canvas.column(&phase_u)?)?;
    let pattern = if checks.iter().any(|&value| value > 0.0) {
        let second = square_wave(&v, &frequency, &canvas.column(&phase_v)?)?;
        // Checks are first XOR second, which is a + b - 2ab for a, b in {0, 1}.
        let xor = first.f_add(&second)?.f_sub(&first.f_mul(&second)?.f_mul_scalar(2.0)?)?;
        blend(&first, &xor, &canvas.column(&checks)?)?
    } else {
        first
    };

    let weight = pattern.f_mul(&silhouette(canvas, images)?)?.f_mul(&canvas.column(&strength)?)?;
    blend(images, &images.f_neg()?.f_add_scalar(1.0)?, &weight)
}

/// 1 where sin(frequency · t + phase) > 0, else 0.
fn square_wave(t: &Tensor, frequency: &Tensor, phase: &Tensor) -> TchResult<Tensor> {
    t.f_mul(frequency)?.f_add(phase)?.f_sin()?.f_gt(0.0)?.f_to_dtype(Kind::Float, false, false)
}

/// Build a soft mask of the pixels that differ from the background (the border's median).
fn silhouette(canvas: &Canvas, images: &Tensor) -> TchResult<Tensor> {
    let background = border_median(canvas, images)?;
    let difference = images.f_sub(&background)?.f_abs()?.f_mean_dim(1, true, Kind::Float)?;
    difference.f_sub_scalar(0.06)?.f_div_scalar(0.1)?.f_clamp(0.0, 1.0)
}

/// Join one side of a cut from the image to the other side from a donor. The donor is
/// shifted along the cut by up to 30% of the image side, scaled by severity.
pub fn part_swap(canvas: &Canvas, images: &Tensor, donors: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let n = items.len();
    let mut thetas = Vec::with_capacity(n);
    let mut cuts = Vec::with_capacity(n);
    let mut horizontal = Vec::with_capacity(n);
    for item in items.iter_mut() {
        let shift = 2.0 * 0.3 * item.severity * item.random_sign();
        let top_bottom = item.param("axis") == 1.0;
        // A top/bottom cut shifts the donor sideways, a left/right cut shifts it vertically.
        thetas.push(if top_bottom { [1.0, 0.0, shift, 0.0, 1.0, 0.0] } else { [1.0, 0.0, 0.0, 0.0, 1.0, shift] });
        cuts.push(item.param("cut"));
        horizontal.push(if top_bottom { 1.0 } else { 0.0 });
    }

    let moved = affine(donors, &thetas)?;
    let cuts = canvas.column(&cuts)?;
    let below = || canvas.ys.f_ge_tensor(&cuts)?.f_to_dtype(Kind::Float, false, false);
    let right = || canvas.xs.f_ge_tensor(&cuts)?.f_to_dtype(Kind::Float, false, false);
    let donor_side = if horizontal.iter().all(|&value| value == 1.0) {
        below()?
    } else if horizontal.iter().all(|&value| value == 0.0) {
        right()?
    } else {
        blend(&right()?, &below()?, &canvas.column(&horizontal)?)?
    };
    blend(images, &moved, &donor_side)
}
