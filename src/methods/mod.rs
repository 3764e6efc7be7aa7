//! Fine-tuning methods: which parameters train, when, at what learning rate, and what a run
//! saves. Each method has one home holding its settings (the recipe section), how it makes
//! parameters trainable, and its save/load:
//!
//! - `full` and `transfer` ([`transfer`]): every parameter, or the head and the top layers first
//!   with gradual unfreezing top-down and layer-wise learning-rate decay;
//! - `feature-extraction` ([`feature_extraction`]): the backbone never trains; its features are
//!   computed once and cached, and only the head is trained on them;
//! - `lora` ([`lora`]): low-rank adapters (LoRA, rsLoRA, DoRA) on linear layers and
//!   convolutions, the base frozen, optionally held in 4 bits (QLoRA, [`lora::qlora`]);
//! - `prompt-tuning` ([`prompt_tuning`]): a trainable soft prompt before the input.
//!
//! [`Tuner`] is a method set up for one run (feature extraction, which trains a head alone, is
//! the pipeline's own path). Methods see a model only through `models::Adaptable`.

pub mod feature_extraction;
pub mod lora;
pub mod prompt_tuning;
pub mod transfer;

pub use transfer::TrainPlan;

use crate::io::params::{ParamInfo, list_params_lazy, set_trainable};
use crate::models::Adaptable;
use crate::nn::conv_bn::BatchNormMode;
use crate::quant::QuantConfig;
use crate::training::checkpoint::TrainState;
use crate::training::trainer::MethodHooks;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use lora::LoraConfig;
use prompt_tuning::PromptTuningConfig;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use transfer::TransferConfig;

/// The fine-tuning method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Backbone frozen, features computed once and cached, only the head trains.
    FeatureExtraction,
    /// Every parameter trains.
    Full,
    /// New head plus the top layers; more layers unfreeze over time; layer-wise learning rates.
    Transfer,
    /// Low-rank adapters (LoRA/DoRA) on chosen layers; the base is frozen.
    Lora,
    /// A trainable soft prompt; the base is frozen.
    PromptTuning,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::FeatureExtraction => "feature-extraction",
            Self::Full => "full",
            Self::Transfer => "transfer",
            Self::Lora => "lora",
            Self::PromptTuning => "prompt-tuning",
        }
    }

    /// Methods whose result is an adapter on a frozen base rather than a whole model.
    pub fn is_peft(self) -> bool {
        matches!(self, Self::Lora | Self::PromptTuning)
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        toml::Value::String(s.into()).try_into().map_err(|_| {
            anyhow::anyhow!("unknown method '{s}' (feature-extraction, full, transfer, lora, prompt-tuning)")
        })
    }
}

/// The recipe sections a method may read.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub transfer: &'a TransferConfig,
    pub lora: Option<&'a LoraConfig>,
    pub prompt_tuning: Option<&'a PromptTuningConfig>,
    pub quantization: Option<&'a QuantConfig>,
    /// BatchNorm in trainable layers (`image.batch_norm`; models without BatchNorm ignore it).
    pub batch_norm: BatchNormMode,
}

/// A whole-model method set up for one run.
#[derive(Debug, Clone)]
pub enum Tuner {
    /// `full` (every group) or `transfer` (groups unfrozen top-down, layer-wise learning rates).
    Unfreezing {
        method: Method,
        transfer: TransferConfig,
        batch_norm: BatchNormMode,
    },
    /// LoRA/DoRA adapters, the base frozen (held quantized with `quantization`: QLoRA).
    Lora {
        cfg: Box<LoraConfig>,
        quantization: Option<QuantConfig>,
    },
    PromptTuning(PromptTuningConfig),
}

impl Tuner {
    /// `method` with its sections. `head_modules` are the task's head modules, if it has a
    /// head: adapter methods train them in full and save them with the adapter (as peft does
    /// with the classifier for sequence classification).
    pub fn new(method: Method, sections: Sections<'_>, head_modules: &[String]) -> Result<Self> {
        Ok(match method {
            Method::Full | Method::Transfer => {
                Self::Unfreezing { method, transfer: sections.transfer.clone(), batch_norm: sections.batch_norm }
            }
            Method::Lora => {
                let mut cfg = sections.lora.context("method = \"lora\" needs a [lora] section")?.clone();
                for head in head_modules {
                    if !cfg.saves(head) {
                        cfg.modules_to_save.push(head.clone());
                    }
                }
                Self::Lora { cfg: Box::new(cfg), quantization: sections.quantization.cloned() }
            }
            Method::PromptTuning => {
                let mut cfg = sections
                    .prompt_tuning
                    .context("method = \"prompt-tuning\" needs a [prompt_tuning] section")?
                    .clone();
                for head in head_modules {
                    if !lora::in_modules(head, &cfg.modules_to_save) {
                        cfg.modules_to_save.push(head.clone());
                    }
                }
                Self::PromptTuning(cfg)
            }
            Method::FeatureExtraction => bail!("feature extraction trains a head alone, not the whole model"),
        })
    }

