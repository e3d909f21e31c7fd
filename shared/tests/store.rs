//! Task commits, worker liveness records and failure records against the real Redis.

use std::time::Duration;

use kka_shared::config::{DatasetFormat, Device};
use kka_shared::ids::{ExperimentId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::TaskSummary;
use kka_shared::store::workers::{DatasetStatus, WorkerRecord, MISSED_HEARTBEATS};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use redis::AsyncCommands;

async fn connect(env: &TestPrefix) -> Store {
    Store::connect(&env.config.store).await.unwrap()
}

fn task(experiment: &ExperimentId, shard: u32) -> TaskId {
    TaskId::new(experiment.clone(), RoundIndex(1), TaskKind::Noop, shard)
}

fn record(id: &str) -> WorkerRecord {
    WorkerRecord {
        id: WorkerId::new(id).unwrap(),
        host: "test-host".into(),
        pid: std::process::id(),
        device: Device::Cpu,
        task_kinds: vec![TaskKind::Noop],
        started_at: 1_700_000_000,
        dataset: DatasetStatus {
            format: DatasetFormat::FashionMnist,
            path: "/data".into(),
            files_digest: Some("abc".into()),
            error: None,
        },
    }
}

/// Returns the writes of a task: one value whose key follows from the task id.
fn writes(store: &Store, task: &TaskId, value: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.set(store.experiment_key(&task.experiment, &format!("value:{task}")), value).ignore();
    pipe
}

#[tokio::test]
async fn duplicate_commit_leaves_identical_state() {
    let env = TestPrefix::new("commit", "");
    let store = connect(&env).await;
    let experiment = env.experiment("exp");
    let id = task(&experiment, 7);
    let summary = TaskSummary::Noop { sent_at_micros: 42 };

    store.commit_task(&id, writes(&store, &id, "result"), &summary).await.unwrap();
    let mut connection = store.connection();
    let done_key = store.experiment_key(&experiment, "done");
    let value_key = store.experiment_key(&experiment, &format!("value:{id}"));
    let first_value: String = connection.get(&value_key).await.unwrap();

    // The same task delivered twice commits the same writes again.
    store.commit_task(&id, writes(&store, &id, "result"), &summary).await.unwrap();
    let members: Vec<String> = connection.smembers(&done_key).await.unwrap();
    assert_eq!(members, vec![id.to_string()], "the done set holds the task once");
    let second_value: String = connection.get(&value_key).await.unwrap();
    assert_eq!(first_value, second_value);
    assert_eq!(store.task_summary(&id).await.unwrap(), Some(summary));
    assert!(store.is_task_done(&id).await.unwrap());
    assert!(!store.is_task_done(&task(&experiment, 8)).await.unwrap());
}

#[tokio::test]
async fn worker_records_list_refresh_and_remove() {
    let env = TestPrefix::new("workers", "");
    let store = connect(&env).await;
    assert!(store.live_workers().await.unwrap().is_empty());

    store.put_worker(&record("w-b"), 5).await.unwrap();
    store.put_worker(&record("w-a"), 5).await.unwrap();
    let live = store.live_workers().await.unwrap();
    let ids: Vec<&str> = live.iter().map(|worker| worker.id.as_str()).collect();
    assert_eq!(ids, ["w-a", "w-b"]);
    assert_eq!(live[0], record("w-a"));

    let key = store.key("workers:w-a");
    let ttl: i64 = store.connection().ttl(&key).await.unwrap();
    assert!(ttl > 0, "ttl {ttl}");
    assert!(ttl <= (5 * MISSED_HEARTBEATS) as i64, "ttl {ttl}");

    store.remove_worker(&WorkerId::new("w-a").unwrap()).await.unwrap();
    let ids: Vec<String> = store.live_workers().await.unwrap().into_iter().map(|w| w.id.to_string()).collect();
    assert_eq!(ids, ["w-b"]);
}

#[tokio::test]
async fn worker_record_expires_without_heartbeat() {
    let env = TestPrefix::new("expiry", "");
    let store = connect(&env).await;
    store.put_worker(&record("w-gone"), 1).await.unwrap();
    // Shorten the TTL instead of waiting three seconds for the real one.
    let _: bool = store.connection().pexpire(store.key("workers:w-gone"), 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(store.live_workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupt_worker_record_names_key() {
    let env = TestPrefix::new("corrupt", "");
    let store = connect(&env).await;
    let key = store.key("workers:w-bad");
    let () = store.connection().set(&key, "{not json").await.unwrap();
    let error = store.live_workers().await.unwrap_err().to_string();
    assert!(error.contains(&key), "{error}");
}

#[tokio::test]
async fn failures_are_recorded_and_cleared_by_commit() {
    let env = TestPrefix::new("failures", "");
    let store = connect(&env).await;
    let experiment = env.experiment("exp");
    let failed = task(&experiment, 1);
    let other = task(&experiment, 2);

    store.record_task_failure(&failed, "handler panicked: boom").await.unwrap();
    store.record_task_failure(&other, "bad input").await.unwrap();
    assert_eq!(store.task_failure(&failed).await.unwrap().as_deref(), Some("handler panicked: boom"));
    let all = store.failures(&experiment).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[&other], "bad input");

    // A later successful run of the task clears its failure in the same transaction.
    let mut pipe = writes(&store, &failed, "fixed");
    store.add_clear_failure(&mut pipe, &failed);
    store.commit_task(&failed, pipe, &TaskSummary::Noop { sent_at_micros: 0 }).await.unwrap();
    assert_eq!(store.task_failure(&failed).await.unwrap(), None);
    assert_eq!(store.failures(&experiment).await.unwrap().len(), 1);
}
