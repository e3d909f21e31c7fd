//! The wire and storage layer shared by the kka coordinator and workers.
//!
//! - [`ids`]: typed ids for everything that crosses RabbitMQ or Redis.
//! - [`messages`]: versioned task messages and completion events.
//! - [`config`]: layered configuration, parsed then validated.
//! - [`export`]: anomaly folders of PNGs, a manifest and a contact sheet.
//! - [`prompt`]: class names, the procedural operation catalogue and the LLM anomaly prompt.
//! - [`broker`]: RabbitMQ topology, publishing with confirms, consuming with manual acks.
//! - [`store`]: Redis keys for experiment state, anomalies, pools and checkpoints.
//! - [`telemetry`]: tracing-subscriber set-up for every binary.
//! - [`shutdown`]: signal handling shared by the binaries.

pub mod broker;
pub mod config;
pub mod dataset;
pub mod export;
pub mod ids;
pub mod messages;
pub mod prompt;
pub mod shutdown;
pub mod records;
pub mod store;
pub mod telemetry;
pub mod testing;
