//! Random fields drawn on the CPU from an anomaly's own generator, so they do not depend on
//! the batch or on libtorch's global random state.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Standard normal samples, by the Box–Muller transform.
pub fn gaussian_field(rng: &mut ChaCha8Rng, size: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(size + 1);
    while values.len() < size {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(size);
    values
}

/// Gradient (Perlin) noise on an `height`×`width` grid with `cells` lattice cells across each
/// axis. Values lie in about [-0.7, 0.7], row-major.
pub fn perlin_field(rng: &mut ChaCha8Rng, cells: usize, height: usize, width: usize) -> Vec<f32> {
    let cells = cells.max(1);
    let side = cells + 1;
    let gradients: Vec<(f64, f64)> = (0..side * side)
        .map(|_| {
            let angle = rng.random::<f64>() * std::f64::consts::TAU;
            (angle.cos(), angle.sin())
        })
        .collect();
    let dot = |gx: usize, gy: usize, dx: f64, dy: f64| {
        let (cos, sin) = gradients[gy * side + gx];
        cos * dx + sin * dy
    };

    let mut field = Vec::with_capacity(height * width);
    for row in 0..height {
        let v = (row as f64 + 0.5) / height as f64 * cells as f64;
        let (cell_y, fy) = split(v, cells);
        for column in 0..width {
            let u = (column as f64 + 0.5) / width as f64 * cells as f64;
            let (cell_x, fx) = split(u, cells);
            let top = lerp(dot(cell_x, cell_y, fx, fy), dot(cell_x + 1, cell_y, fx - 1.0, fy), fade(fx));
            let bottom = lerp(dot(cell_x, cell_y + 1, fx, fy - 1.0), dot(cell_x + 1, cell_y + 1, fx - 1.0, fy - 1.0), fade(fx));
            field.push(lerp(top, bottom, fade(fy)) as f32);
        }
    }
    field
}

/// Lattice cell and position within it, keeping the last cell for the far edge.
fn split(position: f64, cells: usize) -> (usize, f64) {
    let cell = (position.floor() as usize).min(cells - 1);
    (cell, position - cell as f64)
}

/// Perlin's quintic fade curve, 6t⁵ − 15t⁴ + 10t³.
fn fade(t: f64) -> f64 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn gaussian_field_has_unit_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let values = gaussian_field(&mut rng, 20_001);
        assert_eq!(values.len(), 20_001);
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((variance - 1.0).abs() < 0.05, "variance {variance}");
    }

    #[test]
    fn perlin_field_is_bounded_and_varies() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let field = perlin_field(&mut rng, 4, 28, 28);
        assert_eq!(field.len(), 28 * 28);
        assert!(field.iter().all(|v| v.abs() <= 1.0));
        let spread = field.iter().cloned().fold(f32::MIN, f32::max) - field.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 0.3, "spread {spread}");
    }
}
