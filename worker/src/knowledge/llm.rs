//! Anomaly concepts from an OpenAI-compatible chat-completions API.
//!
//! The user message is [`kka_shared::prompt::anomaly_prompt`]; the system message sets the
//! number of concepts. The reply must be JSON with a `concepts` array. Invalid concepts in an
//! otherwise good reply are skipped with a warning; a reply without any valid concept counts
//! as malformed and is retried. Replies are cached in Redis by request hash.

use std::collections::BTreeMap;
use std::time::Duration;

use kka_shared::config::KnowledgeSettings;
use kka_shared::store::{llm_request_hash, Store};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::http::{self, AttemptError, Backoff};
use super::{Concept, KnowledgeError};

/// Largest chat-completions response read, in bytes.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// Prefix of the ids of LLM concepts; the rest is a hash of the concept's content.
pub const LLM_ID_PREFIX: &str = "llm.";

/// A chat-completions client configured from `[knowledge]`.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    /// `{llm_url}/chat/completions`, which may contain a password.
    endpoint: String,
    /// The endpoint with any password hidden, for messages.
    endpoint_label: String,
    model: String,
    api_key: Option<String>,
    key_env: String,
    max_attempts: u32,
    concepts: u32,
    cache_ttl_secs: u64,
    backoff: Backoff,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint may contain a password and the key is a secret, so neither is printed.
        f.debug_struct("LlmClient")
            .field("endpoint", &self.endpoint_label)
            .field("model", &self.model)
            .field("api_key_set", &self.api_key.is_some())
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ConceptReply {
    concepts: Vec<serde_json::Value>,
}

/// One concept as the LLM sends it. Unknown keys, such as a severity, are ignored.
#[derive(Deserialize)]
struct ReplyConcept {
    description: String,
    operation: String,
    #[serde(default)]
    params: BTreeMap<String, f64>,
}

impl LlmClient {
    /// Build a client; the API key comes from the environment variable `llm_api_key_env`.
    pub fn new(settings: &KnowledgeSettings) -> Result<LlmClient, KnowledgeError> {
        let Some(url) = &settings.llm_url else {
            return Err(KnowledgeError::Client("knowledge.llm_url is unset; set the base URL of the chat-completions API".into()));
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.llm_timeout_secs))
            .build()
            .map_err(|error| KnowledgeError::Client(error.to_string()))?;
        let api_key = std::env::var(&settings.llm_api_key_env).ok().filter(|key| !key.is_empty());

        Ok(LlmClient {
            http,
            endpoint: format!("{}/chat/completions", url.expose().trim_end_matches('/')),
            endpoint_label: format!("{}/chat/completions", url.redacted().trim_end_matches('/')),
            model: settings.llm_model.clone(),
            api_key,
            key_env: settings.llm_api_key_env.clone(),
            max_attempts: settings.llm_max_attempts,
            concepts: settings.llm_concepts,
            cache_ttl_secs: settings.llm_cache_ttl_secs,
            backoff: Backoff::default(),
        })
    }

    /// Return a copy that waits `backoff` between attempts. Tests use short delays.
    pub fn with_backoff(mut self, backoff: Backoff) -> LlmClient {
        self.backoff = backoff;
        self
    }

    /// Build the system message, which sets the reply format and the number of concepts.
    pub fn system_message(&self) -> String {
        format!(
            "You are an expert in visual inspection who writes anomaly concepts for training anomaly detectors. \
             Return exactly {} concepts as one JSON object with a \"concepts\" array, and nothing else.",
            self.concepts
        )
    }

    /// Return the concepts for a prompt: from the cache when it contains a usable reply, else
    /// from the API.
    pub async fn concepts(&self, prompt: &str, cache: Option<&Store>) -> Result<Vec<Concept>, KnowledgeError> {
        let system = self.system_message();
        let hash = llm_request_hash(&[&self.endpoint_label, &self.model, &system, prompt]);

        if let Some(store) = cache {
            if let Some(reply) = store.llm_cached_reply(&hash).await? {
                match parse_reply(&reply) {
                    Ok(concepts) => {
                        tracing::debug!(hash = %hash, concepts = concepts.len(), "llm reply from cache");
                        return Ok(concepts);
                    }
                    Err(error) => tracing::warn!(hash = %hash, error = ?error, "cached llm reply is unusable, requesting a new one"),
                }
            }
        }

        let (reply, concepts) = self.request(&system, prompt).await?;
        if let Some(store) = cache {
            store.cache_llm_reply(&hash, &reply, self.cache_ttl_secs).await?;
        }
        tracing::info!(url = %self.endpoint_label, model = %self.model, concepts = concepts.len(), "llm concepts received");
        Ok(concepts)
    }

    async fn request(&self, system: &str, prompt: &str) -> Result<(String, Vec<Concept>), KnowledgeError> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "response_format": {"type": "json_object"},
        });

        let result = http::with_retries("llm chat completion", self.max_attempts, self.backoff, |_| async {
            let reply = self.send_once(&body).await?;
            let concepts = parse_reply(&reply)?;
            Ok((reply, concepts))
        })
        .await;
        result.map_err(|failure| self.failure_error(failure))
    }

    /// Send one request and return the message content of the first choice.
    async fn send_once(&self, body: &serde_json::Value) -> Result<String, AttemptError> {
        let mut request = self.http.post(&self.endpoint).json(body);
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| AttemptError::Rejected {
                status: 0,
                excerpt: format!("the API key in ${} contains characters not allowed in an HTTP header", self.key_env),
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }

        let mut response = request.send().await.map_err(|error| http::send_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = http::read_limited(&mut response, MAX_REPLY_BYTES).await?;
        if !status.is_success() {
            return Err(http::status_error(status, &headers, &bytes));
        }
        check_json_content_type(&headers, &bytes)?;
        message_content(&bytes)
    }

    fn failure_error(&self, failure: http::RetryFailure) -> KnowledgeError {
        let url = self.endpoint_label.clone();
        match failure.last {
            AttemptError::Transient { reason, .. } => {
                KnowledgeError::LlmUnavailable { url, attempts: failure.attempts, reason }
            }
            AttemptError::Malformed { reason, excerpt } => {
                KnowledgeError::LlmMalformed { url, attempts: failure.attempts, reason, excerpt }
            }
            AttemptError::Rejected { status, excerpt } => {
                KnowledgeError::LlmRejected { url, status, excerpt, key_env: self.key_env.clone() }
            }
        }
    }
}

