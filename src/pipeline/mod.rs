//! The one path every training run takes, whatever the task:
//!
//! 1. check the recipe (the task × method table and every section, `recipe::validate`);
//! 2. enter the run's compute context (precision, dropout generator) and pick the devices;
//! 3. let the task resolve its model and read its data ([`Task`], built by `prepare`): the
//!    errors a user is most likely to meet come before anything is written;
//! 4. open the run directory (a finished run is moved aside, an unfinished one needs `--resume`),
//!    seed the devices, configure the trainer;
//! 5. feature extraction: train a head on cached frozen features ([`features`]); any other method:
//!    load the model, let the method quantize it (QLoRA), let the task score the base, attach
//!    the method's layers, train with the method's hooks;
//! 6. score the test split, save the adapter and/or the model, count parameters, let the task
//!    finish (word error rates, sample answers), write `results.json` and the curves.
//!
//! A task is a thin adapter over this ([`Task`]): how to load its model, how batches are built
//! and scored, how its model is saved, and what its report adds.

pub mod features;
pub mod report;

pub use report::{NoExtra, ReportExtra, TrainReport};

use crate::io::safetensors::HostTensor;
use crate::methods::{Method, Sections, Tuner};
use crate::models::Adaptable;
use crate::nn::classification_head::ClassificationHead;
use crate::ops::context::{self, Precision};
use crate::ops::device;
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::checkpoint::{RunDir, TrainState};
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split, TrainerConfig, evaluate, train};
use anyhow::{Result, bail};
use burn::prelude::*;
use std::path::Path;

/// The devices of a run: plain (inference, cached features, batches) and with autodiff.
#[derive(Debug, Clone)]
pub struct Devices {
    pub base: Device,
    pub train: Device,
}

/// What a task adds to the shared pipeline. One implementation per task file in `tasks/`.
pub trait Task {
    /// The model whole-model methods train and the run saves.
    type Model: Adaptable + Clone + 'static;
    /// What the task's report adds to the shared fields.
    type Extra: ReportExtra;

