//! LLM replies cached by prompt hash, under `P:llm-cache:<sha256>`, so that a redelivered
//! generate task, or another shard with the same prompt, does not pay for the request twice.

use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};

/// SHA-256 of the parts that decide an LLM reply, as hex. Parts are joined with a NUL byte, so
/// moving text from one part to the next changes the hash.
pub fn llm_request_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

impl Store {
    fn llm_cache_key(&self, hash: &str) -> String {
        self.key(&format!("llm-cache:{hash}"))
    }

    /// The cached reply for a request hash, if any.
    pub async fn llm_cached_reply(&self, hash: &str) -> Result<Option<String>, StoreError> {
        self.connection().get(self.llm_cache_key(hash)).await.map_err(StoreError::redis("GET llm-cache"))
    }

    /// Cache a reply for `ttl_secs` seconds; 0 keeps it until the key is deleted.
    pub async fn cache_llm_reply(&self, hash: &str, reply: &str, ttl_secs: u64) -> Result<(), StoreError> {
        let key = self.llm_cache_key(hash);
        let mut connection = self.connection();
        if ttl_secs == 0 {
            let () = connection.set(key, reply).await.map_err(StoreError::redis("SET llm-cache"))?;
        } else {
            let () = connection.set_ex(key, reply, ttl_secs).await.map_err(StoreError::redis("SETEX llm-cache"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_separates_parts() {
        assert_ne!(llm_request_hash(&["ab", "c"]), llm_request_hash(&["a", "bc"]));
        assert_eq!(llm_request_hash(&["a", "b"]), llm_request_hash(&["a", "b"]));
        assert_eq!(llm_request_hash(&[]).len(), 64);
    }
}
