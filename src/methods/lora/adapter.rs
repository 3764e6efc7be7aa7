//! LoRA adapters in peft's format both ways: `adapter_config.json` and
//! `adapter_model.safetensors` with peft's keys (`base_model.model.<module>.lora_A.weight`
//! `[r, in]`, `...lora_B.weight` `[out, r]`, DoRA's `...lora_magnitude_vector` `[out]`; a
//! convolution's `lora_A.weight [r, in, kh, kw]` and `lora_B.weight [out, r, 1, 1]`), plus every
//! other parameter the method trained (modules to save, biases) under its checkpoint key.

use super::{LoraConfig, LoraInit, inject, is_adapter_weight};
use crate::io::params::ParamInfo;
use crate::io::peft::AdapterFiles;
use crate::io::safetensors::HostTensor;
use crate::models::{Adaptable, checkpoint_tensors};
use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::prelude::*;
use std::path::Path;

/// peft's prefix for the keys of a LoRA adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

fn host<const D: usize>(t: Tensor<D>) -> HostTensor {
    let shape = t.dims().to_vec();
    HostTensor::new(shape, t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"))
}

/// The adapter's tensors in peft's layout and names: `lora_A`/`lora_B` (and DoRA's magnitude) of
/// every adapted layer, plus the other parameters `saved` selects (modules to save, trained
/// biases) under their checkpoint keys.
pub fn adapter_tensors<M: Adaptable + Clone>(
    model: &M,
    saved: impl Fn(&ParamInfo) -> bool,
) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    for (name, dense) in model.dense_layers() {
        let Some(adapter) = &dense.lora else { continue };
        out.push((format!("{KEY_PREFIX}{name}.lora_A.weight"), host(adapter.a.val().transpose())));
        out.push((format!("{KEY_PREFIX}{name}.lora_B.weight"), host(adapter.b.val().transpose())));
        if let Some(m) = &adapter.magnitude {
            out.push((format!("{KEY_PREFIX}{name}.lora_magnitude_vector"), host(m.val())));
        }
    }
    let mut copy = model.clone();
    for unit in copy.conv_units_mut() {
        if let Some(a) = &unit.unit.lora {
            out.push((format!("{KEY_PREFIX}{}.lora_A.weight", unit.name), host(a.a.val())));
            out.push((format!("{KEY_PREFIX}{}.lora_B.weight", unit.name), host(a.b.val())));
        }
    }
    let others = checkpoint_tensors(model, |p| model.checkpoint_key(p), |p| !is_adapter_weight(p) && saved(p));
    out.extend(others.into_iter().map(|(k, t)| (format!("{KEY_PREFIX}{k}"), t)));
    out
}

/// `adapter_config.json` for `cfg`, in peft's schema (`task_type` null for a model peft has no
/// task type for, e.g. a vision backbone).
pub fn config_json(cfg: &LoraConfig, base_model: &str, task_type: Option<&str>) -> serde_json::Value {
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

/// Write the adapter of `model` to `dir` in peft's format.
pub fn save_adapter<M: Adaptable + Clone>(
    model: &M,
    cfg: &LoraConfig,
    base_model: &str,
    task_type: Option<&str>,
    saved: impl Fn(&ParamInfo) -> bool,
    dir: &Path,
) -> Result<()> {
    AdapterFiles::write(dir, &config_json(cfg, base_model, task_type), adapter_tensors(model, saved))
}

/// The adapter's LoRA config, checked, and checked against its matrices (their rank), before
/// anything is allocated for it.
pub fn read_config(files: &AdapterFiles) -> Result<LoraConfig> {
    let cfg: LoraConfig = serde_json::from_value(files.config.clone())
        .with_context(|| format!("{}: not a LoRA adapter_config.json", files.dir.display()))?;
    cfg.validate().with_context(|| format!("{}/adapter_config.json", files.dir.display()))?;
    for (key, t) in files.tensors.iter().filter(|(k, _)| k.ends_with(".lora_A.weight")) {
        if t.shape.first() != Some(&cfg.r) {
            bail!(
                "{}: '{key}' has shape {:?}, but adapter_config.json says r = {}",
                files.dir.display(),
                t.shape,
                cfg.r
            );
        }
    }
    Ok(cfg)
}

/// Attach the adapter stored in `files` (peft format, written by finetune or Python peft) to
/// `model`: inject adapters per its config, set their weights, and load every other stored tensor
/// (modules to save, biases) by key. Every stored tensor must find its place.
pub fn load_adapter<M: Adaptable>(mut model: M, files: &AdapterFiles, device: &Device) -> Result<(M, LoraConfig)> {
    let cfg = read_config(files)?;
    let mut loading = cfg.clone();
    loading.init_lora_weights = super::InitLoraWeights::Named("gaussian".into());
    debug_assert_eq!(super::init(&loading).ok(), Some(LoraInit::Gaussian));
    inject(&mut model, &loading, device)?;
    let mut used = std::collections::BTreeSet::new();
    let check = |t: &HostTensor, key: &str, want: &[usize]| -> Result<()> {
        if t.shape != want {
            bail!("{}: '{key}' has shape {:?}, expected {:?}", files.dir.display(), t.shape, want);
        }
        Ok(())
    };
    // peft stores linear adapters as [out, in]-style matrices; transpose on the host so the
    // parameter is a leaf.
    for (name, dense) in model.dense_layers_mut() {
        let (d_in, d_out) = (dense.d_in(), dense.d_out());
        let Some(adapter) = dense.lora.as_mut() else { continue };
        let r = adapter.rank();
        for (suffix, param, shape) in [("lora_A", &mut adapter.a, [r, d_in]), ("lora_B", &mut adapter.b, [d_out, r])] {
            let key = format!("{KEY_PREFIX}{name}.{suffix}.weight");
            let t = files.tensor(&key)?;
            check(t, &key, &shape)?;
            let t = t.transpose2();
            *param =
                Param::initialized(param.id, Tensor::from_data(TensorData::new(t.data, [shape[1], shape[0]]), device));
            used.insert(key);
        }
        if let Some(m) = adapter.magnitude.as_mut() {
            let key = format!("{KEY_PREFIX}{name}.lora_magnitude_vector");
            let t = files.tensor(&key)?;
            check(t, &key, &[d_out])?;
            *m = Param::initialized(m.id, Tensor::from_data(TensorData::new(t.data.clone(), [d_out]), device));
            used.insert(key);
        }
    }
    // Convolution adapters keep peft's layout.
    for unit in model.conv_units_mut() {
        let Some(a) = unit.unit.lora.as_mut() else { continue };
        for (suffix, param) in [("lora_A", &mut a.a), ("lora_B", &mut a.b)] {
            let key = format!("{KEY_PREFIX}{}.{suffix}.weight", unit.name);
            let t = files.tensor(&key)?;
            let want = param.dims();
            check(t, &key, &want)?;
            *param = Param::initialized(param.id, Tensor::from_data(TensorData::new(t.data.clone(), want), device));
            used.insert(key);
        }
    }
    Ok((crate::methods::load_saved(model, files, KEY_PREFIX, used)?, cfg))
}
