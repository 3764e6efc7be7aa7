//! A fine-tuned audio classifier (Whisper's encoder, mean-pooled, and a head) in use, and the
//! log-Mel batches training and evaluation share ([`AudioExamples`]).

use crate::data::audio::read_wav;
use crate::data::audio_set::{AudioAugment, AudioData, AudioSplit, prepare_mel, read_audio_split, window_frames};
use crate::data::log_mel::SAMPLE_RATE;
use crate::models::ModelDir;
use crate::models::whisper::{WhisperAudioClassifier, WhisperConfig};
use crate::training::loss::Scored;
use crate::training::loss::classification_loss;
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split, evaluate};
use anyhow::{Context, Result};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Feature batches of clips for a model that runs the encoder.
pub struct AudioExamples<'a> {
    pub data: &'a AudioData,
    pub n_mels: usize,
    pub frames: usize,
    pub augment: Option<AudioAugment>,
    pub seed: u64,
    pub device: Device,
}

impl AudioExamples<'_> {
    /// Log-Mel features of `indices` of `split` (augmented for training).
    pub fn batch(&self, split: Split, indices: &[usize]) -> Tensor<3> {
        let s = self.data.split(split.slot()).expect("split present");
        let augment = if split == Split::Train { self.augment.as_ref() } else { None };
        let mel = prepare_mel(s, indices, self.n_mels, self.frames, augment, self.seed);
        Tensor::from_data(TensorData::new(mel, [indices.len(), self.n_mels, self.frames]), &self.device)
    }
    pub fn labels(&self, split: Split) -> &[usize] {
        &self.data.split(split.slot()).expect("split present").labels
    }
}

impl Examples<WhisperAudioClassifier> for AudioExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.data.len(split.slot())
    }
    fn loss(&self, model: &WhisperAudioClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
}

/// A fine-tuned audio classifier ready for prediction and evaluation.
pub struct FinetunedAudioClassifier {
    pub model: WhisperAudioClassifier,
    pub labels: Vec<String>,
    pub frames: usize,
    n_mels: usize,
    device: Device,
}

/// One clip's prediction: the top classes with their probabilities.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioPrediction {
    pub audio: PathBuf,
    pub label: String,
    pub top: Vec<(String, f32)>,
    /// Every label's probability, in label order (as text predictions give them).
    pub probabilities: Vec<(String, f32)>,
}

impl FinetunedAudioClassifier {
    /// Whether `dir` holds a fine-tuned audio classifier (a Whisper config with `id2label`).
    pub fn is_audio_classifier(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["model_type"] == "whisper" && v.get("id2label").is_some())
    }

    pub fn load(path: &Path, device: &str) -> Result<Self> {
        let device = crate::ops::device::select(device)?;
        let dir = ModelDir::open(path)?;
        let config = WhisperConfig::read(&dir)?;
        let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join("config.json"))?)?;
        let id2label = raw["id2label"].as_object().with_context(|| format!("{}: no id2label", path.display()))?;
        let labels: Vec<String> = (0..id2label.len())
            .map(|i| id2label.get(&i.to_string()).and_then(|v| v.as_str()).map(str::to_string))
            .collect::<Option<_>>()
            .with_context(|| format!("{}: id2label is not 0..n", path.display()))?;
        let seconds = raw["finetune"]["seconds"].as_f64().unwrap_or(30.0) as f32;
        let (model, _) = WhisperAudioClassifier::load(&dir, &config, labels.len(), 0.0, true, &device)?;
        Ok(Self { model, labels, frames: window_frames(seconds), n_mels: config.num_mel_bins, device })
    }

    pub fn predict(&self, files: &[PathBuf], top_k: usize) -> Result<Vec<AudioPrediction>> {
        let mut out = Vec::new();
        for chunk in files.chunks(16) {
            let clips =
                chunk.iter().map(|f| Ok(read_wav(f)?.resampled(SAMPLE_RATE).samples)).collect::<Result<Vec<_>>>()?;
            let split = AudioSplit {
                name: "predict",
                source: PathBuf::new(),
                labels: vec![0; clips.len()],
                files: chunk.to_vec(),
                clips,
            };
            let idx: Vec<usize> = (0..chunk.len()).collect();
            let mel = prepare_mel(&split, &idx, self.n_mels, self.frames, None, 0);
            let x = Tensor::<3>::from_data(TensorData::new(mel, [chunk.len(), self.n_mels, self.frames]), &self.device);
            let probs = burn::tensor::activation::softmax(self.model.forward(x), 1);
            let probs: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            for (row, file) in probs.chunks(self.labels.len()).zip(chunk) {
                let top = super::top_k(row, &self.labels, top_k);
                let probabilities = self.labels.iter().cloned().zip(row.iter().copied()).collect();
                out.push(AudioPrediction { audio: file.clone(), label: top[0].0.clone(), top, probabilities });
            }
        }
        Ok(out)
    }

    /// Accuracy, macro-F1 and loss on a JSONL manifest or a folder of class directories.
    pub fn evaluate_split(&self, path: &Path, batch_size: usize) -> Result<EvalMetrics> {
        let split = read_audio_split("test", path, &self.labels)?;
        let data = AudioData { labels: self.labels.clone(), splits: [None, None, Some(Arc::new(split))] };
        let examples = AudioExamples {
            data: &data,
            n_mels: self.n_mels,
            frames: self.frames,
            augment: None,
            seed: 0,
            device: self.device.clone(),
        };
        Ok(evaluate(&self.model, &examples, Split::Test, batch_size, self.labels.len()))
    }
}
