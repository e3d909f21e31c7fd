//! `kka-worker generate`: anomalies of one normal class into a folder, without RabbitMQ or Redis.
//!
//! The folder gets one PNG per anomaly, `manifest.json` and `contact_sheet.png` (see
//! [`kka_shared::export`]). Ids read `generate.r0.s0.<index>`. With the procedural generator
//! the same config, class, count and seed give byte-identical files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use kka_shared::config::Config;
use kka_shared::export::{write_anomaly_folder, ExportItem};
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind};
use kka_shared::messages::GeneratorState;

use crate::generator::pipeline::{anomaly_record, image_pixels};
use crate::generator::{build_generator, generate_anomalies, torch_device, GenerationJob, Sampler};
use crate::knowledge::{self, ConceptRequest};

/// Experiment id written into the ids of CLI anomalies.
const CLI_EXPERIMENT: &str = "generate";

/// Arguments of `kka-worker generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Label of the normal class whose images are edited.
    #[arg(long)]
    pub normal_class: u32,
    /// Number of anomalies to generate.
    #[arg(long)]
    pub count: u32,
    /// Folder for the PNGs, manifest.json and contact_sheet.png; created if missing.
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the anomaly seeds; the same seed gives the same anomalies.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Severity range LO..HI within [0, 1], replacing generator.severity_min and severity_max.
    #[arg(long, value_parser = parse_severity_range)]
    pub severity: Option<(f64, f64)>,
}

/// Parse `LO..HI` with 0 <= LO <= HI <= 1.
fn parse_severity_range(text: &str) -> Result<(f64, f64), String> {
    let invalid = || format!("invalid severity range {text:?}: use LO..HI with 0 <= LO <= HI <= 1, such as 0.2..0.8");
    let (low, high) = text.split_once("..").ok_or_else(invalid)?;
    let low: f64 = low.trim().parse().map_err(|_| invalid())?;
    let high: f64 = high.trim().parse().map_err(|_| invalid())?;
    if !(0.0..=1.0).contains(&low) || !(0.0..=1.0).contains(&high) || low > high {
        return Err(invalid());
    }
    Ok((low, high))
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("failed to load the config")?;
    kka_shared::telemetry::init(&config.telemetry, false);
    if args.count == 0 {
        bail!("--count is 0; ask for at least one anomaly");
    }
    let started = Instant::now();

    let mut protocol = config.dataset.protocol.clone();
    protocol.normal_classes = vec![args.normal_class];
    let data = crate::data::load_one_class(&config.dataset, &protocol)
        .with_context(|| format!("failed to load normal class {} of {}", args.normal_class, config.dataset.path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the async runtime for HTTP requests")?;

    let request = ConceptRequest {
        settings: &config.knowledge,
        format: config.dataset.format,
        class_names: knowledge::normal_class_names(&config.knowledge, &data.class_names, &protocol.normal_classes),
        hard_examples: &[],
        easy_examples: &[],
    };
    let concepts = knowledge::load_concepts(&request, runtime.handle(), None).context("failed to load anomaly concepts")?;

    let (severity_min, severity_max) = args.severity.unwrap_or((config.generator.severity_min, config.generator.severity_max));
    let sampler = Sampler::new(&concepts, &GeneratorState::default(), severity_min, severity_max, config.generator.severity_bins)?;
    let device = torch_device(config.worker.device);
    let mut generator = build_generator(&config.generator, device, runtime.handle())?;

    let job = GenerationJob {
        images: &data.train.images,
        indices: &data.train.indices,
        concepts: &concepts,
        sampler: &sampler,
        seed: args.seed,
        range: 0..args.count,
        batch_size: config.generator.batch_size,
        device,
    };
    let anomalies = generate_anomalies(&job, generator.as_mut(), &|| false)?;

    let task_id = TaskId::new(ExperimentId::new(CLI_EXPERIMENT)?, RoundIndex(0), TaskKind::Generate, 0);
    let shape = data.shape.map(|side| side as u32);
    let records: Vec<_> = anomalies
        .iter()
        .map(|anomaly| anomaly_record(&task_id, anomaly, &concepts[anomaly.plan.concept], generator.as_ref(), shape))
        .collect();
    let sources = anomalies
        .iter()
        .map(|anomaly| match anomaly.source_index {
            Some(_) => image_pixels(&data.train.images, anomaly.plan.source_row).map(Some),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()
        .context("failed to read the source images")?;

    let items: Vec<ExportItem<'_>> = records
        .iter()
        .zip(&anomalies)
        .zip(&sources)
        .map(|((record, anomaly), source)| ExportItem { record, pixels: &anomaly.pixels, source: source.as_deref() })
        .collect();
    let summary = write_anomaly_folder(&args.output, &items)?;

    tracing::info!(
        count = summary.images,
        concepts = concepts.len(),
        generator = generator.name(),
        output = %args.output.display(),
        seconds = started.elapsed().as_secs_f64(),
        "anomalies written"
    );
    println!("wrote {} anomalies, {} and {}", summary.images, summary.manifest.display(), summary.contact_sheet.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_range_parses() {
        assert_eq!(parse_severity_range("0.2..0.8"), Ok((0.2, 0.8)));
        assert_eq!(parse_severity_range("0..1"), Ok((0.0, 1.0)));
    }

    #[test]
    fn severity_range_rejects_bad_input() {
        for bad in ["0.8..0.2", "0.2", "a..b", "-0.1..0.5", "0.5..1.5"] {
            let error = parse_severity_range(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