    /// Whether the run's result is an adapter over the frozen base rather than a whole model.
    pub fn is_adapter(&self) -> bool {
        !matches!(self, Self::Unfreezing { .. })
    }

    /// QLoRA: hold the frozen base's linear layers in 4 bits (before anything scores the base,
    /// so a "before training" score is of the base as trained over). The modules to save stay
    /// in float. A GGUF base that keeps its own blocks was quantized when loaded.
    pub fn quantize<M: Adaptable>(&self, model: &mut M) -> Result<()> {
        if let Self::Lora { cfg, quantization: Some(q) } = self
            && !q.keeps_file_quantization()
        {
            let report = lora::qlora::quantize_model(model, q, |name| cfg.saves(name))?;
            lora::qlora::log_report(&format!("QLoRA: quantized to {}", q.quant_type), &report);
        }
        Ok(())
    }

    /// Attach what the method adds: LoRA adapters (BatchNorm then keeps the base's statistics:
    /// an adapter cannot carry changed ones; `"all-linear"` becomes the list of layers it means,
    /// as peft saves it), or a soft prompt (`tokenize` turns its init text into ids).
    pub fn attach<M: Adaptable>(
        &mut self,
        mut model: M,
        tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
        device: &Device,
    ) -> Result<M> {
        match self {
            Self::Unfreezing { .. } => {}
            Self::Lora { cfg, .. } => {
                **cfg = lora::resolve_targets(cfg, &model);
                let targeted = lora::inject(&mut model, cfg, device)?;
                tracing::info!("LoRA r={} on {} layers", cfg.r, targeted.len());
                model = model.set_batch_norm_training(&|_| false);
            }
            Self::PromptTuning(cfg) => prompt_tuning::attach(&mut model, cfg, tokenize, device)?,
        }
        Ok(model)
    }

    fn plan<M: Adaptable>(&self, model: &M) -> Option<TrainPlan> {
        match self {
            Self::Unfreezing { method, transfer, .. } => {
                Some(TrainPlan::new(*method, transfer, model.layer_groups(), M::layer_group))
            }
            _ => None,
        }
    }

    /// Whether an adapter method trains parameter `info` (checkpoint module `module`).
    fn adapter_trains(&self, info: &ParamInfo, module: &str) -> bool {
        match self {
            Self::Lora { cfg, .. } => lora::trains(cfg, info, module),
            Self::PromptTuning(cfg) => prompt_tuning::trains(cfg, info, module),
            Self::Unfreezing { .. } => true,
        }
    }

    /// The trainer's hooks for `model` (after [`Self::attach`]).
    pub fn hooks<M: Adaptable + 'static>(&self, model: &M) -> Box<dyn MethodHooks<M> + '_> {
        match self.plan(model) {
            Some(plan) => {
                let batch_norm = match self {
                    Self::Unfreezing { batch_norm, .. } => *batch_norm,
                    _ => BatchNormMode::Train,
                };
                Box::new(Unfreezing { plan, batch_norm, unfrozen: Cell::new(0) })
            }
            None => {
                let modules = modules_of(model);
                Box::new(Fixed {
                    trains: Box::new(move |p: &ParamInfo| self.adapter_trains(p, &modules[&p.path])),
                    set: Cell::new(false),
                })
            }
        }
    }

    /// (learnable parameters, parameters the method trained at its widest point) of a model after
    /// training; BatchNorm running statistics are buffers, not parameters.
    pub fn trainable_counts<M: Adaptable>(&self, model: &M, state: &TrainState) -> (usize, usize) {
        let modules = modules_of(model);
        let plan = self.plan(model);
        let widest =
            plan.as_ref().map_or(0, |p| p.unfrozen(state.epoch.saturating_sub(1), state.step.saturating_sub(1)));
        let learnable: Vec<ParamInfo> = list_params_lazy(model).into_iter().filter(|p| !is_buffer(p)).collect();
        let trained = learnable
            .iter()
            .filter(|p| match &plan {
                Some(plan) => plan.is_trainable(&p.path, widest),
                None => self.adapter_trains(p, &modules[&p.path]),
            })
            .map(ParamInfo::numel)
            .sum();
        (learnable.iter().map(ParamInfo::numel).sum(), trained)
    }

    /// Write the adapter of an adapter method in peft's format (`task_type` as peft names it, or
    /// none); whole-model methods have none.
    pub fn save_adapter<M: Adaptable + Clone>(
        &self,
        model: &M,
        base_model: &str,
        task_type: Option<&str>,
        dir: &Path,
    ) -> Result<()> {
        let modules = modules_of(model);
        let saved = |p: &ParamInfo| self.adapter_trains(p, &modules[&p.path]);
        match self {
            Self::Lora { cfg, .. } => lora::adapter::save_adapter(model, cfg, base_model, task_type, saved, dir),
            Self::PromptTuning(cfg) => prompt_tuning::save_adapter(model, cfg, base_model, task_type, saved, dir),
            Self::Unfreezing { .. } => bail!("full and transfer fine-tuning produce a model, not an adapter"),
        }
    }
}

