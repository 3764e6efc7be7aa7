//! MobileNetV2 as torchvision builds it (`torchvision.models.mobilenet_v2`), so torchvision's
//! ImageNet checkpoints load by their own keys (`features.3.conv.1.0.weight`, ...).
//!
//! A 3×3 stride-2 stem, 17 inverted-residual blocks (1×1 expansion, 3×3 depthwise, linear 1×1
//! projection; a skip connection when shape allows), a 1×1 conv to 1280 channels, global average
//! pooling, then dropout and a linear classifier. Every conv is followed by BatchNorm; ReLU6
//! everywhere except after the projections.

use super::text_classifier::ClassificationHead;
use crate::methods::LayerGroup;
use crate::methods::lora::conv::ConvLoraAdapter;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;
use serde::{Deserialize, Serialize};

/// The architecture settings torchvision's constructor takes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MobileNetV2Config {
    #[serde(default = "one")]
    pub width_mult: f64,
    #[serde(default = "default_round")]
    pub round_nearest: usize,
    #[serde(default = "default_last")]
    pub last_channel: usize,
}

fn one() -> f64 {
    1.0
}
fn default_round() -> usize {
    8
}
fn default_last() -> usize {
    1280
}

impl Default for MobileNetV2Config {
    fn default() -> Self {
        Self { width_mult: 1.0, round_nearest: 8, last_channel: 1280 }
    }
}

/// (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
const INVERTED_RESIDUAL_SETTING: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// torchvision's `_make_divisible`: round to a multiple of `divisor`, never more than 10% down.
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new = ((v + d / 2.0) / d).floor() * d;
    new = new.max(d);
    if new < 0.9 * v {
        new += d;
    }
    new as usize
}

/// Conv (no bias), BatchNorm, and ReLU6 unless it is a linear projection.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    /// A LoRA adapter on the convolution, when one is attached (see `methods::lora::conv`).
    pub lora: Option<ConvLoraAdapter>,
    pub bn: BatchNorm,
    #[module(skip)]
    pub relu6: bool,
}

impl ConvBn {
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        relu6: bool,
        device: &Device,
    ) -> Self {
        let pad = (kernel - 1) / 2;
        let conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_groups(groups)
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(c_out).with_epsilon(1e-5).with_momentum(0.1).init(device);
        Self { conv, lora: None, bn, relu6 }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let z = match &self.lora {
            Some(lora) => self.conv.forward(x.clone()) + lora.forward(x),
            None => self.conv.forward(x),
        };
        let y = self.bn.forward(z);
        if self.relu6 { y.clamp(0.0, 6.0) } else { y }
    }
}

#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// The 1×1 expansion (absent when the expansion ratio is 1), the depthwise 3×3, and the
    /// linear 1×1 projection, in order.
    pub layers: Vec<ConvBn>,
    #[module(skip)]
    pub residual: bool,
}

impl InvertedResidual {
    fn new(c_in: usize, c_out: usize, stride: usize, expand: usize, device: &Device) -> Self {
        let hidden = c_in * expand;
        let mut layers = Vec::new();
        if expand != 1 {
            layers.push(ConvBn::new(c_in, hidden, 1, 1, 1, true, device));
        }
        layers.push(ConvBn::new(hidden, hidden, 3, stride, hidden, true, device));
        layers.push(ConvBn::new(hidden, c_out, 1, 1, 1, false, device));
        Self { layers, residual: stride == 1 && c_in == c_out }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        for l in &self.layers {
            y = l.forward(y);
        }
        if self.residual { x + y } else { y }
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// `features.0`: 3×3 stride-2 conv from RGB.
    pub stem: ConvBn,
    /// `features.1` to `features.17`.
    pub blocks: Vec<InvertedResidual>,
    /// `features.18`: 1×1 conv to `last_channel`.
    pub last: ConvBn,
    pub head: ClassificationHead,
}

impl MobileNetV2 {
    pub fn new(cfg: &MobileNetV2Config, num_classes: usize, dropout: f64, device: &Device) -> Self {
        let mut c_in = make_divisible(32.0 * cfg.width_mult, cfg.round_nearest);
        let last = make_divisible(cfg.last_channel as f64 * cfg.width_mult.max(1.0), cfg.round_nearest);
        let stem = ConvBn::new(3, c_in, 3, 2, 1, true, device);
        let mut blocks = Vec::new();
        for (t, c, n, s) in INVERTED_RESIDUAL_SETTING {
            let c_out = make_divisible(c as f64 * cfg.width_mult, cfg.round_nearest);
            for i in 0..n {
                blocks.push(InvertedResidual::new(c_in, c_out, if i == 0 { s } else { 1 }, t, device));
                c_in = c_out;
            }
        }
        Self {
            last: ConvBn::new(c_in, last, 1, 1, 1, true, device),
            stem,
            blocks,
            // torchvision initialises the classifier from N(0, 0.01).
            head: ClassificationHead::new(last, num_classes, dropout, 0.01, device),
        }
    }

