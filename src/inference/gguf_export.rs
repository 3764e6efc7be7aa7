//! Fine-tuned language models out to llama.cpp (and so Ollama, LM Studio, ...): a LoRA adapter
//! as llama.cpp's GGUF adapter, or the base with the adapter merged as a GGUF model with its
//! tokenizer and chat template.
//!
//! - Adapter: only the LoRA matrices travel (llama.cpp adapters cannot carry modules trained in
//!   full, trained biases or DoRA magnitudes; those are refused by name, `--merge` carries them).
//! - Model: a GGUF base keeps its own metadata (tokenizer, chat template, `general.*`) and gets
//!   new weights; a Hugging Face base gets `llama.*` metadata from `config.json` and the
//!   tokenizer from `tokenizer.json` (byte-level BPE). Matrices as F32, F16, Q8_0 or Q4_0
//!   (llama.cpp's reference encoders; for k-quants run llama.cpp's `llama-quantize` on the F16 file).
//!
//! Checked in `tests/integration/gguf_export.rs` (our reader, merge deltas, logits) and against
//! llama.cpp itself by `scripts/check_gguf_export.py` (docs/BENCHMARKS.md).

use super::lm::load_with_adapters;
use crate::io::gguf::GgmlType;
use crate::io::gguf_writer::GgufWriter;
use crate::io::peft::AdapterFiles;
use crate::methods::lora;
use crate::models::ModelDir;
use crate::models::decoder;
use crate::models::gguf_llama::{LoraLayer, file_type, write_config, write_lora, write_tensors};
use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, serde::Serialize)]
pub struct ExportReport {
    pub path: String,
    pub tensors: usize,
    pub bytes: u64,
    /// Adapted layers merged into the weights (model export).
    pub merged_layers: usize,
}

fn report(out: &Path, w: &GgufWriter, merged_layers: usize) -> Result<ExportReport> {
    Ok(ExportReport {
        path: out.display().to_string(),
        tensors: w.tensor_names().count(),
        bytes: std::fs::metadata(out).with_context(|| format!("{}", out.display()))?.len(),
        merged_layers,
    })
}

/// Metadata a GGUF base carries that does not describe the new file.
fn stale_key(key: &str) -> bool {
    key == "general.file_type" || key == "general.alignment" || key.starts_with("quantize.")
}

/// `base` (HF directory or GGUF file) with `adapters` merged (several: their updates add up, as
/// peft's active adapters do), written to `out` with matrices as `weights`.
pub fn export_model(base: &Path, adapters: &[PathBuf], out: &Path, weights: GgmlType) -> Result<ExportReport> {
    ensure!(
        matches!(weights, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q4_0),
        "--quant {}: finetune writes f32, f16, q8_0 and q4_0; for k-quants run llama.cpp's llama-quantize on an f16 export",
        weights.name()
    );
    super::lm::only_lora(adapters)?;
    let device = Device::flex();
    let mut lm = load_with_adapters(base, adapters, &device)?;
    let mut merged = lora::merge(&mut lm.model);
    if adapters.len() > 1 {
        for dir in adapters {
            merged += AdapterFiles::read(dir)?.tensors.keys().filter(|k| k.ends_with(".lora_A.weight")).count();
        }
    }
    // Layers held in a quantized format (a GGUF base kept as stored) become float again.
    crate::methods::lora::qlora::dequantize_model(&mut lm.model);
    let files = ModelDir::open(base)?;
    let mut w = GgufWriter::new();
    match files.gguf() {
        Some(g) => {
            for key in g.metadata.keys().filter(|k| !stale_key(k)) {
                w.copy(g, key);
            }
        }
        None => {
            write_config(&mut w, &lm.cfg)?;
            crate::data::tokenizer::gguf_tokenizer_metadata(&lm.tokenizer.to_json()?, &mut w)
                .with_context(|| files.describe())?;
            if let Some(t) = &lm.template {
                w.str("tokenizer.chat_template", t.source());
            }
            let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            w.str("general.name", &name);
        }
    }
    w.u32("general.file_type", file_type(weights));
    if weights.is_quantized() {
        w.u32("general.quantization_version", 2);
    }
    write_tensors(&mut w, &lm.model, &lm.cfg, weights)?;
    w.write(out)?;
    report(out, &w, merged)
}

/// The LoRA adapter in `adapter` as a llama.cpp adapter at `out`; `base` gives the architecture
/// (head counts for llama.cpp's Q/K row order).
pub fn export_adapter(base: &Path, adapter: &Path, out: &Path) -> Result<ExportReport> {
    let files = AdapterFiles::read(adapter)?;
    ensure!(files.peft_type()? == "LORA", "{}: only LoRA adapters can be exported to llama.cpp", adapter.display());
    let cfg = lora::adapter::read_config(&files)?;
    if cfg.use_dora {
        bail!("{}: DoRA adapters have no llama.cpp form; export the merged model (--merge)", adapter.display());
    }
    let extra: Vec<&String> =
        files.tensors.keys().filter(|k| !k.ends_with(".lora_A.weight") && !k.ends_with(".lora_B.weight")).collect();
    if !extra.is_empty() {
        bail!(
            "{}: llama.cpp adapters hold LoRA matrices only, but this adapter also trained {} in full \
             (modules_to_save or bias); export the merged model instead (--merge)",
            adapter.display(),
            extra.iter().map(|k| k.trim_start_matches(lora::adapter::KEY_PREFIX)).collect::<Vec<_>>().join(", ")
        );
    }
    let model_cfg = decoder::config(&ModelDir::open(base)?)?;
    let mut layers = Vec::new();
    for (key, a) in files.tensors.iter().filter(|(k, _)| k.ends_with(".lora_A.weight")) {
        let module = key.trim_start_matches(lora::adapter::KEY_PREFIX).trim_end_matches(".lora_A.weight");
        ensure!(a.shape.len() == 2, "{key}: LoRA on a convolution has no llama.cpp form");
        let b = files.tensor(&key.replace(".lora_A.weight", ".lora_B.weight"))?;
        layers.push(LoraLayer { module, a, b, scale: cfg.scale_of(module) });
    }
    let mut w = GgufWriter::new();
    write_lora(&mut w, &model_cfg, &layers).with_context(|| adapter.display().to_string())?;
    if let Some(name) = files.base_model() {
        w.str("general.base_model.0.name", name);
    }
    w.write(out)?;
    report(out, &w, 0)
}
