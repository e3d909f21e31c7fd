//! The generate task handler against the real Redis, on a tiny IDX dataset.

mod generator_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kka_shared::ids::{AnomalyId, RoundIndex, TaskId, TaskKind, WorkerId};
use kka_shared::messages::{GenerateTask, GeneratorState, TaskBody, TaskMessage, TaskSummary};
use kka_shared::store::Store;
use kka_shared::testing::TestPrefix;
use kka_worker::data::DatasetCache;
use kka_worker::tasks::generate::GenerateHandler;
use kka_worker::tasks::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use tokio_util::sync::CancellationToken;

use generator_support::{write_idx_dataset, StubResponse, StubServer};

struct Setup {
    _data: tempfile::TempDir,
    prefix: TestPrefix,
    runtime: tokio::runtime::Runtime,
    context: TaskContext,
    cache: Arc<DatasetCache>,
}

fn setup(label: &str) -> Setup {
    setup_with(label, "")
}

/// Set up with extra TOML appended to the test config.
fn setup_with(label: &str, extra: &str) -> Setup {
    let data = tempfile::tempdir().unwrap();
    write_idx_dataset(data.path(), 10);
    let prefix = TestPrefix::new(
        label,
        &format!(
            "[dataset]\nformat = \"fashion-mnist\"\npath = {:?}\nnormal_classes = [2]\n{extra}",
            data.path().display().to_string()
        ),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let store = runtime.block_on(Store::connect(&prefix.config.store)).unwrap();
    let context = TaskContext {
        worker: WorkerId::new("generator-test").unwrap(),
        config: Arc::new(prefix.config.clone()),
        store,
        runtime: runtime.handle().clone(),
        cancel: CancellationToken::new(),
        slice_deadline: Instant::now() + Duration::from_secs(3600),
    };
    let cache = Arc::new(DatasetCache::new(prefix.config.dataset.clone()));
    Setup { _data: data, prefix, runtime, context, cache }
}

fn task(setup: &Setup, fingerprint: String, state: GeneratorState) -> TaskMessage {
    let experiment = setup.prefix.experiment("gen");
    let config = &setup.prefix.config;
    let body = GenerateTask {
        count: 25,
        seed: 99,
        generator: config.generator.clone(),
        knowledge: config.knowledge.clone(),
        state,
        hard_examples: Vec::new(),
        easy_examples: Vec::new(),
    };
    let id = TaskId::new(experiment, RoundIndex(2), TaskKind::Generate, 3);
    TaskMessage::new(id, fingerprint, config.dataset.protocol.clone(), TaskBody::Generate(body))
}

/// Run the handler and commit its writes, as the runner does.
fn run_and_commit(setup: &Setup, handler: &GenerateHandler, task: &TaskMessage) -> TaskSummary {
    let HandlerOutput::Done { writes, summary } = handler.handle(task, &setup.context).unwrap() else {
        panic!("a generate task never slices");
    };
    setup.runtime.block_on(setup.context.store.commit_task(&task.task_id, writes, &summary)).unwrap();
    summary
}

fn ids(task: &TaskMessage) -> Vec<AnomalyId> {
    (0..25).map(|i| AnomalyId::new(task.task_id.experiment.clone(), RoundIndex(2), 3, i)).collect()
}

#[test]
fn task_stores_anomalies_idempotently() {
    let setup = setup("gen-task");
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let task = task(&setup, fingerprint, GeneratorState::default());

    let summary = run_and_commit(&setup, &handler, &task);
    assert_eq!(summary, TaskSummary::Generated { count: 25 });
    let first = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    assert_eq!(first.len(), 25);
    for (index, anomaly) in first.iter().enumerate() {
        let record = &anomaly.record;
        assert_eq!(record.id.index, index as u32);
        assert_eq!(record.task_id, task.task_id);
        assert_eq!(record.shape, [1, 28, 28]);
        assert_eq!(anomaly.pixels.len(), 28 * 28);
        assert_eq!(record.generator, "procedural");
        assert!(record.concept_id.starts_with("clothing."), "{}", record.concept_id);
        assert_eq!(record.recipe.severity, record.severity);
        assert!(record.source_index.is_some());
        assert_eq!(record.seed, kka_worker::generator::anomaly_seed(99, index as u32));
    }
    assert!(setup.runtime.block_on(setup.context.store.is_task_done(&task.task_id)).unwrap());

    // A redelivery rewrites the same bytes.
    run_and_commit(&setup, &handler, &task);
    let second = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    assert_eq!(first, second);
}

#[test]
fn global_family_is_the_fashion_default() {
    let setup = setup("gen-family");
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let task = task(&setup, fingerprint, GeneratorState::default());
    run_and_commit(&setup, &handler, &task);

    let anomalies = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    let base = kka_worker::knowledge::KnowledgeBase::builtin().unwrap();
    let families: std::collections::BTreeMap<String, kka_shared::prompt::OperationFamily> = base.domains["clothing"]
        .concepts
        .iter()
        .map(|c| (c.concept.id.clone(), c.concept.family))
        .collect();
    for anomaly in anomalies {
        assert_eq!(families[&anomaly.record.concept_id], kka_shared::prompt::OperationFamily::Global, "{}", anomaly.record.concept_id);
    }
}

#[test]
fn state_weights_steer_concepts() {
    let setup = setup("gen-weights");
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let base = kka_worker::knowledge::KnowledgeBase::builtin().unwrap();
    let mut weights: std::collections::BTreeMap<String, f64> =
        base.domains["clothing"].concepts.iter().map(|c| (c.concept.id.clone(), 0.0)).collect();
    weights.insert("clothing.rotated".into(), 1.0);
    let state = GeneratorState { concept_weights: weights, severity_weights: vec![0.0, 0.0, 0.0, 0.0, 1.0] };
    let task = task(&setup, fingerprint, state);
    run_and_commit(&setup, &handler, &task);

    let anomalies = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    for anomaly in anomalies {
        assert_eq!(anomaly.record.concept_id, "clothing.rotated");
        assert!(anomaly.record.severity >= 0.81, "severity {} is outside the top bin", anomaly.record.severity);
    }
}

#[test]
fn fingerprint_mismatch_is_fatal() {
    let setup = setup("gen-fingerprint");
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let task = task(&setup, "not-the-fingerprint".into(), GeneratorState::default());
    let error = handler.handle(&task, &setup.context).err().unwrap();
    assert!(matches!(error, TaskError::Fatal(_)), "{error}");
    assert!(error.to_string().contains("fingerprint"), "{error}");
}

#[test]
fn invalid_state_is_fatal() {
    let setup = setup("gen-state");
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let state = GeneratorState { severity_weights: vec![1.0, 2.0], ..GeneratorState::default() };
    let task = task(&setup, fingerprint, state);
    let error = handler.handle(&task, &setup.context).err().unwrap();
    assert!(matches!(error, TaskError::Fatal(_)), "{error}");
    assert!(error.to_string().contains("severity_bins"), "{error}");
}

#[test]
fn cancelled_task_is_retryable() {
    let setup = setup("gen-cancel");
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let task = task(&setup, fingerprint, GeneratorState::default());
    setup.context.cancel.cancel();
    let error = handler.handle(&task, &setup.context).err().unwrap();
    assert!(matches!(error, TaskError::Retryable(_)), "{error}");
}

#[test]
fn llm_source_pays_once_per_prompt() {
    let reply = serde_json::json!({"choices": [{"message": {"role": "assistant", "content":
        "{\"concepts\": [{\"description\": \"a pullover with three sleeves\", \"operation\": \"part_swap\", \"params\": {\"axis\": 0}}, {\"description\": \"a pullover printed with checks\", \"operation\": \"stripes\", \"params\": {\"checks\": 1}}]}"
    }}]});
    let server = StubServer::start(vec![StubResponse::json(200, &reply)]);
    let setup = setup_with("gen-llm", &format!("[knowledge]\nsource = \"llm\"\nllm_url = \"{}\"\n", server.base_url()));
    let fingerprint = setup.cache.fingerprint(&setup.prefix.config.dataset.protocol).unwrap();
    let handler = GenerateHandler::new(Arc::clone(&setup.cache), &setup.prefix.config);
    let mut task = task(&setup, fingerprint, GeneratorState::default());
    if let TaskBody::Generate(body) = &mut task.body {
        body.hard_examples = vec!["a pullover with a stretched collar".into()];
    }

    run_and_commit(&setup, &handler, &task);
    let first = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    run_and_commit(&setup, &handler, &task);
    let second = setup.runtime.block_on(setup.context.store.load_anomalies(&ids(&task))).unwrap();
    assert_eq!(first, second, "a redelivery rewrites the same anomalies");
    assert_eq!(server.request_count(), 1, "the redelivery reads the cached reply");

    assert!(first.iter().all(|a| a.record.concept_id.starts_with("llm.")));
    let request: serde_json::Value = serde_json::from_slice(&server.requests()[0].body).unwrap();
    let prompt = request["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("\"Pullover\""), "{prompt}");
    assert!(prompt.contains("a pullover with a stretched collar"), "{prompt}");
}