    /// Channels of the pooled features the head sees.
    pub fn feature_dim(&self) -> usize {
        self.head.classifier.d_in()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// `images [b, 3, h, w]` (normalised) → pooled features `[b, last_channel]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(images);
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x = self.last.forward(x);
        let [b, c, _, _] = x.dims();
        adaptive_avg_pool2d(x, [1, 1]).reshape([b, c])
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(images))
    }

    /// Every convolution with its torchvision module name (`features.0.0`, `features.3.conv.1.0`,
    /// `features.3.conv.2` for a projection, `features.18.0`), for adapters to attach to.
    pub fn conv_layers_mut(&mut self) -> Vec<(String, &mut ConvBn)> {
        let last = format!("features.{}.0", self.blocks.len() + 1);
        let mut out = vec![("features.0.0".to_string(), &mut self.stem)];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let n = b.layers.len();
            for (j, l) in b.layers.iter_mut().enumerate() {
                let name = if j + 1 == n {
                    format!("features.{}.conv.{j}", i + 1)
                } else {
                    format!("features.{}.conv.{j}.0", i + 1)
                };
                out.push((name, l));
            }
        }
        out.push((last, &mut self.last));
        out
    }

    /// Switch BatchNorm layers between updating their statistics from each training batch
    /// (`train(path)` true) and normalising with the stored running statistics. Frozen layers
    /// of a transfer-learning run keep the ImageNet statistics; a layer in inference mode also
    /// skips the batch-statistics pass.
    pub fn set_batch_norm_training(self, train: impl Fn(&str) -> bool) -> Self {
        let set = |mut cb: ConvBn, path: String| {
            cb.bn.training = Param::from_bool(train(&path));
            cb
        };
        let blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| InvertedResidual {
                layers: b
                    .layers
                    .into_iter()
                    .enumerate()
                    .map(|(j, l)| set(l, format!("blocks.{i}.layers.{j}.bn")))
                    .collect(),
                residual: b.residual,
            })
            .collect();
        Self { stem: set(self.stem, "stem.bn".into()), blocks, last: set(self.last, "last.bn".into()), head: self.head }
    }
}

/// Inverted-residual blocks in every MobileNetV2 (the repeats of the setting table).
pub const NUM_BLOCKS: usize = 17;

/// Unfreezing groups for transfer learning: the head, then the final 1×1 conv (`Layer(18)`),
/// the blocks top-down (`Layer(17)` … `Layer(1)`), and the stem last (`Layer(0)`).
pub fn layer_groups() -> Vec<LayerGroup> {
    let mut order = vec![LayerGroup::Head];
    order.extend((0..=NUM_BLOCKS + 1).rev().map(LayerGroup::Layer));
    order
}

/// The group of a parameter path (see [`layer_groups`]).
pub fn layer_group(path: &str) -> LayerGroup {
    if path.starts_with("stem.") {
        LayerGroup::Layer(0)
    } else if let Some(rest) = path.strip_prefix("blocks.") {
        LayerGroup::Layer(1 + rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).unwrap_or(0))
    } else if path.starts_with("last.") {
        LayerGroup::Layer(NUM_BLOCKS + 1)
    } else {
        LayerGroup::Head
    }
}

