//! Training tests on small real slices of Fashion-MNIST.

use kka_shared::config::{Config, DatasetProtocol, DetectorKind, DetectorSettings};
use tch::{Device, Tensor};

use super::*;
use crate::data::{fashion_mnist, OneClassData};
use crate::metrics::auroc;

/// Class 1 (trousers) separates well from the other classes.
fn data(normal_class: u32) -> OneClassData {
    let protocol =
        DatasetProtocol { normal_classes: vec![normal_class], train_limit: 600, test_limit: 1000, ..DatasetProtocol::default() };
    fashion_mnist(&protocol)
}

fn settings(kind: DetectorKind) -> DetectorSettings {
    let defaults = Config::from_toml("").unwrap().detector.clone();
    DetectorSettings { kind, pretrain_epochs: 2, epochs: 3, batch_size: 64, lr: 1e-3, ..defaults }
}

fn test_auroc(detector: &dyn Detector, data: &OneClassData) -> f64 {
    auroc(&detector.score(&data.test.images).unwrap(), &data.test_is_anomaly).unwrap()
}

/// `count` test images of anomalous classes, as labelled anomalies.
fn labelled_anomalies(data: &OneClassData, count: usize) -> Tensor {
    let rows: Vec<i64> = data.test_is_anomaly.iter().enumerate().filter(|(_, &a)| a).map(|(i, _)| i as i64).take(count).collect();
    data.test.images.index_select(0, &Tensor::from_slice(&rows))
}

#[test]
fn deep_svdd_separates_trousers() {
    let data = data(1);
    let detector = Training::new(&data, None, &settings(DetectorKind::DeepSvdd), Device::Cpu).unwrap().run_to_end().unwrap();
    let value = test_auroc(detector.as_ref(), &data);
    assert!(value > 0.8, "AUROC {value}");
}

