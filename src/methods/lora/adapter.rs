//! LoRA adapters in peft's format both ways: `adapter_config.json` and
//! `adapter_model.safetensors` with peft's keys (`base_model.model.<module>.lora_A.weight`
//! `[r, in]`, `...lora_B.weight` `[out, r]`, DoRA's `...lora_magnitude_vector` `[out]`; a
//! convolution's `lora_A.weight [r, in, kh, kw]` and `lora_B.weight [out, r, 1, 1]`), plus every
//! other parameter the method trained (modules to save, biases) under its checkpoint key, except
//! that the bias of an adapted layer is `<module>.base_layer.bias`, as peft names it (the layer
//! it wraps is its `base_layer`).

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
    let adapted = adapted_modules(model);
    let others = checkpoint_tensors(model, |p| model.checkpoint_key(p), |p| !is_adapter_weight(p) && saved(p));
    out.extend(others.into_iter().map(|(k, t)| (format!("{KEY_PREFIX}{}", peft_key(&k, &adapted)), t)));
    out
}

/// The modules that carry an adapter (linear layers and convolutions).
fn adapted_modules<M: Adaptable + Clone>(model: &M) -> std::collections::BTreeSet<String> {
    let mut out: std::collections::BTreeSet<String> =
        model.dense_layers().into_iter().filter(|(_, d)| d.lora.is_some()).map(|(n, _)| n).collect();
    let mut copy = model.clone();
    out.extend(copy.conv_units_mut().into_iter().filter(|u| u.unit.lora.is_some()).map(|u| u.name));
    out
}

/// peft's key for checkpoint key `key`: a parameter of an adapted module lives in its
/// `base_layer` (`query.bias` → `query.base_layer.bias`).
fn peft_key(key: &str, adapted: &std::collections::BTreeSet<String>) -> String {
    match key.rsplit_once('.') {
        Some((module, leaf)) if adapted.contains(module) => format!("{module}.base_layer.{leaf}"),
        _ => key.to_string(),
    }
}

/// `adapter_config.json` for `cfg`, in peft's schema (`task_type` null for a model peft has no
/// task type for, e.g. a vision backbone; `fan_in_fan_out` as the base's linear layers are
/// stored, true for GPT-2's `Conv1D`).
pub fn config_json(
    cfg: &LoraConfig,
    base_model: &str,
    task_type: Option<&str>,
    fan_in_fan_out: bool,
) -> serde_json::Value {
    let or_null = |v: serde_json::Value| if v.is_null() { serde_json::Value::Null } else { v };
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
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": true,
        "lora_bias": false,
        "layers_to_transform": or_null(serde_json::json!(cfg.layers_to_transform)),
        "layers_pattern": or_null(serde_json::json!(cfg.layers_pattern)),
        "rank_pattern": cfg.rank_pattern,
        "alpha_pattern": cfg.alpha_pattern,
        "exclude_modules": or_null(serde_json::json!(cfg.exclude_modules)),
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
    let config = config_json(cfg, base_model, task_type, model.fan_in_fan_out());
    AdapterFiles::write(dir, &config, adapter_tensors(model, saved))
}

/// The adapter's LoRA config, checked, and checked against its matrices (their rank), before
/// anything is allocated for it.
pub fn read_config(files: &AdapterFiles) -> Result<LoraConfig> {
    let config_file = || format!("{}/adapter_config.json", files.dir.display());
    super::config::refuse_unsupported(&files.config).with_context(config_file)?;
    let cfg: LoraConfig = serde_json::from_value(files.config.clone())
        .with_context(|| format!("{}: not a LoRA adapter_config.json", files.dir.display()))?;
    cfg.validate().with_context(config_file)?;
    for (key, t) in files.tensors.iter().filter(|(k, _)| k.ends_with(".lora_A.weight")) {
        let module = key.strip_prefix(KEY_PREFIX).unwrap_or(key).trim_end_matches(".lora_A.weight");
        let r = cfg.rank_of(module);
        if t.shape.first() != Some(&r) {
            let why = if r == cfg.r { format!("r = {r}") } else { format!("rank_pattern gives {module} r = {r}") };
            bail!("{}: '{key}' has shape {:?}, but adapter_config.json says {why}", files.dir.display(), t.shape);
        }
    }
    Ok(cfg)
}

