//! The TorchScript generator with tiny modules scripted by the PyTorch in .venv.

mod generator_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kka_worker::generator::torchscript::{condition_dim, TorchScriptGenerator};
use kka_worker::generator::{anomaly_seed, AnomalyPlan, Batch, Generator, GeneratorError};
use kka_worker::knowledge::Concept;
use tch::{Device, Tensor};

use generator_support::synthetic_batch;

/// Python interpreter of the PyTorch that libtorch comes from.
fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Forward bodies over `x` (the normal batch) and `c` (the condition), by module name.
const MODULES: &[(&str, &str)] = &[
    // Blend toward the inverse image by the severity, the last condition entry.
    ("invert", "s = c[:, -1].view(-1, 1, 1, 1)\n        return x * (1.0 - s) + (1.0 - x) * s"),
    ("bright", "return x * 0.0 + 5.0"),
    // Every pixel holds the condition's width / 100, so the test can read the width back.
    ("width", "return x * 0.0 + float(c.size(1)) / 100.0"),
    ("crop", "return x[:, :, :10, :10]"),
    ("nan", "return x * float('nan')"),
    ("ints", "return (x * 255.0).to(torch.uint8)"),
];

/// Folder with `<name>.pt` for every entry of [`MODULES`], scripted once per test binary by
/// one Python process, because importing torch takes seconds.
fn modules() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut source = String::from("import torch\n");
        for (name, body) in MODULES {
            let path = dir.path().join(format!("{name}.pt"));
            source.push_str(&format!(
                "class Module_{name}(torch.nn.Module):\n\
                 \x20   def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:\n\
                 \x20       {body}\n\
                 torch.jit.save(torch.jit.script(Module_{name}()), {path:?})\n",
                path = path.display().to_string()
            ));
        }
        // TorchScript reads the classes' source, so the script must be a file.
        let script = dir.path().join("modules.py");
        std::fs::write(&script, source).unwrap();
        let output = Command::new(python()).arg(&script).output().expect("failed to run .venv/bin/python");
        assert!(output.status.success(), "scripting failed: {}", String::from_utf8_lossy(&output.stderr));
        dir
    })
    .path()
}

fn module(name: &str) -> PathBuf {
    modules().join(format!("{name}.pt"))
}

fn batch_inputs(count: usize) -> (Vec<AnomalyPlan>, Vec<Concept>, Tensor) {
    let params: BTreeMap<String, f64> = BTreeMap::new();
    let concepts = vec![Concept::new("rot", "rotated", "rotate", &params, None, None).unwrap()];
    let plans = (0..count)
        .map(|i| AnomalyPlan {
            index: i as u32,
            seed: anomaly_seed(1, i as u32),
            concept: 0,
            severity: 0.25 * (i as f64 + 1.0),
            source_row: i,
            donor_row: i,
        })
        .collect();
    (plans, concepts, synthetic_batch(count, 1, 28, 28))
}

#[test]
fn module_output_follows_condition() {
    let path = module("invert");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    assert_eq!(generator.name(), "torchscript");
    assert_eq!(generator.version().len(), 12);

    let (plans, concepts, sources) = batch_inputs(4);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let output = generator.generate(&batch).unwrap();
    assert_eq!(output.size(), sources.size());
    for (row, plan) in plans.iter().enumerate() {
        let s = plan.severity;
        let source = sources.get(row as i64);
        let expected: Tensor = &source * (1.0 - s) + (1.0 - &source) * s;
        let difference = (output.get(row as i64) - expected).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "row {row}: difference {difference}");
    }
}

#[test]
fn module_output_is_clamped() {
    let path = module("bright");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    let (plans, concepts, sources) = batch_inputs(2);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let output = generator.generate(&batch).unwrap();
    assert_eq!(output.max().double_value(&[]), 1.0);
    assert_eq!(output.min().double_value(&[]), 1.0);
}

#[test]
fn condition_has_the_documented_width() {
    let path = module("width");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    let (plans, concepts, sources) = batch_inputs(1);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let output = generator.generate(&batch).unwrap();
    let width = (output.double_value(&[0, 0, 0, 0]) * 100.0).round() as usize;
    assert_eq!(width, condition_dim());
}

#[test]
fn wrong_output_shape_is_a_clear_error() {
    let path = module("crop");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    let (plans, concepts, sources) = batch_inputs(2);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let error = generator.generate(&batch).unwrap_err();
    assert!(matches!(error, GeneratorError::ModuleOutput { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("[2, 1, 10, 10]"), "{message}");
    assert!(message.contains("crop.pt"), "{message}");
}

#[test]
fn nan_output_is_rejected() {
    let path = module("nan");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    let (plans, concepts, sources) = batch_inputs(1);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let error = generator.generate(&batch).unwrap_err().to_string();
    assert!(error.contains("NaN"), "{error}");
}

#[test]
fn missing_or_corrupt_module_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.pt");
    let error = TorchScriptGenerator::load(&missing, Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("absent.pt"), "{error}");

    let corrupt = dir.path().join("corrupt.pt");
    std::fs::write(&corrupt, b"not a module").unwrap();
    let error = TorchScriptGenerator::load(&corrupt, Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("corrupt.pt"), "{error}");
    assert!(error.contains("generator.torchscript_path"), "{error}");
}

#[test]
fn integer_output_is_rejected() {
    let path = module("ints");
    let mut generator = TorchScriptGenerator::load(&path, Device::Cpu).unwrap();
    let (plans, concepts, sources) = batch_inputs(1);
    let batch = Batch { plans: &plans, concepts: &concepts, sources: &sources, donors: &sources };
    let error = generator.generate(&batch).unwrap_err().to_string();
    assert!(error.contains("Uint8"), "{error}");
}
