//! The `kka-coordinator` subcommands. Each takes parsed arguments and returns when done.

pub mod bench;
pub mod smoke;
