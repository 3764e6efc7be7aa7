//! ResNet-18/34/50/101/152 as torchvision builds them (`torchvision.models.resnet*`), so
//! torchvision checkpoints load by their own keys (`layer2.0.downsample.0.weight`, ...).
//!
//! A 7×7 stride-2 stem and 3×3 max pool, four stages of residual blocks (basic: two 3×3 convs;
//! bottleneck: 1×1, 3×3 with the stride, 1×1 to 4× width), a projection shortcut where the
//! shape changes, ReLU after each sum, global average pooling and a linear classifier.

use super::image_classifier::{ImageBackbone, ImageConfig, global_average_pool, stem_block_group, stem_block_groups};
use super::{Adaptable, ConvUnit};
use crate::nn::classification_head::ClassificationHead;
use crate::nn::conv_bn::{Activation, ConvBn, ConvBnSpec, conv_bn_key};
use crate::nn::layer_group::LayerGroup;
use anyhow::bail;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;

/// Blocks per stage and whether they are bottlenecks, by depth.
fn layout(depth: usize) -> Option<([usize; 4], bool)> {
    Some(match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        101 => ([3, 4, 23, 3], true),
        152 => ([3, 8, 36, 3], true),
        _ => return None,
    })
}

#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// `conv1`/`bn1`, `conv2`/`bn2` (and `conv3`/`bn3` in a bottleneck); the last is linear.
    pub convs: Vec<ConvBn>,
    /// `downsample.0`/`downsample.1`: 1×1 projection when stride or width changes.
    pub downsample: Option<ConvBn>,
}

impl ResidualBlock {
    fn new(c_in: usize, planes: usize, stride: usize, bottleneck: bool, device: &Device) -> Self {
        let (convs, c_out) = if bottleneck {
            let c_out = planes * 4;
            let convs = vec![
                ConvBnSpec::new(c_in, planes, 1, 1, Activation::Relu).init(device),
                ConvBnSpec::new(planes, planes, 3, stride, Activation::Relu).init(device),
                ConvBnSpec::new(planes, c_out, 1, 1, Activation::None).init(device),
            ];
            (convs, c_out)
        } else {
            let convs = vec![
                ConvBnSpec::new(c_in, planes, 3, stride, Activation::Relu).init(device),
                ConvBnSpec::new(planes, planes, 3, 1, Activation::None).init(device),
            ];
            (convs, planes)
        };
        let downsample = (stride != 1 || c_in != c_out)
            .then(|| ConvBnSpec::new(c_in, c_out, 1, stride, Activation::None).init(device));
        Self { convs, downsample }
    }

    fn c_out(&self) -> usize {
        self.convs.last().map_or(0, |c| c.conv.weight.dims()[0])
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.convs.iter().fold(x, |h, c| c.forward(h));
        crate::ops::relu::relu_capped(y + shortcut, f32::INFINITY)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    /// `conv1`/`bn1` and ReLU.
    pub stem: ConvBn,
    pub pool: MaxPool2d,
    /// `layer1.0` … `layer4.{n-1}` in order.
    pub blocks: Vec<ResidualBlock>,
    /// `fc`.
    pub head: ClassificationHead,
    /// (stage 1–4, index in stage) of each block, for torchvision's names.
    #[module(skip)]
    pub stage_of: Vec<(usize, usize)>,
}

impl ResNet {
    pub fn new(depth: usize, num_classes: usize, dropout: f64, device: &Device) -> Option<Self> {
        let (repeats, bottleneck) = layout(depth)?;
        let mut blocks = Vec::new();
        let mut stage_of = Vec::new();
        let mut c_in = 64;
        for (s, (&n, planes)) in repeats.iter().zip([64, 128, 256, 512]).enumerate() {
            for i in 0..n {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                let block = ResidualBlock::new(c_in, planes, stride, bottleneck, device);
                c_in = block.c_out();
                blocks.push(block);
                stage_of.push((s + 1, i));
            }
        }
        Some(Self {
            stem: ConvBnSpec::new(3, 64, 7, 2, Activation::Relu).init(device),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            head: ClassificationHead::new(c_in, num_classes, dropout, 0.01, device),
            stage_of,
        })
    }

    fn block_name(&self, i: usize) -> String {
        let (s, j) = self.stage_of.get(i).copied().unwrap_or((0, i));
        format!("layer{s}.{j}")
    }
}

impl ImageBackbone for ResNet {
    const CLASSIFIER_MODULE: &'static str = "fc";
    const CLASSIFIER_WEIGHT: &'static str = "fc.weight";

