use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where libtorch runs a worker's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal; `cuda` alone means ordinal 0.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = ConfigError;
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::invalid("worker.device", format!("{value:?}"), "use \"cpu\", \"cuda\" or \"cuda:N\"");
        match value {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(invalid)?;
                ordinal.parse().map(Device::Cuda).map_err(|_| invalid())
            }
        }
    }
}

impl TryFrom<String> for Device {
    type Error = ConfigError;
    fn try_from(value: String) -> Result<Self, ConfigError> {
        value.parse()
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Settings of one worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Worker id used in logs and events. Empty means `<hostname>-<pid>`.
    pub id: String,
    pub device: Device,
    /// libtorch intra-op CPU threads. 0 means libtorch's default.
    pub threads: usize,
    /// Task kinds this worker consumes.
    pub task_kinds: Vec<crate::ids::TaskKind>,
    /// Seconds in-flight tasks may run after SIGINT or SIGTERM before they are requeued.
    pub shutdown_grace_secs: u64,
    /// Maximum time, in seconds, that a train task runs before it saves its progress to Redis,
    /// re-publishes itself and acknowledges the delivery. It must stay below RabbitMQ's consumer
    /// acknowledgement timeout (`consumer_timeout`, 30 minutes by default).
    pub task_slice_secs: u64,
    /// Interval, in seconds, at which a worker refreshes its liveness record in Redis.
    pub heartbeat_secs: u64,
    /// Tasks one worker process runs at once. `broker.prefetch` may be larger, so that the next
    /// deliveries are already waiting when a task finishes.
    pub concurrency: usize,
    /// Attempts a task gets when its handler keeps failing with a retryable error; the last
    /// failure is then treated as fatal. Redeliveries after a worker crash are not counted.
    pub max_attempts: u32,
    /// Delay before a failed attempt is re-published, in milliseconds. It doubles with each
    /// attempt, up to 60 seconds.
    pub retry_delay_ms: u64,
}

/// RabbitMQ's default consumer acknowledgement timeout, in seconds.
pub const RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_SECS: u64 = 30 * 60;

/// Upper bound of `worker.concurrency`, far above what one process can use.
pub const MAX_CONCURRENCY: usize = 4096;

/// Upper bound of `worker.retry_delay_ms` and of the doubled delays derived from it.
pub const MAX_RETRY_DELAY_MS: u64 = 60_000;

impl WorkerSettings {
    /// RabbitMQ's default consumer acknowledgement timeout, in seconds.
    pub const RABBITMQ_CONSUMER_TIMEOUT_SECS: u64 = RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_SECS;

    /// Delay before re-publishing a task whose attempt number `attempt` (1-based) failed.
    pub fn retry_delay(&self, attempt: u32) -> std::time::Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        let millis = self.retry_delay_ms.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY_MS);
        std::time::Duration::from_millis(millis)
    }
}

impl WorkerSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.id.is_empty() {
            crate::ids::WorkerId::new(self.id.clone())
                .map_err(|error| ConfigError::invalid("worker.id", &self.id, error.reason))?;
        }
        if self.task_kinds.is_empty() {
            return Err(ConfigError::invalid("worker.task_kinds", "[]", "list at least one of generate, score, train, noop"));
        }
        if self.task_slice_secs == 0 || self.task_slice_secs >= RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_SECS {
            return Err(ConfigError::invalid(
                "worker.task_slice_secs",
                self.task_slice_secs,
                "use a positive value below 1800, RabbitMQ's default consumer acknowledgement timeout",
            ));
        }
        if self.heartbeat_secs == 0 {
            return Err(ConfigError::invalid("worker.heartbeat_secs", 0, "use at least 1"));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                self.concurrency,
                format!("use a value from 1 to {MAX_CONCURRENCY}"),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid("worker.max_attempts", 0, "use at least 1; 1 means no retries"));
        }
        if self.retry_delay_ms > MAX_RETRY_DELAY_MS {
            return Err(ConfigError::invalid(
                "worker.retry_delay_ms",
                self.retry_delay_ms,
                format!("use at most {MAX_RETRY_DELAY_MS} ms"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn device_parses_cpu_and_cuda() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_device_in_config_names_the_key() {
        let error = Config::from_toml("[worker]\ndevice = \"tpu\"\n").unwrap_err().to_string();
        assert!(error.contains("worker.device") || error.contains("tpu"), "{error}");
    }

    #[test]
    fn zero_concurrency_and_attempts_are_rejected() {
        let error = Config::from_toml("[worker]\nconcurrency = 0\n").unwrap_err().to_string();
        assert!(error.contains("worker.concurrency"), "{error}");
        let error = Config::from_toml("[worker]\nmax_attempts = 0\n").unwrap_err().to_string();
        assert!(error.contains("worker.max_attempts"), "{error}");
        let error = Config::from_toml("[worker]\nretry_delay_ms = 60001\n").unwrap_err().to_string();
        assert!(error.contains("worker.retry_delay_ms"), "{error}");
    }

    #[test]
    fn retry_delay_doubles_up_to_cap() {
        let config = Config::from_toml("[worker]\nretry_delay_ms = 500\n").unwrap();
        assert_eq!(config.worker.retry_delay(1).as_millis(), 500);
        assert_eq!(config.worker.retry_delay(2).as_millis(), 1000);
        assert_eq!(config.worker.retry_delay(4).as_millis(), 4000);
        assert_eq!(config.worker.retry_delay(40).as_millis(), 60_000);
    }

    #[test]
    fn slice_above_ack_timeout_is_rejected() {
        let error = Config::from_toml("[worker]\ntask_slice_secs = 3600\n").unwrap_err().to_string();
        assert!(error.contains("worker.task_slice_secs"), "{error}");
    }
}
