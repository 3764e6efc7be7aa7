//! The training loop shared by every method: batches, loss, accumulation, clipping, AdamW,
//! schedule, evaluation, best-checkpoint selection, early stopping, checkpoints and resume.
//!
//! It is generic over the model and over where logits come from ([`Examples`]), so training a
//! whole encoder on token batches and training a head on cached features use the same loop.

use super::config::{EarlyStopping, Metric};
use crate::data::batch::{chunk, epoch_order, length_grouped};
use crate::training::checkpoint::{BestSoFar, RunDir, TrainState};
use crate::training::loss::{Scored, TagScores};
use crate::training::metrics::{EvalMetrics, LogRecord, MetricsLog};
use crate::training::optimizer::{AdamW, AdamWConfig, GradStore};
use crate::training::schedule::LrSchedule;
use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    /// Its index among (train, validation, test).
    pub fn slot(self) -> usize {
        match self {
            Self::Train => 0,
            Self::Validation => 1,
            Self::Test => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        }
    }
}

/// Training examples and how a model is scored on them.
pub trait Examples<M> {
    /// Number of examples in `split` (0 when the split is absent).
    fn len(&self, split: Split) -> usize;
    /// The mean loss of a batch (over its [`weight`](Self::weight)), and its (predicted, actual)
    /// pairs for the metrics: a class per example for a classifier, per target token for a
    /// language model, a value per example for a regression.
    fn loss(&self, model: &M, split: Split, indices: &[usize]) -> (Tensor<1>, Scored);
    /// What a batch weighs in a mean: its examples, or its target tokens for a language model.
    fn weight(&self, _split: Split, indices: &[usize]) -> f64 {
        indices.len() as f64
    }
    /// A hint that `indices` of `split` come next: examples that build batches on the host
    /// (decoding, augmenting images) can prepare them while the current batch computes.
    fn prefetch(&self, _split: Split, _indices: &[usize]) {}
    /// Each example's length in tokens, for grouping batches by length (`None`: not sequences).
    fn lengths(&self, _split: Split) -> Option<Vec<usize>> {
        None
    }
    /// The order in which to evaluate a split (any order gives the same metrics).
    fn eval_order(&self, split: Split) -> Vec<usize> {
        (0..self.len(split)).collect()
    }
}

/// Examples held elsewhere (a task that keeps its batches) lend themselves by reference.
impl<M, E: Examples<M> + ?Sized> Examples<M> for &E {
    fn len(&self, split: Split) -> usize {
        (**self).len(split)
    }
    fn loss(&self, model: &M, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        (**self).loss(model, split, indices)
    }
    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        (**self).weight(split, indices)
    }
    fn prefetch(&self, split: Split, indices: &[usize]) {
        (**self).prefetch(split, indices)
    }
    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        (**self).lengths(split)
    }
    fn eval_order(&self, split: Split) -> Vec<usize> {
        (**self).eval_order(split)
    }
}

#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub grad_accum_steps: usize,
    pub max_grad_norm: f64,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub seed: u64,
    pub checkpoint_every_steps: Option<usize>,
    pub max_steps: Option<usize>,
    /// Pause after this optimizer step (see `TrainingConfig::pause_at_epoch`).
    pub pause_at_step: Option<usize>,
    pub metric: Metric,
    pub early_stopping: Option<EarlyStopping>,
    /// Batch training examples of similar length together (see `data::batch::length_grouped`).
    pub group_by_length: bool,
    pub num_labels: usize,
    pub show_progress: bool,
}

impl TrainerConfig {
    /// Optimizer steps per epoch for `n` training examples.
    pub fn steps_per_epoch(batch_size: usize, grad_accum: usize, n: usize) -> usize {
        n.div_ceil(batch_size).div_ceil(grad_accum)
    }
}

/// What the method controls during training (implemented in `methods`).
pub trait MethodHooks<M> {
    /// Make the right parameters trainable for (epoch, step); return the names of groups that
    /// became trainable at this call (for the log).
    fn set_trainable(&self, model: M, epoch: usize, step: usize) -> (M, Vec<String>);
    /// Learning-rate multiplier per parameter path.
    fn lr_scale(&self, _path: &str) -> f64 {
        1.0
    }
}

