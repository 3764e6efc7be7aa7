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
    /// Seconds spent on validation passes before this checkpoint.
    #[serde(default)]
    pub validation_seconds: f64,
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
    /// Open the run directory for a run of `recipe` (its TOML). What a killed run left half
    /// written is cleaned up first (`io::atomic::recover`). A new run moves a finished one aside
    /// and refuses to overwrite an unfinished one (that needs `resume`); a run is finished once
    /// its `results.json` is written. Resuming requires the recipe the run started with (its
    /// `recipe.toml`, which is never overwritten): any change that alters the run is refused,
    /// listed key by key.
    pub fn start(root: &Path, resume: bool, recipe: &str) -> Result<Self> {
        let run = Self::new(root)?;
        run.recover()?;
        let saved_recipe = run.root.join("recipe.toml");
        if resume {
            if let Ok(saved) = std::fs::read_to_string(&saved_recipe) {
                let changes = recipe_changes(&saved, recipe)
                    .with_context(|| format!("comparing with {}", saved_recipe.display()))?;
                if !changes.is_empty() {
                    bail!(
                        "--resume: the recipe differs from the one this run started with ({}):\n  {}\nA resumed run \
                         must be the same run. Resume it as it was (finetune train {} --resume), or start a new run \
                         in another output_dir.",
                        saved_recipe.display(),
                        changes.join("\n  "),
                        saved_recipe.display()
                    );
                }
                return Ok(run);
            }
        } else if let Some(dir) = run.latest_checkpoint() {
            if !Self::read_state(&dir)?.finished || !run.results().is_file() {
                bail!(
                    "{} holds an unfinished run (no results.json yet); pass --resume to continue it or choose \
                     another output_dir",
                    run.root.display()
                );
            }
            let kept = run.archive()?;
            tracing::info!("moved the previous (finished) run to {}", kept.display());
        }
        crate::io::atomic::write_atomic(&saved_recipe, recipe.as_bytes())?;
        Ok(run)
    }

    /// Remove or restore what a killed write left in the run directory and its folders.
    fn recover(&self) -> Result<()> {
        for dir in [&self.root, &self.checkpoints(), &self.best(), &self.model(), &self.adapter()] {
            for note in crate::io::atomic::recover(dir)? {
                tracing::info!("{note}");
            }
        }
        Ok(())
    }

    /// Where the run stands after training failed numerically, and what to do: the latest
    /// checkpoint, its step, and the largest magnitude among its parameters (a diverging run
    /// shows there before the loss turns NaN, and resuming from it would not help).
    pub fn describe_latest(&self) -> String {
        let Some(dir) = self.latest_checkpoint() else {
            return format!(
                "no checkpoint has been written yet in {}: lower the learning rate or check the data, and start again",
                self.checkpoints().display()
            );
        };
        let step = Self::read_state(&dir).map(|s| s.step).unwrap_or(0);
        let largest = SafetensorsFile::open(&dir.join("params.safetensors")).and_then(|f| {
            f.names().iter().try_fold(0f32, |m, n| Ok(f.tensor(n)?.data.iter().fold(m, |m, v| m.max(v.abs()))))
        });
        match largest {
            Ok(max) if max > 1e4 => format!(
                "the latest checkpoint is {} (step {step}), but its largest parameter magnitude is already \
                 {max:.3e}: the run was diverging before it. Start again with a lower learning rate",
                dir.display()
            ),
            Ok(max) => format!(
                "the latest checkpoint is {} (step {step}, finite parameters, largest magnitude {max:.3e}): lower \
                 the learning rate or check the data, then --resume from it",
                dir.display()
            ),
            Err(e) => format!("the latest checkpoint {} cannot be read ({e:#}): start again", dir.display()),
        }
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
        crate::io::failpoint::hit("checkpoint.written");
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        crate::io::failpoint::hit("checkpoint.renamed");
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

/// Parameters that train, by burn path, in burn's layout. Non-finite values are refused: a
/// checkpoint is something to resume from.
fn save_trainable<M: Module>(model: &M, path: &Path) -> Result<()> {
    let tensors: Vec<_> = export_params(model, |p| p.trainable).into_iter().map(|(i, t)| (i.path, t)).collect();
    if let Some((name, _)) = tensors.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        bail!("parameter {name} holds NaN or infinite values; {} is not written", path.display());
    }
    write_safetensors(path, &tensors, None)
}

/// Keys whose value may differ when a run is resumed: where it runs and where it writes.
const RESUME_MAY_CHANGE: &[&str] = &["device", "output_dir"];

/// The differences between two recipes (TOML) that would change a run, as `key: old → new`.
pub fn recipe_changes(saved: &str, now: &str) -> Result<Vec<String>> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &toml::from_str(saved)?, &mut old);
    flatten("", &toml::from_str(now)?, &mut new);
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| !RESUME_MAY_CHANGE.contains(&k.as_str()))
        .filter_map(|k| {
            let (a, b) = (old.get(k), new.get(k));
            (a != b).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not set)".into());
                format!("{k}: {} → {}", show(a), show(b))
            })
        })
        .collect())
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
