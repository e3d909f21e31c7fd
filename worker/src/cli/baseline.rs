//! `kka-worker baseline`: train a detector on one normal class and evaluate it on the test split,
//! without RabbitMQ or Redis.
//!
//! Prints a one-line summary and writes a JSON report with the metrics, timings, throughput and
//! peak memory. Deep SAD and outlier exposure need labelled anomalies: a folder of PNG or JPEG
//! images given with `--anomalies`, such as the output of `kka-worker generate`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use kka_shared::config::{Config, DetectorKind, DetectorSettings};
use serde::Serialize;

use crate::data::{load_one_class, OneClassData};
use crate::detector::{configure_threads, torch_device, Detector, Phase, Training};
use crate::metrics::{aupr, auroc};

/// Arguments of `kka-worker baseline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Label of the normal class; every other class is anomalous in the test split.
    #[arg(long)]
    pub normal_class: u32,
    /// Detector to train: deep-svdd, or deep-sad and outlier-exposure with --anomalies.
    #[arg(long, default_value = "deep-svdd", value_parser = parse_kind)]
    pub detector: DetectorKind,
    /// Folder of labelled anomaly images (PNG or JPEG of the dataset's shape, such as the
    /// output of `kka-worker generate`); contact_sheet.png is skipped.
    #[arg(long)]
    pub anomalies: Option<PathBuf>,
    /// Path of the JSON report; its folder must exist.
    #[arg(long)]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N; replaces worker.device.
    #[arg(long)]
    pub device: Option<kka_shared::config::Device>,
    /// libtorch CPU threads (0: libtorch's default); replaces worker.threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Detector training epochs; replaces detector.epochs.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Autoencoder pretraining epochs (0 skips pretraining); replaces detector.pretrain_epochs.
    #[arg(long)]
    pub pretrain_epochs: Option<u32>,
    /// Seed of weight initialisation and batch order; replaces detector.seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_kind(text: &str) -> Result<DetectorKind, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("invalid detector {text:?}: use deep-svdd, deep-sad or outlier-exposure"))
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub detector: DetectorKind,
    pub network: String,
    pub normal_class: u32,
    pub class_name: String,
    pub auroc: f64,
    pub aupr: f64,
    /// Seconds of pretraining plus detector training, excluding data loading and evaluation.
    pub train_seconds: f64,
    pub pretrain_seconds: f64,
    pub epochs: u32,
    pub pretrain_epochs: u32,
    pub batch_size: usize,
    pub seed: u64,
    pub device: String,
    /// libtorch's intra-op thread count during the run.
    pub threads: i32,
    pub train_images: usize,
    pub labelled_anomalies: usize,
    pub test_images: usize,
    /// Training images processed per second over both phases.
    pub images_per_second: f64,
    /// Training images per second during autoencoder pretraining; absent without pretraining.
    pub pretrain_images_per_second: Option<f64>,
    /// Training images per second during detector training.
    pub train_images_per_second: f64,
    /// Mean seconds per detector training epoch.
    pub seconds_per_epoch: f64,
    /// Share of the training time spent drawing batch orders and gathering batches.
    pub batching_fraction: f64,
    pub data_seconds: f64,
    pub evaluation_seconds: f64,
    /// Peak resident set size of the process (VmHWM), in bytes; absent where /proc is missing.
    pub peak_rss_bytes: Option<u64>,
    pub dataset_fingerprint: String,
}

/// Training time and throughput, summed over epochs.
#[derive(Debug, Default)]
struct Timing {
    pretrain_seconds: f64,
    detector_seconds: f64,
    batching_seconds: f64,
    /// Images of both phases.
    images: usize,
    pretrain_images: usize,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("failed to load the config")?;
    kka_shared::telemetry::init(&config.telemetry, false);
    check_anomaly_option(args.detector, args.anomalies.as_deref())?;
    check_output_folder(&args.output)?;
    let settings = detector_settings(&config, &args)?;
    let device_setting = args.device.unwrap_or(config.worker.device);
    configure_threads(args.threads.unwrap_or(config.worker.threads));
    let device = torch_device(device_setting)?;

    let data_started = Instant::now();
    let protocol = kka_shared::config::DatasetProtocol { normal_classes: vec![args.normal_class], ..config.dataset.protocol.clone() };
    let data = load_one_class(&config.dataset, &protocol)
        .with_context(|| format!("failed to load the {:?} dataset at {}", config.dataset.format, config.dataset.path.display()))?;
    let data_seconds = data_started.elapsed().as_secs_f64();

