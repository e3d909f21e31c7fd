//! End-to-end tests of `kka-coordinator run` with the real binaries, RabbitMQ and Redis: bad
//! input is rejected before any task is queued, and a small experiment runs to its report.

mod support;

use std::time::Duration;

use kka_shared::config::{DatasetFormat, Device};
use kka_shared::ids::{TaskKind, WorkerId};
use kka_shared::store::workers::{DatasetStatus, WorkerRecord};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use support::{assert_mentions, command, finish, queued_tasks, write_config};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `kka-coordinator run` with `toml` as its config file (plus `extra` environment), and
/// checks that it fails, that stderr mentions every needle, and that no task was queued.
async fn assert_rejected(label: &str, toml: &str, extra: &[(&str, &str)], needles: &[&str]) {
    let prefix = TestPrefix::new(label, "");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bad.toml", toml);
    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--config").arg(&config).arg("--experiment").arg("bad").arg("--output").arg(dir.path());
    for (key, value) in extra {
        run.env(key, value);
    }

    let finished = finish(run, LIMIT).await;
    assert!(!finished.success, "the run was expected to fail:\n{}", finished.stderr);
    assert_mentions(&finished.stderr, needles);
    assert_eq!(queued_tasks(&prefix.config).await, 0, "a task was queued");
    prefix.clean_up().await.unwrap();
}

#[tokio::test]
async fn hard_ratio_above_one_is_rejected() {
    let toml = "[curriculum.schedule]\nkind = \"constant\"\nvalue = 1.5\n";
    assert_rejected("bad-ratio", toml, &[], &["curriculum.schedule.value", "1.5", "[0, 1]"]).await;
}

#[tokio::test]
async fn schedule_list_of_wrong_length_is_rejected() {
    let toml = "[curriculum]\nrounds = 3\n[curriculum.schedule]\nkind = \"list\"\nvalues = [0.2, 0.4]\n";
    assert_rejected("bad-list", toml, &[], &["curriculum.schedule.values", "curriculum.rounds", "3 rounds"]).await;
}

#[tokio::test]
async fn zero_anomalies_per_round_is_rejected() {
    assert_rejected("bad-count", "[curriculum]\nanomalies_per_round = 0\n", &[], &["curriculum.anomalies_per_round"]).await;
}

#[tokio::test]
async fn unknown_detector_is_rejected() {
    assert_rejected("bad-detector", "[curriculum]\ndetector = \"isolation-forest\"\n", &[], &["isolation-forest"]).await;
}

#[tokio::test]
async fn unknown_generator_is_rejected() {
    assert_rejected("bad-generator", "[generator]\nkind = \"stable-diffusion\"\n", &[], &["stable-diffusion"]).await;
}

#[tokio::test]
async fn unreachable_rabbitmq_names_url_and_variable() {
    let url = "amqp://guest:secret-word@127.0.0.1:1/%2f";
    let error = ["127.0.0.1:1", "KKA__BROKER__URL"];
    assert_rejected("bad-amqp", "", &[("KKA__BROKER__URL", url)], &error).await;
}

#[tokio::test]
async fn unreachable_redis_names_url_and_variable() {
    let error = ["redis://127.0.0.1:1", "KKA__STORE__URL"];
    assert_rejected("bad-redis", "", &[("KKA__STORE__URL", "redis://127.0.0.1:1/0")], &error).await;
}

#[tokio::test]
async fn rabbitmq_password_is_not_printed() {
    let prefix = TestPrefix::new("secret", "");
    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--experiment").arg("secret").env("KKA__BROKER__URL", "amqp://guest:secret-word@127.0.0.1:1/%2f");
    let finished = finish(run, LIMIT).await;
    assert!(!finished.success);
    assert!(!finished.stderr.contains("secret-word"), "{}", finished.stderr);
    prefix.clean_up().await.unwrap();
}

#[tokio::test]
async fn missing_coordinator_dataset_names_path() {
    let toml = "[dataset]\npath = \"/nonexistent/kka-data\"\n[curriculum]\nworker_wait_secs = 0\n";
    assert_rejected("bad-data", toml, &[], &["/nonexistent/kka-data", "dataset"]).await;
}

#[tokio::test]
async fn no_live_worker_times_out() {
    let toml = "[curriculum]\nworker_wait_secs = 1\n";
    assert_rejected("no-worker", toml, &[], &["no live kka-worker", "curriculum.worker_wait_secs", "kka-worker run"]).await;
}

fn fake_worker(name: &str, digest: Option<&str>) -> WorkerRecord {
    WorkerRecord {
        id: WorkerId::new(name).unwrap(),
        host: "test-host".into(),
        pid: 1,
        device: Device::Cpu,
        task_kinds: vec![TaskKind::Generate, TaskKind::Score, TaskKind::Train],
        started_at: 0,
        dataset: DatasetStatus {
            format: DatasetFormat::FashionMnist,
            path: "/srv/worker-data".into(),
            files_digest: digest.map(str::to_owned),
            error: digest.is_none().then(|| "dataset file /srv/worker-data/train-images-idx3-ubyte.gz is missing".to_owned()),
        },
    }
}

