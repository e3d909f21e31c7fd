//! TODO: `kka-coordinator smoke`

/// Arguments of `kka-coordinator smoke`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file layered over config/default.toml.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("kka-coordinator smoke is not built yet (config {:?})", args.config)
}
