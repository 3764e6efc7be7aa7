//! Supervised fine-tuning of a causal language model (`task = "causal-lm"`; Llama family, from
//! a Hugging Face directory or a GGUF file): `lora` (QLoRA with `[quantization]`, or LoRA over the
//! GGUF file's own blocks) and `full`, with the loss on completions / assistant turns, held-out
//! loss and perplexity before and after training, sample answers, and the adapter in peft's
//! format (`task_type = "CAUSAL_LM"`) or the model in the Hugging Face layout.

use crate::data::chat::{ChatTemplate, Message};
use crate::data::sft::{SftEncoder, SftExample, load_jsonl, next_token_targets, pack, sample_prompts};
use crate::data::tokenizer::LmTokenizer;
use crate::inference::lm::{eos_id, resolve_model};
use crate::methods::Method;
use crate::models::ModelDir;
use crate::models::decoder::{self, save_model};
use crate::models::generation::{Sampling, generate};
use crate::models::llama::{LlamaConfig, LlamaForCausalLM};
use crate::ops::head_loss;
use crate::pipeline::{self, Devices, ReportExtra, Task, TrainReport};
use crate::quant::QuantConfig;
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::checkpoint::{RunDir, TrainState};
use crate::training::loss::{Scored, cross_entropy};
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split, TrainerConfig, evaluate};
use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport<LmExtra>> {
    pipeline::run(recipe, resume, show_progress, |devices| CausalLm::prepare(recipe, devices))
}

/// Tokenized SFT splits as training examples for a decoder.
pub struct LmExamples {
    splits: [Vec<SftExample>; 3],
    pad_id: u32,
    device: Device,
}

impl LmExamples {
    /// Train, validation and test examples; `pad_id` fills short rows (never a target).
    pub fn new(splits: [Option<Vec<SftExample>>; 3], pad_id: u32, device: &Device) -> Self {
        Self { splits: splits.map(Option::unwrap_or_default), pad_id, device: device.clone() }
    }
}

impl Examples<LlamaForCausalLM> for LmExamples {
    fn len(&self, split: Split) -> usize {
        self.splits[split.slot()].len()
    }

    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        Some(self.splits[split.slot()].iter().map(|ex| ex.ids.len()).collect())
    }

    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        let s = &self.splits[split.slot()];
        indices.iter().map(|&i| s[i].targets()).sum::<usize>() as f64
    }

    /// Mean next-token cross-entropy over the batch's target tokens. The output projection (a
    /// 49k-wide product on SmolLM2, 262k on Gemma 3) runs only on the positions that have a
    /// target, and with a tied head fused with the loss a chunk of rows at a time
    /// (`ops::head_loss`: the whole `[targets, vocab]` logits never exist).
    fn loss(&self, model: &LlamaForCausalLM, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let s = &self.splits[split.slot()];
        let batch: Vec<&SftExample> = indices.iter().map(|&i| &s[i]).collect();
        let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let pad = |ex: &&SftExample| std::iter::repeat_n(self.pad_id as i64, len - ex.ids.len());
        let ids: Vec<i64> = batch.iter().flat_map(|ex| ex.ids.iter().map(|&t| t as i64).chain(pad(ex))).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.len(), len]), &self.device);
        let hidden = model.hidden(ids, None);
        let [b, l, h] = hidden.dims();
        let (rows, targets) = next_token_targets(&batch, len);
        let n = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
        let hidden = hidden.reshape([b * l, h]).select(0, rows);
        if let Some(table) = model.tied_output_table().filter(|t| head_loss::supports(&hidden, t)) {
            let wanted: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
            let (loss, predicted) = head_loss::tied_head_cross_entropy(hidden, table, &wanted);
            return (loss, predicted.into_iter().zip(wanted).collect());
        }
        let logits = model.logits(hidden);
        let predicted: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_into_vec().expect("ints");
        let pairs = predicted.iter().zip(&targets).map(|(&p, &t)| (p as usize, t as usize)).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &self.device);
        (cross_entropy(logits, y), pairs)
    }

    fn eval_order(&self, split: Split) -> Vec<usize> {
        // Similar lengths together: less padding.
        let s = &self.splits[split.slot()];
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
        let token_accuracy = m.accuracy.unwrap_or_default();
        Self { loss: m.loss, perplexity: m.loss.exp(), token_accuracy, examples: m.examples }
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

/// What a causal-LM run reports besides the shared fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LmExtra {
    pub train_target_tokens: usize,
    /// Tokens (prompt and target, padding excluded) processed per second of training.
    pub train_tokens_per_second: f64,
    pub validation_before: Option<LmMetrics>,
    pub validation_after: Option<LmMetrics>,
    pub test_before: Option<LmMetrics>,
    pub test_after: Option<LmMetrics>,
    pub samples: Vec<SampleAnswer>,
}

