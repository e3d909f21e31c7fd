//! LeNet-style encoders and decoders of the Deep SVDD / Deep SAD literature (Ruff et al.),
//! written against raw libtorch ops so that every step is fallible.
//!
//! Every layer is bias-free, and BatchNorm has no affine parameters (eps 1e-4, momentum 0.1),
//! because biases and affine shifts let Deep SVDD collapse every input onto the centre.
//! Convolutions are 5×5 with padding 2, activations are LeakyReLU with slope 0.01, pooling is
//! 2×2 max-pooling, and decoders upsample with nearest-neighbour interpolation. Weights start
//! from PyTorch's default U(−1/√fan_in, 1/√fan_in), except the CIFAR-10 decoder, which uses
//! Xavier-uniform with the LeakyReLU gain.

use std::collections::BTreeMap;

use kka_shared::config::NetworkKind;
use tch::nn::{Init, Path, VarStore};
use tch::{Device, Tensor};

use super::DetectorError;

const BN_EPS: f64 = 1e-4;
const BN_MOMENTUM: f64 = 0.1;
const KERNEL: i64 = 5;

/// A concrete encoder/decoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    MnistLenet,
    FmnistLenet,
    Cifar10Lenet,
}

impl Architecture {
    /// Resolve `network` for images of `shape` (C, H, W), rejecting a network that does not fit.
    pub fn resolve(network: NetworkKind, shape: [i64; 3]) -> Result<Architecture, DetectorError> {
        let architecture = match network {
            NetworkKind::Auto => match shape {
                [1, 28, 28] => Architecture::MnistLenet,
                [3, 32, 32] => Architecture::Cifar10Lenet,
                _ => return Err(DetectorError::UnsupportedShape { shape, network: network.as_str() }),
            },
            NetworkKind::MnistLenet => Architecture::MnistLenet,
            NetworkKind::FmnistLenet => Architecture::FmnistLenet,
            NetworkKind::Cifar10Lenet => Architecture::Cifar10Lenet,
        };
        if architecture.input_shape() != shape {
            return Err(DetectorError::UnsupportedShape { shape, network: architecture.name() });
        }
        Ok(architecture)
    }

    /// Parse the name written by [`name`](Architecture::name).
    pub fn from_name(name: &str) -> Option<Architecture> {
        [Architecture::MnistLenet, Architecture::FmnistLenet, Architecture::Cifar10Lenet]
            .into_iter()
            .find(|architecture| architecture.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::MnistLenet => "mnist-lenet",
            Architecture::FmnistLenet => "fmnist-lenet",
            Architecture::Cifar10Lenet => "cifar10-lenet",
        }
    }

    /// Input channels, height and width.
    pub fn input_shape(self) -> [i64; 3] {
        match self {
            Architecture::MnistLenet | Architecture::FmnistLenet => [1, 28, 28],
            Architecture::Cifar10Lenet => [3, 32, 32],
        }
    }

    /// Dimension of the representation φ(x).
    pub fn rep_dim(self) -> i64 {
        match self {
            Architecture::MnistLenet => 32,
            Architecture::FmnistLenet => 64,
            Architecture::Cifar10Lenet => 128,
        }
    }

    /// Output channels of the encoder's conv blocks.
    fn conv_channels(self) -> &'static [i64] {
        match self {
            Architecture::MnistLenet => &[8, 4],
            Architecture::FmnistLenet => &[16, 32],
            Architecture::Cifar10Lenet => &[32, 64, 128],
        }
    }

    /// Units of the hidden dense layer between the conv blocks and the representation.
    fn hidden_units(self) -> Option<i64> {
        match self {
            Architecture::FmnistLenet => Some(128),
            _ => None,
        }
    }

    /// Flattened size after the conv blocks: each block halves height and width.
    fn flat_dim(self) -> i64 {
        let [_, height, width] = self.input_shape();
        let blocks = self.conv_channels().len() as u32;
        let last = *self.conv_channels().last().unwrap_or(&1);
        last * (height >> blocks) * (width >> blocks)
    }
}

/// A 5×5 bias-free convolution with padding 2.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
}