/// A BatchNorm running statistic: state the forward pass updates, not a trained parameter.
pub fn is_buffer(info: &ParamInfo) -> bool {
    info.path.contains("running_")
}

/// Each parameter path's checkpoint module name (its key without the leaf), which is how peft's
/// `modules_to_save` and `target_modules` name it.
fn modules_of<M: Adaptable>(model: &M) -> HashMap<String, String> {
    list_params_lazy(model)
        .into_iter()
        .map(|p| {
            let key = model.checkpoint_key(&p.path);
            let module = key.rsplit_once('.').map_or(String::new(), |(m, _)| m.to_string());
            (p.path, module)
        })
        .collect()
}

/// Full and transfer fine-tuning: groups per the plan; BatchNorm follows its group.
struct Unfreezing {
    plan: TrainPlan,
    batch_norm: BatchNormMode,
    unfrozen: Cell<usize>,
}

impl<M: Adaptable> MethodHooks<M> for Unfreezing {
    fn set_trainable(&self, model: M, epoch: usize, step: usize) -> (M, Vec<String>) {
        let plan = &self.plan;
        let k = plan.unfrozen(epoch, step);
        let previous = self.unfrozen.replace(k);
        if previous == k {
            return (model, Vec::new());
        }
        let newly = plan.order[previous.min(k)..k].iter().map(|g| g.name()).collect();
        let model = set_trainable(model, |p| plan.is_trainable(&p.path, k));
        let bn_trains = self.batch_norm == BatchNormMode::Train;
        let model = model.set_batch_norm_training(&|bn| bn_trains && plan.is_trainable(bn, k));
        (model, newly)
    }

    fn lr_scale(&self, path: &str) -> f64 {
        self.plan.lr_scale(path)
    }
}

/// Adapter methods: one fixed set of trainable parameters, set on the first call.
struct Fixed<'a> {
    trains: Box<dyn Fn(&ParamInfo) -> bool + 'a>,
    set: Cell<bool>,
}

impl<M: Adaptable> MethodHooks<M> for Fixed<'_> {
    fn set_trainable(&self, model: M, _: usize, _: usize) -> (M, Vec<String>) {
        if self.set.replace(true) {
            return (model, Vec::new());
        }
        (set_trainable(model, |p| (self.trains)(p)), Vec::new())
    }
}

/// Attach the adapter in `files` (finetune's or Python peft's: LoRA/DoRA or prompt tuning) to
/// `model`; the returned tuner describes it (for merging or saving it again).
pub fn load_adapter<M: Adaptable>(
    model: M,
    files: &crate::io::peft::AdapterFiles,
    device: &Device,
) -> Result<(M, Tuner)> {
    match files.peft_type()? {
        "LORA" => {
            let (model, cfg) = lora::adapter::load_adapter(model, files, device)?;
            Ok((model, Tuner::Lora { cfg: Box::new(cfg), quantization: None }))
        }
        "PROMPT_TUNING" => {
            let (model, cfg) = prompt_tuning::load_adapter(model, files, device)?;
            Ok((model, Tuner::PromptTuning(cfg)))
        }
        other => bail!("{}: peft_type {other} is not supported (LORA, PROMPT_TUNING)", files.dir.display()),
    }
}

/// What the adapter in `files` is, checked as loading it would before a model is at hand.
pub fn describe_adapter(files: &crate::io::peft::AdapterFiles) -> Result<String> {
    let tensors = files.tensors.len();
    match files.peft_type()? {
        "LORA" => {
            let cfg = lora::adapter::read_config(files)?;
            let kind = if cfg.use_dora { "DoRA" } else { "LoRA" };
            Ok(format!("{kind} adapter, r = {}, alpha = {}, {tensors} tensors", cfg.r, cfg.lora_alpha))
        }
        "PROMPT_TUNING" => {
            let cfg = prompt_tuning::read_config(files)?;
            Ok(format!("prompt-tuning adapter, {} virtual tokens, {tensors} tensors", cfg.num_virtual_tokens))
        }
        other => bail!("{}: peft_type {other} is not supported (LORA, PROMPT_TUNING)", files.dir.display()),
    }
}

/// Load the adapter's other tensors (modules to save, trained biases: `stored_key(prefix +
/// checkpoint key)`) into `model`, then require that every tensor of the adapter found its place
/// (`used` holds the keys the method itself consumed).
fn load_saved<M: Adaptable>(
    model: M,
    files: &crate::io::peft::AdapterFiles,
    prefix: &str,
    stored_key: &dyn Fn(String) -> String,
    mut used: std::collections::BTreeSet<String>,
) -> Result<M> {
    let keys: HashMap<String, String> =
        list_params_lazy(&model).into_iter().map(|p| (p.path.clone(), model.checkpoint_key(&p.path))).collect();
    let model = crate::models::import_by_key(
        model,
        &files.tensors,
        |i| stored_key(format!("{prefix}{}", keys[&i.path])),
        &mut used,
    )
    .with_context(|| format!("{}", files.dir.display()))?;
    let unused: Vec<&String> = files.tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        bail!("{}: tensors that match no layer of the model: {:?}", files.dir.display(), unused);
    }
    Ok(model)
}
