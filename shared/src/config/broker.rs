use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretUrl};

/// Longest `broker.queue_prefix`. The longest name built from it, `P.events.<experiment>`, then
/// stays far below AMQP's 255-byte limit on queue names.
pub const MAX_QUEUE_PREFIX_LEN: usize = 100;

/// RabbitMQ settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// `amqp://` or `amqps://` URL, credentials included.
    pub url: SecretUrl,
    /// Prefix of every queue and exchange name, so that experiments and tests can share a broker.
    pub queue_prefix: String,
    /// Unacknowledged deliveries a consumer may hold at once, per queue it consumes.
    pub prefetch: u16,
    /// AMQP heartbeat interval in seconds; the connection is declared dead after two missed beats.
    pub heartbeat_secs: u16,
    /// Maximum size of one message body in bytes. Larger messages are dead-lettered unread.
    pub max_payload_bytes: usize,
    /// First delay before reconnecting after the broker goes away, in milliseconds; doubles up to
    /// `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl BrokerSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.url.scheme(), Some("amqp" | "amqps")) {
            return Err(ConfigError::invalid("broker.url", &self.url, "use an amqp:// or amqps:// URL"));
        }
        check_prefix("broker.queue_prefix", &self.queue_prefix)?;
        if self.queue_prefix.len() > MAX_QUEUE_PREFIX_LEN {
            return Err(ConfigError::invalid(
                "broker.queue_prefix",
                format!("{:?}", self.queue_prefix),
                format!("use at most {MAX_QUEUE_PREFIX_LEN} characters, so that queue names stay under AMQP's 255-byte limit"),
            ));
        }
        if self.heartbeat_secs == 0 {
            return Err(ConfigError::invalid(
                "broker.heartbeat_secs",
                0,
                "use at least 1; without heartbeats a dead connection goes unnoticed",
            ));
        }
        if self.prefetch == 0 {
            return Err(ConfigError::invalid("broker.prefetch", 0, "use at least 1; 0 would mean unlimited"));
        }
        if self.max_payload_bytes < 1024 {
            return Err(ConfigError::invalid("broker.max_payload_bytes", self.max_payload_bytes, "use at least 1024"));
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_initial_ms > self.reconnect_max_ms {
            return Err(ConfigError::Conflict {
                first: "broker.reconnect_initial_ms",
                second: "broker.reconnect_max_ms",
                fix: format!(
                    "the initial delay ({} ms) must be positive and at most the maximum ({} ms)",
                    self.reconnect_initial_ms, self.reconnect_max_ms
                ),
            });
        }
        Ok(())
    }
}

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `redis://` or `rediss://` URL, credentials included.
    pub url: SecretUrl,
    /// Prefix of every key kka writes.
    pub key_prefix: String,
}

impl StoreSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.url.scheme(), Some("redis" | "rediss")) {
            return Err(ConfigError::invalid("store.url", &self.url, "use a redis:// or rediss:// URL"));
        }
        check_prefix("store.key_prefix", &self.key_prefix)
    }
}

fn check_prefix(key: &'static str, prefix: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if prefix.is_empty() || !prefix.chars().all(allowed) {
        return Err(ConfigError::invalid(key, format!("{prefix:?}"), "use ASCII letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn wrong_scheme_names_key_and_fix() {
        let error = Config::from_toml("[broker]\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(error.contains("broker.url") && error.contains("amqp://"), "{error}");
        let error = Config::from_toml("[store]\nurl = \"amqp://x\"\n").unwrap_err().to_string();
        assert!(error.contains("store.url") && error.contains("redis://"), "{error}");
    }

    #[test]
    fn password_is_hidden_in_errors() {
        let error = Config::from_toml("[broker]\nurl = \"http://u:topsecret@x\"\n").unwrap_err().to_string();
        assert!(!error.contains("topsecret"), "{error}");
    }

    #[test]
    fn zero_prefetch_is_rejected() {
        let error = Config::from_toml("[broker]\nprefetch = 0\n").unwrap_err().to_string();
        assert!(error.contains("broker.prefetch"), "{error}");
    }

    #[test]
    fn reconnect_delays_conflict_names_both_keys() {
        let error = Config::from_toml("[broker]\nreconnect_initial_ms = 5000\nreconnect_max_ms = 100\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("broker.reconnect_initial_ms") && error.contains("broker.reconnect_max_ms"), "{error}");
    }

    #[test]
    fn long_queue_prefix_and_zero_heartbeat_are_rejected() {
        let long = "p".repeat(super::MAX_QUEUE_PREFIX_LEN + 1);
        let error = Config::from_toml(&format!("[broker]\nqueue_prefix = \"{long}\"\n")).unwrap_err().to_string();
        assert!(error.contains("broker.queue_prefix"), "{error}");
        let error = Config::from_toml("[broker]\nheartbeat_secs = 0\n").unwrap_err().to_string();
        assert!(error.contains("broker.heartbeat_secs"), "{error}");
    }

    #[test]
    fn bad_prefix_is_rejected() {
        let error = Config::from_toml("[store]\nkey_prefix = \"a b\"\n").unwrap_err().to_string();
        assert!(error.contains("store.key_prefix"), "{error}");
    }
}