/// Registers a fake live worker under the prefix, then expects the run to name it.
async fn assert_worker_rejected(label: &str, worker: WorkerRecord, needles: &[&str]) {
    let prefix = TestPrefix::new(label, "");
    let store = Store::connect(&prefix.config.store).await.unwrap();
    store.put_worker(&worker, 60).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "run.toml", "[curriculum]\nworker_wait_secs = 5\n");
    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--config").arg(&config).arg("--experiment").arg("workers").arg("--output").arg(dir.path());

    let finished = finish(run, LIMIT).await;
    assert!(!finished.success, "the run was expected to fail:\n{}", finished.stderr);
    assert_mentions(&finished.stderr, needles);
    assert_eq!(queued_tasks(&prefix.config).await, 0, "a task was queued");
    prefix.clean_up().await.unwrap();
}

#[tokio::test]
async fn worker_without_dataset_is_named() {
    let worker = fake_worker("nodata", None);
    assert_worker_rejected("worker-nodata", worker, &["nodata", "test-host", "/srv/worker-data", "is missing"]).await;
}

#[tokio::test]
async fn worker_with_other_dataset_is_named() {
    let worker = fake_worker("otherdata", Some("0123abcd"));
    assert_worker_rejected("worker-other", worker, &["otherdata", "/srv/worker-data", "0123abcd"]).await;
}

#[tokio::test]
async fn existing_experiment_id_is_rejected() {
    let prefix = TestPrefix::new("exists", "");
    let store = Store::connect(&prefix.config.store).await.unwrap();
    let key = store.experiment_key(&kka_shared::ids::ExperimentId::new("taken").unwrap(), "config");
    let mut connection = store.connection();
    let () = redis::AsyncCommands::set(&mut connection, &key, "{}").await.unwrap();

    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--experiment").arg("taken");
    let finished = finish(run, LIMIT).await;
    assert!(!finished.success);
    assert_mentions(&finished.stderr, &["taken", "already exists", "kka-coordinator resume taken"]);
    assert_eq!(queued_tasks(&prefix.config).await, 0);
    prefix.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_experiment_runs_to_report() {
    let prefix = TestPrefix::new("e2e-run", "");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "small.toml", support::SMALL_EXPERIMENT);
    let workers = support::Workers::start(&prefix, &config, 2, dir.path());
    prefix.track_experiment(&kka_shared::ids::ExperimentId::new("small").unwrap());

    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--config").arg(&config).arg("--experiment").arg("small").arg("--output").arg(dir.path());
    let finished = finish(run, Duration::from_secs(600)).await;
    assert!(finished.success, "the run failed:\n{}", finished.stderr);
    assert_mentions(&finished.stdout, &["| round |", "report.json"]);

    let report = support::read_report(dir.path(), "small");
    assert_eq!(report["experiment"], "small");
    assert_eq!(report["status"], "finished");
    let baseline = report["baseline_auroc"].as_f64().expect("baseline AUROC");
    assert!((0.0..=1.0).contains(&baseline), "{baseline}");
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert_eq!(round["generated"], 60);
        let auroc = round["auroc"].as_f64().expect("round AUROC");
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
        let pooled = round["hard_pool"].as_u64().unwrap() + round["easy_pool"].as_u64().unwrap();
        assert_eq!(pooled, 60 * round["round"].as_u64().unwrap());
        for key in ["hard_ratio", "aupr", "hard_fraction_new", "hard_fraction_new_vs_baseline", "seconds"] {
            assert!(round[key].is_number(), "rounds[].{key} is {}", round[key]);
        }
    }
    for file in ["report.md", "report.svg", "dpo/round_1.jsonl", "dpo/round_2.jsonl"] {
        assert!(dir.path().join("small").join(file).is_file(), "{file} missing");
    }

    let mut status = command("kka-coordinator", &prefix);
    status.arg("status").arg("small").arg("--json");
    let status = finish(status, LIMIT).await;
    assert!(status.success, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status --json prints JSON");
    assert_eq!(status["status"], "finished");
    assert_eq!(status["hard_pool"].as_u64().unwrap() + status["easy_pool"].as_u64().unwrap(), 120);

    let export_dir = dir.path().join("export");
    let mut export = command("kka-coordinator", &prefix);
    export.arg("export").arg("small").arg("--round").arg("1").arg("--output").arg(&export_dir);
    let export = finish(export, LIMIT).await;
    assert!(export.success, "{}", export.stderr);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.as_array().unwrap().len(), 60);
    assert!(export_dir.join("small.r1.s0.0.png").is_file());

    workers.stop().await;
    prefix.clean_up().await.unwrap();
}
