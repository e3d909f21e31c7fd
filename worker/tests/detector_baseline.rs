//! `kka-worker baseline` end to end on a small slice of Fashion-MNIST.

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kka-worker"))
}

#[test]
fn baseline_writes_report() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, "[dataset]\ntrain_limit = 300\ntest_limit = 500\n[detector]\nbatch_size = 64\nlr = 1e-3\n").unwrap();
    let report = dir.path().join("report.json");

    let output = worker()
        .args(["baseline", "--normal-class", "1", "--epochs", "2", "--pretrain-epochs", "1", "--threads", "1", "--seed", "4"])
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(&report)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("AUROC"), "{stdout}");

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["detector"], "deep-svdd");
    assert_eq!(json["normal_class"], 1);
    assert_eq!(json["epochs"], 2);
    assert_eq!(json["pretrain_epochs"], 1);
    assert_eq!(json["seed"], 4);
    assert_eq!(json["threads"], 1);
    assert!(json["auroc"].as_f64().unwrap() > 0.6, "{json}");
    assert!(json["aupr"].as_f64().is_some(), "{json}");
    assert!(json["train_seconds"].as_f64().unwrap() > 0.0, "{json}");
}

#[test]
fn supervised_detectors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let output = worker()
        .args(["baseline", "--normal-class", "1", "--detector", "deep-sad", "--output"])
        .arg(dir.path().join("report.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("labelled anomalies"), "{stderr}");
}

#[test]
fn deep_sad_trains_on_anomaly_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, "[dataset]\ntrain_limit = 300\ntest_limit = 500\n[detector]\nbatch_size = 64\nlr = 1e-3\n").unwrap();
    let anomalies = dir.path().join("anomalies");
    std::fs::create_dir(&anomalies).unwrap();
    for index in 0..10u8 {
        // A bright square on black, at a different place in each image.
        let offset = u32::from(index);
        let image = image::GrayImage::from_fn(28, 28, |x, y| {
            let inside = (offset..offset + 10).contains(&x) && (offset..offset + 10).contains(&y);
            image::Luma([if inside { 250 } else { 0 }])
        });
        image.save(anomalies.join(format!("anomaly-{index}.png"))).unwrap();
    }
    let report = dir.path().join("report.json");

    let output = worker()
        .args(["baseline", "--normal-class", "1", "--detector", "deep-sad", "--epochs", "1", "--pretrain-epochs", "0"])
        .arg("--config")
        .arg(&config)
        .arg("--anomalies")
        .arg(&anomalies)
        .arg("--output")
        .arg(&report)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["detector"], "deep-sad");
    assert_eq!(json["labelled_anomalies"], 10);
}
