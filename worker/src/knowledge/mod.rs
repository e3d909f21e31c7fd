//! Anomaly knowledge: concepts from the built-in knowledge base or from an LLM.
//!
//! - [`concept`]: a concept, its validation and its recipe.
//! - [`base`]: the knowledge base file (`config/knowledge.toml` or `knowledge.path`).
//! - [`llm`]: concepts requested from an OpenAI-compatible chat-completions API.
//! - [`http`]: retries with exponential backoff, shared with the HTTP image generator.

pub mod base;
pub mod concept;
pub mod http;
pub mod llm;

use std::path::PathBuf;

use kka_shared::config::{DatasetFormat, KnowledgeSettings, KnowledgeSourceKind};
use kka_shared::store::Store;

pub use base::KnowledgeBase;
pub use concept::{Concept, ConceptError};
pub use llm::LlmClient;

/// Error raised when concepts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("failed to read knowledge base {path}: {source}; fix knowledge.path or unset it to use the built-in base")]
    ReadBase { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not a valid knowledge base: {reason}")]
    ParseBase { origin: String, reason: String },
    #[error("{origin}: domain {domain} is invalid: {reason}")]
    InvalidDomain { origin: String, domain: String, reason: String },
    #[error("{origin}: concept {concept} is invalid: {reason}")]
    InvalidConcept { origin: String, concept: String, reason: String },
    #[error("knowledge domain {domain:?} is not in {origin}; use one of {known} in knowledge.domain")]
    UnknownDomain { domain: String, origin: String, known: String },
    #[error("knowledge domain {domain} has no {families} concepts for class {classes}; set knowledge.families or add concepts")]
    NoConcepts { domain: String, families: String, classes: String },
    #[error("LLM request to {url} failed after {attempts} attempts: {reason}")]
    LlmUnavailable { url: String, attempts: u32, reason: String },
    #[error("LLM at {url} rejected the request with HTTP {status}: {excerpt}; check knowledge.llm_model and the API key in ${key_env}")]
    LlmRejected { url: String, status: u16, excerpt: String, key_env: String },
    #[error("LLM at {url} sent no usable concepts in {attempts} attempts: {reason}; last reply began {excerpt:?}")]
    LlmMalformed { url: String, attempts: u32, reason: String, excerpt: String },
    #[error("failed to build the HTTP client: {0}")]
    Client(String),
    #[error("LLM reply cache: {0}")]
    Cache(#[from] kka_shared::store::StoreError),
}

impl KnowledgeError {
    /// Return whether retrying the task later may succeed. Only an unreachable or overloaded
    /// LLM and a Redis failure may clear up.
    pub fn is_retryable(&self) -> bool {
        match self {
            KnowledgeError::LlmUnavailable { .. } => true,
            KnowledgeError::Cache(error) => error.is_retryable(),
            _ => false,
        }
    }
}

/// Resolve `knowledge.domain` to a knowledge base domain, choosing one from the dataset format
/// for `auto`.
pub fn resolve_domain(setting: &str, format: DatasetFormat) -> String {
    if setting != "auto" {
        return setting.to_owned();
    }
    let domain = match format {
        DatasetFormat::FashionMnist => "clothing",
        DatasetFormat::Mnist => "digits",
        DatasetFormat::Cifar10 | DatasetFormat::Cifar100 => "natural",
        DatasetFormat::Folder => "defects",
    };
    domain.to_owned()
}

/// Names of the normal classes: `knowledge.class_names` when set, else the dataset's names.
/// A label without a name becomes "class K".
pub fn normal_class_names(settings: &KnowledgeSettings, dataset_names: &[String], normal_classes: &[u32]) -> Vec<String> {
    kka_shared::prompt::normal_class_names(&settings.class_names, dataset_names, normal_classes)
}

/// Everything that decides which concepts a generate request uses.
#[derive(Debug, Clone)]
pub struct ConceptRequest<'a> {
    pub settings: &'a KnowledgeSettings,
    pub format: DatasetFormat,
    /// Names of the normal classes.
    pub class_names: Vec<String>,
    /// Descriptions of the previous round's hard anomalies, for the LLM prompt.
    pub hard_examples: &'a [String],
    /// Descriptions of the previous round's easy anomalies, for the LLM prompt.
    pub easy_examples: &'a [String],
}

/// Load the concepts of a request from the configured source. The LLM source runs its HTTP
/// calls on `runtime` and caches replies in `cache` when one is given.
pub fn load_concepts(
    request: &ConceptRequest<'_>,
    runtime: &tokio::runtime::Handle,
    cache: Option<&Store>,
) -> Result<Vec<Concept>, KnowledgeError> {
    match request.settings.source {
        KnowledgeSourceKind::Builtin => {
            let base = KnowledgeBase::load(request.settings.path.as_deref())?;
            let domain = resolve_domain(&request.settings.domain, request.format);
            base.select(&domain, &request.class_names, &request.settings.families)
        }
        KnowledgeSourceKind::Llm => {
            let client = LlmClient::new(request.settings)?;
            let prompt = kka_shared::prompt::knowledge_prompt(
                request.settings,
                &request.class_names,
                request.hard_examples,
                request.easy_examples,
            );
            runtime.block_on(client.concepts(&prompt, cache))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_domain_follows_format() {
        assert_eq!(resolve_domain("auto", DatasetFormat::FashionMnist), "clothing");
        assert_eq!(resolve_domain("auto", DatasetFormat::Mnist), "digits");
        assert_eq!(resolve_domain("auto", DatasetFormat::Cifar100), "natural");
        assert_eq!(resolve_domain("auto", DatasetFormat::Folder), "defects");
        assert_eq!(resolve_domain("natural", DatasetFormat::Mnist), "natural");
    }

    #[test]
    fn class_names_prefer_settings_then_dataset() {
        let config = kka_shared::config::Config::from_toml("").unwrap();
        let dataset = vec!["a".to_string(), "b".to_string()];
        assert_eq!(normal_class_names(&config.knowledge, &dataset, &[1, 5]), vec!["b", "class 5"]);

        let config = kka_shared::config::Config::from_toml("[knowledge]\nclass_names = [\"x\", \"y\"]\n").unwrap();
        assert_eq!(normal_class_names(&config.knowledge, &dataset, &[0]), vec!["x"]);
    }
}
