//! Feature extraction: the frozen backbone runs once over every split; its pooled features are
//! kept in memory and cached on disk, keyed by a hash of everything that determines them (the
//! task computes the key and the features; `pipeline::features` runs the method), so head
//! training (and a rerun) never runs the backbone again.

use crate::data::Targets;
use crate::io::safetensors::{HostTensor, SafetensorsFile, write_safetensors};
use crate::nn::classification_head::ClassificationHead;
use crate::training::loss::{self, Scored};
use crate::training::trainer::{Examples, Split};
use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Features of one split: `[examples, hidden]`.
pub type Features = HostTensor;

/// Default cache directory: `$FINETUNE_CACHE/features` or `~/.cache/finetune/features`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("FINETUNE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::io::paths::home_dir().join(".cache/finetune"))
        .join("features")
}

/// Outcome of [`load_or_compute_with`].
pub struct CachedFeatures {
    pub splits: Vec<Features>,
    pub cache_file: PathBuf,
    pub cache_hit: bool,
    pub seconds: f64,
}

/// Features for `splits` from the cache file for `key` if present, else computed and cached.
/// `splits` are (name, rows); `compute(i, progress)` returns
/// the features of split `i` (advancing `progress` by its rows) when the cache misses.
pub fn load_or_compute_with(
    splits: &[(&str, usize)],
    key: &str,
    cache_dir: &Path,
    show_progress: bool,
    mut compute: impl FnMut(usize, &indicatif::ProgressBar) -> Result<Features>,
) -> Result<CachedFeatures> {
    let start = Instant::now();
    let cache_file = cache_dir.join(format!("{key}.safetensors"));
    if cache_file.is_file() {
        match read_cache(&cache_file, splits) {
            Ok(features) => {
                tracing::info!("feature cache hit: {}", cache_file.display());
                return Ok(CachedFeatures {
                    splits: features,
                    cache_file,
                    cache_hit: true,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            Err(e) => tracing::warn!("ignoring unreadable feature cache {}: {e:#}", cache_file.display()),
        }
    }
    let total: usize = splits.iter().map(|s| s.1).sum();
    let progress = if show_progress {
        let p = indicatif::ProgressBar::new(total as u64);
        p.set_style(
            indicatif::ProgressStyle::with_template(
                "features [{elapsed_precise}] {bar:30} {pos}/{len} {per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        p
    } else {
        indicatif::ProgressBar::hidden()
    };
    let features: Vec<Features> = (0..splits.len()).map(|i| compute(i, &progress)).collect::<Result<_>>()?;
    progress.finish_and_clear();
    let named: Vec<(String, HostTensor)> =
        splits.iter().zip(&features).map(|(s, f)| (s.0.to_string(), f.clone())).collect();
    write_safetensors(&cache_file, &named, None)?;
    tracing::info!("cached features in {}", cache_file.display());
    Ok(CachedFeatures { splits: features, cache_file, cache_hit: false, seconds: start.elapsed().as_secs_f64() })
}

/// Cached features of a head trained alone, for the trainer.
pub struct FeatureExamples {
    pub features: [Option<Tensor<2>>; 3],
    pub targets: [Targets; 3],
}

impl Examples<ClassificationHead> for FeatureExamples {
    fn len(&self, split: Split) -> usize {
        self.targets[split.slot()].len()
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let features = self.features[split.slot()].as_ref().expect("split present");
        let device = features.device();
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [indices.len()]), &device);
        loss::loss(&self.targets[split.slot()], head.forward(features.clone().select(0, idx)), indices)
    }
}

/// A host feature matrix as a tensor on `device`.
pub fn to_tensor(t: &HostTensor, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]), device)
}

fn read_cache(path: &Path, splits: &[(&str, usize)]) -> Result<Vec<Features>> {
    let file = SafetensorsFile::open(path)?;
    splits
        .iter()
        .map(|&(name, rows)| {
            let t = file.tensor(name)?;
            anyhow::ensure!(t.shape.first() == Some(&rows), "split '{name}' has {:?} rows", t.shape);
            Ok(t)
        })
        .collect()
}

/// `[feature_extraction]` in a recipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureExtractionConfig {
    /// Where cached features live; default `$FINETUNE_CACHE` or `~/.cache/finetune/features`.
    pub cache_dir: Option<PathBuf>,
}
