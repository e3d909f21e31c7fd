use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretUrl};
use crate::prompt::OperationFamily;

/// Which generator turns anomaly knowledge into images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// Knowledge-guided edits of normal images with libtorch tensor ops. Needs no network.
    Procedural,
    /// A user-supplied TorchScript module: `forward(normal_batch, condition) -> anomaly_batch`.
    Torchscript,
    /// An OpenAI-compatible image API (`/images/generations` or `/images/edits`).
    HttpImage,
}

/// Generator settings. They travel inside generate tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSettings {
    pub kind: GeneratorKind,
    /// Lowest and highest severity sampled, in [0, 1].
    pub severity_min: f64,
    pub severity_max: f64,
    /// Number of severity bins whose weights the curriculum moves toward hard anomalies.
    pub severity_bins: usize,
    /// Anomalies generated per libtorch batch (procedural and TorchScript generators).
    pub batch_size: usize,
    /// Path of the TorchScript module, for `kind = "torchscript"`.
    pub torchscript_path: Option<PathBuf>,
    /// Base URL of the image API, such as `https://api.openai.com/v1`, for `kind = "http-image"`.
    pub image_api_url: Option<SecretUrl>,
    pub image_api_model: String,
    /// `generations` (text to image) or `edits` (image to image from a normal sample).
    pub image_api_mode: String,
    /// Environment variable that holds the image API key.
    pub image_api_key_env: String,
    /// Largest image API response accepted, in bytes.
    pub image_api_max_bytes: usize,
    /// Seconds before an image API request times out.
    pub image_api_timeout_secs: u64,
    /// Image size requested from the image API, such as `1024x1024`. The reply is resized to
    /// the dataset's shape.
    pub image_api_size: String,
    /// Image API requests in flight at once.
    pub image_api_concurrency: usize,
    /// Attempts per image, counting timeouts, 429 and 5xx responses and corrupt images.
    pub image_api_max_attempts: u32,
}

impl GeneratorSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let in_unit = |v: f64| (0.0..=1.0).contains(&v);
        if !in_unit(self.severity_min) || !in_unit(self.severity_max) || self.severity_min > self.severity_max {
            return Err(ConfigError::Conflict {
                first: "generator.severity_min",
                second: "generator.severity_max",
                fix: format!(
                    "both must lie in [0, 1] with min <= max, but they are {} and {}",
                    self.severity_min, self.severity_max
                ),
            });
        }
        if self.severity_bins == 0 {
            return Err(ConfigError::invalid("generator.severity_bins", 0, "use at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("generator.batch_size", 0, "use at least 1, such as 512"));
        }
        self.validate_image_api()?;
        match self.kind {
            GeneratorKind::Torchscript if self.torchscript_path.is_none() => Err(ConfigError::Conflict {
                first: "generator.kind",
                second: "generator.torchscript_path",
                fix: "kind \"torchscript\" needs the path of a TorchScript module".into(),
            }),
            GeneratorKind::HttpImage if self.image_api_url.is_none() => Err(ConfigError::Conflict {
                first: "generator.kind",
                second: "generator.image_api_url",
                fix: "kind \"http-image\" needs the base URL of an OpenAI-compatible image API".into(),
            }),
            GeneratorKind::HttpImage if !matches!(self.image_api_mode.as_str(), "generations" | "edits") => {
                Err(ConfigError::invalid("generator.image_api_mode", &self.image_api_mode, "use \"generations\" or \"edits\""))
            }
            _ => Ok(()),
        }
    }

    fn validate_image_api(&self) -> Result<(), ConfigError> {
        if self.image_api_concurrency == 0 {
            return Err(ConfigError::invalid("generator.image_api_concurrency", 0, "use at least 1"));
        }
        if self.image_api_max_attempts == 0 {
            return Err(ConfigError::invalid("generator.image_api_max_attempts", 0, "use at least 1"));
        }
        if self.image_api_max_bytes == 0 {
            return Err(ConfigError::invalid("generator.image_api_max_bytes", 0, "use a byte limit such as 8388608"));
        }
        if self.image_api_timeout_secs == 0 {
            return Err(ConfigError::invalid("generator.image_api_timeout_secs", 0, "use at least 1"));
        }
        let valid_size = self
            .image_api_size
            .split_once('x')
            .is_some_and(|(width, height)| width.parse::<u32>().is_ok_and(|w| w > 0) && height.parse::<u32>().is_ok_and(|h| h > 0));
        if !valid_size {
            return Err(ConfigError::invalid("generator.image_api_size", &self.image_api_size, "use WIDTHxHEIGHT in pixels, such as 1024x1024"));
        }
        Ok(())
    }
}

/// Where anomaly knowledge comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnowledgeSourceKind {
    /// The knowledge base compiled in from `config/knowledge.toml`, or the file in `knowledge.path`.
    Builtin,
    /// An OpenAI-compatible chat-completions endpoint.
    Llm,
}

