//! Anomaly folders: one PNG per anomaly, `manifest.json` and `contact_sheet.png`.
//!
//! `kka-worker generate` writes freshly generated anomalies this way, and the coordinator's
//! export writes stored ones, so the writer works on plain u8 pixels and records.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use serde::Serialize;

use crate::records::AnomalyRecord;

/// Name of the manifest file in an anomaly folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Name of the contact sheet in an anomaly folder.
pub const CONTACT_SHEET_FILE: &str = "contact_sheet.png";

/// Most anomalies shown on a contact sheet; the first ones in the given order are shown.
pub const CONTACT_SHEET_MAX: usize = 256;

/// Source and anomaly pairs per contact sheet row.
const SHEET_PAIRS_PER_ROW: usize = 8;

/// Gap between tiles on the contact sheet, in pixels.
const SHEET_GAP: u32 = 4;

/// Grey level of the tile shown where a source image is unknown.
const MISSING_SOURCE_GREY: u8 = 96;

/// Why an anomaly folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("failed to encode {path} as PNG: {source}")]
    Encode { path: PathBuf, source: image::ImageError },
    #[error("anomaly {id}: {reason}")]
    InvalidPixels { id: String, reason: String },
}

/// One anomaly to export: its record, its pixels and, when known, its source image's pixels.
/// Pixels are u8, C×H×W as in `record.shape`.
#[derive(Debug, Clone, Copy)]
pub struct ExportItem<'a> {
    pub record: &'a AnomalyRecord,
    pub pixels: &'a [u8],
    pub source: Option<&'a [u8]>,
}

/// One manifest entry: the PNG's file name, the operation, and the full record.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestEntry<'a> {
    /// PNG file name, relative to the folder.
    pub file: String,
    pub operation: &'a str,
    #[serde(flatten)]
    pub record: &'a AnomalyRecord,
}

/// What [`write_anomaly_folder`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub images: usize,
    pub manifest: PathBuf,
    pub contact_sheet: PathBuf,
}

/// Write one PNG per anomaly (`<anomaly id>.png`), `manifest.json` (an array of
/// [`ManifestEntry`] in the given order) and `contact_sheet.png` (sources beside their
/// anomalies) into `dir`, creating it if needed. The same input gives byte-identical files.
pub fn write_anomaly_folder(dir: &Path, items: &[ExportItem<'_>]) -> Result<ExportSummary, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Write { path: dir.to_owned(), source })?;

    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let file = format!("{}.png", item.record.id);
        let image = to_dynamic_image(item.pixels, item.record.shape)
            .map_err(|reason| ExportError::InvalidPixels { id: item.record.id.to_string(), reason })?;
        save_png(&image, &dir.join(&file))?;
        entries.push(ManifestEntry { file, operation: &item.record.recipe.operation, record: item.record });
    }

    let manifest = dir.join(MANIFEST_FILE);
    // Records hold only strings, numbers and string-keyed maps, so serialising cannot fail.
    let mut json = serde_json::to_vec_pretty(&entries).unwrap_or_default();
    json.push(b'\n');
    std::fs::write(&manifest, json).map_err(|source| ExportError::Write { path: manifest.clone(), source })?;

    let contact_sheet = dir.join(CONTACT_SHEET_FILE);
    save_png(&DynamicImage::ImageRgb8(contact_sheet_image(items)?), &contact_sheet)?;
    Ok(ExportSummary { images: items.len(), manifest, contact_sheet })
}

/// An image from u8 C×H×W pixels with 1 (grey) or 3 (RGB) channels.
pub fn to_dynamic_image(pixels: &[u8], shape: [u32; 3]) -> Result<DynamicImage, String> {
    let [channels, height, width] = shape;
    let plane = (height * width) as usize;
    if pixels.len() != channels as usize * plane {
        return Err(format!("{} pixel bytes do not match shape {shape:?} (C, H, W)", pixels.len()));
    }
    match channels {
        1 => GrayImage::from_raw(width, height, pixels.to_vec())
            .map(DynamicImage::ImageLuma8)
            .ok_or_else(|| format!("shape {shape:?} is too large")),
        3 => {
            let interleaved: Vec<u8> = (0..plane).flat_map(|i| [pixels[i], pixels[plane + i], pixels[2 * plane + i]]).collect();
            RgbImage::from_raw(width, height, interleaved)
                .map(DynamicImage::ImageRgb8)
                .ok_or_else(|| format!("shape {shape:?} is too large"))
        }
        other => Err(format!("{other} channels cannot be written as PNG; use 1 or 3")),
    }
}

fn save_png(image: &DynamicImage, path: &Path) -> Result<(), ExportError> {
    image.save_with_format(path, ImageFormat::Png).map_err(|source| match source {
        image::ImageError::IoError(source) => ExportError::Write { path: path.to_owned(), source },
        other => ExportError::Encode { path: path.to_owned(), source: other },
    })
}

