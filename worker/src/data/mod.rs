//! Dataset loaders, the one-class protocol and a per-process cache.
//!
//! A dataset is read in three steps. A format loader ([`idx`], [`cifar`], [`folder`]) decodes
//! the files into [`RawDataset`]: u8 pixels of the train and test splits with their labels.
//! [`protocol`] cuts a [`RawDataset`] into the one-class splits of a [`DatasetProtocol`].
//! [`DatasetCache`] keeps both per worker process, so a new task neither re-reads nor
//! re-decodes the files; it only copies the selected pixels into fresh tensors.

mod cache;
pub mod cifar;
pub mod folder;
pub mod idx;
mod normalize;
pub mod protocol;

use std::path::{Path, PathBuf};

use kka_shared::config::{DatasetFormat, DatasetProtocol, DatasetSettings};
use kka_shared::dataset::DatasetFilesError;

pub use cache::DatasetCache;
pub use normalize::Normalizer;
pub use protocol::SplitPlan;

/// Images of one split, before preprocessing.
#[derive(Debug)]
pub struct ImageSet {
    /// f32, N×C×H×W, values in [0, 1], on the CPU.
    pub images: tch::Tensor,
    /// Original class label of each image.
    pub labels: Vec<u32>,
    /// Index of each image in its split file (or in the sorted file list of a folder split).
    pub indices: Vec<u32>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A dataset cut by the one-class protocol.
#[derive(Debug)]
pub struct OneClassData {
    /// Normal training images minus the validation slice.
    pub train: ImageSet,
    /// Held-out normal training images, which calibrate thresholds.
    pub validation: ImageSet,
    /// The test split after `test_limit`, normal and anomalous classes mixed.
    pub test: ImageSet,
    /// Whether each test image belongs to a class outside `normal_classes`.
    pub test_is_anomaly: Vec<bool>,
    /// Channels, height and width.
    pub shape: [i64; 3],
    /// `kka_shared::dataset::fingerprint` of the files, the format and the protocol.
    pub fingerprint: String,
    /// The configured preprocessing, fitted on the training normals.
    pub normalizer: Normalizer,
    /// Name of each class, indexed by label.
    pub class_names: Vec<String>,
}

/// Errors of loading a dataset or cutting it by the one-class protocol.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Files(#[from] DatasetFilesError),
    #[error("invalid dataset protocol: {0}")]
    Protocol(#[from] kka_shared::config::ConfigError),
    #[error("failed to read dataset file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to decompress {path}: {source}; the file is not valid gzip, so download it again")]
    Gzip { path: PathBuf, source: std::io::Error },
    #[error("{path} has magic number {found}, expected {expected} ({what}); is it the right file?")]
    Magic { path: PathBuf, found: u32, expected: u32, what: &'static str },
    #[error("{path} is invalid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels; use files from the same release")]
    CountMismatch { images: PathBuf, image_count: usize, labels: PathBuf, label_count: usize },
    #[error("{path}: label {label} of record {index} is outside 0..{classes}")]
    LabelOutOfRange { path: PathBuf, index: usize, label: u32, classes: usize },
    #[error("failed to decode image {path}: {source}")]
    Image { path: PathBuf, source: image::ImageError },
    #[error("image {path} has shape {found:?} (C, H, W) but {first} has {expected:?}; all images of a folder dataset must share one shape, so resize them")]
    ShapeMismatch { path: PathBuf, found: [usize; 3], first: PathBuf, expected: [usize; 3] },
    #[error("image {path} is not inside a class folder; put images in train/<class>/ and test/<class>/")]
    NoClassFolder { path: PathBuf },
    #[error("normal class {class} has no training images (the data has classes {available}); fix dataset.normal_classes")]
    NormalClassMissing { class: u32, available: String },
    #[error("the {split} split is empty after the protocol cut ({detail}); {fix}")]
    EmptySplit { split: &'static str, detail: String, fix: &'static str },
    #[error("dataset fingerprint mismatch: the task expects {expected} but this worker's data gives {local}; give every worker the same dataset files and protocol (dataset.path, dataset.format, [dataset] keys)")]
    FingerprintMismatch { expected: String, local: String },
    #[error("anomaly {id} has shape {found:?} (C, H, W) but the dataset images have {expected:?}; it was generated from another dataset")]
    AnomalyShape { id: String, found: [u32; 3], expected: [u32; 3] },
    #[error("tensor operation failed while preparing the dataset: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Decoded pixels of one split.
#[derive(Debug, Clone, Default)]
pub struct RawSplit {
    /// u8 pixels, N×C×H×W in row-major order.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
}

impl RawSplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A decoded dataset: both splits, their shape, the class names and the files digest.
#[derive(Debug, Clone)]
pub struct RawDataset {
    pub format: DatasetFormat,
    pub train: RawSplit,
    pub test: RawSplit,
    /// Channels, height and width of every image.
    pub shape: [usize; 3],
    pub class_names: Vec<String>,
    /// `kka_shared::dataset::files_digest` of the files this dataset was decoded from.
    pub files_digest: String,
}

impl RawDataset {
    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Read and decode the dataset files of `format` under `root`.
pub fn load_raw(format: DatasetFormat, root: &Path) -> Result<RawDataset, DataError> {
    let dataset = match format {
        DatasetFormat::Mnist | DatasetFormat::FashionMnist => idx::load(format, root)?,
        DatasetFormat::Cifar10 | DatasetFormat::Cifar100 => cifar::load(format, root)?,
        DatasetFormat::Folder => folder::load(root)?,
    };
    tracing::info!(
        format = ?format,
        path = %root.display(),
        train = dataset.train.len(),
        test = dataset.test.len(),
        shape = ?dataset.shape,
        "dataset decoded"
    );
    Ok(dataset)
}

/// Read the files and cut them by `protocol`. Reads the files on every call; a worker uses
/// [`DatasetCache`] instead.
pub fn load_one_class(settings: &DatasetSettings, protocol: &DatasetProtocol) -> Result<OneClassData, DataError> {
    let raw = load_raw(settings.format, &settings.path)?;
    let plan = SplitPlan::new(&raw, protocol)?;
    plan.materialize(&raw)
}

/// Stack stored anomaly pixels (u8, C×H×W each) into an N×C×H×W tensor of [0, 1] values,
/// checking that every anomaly has the dataset's `shape`.
pub fn anomaly_images(anomalies: &[kka_shared::store::StoredAnomaly], shape: [i64; 3]) -> Result<tch::Tensor, DataError> {
    let expected = shape.map(|dim| dim as u32);
    let mut pixels = Vec::with_capacity(anomalies.len() * shape.iter().product::<i64>() as usize);
    for anomaly in anomalies {
        if anomaly.record.shape != expected {
            return Err(DataError::AnomalyShape { id: anomaly.record.id.to_string(), found: anomaly.record.shape, expected });
        }
        pixels.extend_from_slice(&anomaly.pixels);
    }

    let [c, h, w] = shape;
    let images = tch::Tensor::f_from_slice(&pixels)?
        .f_view([anomalies.len() as i64, c, h, w])?
        .f_to_kind(tch::Kind::Float)?
        .f_div_scalar(255.0)?;
    Ok(images)
}

/// Fashion-MNIST from the path in `config/default.toml`, decoded once per test process.
#[cfg(test)]
pub(crate) fn fashion_mnist(protocol: &DatasetProtocol) -> OneClassData {
    static CACHE: std::sync::OnceLock<DatasetCache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        let config = kka_shared::config::Config::from_toml("").expect("the default config is valid");
        DatasetCache::new(config.dataset.clone())
    });
    let data = cache.get(protocol).expect("Fashion-MNIST is installed by scripts/setup.sh");
    std::sync::Arc::try_unwrap(data).expect("get returns a fresh Arc")
}

/// Read a whole file into memory, naming it on failure.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Read { path: path.to_owned(), source })
}
