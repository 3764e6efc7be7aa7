//! A causal language model in use: a decoder (Hugging Face directory or GGUF file) with an
//! optional LoRA adapter held the way it was trained (quantized base included), text generation
//! streamed to the terminal, and merging an adapter into a plain model directory.

use crate::data::chat::{ChatTemplate, Message};
use crate::data::tokenizer::LmTokenizer;
use crate::io::hub::{self, RepoKind};
use crate::io::peft::{AdapterFiles, NOTES_FILE};
use crate::methods::lora;
use crate::models::ModelDir;
use crate::models::decoder::{self, save_model};
use crate::models::generation::{Sampling, generate};
use crate::models::llama::{LlamaConfig, LlamaForCausalLM};
use crate::quant::QuantConfig;
use anyhow::{Context, Result};
use burn::module::Module;
use burn::prelude::*;
use std::path::{Path, PathBuf};

/// Resolve a model given as a path, or a hub id (with `gguf_file` for a GGUF repository).
pub fn resolve_model(model: &str, gguf_file: Option<&str>, revision: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(match gguf_file {
            Some(f) if path.is_dir() => path.join(f),
            _ => path.to_path_buf(),
        });
    }
    match gguf_file {
        Some(f) => Ok(hub::resolve(model, RepoKind::Model, revision, &[f])?.join(f)),
        None => hub::resolve(model, RepoKind::Model, revision, &["config.json", "model.safetensors", "tokenizer.json"]),
    }
}

/// A decoder with its tokenizer and chat template.
pub struct LoadedLm {
    pub model: LlamaForCausalLM,
    pub cfg: LlamaConfig,
    pub tokenizer: LmTokenizer,
    pub template: Option<ChatTemplate>,
}

impl LoadedLm {
    pub fn eos_id(&self) -> Result<u32> {
        eos_id(&self.cfg, &self.tokenizer)
    }
}

/// The ids that end an answer: the end-of-sequence id and, with a chat template, the token
/// that closes an assistant turn when it is another one (Gemma's `<end_of_turn>` while its
/// eos is `<eos>`; transformers' Gemma instruct checkpoints list both as `eos_token_id`).
pub fn stop_ids(cfg: &LlamaConfig, tokenizer: &LmTokenizer, template: Option<&ChatTemplate>) -> Result<Vec<u32>> {
    let mut ids = vec![eos_id(cfg, tokenizer)?];
    if let Some(end) = template.and_then(|t| t.turn_end()).and_then(|e| tokenizer.token_to_id(&e))
        && !ids.contains(&end)
    {
        ids.push(end);
    }
    Ok(ids)
}

/// The end-of-sequence id: the config's, else the tokenizer's `</s>`/`<|endoftext|>`.
pub fn eos_id(cfg: &LlamaConfig, tokenizer: &LmTokenizer) -> Result<u32> {
    cfg.eos_token_ids()
        .first()
        .copied()
        .or_else(|| ["</s>", "<|endoftext|>", "<|im_end|>"].iter().find_map(|t| tokenizer.token_to_id(t)))
        .context("the model names no end-of-sequence token (eos_token_id)")
}