/// A run that stopped where `--pause-at` asked: validated, checkpointed, resumable. Not a
/// failure: `train` returns it as its error so that every caller between the trainer and the
/// command line passes it up unchanged, and `finetune train` reports it and exits with 0.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Paused {
    pub epoch: usize,
    pub step: usize,
    /// The validation metrics at the pause (`None` without a validation split).
    pub validation: Option<EvalMetrics>,
}

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "paused after step {} (epoch {}); --resume continues", self.step, self.epoch + 1)
    }
}

impl std::error::Error for Paused {}

pub struct TrainOutcome<M> {
    pub best_model: M,
    pub state: TrainState,
}

fn step_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let mut rng = crate::ops::rng::SplitMix64::new(seed ^ ((step as u64) << 16) ^ micro as u64);
    rng.next_u64()
}

/// Evaluate `model` (in validation mode: no dropout, no autodiff) on a split.
pub fn evaluate<M, E: Examples<M> + ?Sized>(
    model: &M,
    data: &E,
    split: Split,
    batch_size: usize,
    num_labels: usize,
) -> EvalMetrics {
    let order = data.eval_order(split);
    let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
    let (mut classes, mut values, mut sets, mut tags) = (Vec::new(), Vec::new(), Vec::new(), None::<TagScores>);
    for batch in chunk(&order, batch_size) {
        let weight = data.weight(split, &batch);
        let (loss, scored) = data.loss(model, split, &batch);
        let loss: f32 = loss.into_scalar();
        loss_sum += loss as f64 * weight;
        weight_sum += weight;
        match scored {
            Scored::Classes(pairs) => classes.extend(pairs),
            Scored::Values(pairs) => values.extend(pairs),
            Scored::Sets(pairs) => sets.extend(pairs),
            Scored::Tagged(t) => tags.get_or_insert_default().extend(t),
        }
    }
    let loss = loss_sum / weight_sum.max(1e-12);
    let mut metrics = match tags {
        Some(t) => EvalMetrics::of_tags(loss, &t, order.len()),
        None if !values.is_empty() => EvalMetrics::of_values(loss, &values),
        None if !sets.is_empty() => EvalMetrics::of_sets(loss, &sets, num_labels),
        None => EvalMetrics::of_classes(loss, &classes, num_labels),
    };
    metrics.examples = order.len();
    metrics
}