impl ReportExtra for LmExtra {
    fn classifies(&self) -> bool {
        false
    }
    fn summary(&self) -> Vec<String> {
        let mut out = vec![format!("throughput:    {:.0} tokens/s", self.train_tokens_per_second)];
        for (name, before, after) in [
            ("validation", &self.validation_before, &self.validation_after),
            ("test", &self.test_before, &self.test_after),
        ] {
            if let (Some(b), Some(a)) = (before, after) {
                out.push(format!(
                    "{name:<11}    loss {:.4} -> {:.4}, perplexity {:.2} -> {:.2}, token accuracy {:.4} -> {:.4}",
                    b.loss, a.loss, b.perplexity, a.perplexity, b.token_accuracy, a.token_accuracy
                ));
            }
        }
        for s in &self.samples {
            out.push(format!(
                "\nprompt:    {}\nreference: {}\nbefore:    {}\nafter:     {}\n",
                s.prompt, s.reference, s.before, s.after
            ));
        }
        out
    }
}

/// A causal-LM run: the decoder's files, tokenizer and template, and the tokenized data.
pub struct CausalLm {
    files: ModelDir,
    cfg: LlamaConfig,
    tokenizer: LmTokenizer,
    template: Option<ChatTemplate>,
    /// The template is the recipe's `data.chat_template`, not the model's own.
    template_from_recipe: bool,
    examples: LmExamples,
    samples: Vec<(String, String)>,
    quantization: Option<QuantConfig>,
    train_tokens: usize,
    train_targets: usize,
    skipped_rows: usize,
    eval_batch_size: usize,
    batch: (usize, usize),
    /// `[training] gradient_checkpointing`, resolved: decoder layers recomputed in backward.
    gradient_checkpointing: bool,
    /// Held-out scores and sample answers of the base, before training.
    before: (Option<LmMetrics>, Option<LmMetrics>, Vec<String>),
}

