//! Supervised fine-tuning of a causal language model (Llama family, from a Hugging Face
//! directory or a GGUF file): `lora` (QLoRA with `[quantization]`) and `full`, with the loss on
//! completions / assistant turns, held-out loss and perplexity before and after training, and
//! the adapter written in peft's format (`task_type = "CAUSAL_LM"`).

use crate::data::chat::ChatTemplate;
use crate::data::sft::{SftEncoder, SftExample, SftRow, load_jsonl, pack, parse_row};
use crate::data::tokenizer::LmTokenizer;
use crate::io::hub::{self, RepoKind};
use crate::io::peft::AdapterFiles;
use crate::methods::lora::{self, LoraConfig};
use crate::models::causal_lm::DecoderFiles;
use crate::models::generation::{Sampling, generate};
use crate::models::llama::{self, LlamaConfig, LlamaForCausalLM};
use crate::models::{checkpoint_tensors, count_params};
use crate::quant::{QuantConfig, QuantReport};
use crate::methods::Method;
use crate::recipe::Recipe;
use crate::training::checkpoint::{BestSoFar, RunDir};
use crate::training::metrics::{EvalMetrics, read_log};
use crate::training::trainer::{Examples, MethodHooks, Split, cross_entropy, evaluate, train};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// Tokenized SFT splits as training examples for a decoder.
pub struct LmExamples {
    splits: [Option<Vec<SftExample>>; 3],
    pad_id: u32,
    device: Device,
}

fn slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    }
}

impl LmExamples {
    /// Train, validation and test examples; `pad_id` fills short rows (never a target).
    pub fn new(splits: [Option<Vec<SftExample>>; 3], pad_id: u32, device: &Device) -> Self {
        Self { splits, pad_id, device: device.clone() }
    }

    fn split(&self, split: Split) -> &[SftExample] {
        self.splits[slot(split)].as_deref().unwrap_or(&[])
    }

    /// Next-token targets of a batch: (row · len + position) of each predicting position, and
    /// the token it must predict.
    fn targets(&self, batch: &[&SftExample], len: usize) -> (Vec<i64>, Vec<i64>) {
        let (mut rows, mut ids) = (Vec::new(), Vec::new());
        for (b, ex) in batch.iter().enumerate() {
            for p in 1..ex.ids.len() {
                if ex.trained[p] {
                    rows.push((b * len + p - 1) as i64);
                    ids.push(ex.ids[p] as i64);
                }
            }
        }
        (rows, ids)
    }
}

impl Examples<LlamaForCausalLM> for LmExamples {
    fn len(&self, split: Split) -> usize {
        self.split(split).len()
    }

    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        Some(self.split(split).iter().map(|ex| ex.ids.len()).collect())
    }

    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        let s = self.split(split);
        indices.iter().map(|&i| s[i].targets()).sum::<usize>() as f64
    }

    /// Mean next-token cross-entropy over the batch's target tokens. The output projection (a
    /// 49k-wide product on SmolLM2) runs only on the positions that have a target.
    fn loss(&self, model: &LlamaForCausalLM, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let s = self.split(split);
        let batch: Vec<&SftExample> = indices.iter().map(|&i| &s[i]).collect();
        let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let mut ids = vec![self.pad_id as i64; batch.len() * len];
        for (b, ex) in batch.iter().enumerate() {
            for (p, &t) in ex.ids.iter().enumerate() {
                ids[b * len + p] = t as i64;
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.len(), len]), &self.device);
        let hidden = model.hidden(ids, None);
        let [b, l, h] = hidden.dims();
        let (rows, targets) = self.targets(&batch, len);
        let n = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
        let logits = model.logits(hidden.reshape([b * l, h]).select(0, rows));
        let predicted: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_into_vec().expect("ints");
        let pairs = predicted.iter().zip(&targets).map(|(&p, &t)| (p as usize, t as usize)).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &self.device);
        (cross_entropy(logits, y), pairs)
    }

    fn eval_order(&self, split: Split) -> Vec<usize> {
        // Similar lengths together: less padding.
        let s = self.split(split);
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by_key(|&i| s[i].ids.len());
        order
    }
}

/// Held-out loss (mean per target token) and its perplexity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LmMetrics {
    pub loss: f64,
    pub perplexity: f64,
    pub token_accuracy: f64,
    pub examples: usize,
}

