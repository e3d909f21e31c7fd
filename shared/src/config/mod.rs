//! Layered configuration: `config/default.toml` (built into the binaries), then the file given
//! with `--config`, then environment variables named `KKA__SECTION__KEY`.
//!
//! Loading has two steps. [`RawConfig`] is the deserialized form, which rejects unknown keys.
//! [`Config`] is what the rest of kka uses: it can only be built by [`RawConfig::validate`], so
//! holding one means every cross-field rule has been checked.

mod broker;
mod curriculum;
mod dataset;
mod detector;
mod generator;
mod secret;
mod telemetry;
mod worker;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use broker::{BrokerSettings, StoreSettings};
pub use curriculum::{CurriculumSettings, HardRatioSchedule, PoolPolicy, SplitRule};
pub use dataset::{DatasetFormat, DatasetProtocol, DatasetSettings, Preprocessing};
pub use detector::{DetectorKind, DetectorSettings, NetworkKind};
pub use generator::{GeneratorKind, GeneratorSettings, KnowledgeSettings, KnowledgeSourceKind};
pub use secret::SecretUrl;
pub use telemetry::{LogFormat, TelemetrySettings};
pub use worker::{Device, WorkerSettings};

/// The defaults, compiled in so that binaries run from any folder.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Prefix of environment variables that override config keys: `KKA__BROKER__URL` sets `broker.url`.
pub const ENV_PREFIX: &str = "KKA";

/// A config error that names the key, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config: {0}; check the file given with --config and any KKA__* environment variables")]
    Load(#[from] config::ConfigError),
    #[error("invalid {key} = {value}: {fix}")]
    Invalid { key: &'static str, value: String, fix: String },
    #[error("{first} and {second} conflict: {fix}")]
    Conflict { first: &'static str, second: &'static str, fix: String },
}

impl ConfigError {
    pub fn invalid(key: &'static str, value: impl std::fmt::Display, fix: impl Into<String>) -> Self {
        ConfigError::Invalid { key, value: value.to_string(), fix: fix.into() }
    }
}

/// The deserialized config, before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub broker: BrokerSettings,
    pub store: StoreSettings,
    pub telemetry: TelemetrySettings,
    pub worker: WorkerSettings,
    pub dataset: DatasetSettings,
    pub detector: DetectorSettings,
    pub generator: GeneratorSettings,
    pub knowledge: KnowledgeSettings,
    pub curriculum: CurriculumSettings,
}

/// A validated config. Build one with [`Config::load`] or [`RawConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config(RawConfig);

impl std::ops::Deref for Config {
    type Target = RawConfig;
    fn deref(&self) -> &RawConfig {
        &self.0
    }
}

impl Config {
    /// Load the layers (defaults, optional file, environment) and validate them.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        RawConfig::load(file, std::env::vars())?.validate()
    }

    /// Load from the defaults plus a TOML string, ignoring the environment. Meant for tests.
    pub fn from_toml(overrides: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.validate()
    }

    pub fn into_raw(self) -> RawConfig {
        self.0
    }
}

impl RawConfig {
    /// Merge the layers. `env` is passed in so that tests do not depend on the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "--config",
                    path.display(),
                    "the file does not exist; pass the path of a TOML file such as config/default.toml",
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> =
            env.into_iter().filter(|(key, _)| key.starts_with("KKA__")).collect();
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("dataset.normal_classes")
            .with_list_parse_key("detector.lr_milestones")
            .source(Some(env));
        Ok(builder.add_source(environment).build()?.try_deserialize()?)
    }

    /// Check every field and cross-field rule, returning the first problem found.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.broker.validate()?;
        self.store.validate()?;
        self.worker.validate()?;
        self.dataset.validate()?;
        self.detector.validate()?;
        self.generator.validate()?;
        self.knowledge.validate()?;
        self.curriculum.validate()?;
        Ok(Config(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let config = RawConfig::load(None, env(&[])).unwrap().validate().unwrap();
        assert_eq!(config.store.key_prefix, "kka");
    }

    #[test]
    fn environment_overrides_defaults() {
        let raw = RawConfig::load(
            None,
            env(&[("KKA__STORE__KEY_PREFIX", "other"), ("KKA__BROKER__PREFETCH", "9"), ("UNRELATED", "x")]),
        )
        .unwrap();
        assert_eq!(raw.store.key_prefix, "other");
        assert_eq!(raw.broker.prefetch, 9);
    }

    #[test]
    fn file_layer_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "[broker]\nprefetch = 3\nqueue_prefix = \"fromfile\"\n").unwrap();
        let raw = RawConfig::load(Some(&path), env(&[("KKA__BROKER__PREFETCH", "5")])).unwrap();
        assert_eq!(raw.broker.queue_prefix, "fromfile");
        assert_eq!(raw.broker.prefetch, 5);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = Config::from_toml("[broker]\nprefech = 3\n").unwrap_err();
        assert!(error.to_string().contains("prefech"), "{error}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let error = Config::from_toml("[brokers]\nprefetch = 3\n").unwrap_err();
        assert!(error.to_string().contains("brokers"), "{error}");
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let error = RawConfig::load(Some(Path::new("/no/such/kka.toml")), env(&[])).unwrap_err();
        assert!(error.to_string().contains("/no/such/kka.toml"), "{error}");
    }

    #[test]
    fn malformed_toml_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[broker\nprefetch = ").unwrap();
        assert!(matches!(RawConfig::load(Some(&path), env(&[])), Err(ConfigError::Load(_))));
    }
}
