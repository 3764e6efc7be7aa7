//! Resumable checkpoints, written so that a kill at any moment leaves the last complete one
//! usable: each checkpoint is built in a temp directory, renamed into place, and only then
//! named by the `LATEST` pointer (itself replaced atomically).

use crate::io::atomic::write_atomic;
use crate::io::params::{export_params, import_params};
use crate::io::safetensors::{SafetensorsFile, write_safetensors};
use crate::training::metrics::EvalMetrics;
use crate::training::optimizer::AdamW;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the trainer is, and what it has seen: everything besides tensors needed to resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Optimizer steps already taken in this epoch.
    pub step_in_epoch: usize,
    /// Optimizer steps taken in total.
    pub step: usize,
    pub best: Option<BestSoFar>,
    /// Evaluations since the best one (early stopping's counter).
    pub evals_without_improvement: usize,
    pub finished: bool,
    pub stopped_early: bool,
    /// Seconds spent training before this checkpoint (excludes evaluation).
    pub train_seconds: f64,
    /// Per-parameter AdamW step counts.
    pub optimizer_steps: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BestSoFar {
    pub epoch: usize,
    pub step: usize,
    pub value: f64,
    pub metrics: EvalMetrics,
}

/// A run directory and its files.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// End a run: draw its curves from `metrics.jsonl` (a failure only warns) and write the
    /// report as `results.json`.
    pub fn finish(&self, report: &impl Serialize) -> Result<()> {
        let records = crate::training::metrics::read_log(&self.metrics())?;
        if let Err(e) = crate::training::plot::plot_curves(&records, &self.plot()) {
            tracing::warn!("could not draw curves: {e:#}");
        }
        write_atomic(&self.results(), serde_json::to_string_pretty(report)?.as_bytes())
    }

    pub fn new(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating run directory {}", root.display()))?;
        Ok(Self { root: root.to_path_buf() })
    }
    /// Open the run directory for a run of `recipe` (its TOML): a new run moves a finished one
    /// aside and refuses to overwrite an unfinished one (that needs `resume`).
    pub fn start(root: &Path, resume: bool, recipe: &str) -> Result<Self> {
        let run = Self::new(root)?;
        if !resume && let Some(dir) = run.latest_checkpoint() {
            if !Self::read_state(&dir)?.finished {
                anyhow::bail!(
                    "{} holds an unfinished run; pass --resume to continue it or choose another output_dir",
                    run.root.display()
                );
            }
            let kept = run.archive()?;
            tracing::info!("moved the previous (finished) run to {}", kept.display());
        }
        crate::io::atomic::write_atomic(&run.root.join("recipe.toml"), recipe.as_bytes())?;
        Ok(run)
    }

    /// Move this run directory aside (to `<dir>.1`, `<dir>.2`, ...) and start an empty one.
    pub fn archive(&self) -> Result<PathBuf> {
        let name = self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = (1..)
            .map(|i| self.root.with_file_name(format!("{name}.{i}")))
            .find(|p| !p.exists())
            .expect("some suffix is free");
        std::fs::rename(&self.root, &target).with_context(|| format!("moving {} aside", self.root.display()))?;
        std::fs::create_dir_all(&self.root)?;
        Ok(target)
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }
    pub fn results(&self) -> PathBuf {
        self.root.join("results.json")
    }
    pub fn plot(&self) -> PathBuf {
        self.root.join("curves.svg")
    }

    /// The latest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.checkpoints().join("LATEST")).ok()?;
        let dir = self.checkpoints().join(name.trim());
        dir.join("state.json").is_file().then_some(dir)
    }

    /// Write a checkpoint of the trainable parameters, optimizer and state; prune older ones.
    pub fn save_checkpoint<M: Module>(&self, model: &M, optim: &AdamW, state: &TrainState) -> Result<PathBuf> {
        let name = format!("step-{:08}", state.step);
        let root = self.checkpoints();
        let final_dir = root.join(&name);
        let tmp = root.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        save_trainable(model, &tmp.join("params.safetensors"))?;
        let (tensors, steps) = optim.export_state();
        write_safetensors(&tmp.join("optimizer.safetensors"), &tensors, None)?;
        let state = TrainState { optimizer_steps: steps, ..state.clone() };
        write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        write_atomic(&root.join("LATEST"), name.as_bytes())?;
        for entry in std::fs::read_dir(&root)? {
            let p = entry?.path();
            if p.is_dir() && p != final_dir {
                std::fs::remove_dir_all(&p)?;
            }
        }
        Ok(final_dir)
    }

    /// The trainer state stored in a checkpoint directory.
    pub fn read_state(dir: &Path) -> Result<TrainState> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid checkpoint state", path.display()))
    }

    /// Load a checkpoint's parameters and optimizer state into a freshly built model and optimizer.
    pub fn load_checkpoint<M: Module>(
        &self,
        dir: &Path,
        model: M,
        optim: &mut AdamW,
        state: &TrainState,
        device: &Device,
    ) -> Result<M> {
        let model = load_params(model, &dir.join("params.safetensors"))?;
        let opt = SafetensorsFile::open(&dir.join("optimizer.safetensors"))?;
        optim.import_state(&opt, &state.optimizer_steps, device)?;
        Ok(model)
    }

    /// Remember the best parameters so far (trainable ones: the rest are the base model's).
    pub fn save_best<M: Module>(&self, model: &M) -> Result<()> {
        save_trainable(model, &self.best().join("params.safetensors"))
    }

    pub fn load_best<M: Module>(&self, model: M) -> Result<M> {
        load_params(model, &self.best().join("params.safetensors"))
    }
}

/// Parameters that train, by burn path, in burn's layout.
fn save_trainable<M: Module>(model: &M, path: &Path) -> Result<()> {
    let tensors: Vec<_> = export_params(model, |p| p.trainable).into_iter().map(|(i, t)| (i.path, t)).collect();
    write_safetensors(path, &tensors, None)
}

/// Overwrite the parameters present in `path` (by burn path); others keep their values.
pub fn load_params<M: Module>(model: M, path: &Path) -> Result<M> {
    let file = SafetensorsFile::open(path)?;
    let mut seen = 0;
    let model = import_params(model, |info| {
        if !file.contains(&info.path) {
            return Ok(None);
        }
        seen += 1;
        file.tensor(&info.path).map(Some)
    })?;
    let stored = file.names().len();
    if seen != stored {
        bail!("{}: holds {stored} parameters but only {seen} match the model", path.display());
    }
    Ok(model)
}