    fn build(config: &ImageConfig, num_classes: usize, dropout: f64, device: &Device) -> anyhow::Result<Self> {
        let depth = config.architecture.strip_prefix("resnet").and_then(|d| d.parse().ok());
        match depth.and_then(|d| Self::new(d, num_classes, dropout, device)) {
            Some(m) => Ok(m),
            None => bail!("'{}' is not a ResNet (resnet18/34/50/101/152)", config.architecture),
        }
    }

    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.stem.forward(images));
        global_average_pool(self.blocks.iter().fold(x, |h, b| b.forward(h)))
    }

    fn head(&self) -> &ClassificationHead {
        &self.head
    }

    fn head_mut(&mut self) -> &mut ClassificationHead {
        &mut self.head
    }
}

impl Adaptable for ResNet {
    fn conv_units_mut(&mut self) -> Vec<ConvUnit<'_>> {
        let names: Vec<String> = (0..self.blocks.len()).map(|i| self.block_name(i)).collect();
        let mut out = vec![ConvUnit { path: "stem".into(), name: "conv1".into(), unit: &mut self.stem }];
        for (i, (b, name)) in self.blocks.iter_mut().zip(names).enumerate() {
            for (j, c) in b.convs.iter_mut().enumerate() {
                out.push(ConvUnit {
                    path: format!("blocks.{i}.convs.{j}"),
                    name: format!("{name}.conv{}", j + 1),
                    unit: c,
                });
            }
            if let Some(d) = b.downsample.as_mut() {
                out.push(ConvUnit {
                    path: format!("blocks.{i}.downsample"),
                    name: format!("{name}.downsample.0"),
                    unit: d,
                });
            }
        }
        out
    }

    /// The head, the blocks top-down (`Layer(n)` … `Layer(1)`), the stem (`Layer(0)`).
    fn layer_groups(&self) -> Vec<LayerGroup> {
        stem_block_groups(self.blocks.len(), false)
    }

    fn layer_group(path: &str) -> LayerGroup {
        // No final conv: no `last.` paths.
        stem_block_group(path, 0)
    }

    fn checkpoint_key(&self, path: &str) -> String {
        if path.contains(".lora.") {
            return path.to_string();
        }
        if let Some(rest) = path.strip_prefix("stem.") {
            return conv_bn_key(rest, "conv1", "bn1");
        }
        if let Some(rest) = path.strip_prefix("head.classifier.") {
            return format!("fc.{rest}");
        }
        if let Some(rest) = path.strip_prefix("blocks.") {
            let (i, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let name = self.block_name(i.parse().unwrap_or(usize::MAX));
            if let Some(leaf) = rest.strip_prefix("downsample.") {
                return conv_bn_key(leaf, &format!("{name}.downsample.0"), &format!("{name}.downsample.1"));
            }
            if let Some(rest) = rest.strip_prefix("convs.") {
                let (j, leaf) = rest.split_once('.').unwrap_or((rest, ""));
                let n = j.parse::<usize>().unwrap_or(0) + 1;
                return conv_bn_key(leaf, &format!("{name}.conv{n}"), &format!("{name}.bn{n}"));
            }
        }
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts of torchvision's resnet18 and resnet50 (1000 classes), and its key names.
    #[test]
    fn resnets_have_torchvision_sizes_and_keys() {
        let device = Device::default();
        for (depth, want) in [(18, 11_689_512), (50, 25_557_032)] {
            let model = ResNet::new(depth, 1000, 0.0, &device).unwrap();
            let params = crate::io::params::list_params(&model);
            let n: usize = params.iter().filter(|p| !p.path.contains("running_")).map(|p| p.numel()).sum();
            assert_eq!(n, want, "resnet{depth}");
        }
        let model = ResNet::new(18, 10, 0.0, &device).unwrap();
        assert_eq!(model.checkpoint_key("blocks.2.downsample.bn.gamma"), "layer2.0.downsample.1.weight");
        assert_eq!(model.checkpoint_key("blocks.3.convs.1.conv.weight"), "layer2.1.conv2.weight");
        assert_eq!(model.checkpoint_key("stem.bn.running_mean"), "bn1.running_mean");
        assert_eq!(model.checkpoint_key("head.classifier.bias"), "fc.bias");
        assert!(ResNet::new(20, 10, 0.0, &device).is_none());
    }
}
