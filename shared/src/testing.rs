//! Helpers for tests that run against the real RabbitMQ and Redis.
//!
//! Every test takes a [`TestPrefix`]: a unique queue and key prefix, so tests can run at the same
//! time on one broker and one Redis. Dropping it deletes the queues, exchanges and keys under
//! the prefix, also when the test panicked.
//!
//! The service URLs come from `KKA__BROKER__URL` and `KKA__STORE__URL` when set, and from
//! `config/default.toml` otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::broker::Topology;
use crate::config::{Config, ConfigError, RawConfig, DEFAULT_TOML};
use crate::ids::{ExperimentId, TaskKind};

/// Returns a prefix that no other test or process uses: `t-<label>-<pid>-<time>-<counter>`.
pub fn unique_prefix(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let label: String = label.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(24).collect();
    format!("t-{label}-{}-{nanos:x}-{count}", std::process::id())
}

/// Builds the default config with the given queue and key prefix, the service URLs from the
/// environment, and `overrides` (TOML) on top.
pub fn test_config(prefix: &str, overrides: &str) -> Result<Config, ConfigError> {
    let mut layer = format!("[broker]\nqueue_prefix = \"{prefix}\"\n");
    if let Ok(url) = std::env::var("KKA__BROKER__URL") {
        layer.push_str(&format!("url = {}\n", toml_string(&url)));
    }
    layer.push_str(&format!("[store]\nkey_prefix = \"{prefix}\"\n"));
    if let Ok(url) = std::env::var("KKA__STORE__URL") {
        layer.push_str(&format!("url = {}\n", toml_string(&url)));
    }
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
        .add_source(config::File::from_str(&layer, config::FileFormat::Toml))
        .add_source(config::File::from_str(overrides, config::FileFormat::Toml))
        .build()?
        .try_deserialize()?;
    raw.validate()
}

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// A unique prefix and the config that uses it. Dropping it deletes what tests created under the
/// prefix: the task, dead-letter and tracked event queues, the exchanges, and the Redis keys.
pub struct TestPrefix {
    pub prefix: String,
    pub config: Config,
    experiments: Mutex<Vec<ExperimentId>>,
}

impl TestPrefix {
    /// Creates a fresh prefix with the default config plus `overrides` (TOML).
    pub fn new(label: &str, overrides: &str) -> TestPrefix {
        let prefix = unique_prefix(label);
        // A broken override in a test is a bug in the test itself.
        let config = test_config(&prefix, overrides).unwrap_or_else(|error| panic!("invalid test config: {error}"));
        TestPrefix { prefix, config, experiments: Mutex::new(Vec::new()) }
    }

    /// Delete the event queue of this experiment on drop too.
    pub fn track_experiment(&self, experiment: &ExperimentId) {
        self.experiments.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(experiment.clone());
    }

    /// Creates an experiment id and tracks it for clean-up.
    pub fn experiment(&self, name: &str) -> ExperimentId {
        // Test names are short ASCII words, so the id is valid.
        let experiment = ExperimentId::new(name).unwrap_or_else(|error| panic!("invalid test experiment id: {error}"));
        self.track_experiment(&experiment);
        experiment
    }

    /// Delete everything under the prefix now. Safe to call more than once.
    pub async fn clean_up(&self) -> anyhow::Result<()> {
        clean_up(&self.config, &self.tracked_experiments()).await
    }

    fn tracked_experiments(&self) -> Vec<ExperimentId> {
        self.experiments.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

async fn clean_up(config: &Config, experiments: &[ExperimentId]) -> anyhow::Result<()> {
    delete_broker_objects(config, experiments).await?;
    let store = crate::store::Store::connect(&config.store).await?;
    store.delete_all(&config.store.key_prefix).await?;
    Ok(())
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        // Drop may run inside a test's runtime, which cannot be blocked on, so the clean-up gets
        // a thread and a runtime of its own.
        let config = self.config.clone();
        let experiments = self.tracked_experiments();
        let cleaner = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(clean_up(&config, &experiments))
        });
        match cleaner.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("test clean-up of prefix {} failed: {error:#}", self.prefix),
            Err(_) => eprintln!("test clean-up of prefix {} panicked", self.prefix),
        }
    }
}

/// Delete the queues and exchanges of a prefix, and the event queues of the given experiments.
pub async fn delete_broker_objects(config: &Config, experiments: &[ExperimentId]) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    let uri = config.broker.url.expose();
    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(&config.broker.queue_prefix);

    let mut queues: Vec<String> = TaskKind::ALL.iter().map(|kind| topology.task_queue(*kind)).collect();
    queues.push(topology.dead_letter_queue());
    queues.extend(experiments.iter().map(|experiment| topology.event_queue(experiment)));
    // Deleting a missing queue or exchange succeeds in RabbitMQ 3.x, so one channel serves all.
    for queue in queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in [topology.dead_letter_exchange(), topology.events_exchange()] {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    connection.close(200, "test clean-up".into()).await?;
    Ok(())
}

/// A TCP proxy on 127.0.0.1 in front of a service, which a test can use to cut every open
/// connection at once or refuse new ones, as if the service went away.
pub struct TcpProxy {
    address: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    acceptor: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    connections: Vec<JoinHandle<()>>,
    refusing: bool,
    accepted: u64,
}

impl TcpProxy {
    /// Listen on a free port of 127.0.0.1 and forward each connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let acceptor = tokio::spawn(accept_loop(listener, target, Arc::clone(&state)));
        Ok(TcpProxy { address, state, acceptor })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Close every forwarded connection now.
    pub fn sever_all(&self) {
        let mut state = self.lock();
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.lock().refusing = refusing;
    }

    /// Returns how many connections were accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.sever_all();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<Mutex<ProxyState>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.refusing {
            drop(client);
            continue;
        }
        state.accepted += 1;
        state.connections.retain(|connection| !connection.is_finished());
        state.connections.push(tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }));
    }
}

/// Resolves the host and port of an `amqp://` or `redis://` URL to a socket address.
pub fn service_address(url: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().ok_or_else(|| anyhow::anyhow!("URL has no host"))?;
    let port = parsed.port().unwrap_or(default_port);
    (host, port).to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("{host}:{port} did not resolve"))
}

/// `url` with its host and port replaced by `address`, keeping credentials and path.
pub fn url_via(url: &str, address: SocketAddr) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_host(Some(&address.ip().to_string()))?;
    parsed.set_port(Some(address.port())).map_err(|()| anyhow::anyhow!("URL {url} cannot have a port"))?;
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_valid() {
        let a = unique_prefix("broker round trip!");
        let b = unique_prefix("broker round trip!");
        assert_ne!(a, b);
        assert!(test_config(&a, "").is_ok(), "{a}");
        assert!(a.starts_with("t-brokerroundtrip-"), "{a}");
    }

    #[test]
    fn test_config_applies_prefix_and_overrides() {
        let config = test_config("t-x", "[worker]\nconcurrency = 3\n[broker]\nprefetch = 2\n").unwrap();
        assert_eq!(config.broker.queue_prefix, "t-x");
        assert_eq!(config.store.key_prefix, "t-x");
        assert_eq!(config.worker.concurrency, 3);
        assert_eq!(config.broker.prefetch, 2);
    }

    #[test]
    fn url_via_keeps_credentials() {
        let address: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        let url = url_via("amqp://guest:guest@127.0.0.1:5672/%2f", address).unwrap();
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:4567/%2f");
    }
}
