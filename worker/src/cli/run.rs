//! TODO: `kka-worker run`

/// Arguments of `kka-worker run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("kka-worker run is not built yet (config {:?})", args.config)
}
