//! Audio classification with Whisper's encoder (mean-pooled) and a linear head:
//! `feature-extraction` (frozen encoder; pooled features cached, or recomputed per batch when
//! augmenting), `lora` (adapters on the encoder's linear layers, the head trains; peft adapter +
//! merged model), and `full`. Clips are placed in a window of `audio.seconds` (Whisper's 30 s,
//! or shorter for short clips) and turned into Whisper's log-Mel features.

use crate::data::audio::read_wav;
use crate::data::audio_set::{AudioAugment, AudioSplit, label_names, place_in_window, read_audio_split, spec_augment};
use crate::ops::rng::SplitMix64;
use crate::data::log_mel::{HOP, SAMPLE_RATE, log_mel_frames};
use crate::io::hub::{self, RepoKind};
use crate::io::peft::AdapterFiles;
use crate::methods::feature_extraction::{self, FeatureExamples, to_tensor};
use crate::methods::lora::{self, BiasMode, LoraConfig};
use crate::nn::classification_head::ClassificationHead;
use crate::models::whisper::{WhisperAudioClassifier, WhisperDir, classifier_key};
use crate::models::{checkpoint_tensors, count_params};
use crate::methods::Method;
use crate::recipe::Recipe;
use crate::tasks::text_classification::TrainReport;
use crate::training::checkpoint::RunDir;
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, MethodHooks, Split, classification_loss, evaluate, train};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Labelled clips (16 kHz) and their class names.
pub struct AudioData {
    pub labels: Vec<String>,
    /// Train, validation, test.
    pub splits: [Option<Arc<AudioSplit>>; 3],
}

impl AudioData {
    fn split(&self, split: Split) -> Option<&AudioSplit> {
        self.splits[feature_extraction::slot(split)].as_deref()
    }
    fn len(&self, split: Split) -> usize {
        self.split(split).map_or(0, AudioSplit::len)
    }
}

/// Read the recipe's splits. Class names: `data.labels`, else `labels.txt` in the dataset
/// directory, else the training split's labels in sorted order.
pub fn load_audio_data(recipe: &Recipe) -> Result<AudioData> {
    let cfg = &recipe.data;
    let dir = crate::data::dataset_dir(cfg)?;
    let labels = crate::data::label_names_for(cfg, &dir, || label_names(&dir.join(&cfg.train)))?;
    let read = |name, f: &Option<String>| f.as_ref().map(|f| read_audio_split(name, &dir.join(f), &labels)).transpose();
    let train = read_audio_split("train", &dir.join(&cfg.train), &labels)?;
    let (validation, test) = (read("validation", &cfg.validation)?, read("test", &cfg.test)?);
    Ok(AudioData { labels, splits: [Some(Arc::new(train)), validation.map(Arc::new), test.map(Arc::new)] })
}

/// Mel frames of a window of `seconds` (even: the encoder halves them).
pub fn window_frames(seconds: f32) -> usize {
    (((seconds * SAMPLE_RATE as f32) as usize / HOP) / 2 * 2).max(2)
}

/// Log-Mel features `[n, n_mels, frames]` of `indices`, augmented when `augment` is given (each
/// clip's randomness from `seed`, the batch and its position: reproducible and resumable).
fn prepare(
    split: &AudioSplit,
    indices: &[usize],
    n_mels: usize,
    frames: usize,
    augment: Option<&AudioAugment>,
    seed: u64,
) -> Vec<f32> {
    let per = n_mels * frames;
    let mut out = vec![0f32; indices.len() * per];
    let batch_key = indices.iter().fold(seed, |h, &i| SplitMix64::new(h ^ i as u64).next_u64());
    out.par_chunks_mut(per).zip(indices.par_iter()).enumerate().for_each(|(pos, (dst, &i))| {
        let mut rng = SplitMix64::new(batch_key ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let window = place_in_window(&split.clips[i], frames * HOP, augment, &mut rng);
        let mut mel = log_mel_frames(&window, n_mels, frames);
        if let Some(aug) = augment {
            spec_augment(&mut mel, n_mels, frames, aug, &mut rng);
        }
        dst.copy_from_slice(&mel);
    });
    out
}

/// Feature batches of clips for a model that runs the encoder.
struct AudioExamples<'a> {
    data: &'a AudioData,
    n_mels: usize,
    frames: usize,
    augment: Option<AudioAugment>,
    seed: u64,
    device: Device,
}

