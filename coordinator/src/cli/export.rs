//! `kka-coordinator export`: write a stored round's anomalies as PNG files with a manifest, in
//! the format of `kka-worker generate`.

use std::path::PathBuf;

use anyhow::Context;
use kka_shared::export::{write_anomaly_folder, ExportItem};
use kka_shared::ids::{ExperimentId, RoundIndex};

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
    if store.experiment_config(experiment).await?.is_none() {
        anyhow::bail!(
            "experiment {experiment} not found under store.key_prefix {:?}; run `kka-coordinator status` to list experiments",
            store.prefix()
        );
    }
    let ids = store.anomaly_ids_of_round(experiment, round).await?;
    if ids.is_empty() {
        anyhow::bail!("round {round} of experiment {experiment} has no stored anomalies; round 0 generates none, so pick a generated round with --round 1 or later");
    }
    let anomalies = store.load_anomalies(&ids).await?;

    // NOTE: source images are not exported: the coordinator does not load the dataset, so the
    // contact sheet shows a grey tile where the normal source image would be.
    let items: Vec<ExportItem<'_>> =
        anomalies.iter().map(|a| ExportItem { record: &a.record, pixels: &a.pixels, source: None }).collect();
    let summary = tokio::task::block_in_place(|| write_anomaly_folder(output, &items))
        .with_context(|| format!("failed to export round {round} of {experiment} to {}", output.display()))?;
    println!("exported {} anomalies of round {round} to {}", summary.images, output.display());
    println!("manifest: {}", summary.manifest.display());
    Ok(())
}