impl From<EvalMetrics> for LmMetrics {
    fn from(m: EvalMetrics) -> Self {
        Self { loss: m.loss, perplexity: m.loss.exp(), token_accuracy: m.accuracy, examples: m.examples }
    }
}

/// A prompt from the held-out data answered by the model before and after training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleAnswer {
    pub prompt: String,
    pub reference: String,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmReport {
    pub method: String,
    pub model: String,
    pub train_examples: usize,
    pub train_target_tokens: usize,
    pub skipped_rows: usize,
    pub total_params: usize,
    pub trainable_params: usize,
    pub optimizer_steps: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub train_seconds: f64,
    /// Tokens (prompt and target, padding excluded) processed per second of training.
    pub train_tokens_per_second: f64,
    pub validation_before: Option<LmMetrics>,
    pub validation_after: Option<LmMetrics>,
    pub test_before: Option<LmMetrics>,
    pub test_after: Option<LmMetrics>,
    pub best: Option<BestSoFar>,
    pub samples: Vec<SampleAnswer>,
    pub run_dir: PathBuf,
    pub output_dir: PathBuf,
}

/// Resolve `recipe.model` (a path, or a hub id, with `gguf_file` for a GGUF repository).
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

/// finetune's notes beside a peft adapter (peft ignores the file).
pub const ADAPTER_NOTES: &str = "finetune.json";

fn log_quantization(what: &str, r: &QuantReport) {
    tracing::info!(
        "{what} {} layers ({} parameters, {:.3} bits/parameter): {:.1} MB -> {:.1} MB",
        r.layers,
        r.parameters,
        r.bits_per_parameter(),
        r.f32_bytes as f64 / 1e6,
        r.quantized_bytes as f64 / 1e6
    );
}

/// Load a base model (held as `quantization` says) and attach a LoRA adapter to it.
pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<LoadedLm> {
    let files = DecoderFiles::open(path)?;
    let tokenizer = files.tokenizer()?;
    let adapter_files = adapter.map(AdapterFiles::read).transpose()?;
    let quantization: Option<QuantConfig> = match adapter {
        Some(dir) if dir.join(ADAPTER_NOTES).is_file() => {
            let notes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_NOTES))?)
                .with_context(|| format!("{}", dir.join(ADAPTER_NOTES).display()))?;
            serde_json::from_value(notes["finetune"]["quantization"].clone())
                .with_context(|| format!("{}: quantization", dir.join(ADAPTER_NOTES).display()))?
        }
        _ => None,
    };
    let (mut model, cfg) = match &quantization {
        Some(q) if q.keeps_file_quantization() => {
            let (m, c, _) = files.load_keeping_quantization(device)?;
            (m, c)
        }
        _ => {
            let (m, c, _) = files.load(device)?;
            (m, c)
        }
    };
    if let Some(a) = &adapter_files {
        if a.peft_type()? != "LORA" {
            bail!("{}: only LoRA adapters can be used with a causal LM today", a.dir.display());
        }
        if let Some(q) = quantization.as_ref().filter(|q| !q.keeps_file_quantization()) {
            crate::methods::lora::qlora::quantize_model(&mut model, q, |_| false)?;
        }
        model = lora::load_adapter(model, a, llama::hf_key, device)?.0;
    }
    let template = files.chat_template(&tokenizer, &cfg)?;
    Ok(LoadedLm { model, cfg, tokenizer, template })
}

/// The end-of-sequence id: the config's, else the tokenizer's `</s>`/`<|endoftext|>`.
pub fn eos_id(cfg: &LlamaConfig, tokenizer: &LmTokenizer) -> Result<u32> {
    cfg.eos_token_ids()
        .first()
        .copied()
        .or_else(|| ["</s>", "<|endoftext|>", "<|im_end|>"].iter().find_map(|t| tokenizer.token_to_id(t)))
        .context("the model names no end-of-sequence token (eos_token_id)")
}

fn lora_trainable(cfg: &LoraConfig, path: &str) -> bool {
    let module = path.rsplit_once('.').map_or("", |(m, _)| m);
    lora::is_trainable(cfg, path, module)
}

