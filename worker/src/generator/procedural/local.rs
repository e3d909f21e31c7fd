//! Local edits: each changes one region and leaves the rest of the image as it was.

use tch::{Kind, Tensor};

use super::noise::{gaussian_field, perlin_field};
use super::tensors::{affine, blend, gaussian_blur, rect_mask, soft_ellipse, Canvas, TchResult};
use super::OpItem;

/// Rectangle of `area` (fraction of the image) and width/height ratio `aspect`, centred at the
/// item's `center_x`/`center_y` or at a random place where it fits. Returns (cx, cy, w, h).
fn place_rect(item: &mut OpItem<'_>, area: f64, aspect: f64) -> (f64, f64, f64, f64) {
    let width = (area * aspect).sqrt().min(1.0);
    let height = (area / aspect).sqrt().min(1.0);
    let cx = item.position("center_x", width);
    let cy = item.position("center_y", height);
    (cx, cy, width, height)
}

/// Columns of a rectangle per item, for [`rect_mask`].
struct Rects {
    cx: Vec<f64>,
    cy: Vec<f64>,
    half_w: Vec<f64>,
    half_h: Vec<f64>,
}

impl Rects {
    fn with_capacity(n: usize) -> Rects {
        Rects { cx: Vec::with_capacity(n), cy: Vec::with_capacity(n), half_w: Vec::with_capacity(n), half_h: Vec::with_capacity(n) }
    }

    fn push(&mut self, (cx, cy, width, height): (f64, f64, f64, f64)) {
        self.cx.push(cx);
        self.cy.push(cy);
        self.half_w.push(width / 2.0);
        self.half_h.push(height / 2.0);
    }

    fn mask(&self, canvas: &Canvas) -> TchResult<Tensor> {
        rect_mask(canvas, &canvas.column(&self.cx)?, &canvas.column(&self.cy)?, &canvas.column(&self.half_w)?, &canvas.column(&self.half_h)?)
    }

    fn soft_mask(&self, canvas: &Canvas) -> TchResult<Tensor> {
        soft_ellipse(canvas, &canvas.column(&self.cx)?, &canvas.column(&self.cy)?, &canvas.column(&self.half_w)?, &canvas.column(&self.half_h)?)
    }
}

/// Build round soft regions of `area` per item. The ellipse's half-axes are chosen so that its area
/// matches: π·a·b = area.
fn soft_regions(canvas: &Canvas, items: &mut [OpItem<'_>], area_of: impl Fn(&OpItem<'_>) -> f64) -> TchResult<Tensor> {
    let mut regions = Rects::with_capacity(items.len());
    for item in items.iter_mut() {
        let radius = (area_of(item) / std::f64::consts::PI).sqrt().min(0.7);
        let cx = item.position("center_x", 2.0 * radius);
        let cy = item.position("center_y", 2.0 * radius);
        regions.push((cx, cy, 2.0 * radius, 2.0 * radius));
    }
    regions.soft_mask(canvas)
}

/// Fill a rectangle of the item's `area` times severity with `value`.
pub fn erase(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let mut rects = Rects::with_capacity(items.len());
    let mut values = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let area = item.param("area") * item.severity;
        let aspect = item.param("aspect");
        rects.push(place_rect(item, area, aspect));
        values.push(item.param("value"));
    }
    blend(images, &canvas.column(&values)?, &rects.mask(canvas)?)
}

/// Cut a patch of the donor image at one random place and paste it at another.
pub fn cutpaste(canvas: &Canvas, images: &Tensor, donors: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let mut rects = Rects::with_capacity(items.len());
    let mut thetas = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let area = item.param("area") * item.severity;
        let aspect = item.param("aspect");
        let (cx, cy, width, height) = place_rect(item, area, aspect);
        let source_x = item.uniform_fit(width);
        let source_y = item.uniform_fit(height);
        rects.push((cx, cy, width, height));

        // Translate by whole pixels, so bilinear sampling copies donor pixels exactly.
        let shift_x = ((source_x - cx) * canvas.width as f64).round() / canvas.width as f64;
        let shift_y = ((source_y - cy) * canvas.height as f64).round() / canvas.height as f64;
        thetas.push([1.0, 0.0, 2.0 * shift_x, 0.0, 1.0, 2.0 * shift_y]);
    }
    let moved = affine(donors, &thetas)?;
    blend(images, &moved, &rects.mask(canvas)?)
}