impl CausalLm {
    fn prepare(recipe: &Recipe, devices: &Devices) -> Result<Self> {
        let files = ModelDir::open(&resolve_model(&recipe.model, recipe.gguf_file.as_deref(), &recipe.revision)?)?;
        let tokenizer = decoder::tokenizer(&files)?;
        let cfg = decoder::config(&files)?;
        anyhow::ensure!(
            tokenizer.vocab_size() <= cfg.vocab_size,
            "{}: the tokenizer has {} tokens but the model's embedding table has {} (vocab_size): it does not belong to this model",
            files.describe(),
            tokenizer.vocab_size(),
            cfg.vocab_size
        );
        let d = &recipe.data;
        let prompt = recipe.prompt_tuning.as_ref().filter(|_| recipe.method == Method::PromptTuning);
        decoder::check_positions(&cfg, d.max_length + prompt.map_or(0, |p| p.num_virtual_tokens), &files)?;
        let template = decoder::template_for_training(&files, &tokenizer, &cfg, d.chat_template.as_deref())?;
        let eos_id = eos_id(&cfg, &tokenizer)?;
        let data_dir = crate::data::dataset_dir(d)?;
        let encoder = SftEncoder {
            tokenizer: &tokenizer,
            template: template.as_ref(),
            eos_id,
            max_length: d.max_length,
            completion_only_loss: d.completion_only_loss,
        };
        let load = |name: Option<&String>| -> Result<Option<crate::data::sft::SftSplit>> {
            name.map(|n| load_jsonl(&data_dir.join(n), &encoder, d.skip_bad_rows)).transpose()
        };
        let mut train = load(Some(&d.train))?.expect("train is required");
        let (validation, test) = (load(d.validation.as_ref())?, load(d.test.as_ref())?);
        let skipped_rows =
            train.skipped + validation.as_ref().map_or(0, |s| s.skipped) + test.as_ref().map_or(0, |s| s.skipped);
        if train.truncated_away > 0 {
            tracing::warn!(
                "{} training rows had nothing to train on within max_length and were dropped",
                train.truncated_away
            );
        }
        if d.packing {
            train.examples = pack(&train.examples, d.max_length);
        }
        let train_tokens = train.examples.iter().map(|e| e.ids.len()).sum();
        let train_targets = train.examples.iter().map(SftExample::targets).sum();
        let held_out = |s: Option<crate::data::sft::SftSplit>| s.map(|s| s.examples).unwrap_or_default();
        let examples = LmExamples {
            splits: [train.examples, held_out(validation), held_out(test)],
            pad_id: eos_id,
            device: devices.base.clone(),
        };
        tracing::info!(
            "{} train sequences ({train_tokens} tokens, {train_targets} targets) / {} validation / {} test",
            examples.splits[0].len(),
            examples.splits[1].len(),
            examples.splits[2].len()
        );
        let samples = sample_prompts(&data_dir, d.test.as_ref().or(d.validation.as_ref()), 3)?;
        let t = &recipe.training;
        Ok(Self {
            files,
            cfg,
            tokenizer,
            template_from_recipe: d.chat_template.is_some(),
            template,
            examples,
            samples,
            quantization: recipe.quantization.clone(),
            train_tokens,
            train_targets,
            skipped_rows,
            eval_batch_size: t.eval_batch_size,
            batch: (t.batch_size, t.grad_accum_steps),
            // On the CPU the recomputation costs less time than the memory it saves (docs/llm.md).
            gradient_checkpointing: t
                .gradient_checkpointing
                .unwrap_or_else(|| crate::ops::device::is_host(&devices.base)),
            before: (None, None, Vec::new()),
        })
    }

    fn score(&self, model: &LlamaForCausalLM, split: Split) -> Option<LmMetrics> {
        (self.examples.len(split) > 0)
            .then(|| evaluate(model, &self.examples, split, self.eval_batch_size, self.cfg.vocab_size).into())
    }

    /// Greedy answers (up to 48 tokens) to the sample prompts.
    fn answer(&self, model: &LlamaForCausalLM) -> Result<Vec<String>> {
        let stop_ids = crate::inference::lm::stop_ids(&self.cfg, &self.tokenizer, self.template.as_ref())?;
        let s = Sampling { max_new_tokens: 48, stop_ids, ..Default::default() };
        let template = self.template.as_ref();
        // A quantized base answers through a float copy (freed afterwards): see `float_copy`.
        let float = crate::methods::lora::qlora::float_copy(model);
        let model = float.as_ref().unwrap_or(model);
        self.samples
            .iter()
            .map(|(q, _)| {
                let text = match template {
                    Some(t) => t.render(&[Message::new("user", q)], true)?,
                    None => q.clone(),
                };
                let ids = self.tokenizer.encode(&text, template.is_none())?;
                let out = generate(model, &ids, &s, &self.examples.device, |_| {});
                self.tokenizer.decode(&out, true).map(|t| t.trim().to_string())
            })
            .collect()
    }
}

