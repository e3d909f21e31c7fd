//! Mean distance from each query embedding to its k nearest reference embeddings.

use tch::{Device, Kind, Tensor};

use super::DetectorError;

/// Queries per distance-matrix block, which bounds memory to 1024 × references floats.
const QUERY_BLOCK: i64 = 1024;

/// For each row of `queries` (N×d), the mean Euclidean distance to its `k` nearest rows of
/// `references` (M×d); `k` is capped at M. Both tensors must be on the same device.
pub fn mean_knn_distance(queries: &Tensor, references: &Tensor, k: usize) -> Result<Vec<f64>, DetectorError> {
    let _guard = tch::no_grad_guard();
    let reference_count = references.size()[0];
    if reference_count == 0 || k == 0 {
        return Err(DetectorError::Mismatch {
            reason: format!("k-NN distances need k >= 1 and reference embeddings, got k = {k} and {reference_count} references"),
        });
    }
    let k = (k as i64).min(reference_count);

    let count = queries.size()[0];
    let mut distances = Vec::with_capacity(count as usize);
    let mut start = 0;
    while start < count {
        let length = QUERY_BLOCK.min(count - start);
        let block = queries.f_narrow(0, start, length)?;
        let matrix = Tensor::f_cdist(&block, references, 2.0, None::<i64>)?;
        let (nearest, _) = matrix.f_topk(k, 1, false, true)?;
        let means = nearest.f_mean_dim(1, false, Kind::Double)?.f_to_device(Device::Cpu)?;
        distances.extend(Vec::<f64>::try_from(&means)?);
        start += length;
    }
    Ok(distances)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_distance_averages_nearest_references() {
        let references = Tensor::from_slice(&[0.0f32, 0.0, 3.0, 0.0, 0.0, 10.0]).view([3, 2]);
        let queries = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        // Distances 1, 2 and √101: the two nearest average 1.5.
        let distances = mean_knn_distance(&queries, &references, 2).unwrap();
        assert!((distances[0] - 1.5).abs() < 1e-6, "{distances:?}");
        // k above the reference count averages all three.
        let all = mean_knn_distance(&queries, &references, 10).unwrap();
        assert!((all[0] - (3.0 + 101f64.sqrt()) / 3.0).abs() < 1e-5, "{all:?}");
    }

    #[test]
    fn zero_k_is_rejected() {
        let references = Tensor::zeros([2, 2], tch::kind::FLOAT_CPU);
        assert!(mean_knn_distance(&references, &references, 0).is_err());
    }
}
