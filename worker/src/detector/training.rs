//! A resumable training run: optional autoencoder pretraining, then the detector.
//!
//! The run advances one epoch per [`Training::run_epoch`] call, so a caller can stop between
//! epochs, save the progress with [`Training::save_progress`] and continue later with
//! [`Training::resume`]. The progress contains every variable (weights and BatchNorm running
//! statistics), Adam's moments and step count, the centre and the epoch counters. The batch
//! order of an epoch is drawn from a generator seeded with the detector seed, the phase and the
//! epoch index, so a resumed run draws the same batches as an uninterrupted one and ends with
//! bit-identical weights on the same device and thread count.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kka_shared::config::{DetectorKind, DetectorSettings, Preprocessing};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::net::{load_named, named_tensors, Architecture, Decoder, Encoder, Head};
use super::optim::{scheduled_lr, Adam};
use super::{checkpoint, deep_sad, outlier_exposure, DeepSad, Detector, DetectorError, DetectorInfo, NormalizationInfo, OutlierExposure};
use crate::data::OneClassData;

/// Format tag of saved training progress.
pub const PROGRESS_FORMAT: &str = "kka-progress-v1";

/// Stage of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Autoencoder pretraining on the normal images.
    Pretrain,
    /// Training of the detector itself.
    Train,
    Finished,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pretrain => "pretrain",
            Phase::Train => "train",
            Phase::Finished => "finished",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        [Phase::Pretrain, Phase::Train, Phase::Finished].into_iter().find(|phase| phase.as_str() == text)
    }

    /// Stream id of the batch-order generator, so that the phases draw different orders.
    fn stream(self) -> u64 {
        match self {
            Phase::Pretrain => 1,
            Phase::Train => 2,
            Phase::Finished => 3,
        }
    }
}

/// Statistics of one finished epoch.
#[derive(Debug, Clone)]
pub struct EpochReport {
    pub phase: Phase,
    /// 1-based index of the epoch within its phase.
    pub epoch: u32,
    /// Mean batch loss.
    pub loss: f64,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// Seconds spent drawing the batch order and gathering batches, part of `seconds`.
    pub batching_seconds: f64,
    /// Images processed.
    pub images: usize,
}

/// The autoencoder of pretraining; its encoder has the same variable names as the detector's.
#[derive(Debug)]
struct Autoencoder {
    store: VarStore,
    encoder: Encoder,
    decoder: Decoder,
}

/// The networks of a run, before they move to the training device.
struct Networks {
    store: VarStore,
    encoder: Encoder,
    head: Option<Head>,
    autoencoder: Option<Autoencoder>,
}

/// A training run in progress.
pub struct Training {
    info: DetectorInfo,
    architecture: Architecture,
    phase: Phase,
    /// Epochs finished in the current phase.
    epoch: u32,
    /// Seconds spent in finished epochs, across resumptions.
    elapsed_seconds: f64,
    store: VarStore,
    encoder: Encoder,
    head: Option<Head>,
    autoencoder: Option<Autoencoder>,
    optimizer: Adam,
    center: Option<Tensor>,
    /// Preprocessed normal training images followed by the labelled anomalies, on the device.
    inputs: Tensor,
    /// 1 for labelled anomalies and 0 for normals, f32, on the device.
    is_anomaly: Tensor,
    normal_count: i64,
}

impl Training {
    /// Start a run on the training normals of `data` plus the labelled `anomalies` ([0, 1]
    /// images, N×C×H×W), with weights initialised from `settings.seed`.
    pub fn new(
        data: &OneClassData,
        anomalies: Option<&Tensor>,
        settings: &DetectorSettings,
        device: Device,
    ) -> Result<Training, DetectorError> {
        let mut training = Training::assemble(data, anomalies, settings, device, Some(settings.seed))?;
        if settings.pretrain_epochs > 0 {
            training.start_pretraining()?;
        } else {
            training.start_detector_phase()?;
        }
        tracing::debug!(kind = %settings.kind, architecture = training.architecture.name(), images = training.inputs.size()[0], "training started");
        Ok(training)
    }