/// Rows of (source, anomaly) pairs, enlarged so that small images stay visible.
fn contact_sheet_image(items: &[ExportItem<'_>]) -> Result<RgbImage, ExportError> {
    let shown = &items[..items.len().min(CONTACT_SHEET_MAX)];
    let tile_height = shown.iter().map(|item| item.record.shape[1]).max().unwrap_or(1);
    let tile_width = shown.iter().map(|item| item.record.shape[2]).max().unwrap_or(1);
    // Enlarge tiles to at least 56 pixels, by a whole factor so pixels stay sharp.
    let scale = 56u32.div_ceil(tile_height.max(tile_width)).max(1);
    let (tile_height, tile_width) = (tile_height * scale, tile_width * scale);

    let columns = shown.len().clamp(1, SHEET_PAIRS_PER_ROW) as u32;
    let rows = shown.len().div_ceil(SHEET_PAIRS_PER_ROW).max(1) as u32;
    let pair_width = 2 * tile_width + SHEET_GAP;
    let width = columns * pair_width + (columns + 1) * 2 * SHEET_GAP;
    let height = rows * tile_height + (rows + 1) * SHEET_GAP;
    let mut sheet = RgbImage::from_pixel(width, height, image::Rgb([32, 32, 32]));

    for (position, item) in shown.iter().enumerate() {
        let left = 2 * SHEET_GAP + (position as u32 % columns) * (pair_width + 2 * SHEET_GAP);
        let top = SHEET_GAP + (position as u32 / columns) * (tile_height + SHEET_GAP);
        let id = item.record.id.to_string();
        let invalid = |reason| ExportError::InvalidPixels { id: id.clone(), reason };

        let anomaly = to_dynamic_image(item.pixels, item.record.shape).map_err(invalid)?.to_rgb8();
        match item.source {
            Some(source) => {
                let source = to_dynamic_image(source, item.record.shape).map_err(invalid)?.to_rgb8();
                draw_scaled(&mut sheet, &source, left, top, scale);
            }
            None => fill(&mut sheet, left, top, tile_width, tile_height, MISSING_SOURCE_GREY),
        }
        draw_scaled(&mut sheet, &anomaly, left + tile_width + SHEET_GAP, top, scale);
    }
    Ok(sheet)
}

fn draw_scaled(sheet: &mut RgbImage, image: &RgbImage, left: u32, top: u32, scale: u32) {
    for (x, y, pixel) in image.enumerate_pixels() {
        for dy in 0..scale {
            for dx in 0..scale {
                sheet.put_pixel(left + x * scale + dx, top + y * scale + dy, *pixel);
            }
        }
    }
}

fn fill(sheet: &mut RgbImage, left: u32, top: u32, width: u32, height: u32, grey: u8) {
    for y in top..top + height {
        for x in left..left + width {
            sheet.put_pixel(x, y, image::Rgb([grey, grey, grey]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AnomalyId, ExperimentId, RoundIndex, TaskId, TaskKind};
    use crate::records::Recipe;

    fn record(index: u32, shape: [u32; 3]) -> AnomalyRecord {
        let experiment = ExperimentId::new("exp").unwrap();
        AnomalyRecord {
            id: AnomalyId::new(experiment.clone(), RoundIndex(1), 0, index),
            task_id: TaskId::new(experiment, RoundIndex(1), TaskKind::Generate, 0),
            round: RoundIndex(1),
            concept_id: "c".into(),
            concept: "a rotated coat".into(),
            recipe: Recipe { operation: "rotate".into(), params: [("max_degrees".to_string(), 90.0)].into(), severity: 0.5 },
            severity: 0.5,
            generator: "procedural".into(),
            generator_version: "1".into(),
            source_index: Some(7),
            seed: 42,
            shape,
        }
    }

    #[test]
    fn folder_has_pngs_manifest_and_sheet() {
        let dir = tempfile::tempdir().unwrap();
        let grey = record(0, [1, 4, 4]);
        let rgb = record(1, [3, 2, 2]);
        let grey_pixels = vec![200u8; 16];
        let rgb_pixels: Vec<u8> = (0..12).collect();
        let items = [
            ExportItem { record: &grey, pixels: &grey_pixels, source: Some(&grey_pixels) },
            ExportItem { record: &rgb, pixels: &rgb_pixels, source: None },
        ];
        let summary = write_anomaly_folder(dir.path(), &items).unwrap();
        assert_eq!(summary.images, 2);

        let png = image::open(dir.path().join("exp.r1.s0.0.png")).unwrap();
        assert_eq!((png.width(), png.height()), (4, 4));
        let rgb_png = image::open(dir.path().join("exp.r1.s0.1.png")).unwrap().to_rgb8();
        assert_eq!(rgb_png.get_pixel(1, 0).0, [1, 5, 9], "channels are interleaved from C×H×W");

        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary.manifest).unwrap()).unwrap();
        assert_eq!(manifest[0]["file"], "exp.r1.s0.0.png");
        assert_eq!(manifest[0]["operation"], "rotate");
        assert_eq!(manifest[0]["id"], "exp.r1.s0.0");
        assert_eq!(manifest[0]["concept"], "a rotated coat");
        assert_eq!(manifest[0]["severity"], 0.5);
        assert_eq!(manifest[0]["source_index"], 7);
        assert_eq!(manifest[0]["seed"], 42);
        assert_eq!(manifest[0]["recipe"]["params"]["max_degrees"], 90.0);

        let sheet = image::open(&summary.contact_sheet).unwrap();
        assert!(sheet.width() > 4 * 14, "tiles are enlarged: {}", sheet.width());
    }

    #[test]
    fn wrong_pixel_count_names_the_anomaly() {
        let dir = tempfile::tempdir().unwrap();
        let record = record(3, [1, 4, 4]);
        let pixels = vec![0u8; 5];
        let error = write_anomaly_folder(dir.path(), &[ExportItem { record: &record, pixels: &pixels, source: None }]).unwrap_err();
        assert!(error.to_string().contains("exp.r1.s0.3"), "{error}");
        assert!(error.to_string().contains("5 pixel bytes"), "{error}");
    }

    #[test]
    fn unsupported_channel_count_is_rejected() {
        assert!(to_dynamic_image(&[0; 8], [2, 2, 2]).unwrap_err().contains("2 channels"));
    }
}
