//! Image classifiers: `config.json` in the layout timm uses on the Hugging Face hub
//! (`architecture`, `num_classes`, `pretrained_cfg` with the input size and normalisation), weights
//! as `model.safetensors` or a PyTorch checkpoint (`pytorch_model.bin` or one `*.pth`, read
//! without running Python); what every CNN backbone shows the task ([`ImageBackbone`]).

use super::efficientnet_lite::EfficientNetLite;
use super::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use super::resnet::ResNet;
use super::{Adaptable, Head, LoadReport, ModelDir, load_weights};
use crate::io::safetensors::HostTensor;
use crate::nn::classification_head::ClassificationHead;
use crate::nn::layer_group::LayerGroup;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the backbone was pretrained to see images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainedCfg {
    /// `[channels, height, width]`.
    pub input_size: [usize; 3],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Resize so that the crop is this fraction of the resized short side (0.875: 256 → 224).
    #[serde(default = "default_crop_pct")]
    pub crop_pct: f32,
}

fn default_crop_pct() -> f32 {
    0.875
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub num_classes: usize,
    pub pretrained_cfg: PretrainedCfg,
    /// Class names in id order (a fine-tuned model; optional for a base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_names: Option<Vec<String>>,
    #[serde(flatten)]
    pub mobilenet_v2: MobileNetV2Config,
    /// What finetune did to produce this model (absent for a base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<serde_json::Value>,
}

pub const ARCHITECTURES: [&str; 7] =
    ["mobilenet_v2", "efficientnet_lite0", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];

/// What the image task needs from a CNN backbone with a classification head, beyond what every
/// trainable model shows methods ([`Adaptable`]: convolutions, groups, checkpoint keys). One
/// implementation per architecture file.
pub trait ImageBackbone: Adaptable {
    /// The classifier's module name in the checkpoint (peft's `modules_to_save` entry).
    const CLASSIFIER_MODULE: &'static str;
    /// The checkpoint key of the classifier's weight `[classes, features]`.
    const CLASSIFIER_WEIGHT: &'static str;

    fn build(config: &ImageConfig, num_classes: usize, dropout: f64, device: &Device) -> Result<Self>;
    /// `images [b, 3, h, w]` (normalised) → pooled features `[b, feature_dim]`.
    fn features(&self, images: Tensor<4>) -> Tensor<2>;
    fn head(&self) -> &ClassificationHead;
    fn head_mut(&mut self) -> &mut ClassificationHead;

    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head().forward(self.features(images))
    }

    /// Channels of the pooled features the head sees.
    fn feature_dim(&self) -> usize {
        self.head().classifier.d_in()
    }
}

impl ImageConfig {
    /// The config of an image model directory (timm's layout), checked.
    pub fn read(dir: &ModelDir) -> Result<Self> {
        let config_path = dir.config_path();
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!("{}: no readable config.json; is this an image model directory?", dir.dir.display())
        })?;
        let config: ImageConfig = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not an image model config (needs architecture, num_classes, pretrained_cfg)",
                config_path.display()
            )
        })?;
        super::check_sizes(&[
            ("num_classes", config.num_classes, 1 << 20),
            ("last_channel", config.mobilenet_v2.last_channel, 1 << 14),
            ("round_nearest", config.mobilenet_v2.round_nearest, 1 << 10),
            ("pretrained_cfg.input_size[1]", config.pretrained_cfg.input_size[1], 1 << 13),
            ("pretrained_cfg.input_size[2]", config.pretrained_cfg.input_size[2], 1 << 13),
        ])
        .with_context(|| config_path.display().to_string())?;
        let mult = config.mobilenet_v2.width_mult;
        if !(mult > 0.0 && mult <= 8.0) {
            bail!("{}: width_mult = {mult}: must be in (0, 8]", config_path.display());
        }
        let crop = config.pretrained_cfg.crop_pct;
        if !(crop > 0.0 && crop <= 1.0) || config.pretrained_cfg.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("{}: pretrained_cfg needs crop_pct in (0, 1] and positive std", config_path.display());
        }
        if !ARCHITECTURES.contains(&config.architecture.as_str()) {
            bail!(
                "{}: architecture '{}' is not supported; finetune builds {:?}",
                config_path.display(),
                config.architecture,
                ARCHITECTURES
            );
        }
        Ok(config)
    }
}

/// Whether `dir` holds an image model rather than a text or causal-LM one.
pub fn is_image_model(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("architecture").is_some() && v.get("pretrained_cfg").is_some())
}

/// Unfreezing groups of a stem → blocks → (final conv) → head backbone, top-down: the head, the
/// final conv (`Layer(blocks + 1)`) when there is one, the blocks, the stem (`Layer(0)`).
pub fn stem_block_groups(blocks: usize, final_conv: bool) -> Vec<LayerGroup> {
    let top = if final_conv { blocks + 1 } else { blocks };
    let mut order = vec![LayerGroup::Head];
    order.extend((0..=top).rev().map(LayerGroup::Layer));
    order
}

