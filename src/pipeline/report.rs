//! What a run reports (`results.json`, and the summary `finetune train` prints): the fields every
//! task fills the same way, plus the task's own ([`ReportExtra`]).

use crate::training::checkpoint::BestSoFar;
use crate::training::metrics::EvalMetrics;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A task's own report fields, flattened into `results.json`, and their lines in the summary.
pub trait ReportExtra: Serialize + DeserializeOwned + Default {
    fn summary(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether accuracy and macro-F1 over classes describe the task (a language model's
    /// next-token "classes" are its vocabulary: its summary reports loss and perplexity instead).
    fn classifies(&self) -> bool {
        true
    }
}

/// No extra fields (classification tasks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoExtra {}

impl ReportExtra for NoExtra {}

/// What a training run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "E: ReportExtra")]
pub struct TrainReport<E = NoExtra> {
    pub method: String,
    pub model: String,
    /// Label names in id order (empty for tasks without labels).
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub skipped_rows: usize,
    /// Learnable parameters (BatchNorm running statistics are buffers and not counted).
    pub total_params: usize,
    /// Parameters the method trained, at its widest point (gradual unfreezing).
    pub trainable_params: usize,
    pub optimizer_steps: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub best: Option<BestSoFar>,
    pub test: Option<EvalMetrics>,
    /// Seconds of optimizer steps (forward, backward, update), excluding evaluation.
    pub train_seconds: f64,
    /// Seconds of validation passes (every epoch's, and a pause's).
    #[serde(default)]
    pub validation_seconds: f64,
    /// Seconds spent computing (or loading) cached features; feature extraction only.
    pub feature_seconds: Option<f64>,
    pub feature_cache_hit: Option<bool>,
    pub run_dir: PathBuf,
    /// The saved result: the adapter directory of an adapter method, else the model directory.
    pub model_dir: PathBuf,
    #[serde(flatten)]
    pub extra: E,
}

impl<E: ReportExtra> TrainReport<E> {
    /// The summary `finetune train` prints.
    pub fn summary(&self) -> Vec<String> {
        let mut out = vec![
            format!("method:        {}", self.method),
            format!("model:         {}", self.model),
            format!("trainable:     {} of {} parameters", self.trainable_params, self.total_params),
            format!(
                "steps:         {} ({} epochs{})",
                self.optimizer_steps,
                self.epochs_run,
                if self.stopped_early { ", stopped early" } else { "" }
            ),
            format!("train time:    {:.1} s", self.train_seconds),
        ];
        if let Some(s) = self.feature_seconds {
            let how = if self.feature_cache_hit == Some(true) { "cache hit" } else { "computed" };
            out.push(format!("features:      {s:.1} s ({how})"));
        }
        match &self.best {
            Some(b) if self.extra.classifies() => {
                out.push(format!("best epoch:    {} (validation {})", b.epoch + 1, b.metrics.scores()))
            }
            Some(b) => out.push(format!("best epoch:    {} (validation loss {:.4})", b.epoch + 1, b.metrics.loss)),
            None => {}
        }
        if let Some(t) = self.test.as_ref().filter(|_| self.extra.classifies()) {
            out.push(format!("test:          {} (loss {:.4}, {} examples)", t.scores(), t.loss, t.examples));
        }
        out.extend(self.extra.summary());
        out.push(format!("saved:         {}", self.model_dir.display()));
        out.push(format!("run dir:       {} (metrics.jsonl, curves.svg, results.json)", self.run_dir.display()));
        out
    }
}
