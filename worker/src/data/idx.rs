//! MNIST and Fashion-MNIST in the IDX format, plain or gzip-compressed.
//!
//! An IDX file starts with a big-endian u32 magic number (2051 for a u8 image tensor,
//! 2049 for a u8 label vector), then one big-endian u32 per dimension, then the values.

use std::io::Read;
use std::path::{Path, PathBuf};

use kka_shared::config::DatasetFormat;
use kka_shared::dataset::{dataset_files, FilesDigest};

use super::{read_file, DataError, RawDataset, RawSplit};

/// Magic number of an IDX file of u8 images (N×H×W).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of u8 labels (N).
pub const LABELS_MAGIC: u32 = 2049;

const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Both IDX formats have ten classes.
const CLASS_COUNT: usize = 10;

/// Decoded IDX images.
struct IdxImages {
    count: usize,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
}

/// Read the four IDX files of MNIST or Fashion-MNIST under `root`.
pub fn load(format: DatasetFormat, root: &Path) -> Result<RawDataset, DataError> {
    let files = dataset_files(format, root)?;
    let mut digest = FilesDigest::new();
    let mut contents = Vec::with_capacity(files.len());
    for path in &files {
        let bytes = read_file(path)?;
        digest.start_file(root, path);
        digest.update(&bytes);
        contents.push(decompress(path, bytes)?);
    }

    // dataset_files lists train images, train labels, test images, test labels.
    let (train, train_shape) = split(&files[0], &contents[0], &files[1], &contents[1])?;
    let (test, test_shape) = split(&files[2], &contents[2], &files[3], &contents[3])?;
    if train_shape != test_shape {
        return Err(DataError::Corrupt {
            path: files[2].clone(),
            reason: format!("test images are {test_shape:?} but training images are {train_shape:?}"),
        });
    }

    Ok(RawDataset {
        format,
        train,
        test,
        shape: [1, train_shape[0], train_shape[1]],
        class_names: class_names(format),
        files_digest: digest.finish(),
    })
}

fn class_names(format: DatasetFormat) -> Vec<String> {
    match format {
        DatasetFormat::FashionMnist => FASHION_MNIST_CLASSES.iter().map(|name| name.to_string()).collect(),
        _ => (0..CLASS_COUNT).map(|digit| digit.to_string()).collect(),
    }
}

/// Decode one split from its image and label files. Returns the split and its image size (H, W).
fn split(
    images_path: &Path,
    images_bytes: &[u8],
    labels_path: &Path,
    labels_bytes: &[u8],
) -> Result<(RawSplit, [usize; 2]), DataError> {
    let images = parse_images(images_path, images_bytes)?;
    let labels = parse_labels(labels_path, labels_bytes)?;
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images: images_path.to_owned(),
            image_count: images.count,
            labels: labels_path.to_owned(),
            label_count: labels.len(),
        });
    }
    Ok((RawSplit { pixels: images.pixels, labels }, [images.rows, images.cols]))
}

/// Gunzip `bytes` when they start with the gzip magic bytes; return them unchanged otherwise.
fn decompress(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    let is_gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let named_gz = path.extension().is_some_and(|extension| extension == "gz");
    if !is_gzip {
        if named_gz {
            return Err(DataError::Gzip {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the gzip header is missing"),
            });
        }
        return Ok(bytes);
    }

    let mut decoded = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut decoded)
        .map_err(|source| DataError::Gzip { path: path.to_owned(), source })?;
    Ok(decoded)
}

/// Read the magic number and `dims` dimensions of an IDX header.
fn header(path: &Path, bytes: &[u8], expected_magic: u32, dims: usize, what: &'static str) -> Result<Vec<usize>, DataError> {
    let header_len = 4 * (1 + dims);
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    // Check the magic number first: a wrong file is a clearer diagnosis than a short header.
    if bytes.len() >= 4 && word(0) != expected_magic {
        return Err(DataError::Magic { path: path.to_owned(), found: word(0), expected: expected_magic, what });
    }
    if bytes.len() < header_len {
        return Err(corrupt(path, format!("{} bytes is shorter than the {header_len}-byte IDX header", bytes.len())));
    }
    Ok((1..=dims).map(|i| word(i) as usize).collect())
}

fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages, DataError> {
    let dims = header(path, bytes, IMAGES_MAGIC, 3, "IDX u8 images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(corrupt(path, format!("image size {rows}×{cols} is empty")));
    }
    let body = &bytes[16..];
    let expected = count.checked_mul(rows * cols).ok_or_else(|| corrupt(path, format!("{count} images overflow")))?;
    check_length(path, body.len(), expected)?;
    Ok(IdxImages { count, rows, cols, pixels: body.to_vec() })
}

fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u32>, DataError> {
    let dims = header(path, bytes, LABELS_MAGIC, 1, "IDX u8 labels")?;
    let body = &bytes[8..];
    check_length(path, body.len(), dims[0])?;
    let labels: Vec<u32> = body.iter().map(|&label| u32::from(label)).collect();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &label)| label as usize >= CLASS_COUNT) {
        return Err(DataError::LabelOutOfRange { path: path.to_owned(), index, label, classes: CLASS_COUNT });
    }
    Ok(labels)
}

