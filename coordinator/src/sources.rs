//! Normal source images of exported anomalies, read straight from the dataset files.
//!
//! An anomaly's `source_index` counts images in the dataset's raw training split: the order of
//! the IDX training file, or of the CIFAR training records across their files. Only the worker's
//! loader defines the order of a folder dataset, so folder datasets get no source images.

use std::io::Read;
use std::path::Path;

use kka_shared::config::{DatasetFormat, DatasetSettings};
use kka_shared::dataset::{dataset_files, DatasetFilesError};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;

/// Error reading the training images.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Files(#[from] DatasetFilesError),
    #[error("failed to read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not an IDX image file: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Training images of a dataset as one buffer of equally sized C×H×W images.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingImages {
    pub shape: [u32; 3],
    pixels: Vec<u8>,
}

impl TrainingImages {
    /// Returns the pixels of image `index`, or `None` past the end.
    pub fn image(&self, index: u32) -> Option<&[u8]> {
        let size = self.shape.iter().product::<u32>() as usize;
        let start = (index as usize).checked_mul(size)?;
        self.pixels.get(start..start.checked_add(size)?)
    }
}

/// Reads the raw training images, or `None` for folder datasets. Reads whole files, so call it
/// off the async runtime.
pub fn training_images(settings: &DatasetSettings) -> Result<Option<TrainingImages>, SourceError> {
    match settings.format {
        DatasetFormat::Mnist | DatasetFormat::FashionMnist => {
            let files = dataset_files(settings.format, &settings.path)?;
            read_idx_images(&files[0]).map(Some)
        }
        DatasetFormat::Cifar10 => read_cifar(settings, 1).map(Some),
        DatasetFormat::Cifar100 => read_cifar(settings, 2).map(Some),
        DatasetFormat::Folder => Ok(None),
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, SourceError> {
    let read_error = |source| SourceError::Read { path: path.display().to_string(), source };
    let raw = std::fs::read(path).map_err(read_error)?;
    if path.extension().is_some_and(|extension| extension == "gz") {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut bytes).map_err(read_error)?;
        Ok(bytes)
    } else {
        Ok(raw)
    }
}

fn read_idx_images(path: &Path) -> Result<TrainingImages, SourceError> {
    let bytes = read_bytes(path)?;
    let corrupt = |reason: String| SourceError::Corrupt { path: path.display().to_string(), reason };
    let header = |field: usize| -> Result<u32, SourceError> {
        let start = field * 4;
        let word = bytes.get(start..start + 4).ok_or_else(|| corrupt("the header is cut short".into()))?;
        Ok(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
    };
    let magic = header(0)?;
    if magic != IDX_IMAGES_MAGIC {
        return Err(corrupt(format!("magic number {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x}")));
    }
    let (count, rows, columns) = (header(1)?, header(2)?, header(3)?);
    let expected = count as usize * rows as usize * columns as usize;
    let pixels = bytes[16..].to_vec();
    if pixels.len() != expected {
        return Err(corrupt(format!("{} pixel bytes for {count} images of {rows}x{columns}", pixels.len())));
    }
    Ok(TrainingImages { shape: [1, rows, columns], pixels })
}

/// Reads the CIFAR training records, whose pixels follow `label_bytes` label bytes.
fn read_cifar(settings: &DatasetSettings, label_bytes: usize) -> Result<TrainingImages, SourceError> {
    const IMAGE_BYTES: usize = 3 * 32 * 32;
    let files = dataset_files(settings.format, &settings.path)?;
    // dataset_files lists the training files first and the test file last.
    let mut pixels = Vec::new();
    for path in &files[..files.len() - 1] {
        let bytes = read_bytes(path)?;
        for record in bytes.chunks_exact(label_bytes + IMAGE_BYTES) {
            pixels.extend_from_slice(&record[label_bytes..]);
        }
    }
    Ok(TrainingImages { shape: [3, 32, 32], pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_images(count: u32, rows: u32, columns: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [IDX_IMAGES_MAGIC, count, rows, columns] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        bytes.extend((0..count * rows * columns).map(|i| (i % 251) as u8));
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn idx_training_image_is_sliced_by_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gzip(&idx_images(3, 2, 2))).unwrap();
        let images = read_idx_images(&dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!(images.shape, [1, 2, 2]);
        assert_eq!(images.image(1), Some(&[4u8, 5, 6, 7][..]));
        assert_eq!(images.image(3), None);
    }

    #[test]
    fn wrong_magic_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        let mut bytes = idx_images(1, 2, 2);
        bytes[3] = 0x01;
        std::fs::write(&path, bytes).unwrap();
        let error = read_idx_images(&path).unwrap_err().to_string();
        assert!(error.contains("magic number"), "{error}");
    }

    #[test]
    fn truncated_idx_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        let bytes = idx_images(2, 2, 2);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(read_idx_images(&path), Err(SourceError::Corrupt { .. })));
    }

    #[test]
    fn folder_dataset_has_no_sources() {
        let config = kka_shared::config::Config::from_toml("[dataset]\nformat = \"folder\"\npath = \"/nowhere\"\n").unwrap();
        assert_eq!(training_images(&config.dataset).unwrap(), None);
    }
}