    let anomalies = match &args.anomalies {
        Some(folder) => Some(load_anomaly_folder(folder, data.shape)?),
        None => None,
    };
    let (detector, timing) = train(&data, anomalies.as_ref(), &settings, device)?;
    let evaluation_started = Instant::now();
    let scores = detector.score(&data.test.images).context("failed to score the test split")?;
    let auroc = auroc(&scores, &data.test_is_anomaly)?;
    let aupr = aupr(&scores, &data.test_is_anomaly)?;
    let evaluation_seconds = evaluation_started.elapsed().as_secs_f64();

    let mut report =
        build_report(&args, &settings, &data, detector.as_ref(), device_setting, &timing, [auroc, aupr, data_seconds, evaluation_seconds]);
    report.labelled_anomalies = anomalies.as_ref().map_or(0, |images| images.size()[0] as usize);
    write_report(&args.output, &report)?;
    println!(
        "{} class {} ({}): AUROC {:.4}, AUPR {:.4}, {} + {} epochs in {:.1} s ({:.0} images/s), peak RSS {} MiB",
        report.detector,
        report.normal_class,
        report.class_name,
        report.auroc,
        report.aupr,
        report.pretrain_epochs,
        report.epochs,
        report.train_seconds,
        report.images_per_second,
        report.peak_rss_bytes.map_or("unknown".to_string(), |bytes| (bytes >> 20).to_string()),
    );
    Ok(())
}

fn detector_settings(config: &Config, args: &Args) -> anyhow::Result<DetectorSettings> {
    let mut settings = config.detector.clone();
    settings.kind = args.detector;
    settings.epochs = args.epochs.unwrap_or(settings.epochs);
    settings.pretrain_epochs = args.pretrain_epochs.unwrap_or(settings.pretrain_epochs);
    settings.seed = args.seed.unwrap_or(settings.seed);
    settings.validate().context("invalid detector settings after applying the command-line options")?;
    Ok(settings)
}

fn train(
    data: &OneClassData,
    anomalies: Option<&tch::Tensor>,
    settings: &DetectorSettings,
    device: tch::Device,
) -> anyhow::Result<(Box<dyn Detector>, Timing)> {
    let mut training = Training::new(data, anomalies, settings, device).context("failed to set up training")?;
    let mut timing = Timing::default();
    while !training.is_finished() {
        let report = training.run_epoch().context("training failed")?;
        match report.phase {
            Phase::Pretrain => {
                timing.pretrain_seconds += report.seconds;
                timing.pretrain_images += report.images;
            }
            _ => timing.detector_seconds += report.seconds,
        }
        timing.batching_seconds += report.batching_seconds;
        timing.images += report.images;
        tracing::info!(phase = report.phase.as_str(), epoch = report.epoch, loss = report.loss, seconds = report.seconds, "epoch finished");
    }
    Ok((training.finish()?, timing))
}

/// `values` contains AUROC, AUPR, data-loading seconds and evaluation seconds.
fn build_report(
    args: &Args,
    settings: &DetectorSettings,
    data: &OneClassData,
    detector: &dyn Detector,
    device: kka_shared::config::Device,
    timing: &Timing,
    values: [f64; 4],
) -> Report {
    let [auroc, aupr, data_seconds, evaluation_seconds] = values;
    let train_seconds = timing.pretrain_seconds + timing.detector_seconds;
    Report {
        detector: settings.kind,
        network: detector.info().architecture.clone(),
        normal_class: args.normal_class,
        class_name: data.class_names.get(args.normal_class as usize).cloned().unwrap_or_default(),
        auroc,
        aupr,
        train_seconds,
        pretrain_seconds: timing.pretrain_seconds,
        epochs: settings.epochs,
        pretrain_epochs: settings.pretrain_epochs,
        batch_size: settings.batch_size,
        seed: settings.seed,
        device: device.to_string(),
        threads: tch::get_num_threads(),
        train_images: data.train.len(),
        labelled_anomalies: 0,
        test_images: data.test.len(),
        images_per_second: timing.images as f64 / train_seconds.max(f64::MIN_POSITIVE),
        pretrain_images_per_second: (timing.pretrain_seconds > 0.0).then(|| timing.pretrain_images as f64 / timing.pretrain_seconds),
        train_images_per_second: (timing.images - timing.pretrain_images) as f64 / timing.detector_seconds.max(f64::MIN_POSITIVE),
        seconds_per_epoch: timing.detector_seconds / f64::from(settings.epochs.max(1)),
        batching_fraction: timing.batching_seconds / train_seconds.max(f64::MIN_POSITIVE),
        data_seconds,
        evaluation_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        dataset_fingerprint: data.fingerprint.clone(),
    }
}

