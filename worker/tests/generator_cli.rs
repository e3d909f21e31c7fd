//! `kka-worker generate` end to end on a tiny IDX dataset.

mod generator_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use generator_support::write_idx_dataset;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    write_idx_dataset(&data, 12);
    let config = root.join("generate.toml");
    std::fs::write(&config, format!("[dataset]\nformat = \"fashion-mnist\"\npath = {:?}\n\n[telemetry]\nfilter = \"warn\"\n", data.display().to_string())).unwrap();
    Fixture { _dir: dir, root, config }
}

fn generate(fixture: &Fixture, output: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kka-worker"))
        .arg("generate")
        .arg("--config")
        .arg(&fixture.config)
        .args(["--normal-class", "1", "--count", "40", "--output"])
        .arg(fixture.root.join(output))
        .args(extra)
        .output()
        .unwrap()
}

fn folder_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect()
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "kka-worker generate failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn same_seed_gives_identical_files() {
    let fixture = fixture();
    assert_success(&generate(&fixture, "a", &["--seed", "7"]));
    assert_success(&generate(&fixture, "b", &["--seed", "7"]));
    assert_success(&generate(&fixture, "c", &["--seed", "8"]));

    let a = folder_bytes(&fixture.root.join("a"));
    let b = folder_bytes(&fixture.root.join("b"));
    let c = folder_bytes(&fixture.root.join("c"));
    assert_eq!(a.len(), 42, "40 PNGs, the manifest and the contact sheet");
    assert_eq!(a, b, "the same seed must give byte-identical files");
    assert_ne!(a["manifest.json"], c["manifest.json"]);
}

#[test]
fn manifest_describes_every_png() {
    let fixture = fixture();
    assert_success(&generate(&fixture, "out", &["--severity", "0.3..0.6"]));
    let dir = fixture.root.join("out");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 40);

    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        assert!(dir.join(file).is_file(), "{file} missing");
        let image = image::open(dir.join(file)).unwrap();
        assert_eq!((image.width(), image.height()), (28, 28));
        let severity = entry["severity"].as_f64().unwrap();
        assert!((0.3..=0.6).contains(&severity), "severity {severity}");
        assert!(entry["id"].as_str().unwrap().starts_with("generate.r0.s0."));
        assert!(entry["concept"].as_str().unwrap().len() > 3);
        assert!(entry["source_index"].is_u64());
        assert!(entry["seed"].is_u64());
        assert_eq!(entry["operation"], entry["recipe"]["operation"]);
        assert_eq!(entry["generator"], "procedural");
    }
    let families: std::collections::BTreeSet<&str> = entries.iter().map(|e| e["concept_id"].as_str().unwrap()).collect();
    assert!(families.len() > 3, "concepts are varied: {families:?}");
    assert!(image::open(dir.join("contact_sheet.png")).is_ok());
}

#[test]
fn bad_arguments_are_reported() {
    let fixture = fixture();
    let output = generate(&fixture, "bad", &["--severity", "0.9..0.1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("0.9..0.1"));

    let output = Command::new(env!("CARGO_BIN_EXE_kka-worker"))
        .args(["generate", "--config"])
        .arg(&fixture.config)
        .args(["--normal-class", "42", "--count", "3", "--output"])
        .arg(fixture.root.join("none"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("42"), "{stderr}");
}
