//! The kka worker library: datasets, detectors, generators, task handlers and the task runner.
//!
//! - [`data`]: dataset loaders, the one-class protocol and a per-process cache.
//! - [`detector`]: Deep SAD, Deep SVDD and the outlier-exposure classifier on libtorch.
//! - [`metrics`]: AUROC and AUPR.
//! - [`knowledge`]: anomaly concepts from the built-in knowledge base or an LLM.
//! - [`generator`]: procedural, TorchScript and HTTP image-API generators.
//! - [`tasks`]: what a worker does with each task kind.
//! - [`runner`]: the consume, run, commit, acknowledge loop.
//! - [`cli`]: the `kka-worker` subcommands.

pub mod cli;
pub mod data;
pub mod detector;
pub mod generator;
pub mod knowledge;
pub mod metrics;
pub mod runner;
pub mod tasks;