fn check_json_content_type(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Result<(), AttemptError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if content_type.to_ascii_lowercase().contains("json") {
        return Ok(());
    }
    Err(AttemptError::Malformed {
        reason: format!("the response has content type {content_type:?}, expected application/json"),
        excerpt: http::excerpt(body),
    })
}

fn message_content(body: &[u8]) -> Result<String, AttemptError> {
    let malformed = |reason: String| AttemptError::Malformed { reason, excerpt: http::excerpt(body) };
    let response: ChatResponse = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("the response is not a chat completion: {error}")))?;
    let Some(choice) = response.choices.into_iter().next() else {
        return Err(malformed("the response has no choices".into()));
    };
    choice.message.content.ok_or_else(|| malformed("the first choice has no message content".into()))
}

/// Parse the concepts out of a reply's message content. Code fences and prose around the JSON
/// object are tolerated.
pub fn parse_reply(content: &str) -> Result<Vec<Concept>, AttemptError> {
    let malformed = |reason: String| AttemptError::Malformed { reason, excerpt: http::excerpt(content.as_bytes()) };
    let json = json_object_text(content).ok_or_else(|| malformed("the reply contains no JSON object".into()))?;
    let reply: ConceptReply = serde_json::from_str(json)
        .map_err(|error| malformed(format!("the reply is not {{\"concepts\": [...]}}: {error}")))?;

    let mut concepts: Vec<Concept> = Vec::new();
    let mut skipped = Vec::new();
    for (position, value) in reply.concepts.into_iter().enumerate() {
        match parse_concept(value) {
            Ok(concept) if concepts.iter().any(|known| known.id == concept.id) => {}
            Ok(concept) => concepts.push(concept),
            Err(reason) => skipped.push(format!("concept {position}: {reason}")),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(skipped = skipped.len(), reasons = ?skipped, "llm reply contained invalid concepts");
    }
    if concepts.is_empty() {
        let reason = if skipped.is_empty() { "the concepts array is empty".to_owned() } else { skipped.join("; ") };
        return Err(malformed(reason));
    }
    Ok(concepts)
}

fn parse_concept(value: serde_json::Value) -> Result<Concept, String> {
    let entry: ReplyConcept = serde_json::from_value(value).map_err(|error| error.to_string())?;
    let id = concept_id(&entry);
    Concept::new(&id, &entry.description, &entry.operation, &entry.params, None, None).map_err(|error| error.to_string())
}

/// Derive a stable id from the concept's content, so the same reply gives the same ids.
fn concept_id(entry: &ReplyConcept) -> String {
    let mut hasher = Sha256::new();
    hasher.update(entry.operation.as_bytes());
    for (name, value) in &entry.params {
        hasher.update(format!("\0{name}={value}").as_bytes());
    }
    hasher.update(b"\0");
    hasher.update(entry.description.trim().as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("{LLM_ID_PREFIX}{}", &digest[..12])
}

/// Slice the text from the first `{` to the last `}`.
fn json_object_text(content: &str) -> Option<&str> {
    let start = content.find('{')?;
    let end = content.rfind('}')?;
    (start < end).then(|| &content[start..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reply_accepts_fenced_json() {
        let content = "Here you go:\n```json\n{\"concepts\": [{\"description\": \"a coat upside down\", \"operation\": \"flip\", \"params\": {\"axis\": 1}}]}\n```";
        let concepts = parse_reply(content).unwrap();
        assert_eq!(concepts.len(), 1);
        assert_eq!(concepts[0].operation, "flip");
        assert_eq!(concepts[0].params["axis"], 1.0);
        assert!(concepts[0].id.starts_with(LLM_ID_PREFIX));
    }

    #[test]
    fn parse_reply_skips_invalid_concepts() {
        let content = r#"{"concepts": [
            {"description": "melted", "operation": "melt"},
            {"description": "too far", "operation": "rotate", "params": {"max_degrees": 900}},
            {"description": "rotated coat", "operation": "rotate", "severity": 0.4}
        ]}"#;
        let concepts = parse_reply(content).unwrap();
        assert_eq!(concepts.len(), 1);
        assert_eq!(concepts[0].description, "rotated coat");
    }

    #[test]
    fn parse_reply_rejects_unusable_replies() {
        for content in ["no json here", "{\"ideas\": []}", "{\"concepts\": []}", "{\"concepts\": [{\"operation\": \"melt\", \"description\": \"x\"}]}"] {
            let error = parse_reply(content).unwrap_err();
            assert!(matches!(error, AttemptError::Malformed { .. }), "{content}: {error:?}");
        }
    }

    #[test]
    fn concept_ids_are_stable_and_distinct() {
        let content = r#"{"concepts": [
            {"description": "a", "operation": "flip"},
            {"description": "b", "operation": "flip"},
            {"description": "a", "operation": "flip"}
        ]}"#;
        let first = parse_reply(content).unwrap();
        assert_eq!(first.len(), 2, "the repeated concept is dropped");
        assert_ne!(first[0].id, first[1].id);
        assert_eq!(first, parse_reply(content).unwrap());
    }
}
