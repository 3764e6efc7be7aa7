//! The feature-extraction path: the frozen backbone (in inference mode) turns every split into
//! pooled features once — cached on disk by `methods::feature_extraction`, keyed by everything
//! they depend on — and a new head trains on them alone, so the backbone never runs again. With
//! data augmentation the features change every epoch, so the task's frozen model runs on each
//! augmented batch instead (still without autodiff).

use super::{Devices, Task};
use crate::data::Targets;
use crate::io::params::list_params;
use crate::methods::feature_extraction::{FeatureExamples, load_or_compute_with, to_tensor};
use crate::methods::is_buffer;
use crate::nn::classification_head::ClassificationHead;
use crate::training::checkpoint::{RunDir, TrainState};
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, MethodHooks, Split, TrainerConfig, evaluate, train};
use anyhow::Result;
use burn::module::Module;
use std::path::Path;

/// How long the features took, and whether they came from the cache.
#[derive(Debug, Clone, Copy)]
pub struct FeatureTime {
    pub seconds: f64,
    pub cache_hit: bool,
}

/// The model with its trained head, and what training it reported.
pub struct Trained<M> {
    pub model: M,
    pub state: TrainState,
    pub test: Option<EvalMetrics>,
    pub features: Option<FeatureTime>,
}

/// The head is all there is to train: every parameter of it, at the base learning rate.
struct HeadOnly;

impl MethodHooks<ClassificationHead> for HeadOnly {
    fn set_trainable(&self, head: ClassificationHead, _: usize, _: usize) -> (ClassificationHead, Vec<String>) {
        (head, Vec::new())
    }
}

/// Train a new head (dropout `head_dropout`) on the frozen backbone's features and put it in
/// the model.
pub fn train_head<T: Task>(
    task: &mut T,
    head_dropout: f64,
    cache_dir: &Path,
    cfg: &TrainerConfig,
    run: &RunDir,
    resume: bool,
    devices: &Devices,
) -> Result<Trained<T::Model>> {
    let mut model = task.frozen_model(&devices.base)?;
    let dim = T::head_mut(&mut model).classifier.d_in();
    let fresh = ClassificationHead::new(dim, task.num_outputs(), head_dropout, task.head_init_std(), &devices.train);
    let score = |head: &ClassificationHead, examples: &dyn Examples<ClassificationHead>| {
        (examples.len(Split::Test) > 0)
            .then(|| evaluate(head, examples, Split::Test, cfg.eval_batch_size, task.num_outputs()))
    };
    let (head, state, test, features) = match task.augmented_features(&model) {
        Some(examples) => {
            let outcome = train(fresh, examples.as_ref(), cfg, &HeadOnly, run, resume, &devices.train)?;
            let head = outcome.best_model.valid();
            let test = score(&head, examples.as_ref());
            (head, outcome.state, test, None)
        }
        None => {
            let names = task.feature_splits();
            let key = task.feature_cache_key()?;
            let cached = load_or_compute_with(&names, &key, cache_dir, cfg.show_progress, |i, progress| {
                task.compute_features(&model, i, progress)
            })?;
            let mut computed = cached.splits.iter();
            let targets = [0, 1, 2].map(|slot| task.split_targets(slot));
            let examples = FeatureExamples {
                features: targets
                    .each_ref()
                    .map(|l| l.as_ref().map(|_| to_tensor(computed.next().expect("one per split"), &devices.base))),
                targets: targets.map(|t| t.unwrap_or(Targets::Classes(Vec::new()))),
            };
            let outcome = train(fresh, &examples, cfg, &HeadOnly, run, resume, &devices.train)?;
            let head = outcome.best_model.valid();
            // The test split is scored on its cached features too: the backbone never runs again.
            let test = score(&head, &examples);
            let time = FeatureTime { seconds: cached.seconds, cache_hit: cached.cache_hit };
            (head, outcome.state, test, Some(time))
        }
    };
    *T::head_mut(&mut model) = head;
    Ok(Trained { model, state, test, features })
}

/// (learnable parameters of the model, parameters of its head).
pub fn counts<M: Module + Clone>(model: &M, head_mut: fn(&mut M) -> &mut ClassificationHead) -> (usize, usize) {
    let numel = |params: Vec<crate::io::params::ParamInfo>| -> usize {
        params.iter().filter(|p| !is_buffer(p)).map(|p| p.numel()).sum()
    };
    let mut copy = model.clone();
    (numel(list_params(model)), numel(list_params(head_mut(&mut copy))))
}