/// Load a base model (held as the adapter's notes say it was trained over) and attach a LoRA
/// adapter to it.
pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<LoadedLm> {
    let files = ModelDir::open(path)?;
    let tokenizer = decoder::tokenizer(&files)?;
    let adapter_files = adapter.map(AdapterFiles::read).transpose()?;
    let quantization: Option<QuantConfig> = match adapter {
        Some(dir) if dir.join(NOTES_FILE).is_file() => {
            let notes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(NOTES_FILE))?)
                .with_context(|| format!("{}", dir.join(NOTES_FILE).display()))?;
            serde_json::from_value(notes["finetune"]["quantization"].clone())
                .with_context(|| format!("{}: quantization", dir.join(NOTES_FILE).display()))?
        }
        _ => None,
    };
    let (mut model, cfg) = match &quantization {
        Some(q) if q.keeps_file_quantization() => {
            let (m, c, _) = decoder::load_keeping_quantization(&files, device)?;
            (m, c)
        }
        _ => {
            let (m, c, _) = decoder::load(&files, device)?;
            (m, c)
        }
    };
    if let Some(a) = &adapter_files {
        if let Some(q) = quantization.as_ref().filter(|q| !q.keeps_file_quantization()) {
            lora::qlora::quantize_model(&mut model, q, |_| false)?;
        }
        // LoRA or prompt tuning (finetune's or Python peft's).
        model = crate::methods::load_adapter(model, a, device)?.0;
    }
    // An adapter trained with a recipe's chat template carries it.
    let template = match adapter.map(|a| a.join(decoder::CHAT_TEMPLATE_FILE)).filter(|p| p.is_file()) {
        Some(path) => Some(decoder::chat_template_file(&path, &tokenizer, &cfg)?),
        None => decoder::chat_template(&files, &tokenizer, &cfg)?,
    };
    Ok(LoadedLm { model, cfg, tokenizer, template })
}

/// [`load_with_adapter`] with any number of adapters: one is attached as trained; several are
/// active together with peft's semantics (their updates add up, `lora::adapter::merge_all`).
pub fn load_with_adapters(path: &Path, adapters: &[PathBuf], device: &Device) -> Result<LoadedLm> {
    if adapters.len() <= 1 {
        return load_with_adapter(path, adapters.first().map(PathBuf::as_path), device);
    }
    let files: Vec<AdapterFiles> = adapters.iter().map(|d| AdapterFiles::read(d)).collect::<Result<_>>()?;
    let mut lm = load_with_adapter(path, None, device)?;
    lm.model = lora::adapter::merge_all(lm.model, &files, device)?;
    Ok(lm)
}

/// Merging needs LoRA: a soft prompt is an input, not a change of weights.
pub fn only_lora(adapters: &[PathBuf]) -> Result<()> {
    for dir in adapters {
        let kind = AdapterFiles::read(dir)?.peft_type()?.to_string();
        anyhow::ensure!(
            kind == "LORA",
            "{}: a {kind} adapter cannot be merged into the weights (only LoRA can); use it with --adapter",
            dir.display()
        );
    }
    Ok(())
}

/// A prompt longer than a learned position table (GPT-2: `n_positions`) cannot be read.
fn prompt_fits(model: &LlamaForCausalLM, ids: &[u32]) -> Result<()> {
    if let Some(n) = model.max_positions() {
        let needed = ids.len() + model.virtual_tokens();
        anyhow::ensure!(
            needed <= n,
            "the prompt needs {needed} positions (with any soft-prompt tokens) but the model has {n} (n_positions): shorten it"
        );
    }
    Ok(())
}

/// How `finetune generate` builds its prompt and what it prints.
pub struct GenerateOptions {
    pub system: Option<String>,
    /// The prompt is raw text: no chat template.
    pub raw: bool,
    /// Print one JSON object (prompt and generated ids and text) instead of streaming text.
    pub json: bool,
    /// With `json`: also the logits of the first generated position.
    pub logits: bool,
}

