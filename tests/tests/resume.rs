//! Resuming: an experiment stopped after round 1 and continued with `kka-coordinator resume`
//! ends with the same pools, scores and AUROCs as an uninterrupted experiment with the same seed.

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
    workers.stop().await;

    let expected = outcome(&store, &straight).await;
    let actual = outcome(&store, &resumed).await;
    assert_eq!(expected.hard, actual.hard, "hard pools differ");
    assert_eq!(expected.easy, actual.easy, "easy pools differ");
    assert_eq!(expected.scores, actual.scores, "scores differ");
    let straight_report = support::read_report(dir.path(), "straight");
    let resumed_report = support::read_report(dir.path(), "resumed");
    assert_eq!(aurocs(&straight_report), aurocs(&resumed_report));
    assert_eq!(resumed_report["status"], "finished");
    prefix.clean_up().await.unwrap();
}