/// Blend a noise texture in where a Perlin-noise mask is high, in the style of DRAEM's
/// anomaly synthesis, which uses photographed textures instead. Severity raises the mask's
/// coverage and the texture's opacity.
pub fn perlin(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let (h, w, c) = (canvas.height as usize, canvas.width as usize, canvas.channels as usize);
    let mut masks = Vec::with_capacity(items.len() * h * w);
    let mut textures = Vec::with_capacity(items.len() * c * h * w);
    let mut opacities = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let frequency = item.param("frequency").round().max(1.0) as usize;
        // Coverage grows with severity: the threshold falls from 0.35 to -0.15.
        let threshold = 0.35 - 0.5 * item.severity;
        let field = perlin_field(&mut item.rng, frequency, h, w);
        masks.extend(field.iter().map(|&v| ((v as f64 - threshold) / 0.08).clamp(0.0, 1.0) as f32));
        for _ in 0..c {
            let texture = perlin_field(&mut item.rng, frequency * 2, h, w);
            let offset = item.rng_uniform(0.2, 0.8);
            textures.extend(texture.iter().map(|&v| (offset + 1.5 * v as f64).clamp(0.0, 1.0) as f32));
        }
        opacities.push(item.param("opacity") * (0.3 + 0.7 * item.severity));
    }

    let n = items.len() as i64;
    let mask = Tensor::f_from_slice(&masks)?.f_to(canvas.device)?.f_view_([n, 1, canvas.height, canvas.width])?;
    let texture = Tensor::f_from_slice(&textures)?.f_to(canvas.device)?.f_view_([n, canvas.channels, canvas.height, canvas.width])?;
    blend(images, &texture, &mask.f_mul(&canvas.column(&opacities)?)?)
}

/// Bulge or pinch a round region and shear it, through a displaced sampling grid.
pub fn warp(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let n = items.len();
    let (mut cx, mut cy, mut sigma, mut bulge, mut shift_x, mut shift_y) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for item in items.iter_mut() {
        let radius = item.param("radius");
        cx.push(item.position("center_x", radius));
        cy.push(item.position("center_y", radius));
        sigma.push(radius / 2.0);
        // A bulge factor below 1 keeps the displaced grid free of folds.
        bulge.push(0.8 * item.param("bulge") * item.severity);
        let angle = item.rng_uniform(0.0, std::f64::consts::TAU);
        let shear = 0.8 * item.param("shear") * item.severity * radius;
        shift_x.push(shear * angle.cos());
        shift_y.push(shear * angle.sin());
    }

    let (cx, cy) = (canvas.column(&cx)?, canvas.column(&cy)?);
    let dx = canvas.xs.f_sub(&cx)?;
    let dy = canvas.ys.f_sub(&cy)?;
    let two_sigma2 = canvas.column(&sigma)?.f_square()?.f_mul_scalar(2.0)?;
    let weight = dx.f_square()?.f_add(&dy.f_square()?)?.f_div(&two_sigma2)?.f_neg()?.f_exp()?;

    // Sampling at p - b·g·(p - c) magnifies the region for b > 0; adding g·s shears it.
    let bulge = canvas.column(&bulge)?;
    let sample_x = canvas.xs.f_sub(&dx.f_mul(&weight)?.f_mul(&bulge)?)?.f_sub(&weight.f_mul(&canvas.column(&shift_x)?)?)?;
    let sample_y = canvas.ys.f_sub(&dy.f_mul(&weight)?.f_mul(&bulge)?)?.f_sub(&weight.f_mul(&canvas.column(&shift_y)?)?)?;
    let grid = Tensor::f_stack(&[to_grid_coordinate(&sample_x)?, to_grid_coordinate(&sample_y)?], 3)?;
    super::tensors::sample(images, &grid)
}

/// [n, 1, H, W] fractions to [n, H, W] grid coordinates in [-1, 1].
fn to_grid_coordinate(fractions: &Tensor) -> TchResult<Tensor> {
    fractions.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?.f_squeeze_dim(1)
}

/// Shift the brightness and reduce the contrast inside a soft region.
pub fn intensity(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let mut shifts = Vec::with_capacity(items.len());
    let mut contrasts = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let shift = item.param("shift");
        let shift = if shift == 0.0 { 0.6 * item.random_sign() } else { shift };
        shifts.push(shift * item.severity);
        contrasts.push(item.param("contrast") * item.severity);
    }
    let mask = soft_regions(canvas, items, |item| item.param("area"))?;

    let mean = images.f_mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float)?;
    let toward_mean = mean.f_sub(images)?.f_mul(&canvas.column(&contrasts)?)?;
    let change = toward_mean.f_add(&canvas.column(&shifts)?)?;
    images.f_add(&change.f_mul(&mask)?)
}

/// Blend a soft region toward its Gaussian blur.
pub fn blur(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    // `sigma` is given for a 28-pixel image and scales with the image size.
    let scale = canvas.width.min(canvas.height) as f64 / 28.0;
    let sigmas: Vec<f64> = items.iter().map(|item| item.param("sigma") * scale).collect();
    let strengths: Vec<f64> = items.iter().map(|item| item.severity).collect();
    let mask = soft_regions(canvas, items, |item| item.param("area"))?;

    let blurred = gaussian_blur(canvas, images, &sigmas)?;
    blend(images, &blurred, &mask.f_mul(&canvas.column(&strengths)?)?)
}

