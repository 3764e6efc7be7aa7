//! EfficientNet-Lite0, the mobile variant of EfficientNet (no squeeze-excitation, ReLU6, fixed
//! stem and head), with the module names of lukemelas' `efficientnet_pytorch` that the
//! PyTorch port of TensorFlow's checkpoint uses (`_blocks.3._depthwise_conv.weight`, ...).
//!
//! Ported from TensorFlow, so convolutions pad TensorFlow's "SAME" way (the odd pixel after)
//! and BatchNorm uses eps 1e-3 and momentum 0.01. Drop-connect (stochastic depth) of the
//! original training recipe is not applied when fine-tuning.

use super::image_classifier::{ImageBackbone, ImageConfig, global_average_pool, stem_block_group, stem_block_groups};
use super::{Adaptable, ConvUnit};
use crate::nn::classification_head::ClassificationHead;
use crate::nn::conv_bn::{Activation, ConvBn, ConvBnSpec, Padding, conv_bn_key};
use crate::nn::layer_group::LayerGroup;
use burn::module::Module;
use burn::prelude::*;

/// (repeats, kernel, first stride, expansion, input channels, output channels) per stage, from
/// TensorFlow's `efficientnet_lite_builder.py` (`r1_k3_s11_e1_i32_o16`, ...).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Blocks of EfficientNet-Lite0 (the repeats above).
pub const NUM_BLOCKS: usize = 16;
const STEM: usize = 32;
const HEAD: usize = 1280;

fn unit(c_in: usize, c_out: usize, kernel: usize, stride: usize, activation: Activation) -> ConvBnSpec {
    ConvBnSpec {
        padding: Padding::TfSame,
        bn_eps: 1e-3,
        bn_momentum: 0.01,
        ..ConvBnSpec::new(c_in, c_out, kernel, stride, activation)
    }
}

/// Mobile inverted bottleneck: 1×1 expansion (absent at ratio 1), k×k depthwise, linear 1×1
/// projection, and a skip connection when the shape is kept.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    #[module(skip)]
    pub residual: bool,
}

impl MbConv {
    fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, expand: usize, device: &Device) -> Self {
        let hidden = c_in * expand;
        Self {
            expand: (expand != 1).then(|| unit(c_in, hidden, 1, 1, Activation::Relu6).init(device)),
            depthwise: unit(hidden, hidden, kernel, stride, Activation::Relu6).depthwise().init(device),
            project: unit(hidden, c_out, 1, 1, Activation::None).init(device),
            residual: stride == 1 && c_in == c_out,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = match &self.expand {
            Some(e) => e.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.project.forward(self.depthwise.forward(h));
        if self.residual { x + y } else { y }
    }
}

#[derive(Module, Debug)]
pub struct EfficientNetLite {
    /// `_conv_stem` + `_bn0`: 3×3 stride-2 conv from RGB.
    pub stem: ConvBn,
    /// `_blocks.0` to `_blocks.15`.
    pub blocks: Vec<MbConv>,
    /// `_conv_head` + `_bn1`: 1×1 conv to 1280 channels.
    pub last: ConvBn,
    /// `_fc`.
    pub head: ClassificationHead,
}

impl EfficientNetLite {
    pub fn new(num_classes: usize, dropout: f64, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = STEM;
        for (repeats, kernel, stride, expand, _, c_out) in STAGES {
            for i in 0..repeats {
                blocks.push(MbConv::new(c_in, c_out, kernel, if i == 0 { stride } else { 1 }, expand, device));
                c_in = c_out;
            }
        }
        Self {
            stem: unit(3, STEM, 3, 2, Activation::Relu6).init(device),
            blocks,
            last: unit(c_in, HEAD, 1, 1, Activation::Relu6).init(device),
            head: ClassificationHead::new(HEAD, num_classes, dropout, 0.01, device),
        }
    }
}

impl ImageBackbone for EfficientNetLite {
    const CLASSIFIER_MODULE: &'static str = "_fc";
    const CLASSIFIER_WEIGHT: &'static str = "_fc.weight";

    fn build(config: &ImageConfig, num_classes: usize, dropout: f64, device: &Device) -> anyhow::Result<Self> {
        if config.architecture != "efficientnet_lite0" {
            anyhow::bail!("EfficientNet-Lite: only efficientnet_lite0 is built, not {}", config.architecture);
        }
        Ok(Self::new(num_classes, dropout, device))
    }

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

impl Adaptable for EfficientNetLite {
    fn conv_units_mut(&mut self) -> Vec<ConvUnit<'_>> {
        let mut out = vec![ConvUnit { path: "stem".into(), name: "_conv_stem".into(), unit: &mut self.stem }];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            if let Some(e) = b.expand.as_mut() {
                out.push(ConvUnit {
                    path: format!("blocks.{i}.expand"),
                    name: format!("_blocks.{i}._expand_conv"),
                    unit: e,
                });
            }
            out.push(ConvUnit {
                path: format!("blocks.{i}.depthwise"),
                name: format!("_blocks.{i}._depthwise_conv"),
                unit: &mut b.depthwise,
            });
            out.push(ConvUnit {
                path: format!("blocks.{i}.project"),
                name: format!("_blocks.{i}._project_conv"),
                unit: &mut b.project,
            });
        }
        out.push(ConvUnit { path: "last".into(), name: "_conv_head".into(), unit: &mut self.last });
        out
    }

    /// The head, the final 1×1 conv (`Layer(17)`), the blocks top-down, the stem (`Layer(0)`).
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
            return conv_bn_key(rest, "_conv_stem", "_bn0");
        }
        if let Some(rest) = path.strip_prefix("last.") {
            return conv_bn_key(rest, "_conv_head", "_bn1");
        }
        if let Some(rest) = path.strip_prefix("head.classifier.") {
            return format!("_fc.{rest}");
        }
        if let Some(rest) = path.strip_prefix("blocks.") {
            let mut parts = rest.splitn(3, '.');
            let (i, layer, leaf) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (conv, bn) = match layer {
                "expand" => ("_expand_conv", "_bn0"),
                "depthwise" => ("_depthwise_conv", "_bn1"),
                "project" => ("_project_conv", "_bn2"),
                _ => return path.to_string(),
            };
            return conv_bn_key(leaf, &format!("_blocks.{i}.{conv}"), &format!("_blocks.{i}.{bn}"));
        }
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_the_checkpoint_shapes_and_keys() {
        let device = Device::default();
        let model = EfficientNetLite::new(1000, 0.0, &device);
        assert_eq!(model.blocks.len(), NUM_BLOCKS);
        assert!(model.blocks[0].expand.is_none() && model.blocks[1].expand.is_some());
        assert_eq!(model.blocks[3].depthwise.conv.weight.dims(), [144, 1, 5, 5]);
        assert_eq!(model.checkpoint_key("blocks.3.depthwise.bn.gamma"), "_blocks.3._bn1.weight");
        assert_eq!(model.checkpoint_key("blocks.1.expand.conv.weight"), "_blocks.1._expand_conv.weight");
        assert_eq!(model.checkpoint_key("last.bn.running_var"), "_bn1.running_var");
        // 4,652,008 parameters as in the TensorFlow release (BatchNorm statistics excluded).
        let params = crate::io::params::list_params(&model);
        let n: usize = params.iter().filter(|p| !p.path.contains("running_")).map(|p| p.numel()).sum();
        assert_eq!(n, 4_652_008);
    }
}
