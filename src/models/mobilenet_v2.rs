//! MobileNetV2 as torchvision builds it (`torchvision.models.mobilenet_v2`), so torchvision's
//! ImageNet checkpoints load by their own keys (`features.3.conv.1.0.weight`, ...).
//!
//! A 3×3 stride-2 stem, 17 inverted-residual blocks (1×1 expansion, 3×3 depthwise, linear 1×1
//! projection; a skip connection when shape allows), a 1×1 conv to 1280 channels, global average
//! pooling, then dropout and a linear classifier. Every conv is followed by BatchNorm; ReLU6
//! everywhere except after the projections.

use super::image_classifier::{ImageBackbone, ImageConfig, global_average_pool, stem_block_group, stem_block_groups};
use super::{Adaptable, ConvUnit};
use crate::nn::classification_head::ClassificationHead;
use crate::nn::conv_bn::{Activation, ConvBn, ConvBnSpec, conv_bn_key};
use crate::nn::layer_group::LayerGroup;
use burn::module::Module;
use burn::prelude::*;
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

/// A conv + BatchNorm unit as torchvision's `Conv2dNormActivation` builds it here.
fn conv_bn(c_in: usize, c_out: usize, kernel: usize, stride: usize, relu6: bool, device: &Device) -> ConvBn {
    let act = if relu6 { Activation::Relu6 } else { Activation::None };
    ConvBnSpec::new(c_in, c_out, kernel, stride, act).init(device)
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
            layers.push(conv_bn(c_in, hidden, 1, 1, true, device));
        }
        layers.push(ConvBnSpec::new(hidden, hidden, 3, stride, Activation::Relu6).depthwise().init(device));
        layers.push(conv_bn(hidden, c_out, 1, 1, false, device));
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
        let stem = conv_bn(3, c_in, 3, 2, true, device);
        let mut blocks = Vec::new();
        for (t, c, n, s) in INVERTED_RESIDUAL_SETTING {
            let c_out = make_divisible(c as f64 * cfg.width_mult, cfg.round_nearest);
            for i in 0..n {
                blocks.push(InvertedResidual::new(c_in, c_out, if i == 0 { s } else { 1 }, t, device));
                c_in = c_out;
            }
        }
        Self {
            last: conv_bn(c_in, last, 1, 1, true, device),
            stem,
            blocks,
            // torchvision initialises the classifier from N(0, 0.01).
            head: ClassificationHead::new(last, num_classes, dropout, 0.01, device),
        }
    }
}

/// Inverted-residual blocks in every MobileNetV2 (the repeats of the setting table).
pub const NUM_BLOCKS: usize = 17;

impl ImageBackbone for MobileNetV2 {
    const CLASSIFIER_MODULE: &'static str = "classifier";
    const CLASSIFIER_WEIGHT: &'static str = "classifier.1.weight";

    fn build(config: &ImageConfig, num_classes: usize, dropout: f64, device: &Device) -> anyhow::Result<Self> {
        Ok(Self::new(&config.mobilenet_v2, num_classes, dropout, device))
    }

    /// `images [b, 3, h, w]` (normalised) → pooled features `[b, last_channel]`.
    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(images);
        for b in &self.blocks {
            x = b.forward(x);
        }
        global_average_pool(self.last.forward(x))
    }

    fn head(&self) -> &ClassificationHead {
        &self.head
    }

    fn head_mut(&mut self) -> &mut ClassificationHead {
        &mut self.head
    }
}

impl Adaptable for MobileNetV2 {
    /// torchvision's module names: `features.0.0`, `features.3.conv.1.0`, `features.3.conv.2`
    /// for a projection (a bare conv in torchvision), `features.18.0`.
    fn conv_units_mut(&mut self) -> Vec<ConvUnit<'_>> {
        let last = format!("features.{}.0", self.blocks.len() + 1);
        let mut out = vec![ConvUnit { path: "stem".into(), name: "features.0.0".into(), unit: &mut self.stem }];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let n = b.layers.len();
            for (j, l) in b.layers.iter_mut().enumerate() {
                let name = if j + 1 == n {
                    format!("features.{}.conv.{j}", i + 1)
                } else {
                    format!("features.{}.conv.{j}.0", i + 1)
                };
                out.push(ConvUnit { path: format!("blocks.{i}.layers.{j}"), name, unit: l });
            }
        }
        out.push(ConvUnit { path: "last".into(), name: last, unit: &mut self.last });
        out
    }

    /// The head, then the final 1×1 conv (`Layer(18)`), the blocks top-down (`Layer(17)` …
    /// `Layer(1)`), and the stem last (`Layer(0)`).
    fn layer_groups(&self) -> Vec<LayerGroup> {
        stem_block_groups(NUM_BLOCKS, true)
    }

    fn layer_group(path: &str) -> LayerGroup {
        stem_block_group(path, NUM_BLOCKS)
    }

    fn checkpoint_key(&self, path: &str) -> String {
        if path.contains(".lora.") {
            return path.to_string();
        }
        if let Some(rest) = path.strip_prefix("stem.") {
            return conv_bn_key(rest, "features.0.0", "features.0.1");
        }
        if let Some(rest) = path.strip_prefix("last.") {
            let i = self.blocks.len() + 1;
            return conv_bn_key(rest, &format!("features.{i}.0"), &format!("features.{i}.1"));
        }
        if let Some(rest) = path.strip_prefix("head.classifier.") {
            return format!("classifier.1.{rest}");
        }
        if let Some(rest) = path.strip_prefix("blocks.") {
            // blocks.i.layers.j.{conv,bn}.x: the last layer (the projection) is a bare conv and a
            // bare BatchNorm in torchvision (`conv.{j}` and `conv.{j+1}`), the others `conv.{j}.0/1`.
            let mut parts = rest.splitn(4, '.');
            let i: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let _layers = parts.next();
            let j: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let leaf = parts.next().unwrap_or("");
            let n = self.blocks.get(i).map_or(0, |b| b.layers.len());
            let block = format!("features.{}.conv", i + 1);
            return if j + 1 == n {
                conv_bn_key(leaf, &format!("{block}.{j}"), &format!("{block}.{}", j + 1))
            } else {
                conv_bn_key(leaf, &format!("{block}.{j}.0"), &format!("{block}.{j}.1"))
            };
        }
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;

    /// Gradients through BatchNorm with frozen statistics (inference mode on the autodiff
    /// device) reach γ, β and the input: frozen statistics must not freeze the layers.
    #[test]
    fn frozen_batch_norm_is_differentiable() {
        let device = crate::ops::device::training(&Device::default());
        let mut bn = BatchNormConfig::new(2).init(&device);
        bn.running_mean = burn::module::RunningState::new(Tensor::from_floats([0.5, -1.0], &device));
        bn.running_var = burn::module::RunningState::new(Tensor::from_floats([4.0, 0.25], &device));
        bn.training = Param::from_bool(false);
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0]], [[3.0, -1.0]]]], &device).require_grad();
        let y = crate::nn::conv_bn::batch_norm_activation(&bn, x.clone(), Activation::None);
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
