//! Feature extraction: the frozen encoder runs once over every split; its pooled features are
//! kept in memory and cached on disk, keyed by a hash of everything that determines them, so
//! head training (and a rerun) never runs the encoder again.

use crate::data::TokenizedSplit;
use crate::data::batch::{chunk, collate, length_sorted};
use crate::io::hub::sha256_file;
use crate::io::safetensors::{HostTensor, SafetensorsFile, write_safetensors};
use crate::models::text_classifier::TextClassifier;
use crate::nn::classification_head::ClassificationHead;
use crate::training::trainer::{Examples, Split, classification_loss};
use anyhow::Result;
use burn::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use serde::{Deserialize, Serialize};

/// Features of one split: `[examples, hidden]`.
pub type Features = HostTensor;

/// The cache key: model weights and config, pooling, and the exact token ids of every split.
pub fn cache_key(weights: &Path, config: &Path, pooling: &str, splits: &[&TokenizedSplit]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"finetune-features-v1\0");
    h.update(sha256_file(weights)?.as_bytes());
    h.update(std::fs::read(config)?);
    h.update(pooling.as_bytes());
    for s in splits {
        h.update(s.name.as_bytes());
        h.update((s.encoded.len() as u64).to_le_bytes());
        for e in &s.encoded {
            h.update((e.ids.len() as u32).to_le_bytes());
            for (&id, &ty) in e.ids.iter().zip(&e.type_ids) {
                h.update(id.to_le_bytes());
                h.update(ty.to_le_bytes());
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Default cache directory: `$FINETUNE_CACHE/features` or `~/.cache/finetune/features`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("FINETUNE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::io::paths::home_dir().join(".cache/finetune"))
        .join("features")
}

/// Run the (frozen, validation-mode) model over a split and return pooled features in split order.
pub fn compute_features(
    model: &TextClassifier,
    split: &TokenizedSplit,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> Features {
    let n = split.len();
    let order = length_sorted(&split.encoded);
    let mut hidden = 0;
    let mut out = vec![0f32; 0];
    for batch in chunk(&order, batch_size) {
        let input = collate(&split.encoded, &batch, pad_id, device);
        let f = model.features(&input);
        let [b, h] = f.dims();
        if out.is_empty() {
            hidden = h;
            out = vec![0f32; n * h];
        }
        let values: Vec<f32> = f.into_data().convert::<f32>().try_into_vec().expect("f32 features");
        for (row, &i) in batch.iter().enumerate() {
            out[i * h..(i + 1) * h].copy_from_slice(&values[row * h..(row + 1) * h]);
        }
        progress.inc(b as u64);
    }
    HostTensor::new(vec![n, hidden], out)
}

/// Outcome of [`load_or_compute`].
pub struct CachedFeatures {
    pub splits: Vec<Features>,
    pub cache_file: PathBuf,
    pub cache_hit: bool,
    pub seconds: f64,
}

/// Features for `splits`, from the cache file for `key` if present, else computed and cached.
#[allow(clippy::too_many_arguments)]
pub fn load_or_compute(
    model: &TextClassifier,
    splits: &[&TokenizedSplit],
    key: &str,
    cache_dir: &Path,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
    show_progress: bool,
) -> Result<CachedFeatures> {
    let named: Vec<(&str, usize)> = splits.iter().map(|s| (s.name, s.len())).collect();
    load_or_compute_with(&named, key, cache_dir, show_progress, |i, progress| {
        Ok(compute_features(model, splits[i], batch_size, pad_id, device, progress))
    })
}

/// The cache logic for any backbone: `splits` are (name, rows); `compute(i, progress)` returns
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
    pub labels: [Vec<usize>; 3],
}

pub fn slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    }
}

impl Examples<ClassificationHead> for FeatureExamples {
    fn len(&self, split: Split) -> usize {
        self.labels[slot(split)].len()
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let features = self.features[slot(split)].as_ref().expect("split present");
        let device = features.device();
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [indices.len()]), &device);
        classification_loss(head.forward(features.clone().select(0, idx)), &self.labels[slot(split)], indices)
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