/// Train `model` on `data`. With `resume`, continue from the run directory's latest checkpoint.
pub fn train<M, E>(
    model: M,
    data: &E,
    cfg: &TrainerConfig,
    hooks: &dyn MethodHooks<M>,
    run: &RunDir,
    resume: bool,
    device: &Device,
) -> Result<TrainOutcome<M>>
where
    M: Module,
    E: Examples<M> + ?Sized,
{
    let n = data.len(Split::Train);
    if n == 0 {
        bail!("the training split is empty");
    }
    let steps_per_epoch = TrainerConfig::steps_per_epoch(cfg.batch_size, cfg.grad_accum_steps, n);
    let mut optim = AdamW::new(cfg.adamw);
    let (mut model, mut state) = match run.latest_checkpoint().filter(|_| resume) {
        Some(dir) => {
            tracing::info!("resuming from {}", dir.display());
            let state = RunDir::read_state(&dir)?;
            // Trainability must match the checkpoint before its parameters are loaded.
            let (m, _) = hooks.set_trainable(model, state.epoch, state.step);
            (run.load_checkpoint(&dir, m, &mut optim, &state, device)?, state)
        }
        None if resume => bail!("--resume: no checkpoint in {}", run.checkpoints().display()),
        None => {
            let (m, _) = hooks.set_trainable(model, 0, 0);
            (m, TrainState::default())
        }
    };
    let log = MetricsLog::open(&run.metrics(), resume.then_some(state.step))?;
    let mut best_model = if state.best.is_some() { run.load_best(model.clone())? } else { model.clone() };
    if state.finished {
        return Ok(TrainOutcome { best_model, state });
    }

    let total_steps = cfg.max_steps.map_or(steps_per_epoch * cfg.epochs, |m| m.min(steps_per_epoch * cfg.epochs));
    let progress = progress_bar(cfg.show_progress, total_steps as u64, state.step as u64);
    let (mut window_loss, mut window_examples, mut window_start) = (0.0f64, 0usize, Instant::now());

    let lengths = if cfg.group_by_length { data.lengths(Split::Train) } else { None };
    if cfg.group_by_length && lengths.is_none() {
        tracing::warn!("group_by_length: these examples have no lengths; batches are not grouped");
    }
    'epochs: for epoch in state.epoch..cfg.epochs {
        let order = epoch_order(n, cfg.seed, epoch);
        let batches = match &lengths {
            Some(lengths) => length_grouped(&order, lengths, cfg.batch_size),
            None => chunk(&order, cfg.batch_size),
        };
        let steps: Vec<&[Vec<usize>]> = batches.chunks(cfg.grad_accum_steps).collect();
        for (group_index, group) in steps.iter().enumerate().skip(state.step_in_epoch) {
            let (m, newly) = hooks.set_trainable(model, epoch, state.step);
            model = m;
            for g in newly {
                tracing::info!("unfreezing {g} at epoch {epoch}, step {}", state.step);
                log.append(&LogRecord::Unfreeze { step: state.step, epoch, group: g })?;
            }
            let step_start = Instant::now();
            let group_examples: usize = group.iter().map(Vec::len).sum();
            let group_weight: f64 = group.iter().map(|b| data.weight(Split::Train, b)).sum();
            let mut grads = GradStore::default();
            let mut group_loss = 0.0;
            for (micro, batch) in group.iter().enumerate() {
                if let Some(next) = batches.get(group_index * cfg.grad_accum_steps + micro + 1) {
                    data.prefetch(Split::Train, next);
                }
                let seed = step_seed(cfg.seed, state.step, micro);
                device.seed(seed);
                crate::ops::context::seed_dropout(seed);
                let (loss, _) = data.loss(&model, Split::Train, batch);
                let loss = loss.mul_scalar(data.weight(Split::Train, batch) / group_weight);
                let value: f32 = loss.clone().into_scalar();
                if !value.is_finite() {
                    bail!(
                        "loss is {value} at epoch {epoch}, step {} (learning rate {:.3e}); {}",
                        state.step,
                        cfg.schedule.at(state.step),
                        run.describe_latest()
                    );
                }
                group_loss += value as f64;
                grads.accumulate(&model, loss.backward());
                crate::io::failpoint::hit("train.micro_batch");
            }
            if grads.is_empty() {
                bail!("no parameter received a gradient: nothing is trainable");
            }
            let grad_norm = grads.clip_global_norm(cfg.max_grad_norm);
            if !grad_norm.is_finite() {
                // The step would write NaN into every parameter it touches.
                bail!(
                    "the gradient norm is {grad_norm} at epoch {epoch}, step {} (the loss was finite) and no update \
                     was made; {}",
                    state.step,
                    run.describe_latest()
                );
            }
            let lr = cfg.schedule.at(state.step);
            model = optim.step(model, &grads, &|p| lr * hooks.lr_scale(p));
            state.step += 1;
            state.step_in_epoch += 1;
            state.train_seconds += step_start.elapsed().as_secs_f64();
            window_loss += group_loss * group_examples as f64;
            window_examples += group_examples;
            progress.set_position(state.step as u64);
            progress.set_message(format!("epoch {} loss {:.4}", epoch + 1, group_loss));
            let at_max = cfg.max_steps.is_some_and(|m| state.step >= m);
            let end_of_epoch_step = state.step_in_epoch == steps.len();
            let pause_now = cfg.pause_at_step == Some(state.step) && !at_max && !end_of_epoch_step;
            let checkpoint_now = (cfg.checkpoint_every_steps.is_some_and(|k| state.step % k == 0) || pause_now)
                && !at_max
                && !end_of_epoch_step;
            // Windows also close at checkpoints, so a resumed run logs exactly the same records.
            if state.step % 10 == 0 || end_of_epoch_step || checkpoint_now || at_max {
                let secs = window_start.elapsed().as_secs_f64();
                log.append(&LogRecord::Train {
                    step: state.step,
                    epoch,
                    loss: window_loss / window_examples as f64,
                    lr,
                    grad_norm,
                    examples_per_s: window_examples as f64 / secs.max(1e-9),
                })?;
                (window_loss, window_examples, window_start) = (0.0, 0, Instant::now());
            }
            if pause_now {
                // Validate first: the checkpoint then holds everything a resumed run needs.
                let started = Instant::now();
                let validation = (data.len(Split::Validation) > 0)
                    .then(|| evaluate(&model.valid(), data, Split::Validation, cfg.eval_batch_size, cfg.num_labels));
                state.validation_seconds += started.elapsed().as_secs_f64();
                if let Some(metrics) = &validation {
                    tracing::info!("paused at step {}: validation {}", state.step, metrics.scores());
                    log.append(&LogRecord::Eval {
                        step: state.step,
                        epoch,
                        split: "validation".into(),
                        metrics: *metrics,
                    })?;
                }
                run.save_checkpoint(&model, &optim, &state)?;
                progress.finish_and_clear();
                return Err(Paused { epoch, step: state.step, validation }.into());
            }
            if checkpoint_now {
                run.save_checkpoint(&model, &optim, &state)?;
            }
            if at_max {
                end_of_epoch(&model, &mut best_model, data, cfg, &mut state, run, &log, epoch)?;
                break 'epochs;
            }
        }
        let (stop, validation) = end_of_epoch(&model, &mut best_model, data, cfg, &mut state, run, &log, epoch)?;
        state.epoch = epoch + 1;
        state.step_in_epoch = 0;
        if stop {
            // Patience running out on the last epoch skips nothing, so it is not an early stop.
            state.stopped_early = epoch + 1 < cfg.epochs;
            break;
        }
        if epoch + 1 < cfg.epochs {
            run.save_checkpoint(&model, &optim, &state)?;
            if cfg.pause_at_step == Some(state.step) {
                progress.finish_and_clear();
                return Err(Paused { epoch, step: state.step, validation }.into());
            }
        }
    }
    progress.finish_and_clear();
    state.finished = true;
    run.save_checkpoint(&model, &optim, &state)?;
    Ok(TrainOutcome { best_model, state })
}