/// Fine-tune per `recipe` (`task = "causal-lm"`).
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<LmReport> {
    if !matches!(recipe.method, Method::Lora | Method::Full) {
        bail!("method '{}' is not available for causal-lm yet (lora, full)", recipe.method.name());
    }
    let base = crate::ops::device::select(&recipe.device)?;
    let _precision = crate::ops::context::enter(crate::ops::context::Precision::parse(&recipe.precision)?);
    let train_device = crate::ops::device::training(&base);
    let model_path = resolve_model(&recipe.model, recipe.gguf_file.as_deref(), &recipe.revision)?;
    base.seed(recipe.seed);
    train_device.seed(recipe.seed);
    let quantization = recipe.quantization.as_ref();
    if quantization.is_some() && recipe.method != Method::Lora {
        bail!("[quantization] freezes the base, so it needs method = \"lora\" (QLoRA)");
    }
    let keep_gguf = quantization.is_some_and(QuantConfig::keeps_file_quantization);
    let files = DecoderFiles::open(&model_path)?;
    let tokenizer = files.tokenizer()?;
    let (model, cfg) = if keep_gguf {
        let (model, cfg, report) = files.load_keeping_quantization(&train_device)?;
        log_quantization("kept the GGUF file's quantization for", &report);
        (model, cfg)
    } else {
        let (model, cfg, _) = files.load(&train_device)?;
        (model, cfg)
    };
    let template = files.chat_template(&tokenizer, &cfg)?;
    let eos_id = eos_id(&cfg, &tokenizer)?;

    // Data.
    let d = &recipe.data;
    let data_dir = crate::data::dataset_dir(d)?;
    let encoder = SftEncoder {
        tokenizer: &tokenizer,
        template: template.as_ref(),
        eos_id,
        max_length: d.max_length,
        completion_only_loss: d.completion_only_loss,
    };
    let load = |name: &Option<String>| -> Result<Option<crate::data::sft::SftSplit>> {
        name.as_ref().map(|n| load_jsonl(&data_dir.join(n), &encoder, d.skip_bad_rows)).transpose()
    };
    let mut train_split = load(&Some(d.train.clone()))?.expect("train is required");
    let validation = load(&d.validation)?;
    let test = load(&d.test)?;
    let skipped_rows =
        train_split.skipped + validation.as_ref().map_or(0, |s| s.skipped) + test.as_ref().map_or(0, |s| s.skipped);
    if train_split.truncated_away > 0 {
        tracing::warn!(
            "{} training rows had nothing to train on within max_length and were dropped",
            train_split.truncated_away
        );
    }
    if d.packing {
        train_split.examples = pack(&train_split.examples, d.max_length);
    }
    let train_tokens: usize = train_split.examples.iter().map(|e| e.ids.len()).sum();
    let train_targets: usize = train_split.examples.iter().map(SftExample::targets).sum();
    tracing::info!(
        "{} train sequences ({train_tokens} tokens, {train_targets} targets) / {} validation / {} test",
        train_split.examples.len(),
        validation.as_ref().map_or(0, |s| s.examples.len()),
        test.as_ref().map_or(0, |s| s.examples.len())
    );
    let sample_rows = sample_prompts(&data_dir, d.test.as_ref().or(d.validation.as_ref()), 3)?;
    let examples = LmExamples {
        splits: [Some(train_split.examples), validation.map(|s| s.examples), test.map(|s| s.examples)],
        pad_id: eos_id,
        device: base.clone(),
    };

    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;

    let vocab = cfg.vocab_size;
    let eval_batch = recipe.training.eval_batch_size;
    let score = |m: &LlamaForCausalLM, split: Split| -> Option<LmMetrics> {
        (examples.len(split) > 0).then(|| evaluate(m, &examples, split, eval_batch, vocab).into())
    };
    // QLoRA quantizes the base before anything runs: "before" scores the base as trained over.
    let mut model = model;
    if let (Some(q), Some(lora_cfg)) = (quantization.filter(|_| !keep_gguf), &recipe.lora) {
        let report = crate::methods::lora::qlora::quantize_model(&mut model, q, |name| lora_cfg.saves(name))?;
        log_quantization(&format!("QLoRA: quantized to {}", q.quant_type), &report);
    }
    // Before training: the base model on the held-out splits, and its answers to sample prompts.
    let before_model = model.valid();
    let validation_before = score(&before_model, Split::Validation);
    let test_before = score(&before_model, Split::Test);
    let answers_before = answer(&before_model, &tokenizer, template.as_ref(), &sample_rows, eos_id, &base)?;
    drop(before_model);
    if let Some(m) = &validation_before {
        tracing::info!("before training: validation loss {:.4}, perplexity {:.2}", m.loss, m.perplexity);
    }

    let lora_cfg = match recipe.method {
        Method::Lora => {
            let cfg = recipe.lora.clone().context("method = \"lora\" needs a [lora] section")?;
            let targeted = lora::inject(&mut model, &cfg, &train_device)?;
            tracing::info!("LoRA r={} on {} layers", cfg.r, targeted.len());
            Some(cfg)
        }
        _ => None,
    };
    let trainer_cfg =
        crate::training::trainer::TrainerConfig::new(&recipe.training, recipe.seed, vocab, examples.len(Split::Train), show_progress);
    let set_once = Cell::new(false);
    let set_trainable = |m: LlamaForCausalLM, _: usize, _: usize| {
        if set_once.replace(true) {
            return (m, Vec::new());
        }
        let m = match &lora_cfg {
            Some(cfg) => crate::io::params::set_trainable(m, |p| lora_trainable(cfg, p)),
            None => crate::io::params::set_trainable(m, |_| true),
        };
        (m, Vec::new())
    };
    let lr_scale = |_: &str| 1.0;
    let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
    let outcome = train(model, &examples, &trainer_cfg, hooks, &run, resume, &train_device)?;
    let state = outcome.state;
    let trained = outcome.best_model;
    let (total_params, trainable_params) = {
        let (total, _) = count_params(&trained);
        let trainable = crate::io::params::list_params(&trained)
            .iter()
            .filter(|p| match &lora_cfg {
                Some(cfg) => lora_trainable(cfg, &p.path),
                None => true,
            })
            .map(crate::io::params::ParamInfo::numel)
            .sum();
        (total, trainable)
    };
    let after_model = trained.valid();
    let validation_after = score(&after_model, Split::Validation);
    let test_after = score(&after_model, Split::Test);
    let answers_after = answer(&after_model, &tokenizer, template.as_ref(), &sample_rows, eos_id, &base)?;
    if let Some(m) = &validation_after {
        tracing::info!("after training: validation loss {:.4}, perplexity {:.2}", m.loss, m.perplexity);
    }

    let output_dir = match &lora_cfg {
        Some(cfg) => {
            let dir = run.adapter();
            let config = lora::adapter_config_json(cfg, &recipe.model, "CAUSAL_LM");
            let tensors = lora::adapter_tensors(&after_model, llama::hf_key, |p| lora_trainable(cfg, p));
            AdapterFiles::write(&dir, &config, tensors)?;
            // How the base was held, so that loading the adapter reproduces the trained function.
            let notes = serde_json::json!({ "finetune": { "task": "causal-lm", "quantization": quantization } });
            crate::io::atomic::write_atomic(
                &dir.join(ADAPTER_NOTES),
                serde_json::to_string_pretty(&notes)?.as_bytes(),
            )?;
            dir
        }
        None => {
            let dir = run.model();
            save_model(&after_model, &cfg, &tokenizer, template.as_ref(), &dir)?;
            dir
        }
    };
    let records = read_log(&run.metrics())?;
    if let Err(e) = crate::training::plot::plot_curves(&records, &run.plot()) {
        tracing::warn!("could not draw curves: {e:#}");
    }
    let samples = sample_rows
        .iter()
        .zip(answers_before.into_iter().zip(answers_after))
        .map(|((prompt, reference), (before, after))| SampleAnswer {
            prompt: prompt.clone(),
            reference: reference.clone(),
            before,
            after,
        })
        .collect();
    let report = LmReport {
        method: recipe.method.name().into(),
        model: recipe.model.clone(),
        train_examples: examples.len(Split::Train),
        train_target_tokens: train_targets,
        skipped_rows,
        total_params,
        trainable_params,
        optimizer_steps: state.step,
        epochs_run: state.epoch.max(1),
        stopped_early: state.stopped_early,
        train_seconds: state.train_seconds,
        train_tokens_per_second: train_tokens as f64 * state.step as f64
            / (steps_per_epoch(&trainer_cfg, examples.len(Split::Train)) * state.train_seconds.max(1e-9)),
        validation_before,
        validation_after,
        test_before,
        test_after,
        best: state.best.clone(),
        samples,
        run_dir: run.root.clone(),
        output_dir,
    };
    crate::io::atomic::write_atomic(&run.results(), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}

/// Optimizer steps of one epoch.
fn steps_per_epoch(cfg: &crate::training::trainer::TrainerConfig, n: usize) -> f64 {
    crate::training::trainer::TrainerConfig::steps_per_epoch(cfg.batch_size, cfg.grad_accum_steps, n) as f64
}

/// Up to `n` (first user turn, first assistant turn) pairs from a held-out file.
fn sample_prompts(dir: &Path, file: Option<&String>, n: usize) -> Result<Vec<(String, String)>> {
    let Some(file) = file else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(dir.join(file))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(row) =
            serde_json::from_str::<serde_json::Value>(line).map_err(anyhow::Error::from).and_then(|v| parse_row(&v))
        else {
            continue;
        };
        let pair = match row {
            SftRow::Chat(m) => {
                let q = m.iter().find(|m| m.role == "user").map(|m| m.content.clone());
                let a = m.iter().find(|m| m.role == "assistant").map(|m| m.content.clone());
                q.zip(a)
            }
            SftRow::PromptCompletion { prompt, completion } => Some((prompt, completion)),
        };
        out.extend(pair);
        if out.len() == n {
            break;
        }
    }
    Ok(out)
}

