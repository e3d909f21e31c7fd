//! Helpers for the end-to-end tests: the built binaries, child processes with a test prefix,
//! and queue depths.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kka_shared::broker::Topology;
use kka_shared::config::Config;
use kka_shared::ids::TaskKind;
use kka_shared::testing::TestPrefix;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::process::{Child, Command};

/// Path of a binary built by `cargo build --workspace --bins`, which `scripts/test.sh` runs
/// before the tests.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let path = target.join("debug").join(name);
    assert!(path.is_file(), "{} is missing; build it first with `cargo build --workspace --bins` (scripts/test.sh does)", path.display());
    path
}

/// Environment variable naming another worker binary to start in place of
/// `target/debug/kka-worker`, such as a release build. It must accept `run --config FILE`.
pub const WORKER_BINARY_VARIABLE: &str = "KKA_E2E_WORKER";

/// Builds a command for one of the binaries, pointed at the test prefix's broker and store.
pub fn command(name: &str, prefix: &TestPrefix) -> Command {
    let path = match std::env::var_os(WORKER_BINARY_VARIABLE) {
        Some(worker) if name == "kka-worker" => PathBuf::from(worker),
        _ => binary(name),
    };
    let mut command = Command::new(path);
    command
        .env("KKA__BROKER__QUEUE_PREFIX", &prefix.prefix)
        .env("KKA__STORE__KEY_PREFIX", &prefix.prefix)
        .env("KKA__BROKER__URL", prefix.config.broker.url.expose())
        .env("KKA__STORE__URL", prefix.config.store.url.expose())
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    command
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to the end within `limit`, capturing its output.
pub async fn finish(mut command: Command, limit: Duration) -> Finished {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn the binary");
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the command did not finish within {limit:?}"))
        .expect("wait for the binary");
    Finished {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).expect("write the config file");
    path
}

/// `kka-worker run` processes, killed when dropped.
pub struct Workers {
    children: Vec<Child>,
}

impl Workers {
    /// Starts `count` workers with the given config file and ids `<prefix>-w<i>`.
    pub fn start(prefix: &TestPrefix, config: &Path, count: usize, log_dir: &Path) -> Workers {
        let children = (0..count)
            .map(|index| {
                let log = std::fs::File::create(log_dir.join(format!("worker-{index}.log"))).expect("create the worker log");
                let mut command = command("kka-worker", prefix);
                command
                    .arg("run")
                    .arg("--config")
                    .arg(config)
                    .env("KKA__WORKER__ID", format!("w{index}"))
                    .stdout(Stdio::null())
                    .stderr(log);
                command.spawn().expect("spawn kka-worker")
            })
            .collect();
        Workers { children }
    }

    /// Stops the workers with SIGKILL and waits for them.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// Messages waiting in the prefix's task queues; a queue that does not exist counts as empty.
pub async fn queued_tasks(config: &Config) -> u32 {
    let connection = lapin::Connection::connect(config.broker.url.expose(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let topology = Topology::new(&config.broker.queue_prefix);
    let mut total = 0;
    for kind in [TaskKind::Generate, TaskKind::Score, TaskKind::Train] {
        // A passive declare of a missing queue closes the channel, so each queue gets its own.
        let channel = connection.create_channel().await.expect("open a channel");
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if let Ok(queue) = channel.queue_declare(topology.task_queue(kind).as_str().into(), options, FieldTable::default()).await {
            total += queue.message_count();
        }
    }
    let _ = connection.close(200, "done".into()).await;
    total
}

/// Asserts that `text` mentions every one of `needles`, showing the text on failure.
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }
}

/// A curriculum small enough for a test: 300 normal training images, 400 test images, 2
/// epochs, 2 rounds of 60 anomalies. One libtorch thread per worker keeps the two workers off
/// each other's core and the results reproducible.
pub const SMALL_EXPERIMENT: &str = r#"
[worker]
threads = 1

[dataset]
train_limit = 300
test_limit = 400

[detector]
epochs = 2
pretrain_epochs = 1
batch_size = 64

[curriculum]
rounds = 2
anomalies_per_round = 60
generate_shard_size = 30
score_shard_size = 30
labelled_anomalies = 60
phase_timeout_secs = 300
worker_wait_secs = 60
"#;

/// Reads and parses `<dir>/<experiment>/report.json`.
pub fn read_report(dir: &Path, experiment: &str) -> serde_json::Value {
    let path = dir.join(experiment).join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).expect("report.json is JSON")
}
