//! LoRA and DoRA (Hu et al. 2021; Liu et al. 2024) with Hugging Face peft's semantics.
//!
//! - [`config`]: the settings, the same fields as peft's `LoraConfig` / `adapter_config.json`;
//! - [`layer`]: the adapter of one linear layer (`base(x) + scale·dropout(x)·A·B`, DoRA rescaling);
//! - this file: attaching adapters to a model by configuration, what trains, and merging.
//!
//! A model exposes its linear layers by Hugging Face module name ([`DenseLayers`]); adapters
//! attach to those whose names match `target_modules`, so no model code mentions LoRA.

pub mod config;
pub mod conv;
pub mod qlora;

pub use config::{BiasMode, InitLoraWeights, LoraConfig, TargetModules, in_modules};
pub use crate::nn::lora::{LoraAdapter, LoraInit};

use crate::models::DenseLayers;
use anyhow::{Result, bail};
use burn::prelude::*;

/// Attach a fresh adapter to every layer `cfg` targets; returns their module names.
pub fn inject<M: DenseLayers>(model: &mut M, cfg: &LoraConfig, device: &Device) -> Result<Vec<String>> {
    let init = match &cfg.init_lora_weights {
        InitLoraWeights::Flag(true) => LoraInit::Kaiming,
        InitLoraWeights::Named(s) if s == "gaussian" => LoraInit::Gaussian,
        other => bail!("init_lora_weights {other:?} is not supported (true or \"gaussian\")"),
    };
    let mut targeted = Vec::new();
    let mut all = Vec::new();
    for (name, dense) in model.dense_layers_mut() {
        if cfg.targets(&name) {
            dense.lora =
                Some(LoraAdapter::new(dense, cfg.r, cfg.scale(), cfg.lora_dropout, init, cfg.use_dora, device));
            targeted.push(name.clone());
        }
        all.push(name);
    }
    if targeted.is_empty() {
        bail!("target_modules {:?} matched no layer; the model's layers are: {}", cfg.target_modules, all.join(", "));
    }
    Ok(targeted)
}

/// Which parameters train under LoRA, by burn path and the Hugging Face module name of its owner:
/// adapter weights, modules in `modules_to_save`, and biases per `cfg.bias`.
pub fn is_trainable(cfg: &LoraConfig, burn_path: &str, hf_module: &str) -> bool {
    if burn_path.contains(".lora.") || burn_path.starts_with("lora.") {
        return true;
    }
    if cfg.saves(hf_module) {
        return true;
    }
    let is_bias = burn_path.ends_with(".bias") || burn_path.ends_with(".beta");
    match cfg.bias {
        BiasMode::None => false,
        BiasMode::All => is_bias,
        BiasMode::LoraOnly => is_bias && cfg.targets(hf_module),
    }
}

/// Fold every attached adapter into its base weight (`W ← W + scale·A·B`, or DoRA's rescaled
/// weight) and remove it; the forward pass is unchanged up to rounding.
pub fn merge<M: DenseLayers>(model: &mut M) -> usize {
    let mut merged = 0;
    for (_, dense) in model.dense_layers_mut() {
        if let Some(adapter) = dense.lora.take() {
            // A quantized base is merged in float: W = dequant(W_q) + ΔW, exactly the function that
            // was trained (re-quantizing the sum would add a second rounding).
            let w = adapter.merged_weight(dense).detach();
            dense.weight = burn::module::Param::initialized(dense.weight.id, w);
            dense.quantized = None;
            merged += 1;
        }
    }
    merged
}

/// peft's prefix for the keys of a LoRA adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

