//! The `kka-coordinator` subcommands. Each takes parsed arguments and returns when done.

pub mod bench;
mod common;
pub mod export;
pub mod resume;
pub mod run;
pub mod smoke;
pub mod status;
