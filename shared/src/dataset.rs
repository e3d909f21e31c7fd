//! Dataset fingerprints: a hash of the dataset files and the one-class protocol.
//!
//! The coordinator puts the fingerprint of its own data into every task. A worker computes the
//! same hash over its own copy and rejects a task whose fingerprint differs, instead of
//! training on the wrong data.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{DatasetFormat, DatasetProtocol};

/// The dataset files could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetFilesError {
    #[error("dataset file {path} is missing (dataset.format = {format:?}); {fix}")]
    Missing { path: PathBuf, format: DatasetFormat, fix: &'static str },
    #[error("failed to read dataset file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("dataset folder {path} has no images under train/<class>/ and test/<class>/")]
    EmptyFolder { path: PathBuf },
}

const IDX_STEMS: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
const CIFAR10_FILES: [&str; 6] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
const CIFAR100_FILES: [&str; 2] = ["train.bin", "test.bin"];

fn fix_for(format: DatasetFormat) -> &'static str {
    match format {
        DatasetFormat::FashionMnist => "install Debian's dataset-fashion-mnist (scripts/setup.sh does) or set dataset.path",
        DatasetFormat::Mnist => "put the four MNIST IDX files (plain or .gz) there or set dataset.path",
        DatasetFormat::Cifar10 => "put the CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin) there or set dataset.path",
        DatasetFormat::Cifar100 => "put the CIFAR-100 binary files (train.bin, test.bin) there or set dataset.path",
        DatasetFormat::Folder => "create train/<class>/ and test/<class>/ folders of PNG or JPEG images",
    }
}

/// The files a loader for `format` reads under `root`, in a fixed order. IDX files may be plain
/// or `.gz`; the plain file wins when both exist.
pub fn dataset_files(format: DatasetFormat, root: &Path) -> Result<Vec<PathBuf>, DatasetFilesError> {
    let missing = |path: PathBuf| DatasetFilesError::Missing { path, format, fix: fix_for(format) };
    match format {
        DatasetFormat::Mnist | DatasetFormat::FashionMnist => IDX_STEMS
            .iter()
            .map(|stem| {
                let plain = root.join(stem);
                let gz = root.join(format!("{stem}.gz"));
                if plain.is_file() {
                    Ok(plain)
                } else if gz.is_file() {
                    Ok(gz)
                } else {
                    Err(missing(gz))
                }
            })
            .collect(),
        DatasetFormat::Cifar10 | DatasetFormat::Cifar100 => {
            let names: &[&str] = if format == DatasetFormat::Cifar10 { &CIFAR10_FILES } else { &CIFAR100_FILES };
            names
                .iter()
                .map(|name| {
                    let path = root.join(name);
                    if path.is_file() {
                        Ok(path)
                    } else {
                        Err(missing(path))
                    }
                })
                .collect()
        }
        DatasetFormat::Folder => folder_files(root),
    }
}

fn folder_files(root: &Path) -> Result<Vec<PathBuf>, DatasetFilesError> {
    let mut files = Vec::new();
    for split in ["train", "test"] {
        let dir = root.join(split);
        if !dir.is_dir() {
            return Err(DatasetFilesError::Missing { path: dir, format: DatasetFormat::Folder, fix: fix_for(DatasetFormat::Folder) });
        }
        collect_images(&dir, &mut files)?;
    }
    if files.is_empty() {
        return Err(DatasetFilesError::EmptyFolder { path: root.to_owned() });
    }
    files.sort();
    Ok(files)
}

fn collect_images(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DatasetFilesError> {
    let read_error = |source| DatasetFilesError::Read { path: dir.to_owned(), source };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            collect_images(&path, files)?;
        } else if is_image(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// Whether a path has a PNG or JPEG extension.
pub fn is_image(path: &Path) -> bool {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(extension.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Incremental SHA-256 over the relative names and contents of dataset files, in the order of
/// [`dataset_files`]. Loaders that read the files anyway feed it the same bytes, so they get the
/// digest of [`files_digest`] without reading the files twice.
#[derive(Default)]
pub struct FilesDigest {
    hasher: Sha256,
}

impl FilesDigest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start the next file: hashes its path relative to the dataset root.
    pub fn start_file(&mut self, root: &Path, path: &Path) {
        let relative = path.strip_prefix(root).unwrap_or(path);
        self.hasher.update(relative.to_string_lossy().as_bytes());
        self.hasher.update([0]);
    }

    /// Hash the next chunk of the current file's contents.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The digest as hex.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// SHA-256 over the relative names and contents of the dataset files, as hex.
pub fn files_digest(format: DatasetFormat, root: &Path) -> Result<String, DatasetFilesError> {
    let mut digest = FilesDigest::new();
    let mut buffer = vec![0u8; 1 << 20];
    for path in dataset_files(format, root)? {
        digest.start_file(root, &path);
        let read_error = |source| DatasetFilesError::Read { path: path.clone(), source };
        let mut file = std::fs::File::open(&path).map_err(read_error)?;
        loop {
            let n = file.read(&mut buffer).map_err(read_error)?;
            if n == 0 {
                break;
            }
            digest.update(&buffer[..n]);
        }
    }
    Ok(digest.finish())
}

/// Fingerprint of a dataset copy under a protocol: SHA-256 of the files digest, the format and
/// the protocol, as hex.
pub fn fingerprint(files_digest: &str, format: DatasetFormat, protocol: &DatasetProtocol) -> String {
    let mut hasher = Sha256::new();
    hasher.update(files_digest.as_bytes());
    hasher.update(serde_json::to_vec(&format).unwrap_or_default());
    // Serialising a plain struct of numbers and enums to JSON cannot fail.
    hasher.update(serde_json::to_vec(protocol).unwrap_or_default());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_idx_set(dir: &Path, content: &[u8]) {
        for stem in IDX_STEMS {
            std::fs::write(dir.join(format!("{stem}.gz")), content).unwrap();
        }
    }

    #[test]
    fn digest_changes_with_content() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_idx_set(a.path(), b"one");
        write_idx_set(b.path(), b"two");
        let digest_a = files_digest(DatasetFormat::Mnist, a.path()).unwrap();
        let digest_b = files_digest(DatasetFormat::Mnist, b.path()).unwrap();
        assert_ne!(digest_a, digest_b);
        assert_eq!(digest_a, files_digest(DatasetFormat::Mnist, a.path()).unwrap());
    }

    #[test]
    fn missing_file_names_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let error = files_digest(DatasetFormat::FashionMnist, dir.path()).unwrap_err().to_string();
        assert!(error.contains("train-images-idx3-ubyte.gz"), "{error}");
        assert!(error.contains("dataset-fashion-mnist"), "{error}");
    }

    #[test]
    fn fingerprint_depends_on_protocol() {
        let protocol = DatasetProtocol::default();
        let other = DatasetProtocol { normal_classes: vec![3], ..DatasetProtocol::default() };
        let format = DatasetFormat::FashionMnist;
        assert_ne!(fingerprint("d", format, &protocol), fingerprint("d", format, &other));
        assert_eq!(fingerprint("d", format, &protocol), fingerprint("d", format, &protocol));
    }

    #[test]
    fn folder_without_splits_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let error = dataset_files(DatasetFormat::Folder, dir.path()).unwrap_err().to_string();
        assert!(error.contains("train"), "{error}");
    }
}
