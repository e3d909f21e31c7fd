//! CIFAR-10 and CIFAR-100 in their binary distributions.
//!
//! A CIFAR-10 record is 1 label byte followed by 3072 pixel bytes: 1024 red, 1024 green, then
//! 1024 blue values of a 32×32 image in row-major order. A CIFAR-100 record has two label bytes,
//! coarse then fine, before the same pixels; kka uses the fine label.

use std::path::Path;

use kka_shared::config::DatasetFormat;
use kka_shared::dataset::{dataset_files, FilesDigest};

use super::{read_file, DataError, RawDataset, RawSplit};

const IMAGE_BYTES: usize = 3 * 32 * 32;

const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const CIFAR100_CLASSES: [&str; 100] = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
];

/// Record layout of one CIFAR variant.
struct Layout {
    /// Label bytes before the pixels.
    label_bytes: usize,
    /// Which of the label bytes is the class label.
    label_offset: usize,
    class_names: &'static [&'static str],
}

impl Layout {
    fn of(format: DatasetFormat) -> Layout {
        if format == DatasetFormat::Cifar100 {
            Layout { label_bytes: 2, label_offset: 1, class_names: &CIFAR100_CLASSES }
        } else {
            Layout { label_bytes: 1, label_offset: 0, class_names: &CIFAR10_CLASSES }
        }
    }

    fn record_bytes(&self) -> usize {
        self.label_bytes + IMAGE_BYTES
    }
}

/// Read the CIFAR-10 or CIFAR-100 binary files under `root`.
pub fn load(format: DatasetFormat, root: &Path) -> Result<RawDataset, DataError> {
    let layout = Layout::of(format);
    let files = dataset_files(format, root)?;
    let mut digest = FilesDigest::new();
    let mut train = RawSplit::default();
    let mut test = RawSplit::default();

    // dataset_files lists the training files first and the single test file last.
    let last = files.len() - 1;
    for (position, path) in files.iter().enumerate() {
        let bytes = read_file(path)?;
        digest.start_file(root, path);
        digest.update(&bytes);
        let split = if position == last { &mut test } else { &mut train };
        append_records(path, &bytes, &layout, split)?;
    }

    Ok(RawDataset {
        format,
        train,
        test,
        shape: [3, 32, 32],
        class_names: layout.class_names.iter().map(|name| name.to_string()).collect(),
        files_digest: digest.finish(),
    })
}

fn append_records(path: &Path, bytes: &[u8], layout: &Layout, split: &mut RawSplit) -> Result<(), DataError> {
    let record_bytes = layout.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record_bytes) {
        return Err(DataError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "{} bytes is not a whole number of {record_bytes}-byte records; the file is truncated or of the other CIFAR variant",
                bytes.len()
            ),
        });
    }

    for (index, record) in bytes.chunks_exact(record_bytes).enumerate() {
        let label = u32::from(record[layout.label_offset]);
        if label as usize >= layout.class_names.len() {
            return Err(DataError::LabelOutOfRange {
                path: path.to_owned(),
                index,
                label,
                classes: layout.class_names.len(),
            });
        }
        split.labels.push(label);
        split.pixels.extend_from_slice(&record[layout.label_bytes..]);
    }
    Ok(())
}

/// Writers of CIFAR binary files, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::Path;

    /// One record: label bytes, then a constant red plane of `level` and dark green and blue planes.
    pub fn record(labels: &[u8], level: u8) -> Vec<u8> {
        let mut bytes = labels.to_vec();
        bytes.extend(std::iter::repeat_n(level, 1024));
        bytes.extend(std::iter::repeat_n(10, 2048));
        bytes
    }

    /// Write a CIFAR-10 set: two records per file, labels 0..10 cycling.
    pub fn write_cifar10(dir: &Path) {
        let names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
        for (file, name) in names.iter().enumerate() {
            let mut bytes = record(&[(2 * file % 10) as u8], 50);
            bytes.extend(record(&[((2 * file + 1) % 10) as u8], 100));
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn cifar10_records_decode() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let raw = load(DatasetFormat::Cifar10, dir.path()).unwrap();
        assert_eq!(raw.train.len(), 10);
        assert_eq!(raw.test.len(), 2);
        assert_eq!(raw.train.labels, (0..10).collect::<Vec<u32>>());
        assert_eq!(raw.test.labels, vec![0, 1]);
        assert_eq!(raw.shape, [3, 32, 32]);
        // The second training image has a red plane of 100 and a green plane of 10.
        assert_eq!(raw.train.pixels[IMAGE_BYTES], 100);
        assert_eq!(raw.train.pixels[IMAGE_BYTES + 1024], 10);
        assert_eq!(raw.class_names[9], "truck");
    }

    #[test]
    fn cifar100_uses_fine_label() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.bin"), [record(&[3, 77], 1), record(&[4, 99], 2)].concat()).unwrap();
        std::fs::write(dir.path().join("test.bin"), record(&[0, 5], 3)).unwrap();
        let raw = load(DatasetFormat::Cifar100, dir.path()).unwrap();
        assert_eq!(raw.train.labels, vec![77, 99]);
        assert_eq!(raw.test.labels, vec![5]);
        assert_eq!(raw.class_names[99], "worm");
        assert_eq!(raw.files_digest, kka_shared::dataset::files_digest(DatasetFormat::Cifar100, dir.path()).unwrap());
    }

    #[test]
    fn truncated_record_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let path = dir.path().join("data_batch_3.bin");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let error = load(DatasetFormat::Cifar10, dir.path()).unwrap_err().to_string();
        assert!(error.contains("data_batch_3.bin") && error.contains("3073-byte records"), "{error}");
    }

    #[test]
    fn cifar100_file_read_as_cifar10_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        // A CIFAR-10 reader sees fine label 200 as an out-of-range label or a length error.
        std::fs::write(dir.path().join("test_batch.bin"), [record(&[200], 0), record(&[1], 0)].concat()).unwrap();
        let error = load(DatasetFormat::Cifar10, dir.path()).unwrap_err();
        assert!(matches!(error, DataError::LabelOutOfRange { label: 200, classes: 10, .. }), "{error}");
    }

    #[test]
    fn missing_batch_is_a_files_error() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        std::fs::remove_file(dir.path().join("data_batch_2.bin")).unwrap();
        let error = load(DatasetFormat::Cifar10, dir.path()).unwrap_err().to_string();
        assert!(error.contains("data_batch_2.bin"), "{error}");
    }
}
