//! Resuming: an experiment stopped after round 1, and one killed with SIGKILL during round 2,
//! each continued with `kka-coordinator resume`, end with the same pools, scores and AUROCs as
//! an uninterrupted experiment with the same seed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kka_shared::ids::{AnomalyId, ExperimentId, RoundIndex};
use kka_shared::store::experiments::PoolKind;
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use support::{assert_mentions, command, finish, write_config};

const RUN_LIMIT: Duration = Duration::from_secs(600);

/// (round, shard, index) of an anomaly, which two experiments with the same seed share.
type Position = (u32, u32, u32);

fn position(id: &AnomalyId) -> Position {
    (id.round.0, id.shard, id.index)
}

/// Pools and scores of one experiment keyed by position, so experiments compare.
#[derive(Debug, PartialEq)]
struct Outcome {
    hard: Vec<(Position, String)>,
    easy: Vec<(Position, String)>,
    scores: BTreeMap<(u32, Position), String>,
}

async fn outcome(store: &Store, experiment: &ExperimentId) -> Outcome {
    let pool = |kind| async move {
        let entries = store.pool(experiment, kind).await.unwrap();
        entries.iter().map(|(id, score)| (position(id), format!("{score:.12}"))).collect::<Vec<_>>()
    };
    let mut scores = BTreeMap::new();
    for round in 1..=2u32 {
        let ids = store.anomaly_ids_of_round(experiment, RoundIndex(round)).await.unwrap();
        assert_eq!(ids.len(), 60, "round {round} of {experiment}");
        for checkpoint in [RoundIndex(0), RoundIndex(round - 1)] {
            let records = store.scores(experiment, checkpoint, &ids).await.unwrap();
            for (id, record) in ids.iter().zip(records) {
                let record = record.unwrap_or_else(|| panic!("{id} has no score under round {checkpoint}"));
                scores.insert((checkpoint.0, position(id)), format!("{:.12} {:.12}", record.score, record.knn_distance));
            }
        }
    }
    Outcome { hard: pool(PoolKind::Hard).await, easy: pool(PoolKind::Easy).await, scores }
}

fn aurocs(report: &serde_json::Value) -> Vec<String> {
    let mut values = vec![report["baseline_auroc"].to_string()];
    values.extend(report["rounds"].as_array().unwrap().iter().map(|round| round["auroc"].to_string()));
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_experiment_equals_uninterrupted_one() {
    let prefix = TestPrefix::new("e2e-resume", "");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "small.toml", support::SMALL_EXPERIMENT);
    let workers = support::Workers::start(&prefix, &config, 2, dir.path());
    let straight = prefix.experiment("straight");
    let resumed = prefix.experiment("resumed");
    let killed = prefix.experiment("killed");

    let mut run = command("kka-coordinator", &prefix);
    run.arg("run").arg("--config").arg(&config).arg("--experiment").arg("straight").arg("--output").arg(dir.path());
    let finished = finish(run, RUN_LIMIT).await;
    assert!(finished.success, "the uninterrupted run failed:\n{}", finished.stderr);

    let mut first = command("kka-coordinator", &prefix);
    first
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--experiment")
        .arg("resumed")
        .arg("--output")
        .arg(dir.path())
        .arg("--stop-after-round")
        .arg("1");
    let stopped = finish(first, RUN_LIMIT).await;
    assert!(stopped.success, "the first half failed:\n{}", stopped.stderr);
    assert_mentions(&stopped.stdout, &["stopped after round 1", "kka-coordinator resume resumed"]);

    let store = Store::connect(&prefix.config.store).await.unwrap();
    let state = store.experiment_state(&resumed).await.unwrap().expect("state of the stopped experiment");
    assert_eq!(state.round, RoundIndex(2));

    let mut second = command("kka-coordinator", &prefix);
    second.arg("resume").arg("resumed").arg("--config").arg(&config);
    let finished = finish(second, RUN_LIMIT).await;
    assert!(finished.success, "the resumed run failed:\n{}", finished.stderr);

    kill_once_round_two_starts(&prefix, &config, dir.path(), &store, &killed).await;
    let mut after_kill = command("kka-coordinator", &prefix);
    after_kill.arg("resume").arg("killed").arg("--config").arg(&config);
    let finished = finish(after_kill, RUN_LIMIT).await;
    assert!(finished.success, "the run resumed after SIGKILL failed:\n{}", finished.stderr);
    workers.stop().await;

    let expected = outcome(&store, &straight).await;
    let straight_report = support::read_report(dir.path(), "straight");
    for (experiment, name) in [(&resumed, "resumed"), (&killed, "killed")] {
        let actual = outcome(&store, experiment).await;
        assert_eq!(expected.hard, actual.hard, "hard pools of {name} differ");
        assert_eq!(expected.easy, actual.easy, "easy pools of {name} differ");
        assert_eq!(expected.scores, actual.scores, "scores of {name} differ");
        let report = support::read_report(dir.path(), name);
        assert_eq!(aurocs(&straight_report), aurocs(&report), "AUROCs of {name} differ");
        assert_eq!(report["status"], "finished");
    }
    prefix.clean_up().await.unwrap();
}

/// Starts experiment `killed`, polls Redis until its round 2 has started and kills the
/// coordinator with SIGKILL, as a crash would.
async fn kill_once_round_two_starts(prefix: &TestPrefix, config: &std::path::Path, output: &std::path::Path, store: &Store, killed: &ExperimentId) {
    let mut run = command("kka-coordinator", prefix);
    run.arg("run").arg("--config").arg(config).arg("--experiment").arg("killed").arg("--output").arg(output);
    run.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = run.spawn().expect("spawn kka-coordinator");

    let deadline = std::time::Instant::now() + RUN_LIMIT;
    loop {
        let state = store.experiment_state(killed).await.unwrap();
        if state.as_ref().is_some_and(|state| state.round >= RoundIndex(2)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "round 2 of {killed} never started");
        assert!(child.try_wait().unwrap().is_none(), "the coordinator exited before round 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.expect("kill the coordinator");

    let state = store.experiment_state(killed).await.unwrap().expect("state of the killed experiment");
    assert_eq!(state.status, kka_shared::store::experiments::ExperimentStatus::Running, "the kill came too late to interrupt");
}
