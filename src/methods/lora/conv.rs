//! Attaching LoRA adapters to convolutions (`nn::conv_lora`) and folding them back.

use super::LoraInit;
use crate::nn::conv_lora::ConvLoraAdapter;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// Attach fresh adapters to the convolutions `cfg` targets (`layers`: module name, base conv and
/// its adapter slot); returns their names. A targeted grouped convolution is an error.
pub fn inject(
    layers: Vec<(String, &Conv2d, &mut Option<ConvLoraAdapter>)>,
    cfg: &super::LoraConfig,
    init: LoraInit,
    device: &Device,
) -> anyhow::Result<Vec<String>> {
    if cfg.use_dora {
        anyhow::bail!("DoRA on convolutions is not supported (use_dora = false)");
    }
    let mut targeted = Vec::new();
    let mut all = Vec::new();
    for (name, conv, slot) in layers {
        if cfg.targets(&name) {
            if conv.groups != 1 {
                anyhow::bail!(
                    "LoRA on the grouped (depthwise) convolution {name} is not supported; target the 1x1 convolutions"
                );
            }
            *slot = Some(ConvLoraAdapter::new(conv, cfg.r, cfg.scale(), cfg.lora_dropout, init, device));
            targeted.push(name.clone());
        }
        all.push(name);
    }
    if targeted.is_empty() {
        anyhow::bail!("target_modules {:?} matched no convolution; they are: {}", cfg.target_modules, all.join(", "));
    }
    Ok(targeted)
}

/// Fold the adapter into the base kernel (`W ← W + scale·B·A`) and drop it.
pub fn merge(conv: &mut Conv2d, slot: &mut Option<ConvLoraAdapter>) {
    if let Some(adapter) = slot.take() {
        let delta = adapter.delta();
        let w = conv.weight.clone();
        conv.weight = Param::initialized(w.id, w.val() + delta);
    }
}
