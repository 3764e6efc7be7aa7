//! LoRA and DoRA (Hu et al. 2021; Liu et al. 2024) with Hugging Face peft's semantics, on linear
//! layers (`nn::lora`) and on convolutions (`nn::conv_lora`, peft's `lora.Conv2d`).
//!
//! - [`config`]: the settings, the same fields as peft's `LoraConfig` / `adapter_config.json`;
//! - this file: attaching adapters to a model by configuration, what trains, and merging;
//! - [`adapter`]: saving and loading adapters in peft's format;
//! - [`qlora`]: the frozen base held in 4 bits under the adapters.
//!
//! A model shows its linear layers and convolutions by checkpoint module name
//! (`models::Adaptable`); adapters attach to those whose names match `target_modules`, so no
//! model code mentions LoRA. What trains is decided by what a parameter *is* (inside a LoRA layer,
//! in a module to save, a bias), never by how its path is spelled.

pub mod adapter;
pub mod config;
pub mod qlora;

pub use crate::nn::lora::{LoraAdapter, LoraInit};
pub use config::{BiasMode, InitLoraWeights, LoraConfig, TargetModules, in_modules};

/// `cfg` with `target_modules = "all-linear"` spelled out for `model`: every linear layer but the
/// output layer (`Adaptable::output_layer`), peft's rule; any other config is returned as is.
pub fn resolve_targets<M: Adaptable>(cfg: &LoraConfig, model: &M) -> LoraConfig {
    let mut cfg = cfg.clone();
    if cfg.is_all_linear() {
        let linear: Vec<String> = model.dense_layers().into_iter().map(|(n, _)| n).collect();
        cfg.resolve_all_linear(&linear, model.output_layer().as_deref());
    }
    cfg
}

use crate::io::params::ParamInfo;
use crate::models::Adaptable;
use crate::nn::conv_lora::ConvLoraAdapter;
use anyhow::{Result, bail};
use burn::module::Param;
use burn::prelude::*;

/// The struct names of the adapter layers, as `ParamInfo::within` sees them.
const ADAPTER_LAYERS: [&str; 2] = ["LoraAdapter", "ConvLoraAdapter"];

/// How `A` starts, per `init_lora_weights`.
pub fn init(cfg: &LoraConfig) -> Result<LoraInit> {
    match &cfg.init_lora_weights {
        InitLoraWeights::Flag(true) => Ok(LoraInit::Kaiming),
        InitLoraWeights::Named(s) if s == "gaussian" => Ok(LoraInit::Gaussian),
        other => bail!("init_lora_weights {other:?} is not supported (true or \"gaussian\")"),
    }
}

/// Attach a fresh adapter to every linear layer and convolution `cfg` targets (each with its rank
/// and scale from `rank_pattern` / `alpha_pattern`); returns their module names. Targeting
/// nothing is an error that lists the model's layers. `"all-linear"` must have been resolved
/// ([`resolve_targets`]).
pub fn inject<M: Adaptable>(model: &mut M, cfg: &LoraConfig, device: &Device) -> Result<Vec<String>> {
    anyhow::ensure!(!cfg.is_all_linear(), "target_modules = \"all-linear\" must be resolved against the model first");
    let init = init(cfg)?;
    let mut targeted = Vec::new();
    let mut all = Vec::new();
    for (name, dense) in model.dense_layers_mut() {
        if cfg.targets(&name) {
            dense.lora = Some(LoraAdapter::new(
                dense,
                cfg.rank_of(&name),
                cfg.scale_of(&name),
                cfg.lora_dropout,
                init,
                cfg.use_dora,
                device,
            ));
            targeted.push(name.clone());
        }
        all.push(name);
    }
    for unit in model.conv_units_mut() {
        let name = unit.name;
        if cfg.targets(&name) {
            if cfg.use_dora {
                bail!("DoRA on convolutions is not supported (use_dora = false)");
            }
            if cfg.bias != BiasMode::None {
                bail!("lora.bias = {:?}: these convolutions have no bias; use \"none\"", cfg.bias);
            }
            let conv = &unit.unit.conv;
            if conv.groups != 1 {
                bail!(
                    "LoRA on the grouped (depthwise) convolution {name} is not supported; target the 1x1 convolutions"
                );
            }
            let (r, scale) = (cfg.rank_of(&name), cfg.scale_of(&name));
            unit.unit.lora = Some(ConvLoraAdapter::new(conv, r, scale, cfg.lora_dropout, init, device));
            targeted.push(name.clone());
        }
        all.push(name);
    }
    if targeted.is_empty() {
        bail!("target_modules {:?} matched no layer; the model's layers are: {}", cfg.target_modules, all.join(", "));
    }
    Ok(targeted)
}

/// Whether a parameter is an adapter's own weight (inside a LoRA layer).
pub fn is_adapter_weight(info: &ParamInfo) -> bool {
    ADAPTER_LAYERS.iter().any(|ty| info.within(ty))
}

/// Whether LoRA trains the parameter `info`, whose checkpoint module name is `module`: adapter
/// weights, modules in `modules_to_save`, and biases per `cfg.bias`.
pub fn trains(cfg: &LoraConfig, info: &ParamInfo, module: &str) -> bool {
    if is_adapter_weight(info) || cfg.saves(module) {
        return true;
    }
    let is_bias = info.path.ends_with(".bias") || info.path.ends_with(".beta");
    match cfg.bias {
        BiasMode::None => false,
        BiasMode::All => is_bias,
        BiasMode::LoraOnly => is_bias && cfg.targets(module),
    }
}

/// Fold every attached adapter into its base weight (`W ← W + scale·A·B`, DoRA's rescaled
/// weight, or a convolution's `W ← W + scale·B·A`) and remove it; the forward pass is unchanged
/// up to rounding. Returns the number of merged layers.
pub fn merge<M: Adaptable>(model: &mut M) -> usize {
    let mut merged = 0;
    for (_, dense) in model.dense_layers_mut() {
        if let Some(adapter) = dense.lora.take() {
            // A quantized base is merged in float: W = dequant(W_q) + ΔW, exactly the function that
            // was trained (re-quantizing the sum would add a second rounding).
            let w = adapter.merged_weight(dense).detach();
            dense.weight = Param::initialized(dense.weight.id, w);
            dense.quantized = None;
            merged += 1;
        }
    }
    for unit in model.conv_units_mut() {
        if let Some(adapter) = unit.unit.lora.take() {
            let w = unit.unit.conv.weight.clone();
            unit.unit.conv.weight = Param::initialized(w.id, w.val() + adapter.delta());
            merged += 1;
        }
    }
    merged
}