impl AudioExamples<'_> {
    fn batch(&self, split: Split, indices: &[usize]) -> Tensor<3> {
        let s = self.data.split(split).expect("split present");
        let augment = if split == Split::Train { self.augment.as_ref() } else { None };
        let mel = prepare(s, indices, self.n_mels, self.frames, augment, self.seed);
        Tensor::from_data(TensorData::new(mel, [indices.len(), self.n_mels, self.frames]), &self.device)
    }
    fn labels(&self, split: Split) -> &[usize] {
        &self.data.split(split).expect("split present").labels
    }
}

impl Examples<WhisperAudioClassifier> for AudioExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.data.len(split)
    }
    fn loss(
        &self,
        model: &WhisperAudioClassifier,
        split: Split,
        indices: &[usize],
    ) -> (Tensor<1>, Vec<(usize, usize)>) {
        classification_loss(model.forward(self.batch(split, indices)), self.labels(split), indices)
    }
}

/// Feature extraction with augmentation: the frozen encoder runs on every augmented batch.
struct FrozenEncoderExamples<'a> {
    clips: AudioExamples<'a>,
    encoder: WhisperAudioClassifier,
}

impl Examples<ClassificationHead> for FrozenEncoderExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.clips.data.len(split)
    }
    fn loss(&self, head: &ClassificationHead, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let features = self.encoder.features(self.clips.batch(split, indices));
        classification_loss(head.forward(features), self.clips.labels(split), indices)
    }
}

