//! Labelled audio sets — a JSONL manifest (`audio`: path relative to the manifest's directory,
//! `label`) or a folder of class directories of WAV files — decoded to 16 kHz mono up front, and
//! the on-the-fly augmentations of training clips: gain, time shift, additive noise, and
//! SpecAugment masks on the features.

use super::audio::read_wav;
use super::log_mel::SAMPLE_RATE;
use crate::ops::rng::SplitMix64;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One split: every clip at 16 kHz, with its label index and file.
#[derive(Debug, Clone)]
pub struct AudioSplit {
    pub name: &'static str,
    pub source: PathBuf,
    pub clips: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    pub files: Vec<PathBuf>,
}

impl AudioSplit {
    pub fn len(&self) -> usize {
        self.clips.len()
    }
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }
}

/// (file, label name) pairs of a manifest or a class-folder tree.
fn entries(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    if path.is_dir() {
        let mut out = Vec::new();
        for class in super::image::folder_classes(path)? {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path.join(&class))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("wav")))
                .collect();
            files.sort();
            out.extend(files.into_iter().map(|f| (f, class.clone())));
        }
        return Ok(out);
    }
    let text = super::read_text(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let (Some(audio), Some(label)) = (row["audio"].as_str(), row["label"].as_str()) else {
            bail!("{}:{}: needs string fields \"audio\" and \"label\"", path.display(), i + 1);
        };
        out.push((base.join(audio), label.to_string()));
    }
    Ok(out)
}

/// Label names of a split in sorted order (the class folders, or the manifest's distinct labels).
pub fn label_names(path: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = entries(path)?.into_iter().map(|(_, l)| l).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Read and resample every clip of a split; an unknown label or an unreadable file is an error
/// naming it.
pub fn read_audio_split(name: &'static str, path: &Path, labels: &[String]) -> Result<AudioSplit> {
    let rows = entries(path)?;
    if rows.is_empty() {
        bail!("{}: no audio clips", path.display());
    }
    let mut split = AudioSplit { name, source: path.into(), clips: Vec::new(), labels: Vec::new(), files: Vec::new() };
    for (file, label) in rows {
        let Some(y) = labels.iter().position(|l| *l == label) else {
            bail!("{}: label '{label}' of {} is not among {labels:?}", path.display(), file.display());
        };
        split.clips.push(read_wav(&file)?.resampled(SAMPLE_RATE).samples);
        split.labels.push(y);
        split.files.push(file);
    }
    Ok(split)
}

/// Random changes to training clips. Every field is optional: absent means not applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioAugment {
    /// Gain drawn uniformly from ±`gain_db` decibels.
    pub gain_db: Option<f32>,
    /// Start the clip up to this many seconds into the window (instead of at 0).
    pub shift_seconds: Option<f32>,
    /// White noise at a signal-to-noise ratio drawn from this range, in dB.
    pub noise_snr_db: Option<[f32; 2]>,
    /// SpecAugment: this many time masks of up to `time_mask_frames` 10-ms frames each.
    #[serde(default)]
    pub time_masks: usize,
    #[serde(default = "default_time_mask")]
    pub time_mask_frames: usize,
    /// SpecAugment: this many frequency masks of up to `freq_mask_bins` Mel bins each.
    #[serde(default)]
    pub freq_masks: usize,
    #[serde(default = "default_freq_mask")]
    pub freq_mask_bins: usize,
}

fn default_time_mask() -> usize {
    20
}
fn default_freq_mask() -> usize {
    10
}

fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// Place `clip` in a window of `window` samples: at the start, or shifted/scaled/noised per `aug`.
pub fn place_in_window(clip: &[f32], window: usize, aug: Option<&AudioAugment>, rng: &mut SplitMix64) -> Vec<f32> {
    let mut out = vec![0f32; window];
    let room = window.saturating_sub(clip.len());
    let shift = match aug.and_then(|a| a.shift_seconds) {
        Some(s) => ((uniform(rng) * s * SAMPLE_RATE as f32) as usize).min(room),
        None => 0,
    };
    let n = clip.len().min(window - shift);
    out[shift..shift + n].copy_from_slice(&clip[..n]);
    let Some(aug) = aug else { return out };
    if let Some(db) = aug.gain_db {
        let g = 10f32.powf((uniform(rng) * 2.0 - 1.0) * db / 20.0);
        out.iter_mut().for_each(|v| *v *= g);
    }
    if let Some([lo, hi]) = aug.noise_snr_db {
        let power = clip.iter().map(|v| v * v).sum::<f32>() / clip.len().max(1) as f32;
        let snr = lo + uniform(rng) * (hi - lo);
        // Uniform noise on [-a, a] has power a²/3.
        let a = (3.0 * power / 10f32.powf(snr / 10.0)).sqrt();
        out.iter_mut().for_each(|v| *v += (uniform(rng) * 2.0 - 1.0) * a);
    }
    out
}

/// SpecAugment's masks on `[n_mels, frames]` features, set to the features' mean.
pub fn spec_augment(mel: &mut [f32], n_mels: usize, frames: usize, aug: &AudioAugment, rng: &mut SplitMix64) {
    let mean = mel.iter().sum::<f32>() / mel.len().max(1) as f32;
    for _ in 0..aug.time_masks {
        let w = (uniform(rng) * (aug.time_mask_frames + 1) as f32) as usize;
        let t0 = (uniform(rng) * frames.saturating_sub(w) as f32) as usize;
        for m in 0..n_mels {
            mel[m * frames + t0..m * frames + (t0 + w).min(frames)].fill(mean);
        }
    }
    for _ in 0..aug.freq_masks {
        let w = (uniform(rng) * (aug.freq_mask_bins + 1) as f32) as usize;
        let f0 = (uniform(rng) * n_mels.saturating_sub(w) as f32) as usize;
        for m in f0..(f0 + w).min(n_mels) {
            mel[m * frames..(m + 1) * frames].fill(mean);
        }
    }
}

/// `[audio]` in a recipe: how audio clips are fed to a speech encoder (`task = "audio-classification"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// Window length in seconds (clips are padded or cut to it): Whisper's own 30, or shorter
    /// for short clips (the encoder then sees 50 positions per second).
    #[serde(default = "default_audio_seconds")]
    pub seconds: f32,
    /// Random augmentation of training clips; absent: none.
    pub augment: Option<AudioAugment>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self { seconds: default_audio_seconds(), augment: None }
    }
}

fn default_audio_seconds() -> f32 {
    30.0
}

impl AudioConfig {
    /// Check the values a recipe can get wrong (errors name the key and the range).
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.seconds >= 0.02 && self.seconds <= 30.0,
            "audio.seconds = {}: must be in [0.02, 30] (Whisper's encoder sees at most 30 s)",
            self.seconds
        );
        if let Some(a) = &self.augment {
            for (key, v) in [("gain_db", a.gain_db), ("shift_seconds", a.shift_seconds)] {
                anyhow::ensure!(
                    v.is_none_or(|v| v >= 0.0 && v.is_finite()),
                    "audio.augment.{key} = {v:?}: must be at least 0"
                );
            }
            if let Some([lo, hi]) = a.noise_snr_db {
                anyhow::ensure!(
                    lo <= hi && lo.is_finite() && hi.is_finite(),
                    "audio.augment.noise_snr_db = [{lo}, {hi}]: must be low <= high"
                );
            }
        }
        Ok(())
    }
}

/// Labelled clips (16 kHz; train, validation, test) and their class names.
pub struct AudioData {
    pub labels: Vec<String>,
    pub splits: [Option<std::sync::Arc<AudioSplit>>; 3],
}

impl AudioData {
    /// Split `slot` (0 train, 1 validation, 2 test).
    pub fn split(&self, slot: usize) -> Option<&AudioSplit> {
        self.splits[slot].as_deref()
    }
    pub fn len(&self, slot: usize) -> usize {
        self.split(slot).map_or(0, AudioSplit::len)
    }
}