/// The adapter's tensors with peft's extra copies set aside: with `bias = "all"` peft also
/// saves a module-to-save's `original_module.*` (the base's own, which the base has) and
/// `modules_to_save.*` (the same tensor as the plain key).
fn without_peft_copies(files: &AdapterFiles) -> AdapterFiles {
    let mut out = files.clone();
    out.tensors.retain(|k, _| !k.contains(".original_module."));
    let copies: Vec<String> = out.tensors.keys().filter(|k| k.contains(".modules_to_save.")).cloned().collect();
    for k in copies {
        let t = out.tensors.remove(&k).expect("listed");
        out.tensors.entry(k.replace(".modules_to_save.", ".")).or_insert(t);
    }
    out
}

/// Attach the adapter stored in `files` (peft format, written by finetune or Python peft) to
/// `model`: inject adapters per its config, set their weights, and load every other stored tensor
/// (modules to save, biases) by key. Every stored tensor must find its place.
pub fn load_adapter<M: Adaptable>(mut model: M, files: &AdapterFiles, device: &Device) -> Result<(M, LoraConfig)> {
    let cfg = super::resolve_targets(&read_config(files)?, &model);
    let files = &without_peft_copies(files);
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
    // The bias of an adapted layer is its base layer's (earlier finetune builds wrote the plain key).
    let adapted: std::collections::BTreeSet<String> = model
        .dense_layers()
        .into_iter()
        .filter(|(_, d)| d.lora.is_some())
        .map(|(n, _)| format!("{KEY_PREFIX}{n}"))
        .collect();
    let stored_key = |key: String| match key.rsplit_once('.') {
        Some((module, leaf)) if adapted.contains(module) => {
            let peft = format!("{module}.base_layer.{leaf}");
            if files.tensors.contains_key(&peft) { peft } else { key }
        }
        _ => key,
    };
    Ok((crate::methods::load_saved(model, files, KEY_PREFIX, &stored_key, used)?, cfg))
}

/// Check that `adapters` can be active together, with peft's semantics for several active LoRA
/// adapters (their updates add up): all LoRA, no DoRA (its magnitude normalises one update, not
/// a sum), and at most one that trains modules in full (peft refuses to activate two
/// `modules_to_save` copies at once). Returns the index of that one, if any.
pub fn check_combinable(adapters: &[AdapterFiles]) -> Result<Option<usize>> {
    let mut with_modules = None;
    for (i, a) in adapters.iter().enumerate() {
        anyhow::ensure!(a.peft_type()? == "LORA", "{}: only LoRA adapters can be combined", a.dir.display());
        let cfg = read_config(a)?;
        anyhow::ensure!(!cfg.use_dora, "{}: DoRA adapters cannot be combined with others", a.dir.display());
        if !a.non_lora_tensors().is_empty() {
            if let Some(j) = with_modules {
                let other: &AdapterFiles = &adapters[j];
                bail!(
                    "{} and {} both train modules in full ({}): peft cannot activate them together either; \
                     combine adapters that share one head, or use them one at a time",
                    other.dir.display(),
                    a.dir.display(),
                    a.non_lora_tensors().join(", ")
                );
            }
            with_modules = Some(i);
        }
    }
    Ok(with_modules)
}

/// `model` with every adapter in `adapters` folded in (checked by [`check_combinable`]): the
/// one that trains modules in full first, then each adapter attached and merged in turn, which
/// computes what peft computes with all of them active (`W + Σ scaleᵢ·Bᵢ·Aᵢ`).
pub fn merge_all<M: Adaptable>(mut model: M, adapters: &[AdapterFiles], device: &Device) -> Result<M> {
    let first = check_combinable(adapters)?.unwrap_or(0);
    let order = std::iter::once(first).chain((0..adapters.len()).filter(|&i| i != first));
    for i in order {
        model = load_adapter(model, &adapters[i], device)?.0;
        super::merge(&mut model);
    }
    Ok(model)
}
