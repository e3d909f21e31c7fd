//! Throughput of the procedural generator on one libtorch thread, in images per second of wall
//! time and of the thread's CPU time.
//!
//! `cargo run --release -p kka-worker --example bench_generator -- [--count N] [--batch B]
//! [--per-operation] [--case NAME]` prints one JSON line per (shape, family) case, and per
//! operation with `--per-operation`. `--case` runs one case only: all, global, local or an
//! operation name. scripts/bench-generator.sh runs it beside
//! the PyTorch version in bench/generator/.

use std::collections::BTreeMap;
use std::time::Instant;

use kka_shared::messages::GeneratorState;
use kka_shared::prompt::{OperationFamily, OPERATIONS};
use kka_worker::generator::procedural::ProceduralGenerator;
use kka_worker::generator::{generate_anomalies, GenerationJob, Sampler};
use kka_worker::knowledge::Concept;
use tch::{Device, Kind, Tensor};

/// Normal images the benchmark edits.
const SOURCE_IMAGES: i64 = 1000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count = flag(&args, "--count").unwrap_or(20_000);
    let batch_size = flag(&args, "--batch").unwrap_or(512) as usize;
    tch::set_num_threads(1);
    tch::manual_seed(0);

    for (channels, side) in [(1, 28), (3, 32)] {
        // Random blobs stand in for normal images; the cost of the edits does not depend on content.
        let images = Tensor::rand([SOURCE_IMAGES, channels, side, side], (Kind::Float, Device::Cpu));
        let indices: Vec<u32> = (0..SOURCE_IMAGES as u32).collect();
        let mut cases: Vec<String> = ["all", "global", "local"].iter().map(|case| case.to_string()).collect();
        if args.iter().any(|arg| arg == "--per-operation") {
            cases.extend(OPERATIONS.iter().map(|spec| spec.name.to_string()));
        }
        if let Some(only) = text_flag(&args, "--case") {
            cases.retain(|case| *case == only);
            cases.push(only);
            cases.dedup();
        }
        for family in cases.iter().map(String::as_str) {
            let concepts = concepts(family);
            let sampler = Sampler::new(&concepts, &GeneratorState::default(), 0.05, 1.0, 5)?;
            let job = GenerationJob {
                images: &images,
                indices: &indices,
                concepts: &concepts,
                sampler: &sampler,
                seed: 1,
                range: 0..count,
                batch_size,
                device: Device::Cpu,
            };
            // One small warm-up run lets libtorch allocate its buffers.
            let warm_up = GenerationJob { range: 0..batch_size as u32, ..job };
            generate_anomalies(&warm_up, &mut ProceduralGenerator, &|| false)?;

            let started = Instant::now();
            let cpu_started = thread_cpu_seconds();
            let generated = generate_anomalies(&job, &mut ProceduralGenerator, &|| false)?;
            let seconds = started.elapsed().as_secs_f64();
            let cpu_seconds = thread_cpu_seconds() - cpu_started;
            println!(
                "{}",
                serde_json::json!({
                    "implementation": "rust-tch",
                    "shape": format!("{channels}x{side}x{side}"),
                    "family": family,
                    "images": generated.len(),
                    "batch": batch_size,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "images_per_second": generated.len() as f64 / seconds,
                    "images_per_cpu_second": generated.len() as f64 / cpu_seconds,
                })
            );
        }
    }
    Ok(())
}

/// Build one concept per operation with default parameters, limited to a family ("global",
/// "local") or one operation unless `family` is "all".
fn concepts(family: &str) -> Vec<Concept> {
    OPERATIONS
        .iter()
        .filter(|spec| match family {
            "global" => spec.family == OperationFamily::Global,
            "local" => spec.family == OperationFamily::Local,
            "all" => true,
            operation => spec.name == operation,
        })
        .map(|spec| Concept::new(spec.name, spec.name, spec.name, &BTreeMap::new(), None, None))
        .collect::<Result<_, _>>()
        .expect("catalogue defaults are valid")
}

/// CPU time of the calling thread in seconds, from Linux's /proc/thread-self/schedstat. Unlike
/// wall time it excludes time spent waiting for other processes, so it stays comparable on a
/// busy machine. Returns 0 where the file is missing.
fn thread_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanoseconds: f64 = text.split_whitespace().next().and_then(|field| field.parse().ok()).unwrap_or(0.0);
    nanoseconds / 1e9
}

fn flag(args: &[String], name: &str) -> Option<u32> {
    text_flag(args, name)?.parse().ok()
}

fn text_flag(args: &[String], name: &str) -> Option<String> {
    let position = args.iter().position(|arg| arg == name)?;
    args.get(position + 1).cloned()
}