/// Knowledge source settings. They travel inside generate tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSettings {
    pub source: KnowledgeSourceKind,
    /// A knowledge base TOML file replacing the built-in one. Empty means built-in.
    pub path: Option<PathBuf>,
    /// Knowledge base domain: `auto` (chosen from the dataset format) or a domain of the
    /// knowledge base, such as `clothing`, `digits`, `natural` or `defects` in the built-in one.
    pub domain: String,
    /// Concept families to generate (`local`, `global`). Empty means the domain's default.
    pub families: Vec<OperationFamily>,
    /// Captions of normal images, put into the LLM prompt.
    pub captions: Vec<String>,
    /// Human-readable names of the dataset's classes, indexed by label. Empty means the dataset's own.
    pub class_names: Vec<String>,
    /// Base URL of the chat-completions API, such as `http://127.0.0.1:8000/v1`.
    pub llm_url: Option<SecretUrl>,
    pub llm_model: String,
    /// Environment variable that holds the API key; unset or empty sends no key.
    pub llm_api_key_env: String,
    /// Seconds before one LLM request times out.
    pub llm_timeout_secs: u64,
    /// Attempts per prompt, counting malformed replies, timeouts, 429 and 5xx answers.
    pub llm_max_attempts: u32,
    /// Concepts requested from the LLM per prompt.
    pub llm_concepts: u32,
    /// Seconds an LLM reply stays in the Redis cache; 0 keeps it until the key is deleted.
    pub llm_cache_ttl_secs: u64,
}

impl KnowledgeSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source == KnowledgeSourceKind::Llm && self.llm_url.is_none() {
            return Err(ConfigError::Conflict {
                first: "knowledge.source",
                second: "knowledge.llm_url",
                fix: "source \"llm\" needs the base URL of an OpenAI-compatible chat-completions API".into(),
            });
        }
        if self.llm_max_attempts == 0 {
            return Err(ConfigError::invalid("knowledge.llm_max_attempts", 0, "use at least 1"));
        }
        if self.llm_timeout_secs == 0 {
            return Err(ConfigError::invalid("knowledge.llm_timeout_secs", 0, "use at least 1"));
        }
        if self.llm_concepts == 0 {
            return Err(ConfigError::invalid("knowledge.llm_concepts", 0, "use at least 1, such as 8"));
        }

        // Domains beyond the built-in ones may come from knowledge.path, so loading the base
        // checks that the domain exists.
        let valid_domain = !self.domain.is_empty()
            && self.domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !valid_domain {
            return Err(ConfigError::invalid(
                "knowledge.domain",
                format!("{:?}", self.domain),
                "use auto or a domain name of the knowledge base, such as clothing, digits, natural or defects",
            ));
        }

        let mut families = self.families.clone();
        families.sort_unstable();
        families.dedup();
        if families.len() != self.families.len() {
            return Err(ConfigError::invalid("knowledge.families", format!("{:?}", self.families), "list each family once"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn torchscript_without_path_names_both_keys() {
        let error = Config::from_toml("[generator]\nkind = \"torchscript\"\n").unwrap_err().to_string();
        assert!(error.contains("generator.kind") && error.contains("generator.torchscript_path"), "{error}");
    }

    #[test]
    fn llm_without_url_names_both_keys() {
        let error = Config::from_toml("[knowledge]\nsource = \"llm\"\n").unwrap_err().to_string();
        assert!(error.contains("knowledge.source") && error.contains("knowledge.llm_url"), "{error}");
    }

    #[test]
    fn inverted_severity_range_is_rejected() {
        let error = Config::from_toml("[generator]\nseverity_min = 0.8\nseverity_max = 0.2\n").unwrap_err().to_string();
        assert!(error.contains("generator.severity_min"), "{error}");
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let error = Config::from_toml("[generator]\nbatch_size = 0\n").unwrap_err().to_string();
        assert!(error.contains("generator.batch_size"), "{error}");
    }

    #[test]
    fn malformed_image_size_is_rejected() {
        for bad in ["1024", "0x10", "axb", "10x"] {
            let error = Config::from_toml(&format!("[generator]\nimage_api_size = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(error.contains("generator.image_api_size"), "{bad}: {error}");
        }
    }

    #[test]
    fn zero_image_api_limits_are_rejected() {
        for key in ["image_api_concurrency", "image_api_max_attempts", "image_api_max_bytes", "image_api_timeout_secs"] {
            let error = Config::from_toml(&format!("[generator]\n{key} = 0\n")).unwrap_err().to_string();
            assert!(error.contains(&format!("generator.{key}")), "{error}");
        }
    }

    #[test]
    fn knowledge_families_parse_and_reject_repeats() {
        let config = Config::from_toml("[knowledge]\nfamilies = [\"local\"]\n").unwrap();
        assert_eq!(config.knowledge.families, vec![crate::prompt::OperationFamily::Local]);
        let error = Config::from_toml("[knowledge]\nfamilies = [\"local\", \"local\"]\n").unwrap_err().to_string();
        assert!(error.contains("knowledge.families"), "{error}");
        let error = Config::from_toml("[knowledge]\nfamilies = [\"semantic\"]\n").unwrap_err().to_string();
        assert!(error.contains("semantic"), "{error}");
    }

    #[test]
    fn knowledge_domain_must_be_a_name() {
        let config = Config::from_toml("[knowledge]\ndomain = \"my-domain\"\n").unwrap();
        assert_eq!(config.knowledge.domain, "my-domain");
        let error = Config::from_toml("[knowledge]\ndomain = \"two words\"\n").unwrap_err().to_string();
        assert!(error.contains("knowledge.domain"), "{error}");
    }

    #[test]
    fn zero_llm_limits_are_rejected() {
        for key in ["llm_timeout_secs", "llm_concepts", "llm_max_attempts"] {
            let error = Config::from_toml(&format!("[knowledge]\n{key} = 0\n")).unwrap_err().to_string();
            assert!(error.contains(&format!("knowledge.{key}")), "{error}");
        }
    }

    #[test]
    fn unknown_generator_is_rejected() {
        let error = Config::from_toml("[generator]\nkind = \"stable-diffusion\"\n").unwrap_err().to_string();
        assert!(error.contains("stable-diffusion"), "{error}");
    }
}