impl Conv {
    fn new(path: Path, input: i64, output: i64) -> Conv {
        let bound = pytorch_default_bound(input * KERNEL * KERNEL);
        Conv { weight: path.var("weight", &[output, input, KERNEL, KERNEL], Init::Uniform { lo: -bound, up: bound }) }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, tch::TchError> {
        xs.f_conv2d(&self.weight, None::<&Tensor>, [1, 1], [2, 2], [1, 1], 1)
    }
}

/// A 5×5 bias-free transposed convolution.
#[derive(Debug)]
struct Deconv {
    weight: Tensor,
    padding: i64,
}

impl Deconv {
    fn new(path: Path, input: i64, output: i64, padding: i64, xavier: bool) -> Deconv {
        // PyTorch stores transposed-conv weights as (in, out, k, k) and takes fan_in from dim 1.
        let fan_in = output * KERNEL * KERNEL;
        let bound = if xavier {
            let fan_out = input * KERNEL * KERNEL;
            leaky_relu_gain() * (6.0 / (fan_in + fan_out) as f64).sqrt()
        } else {
            pytorch_default_bound(fan_in)
        };
        let weight = path.var("weight", &[input, output, KERNEL, KERNEL], Init::Uniform { lo: -bound, up: bound });
        Deconv { weight, padding }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, tch::TchError> {
        let padding = [self.padding, self.padding];
        xs.f_conv_transpose2d(&self.weight, None::<&Tensor>, [1, 1], padding, [0, 0], 1, [1, 1])
    }
}

/// A bias-free dense layer, or one with a bias for the outlier-exposure head.
#[derive(Debug)]
struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn new(path: Path, input: i64, output: i64, bias: bool) -> Dense {
        let bound = pytorch_default_bound(input);
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = path.var("weight", &[output, input], init);
        let bias = bias.then(|| path.var("bias", &[output], init));
        Dense { weight, bias }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor, tch::TchError> {
        xs.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// BatchNorm without affine parameters; its running statistics are non-trainable variables.
#[derive(Debug)]
struct Norm {
    running_mean: Tensor,
    running_var: Tensor,
}

impl Norm {
    fn new(path: Path, features: i64) -> Norm {
        Norm {
            running_mean: path.zeros_no_train("running_mean", &[features]),
            running_var: path.ones_no_train("running_var", &[features]),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        xs.f_batch_norm(
            None::<&Tensor>,
            None::<&Tensor>,
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

/// PyTorch's default initialisation bound of conv and dense weights, 1/√fan_in.
fn pytorch_default_bound(fan_in: i64) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// PyTorch's `calculate_gain("leaky_relu")` with the default slope 0.01.
fn leaky_relu_gain() -> f64 {
    (2.0 / (1.0 + 0.01f64 * 0.01)).sqrt()
}

fn pool(xs: &Tensor) -> Result<Tensor, tch::TchError> {
    xs.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

fn upsample(xs: &Tensor) -> Result<Tensor, tch::TchError> {
    let size = xs.size();
    let (height, width) = (size[2], size[3]);
    xs.f_upsample_nearest2d([2 * height, 2 * width], 2.0, 2.0)
}

/// The encoder φ: image batch (N×C×H×W) to representation (N×rep_dim).
#[derive(Debug)]
pub struct Encoder {
    architecture: Architecture,
    convs: Vec<(Conv, Norm)>,
    hidden: Option<(Dense, Norm)>,
    output: Dense,
}

impl Encoder {
    pub fn new(path: Path, architecture: Architecture) -> Encoder {
        let mut convs = Vec::new();
        let mut input = architecture.input_shape()[0];
        for (index, &output) in architecture.conv_channels().iter().enumerate() {
            let number = index + 1;
            convs.push((Conv::new(&path / format!("conv{number}"), input, output), Norm::new(&path / format!("bn{number}"), output)));
            input = output;
        }

        let flat = architecture.flat_dim();
        let hidden = architecture
            .hidden_units()
            .map(|units| (Dense::new(&path / "fc_hidden", flat, units, false), Norm::new(&path / "bn_hidden", units)));
        let before_output = architecture.hidden_units().unwrap_or(flat);
        let output = Dense::new(&path / "fc_out", before_output, architecture.rep_dim(), false);
        Encoder { architecture, convs, hidden, output }
    }

    /// Run the encoder; `train` selects batch statistics (and updates the running statistics)
    /// over the running statistics.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        let mut xs = xs.shallow_clone();
        for (conv, norm) in &self.convs {
            xs = pool(&norm.forward(&conv.forward(&xs)?, train)?.f_leaky_relu()?)?;
        }
        xs = xs.f_flatten(1, -1)?;

        if let Some((dense, norm)) = &self.hidden {
            xs = norm.forward(&dense.forward(&xs)?, train)?.f_leaky_relu()?;
        }
        self.output.forward(&xs)
    }

    pub fn architecture(&self) -> Architecture {
        self.architecture
    }
}

/// The pretraining decoder: representation (N×rep_dim) back to an image batch.
#[derive(Debug)]
pub struct Decoder {
    architecture: Architecture,
    hidden: Option<(Dense, Norm)>,
    deconvs: Vec<(Deconv, Option<Norm>)>,
    /// Whether the output passes through a sigmoid, which fits inputs scaled to [0, 1].
    sigmoid: bool,
}

impl Decoder {
    pub fn new(path: Path, architecture: Architecture, sigmoid: bool) -> Decoder {
        let rep_dim = architecture.rep_dim();
        let hidden = architecture
            .hidden_units()
            .map(|units| (Dense::new(&path / "fc_hidden", rep_dim, units, false), Norm::new(&path / "bn_hidden", units)));

        // (input channels, output channels, padding) of each transposed convolution. The
        // MNIST-sized decoders use padding 3 in the second one to go from 16×16 to 14×14.
        let start = architecture.hidden_units().unwrap_or(rep_dim) / 16;
        let layers: Vec<(i64, i64, i64)> = match architecture {
            Architecture::MnistLenet => vec![(start, 4, 2), (4, 8, 3), (8, 1, 2)],
            Architecture::FmnistLenet => vec![(start, 32, 2), (32, 16, 3), (16, 1, 2)],
            Architecture::Cifar10Lenet => vec![(start, 128, 2), (128, 64, 2), (64, 32, 2), (32, 3, 2)],
        };
        let xavier = architecture == Architecture::Cifar10Lenet;
        let last = layers.len() - 1;
        let deconvs = layers
            .into_iter()
            .enumerate()
            .map(|(index, (input, output, padding))| {
                let number = index + 1;
                let deconv = Deconv::new(&path / format!("deconv{number}"), input, output, padding, xavier);
                let norm = (index != last).then(|| Norm::new(&path / format!("bn{number}"), output));
                (deconv, norm)
            })
            .collect();
        Decoder { architecture, hidden, deconvs, sigmoid }
    }

    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        let mut xs = xs.shallow_clone();
        if let Some((dense, norm)) = &self.hidden {
            xs = norm.forward(&dense.forward(&xs)?, train)?;
        }
        let batch = xs.size()[0];
        xs = xs.f_view([batch, -1, 4, 4])?.f_leaky_relu()?;
        // The 28×28 decoders upsample 4×4 to 8×8 first; the 32×32 decoder starts at 4×4.
        if self.architecture != Architecture::Cifar10Lenet {
            xs = upsample(&xs)?;
        }

        for (deconv, norm) in &self.deconvs {
            xs = deconv.forward(&xs)?;
            if let Some(norm) = norm {
                xs = upsample(&norm.forward(&xs, train)?.f_leaky_relu()?)?;
            }
        }
        if self.sigmoid {
            xs = xs.f_sigmoid()?;
        }
        Ok(xs)
    }
}

/// The outlier-exposure head: a dense layer with a bias from the representation to one logit.
#[derive(Debug)]
pub struct Head {
    dense: Dense,
}

impl Head {
    pub fn new(path: Path, rep_dim: i64) -> Head {
        Head { dense: Dense::new(path, rep_dim, 1, true) }
    }

    /// Logits, N.
    pub fn forward(&self, representation: &Tensor) -> Result<Tensor, tch::TchError> {
        self.dense.forward(representation)?.f_squeeze_dim(1)
    }
}

/// Copy all variables of a var store by name into CPU tensors detached from the graph.
pub fn named_tensors(store: &VarStore) -> Result<BTreeMap<String, Tensor>, tch::TchError> {
    store
        .variables()
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect()
}

/// Copy `tensors` into the variables of `store` with the same names. Every variable under
/// `prefix` must have a tensor of its shape; tensors outside `prefix` are ignored.
pub fn load_named(store: &VarStore, prefix: &str, tensors: &BTreeMap<String, Tensor>) -> Result<usize, DetectorError> {
    let mut copied = 0;
    for (name, mut variable) in store.variables() {
        if !name.starts_with(prefix) {
            continue;
        }
        let source = tensors.get(&name).ok_or_else(|| DetectorError::Mismatch {
            reason: format!("tensor {name} is missing"),
        })?;
        if source.size() != variable.size() {
            return Err(DetectorError::Mismatch {
                reason: format!("tensor {name} has shape {:?}, the network expects {:?}", source.size(), variable.size()),
            });
        }
        tch::no_grad(|| variable.f_copy_(source))?;
        copied += 1;
    }
    Ok(copied)
}