impl Task for CausalLm {
    type Model = LlamaForCausalLM;
    type Extra = LmExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::CausalLm
    }
    fn num_outputs(&self) -> usize {
        self.cfg.vocab_size
    }
    fn train_len(&self) -> usize {
        self.examples.len(Split::Train)
    }
    fn skipped_rows(&self) -> usize {
        self.skipped_rows
    }
    fn peft_task_type(&self) -> Option<&'static str> {
        Some("CAUSAL_LM")
    }

    fn load_model(&mut self, device: &Device) -> Result<LlamaForCausalLM> {
        let (model, cfg) = if self.quantization.as_ref().is_some_and(QuantConfig::keeps_file_quantization) {
            let (model, cfg, report) = decoder::load_keeping_quantization(&self.files, device)?;
            crate::methods::lora::qlora::log_report("kept the GGUF file's quantization for", &report);
            (model, cfg)
        } else {
            let (model, cfg, _) = decoder::load(&self.files, device)?;
            (model, cfg)
        };
        self.cfg = cfg;
        Ok(LlamaForCausalLM { gradient_checkpointing: self.gradient_checkpointing, ..model })
    }

    /// The base (as trained over: quantized for QLoRA) on the held-out splits and the samples.
    fn before_training(&mut self, model: &LlamaForCausalLM) -> Result<()> {
        let base = model.valid();
        let validation = self.score(&base, Split::Validation);
        let test = self.score(&base, Split::Test);
        let answers = self.answer(&base)?;
        if let Some(m) = &validation {
            tracing::info!("before training: validation loss {:.4}, perplexity {:.2}", m.loss, m.perplexity);
        }
        self.before = (validation, test, answers);
        Ok(())
    }

    fn examples<'a>(&'a self, _model: &LlamaForCausalLM) -> Box<dyn Examples<LlamaForCausalLM> + 'a> {
        Box::new(&self.examples)
    }

    fn save_model(&self, model: &LlamaForCausalLM, _: Method, dir: &Path) -> Result<()> {
        save_model(model, &self.cfg, &self.tokenizer, self.template.as_ref(), dir)
    }

    /// A recipe's chat template travels with the adapter (`generate --adapter` renders with it).
    fn adapter_files(&self) -> Vec<(&'static str, String)> {
        let template = self.template.as_ref().filter(|_| self.template_from_recipe);
        template.map(|t| (decoder::CHAT_TEMPLATE_FILE, t.source().to_string())).into_iter().collect()
    }

    /// How the base was held, so that loading the adapter reproduces the trained function.
    fn adapter_notes(&self, _: Method) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "finetune": { "task": "causal-lm", "quantization": self.quantization } }))
    }

    fn finish(
        &mut self,
        model: &LlamaForCausalLM,
        test: Option<&EvalMetrics>,
        _: &RunDir,
        state: &TrainState,
    ) -> Result<LmExtra> {
        let validation_after = self.score(model, Split::Validation);
        let answers = self.answer(model)?;
        if let Some(m) = &validation_after {
            tracing::info!("after training: validation loss {:.4}, perplexity {:.2}", m.loss, m.perplexity);
        }
        let (validation_before, test_before, before) = std::mem::take(&mut self.before);
        let samples = self
            .samples
            .iter()
            .zip(before.into_iter().zip(answers))
            .map(|((prompt, reference), (before, after))| SampleAnswer {
                prompt: prompt.clone(),
                reference: reference.clone(),
                before,
                after,
            })
            .collect();
        let per_epoch = TrainerConfig::steps_per_epoch(self.batch.0, self.batch.1, self.train_len()) as f64;
        Ok(LmExtra {
            train_target_tokens: self.train_targets,
            train_tokens_per_second: self.train_tokens as f64 * state.step as f64
                / (per_epoch * state.train_seconds.max(1e-9)),
            validation_before,
            validation_after,
            test_before,
            test_after: test.copied().map(LmMetrics::from),
            samples,
        })
    }
}
