//! Speech recognition fine-tuning with Whisper (`task = "transcription"`: LoRA or full) on clips
//! with transcripts, with teacher forcing: the loss is the cross-entropy of every transcript
//! token and `<|endoftext|>` after the prefix. Reports the test word error rate of the base model
//! and of the fine-tuned one; saves the adapter (peft format) and the merged model.

use crate::data::audio::read_wav;
use crate::data::log_mel::{N_FRAMES, SAMPLE_RATE, log_mel_spectrogram};
use crate::inference::transcriber::{Transcriber, read_manifest};
use crate::io::hub::{self, RepoKind};
use crate::methods::{Method, lora};
use crate::models::Adaptable as _;
use crate::models::ModelDir;
use crate::models::whisper::{Whisper, WhisperConfig, save_model};
use crate::pipeline::{self, Devices, ReportExtra, Task, TrainReport};
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::checkpoint::{RunDir, TrainState};
use crate::training::loss::Scored;
use crate::training::loss::cross_entropy;
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split};
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

/// Fine-tune Whisper per `recipe` on JSONL manifests with `audio` and `text`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport<WerExtra>> {
    pipeline::run(recipe, resume, show_progress, |devices| Transcription::prepare(recipe, devices))
}

/// The test word error rates before and after fine-tuning.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WerExtra {
    pub test_wer_base: Option<f64>,
    pub test_wer: Option<f64>,
}

impl ReportExtra for WerExtra {
    fn summary(&self) -> Vec<String> {
        let wer = |w: Option<f64>| w.map_or("-".to_string(), |w| format!("{w:.4}"));
        vec![format!("test WER:      {} (base model {})", wer(self.test_wer), wer(self.test_wer_base))]
    }
}

/// One training clip: 16 kHz samples and the decoder tokens (prefix, transcript, end).
struct Utterance {
    samples: Vec<f32>,
    tokens: Vec<usize>,
}

/// Clips with transcripts for teacher-forced training. When the encoder is frozen, its output
/// for each clip is computed once and kept (the same every epoch).
struct TranscriptExamples<'a> {
    splits: &'a [Vec<Utterance>; 3],
    encoded: Option<&'a [Vec<Tensor<2>>; 3]>,
    prefix_len: usize,
    pad: usize,
    n_mels: usize,
    device: Device,
}

/// Log-Mel features `[n, n_mels, 3000]` of whole 30 s windows.
fn mel(utterances: &[&Utterance], n_mels: usize, device: &Device) -> Tensor<3> {
    let mut out = vec![0f32; utterances.len() * n_mels * N_FRAMES];
    out.par_chunks_mut(n_mels * N_FRAMES)
        .zip(utterances.par_iter())
        .for_each(|(dst, u)| dst.copy_from_slice(&log_mel_spectrogram(&u.samples, n_mels)));
    Tensor::from_data(TensorData::new(out, [utterances.len(), n_mels, N_FRAMES]), device)
}

impl Examples<Whisper> for TranscriptExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.splits[split.slot()].len()
    }

    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        let s = &self.splits[split.slot()];
        indices.iter().map(|&i| s[i].tokens.len() - self.prefix_len).sum::<usize>() as f64
    }

    fn loss(&self, model: &Whisper, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let s = &self.splits[split.slot()];
        let batch: Vec<&Utterance> = indices.iter().map(|&i| &s[i]).collect();
        let encoded = match self.encoded {
            Some(cache) => Tensor::stack::<3>(indices.iter().map(|&i| cache[split.slot()][i].clone()).collect(), 0),
            None => model.encoder.forward(mel(&batch, self.n_mels, &self.device)),
        };
        let len = batch.iter().map(|u| u.tokens.len()).max().unwrap_or(1);
        let mut ids = vec![self.pad as i64; batch.len() * len];
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (b, u) in batch.iter().enumerate() {
            for (p, &t) in u.tokens.iter().enumerate() {
                ids[b * len + p] = t as i64;
                if p >= self.prefix_len {
                    rows.push((b * len + p - 1) as i64);
                    targets.push(t as i64);
                }
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.len(), len]), &self.device);
        let hidden = model.decoder.hidden(ids, &model.decoder.cross_cache(encoded));
        let [b, l, d] = hidden.dims();
        let n = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
        let logits = model.decoder.logits(hidden.reshape([b * l, d]).select(0, rows));
        let predicted: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_into_vec().expect("ints");
        let pairs = predicted.iter().zip(&targets).map(|(&p, &t)| (p as usize, t as usize)).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &self.device);
        (cross_entropy(logits, y), pairs)
    }
}

/// A transcription run: the Whisper model's files, the base model (for its word error rate and,
/// when the encoder stays frozen, its encoder outputs) and the tokenized clips.
pub struct Transcription {
    dir: ModelDir,
    config: WhisperConfig,
    base: Transcriber,
    splits: [Vec<Utterance>; 3],
    encoded: OnceCell<Option<[Vec<Tensor<2>>; 3]>>,
    test_manifest: Option<PathBuf>,
    test_wer_base: Option<f64>,
    device: Device,
}