/// Read the splits of `[data]`. Class names: `data.labels`, else `labels.txt` in the dataset
/// directory, else the training split's labels in sorted order.
pub fn load_audio_data(cfg: &super::DataConfig) -> Result<AudioData> {
    use std::sync::Arc;
    let dir = super::dataset_dir(cfg)?;
    let labels = super::label_names_for(cfg, &dir, || label_names(&dir.join(&cfg.train)))?;
    let read = |name, f: &Option<String>| f.as_ref().map(|f| read_audio_split(name, &dir.join(f), &labels)).transpose();
    let train = read_audio_split("train", &dir.join(&cfg.train), &labels)?;
    if let Some(w) = super::class_imbalance(&train.labels, &labels, &train.source) {
        tracing::warn!("{w}");
    }
    let (validation, test) = (read("validation", &cfg.validation)?, read("test", &cfg.test)?);
    Ok(AudioData { labels, splits: [Some(Arc::new(train)), validation.map(Arc::new), test.map(Arc::new)] })
}

/// Mel frames of a window of `seconds` (even: the encoder halves them).
pub fn window_frames(seconds: f32) -> usize {
    (((seconds * SAMPLE_RATE as f32) as usize / super::log_mel::HOP) / 2 * 2).max(2)
}

/// Log-Mel features `[n, n_mels, frames]` of `indices`, augmented when `augment` is given (each
/// clip's randomness from `seed`, the batch and its position: reproducible and resumable).
pub fn prepare_mel(
    split: &AudioSplit,
    indices: &[usize],
    n_mels: usize,
    frames: usize,
    augment: Option<&AudioAugment>,
    seed: u64,
) -> Vec<f32> {
    use rayon::prelude::*;
    let hop = super::log_mel::HOP;
    let per = n_mels * frames;
    let mut out = vec![0f32; indices.len() * per];
    let batch_key = indices.iter().fold(seed, |h, &i| SplitMix64::new(h ^ i as u64).next_u64());
    out.par_chunks_mut(per).zip(indices.par_iter()).enumerate().for_each(|(pos, (dst, &i))| {
        let mut rng = SplitMix64::new(batch_key ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let window = place_in_window(&split.clips[i], frames * hop, augment, &mut rng);
        let mut mel = super::log_mel::log_mel_frames(&window, n_mels, frames);
        if let Some(aug) = augment {
            spec_augment(&mut mel, n_mels, frames, aug, &mut rng);
        }
        dst.copy_from_slice(&mel);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_placement_shift_gain_and_noise() {
        let clip = vec![0.5f32; 100];
        let mut rng = SplitMix64::new(1);
        let plain = place_in_window(&clip, 300, None, &mut rng);
        assert_eq!((&plain[..100], plain[100..].iter().all(|v| *v == 0.0)), (&clip[..], true));
        let aug = AudioAugment { shift_seconds: Some(1.0), gain_db: Some(6.0), ..Default::default() };
        let moved = place_in_window(&clip, 300, Some(&aug), &mut rng);
        let start = moved.iter().position(|v| *v != 0.0).unwrap();
        assert!(start <= 200 && moved[start..start + 100].iter().all(|v| (*v - moved[start]).abs() < 1e-6));
        assert!(moved[start] > 0.25 && moved[start] < 1.0, "gain within ±6 dB: {}", moved[start]);
        let noisy = AudioAugment { noise_snr_db: Some([10.0, 10.0]), ..Default::default() };
        let n = place_in_window(&clip, 100, Some(&noisy), &mut rng);
        let noise_power = n.iter().map(|v| (v - 0.5) * (v - 0.5)).sum::<f32>() / 100.0;
        assert!((noise_power / 0.025 - 1.0).abs() < 0.5, "SNR 10 dB: noise power {noise_power}");
    }

    #[test]
    fn spec_augment_masks_whole_rows_and_columns() {
        let mut mel: Vec<f32> = (0..8 * 50).map(|i| i as f32).collect();
        let aug = AudioAugment {
            freq_masks: 1,
            freq_mask_bins: 8,
            time_masks: 1,
            time_mask_frames: 50,
            ..Default::default()
        };
        spec_augment(&mut mel, 8, 50, &aug, &mut SplitMix64::new(3));
        let mean = (0..400).sum::<usize>() as f32 / 400.0;
        let masked = mel.iter().filter(|v| **v == mean).count();
        assert!(masked > 0, "nothing masked");
    }
}