/// Reject a detector that needs labelled anomalies without `--anomalies`, and Deep SVDD with it.
fn check_anomaly_option(kind: DetectorKind, anomalies: Option<&std::path::Path>) -> anyhow::Result<()> {
    match (kind.needs_anomalies(), anomalies) {
        (true, None) => bail!(
            "{kind} needs labelled anomalies; pass a folder of anomaly images with --anomalies DIR (such as the output of `kka-worker generate`), or use --detector deep-svdd"
        ),
        (false, Some(folder)) => bail!(
            "deep-svdd trains without labelled anomalies, so --anomalies {} would be ignored; use --detector deep-sad or outlier-exposure, or drop --anomalies",
            folder.display()
        ),
        _ => Ok(()),
    }
}

/// Load the PNG and JPEG images directly inside `folder`, sorted by name, as an N×C×H×W tensor
/// of [0, 1] values. Every image must have the dataset's `shape`.
fn load_anomaly_folder(folder: &std::path::Path, shape: [i64; 3]) -> anyhow::Result<tch::Tensor> {
    let entries = std::fs::read_dir(folder).with_context(|| format!("failed to read the --anomalies folder {}", folder.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("failed to read the --anomalies folder {}", folder.display()))?.path();
        let is_sheet = path.file_name().is_some_and(|name| name == kka_shared::export::CONTACT_SHEET_FILE);
        if path.is_file() && kka_shared::dataset::is_image(&path) && !is_sheet {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("the --anomalies folder {} has no PNG or JPEG images", folder.display());
    }

    let expected = shape.map(|dim| dim as usize);
    let mut pixels = Vec::with_capacity(paths.len() * expected.iter().product::<usize>());
    for path in &paths {
        let bytes = std::fs::read(path).with_context(|| format!("failed to read anomaly image {}", path.display()))?;
        let (found, image) = crate::data::folder::decode(path, &bytes)?;
        if found != expected {
            bail!("anomaly image {} has shape {found:?} (C, H, W) but the dataset images have {expected:?}; generate anomalies from this dataset", path.display());
        }
        pixels.extend_from_slice(&image);
    }
    let [c, h, w] = shape;
    let images = tch::Tensor::f_from_slice(&pixels)?.f_view([paths.len() as i64, c, h, w])?.f_to_kind(tch::Kind::Float)?.f_div_scalar(255.0)?;
    Ok(images)
}

/// Fail before training, not after, when the report cannot be written.
fn check_output_folder(path: &std::path::Path) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !folder.is_dir() {
        bail!("the folder of --output {} does not exist; create it first", path.display());
    }
    Ok(())
}

fn write_report(path: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("failed to encode the report")?;
    std::fs::write(path, json + "\n").with_context(|| format!("failed to write the report to {}", path.display()))
}

/// Peak resident set size (VmHWM in /proc/self/status), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kibibytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kibibytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_names_parse() {
        assert_eq!(parse_kind("deep-svdd").unwrap(), DetectorKind::DeepSvdd);
        assert_eq!(parse_kind("outlier-exposure").unwrap(), DetectorKind::OutlierExposure);
        let error = parse_kind("svm").unwrap_err();
        assert!(error.contains("svm"), "{error}");
    }

    #[test]
    fn anomaly_option_matches_detector() {
        let folder = std::path::Path::new("anomalies");
        assert!(check_anomaly_option(DetectorKind::DeepSvdd, None).is_ok());
        assert!(check_anomaly_option(DetectorKind::DeepSad, Some(folder)).is_ok());
        let error = check_anomaly_option(DetectorKind::OutlierExposure, None).unwrap_err().to_string();
        assert!(error.contains("--anomalies"), "{error}");
        let error = check_anomaly_option(DetectorKind::DeepSvdd, Some(folder)).unwrap_err().to_string();
        assert!(error.contains("ignored"), "{error}");
    }

    #[test]
    fn anomaly_folder_skips_contact_sheet_and_checks_shape() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([255])).save(dir.path().join("b.png")).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([0])).save(dir.path().join("a.png")).unwrap();
        image::RgbImage::new(100, 50).save(dir.path().join(kka_shared::export::CONTACT_SHEET_FILE)).unwrap();
        std::fs::write(dir.path().join("manifest.json"), "[]").unwrap();

        let images = load_anomaly_folder(dir.path(), [1, 28, 28]).unwrap();
        assert_eq!(images.size(), vec![2, 1, 28, 28]);
        // Sorted by name: a.png (black) comes first.
        assert_eq!(images.get(0).max().double_value(&[]), 0.0);
        assert_eq!(images.get(1).min().double_value(&[]), 1.0);

        let error = load_anomaly_folder(dir.path(), [3, 32, 32]).unwrap_err().to_string();
        assert!(error.contains("a.png"), "{error}");
    }

    #[test]
    fn peak_rss_is_read_from_proc() {
        let bytes = peak_rss_bytes().unwrap();
        assert!(bytes > 1 << 20, "{bytes}");
    }
}