impl Transcription {
    fn prepare(recipe: &Recipe, devices: &Devices) -> Result<Self> {
        let dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
        let cfg = &recipe.data;
        let data_dir = crate::data::dataset_dir(cfg)?;
        let base = Transcriber::load(&dir.dir, None, &recipe.device)?;
        let config = base.config.clone();
        let tokenizer = tokenizers::Tokenizer::from_file(dir.tokenizer_path())
            .map_err(|e| anyhow!("{}: {e}", dir.tokenizer_path().display()))?;
        let (eos, max_len) = (config.eos_token_id, config.max_target_positions);
        let read = |file: Option<&String>| -> Result<Vec<Utterance>> {
            let Some(file) = file else { return Ok(Vec::new()) };
            read_manifest(&data_dir.join(file))?
                .into_iter()
                .map(|(audio, text)| {
                    let enc =
                        tokenizer.encode(format!(" {}", text.trim()), false).map_err(|e| anyhow!("tokenizing: {e}"))?;
                    let mut tokens = base.prefix.clone();
                    tokens.extend(enc.get_ids().iter().map(|&t| t as usize));
                    tokens.push(eos);
                    if tokens.len() > max_len {
                        bail!(
                            "{}: transcript of {} tokens exceeds the decoder's {max_len}",
                            audio.display(),
                            tokens.len()
                        );
                    }
                    Ok(Utterance { samples: read_wav(&audio)?.resampled(SAMPLE_RATE).samples, tokens })
                })
                .collect()
        };
        let splits = [read(Some(&cfg.train))?, read(cfg.validation.as_ref())?, read(cfg.test.as_ref())?];
        tracing::info!("{} train / {} validation / {} test clips", splits[0].len(), splits[1].len(), splits[2].len());
        let test_manifest = cfg.test.as_ref().map(|t| data_dir.join(t));
        let test_wer_base = match &test_manifest {
            Some(m) => {
                let (wer, _) = base.word_error_rate(m)?;
                tracing::info!("test WER of the base model: {wer:.4}");
                Some(wer)
            }
            None => None,
        };
        Ok(Self {
            dir,
            config,
            base,
            splits,
            encoded: OnceCell::new(),
            test_manifest,
            test_wer_base,
            device: devices.base.clone(),
        })
    }

    /// Encoder outputs of every clip in inference mode (a frozen encoder).
    fn encode_all(&self) -> [Vec<Tensor<2>>; 3] {
        let n_mels = self.config.num_mel_bins;
        self.splits.each_ref().map(|s| {
            s.iter()
                .map(|u| {
                    let h = self.base.model.encoder.forward(mel(&[u], n_mels, &self.device));
                    let [_, t, d] = h.dims();
                    h.reshape([t, d])
                })
                .collect()
        })
    }
}

impl Task for Transcription {
    type Model = Whisper;
    type Extra = WerExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::Transcription
    }
    fn num_outputs(&self) -> usize {
        self.config.vocab_size
    }
    fn train_len(&self) -> usize {
        self.splits[0].len()
    }

    fn load_model(&mut self, device: &Device) -> Result<Whisper> {
        Ok(crate::models::whisper::load(&self.dir, &self.config, device)?.0)
    }

    fn examples<'a>(&'a self, model: &Whisper) -> Box<dyn Examples<Whisper> + 'a> {
        let encoded = self.encoded.get_or_init(|| {
            // A frozen encoder (adapters only in the decoder) gives the same output every epoch:
            // compute it once per clip.
            let adapted: Vec<String> =
                model.dense_layers().into_iter().filter(|(_, d)| d.lora.is_some()).map(|(n, _)| n).collect();
            let frozen = !adapted.is_empty() && !adapted.iter().any(|n| n.starts_with("model.encoder."));
            frozen.then(|| {
                tracing::info!("encoder frozen: computing its output once per clip");
                self.encode_all()
            })
        });
        Box::new(TranscriptExamples {
            splits: &self.splits,
            encoded: encoded.as_ref(),
            prefix_len: self.base.prefix.len(),
            pad: self.config.eos_token_id,
            n_mels: self.config.num_mel_bins,
            device: self.device.clone(),
        })
    }

    fn save_model(&self, model: &Whisper, _: Method, dir: &Path) -> Result<()> {
        save_model(model, &self.dir, &self.config, dir)
    }

    fn saves_merged_model(&self) -> bool {
        true
    }

    fn finish(&mut self, model: &Whisper, _: Option<&EvalMetrics>, run: &RunDir, _: &TrainState) -> Result<WerExtra> {
        let Some(manifest) = &self.test_manifest else {
            return Ok(WerExtra { test_wer_base: self.test_wer_base, test_wer: None });
        };
        let mut merged = model.clone();
        lora::merge(&mut merged);
        let tuned = Transcriber::new(merged, &self.dir, self.config.clone(), self.device.clone())?;
        let (wer, pairs) = tuned.word_error_rate(manifest)?;
        tracing::info!("test WER after fine-tuning: {wer:.4}");
        let lines: Vec<String> =
            pairs.iter().map(|(r, h)| serde_json::json!({"reference": r, "hypothesis": h}).to_string()).collect();
        crate::io::atomic::write_atomic(&run.root.join("test_transcripts.jsonl"), lines.join("\n").as_bytes())?;
        Ok(WerExtra { test_wer_base: self.test_wer_base, test_wer: Some(wer) })
    }
}