/// Validate, keep the best model, decide on early stopping. Returns whether to stop, and the
/// validation metrics (`None` without a validation split).
#[allow(clippy::too_many_arguments)]
fn end_of_epoch<M, E>(
    model: &M,
    best_model: &mut M,
    data: &E,
    cfg: &TrainerConfig,
    state: &mut TrainState,
    run: &RunDir,
    log: &MetricsLog,
    epoch: usize,
) -> Result<(bool, Option<EvalMetrics>)>
where
    M: Module,
    E: Examples<M> + ?Sized,
{
    if data.len(Split::Validation) == 0 {
        // Without validation data the last model is the one we keep.
        *best_model = model.clone();
        run.save_best(model)?;
        return Ok((false, None));
    }
    let started = Instant::now();
    let metrics = evaluate(&model.valid(), data, Split::Validation, cfg.eval_batch_size, cfg.num_labels);
    state.validation_seconds += started.elapsed().as_secs_f64();
    tracing::info!("epoch {}: validation loss {:.4} {}", epoch + 1, metrics.loss, metrics.scores());
    log.append(&LogRecord::Eval { step: state.step, epoch, split: "validation".into(), metrics })?;
    let value = metrics.get(cfg.metric);
    let min_delta = cfg.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
    let improved = match &state.best {
        None => true,
        Some(b) if cfg.metric.higher_is_better() => value > b.value + min_delta,
        Some(b) => value < b.value - min_delta,
    };
    if improved {
        state.best = Some(BestSoFar { epoch, step: state.step, value, metrics });
        state.evals_without_improvement = 0;
        *best_model = model.clone();
        run.save_best(model)?;
    } else {
        state.evals_without_improvement += 1;
    }
    let stop = cfg.early_stopping.as_ref().is_some_and(|e| state.evals_without_improvement >= e.patience);
    Ok((stop, Some(metrics)))
}

fn progress_bar(show: bool, total: u64, position: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {per_sec} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(position);
    bar.reset_eta();
    bar
}