/// torchvision's key for one of our parameter paths. burn names BatchNorm's affine parameters
/// `gamma`/`beta`; torchvision `weight`/`bias`.
pub fn torchvision_key(path: &str, model: &MobileNetV2) -> String {
    let bn = |rest: &str| {
        rest.replace("bn.gamma", "1.weight").replace("bn.beta", "1.bias").replace("bn.running_", "1.running_")
    };
    let conv_bn = |rest: &str| bn(rest).replace("conv.weight", "0.weight");
    if let Some(rest) = path.strip_prefix("stem.") {
        return format!("features.0.{}", conv_bn(rest));
    }
    if let Some(rest) = path.strip_prefix("last.") {
        return format!("features.{}.{}", model.blocks.len() + 1, conv_bn(rest));
    }
    if path.contains(".lora.") {
        return path.to_string();
    }
    if let Some(rest) = path.strip_prefix("head.classifier.") {
        return format!("classifier.1.{rest}");
    }
    if let Some(rest) = path.strip_prefix("blocks.") {
        // blocks.i.layers.j.{conv,bn}.x: the last layer (the projection) is a bare conv and a bare
        // BatchNorm in torchvision (`conv.{j}` and `conv.{j+1}`), the others `conv.{j}.0/1`.
        let mut parts = rest.splitn(4, '.');
        let i: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let _layers = parts.next();
        let j: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let leaf = parts.next().unwrap_or("");
        let n = model.blocks.get(i).map_or(0, |b| b.layers.len());
        let block = format!("features.{}.conv", i + 1);
        if j + 1 == n {
            return match leaf.split_once('.') {
                Some(("conv", p)) => format!("{block}.{j}.{p}"),
                Some(("bn", p)) => {
                    let p = match p {
                        "gamma" => "weight",
                        "beta" => "bias",
                        other => other,
                    };
                    format!("{block}.{}.{p}", j + 1)
                }
                _ => path.to_string(),
            };
        }
        return format!("{block}.{j}.{}", conv_bn(leaf));
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gradients through BatchNorm with frozen statistics (inference mode on the autodiff
    /// device) reach γ, β and the input: frozen statistics must not freeze the layers.
    #[test]
    fn frozen_batch_norm_is_differentiable() {
        let device = crate::device::training(&Device::default());
        let mut bn = BatchNormConfig::new(2).init(&device);
        bn.running_mean = burn::module::RunningState::new(Tensor::from_floats([0.5, -1.0], &device));
        bn.running_var = burn::module::RunningState::new(Tensor::from_floats([4.0, 0.25], &device));
        bn.training = Param::from_bool(false);
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0]], [[3.0, -1.0]]]], &device).require_grad();
        let y = bn.forward(x.clone());
        let grads = y.clone().sum().backward();
        let s = [1.0 / (4.0f32 + 1e-5).sqrt(), 1.0 / (0.25f32 + 1e-5).sqrt()];
        let gamma = bn.gamma.grad(&grads).expect("gamma grad").into_data().try_into_vec::<f32>().unwrap();
        assert!(
            (gamma[0] - (0.5 + 1.5) * s[0]).abs() < 1e-5 && (gamma[1] - (4.0 + 0.0) * s[1]).abs() < 1e-4,
            "{gamma:?}"
        );
        let beta = bn.beta.grad(&grads).expect("beta grad").into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(beta, vec![2.0, 2.0]);
        let dx = x.grad(&grads).expect("x grad").into_data().try_into_vec::<f32>().unwrap();
        assert!((dx[0] - s[0]).abs() < 1e-6 && (dx[3] - s[1]).abs() < 1e-5, "{dx:?}");
    }

    #[test]
    fn channel_rounding_matches_torchvision() {
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 0.75, 8), 24);
        assert_eq!(make_divisible(16.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
    }
}