/// Cache key of pooled features: the weights, config, window, and every split's samples and labels.
fn cache_key(dir: &WhisperDir, frames: usize, data: &AudioData) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"finetune-audio-features-v1\0");
    for name in ["model.safetensors", "model.bin", "config.json"] {
        if dir.dir.join(name).is_file() {
            h.update(hub::sha256_file(&dir.dir.join(name))?.as_bytes());
        }
    }
    h.update((frames as u64).to_le_bytes());
    for s in data.splits.iter().flatten() {
        h.update(s.name.as_bytes());
        for (clip, &y) in s.clips.iter().zip(&s.labels) {
            h.update((clip.len() as u64).to_le_bytes());
            h.update((y as u64).to_le_bytes());
            h.update(clip.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    let base = crate::ops::device::select(&recipe.device)?;
    let _precision = crate::ops::context::enter(crate::ops::context::Precision::parse(&recipe.precision)?);
    let train_device = crate::ops::device::training(&base);
    let dir = WhisperDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
    let data = load_audio_data(recipe)?;
    let frames = window_frames(recipe.audio.seconds);
    let n_mels = dir.config.num_mel_bins;
    tracing::info!(
        "{} classes; {} train / {} validation / {} test clips in {:.2} s windows",
        data.labels.len(),
        data.len(Split::Train),
        data.len(Split::Validation),
        data.len(Split::Test),
        recipe.audio.seconds
    );
    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;
    base.seed(recipe.seed);
    train_device.seed(recipe.seed);
    let num_labels = data.labels.len();
    let cfg = crate::training::trainer::TrainerConfig::new(&recipe.training, recipe.seed, num_labels, data.len(Split::Train), show_progress);
    let eval_batch = recipe.training.eval_batch_size;
    let dropout = recipe.head.dropout;
    let augment = recipe.audio.augment.clone();
    let clips = |device: &Device| AudioExamples {
        data: &data,
        n_mels,
        frames,
        augment: augment.clone(),
        seed: recipe.seed,
        device: device.clone(),
    };
    let mut adapter: Option<LoraConfig> = None;
    let (model, state, feature_info, test) = match recipe.method {
        Method::FeatureExtraction => {
            let (encoder, _) = WhisperAudioClassifier::load(&dir, num_labels, dropout, false, &base)?;
            let head = ClassificationHead::new(dir.config.d_model, num_labels, dropout, 0.02, &train_device);
            let set_trainable = |m: ClassificationHead, _: usize, _: usize| (m, Vec::new());
            let lr_scale = |_: &str| 1.0;
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let (head, state, info, test) = if augment.is_some() {
                let examples = FrozenEncoderExamples { clips: clips(&base), encoder: encoder.clone() };
                let outcome = train(head, &examples, &cfg, hooks, &run, resume, &train_device)?;
                let head = outcome.best_model.valid();
                let test = (examples.len(Split::Test) > 0)
                    .then(|| evaluate(&head, &examples, Split::Test, eval_batch, num_labels));
                (head, outcome.state, None, test)
            } else {
                let present: Vec<&AudioSplit> = data.splits.iter().flatten().map(|s| s.as_ref()).collect();
                let names: Vec<(&str, usize)> = present.iter().map(|s| (s.name, s.len())).collect();
                let cache_dir =
                    recipe.feature_extraction.cache_dir.clone().unwrap_or_else(feature_extraction::default_cache_dir);
                let key = cache_key(&dir, frames, &data)?;
                let cached =
                    feature_extraction::load_or_compute_with(&names, &key, &cache_dir, show_progress, |i, p| {
                        let split = present[i];
                        let d = dir.config.d_model;
                        let mut out = Vec::with_capacity(split.len() * d);
                        let order: Vec<usize> = (0..split.len()).collect();
                        for batch in order.chunks(eval_batch) {
                            let mel = prepare(split, batch, n_mels, frames, None, 0);
                            let x = Tensor::<3>::from_data(TensorData::new(mel, [batch.len(), n_mels, frames]), &base);
                            out.extend(
                                encoder.features(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"),
                            );
                            p.inc(batch.len() as u64);
                        }
                        Ok(crate::io::safetensors::HostTensor::new(vec![split.len(), d], out))
                    })?;
                let mut features = cached.splits.iter();
                let examples = FeatureExamples {
                    features: data
                        .splits
                        .each_ref()
                        .map(|s| s.as_ref().map(|_| to_tensor(features.next().expect("one per split"), &base))),
                    labels: data.splits.each_ref().map(|s| s.as_ref().map_or_else(Vec::new, |s| s.labels.clone())),
                };
                let outcome = train(head, &examples, &cfg, hooks, &run, resume, &train_device)?;
                let head = outcome.best_model.valid();
                let test = (examples.len(Split::Test) > 0)
                    .then(|| evaluate(&head, &examples, Split::Test, eval_batch, num_labels));
                (head, outcome.state, Some((cached.seconds, cached.cache_hit)), test)
            };
            (WhisperAudioClassifier { encoder: encoder.encoder, head }, state, info, test)
        }
        Method::Full | Method::Lora => {
            let (mut model, _) = WhisperAudioClassifier::load(&dir, num_labels, dropout, false, &train_device)?;
            let lora_cfg = if recipe.method == Method::Lora {
                let mut c = recipe.lora.clone().context("method = \"lora\" needs a [lora] section")?;
                if c.bias != BiasMode::None {
                    bail!("lora.bias = {:?} is not supported for audio classification; use \"none\"", c.bias);
                }
                if !c.saves("classifier") {
                    c.modules_to_save.push("classifier".into());
                }
                let targeted = lora::inject(&mut model, &c, &train_device)?;
                tracing::info!("LoRA r={} on {} layers", c.r, targeted.len());
                Some(c)
            } else {
                None
            };
            let is_lora = lora_cfg.is_some();
            let started = Cell::new(false);
            let set_trainable = |m: WhisperAudioClassifier, _: usize, _: usize| {
                if started.replace(true) {
                    return (m, Vec::new());
                }
                let m =
                    crate::io::params::set_trainable(m, |p| !is_lora || p.contains(".lora.") || p.starts_with("head."));
                (m, Vec::new())
            };
            let lr_scale = |_: &str| 1.0;
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let examples = clips(&base);
            let outcome = train(model, &examples, &cfg, hooks, &run, resume, &train_device)?;
            let model = outcome.best_model.valid();
            let test = (examples.len(Split::Test) > 0)
                .then(|| evaluate(&model, &examples, Split::Test, eval_batch, num_labels));
            if let Some(c) = &lora_cfg {
                export_adapter(&model, c, &recipe.model, &data.labels, recipe.audio.seconds, &run.adapter())?;
            }
            adapter = lora_cfg;
            (model, outcome.state, None, test)
        }
        Method::Transfer | Method::PromptTuning => {
            bail!("audio classification supports feature-extraction, lora and full (not {})", recipe.method.name())
        }
    };
    if let Some(t) = &test {
        tracing::info!("test: loss {:.4} accuracy {:.4} macro-F1 {:.4}", t.loss, t.accuracy, t.macro_f1);
    }
    let (total_params, trainable_params) = match recipe.method {
        Method::FeatureExtraction => (count_params(&model).0, count_params(&model.head).0),
        Method::Lora => {
            let params = crate::io::params::list_params(&model);
            let n = |f: &dyn Fn(&str) -> bool| params.iter().filter(|p| f(&p.path)).map(|p| p.numel()).sum::<usize>();
            (n(&|_| true), n(&|p| p.contains(".lora.") || p.starts_with("head.")))
        }
        _ => {
            let n = count_params(&model).0;
            (n, n)
        }
    };
    let mut merged = model.clone();
    lora::merge(&mut merged);
    let meta = serde_json::json!({
        "method": recipe.method.name(),
        "base_model": recipe.model,
        "seconds": recipe.audio.seconds,
    });
    export_model(&merged, &dir, &data.labels, meta, &run.model())?;
    let report = TrainReport {
        labels: data.labels.clone(),
        train_examples: data.len(Split::Train),
        total_params,
        trainable_params,
        test,
        feature_seconds: feature_info.map(|f| f.0),
        feature_cache_hit: feature_info.map(|f| f.1),
        model_dir: if adapter.is_some() { run.adapter() } else { run.model() },
        ..TrainReport::from_run(recipe, &state, &run)
    };
    run.finish(&report)?;
    Ok(report)
}

/// Write a LoRA run's adapter in peft's format (encoder layers' `lora_A`/`lora_B`, the head as
/// `classifier`) plus `finetune.json` (labels, window).
fn export_adapter(
    model: &WhisperAudioClassifier,
    cfg: &LoraConfig,
    base_model: &str,
    labels: &[String],
    seconds: f32,
    dir: &Path,
) -> Result<()> {
    fn key(p: &str) -> String {
        classifier_key(p)
    }
    let tensors = lora::adapter_tensors(model, key, |p| p.starts_with("head."));
    let mut config = lora::adapter_config_json(cfg, base_model, "");
    config["task_type"] = serde_json::Value::Null;
    AdapterFiles::write(dir, &config, tensors)?;
    let extra = serde_json::json!({ "labels": labels, "finetune": { "seconds": seconds } });
    crate::io::atomic::write_atomic(&dir.join("finetune.json"), serde_json::to_string_pretty(&extra)?.as_bytes())
}

/// Write a fine-tuned audio classifier: `config.json` (the base's Whisper config with `id2label`
/// and what finetune did), `model.safetensors` (`encoder.*`, `classifier.*`), `tokenizer.json`.
fn export_model(
    model: &WhisperAudioClassifier,
    base: &WhisperDir,
    labels: &[String],
    meta: serde_json::Value,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = serde_json::to_value(&base.config)?;
    config["architectures"] = serde_json::json!(["WhisperForAudioClassification"]);
    config["id2label"] = labels.iter().enumerate().map(|(i, l)| (i.to_string(), serde_json::json!(l))).collect();
    config["label2id"] = labels.iter().enumerate().map(|(i, l)| (l.clone(), serde_json::json!(i))).collect();
    config["finetune"] = meta;
    crate::io::atomic::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    crate::io::safetensors::write_safetensors(
        &out.join("model.safetensors"),
        &checkpoint_tensors(model, classifier_key, |_| true),
        None,
    )?;
    std::fs::copy(&base.tokenizer, out.join("tokenizer.json")).context("copying tokenizer.json")?;
    Ok(())
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
        let dir = WhisperDir::open(path)?;
        let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join("config.json"))?)?;
        let id2label = raw["id2label"].as_object().with_context(|| format!("{}: no id2label", path.display()))?;
        let labels: Vec<String> = (0..id2label.len())
            .map(|i| id2label.get(&i.to_string()).and_then(|v| v.as_str()).map(str::to_string))
            .collect::<Option<_>>()
            .with_context(|| format!("{}: id2label is not 0..n", path.display()))?;
        let seconds = raw["finetune"]["seconds"].as_f64().unwrap_or(30.0) as f32;
        let (model, _) = WhisperAudioClassifier::load(&dir, labels.len(), 0.0, true, &device)?;
        Ok(Self { model, labels, frames: window_frames(seconds), n_mels: dir.config.num_mel_bins, device })
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
            let mel = prepare(&split, &idx, self.n_mels, self.frames, None, 0);
            let x = Tensor::<3>::from_data(TensorData::new(mel, [chunk.len(), self.n_mels, self.frames]), &self.device);
            let probs = burn::tensor::activation::softmax(self.model.forward(x), 1);
            let probs: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            for (row, file) in probs.chunks(self.labels.len()).zip(chunk) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let top: Vec<(String, f32)> =
                    order.iter().take(top_k).map(|&i| (self.labels[i].clone(), row[i])).collect();
                out.push(AudioPrediction { audio: file.clone(), label: top[0].0.clone(), top });
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
