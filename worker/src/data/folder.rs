//! Image folders: `train/<class>/*.png|jpg` and `test/<class>/...`.
//!
//! Class labels index the sorted union of the class folder names of both splits, so a class
//! that appears only in `test/` (an anomaly class) still gets a label. Grayscale images load
//! with one channel and colour images with three; alpha channels are dropped. Every image must
//! have the same shape.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kka_shared::config::DatasetFormat;
use kka_shared::dataset::{dataset_files, FilesDigest};

use super::{read_file, DataError, RawDataset, RawSplit};

/// One image file, located by split and class folder.
struct Entry {
    path: PathBuf,
    is_train: bool,
    class_name: String,
}

/// Read every image under `root/train` and `root/test`.
pub fn load(root: &Path) -> Result<RawDataset, DataError> {
    let files = dataset_files(DatasetFormat::Folder, root)?;
    let entries = files.into_iter().map(|path| locate(root, path)).collect::<Result<Vec<_>, _>>()?;
    let class_names: Vec<String> =
        entries.iter().map(|entry| entry.class_name.clone()).collect::<BTreeSet<_>>().into_iter().collect();

    let mut digest = FilesDigest::new();
    let mut train = RawSplit::default();
    let mut test = RawSplit::default();
    let mut first: Option<(PathBuf, [usize; 3])> = None;
    for entry in &entries {
        let bytes = read_file(&entry.path)?;
        digest.start_file(root, &entry.path);
        digest.update(&bytes);

        let (shape, pixels) = decode(&entry.path, &bytes)?;
        check_shape(&entry.path, shape, &mut first)?;
        let split = if entry.is_train { &mut train } else { &mut test };
        // The position of a name in the sorted set is its label.
        let label = class_names.binary_search(&entry.class_name).unwrap_or_default() as u32;
        split.labels.push(label);
        split.pixels.extend_from_slice(&pixels);
    }

    let shape = first.map(|(_, shape)| shape).unwrap_or([0, 0, 0]);
    Ok(RawDataset { format: DatasetFormat::Folder, train, test, shape, class_names, files_digest: digest.finish() })
}

/// Find the split and class folder of an image path.
fn locate(root: &Path, path: PathBuf) -> Result<Entry, DataError> {
    let relative = path.strip_prefix(root).unwrap_or(&path);
    let parts: Vec<String> = relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.len() < 3 {
        return Err(DataError::NoClassFolder { path });
    }
    let is_train = parts[0] == "train";
    let class_name = parts[1].clone();
    Ok(Entry { path, is_train, class_name })
}

/// Decode an image into C×H×W u8 pixels, with one channel for grayscale and three otherwise.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<([usize; 3], Vec<u8>), DataError> {
    let image = image::load_from_memory(bytes).map_err(|source| DataError::Image { path: path.to_owned(), source })?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if !image.color().has_color() {
        return Ok(([1, height, width], image.into_luma8().into_raw()));
    }

    // image stores H×W×C; networks want C×H×W.
    let interleaved = image.into_rgb8().into_raw();
    let plane = height * width;
    let mut planar = vec![0u8; 3 * plane];
    for (offset, pixel) in interleaved.chunks_exact(3).enumerate() {
        for channel in 0..3 {
            planar[channel * plane + offset] = pixel[channel];
        }
    }
    Ok(([3, height, width], planar))
}

fn check_shape(path: &Path, shape: [usize; 3], first: &mut Option<(PathBuf, [usize; 3])>) -> Result<(), DataError> {
    match first {
        None => {
            *first = Some((path.to_owned(), shape));
            Ok(())
        }
        Some((first_path, expected)) if *expected != shape => Err(DataError::ShapeMismatch {
            path: path.to_owned(),
            found: shape,
            first: first_path.clone(),
            expected: *expected,
        }),
        Some(_) => Ok(()),
    }
}

/// Writers of image folders, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::Path;

    /// Write a `size`×`size` grayscale PNG whose pixels are all `level`.
    pub fn write_gray_png(path: &Path, size: u32, level: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(size, size, image::Luma([level])).save(path).unwrap();
    }

    /// Write an RGB PNG whose pixels are all `rgb`.
    pub fn write_rgb_png(path: &Path, size: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(size, size, image::Rgb(rgb)).save(path).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn classes_follow_sorted_folder_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_gray_png(&root.join("train/good/a.png"), 4, 10);
        write_gray_png(&root.join("train/good/b.png"), 4, 20);
        write_gray_png(&root.join("test/good/c.png"), 4, 30);
        write_gray_png(&root.join("test/crack/d.png"), 4, 40);

        let raw = load(root).unwrap();
        assert_eq!(raw.class_names, vec!["crack".to_string(), "good".to_string()]);
        assert_eq!(raw.train.labels, vec![1, 1]);
        // Sorted paths put test/crack before test/good.
        assert_eq!(raw.test.labels, vec![0, 1]);
        assert_eq!(raw.shape, [1, 4, 4]);
        assert_eq!(raw.train.pixels[16], 20);
        assert_eq!(raw.files_digest, kka_shared::dataset::files_digest(DatasetFormat::Folder, root).unwrap());
    }

    #[test]
    fn colour_images_become_planar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_rgb_png(&root.join("train/a/x.png"), 2, [1, 2, 3]);
        write_rgb_png(&root.join("test/a/y.png"), 2, [4, 5, 6]);
        let raw = load(root).unwrap();
        assert_eq!(raw.shape, [3, 2, 2]);
        assert_eq!(raw.train.pixels, vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn mixed_shapes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_gray_png(&root.join("train/a/x.png"), 4, 1);
        write_gray_png(&root.join("train/a/y.png"), 5, 1);
        write_gray_png(&root.join("test/a/z.png"), 4, 1);
        let error = load(root).unwrap_err();
        assert!(matches!(error, DataError::ShapeMismatch { found: [1, 5, 5], expected: [1, 4, 4], .. }), "{error}");
        assert!(error.to_string().contains("y.png"), "{error}");
    }

    #[test]
    fn image_outside_class_folder_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_gray_png(&root.join("train/loose.png"), 4, 1);
        write_gray_png(&root.join("test/a/z.png"), 4, 1);
        let error = load(root).unwrap_err();
        assert!(matches!(error, DataError::NoClassFolder { .. }), "{error}");
    }

    #[test]
    fn corrupt_png_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_gray_png(&root.join("test/a/z.png"), 4, 1);
        std::fs::create_dir_all(root.join("train/a")).unwrap();
        std::fs::write(root.join("train/a/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let error = load(root).unwrap_err();
        assert!(matches!(error, DataError::Image { .. }), "{error}");
        assert!(error.to_string().contains("broken.png"), "{error}");
    }
}