/// Greedy answers (up to 48 tokens) to sample prompts.
fn answer(
    model: &LlamaForCausalLM,
    tokenizer: &LmTokenizer,
    template: Option<&ChatTemplate>,
    prompts: &[(String, String)],
    eos_id: u32,
    device: &Device,
) -> Result<Vec<String>> {
    let s = Sampling { max_new_tokens: 48, stop_ids: vec![eos_id], ..Default::default() };
    prompts
        .iter()
        .map(|(q, _)| {
            let text = match template {
                Some(t) => t.render(&[crate::data::chat::Message::new("user", q)], true)?,
                None => q.clone(),
            };
            let ids = tokenizer.encode(&text, template.is_none())?;
            let out = generate(model, &ids, &s, device, |_| {});
            tokenizer.decode(&out, true).map(|t| t.trim().to_string())
        })
        .collect()
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
    let tensors = checkpoint_tensors(model, llama::hf_key, |_| true);
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::io::safetensors::write_safetensors(&dir.join("model.safetensors"), &tensors, Some(meta))?;
    let mut config = serde_json::to_value(cfg)?;
    config["model_type"] = "llama".into();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    crate::io::atomic::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    if let Some(t) = template {
        crate::io::atomic::write_atomic(&dir.join("chat_template.jinja"), t.source().as_bytes())?;
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

/// How `finetune generate` builds its prompt.
pub struct GenerateOptions {
    pub system: Option<String>,
    /// The prompt is raw text: no chat template.
    pub raw: bool,
}

/// Load a decoder (and an adapter), then stream a completion of `prompt` to stdout.
pub fn generate_cli(
    model: &Path,
    adapter: Option<&Path>,
    prompt: &str,
    opts: &GenerateOptions,
    mut sampling: Sampling,
    device: &str,
) -> Result<()> {
    use std::io::Write;
    let device = crate::ops::device::select(device)?;
    let lm = load_with_adapter(model, adapter, &device)?;
    let model = lm.model.valid();
    let template = if opts.raw { None } else { lm.template.as_ref() };
    let text = match template {
        Some(t) => {
            let mut messages = Vec::new();
            if let Some(s) = &opts.system {
                messages.push(crate::data::chat::Message::new("system", s));
            }
            messages.push(crate::data::chat::Message::new("user", prompt));
            t.render(&messages, true)?
        }
        None => prompt.to_string(),
    };
    let ids = lm.tokenizer.encode(&text, template.is_none())?;
    sampling.stop_ids.push(lm.eos_id()?);
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

/// Fold a LoRA adapter into its base decoder (dequantized, when the base was held quantized)
/// and write a plain Hugging Face model directory. Returns the number of merged layers.
pub fn merge_cli(base: &Path, adapter: &Path, out: &Path) -> Result<usize> {
    let device = Device::flex();
    let mut lm = load_with_adapter(base, Some(adapter), &device)?;
    let n = lora::merge(&mut lm.model);
    save_model(&lm.model, &lm.cfg, &lm.tokenizer, lm.template.as_ref(), out)?;
    Ok(n)
}
