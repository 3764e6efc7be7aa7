//! Audio classification (`task = "audio-classification"`) with Whisper's encoder (mean-pooled)
//! and a linear head: feature extraction (pooled features cached, or the frozen encoder run on
//! every augmented batch), LoRA on the encoder's linear layers (adapter plus the merged model) and
//! full fine-tuning. Clips are placed in a window of `audio.seconds` (Whisper's 30 s, or shorter
//! for short clips) and turned into Whisper's log-Mel features.

use crate::data::Targets;
use crate::data::audio_set::{AudioData, AudioSplit, load_audio_data, prepare_mel, window_frames};
use crate::inference::audio::AudioExamples;
use crate::io::hub::{self, RepoKind};
use crate::io::safetensors::HostTensor;
use crate::methods::Method;
use crate::models::ModelDir;
use crate::models::whisper::{WhisperAudioClassifier, WhisperConfig, save_classifier};
use crate::nn::classification_head::ClassificationHead;
use crate::pipeline::{self, Devices, NoExtra, Task, TrainReport};
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::loss::Scored;
use crate::training::loss::classification_loss;
use crate::training::trainer::{Examples, Split};
use anyhow::Result;
use burn::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    pipeline::run(recipe, resume, show_progress, |devices| AudioClassification::prepare(recipe, devices))
}

/// An audio-classification run: the Whisper model's files and the labelled clips.
pub struct AudioClassification {
    dir: ModelDir,
    config: WhisperConfig,
    data: AudioData,
    frames: usize,
    seconds: f32,
    recipe: AudioRecipe,
    device: Device,
}

/// The recipe settings the task reads.
struct AudioRecipe {
    augment: Option<crate::data::audio_set::AudioAugment>,
    head_dropout: f64,
    base_model: String,
    seed: u64,
    eval_batch_size: usize,
}

impl AudioClassification {
    fn prepare(recipe: &Recipe, devices: &Devices) -> Result<Self> {
        let dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
        let config = WhisperConfig::read(&dir)?;
        let data = load_audio_data(&recipe.data)?;
        tracing::info!(
            "{} classes; {} train / {} validation / {} test clips in {:.2} s windows",
            data.labels.len(),
            data.len(0),
            data.len(1),
            data.len(2),
            recipe.audio.seconds
        );
        Ok(Self {
            dir,
            config,
            data,
            frames: window_frames(recipe.audio.seconds),
            seconds: recipe.audio.seconds,
            recipe: AudioRecipe {
                augment: recipe.audio.augment.clone(),
                head_dropout: recipe.head.dropout,
                base_model: recipe.model.clone(),
                seed: recipe.seed,
                eval_batch_size: recipe.training.eval_batch_size,
            },
            device: devices.base.clone(),
        })
    }

    fn clips(&self) -> AudioExamples<'_> {
        AudioExamples {
            data: &self.data,
            n_mels: self.config.num_mel_bins,
            frames: self.frames,
            augment: self.recipe.augment.clone(),
            seed: self.recipe.seed,
            device: self.device.clone(),
        }
    }

    fn present(&self) -> Vec<&AudioSplit> {
        self.data.splits.iter().flatten().map(|s| s.as_ref()).collect()
    }
}

/// Feature extraction with augmentation: the frozen encoder runs on every augmented batch.
struct FrozenEncoderExamples<'a> {
    clips: AudioExamples<'a>,
    encoder: &'a WhisperAudioClassifier,
}

impl Examples<ClassificationHead> for FrozenEncoderExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.clips.data.len(split.slot())
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let features = self.encoder.features(self.clips.batch(split, indices));
        classification_loss(head.forward(features), self.clips.labels(split), indices)
    }
}

impl Task for AudioClassification {
    type Model = WhisperAudioClassifier;
    type Extra = NoExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::AudioClassification
    }
    fn num_outputs(&self) -> usize {
        self.data.labels.len()
    }
    fn labels(&self) -> Vec<String> {
        self.data.labels.clone()
    }
    fn train_len(&self) -> usize {
        self.data.len(0)
    }
    fn head_modules(&self) -> Vec<String> {
        vec!["classifier".into()]
    }

    fn load_model(&mut self, device: &Device) -> Result<WhisperAudioClassifier> {
        Ok(WhisperAudioClassifier::load(
            &self.dir,
            &self.config,
            self.num_outputs(),
            self.recipe.head_dropout,
            false,
            device,
        )?
        .0)
    }

    fn examples<'a>(&'a self, _model: &WhisperAudioClassifier) -> Box<dyn Examples<WhisperAudioClassifier> + 'a> {
        Box::new(self.clips())
    }

    fn save_model(&self, model: &WhisperAudioClassifier, method: Method, dir: &Path) -> Result<()> {
        let meta = serde_json::json!({
            "method": method.name(),
            "base_model": self.recipe.base_model,
            "seconds": self.seconds,
        });
        save_classifier(model, &self.dir, &self.config, &self.data.labels, meta, dir)
    }

    fn saves_merged_model(&self) -> bool {
        true
    }

    fn adapter_notes(&self, _: Method) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "labels": self.data.labels, "finetune": { "seconds": self.seconds } }))
    }
    fn head_mut(model: &mut WhisperAudioClassifier) -> &mut ClassificationHead {
        &mut model.head
    }
    fn feature_splits(&self) -> Vec<(&'static str, usize)> {
        self.present().iter().map(|s| (s.name, s.len())).collect()
    }
    fn split_targets(&self, slot: usize) -> Option<Targets> {
        self.data.split(slot).map(|s| Targets::Classes(s.labels.clone()))
    }

    /// The weights, config, window, and every split's samples and labels.
    fn feature_cache_key(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"finetune-audio-features-v1\0");
        for name in ["model.safetensors", "model.bin", "config.json"] {
            if self.dir.dir.join(name).is_file() {
                h.update(hub::sha256_file(&self.dir.dir.join(name))?.as_bytes());
            }
        }
        h.update((self.frames as u64).to_le_bytes());
        for s in self.present() {
            h.update(s.name.as_bytes());
            for (clip, &y) in s.clips.iter().zip(&s.labels) {
                h.update((clip.len() as u64).to_le_bytes());
                h.update((y as u64).to_le_bytes());
                h.update(clip.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    fn compute_features(
        &self,
        model: &WhisperAudioClassifier,
        i: usize,
        progress: &indicatif::ProgressBar,
    ) -> Result<HostTensor> {
        let split = self.present()[i];
        let (d, n_mels, frames) = (self.config.d_model, self.config.num_mel_bins, self.frames);
        let mut out = Vec::with_capacity(split.len() * d);
        let order: Vec<usize> = (0..split.len()).collect();
        for batch in order.chunks(self.recipe.eval_batch_size) {
            let mel = prepare_mel(split, batch, n_mels, frames, None, 0);
            let x = Tensor::<3>::from_data(TensorData::new(mel, [batch.len(), n_mels, frames]), &self.device);
            out.extend(model.features(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"));
            progress.inc(batch.len() as u64);
        }
        Ok(HostTensor::new(vec![split.len(), d], out))
    }

    fn augmented_features<'a>(
        &'a self,
        model: &'a WhisperAudioClassifier,
    ) -> Option<Box<dyn Examples<ClassificationHead> + 'a>> {
        self.recipe.augment.is_some().then(|| {
            Box::new(FrozenEncoderExamples { clips: self.clips(), encoder: model })
                as Box<dyn Examples<ClassificationHead>>
        })
    }
}
