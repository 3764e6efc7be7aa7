//! `[training]` in a recipe: epochs, batches, the optimizer and its schedule, checkpoints, the
//! validation metric and early stopping. The trainer runs on [`TrainerConfig`], built from this
//! section plus what the run knows (examples, labels, the seed).

use super::optimizer::AdamWConfig;
use super::schedule::LrSchedule;
use super::trainer::TrainerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    pub learning_rate: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Warmup as a fraction of all optimizer steps (ignored when `warmup_steps` is set).
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value; `0` disables clipping.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_accum")]
    pub grad_accum_steps: usize,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_epsilon: f64,
    /// Save a resumable checkpoint every this many optimizer steps (and at every epoch end).
    pub checkpoint_every_steps: Option<usize>,
    /// Stop after this many optimizer steps (for smoke runs).
    pub max_steps: Option<usize>,
    /// The validation metric that selects the best checkpoint and drives early stopping.
    #[serde(default = "default_metric")]
    pub metric: Metric,
    pub early_stopping: Option<EarlyStopping>,
    /// Put training examples of similar length in the same batch (transformers'
    /// `group_by_length`): less padding, so less work per epoch; batches stay shuffled.
    #[serde(default)]
    pub group_by_length: bool,
    /// Keep only each decoder layer's input during the forward pass and compute the layer again
    /// in backward (`ops::checkpoint`): a fraction of the activation memory for one more forward
    /// pass. Unset: on for causal-LM training on the CPU, where activations are most of a step's
    /// memory; other tasks have no checkpointed blocks.
    pub gradient_checkpointing: Option<bool>,
    /// Stop after this many epochs (a fraction: `0.3` is 30% of the first epoch's steps),
    /// validate, save a resumable checkpoint and end with [`Paused`](super::trainer::Paused);
    /// `--resume` then continues exactly as if there had been no pause. Set by
    /// `finetune train --pause-at` (a sweep's early discarding), never part of a recipe: a paused
    /// run resumes under the same recipe.
    #[serde(skip)]
    pub pause_at_epoch: Option<f64>,
}

fn default_eval_batch() -> usize {
    64
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_warmup_ratio() -> f64 {
    0.06
}
fn default_schedule() -> Schedule {
    Schedule::Linear
}
fn default_clip() -> f64 {
    1.0
}
fn default_accum() -> usize {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_metric() -> Metric {
    Metric::Accuracy
}

/// Validation metrics that can select checkpoints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    MacroF1,
    Loss,
    /// Regression: Pearson's correlation of predictions and targets.
    Pearson,
    /// Regression: Spearman's rank correlation.
    Spearman,
    /// Token classification: entity-level F1 (seqeval's micro average).
    F1,
    /// Multi-label classification: F1 over every (example, label) decision.
    MicroF1,
}

impl Metric {
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::Loss)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::MacroF1 => "macro_f1",
            Self::Loss => "loss",
            Self::Pearson => "pearson",
            Self::Spearman => "spearman",
            Self::F1 => "f1",
            Self::MicroF1 => "micro_f1",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Stop after this many evaluations without improvement.
    pub patience: usize,
    /// The improvement that counts (in the metric's units).
    #[serde(default)]
    pub min_delta: f64,
}

impl TrainingConfig {
    /// Check every value against its allowed range (errors name the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        let t = self;
        for (key, v) in [
            ("epochs", t.epochs),
            ("batch_size", t.batch_size),
            ("eval_batch_size", t.eval_batch_size),
            ("grad_accum_steps", t.grad_accum_steps),
        ] {
            ensure!(v >= 1, "training.{key} = {v}: must be at least 1");
        }
        ensure!(
            t.learning_rate > 0.0 && t.learning_rate.is_finite(),
            "training.learning_rate = {}: must be a positive number",
            t.learning_rate
        );
        ensure!(
            (0.0..1.0).contains(&t.adam_beta1) && (0.0..1.0).contains(&t.adam_beta2),
            "training.adam_beta1 = {}, adam_beta2 = {}: each must be in [0, 1)",
            t.adam_beta1,
            t.adam_beta2
        );
        ensure!(
            t.adam_epsilon > 0.0 && t.adam_epsilon.is_finite(),
            "training.adam_epsilon = {}: must be positive",
            t.adam_epsilon
        );
        ensure!(
            t.weight_decay >= 0.0 && t.weight_decay.is_finite(),
            "training.weight_decay = {}: must be at least 0",
            t.weight_decay
        );
        ensure!((0.0..=1.0).contains(&t.warmup_ratio), "training.warmup_ratio = {}: must be in [0, 1]", t.warmup_ratio);
        ensure!(
            t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite(),
            "training.max_grad_norm = {}: must be at least 0 (0 turns clipping off)",
            t.max_grad_norm
        );
        if let Some(k) = t.checkpoint_every_steps {
            ensure!(
                k >= 1,
                "training.checkpoint_every_steps = {k}: must be at least 1 (leave it out for checkpoints at epoch ends only)"
            );
        }
        if let Some(m) = t.max_steps {
            ensure!(m >= 1, "training.max_steps = {m}: must be at least 1");
        }
        if let Some(p) = t.pause_at_epoch {
            ensure!(
                p > 0.0 && p.is_finite(),
                "--pause-at {p}: must be a positive number of epochs (0.3: 30% of the first)"
            );
        }
        if let Some(e) = &t.early_stopping {
            ensure!(e.patience >= 1, "training.early_stopping.patience = {}: must be at least 1", e.patience);
            ensure!(
                e.min_delta >= 0.0 && e.min_delta.is_finite(),
                "training.early_stopping.min_delta = {}: must be at least 0",
                e.min_delta
            );
        }
        Ok(())
    }
}

impl TrainerConfig {
    /// The trainer's settings for `n_train` examples (`num_labels` classes, or the vocabulary of a
    /// language model) from the `[training]` section and the run's seed.
    pub fn new(t: &TrainingConfig, seed: u64, num_labels: usize, n_train: usize, show_progress: bool) -> Self {
        let per_epoch = TrainerConfig::steps_per_epoch(t.batch_size, t.grad_accum_steps, n_train);
        let total = t.max_steps.map_or(per_epoch * t.epochs, |m| m.min(per_epoch * t.epochs));
        let warmup = t.warmup_steps.unwrap_or_else(|| (t.warmup_ratio * total as f64).ceil() as usize);
        TrainerConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            eval_batch_size: t.eval_batch_size,
            grad_accum_steps: t.grad_accum_steps,
            max_grad_norm: t.max_grad_norm,
            schedule: LrSchedule { kind: t.schedule, peak: t.learning_rate, warmup_steps: warmup, total_steps: total },
            adamw: AdamWConfig {
                beta1: t.adam_beta1,
                beta2: t.adam_beta2,
                epsilon: t.adam_epsilon,
                weight_decay: t.weight_decay,
            },
            seed,
            checkpoint_every_steps: t.checkpoint_every_steps,
            max_steps: t.max_steps,
            pause_at_step: t.pause_at_epoch.map(|e| ((e * per_epoch as f64).ceil() as usize).max(1)),
            metric: t.metric,
            early_stopping: t.early_stopping.clone(),
            group_by_length: t.group_by_length,
            num_labels,
            show_progress,
        }
    }
}