/// Load a decoder (and an adapter), then stream a completion of `prompt` to stdout.
pub fn generate_cli(
    model: &Path,
    adapters: &[PathBuf],
    prompts: &[String],
    opts: &GenerateOptions,
    mut sampling: Sampling,
    device: &str,
) -> Result<()> {
    use std::io::Write;
    let device = crate::ops::device::select(device)?;
    let lm = load_with_adapters(model, adapters, &device)?;
    let model = lm.model.valid();
    let template = if opts.raw { None } else { lm.template.as_ref() };
    let render = |prompt: &str| -> Result<String> {
        Ok(match template {
            Some(t) => {
                let mut messages = Vec::new();
                if let Some(s) = &opts.system {
                    messages.push(Message::new("system", s));
                }
                messages.push(Message::new("user", prompt));
                t.render(&messages, true)?
            }
            None => prompt.to_string(),
        })
    };
    sampling.stop_ids.extend(stop_ids(&lm.cfg, &lm.tokenizer, template)?);
    if prompts.len() > 1 {
        // Several prompts: one left-padded batch, each answer printed when all are done.
        let texts: Vec<String> = prompts.iter().map(|p| render(p)).collect::<Result<_>>()?;
        let ids: Vec<Vec<u32>> =
            texts.iter().map(|t| lm.tokenizer.encode(t, template.is_none())).collect::<Result<_>>()?;
        ids.iter().try_for_each(|p| prompt_fits(&model, p))?;
        let pad = lm.cfg.pad_token_id.unwrap_or(lm.eos_id()?);
        let start = std::time::Instant::now();
        let outs = crate::models::generation::generate_batch(&model, &ids, &sampling, pad, &device);
        for ((text, prompt_ids), out) in texts.iter().zip(&ids).zip(&outs) {
            let answer = lm.tokenizer.decode(out, true)?;
            if opts.json {
                let mut record =
                    serde_json::json!({"prompt": text, "prompt_ids": prompt_ids, "ids": out, "text": answer});
                if opts.logits {
                    record["next_token_logits"] =
                        crate::models::generation::next_token_logits(&model, prompt_ids, &device).into();
                }
                println!("{record}");
            } else {
                println!("{answer}\n");
            }
        }
        let new: usize = outs.iter().map(Vec::len).sum();
        tracing::info!(
            "{} prompts, {new} new tokens in {:.2} s (batched)",
            prompts.len(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let text = render(prompts.first().map(String::as_str).unwrap_or_default())?;
    let ids = lm.tokenizer.encode(&text, template.is_none())?;
    prompt_fits(&model, &ids)?;
    if opts.json {
        let out = generate(&model, &ids, &sampling, &device, |_| {});
        let mut record = serde_json::json!({
            "prompt": text,
            "prompt_ids": ids,
            "ids": out,
            "text": lm.tokenizer.decode(&out, true)?,
        });
        if opts.logits {
            record["next_token_logits"] = crate::models::generation::next_token_logits(&model, &ids, &device).into();
        }
        println!("{record}");
        return Ok(());
    }
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0;
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout();
    let out = generate(&model, &ids, &sampling, &device, |t| {
        // Decode the whole continuation each time: a token can be half of a UTF-8 character.
        generated.push(t);
        if let Ok(s) = lm.tokenizer.decode(&generated, true)
            && s.len() > printed
            && s.is_char_boundary(printed)
        {
            let _ = write!(stdout, "{}", &s[printed..]);
            let _ = stdout.flush();
            printed = s.len();
        }
    });
    println!();
    tracing::info!("{} prompt tokens, {} new tokens in {:.2} s", ids.len(), out.len(), start.elapsed().as_secs_f64());
    Ok(())
}

/// Does the adapter in `dir` belong to a causal language model (peft `task_type = "CAUSAL_LM"`)?
pub fn is_causal_lm_adapter(dir: &Path) -> Result<bool> {
    Ok(AdapterFiles::read(dir)?.config.get("task_type").and_then(|t| t.as_str()) == Some("CAUSAL_LM"))
}

/// Fold LoRA adapters into their base decoder (dequantized, when the base was held quantized)
/// and write a plain Hugging Face model directory. Returns the number of merged layers.
pub fn merge(base: &Path, adapters: &[PathBuf], out: &Path) -> Result<usize> {
    only_lora(adapters)?;
    let device = Device::flex();
    let mut lm = load_with_adapters(base, adapters, &device)?;
    lora::merge(&mut lm.model);
    // Layer updates merged, adapter by adapter.
    let mut n = 0;
    for dir in adapters {
        n += AdapterFiles::read(dir)?.tensors.keys().filter(|k| k.ends_with(".lora_A.weight")).count();
    }
    save_model(&lm.model, &lm.cfg, &lm.tokenizer, lm.template.as_ref(), out)?;
    Ok(n)
}
