//! TODO: `kka-worker baseline`

/// Arguments of `kka-worker baseline`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("kka-worker baseline is not built yet (config {:?})", args.config)
}
