//! Where a causal language model comes from and goes to: a Hugging Face directory
//! (`config.json` + `model.safetensors` + `tokenizer.json` [+ `tokenizer_config.json`]) or a
//! llama.cpp GGUF file (everything inside it; a `tokenizer.json` beside it wins over the GGUF
//! vocabulary), both seen as a `ModelDir`.

use super::gguf_llama::GgufLlama;
use super::llama::{LlamaConfig, LlamaForCausalLM};
use super::{Adaptable, LoadReport, ModelDir, load_weights};
use crate::data::chat::ChatTemplate;
use crate::data::tokenizer::{LmTokenizer, tokenizer_json_from_gguf};
use crate::io::gguf::Value;
use crate::quant::ggml::GgmlWeight;
use crate::quant::{FrozenWeight, QuantReport};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use std::path::Path;

/// The decoder's config: `config.json` (`model_type` one of `llama::MODEL_TYPES`), or the GGUF
/// metadata.
pub fn config(dir: &ModelDir) -> Result<LlamaConfig> {
    if let Some(g) = dir.gguf() {
        return super::gguf_llama::config(g);
    }
    let raw = dir.raw_config()?;
    let path = dir.config_path();
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
    if model_type == "gpt2" {
        let cfg = super::gpt2::Gpt2Config::from_json(raw).with_context(|| path.display().to_string())?;
        return Ok(cfg.to_decoder());
    }
    if !super::llama::MODEL_TYPES.contains(&model_type) {
        bail!(
            "{}: model_type '{model_type}' is not a decoder finetune supports yet ({})",
            path.display(),
            super::llama::MODEL_TYPES.join(", ")
        );
    }
    let cfg: LlamaConfig =
        serde_json::from_value(raw).with_context(|| format!("{}: not a Llama config", path.display()))?;
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

/// The config describes a model its weights file can hold (see `models::check_plausible`).
fn check_plausible(cfg: &LlamaConfig, dir: &ModelDir) -> Result<()> {
    let path = dir.weights_path();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    super::check_plausible(cfg.parameters(), size, &path)
}

/// The model with its pretrained weights (dequantized to f32 from GGUF).
pub fn load(dir: &ModelDir, device: &Device) -> Result<(LlamaForCausalLM, LlamaConfig, LoadReport)> {
    let cfg = config(dir)?;
    check_plausible(&cfg, dir)?;
    let model = LlamaForCausalLM::new(&cfg, device)?;
    let keys = |info: &crate::io::params::ParamInfo| (vec![info.path.clone()], false);
    let gpt2_keys = |info: &crate::io::params::ParamInfo| (super::gpt2::candidate_keys(&info.path), false);
    let (model, report) = match dir.gguf() {
        Some(g) => load_weights(model, &GgufLlama::new(g)?, keys)?,
        None if cfg.is_gpt2() => load_weights(model, &super::gpt2::Conv1dAsLinear(&dir.weights()?), gpt2_keys)?,
        None => load_weights(model, &dir.weights()?, keys)?,
    };
    // A tied checkpoint may still carry a copy of the embedding as lm_head (and an old GPT-2
    // one its causal-mask buffers).
    let unused: Vec<&String> = report
        .unused
        .iter()
        .filter(|k| !(super::gpt2::is_buffer(k) || cfg.tie_word_embeddings && k.as_str() == "lm_head.weight"))
        .collect();
    if !unused.is_empty() {
        tracing::warn!("{}: tensors the model does not use: {unused:?}", dir.describe());
    }
    Ok((model, cfg, report))
}

/// The model with the linear layers of its blocks kept in the GGUF file's own quantization
/// (frozen, dequantized per forward pass); embeddings, norms and head are f32. Only for GGUF.
pub fn load_keeping_quantization(
    dir: &ModelDir,
    device: &Device,
) -> Result<(LlamaForCausalLM, LlamaConfig, QuantReport)> {
    let Some(g) = dir.gguf() else {
        bail!("{}: keeping the file's quantization needs a GGUF model", dir.describe());
    };
    let source = GgufLlama::new(g)?;
    let cfg = source.cfg.clone();
    check_plausible(&cfg, dir)?;
    let model = LlamaForCausalLM::new(&cfg, device)?;
    let frozen = |path: &str| path.starts_with("model.layers.") && path.ends_with("_proj.weight");
    // The block weights are left unloaded (lazy parameters cost nothing) and set below.
    let (mut model, _) = load_weights(model, &source, |info| (vec![info.path.clone()], frozen(&info.path)))?;
    let mut report = QuantReport::default();
    for (name, dense) in model.dense_layers_mut() {
        let key = format!("{name}.weight");
        if !frozen(&key) {
            continue;
        }
        let (gguf_name, heads) = super::gguf_llama::gguf_name(&key, &cfg).context("a Llama projection")?;
        let info = g.info(&gguf_name)?;
        let [rows, cols] = [info.shape[0], info.shape[1]];
        if [cols, rows] != [dense.d_in(), dense.d_out()] {
            bail!(
                "{}: '{gguf_name}' has shape {:?}, the model expects [{}, {}]",
                dir.describe(),
                info.shape,
                dense.d_out(),
                dense.d_in()
            );
        }
        let order = heads.map(|h| super::llama::unpermuted_row_order(rows, h));
        let w = GgmlWeight::new(info.ggml_type, [rows, cols], g.raw(&gguf_name)?, order.as_deref());
        report.layers += 1;
        report.parameters += rows * cols;
        report.f32_bytes += 4 * rows * cols;
        report.quantized_bytes += w.bytes();
        dense.set_frozen(FrozenWeight::Ggml(w));
    }
    Ok((model, cfg, report))
}

/// The tokenizer: `tokenizer.json` beside the weights, else (GGUF) the file's vocabulary.
pub fn tokenizer(dir: &ModelDir) -> Result<LmTokenizer> {
    let beside = dir.tokenizer_path();
    match dir.gguf() {
        Some(g) if !beside.is_file() => LmTokenizer::from_json(&tokenizer_json_from_gguf(g)?, &dir.describe()),
        _ => LmTokenizer::from_file(&beside),
    }
}

/// The file a chat template is saved in beside a model or adapter (as transformers does).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The model's chat template, if it has one.
pub fn chat_template(dir: &ModelDir, tokenizer: &LmTokenizer, cfg: &LlamaConfig) -> Result<Option<ChatTemplate>> {
    let source = match dir.gguf() {
        Some(g) => g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
        None => {
            let jinja = dir.dir.join(CHAT_TEMPLATE_FILE);
            let config = dir.dir.join("tokenizer_config.json");
            if jinja.is_file() {
                Some(std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?)
            } else if config.is_file() {
                let text = std::fs::read_to_string(&config)?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", config.display()))?;
                v.get("chat_template").and_then(|t| t.as_str()).map(str::to_string)
            } else {
                None
            }
        }
    };
    source.map(|s| template_for(&s, tokenizer, cfg).with_context(|| dir.describe())).transpose()
}

/// The template training renders conversations with: the recipe's `data.chat_template` file
/// if it names one, else the model's own.
pub fn template_for_training(
    dir: &ModelDir,
    tokenizer: &LmTokenizer,
    cfg: &LlamaConfig,
    recipe_file: Option<&Path>,
) -> Result<Option<ChatTemplate>> {
    match recipe_file {
        Some(path) => chat_template_file(path, tokenizer, cfg).map(Some),
        None => chat_template(dir, tokenizer, cfg),
    }
}

/// Sequences of `positions` tokens (soft prompt included) fit a learned position table
/// (GPT-2's `n_positions`); RoPE models have no hard limit.
pub fn check_positions(cfg: &LlamaConfig, positions: usize, dir: &ModelDir) -> Result<()> {
    anyhow::ensure!(
        !cfg.is_gpt2() || positions <= cfg.max_position_embeddings,
        "data.max_length (with any soft-prompt tokens) needs {positions} positions but {} has n_positions = {}: \
         lower data.max_length",
        dir.describe(),
        cfg.max_position_embeddings
    );
    Ok(())
}

/// A chat template from a Jinja file (a recipe's `data.chat_template`, an adapter's
/// `chat_template.jinja`), with the model's bos/eos tokens.
pub fn chat_template_file(path: &Path, tokenizer: &LmTokenizer, cfg: &LlamaConfig) -> Result<ChatTemplate> {
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    template_for(&source, tokenizer, cfg).with_context(|| path.display().to_string())
}

fn template_for(source: &str, tokenizer: &LmTokenizer, cfg: &LlamaConfig) -> Result<ChatTemplate> {
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
    ChatTemplate::new(source, &token(cfg.bos_token_id), &token(cfg.eos_token_ids().first().copied()))
}

/// Write a fully fine-tuned decoder as a Hugging Face directory: `config.json`,
/// `model.safetensors` (transformers' keys and layout), `tokenizer.json`, and with a chat
/// template `chat_template.jinja` + `tokenizer_config.json` (its special tokens).
pub fn save_model(
    model: &LlamaForCausalLM,
    cfg: &LlamaConfig,
    tokenizer: &LmTokenizer,
    template: Option<&ChatTemplate>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors = super::checkpoint_tensors(model, |p| model.checkpoint_key(p), |_| true);
    let tensors = if cfg.is_gpt2() { super::gpt2::to_conv1d_layout(tensors) } else { tensors };
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::io::safetensors::write_safetensors(&dir.join("model.safetensors"), &tensors, Some(meta))?;
    let mut config = match cfg.is_gpt2() {
        true => serde_json::to_value(super::gpt2::Gpt2Config::from_decoder(cfg))?,
        false => serde_json::to_value(cfg)?,
    };
    let class = match cfg.model_type() {
        "gpt2" => "GPT2LMHeadModel",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    config["model_type"] = cfg.model_type().into();
    config["architectures"] = serde_json::json!([class]);
    crate::io::atomic::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    if let Some(t) = template {
        crate::io::atomic::write_atomic(&dir.join(CHAT_TEMPLATE_FILE), t.source().as_bytes())?;
        let tc = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": t.bos_token(),
            "eos_token": t.eos_token(),
            "pad_token": t.eos_token(),
        });
        crate::io::atomic::write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tc)?.as_bytes(),
        )?;
    }
    tokenizer.save(&dir.join("tokenizer.json"))
}