/// The group of a parameter path in such a backbone: `stem.*`, `blocks.N.*`, `last.*` (the final
/// conv after `blocks` blocks), anything else the head.
pub fn stem_block_group(path: &str, blocks: usize) -> LayerGroup {
    if path.starts_with("stem.") {
        LayerGroup::Layer(0)
    } else if let Some(rest) = path.strip_prefix("blocks.") {
        LayerGroup::Layer(1 + rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).unwrap_or(0))
    } else if path.starts_with("last.") {
        LayerGroup::Layer(blocks + 1)
    } else {
        LayerGroup::Head
    }
}

/// Global average pooling: `[b, c, h, w]` → `[b, c]`.
pub fn global_average_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    burn::tensor::module::adaptive_avg_pool2d(x, [1, 1]).reshape([b, c])
}

/// Build the backbone with `num_classes` outputs: every backbone tensor from the checkpoint, the
/// classifier from it too when `head` is [`Head::FromCheckpoint`] and the sizes agree.
pub fn load_image_classifier<M: ImageBackbone>(
    files: &ModelDir,
    num_classes: usize,
    dropout: f64,
    head: Head,
    device: &Device,
) -> Result<(M, LoadReport)> {
    let config = ImageConfig::read(files)?;
    let weights = files.weights()?;
    let model = M::build(&config, num_classes, dropout, device)?;
    let new_head = head == Head::New || num_classes != config.num_classes;
    let keys: Vec<(String, String)> = crate::io::params::list_params(&model)
        .into_iter()
        .map(|p| {
            let key = model.checkpoint_key(&p.path);
            (p.path, key)
        })
        .collect();
    let (model, mut report) = load_weights(model, &weights, |info| {
        if new_head && info.path.starts_with("head.") {
            return (Vec::new(), true);
        }
        let key = keys.iter().find(|(p, _)| *p == info.path).map(|(_, k)| k.clone()).unwrap_or_default();
        (vec![key], false)
    })?;
    // BatchNorm's step counters are not used by the forward pass.
    report.unused.retain(|k| !k.ends_with("num_batches_tracked"));
    if new_head {
        let prefix = format!("{}.", M::CLASSIFIER_MODULE);
        report.unused.retain(|k| !k.starts_with(&prefix));
    }
    Ok((model, report))
}

/// The model's parameters (and BatchNorm statistics) under the checkpoint's keys, PyTorch layout.
pub fn checkpoint_tensors<M: ImageBackbone>(model: &M) -> Vec<(String, HostTensor)> {
    super::checkpoint_tensors(model, |p| model.checkpoint_key(p), |_| true)
}

/// A loaded image classifier of any supported architecture, for prediction and evaluation.
#[derive(Debug, Clone)]
pub enum AnyImageClassifier {
    MobileNetV2(MobileNetV2),
    EfficientNetLite(EfficientNetLite),
    ResNet(ResNet),
}

impl AnyImageClassifier {
    pub fn load(files: &ModelDir, num_classes: usize, head: Head, device: &Device) -> Result<Self> {
        let config = ImageConfig::read(files)?;
        let arch = config.architecture.as_str();
        Ok(match arch {
            "mobilenet_v2" => Self::MobileNetV2(load_image_classifier(files, num_classes, 0.0, head, device)?.0),
            "efficientnet_lite0" => {
                Self::EfficientNetLite(load_image_classifier(files, num_classes, 0.0, head, device)?.0)
            }
            _ if arch.starts_with("resnet") => {
                Self::ResNet(load_image_classifier(files, num_classes, 0.0, head, device)?.0)
            }
            _ => bail!("{}: architecture '{arch}' is not supported", files.config_path().display()),
        })
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::MobileNetV2(m) => m.forward(images),
            Self::EfficientNetLite(m) => m.forward(images),
            Self::ResNet(m) => m.forward(images),
        }
    }
}

/// Write a fine-tuned image model: `config.json` (the base's, with the new classes, the input
/// `size`/`crop_pct` used and what finetune did under `"finetune"`) and `model.safetensors` under
/// the base checkpoint's keys, so e.g. `torchvision.models.mobilenet_v2(num_classes=...)` loads it
/// with `load_state_dict`.
pub fn save_model<M: ImageBackbone>(
    model: &M,
    base: &ModelDir,
    labels: &[String],
    input: (usize, f32),
    meta: serde_json::Value,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = ImageConfig::read(base)?;
    config.num_classes = labels.len();
    config.label_names = Some(labels.to_vec());
    config.pretrained_cfg.input_size = [3, input.0, input.0];
    config.pretrained_cfg.crop_pct = input.1;
    config.finetune = Some(meta);
    crate::io::atomic::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    crate::io::safetensors::write_safetensors(&out.join("model.safetensors"), &checkpoint_tensors(model), None)
}