    fn kind(&self) -> TaskKind;
    /// Classes of a classifier, or the vocabulary of a language model (for the metrics).
    fn num_outputs(&self) -> usize;
    /// Label names (empty for tasks without labels).
    fn labels(&self) -> Vec<String> {
        Vec::new()
    }
    fn train_len(&self) -> usize;
    /// Data rows skipped as bad (with `data.skip_bad_rows`).
    fn skipped_rows(&self) -> usize {
        0
    }
    /// The head's checkpoint modules (the classifier, and a new dense layer before it), which
    /// adapter methods train in full and save.
    fn head_modules(&self) -> Vec<String> {
        Vec::new()
    }
    /// peft's `task_type` for this task's adapters (`SEQ_CLS`, `CAUSAL_LM`), if peft has one.
    fn peft_task_type(&self) -> Option<&'static str> {
        None
    }
    /// Token ids of a text without special tokens (prompt tuning's init text).
    fn tokenize(&self, _text: &str) -> Result<Vec<u32>> {
        bail!("this task has no tokenizer")
    }

    /// The model to fine-tune, on `device` (autodiff).
    fn load_model(&mut self, device: &Device) -> Result<Self::Model>;
    /// Called with the (possibly quantized) base before the method attaches anything: a task
    /// scores the base here when its report compares before and after.
    fn before_training(&mut self, _model: &Self::Model) -> Result<()> {
        Ok(())
    }
    /// Batches and their loss for `model` (after the method attached its layers).
    fn examples<'a>(&'a self, model: &Self::Model) -> Box<dyn Examples<Self::Model> + 'a>;
    /// Write a fine-tuned (or merged) model in the Hugging Face layout under `dir`.
    fn save_model(&self, model: &Self::Model, method: Method, dir: &Path) -> Result<()>;
    /// Whether an adapter run also writes the merged model (so `predict`/`eval` take it).
    fn saves_merged_model(&self) -> bool {
        false
    }
    /// finetune's notes beside an adapter (`finetune.json`, ignored by peft), if any.
    fn adapter_notes(&self, _method: Method) -> Option<serde_json::Value> {
        None
    }
    /// Files written beside the adapter by name: a `README.md` where loading it with peft alone
    /// would not compute what finetune computes (and how to reproduce it in Python), the chat
    /// template a causal LM was trained with when the recipe supplied it.
    fn adapter_files(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The task's report fields, from the trained model (inference mode) and its test metrics.
    fn finish(
        &mut self,
        _model: &Self::Model,
        _test: Option<&EvalMetrics>,
        _run: &RunDir,
        _state: &TrainState,
    ) -> Result<Self::Extra> {
        Ok(Self::Extra::default())
    }

    // Feature extraction (tasks whose methods include it).

    /// The frozen backbone with its head on `device` (a plain device: no autodiff, so nothing
    /// trains and nothing is recorded); by default the model `load_model` loads.
    fn frozen_model(&mut self, device: &Device) -> Result<Self::Model> {
        self.load_model(device)
    }
    /// The head a feature-extraction run trains, and where it goes in the model.
    fn head_mut(_model: &mut Self::Model) -> &mut ClassificationHead {
        unreachable!("a task with feature extraction implements head_mut")
    }
    /// The standard deviation a fresh head starts from.
    fn head_init_std(&self) -> f64 {
        0.02
    }
    /// (name, rows) of every present split, in split order.
    fn feature_splits(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
    /// The targets of split `slot` (0 train, 1 validation, 2 test).
    fn split_targets(&self, _slot: usize) -> Option<crate::data::Targets> {
        None
    }
    /// What the cached features depend on (weights, preprocessing, every example).
    fn feature_cache_key(&self) -> Result<String> {
        bail!("feature extraction is not available for this task")
    }
    /// The pooled features `[rows, dim]` of the `i`-th present split, advancing `progress`.
    fn compute_features(
        &self,
        _model: &Self::Model,
        _i: usize,
        _progress: &indicatif::ProgressBar,
    ) -> Result<HostTensor> {
        bail!("feature extraction is not available for this task")
    }
    /// With augmentation the features differ every epoch: batches that run the frozen model each
    /// time (`None`: the features are cached).
    fn augmented_features<'a>(&'a self, _model: &'a Self::Model) -> Option<Box<dyn Examples<ClassificationHead> + 'a>> {
        None
    }
}

/// Train per `recipe` (with `resume`, continue the run in its `output_dir`); `prepare` builds the
/// task once the run's devices and compute context exist.
pub fn run<T: Task>(
    recipe: &Recipe,
    resume: bool,
    show_progress: bool,
    prepare: impl FnOnce(&Devices) -> Result<T>,
) -> Result<TrainReport<T::Extra>> {
    recipe.validate()?;
    let base = device::select(&recipe.device)?;
    let _context = context::enter(Precision::parse(&recipe.precision)?);
    let devices = Devices { train: device::training(&base), base };
    let mut task = prepare(&devices)?;
    debug_assert_eq!(task.kind(), recipe.task);

    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;
    // Seed before building anything: a new head's initialisation is part of the run.
    devices.base.seed(recipe.seed);
    devices.train.seed(recipe.seed);
    let cfg = TrainerConfig::new(&recipe.training, recipe.seed, task.num_outputs(), task.train_len(), show_progress);
    let eval_batch = recipe.training.eval_batch_size;

    let mut tuner = None;
    let (model, state, test, features) = match recipe.method {
        Method::FeatureExtraction => {
            let cache_dir = recipe
                .feature_extraction
                .cache_dir
                .clone()
                .unwrap_or_else(crate::methods::feature_extraction::default_cache_dir);
            let trained =
                features::train_head(&mut task, recipe.head.dropout, &cache_dir, &cfg, &run, resume, &devices)?;
            (trained.model, trained.state, trained.test, trained.features)
        }
        method => {
            let sections = Sections {
                transfer: &recipe.transfer,
                lora: recipe.lora.as_ref(),
                prompt_tuning: recipe.prompt_tuning.as_ref(),
                quantization: recipe.quantization.as_ref(),
                batch_norm: recipe.image.batch_norm,
            };
            let mut t = Tuner::new(method, sections, &task.head_modules())?;
            let mut model = task.load_model(&devices.train)?;
            t.quantize(&mut model)?;
            task.before_training(&model)?;
            let model = t.attach(model, &|text| task.tokenize(text), &devices.train)?;
            let outcome = {
                let examples = task.examples(&model);
                let hooks = t.hooks(&model);
                train(model, examples.as_ref(), &cfg, hooks.as_ref(), &run, resume, &devices.train)?
            };
            let model = outcome.best_model.valid();
            let examples = task.examples(&model);
            let test = (examples.len(Split::Test) > 0)
                .then(|| evaluate(&model, examples.as_ref(), Split::Test, eval_batch, task.num_outputs()));
            drop(examples);
            tuner = Some(t);
            (model, outcome.state, test, None)
        }
    };
    if let Some(t) = &test {
        tracing::info!("test: loss {:.4} {}", t.loss, t.scores());
    }

    let model_dir = match &tuner {
        Some(t) if t.is_adapter() => {
            t.save_adapter(&model, &recipe.model, task.peft_task_type(), &run.adapter())?;
            if let Some(notes) = task.adapter_notes(recipe.method) {
                let path = run.adapter().join(crate::io::peft::NOTES_FILE);
                crate::io::atomic::write_atomic(&path, serde_json::to_string_pretty(&notes)?.as_bytes())?;
            }
            for (name, text) in task.adapter_files() {
                crate::io::atomic::write_atomic(&run.adapter().join(name), text.as_bytes())?;
            }
            if task.saves_merged_model() {
                let mut merged = model.clone();
                crate::methods::lora::merge(&mut merged);
                task.save_model(&merged, recipe.method, &run.model())?;
            }
            run.adapter()
        }
        _ => {
            task.save_model(&model, recipe.method, &run.model())?;
            run.model()
        }
    };
    let (total_params, trainable_params) = match &tuner {
        Some(t) => t.trainable_counts(&model, &state),
        None => features::counts(&model, T::head_mut),
    };
    crate::io::failpoint::hit("pipeline.saved");
    let extra = task.finish(&model, test.as_ref(), &run, &state)?;
    let report = TrainReport {
        method: recipe.method.name().into(),
        model: recipe.model.clone(),
        labels: task.labels(),
        train_examples: task.train_len(),
        skipped_rows: task.skipped_rows(),
        total_params,
        trainable_params,
        optimizer_steps: state.step,
        epochs_run: state.epoch.max(1),
        stopped_early: state.stopped_early,
        best: state.best.clone(),
        test,
        train_seconds: state.train_seconds,
        validation_seconds: state.validation_seconds,
        feature_seconds: features.map(|f| f.seconds),
        feature_cache_hit: features.map(|f| f.cache_hit),
        run_dir: run.root.clone(),
        model_dir,
        extra,
    };
    run.finish(&report)?;
    Ok(report)
}
