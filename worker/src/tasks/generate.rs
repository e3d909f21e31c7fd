//! The generate task: one shard of anomalies, stored with their provenance.
//!
//! Anomaly `i` of shard `s` gets the id `<experiment>.r<round>.s<s>.<i>` and the seed
//! `anomaly_seed(task seed, i)`. The procedural generator is deterministic in that seed, and
//! LLM concepts come from the Redis reply cache on a redelivery, so a redelivered task
//! rewrites the same keys with the same bytes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kka_shared::config::Config;
use kka_shared::messages::{GenerateTask, TaskBody, TaskMessage, TaskSummary};

use super::{HandlerOutput, TaskContext, TaskError, TaskHandler};
use crate::data::{DataError, DatasetCache, OneClassData};
use crate::generator::pipeline::anomaly_record;
use crate::generator::{build_generator, generate_anomalies, torch_device, GenerationJob, GeneratorError, Sampler};
use crate::knowledge::{self, Concept, ConceptRequest, KnowledgeError};

/// Runs generate tasks.
pub struct GenerateHandler {
    datasets: Arc<DatasetCache>,
    device: tch::Device,
}

impl GenerateHandler {
    pub fn new(dataset_cache: Arc<DatasetCache>, config: &Config) -> GenerateHandler {
        GenerateHandler { datasets: dataset_cache, device: torch_device(config.worker.device) }
    }

    fn load_data(&self, task: &TaskMessage) -> Result<Arc<OneClassData>, TaskError> {
        self.datasets.get_checked(&task.dataset, &task.dataset_fingerprint).map_err(|error| {
            let retryable = matches!(error, DataError::Read { .. });
            let error = anyhow::Error::new(error).context("failed to load the dataset for a generate task");
            if retryable {
                TaskError::Retryable(error)
            } else {
                TaskError::Fatal(error)
            }
        })
    }

    fn load_concepts(
        &self,
        task: &TaskMessage,
        body: &GenerateTask,
        data: &OneClassData,
        context: &TaskContext,
    ) -> Result<Vec<Concept>, TaskError> {
        let request = ConceptRequest {
            settings: &body.knowledge,
            format: self.datasets.settings().format,
            class_names: knowledge::normal_class_names(&body.knowledge, &data.class_names, &task.dataset.normal_classes),
            hard_examples: &body.hard_examples,
            easy_examples: &body.easy_examples,
        };
        knowledge::load_concepts(&request, &context.runtime, Some(&context.store)).map_err(knowledge_error)
    }
}

impl TaskHandler for GenerateHandler {
    fn handle(&self, task: &TaskMessage, context: &TaskContext) -> Result<HandlerOutput, TaskError> {
        let started = Instant::now();
        let TaskBody::Generate(body) = &task.body else {
            return Err(TaskError::fatal(anyhow::anyhow!("the generate handler received a {} task", task.kind())));
        };
        body.generator.validate().context("the task's generator settings are invalid").map_err(TaskError::Fatal)?;
        body.knowledge.validate().context("the task's knowledge settings are invalid").map_err(TaskError::Fatal)?;

        let data = self.load_data(task)?;
        let concepts = self.load_concepts(task, body, &data, context)?;
        let settings = &body.generator;
        let sampler = Sampler::new(&concepts, &body.state, settings.severity_min, settings.severity_max, settings.severity_bins)
            .map_err(generator_error)?;
        let mut generator = build_generator(settings, self.device, &context.runtime).map_err(generator_error)?;

        let job = GenerationJob {
            images: &data.train.images,
            indices: &data.train.indices,
            concepts: &concepts,
            sampler: &sampler,
            seed: body.seed,
            range: 0..body.count,
            batch_size: settings.batch_size,
            device: self.device,
        };
        let cancelled = || context.cancel.is_cancelled();
        let anomalies = generate_anomalies(&job, generator.as_mut(), &cancelled).map_err(generator_error)?;

        let shape = data.shape.map(|side| side as u32);
        let mut writes = redis::pipe();
        for anomaly in &anomalies {
            let record = anomaly_record(&task.task_id, anomaly, &concepts[anomaly.plan.concept], generator.as_ref(), shape);
            context.store.add_anomaly_writes(&mut writes, &record, &anomaly.pixels);
        }

        tracing::info!(
            task = %task.task_id,
            count = anomalies.len(),
            concepts = concepts.len(),
            generator = generator.name(),
            seconds = started.elapsed().as_secs_f64(),
            "anomalies generated"
        );
        Ok(HandlerOutput::Done { writes, summary: TaskSummary::Generated { count: anomalies.len() as u32 } })
    }
}

fn knowledge_error(error: KnowledgeError) -> TaskError {
    let retryable = error.is_retryable();
    let error = anyhow::Error::new(error).context("failed to load anomaly concepts");
    if retryable {
        TaskError::Retryable(error)
    } else {
        TaskError::Fatal(error)
    }
}

fn generator_error(error: GeneratorError) -> TaskError {
    let retryable = error.is_retryable();
    let error = anyhow::Error::new(error).context("failed to generate anomalies");
    if retryable {
        TaskError::Retryable(error)
    } else {
        TaskError::Fatal(error)
    }
}
