//! The kka coordinator library: the curriculum state machine, hard/easy splitting, pools,
//! the generator update, reports, and the smoke job and broker benchmark.

pub mod cli;
pub mod curriculum;
pub mod engine;
pub mod plan;
pub mod preflight;
pub mod plot;
pub mod report;
pub mod sources;