    /// Continue a run from [`save_progress`](Training::save_progress) bytes. The data,
    /// anomalies, settings and device must be those of the saved run.
    pub fn resume(
        bytes: &[u8],
        data: &OneClassData,
        anomalies: Option<&Tensor>,
        settings: &DetectorSettings,
        device: Device,
    ) -> Result<Training, DetectorError> {
        let (tensors, metadata) = checkpoint::decode(bytes)?;
        let format = checkpoint::required(&metadata, checkpoint::FORMAT_KEY)?;
        if format != PROGRESS_FORMAT {
            return Err(DetectorError::Corrupt { reason: format!("format is {format:?}, expected {PROGRESS_FORMAT:?}") });
        }

        let mut training = Training::assemble(data, anomalies, settings, device, None)?;
        let saved_info: DetectorInfo = checkpoint::required_json(&metadata, "info")?;
        if saved_info != training.info {
            return Err(DetectorError::Mismatch { reason: "the saved progress belongs to other settings or data".into() });
        }
        training.restore(&tensors, &metadata)?;
        Ok(training)
    }

    /// Build the networks and inputs; `seed` initialises the weights, or None when they are
    /// overwritten right after.
    fn assemble(
        data: &OneClassData,
        anomalies: Option<&Tensor>,
        settings: &DetectorSettings,
        device: Device,
        seed: Option<u64>,
    ) -> Result<Training, DetectorError> {
        // Deep SVDD is Deep SAD without labelled anomalies, so it ignores any it is given.
        let anomalies = if settings.kind == DetectorKind::DeepSvdd { None } else { anomalies };
        let anomaly_count = anomalies.map_or(0, |tensor| tensor.size().first().copied().unwrap_or(0));
        if settings.kind.needs_anomalies() && anomaly_count == 0 {
            return Err(DetectorError::NoAnomalies { kind: settings.kind });
        }
        if let Some(anomalies) = anomalies {
            super::check_images(anomalies, data.shape)?;
        }
        let architecture = Architecture::resolve(settings.network, data.shape)?;
        let info = DetectorInfo {
            kind: settings.kind,
            architecture: architecture.name().to_string(),
            settings: settings.clone(),
            shape: data.shape,
            dataset_fingerprint: data.fingerprint.clone(),
            normalization: NormalizationInfo::of(&data.normalizer),
        };

        let build = || build_networks(architecture, settings, data.normalizer.preprocessing());
        let mut networks = match seed {
            Some(seed) => super::with_seed(seed, build),
            None => super::with_init_lock(build),
        };
        networks.store.set_device(device);
        if let Some(autoencoder) = networks.autoencoder.as_mut() {
            autoencoder.store.set_device(device);
        }

        let (inputs, is_anomaly) = training_inputs(data, anomalies, device)?;
        Ok(Training {
            info,
            architecture,
            phase: Phase::Pretrain,
            epoch: 0,
            elapsed_seconds: 0.0,
            store: networks.store,
            encoder: networks.encoder,
            head: networks.head,
            autoencoder: networks.autoencoder,
            optimizer: Adam::new(Vec::new(), 0.0)?,
            center: None,
            inputs,
            is_anomaly,
            normal_count: data.train.images.size()[0],
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Epochs finished in the current phase.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Seconds spent in finished epochs, including those before a resumption.
    pub fn elapsed_seconds(&self) -> f64 {
        self.elapsed_seconds
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn info(&self) -> &DetectorInfo {
        &self.info
    }

    /// Epochs of all phases finished so far.
    pub fn epochs_done(&self) -> u32 {
        let settings = &self.info.settings;
        match self.phase {
            Phase::Pretrain => self.epoch,
            Phase::Train => settings.pretrain_epochs + self.epoch,
            Phase::Finished => settings.pretrain_epochs + settings.epochs,
        }
    }

    /// Run one epoch of the current phase, moving to the next phase after its last epoch.
    pub fn run_epoch(&mut self) -> Result<EpochReport, DetectorError> {
        let phase = self.phase;
        let report = match phase {
            Phase::Pretrain => self.pretrain_epoch()?,
            Phase::Train => self.detector_epoch()?,
            Phase::Finished => return Err(DetectorError::Mismatch { reason: "the training run has already finished".into() }),
        };
        if !report.loss.is_finite() {
            return Err(DetectorError::Diverged { phase: phase.as_str(), epoch: report.epoch, loss: report.loss });
        }

        self.epoch += 1;
        self.elapsed_seconds += report.seconds;
        let settings = &self.info.settings;
        if phase == Phase::Pretrain && self.epoch == settings.pretrain_epochs {
            self.transfer_encoder()?;
            self.autoencoder = None;
            self.start_detector_phase()?;
        } else if phase == Phase::Train && self.epoch == settings.epochs {
            self.phase = Phase::Finished;
        }
        tracing::debug!(phase = phase.as_str(), epoch = report.epoch, loss = report.loss, seconds = report.seconds, "epoch finished");
        Ok(report)
    }

    /// Run every remaining epoch and return the trained detector.
    pub fn run_to_end(mut self) -> Result<Box<dyn Detector>, DetectorError> {
        while !self.is_finished() {
            self.run_epoch()?;
        }
        self.finish()
    }

    /// Return the trained detector of a finished run.
    pub fn finish(self) -> Result<Box<dyn Detector>, DetectorError> {
        if self.phase != Phase::Finished {
            return Err(DetectorError::Mismatch {
                reason: format!("the training run is in its {} phase at epoch {}, not finished", self.phase.as_str(), self.epoch),
            });
        }
        match (self.info.kind, self.head, self.center) {
            (DetectorKind::OutlierExposure, Some(head), _) => Ok(Box::new(OutlierExposure::new(self.info, self.store, self.encoder, head))),
            (DetectorKind::DeepSvdd | DetectorKind::DeepSad, _, Some(center)) => {
                Ok(Box::new(DeepSad::new(self.info, self.store, self.encoder, center)))
            }
            _ => Err(DetectorError::Mismatch { reason: "the finished run lacks its head or centre".into() }),
        }
    }

    /// Serialize the run's state as safetensors bytes.
    pub fn save_progress(&self) -> Result<Vec<u8>, DetectorError> {
        let mut tensors = BTreeMap::new();
        for (name, tensor) in named_tensors(&self.store)? {
            tensors.insert(format!("model/{name}"), tensor);
        }
        if let Some(autoencoder) = &self.autoencoder {
            for (name, tensor) in named_tensors(&autoencoder.store)? {
                tensors.insert(format!("autoencoder/{name}"), tensor);
            }
        }
        let (moments, steps) = self.optimizer.state()?;
        for (name, tensor) in moments {
            tensors.insert(format!("optimizer/{name}"), tensor);
        }
        if let Some(center) = &self.center {
            tensors.insert("center".into(), center.f_to_device(Device::Cpu)?);
        }

        // Serialising plain structs of numbers, strings and enums cannot fail.
        let metadata = HashMap::from([
            (checkpoint::FORMAT_KEY.to_string(), PROGRESS_FORMAT.to_string()),
            ("info".to_string(), serde_json::to_string(&self.info).unwrap_or_default()),
            ("phase".to_string(), self.phase.as_str().to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("steps".to_string(), steps.to_string()),
            ("seconds".to_string(), self.elapsed_seconds.to_string()),
        ]);
        checkpoint::encode(&tensors, metadata)
    }

    fn restore(&mut self, tensors: &BTreeMap<String, Tensor>, metadata: &HashMap<String, String>) -> Result<(), DetectorError> {
        let corrupt = |reason: String| DetectorError::Corrupt { reason };
        let phase_text = checkpoint::required(metadata, "phase")?;
        let phase = Phase::parse(phase_text).ok_or_else(|| corrupt(format!("unknown phase {phase_text:?}")))?;
        let epoch: u32 = checkpoint::required_json(metadata, "epoch")?;
        let steps: i64 = checkpoint::required_json(metadata, "steps")?;
        self.elapsed_seconds = checkpoint::required_json(metadata, "seconds")?;

        load_named(&self.store, "", &strip_prefix(tensors, "model/"))?;
        self.phase = phase;
        self.epoch = epoch;
        match phase {
            Phase::Pretrain => {
                let autoencoder = self.autoencoder.as_ref().ok_or_else(|| corrupt("pretraining progress for settings without pretraining".into()))?;
                load_named(&autoencoder.store, "", &strip_prefix(tensors, "autoencoder/"))?;
                self.optimizer = Adam::new(trainable(&autoencoder.store), self.info.settings.pretrain_weight_decay)?;
            }
            Phase::Train | Phase::Finished => {
                self.autoencoder = None;
                self.optimizer = Adam::new(trainable(&self.store), self.info.settings.weight_decay)?;
                if self.info.kind != DetectorKind::OutlierExposure {
                    let center = tensors.get("center").ok_or_else(|| corrupt("the centre is missing".into()))?;
                    self.center = Some(center.f_to_device(self.inputs.device())?);
                }
            }
        }
        self.optimizer.restore(&strip_prefix(tensors, "optimizer/"), steps).map_err(corrupt)?;
        Ok(())
    }

    fn start_pretraining(&mut self) -> Result<(), DetectorError> {
        let autoencoder = self.autoencoder.as_ref().ok_or_else(|| DetectorError::Mismatch { reason: "no autoencoder was built".into() })?;
        self.optimizer = Adam::new(trainable(&autoencoder.store), self.info.settings.pretrain_weight_decay)?;
        self.phase = Phase::Pretrain;
        self.epoch = 0;
        Ok(())
    }

    fn start_detector_phase(&mut self) -> Result<(), DetectorError> {
        let settings = &self.info.settings;
        self.optimizer = Adam::new(trainable(&self.store), settings.weight_decay)?;
        if settings.kind != DetectorKind::OutlierExposure {
            let normals = self.inputs.f_narrow(0, 0, self.normal_count)?;
            let center = deep_sad::compute_center(&self.encoder, &normals, settings.batch_size as i64, settings.center_eps)?;
            self.center = Some(center);
        }
        self.phase = Phase::Train;
        self.epoch = 0;
        Ok(())
    }

    /// Copy the pretrained autoencoder's encoder variables (weights and BatchNorm statistics)
    /// into the detector's encoder. Fails unless every encoder variable is copied.
    fn transfer_encoder(&mut self) -> Result<(), DetectorError> {
        let Some(autoencoder) = &self.autoencoder else {
            return Ok(());
        };
        let pretrained = named_tensors(&autoencoder.store)?;
        let copied = load_named(&self.store, "encoder.", &pretrained)?;
        let expected = self.store.variables().keys().filter(|name| name.starts_with("encoder.")).count();
        if copied != expected || copied == 0 {
            return Err(DetectorError::Mismatch { reason: format!("copied {copied} of {expected} pretrained encoder variables") });
        }
        tracing::debug!(variables = copied, "pretrained encoder copied into the detector");
        Ok(())
    }

    fn pretrain_epoch(&mut self) -> Result<EpochReport, DetectorError> {
        let Some(autoencoder) = &self.autoencoder else {
            return Err(DetectorError::Mismatch { reason: "pretraining without an autoencoder".into() });
        };
        let settings = &self.info.settings;
        let lr = scheduled_lr(settings.lr, &settings.lr_milestones, self.epoch);
        let inputs = &self.inputs;
        let optimizer = &mut self.optimizer;

        let normals = inputs.f_narrow(0, 0, self.normal_count)?;
        run_batches(Phase::Pretrain, self.epoch, settings, &normals, &self.is_anomaly, |batch, _| {
            let reconstruction = autoencoder.decoder.forward(&autoencoder.encoder.forward(batch, true)?, true)?;
            // Sum of squared errors per image, averaged over the batch.
            let loss = reconstruction.f_sub(batch)?.f_square()?.f_sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)?.f_mean(Kind::Float)?;
            optimizer.zero_grad();
            loss.f_backward()?;
            optimizer.step(lr)?;
            loss.f_detach()
        })
    }

    fn detector_epoch(&mut self) -> Result<EpochReport, DetectorError> {
        let settings = &self.info.settings;
        let lr = scheduled_lr(settings.lr, &settings.lr_milestones, self.epoch);
        let (encoder, head, center) = (&self.encoder, &self.head, &self.center);
        let optimizer = &mut self.optimizer;

        run_batches(Phase::Train, self.epoch, settings, &self.inputs, &self.is_anomaly, |batch, targets| {
            let embeddings = encoder.forward(batch, true)?;
            let loss = match (head, center) {
                (Some(head), _) => outlier_exposure::loss(&head.forward(&embeddings)?, targets)?,
                (None, Some(center)) => deep_sad::loss(&embeddings, center, targets, settings.eta, settings.eps)?,
                (None, None) => return Err(tch::TchError::Kind("the Deep SAD centre is not set".into())),
            };
            optimizer.zero_grad();
            loss.f_backward()?;
            optimizer.step(lr)?;
            loss.f_detach()
        })
    }

    /// Return the detector's encoder variables, for tests of the pretraining transfer.
    #[cfg(test)]
    fn encoder_tensors(&self) -> BTreeMap<String, Tensor> {
        named_tensors(&self.store).unwrap().into_iter().filter(|(name, _)| name.starts_with("encoder.")).collect()
    }
}

/// Run one epoch over `inputs` in a seeded random order, calling `step` with each batch and
/// its rows of `targets`, and return the mean of the losses `step` returns. `targets` needs at
/// least as many rows as `inputs`.
fn run_batches(
    phase: Phase,
    epoch: u32,
    settings: &DetectorSettings,
    inputs: &Tensor,
    targets: &Tensor,
    mut step: impl FnMut(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
) -> Result<EpochReport, DetectorError> {
    let started = Instant::now();
    let device = inputs.device();
    let order = batch_order(settings.seed, phase, epoch, inputs.size()[0] as usize);
    let batches = batch_ranges(order.len(), settings.batch_size);
    let mut batching = started.elapsed().as_secs_f64();

    let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
    for range in &batches {
        let gathering = Instant::now();
        let indices = Tensor::f_from_slice(&order[range.clone()])?.f_to_device(device)?;
        let batch = inputs.f_index_select(0, &indices)?;
        let batch_targets = targets.f_index_select(0, &indices)?;
        batching += gathering.elapsed().as_secs_f64();
        loss_sum = loss_sum.f_add(&step(&batch, &batch_targets)?)?;
    }

    let loss = loss_sum.f_double_value(&[])? / batches.len().max(1) as f64;
    Ok(EpochReport {
        phase,
        epoch: epoch + 1,
        loss,
        seconds: started.elapsed().as_secs_f64(),
        batching_seconds: batching,
        images: order.len(),
    })
}

/// Draw a permutation of 0..count from the detector seed, the phase and the epoch.
fn batch_order(seed: u64, phase: Phase, epoch: u32, count: usize) -> Vec<i64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((phase.stream() << 32) | u64::from(epoch));
    let mut order: Vec<i64> = (0..count as i64).collect();
    order.shuffle(&mut rng);
    order
}

/// Consecutive batches of `batch_size` over `count` items. A last batch of one image joins the
/// previous batch, because BatchNorm cannot normalise a single value per channel in training mode.
fn batch_ranges(count: usize, batch_size: usize) -> Vec<std::ops::Range<usize>> {
    let batch_size = batch_size.max(1);
    let mut ranges: Vec<std::ops::Range<usize>> = (0..count).step_by(batch_size).map(|start| start..(start + batch_size).min(count)).collect();
    if ranges.len() >= 2 && ranges.last().is_some_and(|last| last.len() == 1) {
        let last = ranges.pop().map_or(count, |range| range.end);
        if let Some(previous) = ranges.last_mut() {
            previous.end = last;
        }
    }
    ranges
}

fn build_networks(architecture: Architecture, settings: &DetectorSettings, preprocessing: Preprocessing) -> Networks {
    let store = VarStore::new(Device::Cpu);
    let encoder = Encoder::new(store.root() / "encoder", architecture);
    let head = (settings.kind == DetectorKind::OutlierExposure).then(|| Head::new(store.root() / "head", architecture.rep_dim()));

    let autoencoder = (settings.pretrain_epochs > 0).then(|| {
        let store = VarStore::new(Device::Cpu);
        let encoder = Encoder::new(store.root() / "encoder", architecture);
        // A sigmoid output only fits inputs in [0, 1], which standardised inputs are not.
        let decoder = Decoder::new(store.root() / "decoder", architecture, preprocessing == Preprocessing::Scale);
        Autoencoder { store, encoder, decoder }
    });
    Networks { store, encoder, head, autoencoder }
}

/// Preprocessed normals followed by anomalies, and the matching 0/1 anomaly labels, on `device`.
fn training_inputs(data: &OneClassData, anomalies: Option<&Tensor>, device: Device) -> Result<(Tensor, Tensor), DetectorError> {
    let normals = data.normalizer.apply(&data.train.images.f_to_device(device)?)?;
    let normal_count = normals.size()[0];
    let Some(anomalies) = anomalies else {
        let labels = Tensor::f_zeros([normal_count], (Kind::Float, device))?;
        return Ok((normals, labels));
    };

    let anomalies = data.normalizer.apply(&anomalies.f_to_kind(Kind::Float)?.f_to_device(device)?)?;
    let anomaly_count = anomalies.size()[0];
    let inputs = Tensor::f_cat(&[normals, anomalies], 0)?;
    let labels = Tensor::f_cat(
        &[Tensor::f_zeros([normal_count], (Kind::Float, device))?, Tensor::f_ones([anomaly_count], (Kind::Float, device))?],
        0,
    )?;
    Ok((inputs, labels))
}

/// Trainable variables by name, sorted.
fn trainable(store: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = store.variables().into_iter().filter(|(_, tensor)| tensor.requires_grad()).collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

fn strip_prefix(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(name, tensor)| name.strip_prefix(prefix).map(|rest| (rest.to_string(), tensor.shallow_clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::config::{Config, DatasetProtocol};

    fn tensors_equal(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
        a.len() == b.len() && a.iter().all(|(name, tensor)| b.get(name).is_some_and(|other| other.equal(tensor)))
    }

    #[test]
    fn pretrained_encoder_is_copied() {
        let protocol = DatasetProtocol { normal_classes: vec![1], train_limit: 200, test_limit: 100, ..DatasetProtocol::default() };
        let data = crate::data::fashion_mnist(&protocol);
        let settings = DetectorSettings { pretrain_epochs: 1, epochs: 1, batch_size: 64, ..Config::from_toml("").unwrap().detector.clone() };
        let mut training = Training::new(&data, None, &settings, Device::Cpu).unwrap();
        assert_eq!(training.phase(), Phase::Pretrain);

        training.pretrain_epoch().unwrap();
        let pretrained: BTreeMap<String, Tensor> = named_tensors(&training.autoencoder.as_ref().unwrap().store)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| name.starts_with("encoder."))
            .collect();
        // Weights and BatchNorm statistics of two convs and the output layer.
        assert_eq!(pretrained.len(), 2 + 2 * 2 + 1);
        assert!(!tensors_equal(&training.encoder_tensors(), &pretrained), "the encoders start out equal");

        training.transfer_encoder().unwrap();
        assert!(tensors_equal(&training.encoder_tensors(), &pretrained));
    }

    #[test]
    fn batch_order_depends_on_seed_phase_and_epoch() {
        let base = batch_order(1, Phase::Train, 0, 50);
        assert_eq!(base, batch_order(1, Phase::Train, 0, 50));
        assert_ne!(base, batch_order(2, Phase::Train, 0, 50));
        assert_ne!(base, batch_order(1, Phase::Pretrain, 0, 50));
        assert_ne!(base, batch_order(1, Phase::Train, 1, 50));
        let mut sorted = base.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<i64>>());
    }

    #[test]
    fn single_image_tail_joins_previous_batch() {
        assert_eq!(batch_ranges(9, 4), vec![0..4, 4..9]);
        assert_eq!(batch_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(batch_ranges(1, 4), vec![0..1]);
        assert_eq!(batch_ranges(0, 4), Vec::<std::ops::Range<usize>>::new());
    }
}
