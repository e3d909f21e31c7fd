//! Named f32 tensors plus string metadata as safetensors bytes, the format of checkpoints and
//! of saved training progress.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use super::DetectorError;

/// Metadata key of the format tag.
pub const FORMAT_KEY: &str = "kka.format";

/// Named tensors and string metadata of a safetensors file.
pub type Decoded = (BTreeMap<String, Tensor>, HashMap<String, String>);

/// Serialize CPU-convertible f32 tensors and metadata into safetensors bytes.
pub fn encode(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Vec<u8>, DetectorError> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let values = Vec::<f32>::try_from(tensor.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
        let bytes: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        let shape: Vec<usize> = tensor.size().iter().map(|&dim| dim as usize).collect();
        buffers.push((name.clone(), shape, bytes));
    }

    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|error| DetectorError::Encode(error.to_string()))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, DetectorError>>()?;
    safetensors::tensor::serialize(views, &Some(metadata)).map_err(|error| DetectorError::Encode(error.to_string()))
}

/// Parse safetensors bytes written by [`encode`] into CPU tensors and metadata.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DetectorError> {
    let corrupt = |reason: String| DetectorError::Corrupt { reason };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|error| corrupt(format!("not safetensors bytes: {error}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let parsed = SafeTensors::deserialize(bytes).map_err(|error| corrupt(format!("not safetensors bytes: {error}")))?;

    let mut tensors = BTreeMap::new();
    for (name, view) in parsed.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).collect();
        let shape: Vec<i64> = view.shape().iter().map(|&dim| dim as i64).collect();
        tensors.insert(name, Tensor::f_from_slice(&values)?.f_view(shape.as_slice())?);
    }
    Ok((tensors, metadata))
}

/// A metadata value that must be present.
pub fn required<'a>(metadata: &'a HashMap<String, String>, key: &str) -> Result<&'a str, DetectorError> {
    metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| DetectorError::Corrupt { reason: format!("metadata key {key} is missing") })
}

/// Parse a required metadata value as JSON.
pub fn required_json<T: serde::de::DeserializeOwned>(metadata: &HashMap<String, String>, key: &str) -> Result<T, DetectorError> {
    let text = required(metadata, key)?;
    serde_json::from_str(text).map_err(|error| DetectorError::Corrupt { reason: format!("metadata key {key} is invalid: {error}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_and_metadata_round_trip() {
        let mut tensors = BTreeMap::new();
        tensors.insert("a/weight".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 1e-30, 7.0]).view([2, 3]));
        tensors.insert("c".to_string(), Tensor::from_slice(&[0.1f32]));
        let metadata = HashMap::from([(FORMAT_KEY.to_string(), "test".to_string())]);

        let bytes = encode(&tensors, metadata).unwrap();
        let (decoded, metadata) = decode(&bytes).unwrap();
        assert_eq!(metadata[FORMAT_KEY], "test");
        assert_eq!(decoded["a/weight"].size(), vec![2, 3]);
        assert!(decoded["a/weight"].equal(&tensors["a/weight"]));
        assert!(decoded["c"].equal(&tensors["c"]));
    }

    #[test]
    fn garbage_is_corrupt() {
        let error = decode(b"definitely not a checkpoint").unwrap_err();
        assert!(matches!(error, DetectorError::Corrupt { .. }), "{error}");
        let error = decode(&[]).unwrap_err();
        assert!(matches!(error, DetectorError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn missing_metadata_key_is_named() {
        let error = required(&HashMap::new(), "kind").unwrap_err().to_string();
        assert!(error.contains("kind"), "{error}");
    }
}
