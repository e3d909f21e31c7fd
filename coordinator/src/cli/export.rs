//! `kka-coordinator export`: write a stored round's anomalies as PNG files with a manifest, in
//! the format of `kka-worker generate`.

use std::path::PathBuf;

use anyhow::Context;
use kka_shared::export::{write_anomaly_folder, ExportItem};
use kka_shared::ids::{ExperimentId, RoundIndex};

use crate::sources::TrainingImages;

use super::common;

/// Arguments of `kka-coordinator export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Id of the experiment.
    pub experiment: String,
    /// Round whose generated anomalies to export, 1 or later.
    #[arg(long)]
    pub round: u32,
    /// Folder to write `<anomaly id>.png`, `manifest.json` and `contact_sheet.png` into.
    #[arg(long)]
    pub output: PathBuf,
    /// Config file for the store settings, layered over config/default.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = common::validate(common::load_raw_config(args.config.as_deref())?)?;
    kka_shared::telemetry::init(&config.telemetry, false);
    let experiment = ExperimentId::new(args.experiment.as_str()).context("invalid experiment id")?;
    common::runtime()?.block_on(async {
        let store = common::connect_store(&config).await?;
        export(&store, &experiment, RoundIndex(args.round), &args.output).await
    })
}

async fn export(
    store: &kka_shared::store::Store,
    experiment: &ExperimentId,
    round: RoundIndex,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let Some(stored) = store.experiment_config(experiment).await? else {
        anyhow::bail!(
            "experiment {experiment} not found under store.key_prefix {:?}; run `kka-coordinator status` to list experiments",
            store.prefix()
        );
    };
    let dataset = &stored.dataset;
    let ids = store.anomaly_ids_of_round(experiment, round).await?;
    if ids.is_empty() {
        anyhow::bail!("round {round} of experiment {experiment} has no stored anomalies; round 0 generates none, so pick a generated round with --round 1 or later");
    }
    let anomalies = store.load_anomalies(&ids).await?;
    let training = training_images(dataset).await;

    let items: Vec<ExportItem<'_>> = anomalies
        .iter()
        .map(|anomaly| {
            let source = training.as_ref().and_then(|images| source_of(images, &anomaly.record));
            ExportItem { record: &anomaly.record, pixels: &anomaly.pixels, source }
        })
        .collect();
    let summary = tokio::task::block_in_place(|| write_anomaly_folder(output, &items))
        .with_context(|| format!("failed to export round {round} of {experiment} to {}", output.display()))?;
    println!("exported {} anomalies of round {round} to {}", summary.images, output.display());
    println!("manifest: {}", summary.manifest.display());
    Ok(())
}

/// Reads the dataset's training images for the contact sheet. Without them the export still
/// works, with grey tiles in place of the sources, so a failure is logged, not returned.
async fn training_images(dataset: &kka_shared::config::DatasetSettings) -> Option<TrainingImages> {
    let settings = dataset.clone();
    match tokio::task::spawn_blocking(move || crate::sources::training_images(&settings)).await {
        Ok(Ok(images)) => images,
        Ok(Err(error)) => {
            tracing::warn!(%error, "failed to read the training images; the contact sheet shows no sources");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "the training image reader panicked; the contact sheet shows no sources");
            None
        }
    }
}

/// Returns the anomaly's source image, when it has one of the anomaly's shape.
fn source_of<'a>(images: &'a TrainingImages, record: &kka_shared::records::AnomalyRecord) -> Option<&'a [u8]> {
    if images.shape != record.shape {
        return None;
    }
    images.image(record.source_index?)
}