/// The adapter's tensors in peft's layout and names: `lora_A`/`lora_B` (and DoRA's magnitude) of
/// every adapted layer, plus the other parameters `saved` selects (modules_to_save, trained
/// biases) under their checkpoint keys. `hf_key` maps a burn path to the model's checkpoint key.
pub fn adapter_tensors<M: DenseLayers + burn::module::Module>(
    model: &M,
    hf_key: fn(&str) -> String,
    saved: impl Fn(&str) -> bool,
) -> Vec<(String, crate::io::safetensors::HostTensor)> {
    use crate::io::safetensors::HostTensor;
    let host = |t: Tensor<2>| {
        let [r, c] = t.dims();
        HostTensor::new(vec![r, c], t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"))
    };
    let mut out = Vec::new();
    for (name, dense) in model.dense_layers() {
        let Some(adapter) = &dense.lora else { continue };
        out.push((format!("{KEY_PREFIX}{name}.lora_A.weight"), host(adapter.a.val().transpose())));
        out.push((format!("{KEY_PREFIX}{name}.lora_B.weight"), host(adapter.b.val().transpose())));
        if let Some(m) = &adapter.magnitude {
            let v: Vec<f32> = m.val().into_data().convert::<f32>().try_into_vec().expect("f32");
            out.push((format!("{KEY_PREFIX}{name}.lora_magnitude_vector"), HostTensor::new(vec![v.len()], v)));
        }
    }
    let others = crate::models::checkpoint_tensors(model, hf_key, |p| !p.path.contains(".lora.") && saved(&p.path));
    out.extend(others.into_iter().map(|(k, t)| (format!("{KEY_PREFIX}{k}"), t)));
    out
}

/// `adapter_config.json` for `cfg`, in peft's schema.
pub fn adapter_config_json(cfg: &LoraConfig, base_model: &str, task_type: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": cfg.target_modules,
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "init_lora_weights": cfg.init_lora_weights,
        "modules_to_save": if cfg.modules_to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(cfg.modules_to_save) },
        "bias": cfg.bias,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "lora_bias": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "exclude_modules": null,
        "revision": null,
    })
}

/// Attach the adapter stored in `files` (peft format) to `model`: inject adapters per its config,
/// set their weights, and load every other stored tensor (modules_to_save, biases) by key.
/// Every stored tensor must find its place.
pub fn load_adapter<M: DenseLayers + burn::module::Module>(
    mut model: M,
    files: &crate::io::peft::AdapterFiles,
    hf_key: fn(&str) -> String,
    device: &Device,
) -> Result<(M, LoraConfig)> {
    use anyhow::Context;
    use burn::module::Param;
    let cfg: LoraConfig = serde_json::from_value(files.config.clone())
        .with_context(|| format!("{}: not a LoRA adapter_config.json", files.dir.display()))?;
    let mut loading = cfg.clone();
    loading.init_lora_weights = InitLoraWeights::Named("gaussian".into());
    inject(&mut model, &loading, device)?;
    let mut used = std::collections::BTreeSet::new();
    // peft stores [out, in]-style matrices; transpose on the host so the parameter is a leaf.
    let to_tensor = |t: &crate::io::safetensors::HostTensor, shape: [usize; 2]| -> Result<Tensor<2>> {
        if t.shape != shape {
            bail!("{}: shape {:?}, expected {:?}", files.dir.display(), t.shape, shape);
        }
        let t = t.transpose2();
        Ok(Tensor::<2>::from_data(TensorData::new(t.data, [shape[1], shape[0]]), device))
    };
    for (name, dense) in model.dense_layers_mut() {
        let (d_in, d_out) = (dense.d_in(), dense.d_out());
        let Some(adapter) = dense.lora.as_mut() else { continue };
        let r = adapter.rank();
        let (ka, kb) = (format!("{KEY_PREFIX}{name}.lora_A.weight"), format!("{KEY_PREFIX}{name}.lora_B.weight"));
        adapter.a = Param::initialized(adapter.a.id, to_tensor(files.tensor(&ka)?, [r, d_in]).context(ka.clone())?);
        adapter.b = Param::initialized(adapter.b.id, to_tensor(files.tensor(&kb)?, [d_out, r]).context(kb.clone())?);
        used.insert(ka);
        used.insert(kb);
        if let Some(m) = adapter.magnitude.as_mut() {
            let km = format!("{KEY_PREFIX}{name}.lora_magnitude_vector");
            let t = files.tensor(&km)?;
            if t.shape != [d_out] {
                bail!("{}: '{km}' has shape {:?}, expected [{d_out}]", files.dir.display(), t.shape);
            }
            *m = Param::initialized(m.id, Tensor::from_data(TensorData::new(t.data.clone(), [d_out]), device));
            used.insert(km);
        }
    }
    let model =
        crate::models::import_by_key(model, &files.tensors, |i| format!("{KEY_PREFIX}{}", hf_key(&i.path)), &mut used)
            .with_context(|| format!("{}", files.dir.display()))?;
    let unused: Vec<&String> = files.tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        bail!("{}: tensors that match no layer of the model: {:?}", files.dir.display(), unused);
    }
    Ok((model, cfg))
}