#[test]
fn same_seed_gives_identical_scores() {
    let data = data(1);
    let settings = settings(DetectorKind::DeepSvdd);
    let first = Training::new(&data, None, &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    let second = Training::new(&data, None, &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    assert_eq!(first.score(&data.test.images).unwrap(), second.score(&data.test.images).unwrap());

    let other_seed = DetectorSettings { seed: 99, ..settings };
    let third = Training::new(&data, None, &other_seed, Device::Cpu).unwrap().run_to_end().unwrap();
    assert_ne!(first.score(&data.test.images).unwrap(), third.score(&data.test.images).unwrap());
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let data = data(1);
    let anomalies = labelled_anomalies(&data, 40);
    let settings = settings(DetectorKind::DeepSad);
    let uninterrupted = Training::new(&data, Some(&anomalies), &settings, Device::Cpu).unwrap().run_to_end().unwrap();

    // Stop once in pretraining and once in the detector phase, reloading from bytes each time.
    let mut training = Training::new(&data, Some(&anomalies), &settings, Device::Cpu).unwrap();
    for stop_after in [1, 3] {
        while training.epochs_done() < stop_after {
            training.run_epoch().unwrap();
        }
        let progress = training.save_progress().unwrap();
        training = Training::resume(&progress, &data, Some(&anomalies), &settings, Device::Cpu).unwrap();
        assert_eq!(training.epochs_done(), stop_after);
    }
    let resumed = training.run_to_end().unwrap();
    assert_eq!(uninterrupted.score(&data.test.images).unwrap(), resumed.score(&data.test.images).unwrap());
}

#[test]
fn progress_of_other_settings_is_rejected() {
    let data = data(1);
    let settings = settings(DetectorKind::DeepSvdd);
    let progress = Training::new(&data, None, &settings, Device::Cpu).unwrap().save_progress().unwrap();
    let other = DetectorSettings { lr: 0.5, ..settings.clone() };
    let error = Training::resume(&progress, &data, None, &other, Device::Cpu).err().unwrap();
    assert!(matches!(error, DetectorError::Mismatch { .. }), "{error}");
    let error = Training::resume(b"garbage", &data, None, &settings, Device::Cpu).err().unwrap();
    assert!(matches!(error, DetectorError::Corrupt { .. }), "{error}");
}

#[test]
fn checkpoint_round_trip_keeps_scores() {
    let data = data(1);
    let settings = DetectorSettings { pretrain_epochs: 0, epochs: 1, ..settings(DetectorKind::DeepSvdd) };
    let detector = Training::new(&data, None, &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    let bytes = detector.to_bytes().unwrap();

    let expected = Expectation { kind: Some(DetectorKind::DeepSvdd), shape: Some([1, 28, 28]), dataset_fingerprint: Some(data.fingerprint.clone()) };
    let loaded = from_bytes(&bytes, &expected, Device::Cpu).unwrap();
    assert_eq!(detector.score(&data.test.images).unwrap(), loaded.score(&data.test.images).unwrap());
    assert!(detector.embed(&data.validation.images).unwrap().equal(&loaded.embed(&data.validation.images).unwrap()));
    assert_eq!(loaded.info(), detector.info());
}

#[test]
fn mismatched_checkpoint_is_rejected() {
    let data = data(1);
    let settings = DetectorSettings { pretrain_epochs: 0, epochs: 1, ..settings(DetectorKind::DeepSvdd) };
    let bytes = Training::new(&data, None, &settings, Device::Cpu).unwrap().run_to_end().unwrap().to_bytes().unwrap();

    let wrong_kind = Expectation { kind: Some(DetectorKind::OutlierExposure), ..Expectation::default() };
    let error = from_bytes(&bytes, &wrong_kind, Device::Cpu).err().unwrap();
    assert!(error.to_string().contains("deep-svdd"), "{error}");
    let wrong_shape = Expectation { shape: Some([3, 32, 32]), ..Expectation::default() };
    assert!(matches!(from_bytes(&bytes, &wrong_shape, Device::Cpu), Err(DetectorError::Mismatch { .. })));
    let wrong_data = Expectation { dataset_fingerprint: Some("other".into()), ..Expectation::default() };
    assert!(matches!(from_bytes(&bytes, &wrong_data, Device::Cpu), Err(DetectorError::Mismatch { .. })));

    // The weights of a 32-dimensional encoder do not fit the 64-dimensional fmnist-lenet.
    let (tensors, mut metadata) = checkpoint::decode(&bytes).unwrap();
    let mut info: DetectorInfo = serde_json::from_str(&metadata["info"]).unwrap();
    info.architecture = Architecture::FmnistLenet.name().into();
    metadata.insert("info".into(), serde_json::to_string(&info).unwrap());
    let tampered = checkpoint::encode(&tensors, metadata).unwrap();
    let error = from_bytes(&tampered, &Expectation::default(), Device::Cpu).err().unwrap();
    assert!(matches!(error, DetectorError::Mismatch { .. }), "{error}");

    assert!(matches!(from_bytes(&bytes[..bytes.len() / 2], &Expectation::default(), Device::Cpu), Err(DetectorError::Corrupt { .. })));
}

#[test]
fn deep_sad_uses_labelled_anomalies() {
    let data = data(0);
    let anomalies = labelled_anomalies(&data, 60);
    let detector = Training::new(&data, Some(&anomalies), &settings(DetectorKind::DeepSad), Device::Cpu).unwrap().run_to_end().unwrap();
    let value = test_auroc(detector.as_ref(), &data);
    assert!(value > 0.7, "AUROC {value}");
}

#[test]
fn outlier_exposure_trains_and_reloads() {
    let data = data(1);
    let anomalies = labelled_anomalies(&data, 100);
    let settings = DetectorSettings { pretrain_epochs: 0, ..settings(DetectorKind::OutlierExposure) };
    let detector = Training::new(&data, Some(&anomalies), &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    let scores = detector.score(&data.test.images).unwrap();
    assert!(scores.iter().all(|p| (0.0..=1.0).contains(p)));
    let value = auroc(&scores, &data.test_is_anomaly).unwrap();
    assert!(value > 0.8, "AUROC {value}");

    let loaded = from_bytes(&detector.to_bytes().unwrap(), &Expectation::default(), Device::Cpu).unwrap();
    assert_eq!(loaded.score(&data.test.images).unwrap(), scores);
}

#[test]
fn supervised_kinds_need_anomalies() {
    let data = data(1);
    for kind in [DetectorKind::DeepSad, DetectorKind::OutlierExposure] {
        let error = Training::new(&data, None, &settings(kind), Device::Cpu).err().unwrap();
        assert!(matches!(error, DetectorError::NoAnomalies { .. }), "{error}");
    }
}

#[test]
fn wrong_image_shapes_are_rejected() {
    let data = data(1);
    let anomalies = Tensor::zeros([4, 3, 28, 28], tch::kind::FLOAT_CPU);
    let error = Training::new(&data, Some(&anomalies), &settings(DetectorKind::DeepSad), Device::Cpu).err().unwrap();
    assert!(matches!(error, DetectorError::InputShape { .. }), "{error}");

    let cifar_net = DetectorSettings { network: kka_shared::config::NetworkKind::Cifar10Lenet, ..settings(DetectorKind::DeepSvdd) };
    let error = Training::new(&data, None, &cifar_net, Device::Cpu).err().unwrap();
    assert!(matches!(error, DetectorError::UnsupportedShape { .. }), "{error}");
}

#[test]
fn architectures_produce_expected_shapes() {
    for architecture in [Architecture::MnistLenet, Architecture::FmnistLenet, Architecture::Cifar10Lenet] {
        let store = tch::nn::VarStore::new(Device::Cpu);
        let encoder = net::Encoder::new(store.root() / "encoder", architecture);
        let decoder = net::Decoder::new(store.root() / "decoder", architecture, true);
        let [c, h, w] = architecture.input_shape();
        let images = Tensor::rand([3, c, h, w], tch::kind::FLOAT_CPU);
        let representation = encoder.forward(&images, true).unwrap();
        assert_eq!(representation.size(), vec![3, architecture.rep_dim()], "{}", architecture.name());
        let reconstruction = decoder.forward(&representation, true).unwrap();
        assert_eq!(reconstruction.size(), vec![3, c, h, w], "{}", architecture.name());
    }
}

#[test]
fn deep_svdd_ignores_anomalies() {
    let data = data(1);
    let anomalies = labelled_anomalies(&data, 20);
    let settings = DetectorSettings { pretrain_epochs: 0, epochs: 1, ..settings(DetectorKind::DeepSvdd) };
    let without = Training::new(&data, None, &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    let with = Training::new(&data, Some(&anomalies), &settings, Device::Cpu).unwrap().run_to_end().unwrap();
    assert_eq!(without.score(&data.validation.images).unwrap(), with.score(&data.validation.images).unwrap());
}
