//! The `kka-worker` subcommands. Each takes parsed arguments and returns when done.

pub mod baseline;
pub mod generate;
pub mod run;