/// Add Gaussian noise inside a soft region.
pub fn noise(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let size = (canvas.channels * canvas.height * canvas.width) as usize;
    let mut fields = Vec::with_capacity(items.len() * size);
    let mut scales = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        fields.extend(gaussian_field(&mut item.rng, size));
        scales.push(item.param("sigma") * item.severity);
    }
    let mask = soft_regions(canvas, items, |item| item.param("area"))?;

    let shape = [items.len() as i64, canvas.channels, canvas.height, canvas.width];
    let field = Tensor::f_from_slice(&fields)?.f_to(canvas.device)?.f_view_(shape)?;
    images.f_add(&field.f_mul(&canvas.column(&scales)?)?.f_mul(&mask)?)
}

/// Most strokes or blobs per image; `count` parameters are clamped to this.
const MAX_SHAPES: usize = 4;

/// Draw straight strokes of the item's width and value.
pub fn strokes(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let n = items.len();
    let slots = n * MAX_SHAPES;
    let (mut x0, mut y0, mut dx, mut dy, mut half_width, mut active) =
        (Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots));
    let mut values = Vec::with_capacity(n);
    let mut opacities = Vec::with_capacity(n);
    for item in items.iter_mut() {
        let count = item.count();
        let length = 0.15 + 0.55 * item.severity;
        for slot in 0..MAX_SHAPES {
            let angle = item.rng_uniform(0.0, std::f64::consts::PI);
            x0.push(item.rng_uniform(0.1, 0.9));
            y0.push(item.rng_uniform(0.1, 0.9));
            dx.push(length * angle.cos());
            dy.push(length * angle.sin());
            half_width.push(item.param("width") / 2.0);
            active.push(if slot < count { 1.0 } else { 0.0 });
        }
        values.push(item.param("value"));
        opacities.push(0.4 + 0.6 * item.severity);
    }

    let k = MAX_SHAPES as i64;
    let (x0, y0) = (canvas.columns(&x0, k)?, canvas.columns(&y0, k)?);
    let (dx, dy) = (canvas.columns(&dx, k)?, canvas.columns(&dy, k)?);
    let px = canvas.xs.f_sub(&x0)?;
    let py = canvas.ys.f_sub(&y0)?;
    // Projection of each pixel onto each segment, clamped to the segment's ends.
    let length2 = dx.f_square()?.f_add(&dy.f_square()?)?.f_clamp_min(1e-9)?;
    let t = px.f_mul(&dx)?.f_add(&py.f_mul(&dy)?)?.f_div(&length2)?.f_clamp(0.0, 1.0)?;
    let ex = px.f_sub(&t.f_mul(&dx)?)?;
    let ey = py.f_sub(&t.f_mul(&dy)?)?;
    let distance = ex.f_square()?.f_add(&ey.f_square()?)?.f_sqrt()?;

    let mask = coverage(canvas, &distance, &canvas.columns(&half_width, k)?, &canvas.columns(&active, k)?)?;
    paint(canvas, images, &mask, &values, &opacities)
}

/// Paint filled round blobs of the item's value.
pub fn blobs(canvas: &Canvas, images: &Tensor, items: &mut [OpItem<'_>]) -> TchResult<Tensor> {
    let n = items.len();
    let slots = n * MAX_SHAPES;
    let (mut cx, mut cy, mut radius, mut active) =
        (Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots), Vec::with_capacity(slots));
    let mut values = Vec::with_capacity(n);
    let mut opacities = Vec::with_capacity(n);
    for item in items.iter_mut() {
        let count = item.count();
        for slot in 0..MAX_SHAPES {
            cx.push(item.rng_uniform(0.15, 0.85));
            cy.push(item.rng_uniform(0.15, 0.85));
            radius.push(item.param("radius") * (0.35 + 0.65 * item.severity) * item.rng_uniform(0.7, 1.0));
            active.push(if slot < count { 1.0 } else { 0.0 });
        }
        values.push(item.param("value"));
        opacities.push(0.4 + 0.6 * item.severity);
    }

    let k = MAX_SHAPES as i64;
    let px = canvas.xs.f_sub(&canvas.columns(&cx, k)?)?;
    let py = canvas.ys.f_sub(&canvas.columns(&cy, k)?)?;
    let distance = px.f_square()?.f_add(&py.f_square()?)?.f_sqrt()?;
    let mask = coverage(canvas, &distance, &canvas.columns(&radius, k)?, &canvas.columns(&active, k)?)?;
    paint(canvas, images, &mask, &values, &opacities)
}

/// Anti-aliased union of shapes: a pixel is covered where its distance to a shape is below
/// `reach`, with a one-pixel soft edge. Input [n, K, H, W], output [n, 1, H, W].
fn coverage(canvas: &Canvas, distance: &Tensor, reach: &Tensor, active: &Tensor) -> TchResult<Tensor> {
    let edge = reach.f_sub(distance)?.f_div_scalar(canvas.pixel())?.f_add_scalar(0.5)?.f_clamp(0.0, 1.0)?;
    edge.f_mul(active)?.f_amax([1], true)
}

fn paint(canvas: &Canvas, images: &Tensor, mask: &Tensor, values: &[f64], opacities: &[f64]) -> TchResult<Tensor> {
    blend(images, &canvas.column(values)?, &mask.f_mul(&canvas.column(opacities)?)?)
}