fn check_length(path: &Path, found: usize, expected: usize) -> Result<(), DataError> {
    match found.cmp(&expected) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(corrupt(
            path,
            format!("truncated: the header promises {expected} data bytes but the file holds {found}; download it again"),
        )),
        std::cmp::Ordering::Greater => Err(corrupt(
            path,
            format!("{found} data bytes follow the header but it promises {expected}; the file is not a single IDX tensor"),
        )),
    }
}

fn corrupt(path: &Path, reason: String) -> DataError {
    DataError::Corrupt { path: PathBuf::from(path), reason }
}

/// Writers of IDX files, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::io::Write;
    use std::path::Path;

    pub fn images_bytes(count: usize, rows: usize, cols: usize, pixel: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [super::IMAGES_MAGIC as usize, count, rows, cols] {
            bytes.extend_from_slice(&(word as u32).to_be_bytes());
        }
        for image in 0..count {
            for offset in 0..rows * cols {
                bytes.push(pixel(image, offset));
            }
        }
        bytes
    }

    pub fn labels_bytes(labels: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&super::LABELS_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Write a tiny 8×8 IDX dataset: `per_class` images of each of ten classes per split. The
    /// pixels of class k are bright in row k mod 8 and dim elsewhere, with per-image noise, so a
    /// detector can tell classes apart.
    pub fn write_dataset(dir: &Path, per_class: usize, gz: bool) {
        let labels: Vec<u8> = (0..10 * per_class).map(|i| (i % 10) as u8).collect();
        let pixel = |labels: &Vec<u8>| {
            let labels = labels.clone();
            move |image: usize, offset: usize| {
                let bright_row = usize::from(labels[image]) % 8;
                let base = if offset / 8 == bright_row { 200 } else { 20 };
                (base + (image * 7 + offset * 13) % 30) as u8
            }
        };
        let images = images_bytes(labels.len(), 8, 8, pixel(&labels));
        let label_file = labels_bytes(&labels);
        for (stem, content) in [
            ("train-images-idx3-ubyte", &images),
            ("train-labels-idx1-ubyte", &label_file),
            ("t10k-images-idx3-ubyte", &images),
            ("t10k-labels-idx1-ubyte", &label_file),
        ] {
            if gz {
                std::fs::write(dir.join(format!("{stem}.gz")), gzip(content)).unwrap();
            } else {
                std::fs::write(dir.join(stem), content).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn plain_and_gzip_decode_alike() {
        let plain = tempfile::tempdir().unwrap();
        let gz = tempfile::tempdir().unwrap();
        write_dataset(plain.path(), 3, false);
        write_dataset(gz.path(), 3, true);

        let a = load(DatasetFormat::Mnist, plain.path()).unwrap();
        let b = load(DatasetFormat::Mnist, gz.path()).unwrap();
        assert_eq!(a.shape, [1, 8, 8]);
        assert_eq!(a.train.len(), 30);
        assert_eq!(a.train.pixels, b.train.pixels);
        assert_eq!(a.test.labels, b.test.labels);
        assert_eq!(a.train.labels[..3], [0, 1, 2]);
    }

    #[test]
    fn digest_matches_shared_files_digest() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, true);
        let raw = load(DatasetFormat::FashionMnist, dir.path()).unwrap();
        let expected = kka_shared::dataset::files_digest(DatasetFormat::FashionMnist, dir.path()).unwrap();
        assert_eq!(raw.files_digest, expected);
        assert_eq!(raw.class_names[0], "T-shirt/top");
    }

    #[test]
    fn wrong_magic_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, false);
        // A label file where an image file belongs.
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), labels_bytes(&[1, 2])).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::Magic { found: 2049, expected: 2051, .. }), "{error}");
        assert!(error.to_string().contains("train-images-idx3-ubyte"), "{error}");
    }

    #[test]
    fn truncated_images_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, false);
        let path = dir.path().join("t10k-images-idx3-ubyte");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err().to_string();
        assert!(error.contains("truncated") && error.contains("t10k-images"), "{error}");
    }

    #[test]
    fn short_header_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, false);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), [0, 0, 8]).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err().to_string();
        assert!(error.contains("header"), "{error}");
    }

    #[test]
    fn bad_gzip_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, true);
        let path = dir.path().join("train-labels-idx1-ubyte.gz");
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes.truncate(middle);
        std::fs::write(&path, bytes).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::Gzip { .. }), "{error}");

        std::fs::write(&path, b"not gzip at all").unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::Gzip { .. }), "{error}");
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, false);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels_bytes(&[0; 19])).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::CountMismatch { image_count: 20, label_count: 19, .. }), "{error}");
    }

    #[test]
    fn label_out_of_range_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 2, false);
        let mut labels = vec![0u8; 20];
        labels[7] = 12;
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels_bytes(&labels)).unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::LabelOutOfRange { index: 7, label: 12, .. }), "{error}");
    }

    #[test]
    fn missing_file_is_a_files_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = load(DatasetFormat::Mnist, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::Files(_)), "{error}");
    }
}
