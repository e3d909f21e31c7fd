//! The real binaries end to end: two `kka-worker run` processes serve `kka-coordinator smoke`,
//! then stop cleanly on SIGTERM.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which `scripts/test.sh`
//! runs); this test does not build them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;

const START_WAIT: Duration = Duration::from_secs(30);
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Returns the path of a workspace binary. The test executable lives in `target/<profile>/deps/`
/// and the binaries one folder up.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Child processes that are killed if the test fails before stopping them.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command(env: &TestPrefix, program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env("KKA__BROKER__QUEUE_PREFIX", &env.prefix)
        .env("KKA__STORE__KEY_PREFIX", &env.prefix)
        .env("KKA__BROKER__URL", env.config.broker.url.expose())
        .env("KKA__STORE__URL", env.config.store.url.expose())
        .env("RUST_LOG", "info");
    command
}

fn start_worker(env: &TestPrefix, id: &str) -> Child {
    command(env, &binary("kka-worker"))
        .args(["run", "--id", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start kka-worker")
}

fn send_sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("failed to run kill");
    assert!(status.success(), "kill -TERM {} failed", child.id());
}

/// Wait for a child to exit, polling so that a hung child fails the test instead of hanging it.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("failed to poll the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("failed to collect the child's output");
            panic!("process did not exit within {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("failed to collect the child's output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_job_runs_on_two_worker_processes() {
    let env = TestPrefix::new("e2e-smoke", "");
    let store = Store::connect(&env.config.store).await.unwrap();
    let mut children = Children(vec![start_worker(&env, "e2e-w1"), start_worker(&env, "e2e-w2")]);

    let smoke = command(&env, &binary("kka-coordinator"))
        .args(["smoke", "--tasks", "40", "--wait-workers", "2", "--timeout-secs"])
        .arg(START_WAIT.as_secs().to_string())
        .output()
        .expect("failed to run kka-coordinator smoke");
    let stdout = String::from_utf8_lossy(&smoke.stdout);
    let stderr = String::from_utf8_lossy(&smoke.stderr);
    assert!(smoke.status.success(), "smoke failed with {}:\n{stdout}\n{stderr}", smoke.status);
    assert!(stdout.starts_with("smoke ok: 40 tasks in "), "{stdout}");
    assert!(stdout.contains("e2e-w1") || stdout.contains("e2e-w2"), "{stdout}");
    assert_eq!(store.live_workers().await.unwrap().len(), 2);

    for child in &children.0 {
        send_sigterm(child);
    }
    for child in std::mem::take(&mut children.0) {
        let output = wait_with_timeout(child, STOP_WAIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "worker exited with {} after SIGTERM:\n{stderr}", output.status);
        assert!(stderr.contains("worker stopped"), "{stderr}");
    }
    assert!(store.live_workers().await.unwrap().is_empty(), "workers remove their liveness records on stop");
}

#[test]
fn worker_with_bad_config_fails_with_message() {
    let env = TestPrefix::new("e2e-badconfig", "");
    let output = command(&env, &binary("kka-worker"))
        .args(["run", "--config", "/no/such/kka.toml"])
        .output()
        .expect("failed to run kka-worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/no/such/kka.toml"), "{stderr}");
}
