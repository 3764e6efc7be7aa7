//! Speech recognition with Whisper: greedy decoding of 30-second windows with the standard
//! token prefix, word error rate against reference transcripts, and fine-tuning (`task =
//! "transcription"`: LoRA or full) on clips with transcripts, with teacher forcing: the loss is
//! the cross-entropy of every transcript token and `<|endoftext|>` after the prefix.

use crate::data::audio::{Audio, read_wav};
use crate::data::log_mel::{CHUNK_SAMPLES, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram};
use crate::io::hub::{self, RepoKind};
use crate::methods::lora::{self, LoraConfig};
use crate::models::count_params;
use crate::models::whisper::{
    CrossCache, SelfCache, Whisper, WhisperConfig, WhisperDir, export_model, hf_key, special_token,
};
use crate::methods::Method;
use crate::recipe::Recipe;
use crate::tasks::text_classification::TrainReport;
use crate::training::checkpoint::RunDir;
use crate::training::trainer::{Examples, MethodHooks, Split, cross_entropy, evaluate, train};
use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::prelude::*;
use rayon::prelude::*;
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// A Whisper model ready to transcribe.
pub struct Transcriber {
    pub model: Whisper,
    pub config: WhisperConfig,
    tokenizer: tokenizers::Tokenizer,
    /// `<|startoftranscript|>` then, for a multilingual model, `<|en|><|transcribe|>`; then
    /// `<|notimestamps|>`.
    pub prefix: Vec<usize>,
    device: Device,
}

/// One file's transcript.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcript {
    pub audio: PathBuf,
    pub seconds: f64,
    pub text: String,
}

impl Transcriber {
    /// A Whisper model, with a peft LoRA adapter (ours or Python peft's) when `adapter` is given.
    pub fn load(dir: &Path, adapter: Option<&Path>, device: &str) -> Result<Self> {
        let device = crate::ops::device::select(device)?;
        let files = WhisperDir::open(dir)?;
        let (mut model, _) = files.load(&device)?;
        if let Some(a) = adapter {
            let adapter_files = crate::io::peft::AdapterFiles::read(a)?;
            model = lora::load_adapter(model, &adapter_files, hf_key, &device)?.0;
        }
        Self::new(model, &files, device)
    }

    pub fn new(model: Whisper, files: &WhisperDir, device: Device) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| anyhow!("{}: {e}", files.tokenizer.display()))?;
        let config = files.config.clone();
        let mut prefix = vec![config.decoder_start_token_id];
        if config.is_multilingual() {
            prefix.push(special_token(&files.tokenizer, "<|en|>")?);
            prefix.push(special_token(&files.tokenizer, "<|transcribe|>")?);
        }
        prefix.push(special_token(&files.tokenizer, "<|notimestamps|>")?);
        Ok(Self { model, config, tokenizer, prefix, device })
    }

    /// The log-Mel features `[1, n_mels, 3000]` of one 30 s window.
    pub fn features(&self, samples: &[f32]) -> Tensor<3> {
        let mel = log_mel_spectrogram(samples, self.config.num_mel_bins);
        Tensor::from_data(TensorData::new(mel, [1, self.config.num_mel_bins, N_FRAMES]), &self.device)
    }

    /// Text of `audio` (any rate; resampled to 16 kHz), window by window.
    pub fn transcribe(&self, audio: Audio) -> Result<String> {
        let audio = audio.resampled(SAMPLE_RATE);
        let mut parts = Vec::new();
        for window in audio.samples.chunks(CHUNK_SAMPLES) {
            let tokens = self.greedy(self.features(window));
            let text = self.tokenizer.decode(&tokens.iter().map(|&t| t as u32).collect::<Vec<_>>(), true);
            parts.push(text.map_err(|e| anyhow!("decoding tokens: {e}"))?.trim().to_string());
        }
        Ok(parts.join(" ").trim().to_string())
    }

    /// Word error rate over a manifest (`audio`, `text`), with every transcript.
    pub fn word_error_rate(&self, manifest: &Path) -> Result<(f64, Vec<(String, String)>)> {
        let pairs = read_manifest(manifest)?
            .into_iter()
            .map(|(file, text)| Ok((text, self.transcribe(read_wav(&file)?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((word_error_rate(pairs.iter().map(|(r, h)| (r.as_str(), h.as_str()))), pairs))
    }

    pub fn transcribe_file(&self, path: &Path) -> Result<Transcript> {
        let audio = read_wav(path)?;
        let seconds = audio.seconds();
        let text = self.transcribe(audio).with_context(|| format!("transcribing {}", path.display()))?;
        Ok(Transcript { audio: path.to_path_buf(), seconds, text })
    }

    /// Greedy decoding after the prefix: suppressed tokens never win, `begin_suppress_tokens`
    /// not as the first token; stops at `<|endoftext|>` or the decoder's length.
    pub fn greedy(&self, mel: Tensor<3>) -> Vec<usize> {
        let encoded = self.model.encoder.forward(mel);
        let cross = self.model.decoder.cross_cache(encoded);
        let mut cache = SelfCache::new();
        let mut logits = self.next_logits(&self.prefix, 0, &mut cache, &cross);
        let mut out = Vec::new();
        while self.prefix.len() + out.len() < self.config.max_target_positions {
            for &t in &self.config.suppress_tokens {
                if let Some(l) = logits.get_mut(t) {
                    *l = f32::NEG_INFINITY;
                }
            }
            if out.is_empty() {
                for &t in &self.config.begin_suppress_tokens {
                    if let Some(l) = logits.get_mut(t) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let next = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0);
            if next == self.config.eos_token_id {
                break;
            }
            out.push(next);
            if self.prefix.len() + out.len() < self.config.max_target_positions {
                logits = self.next_logits(&[next], self.prefix.len() + out.len() - 1, &mut cache, &cross);
            }
        }
        out
    }

    /// Logits of the token after `tokens`, which follow `past` positions held in `cache`.
    fn next_logits(&self, tokens: &[usize], past: usize, cache: &mut SelfCache, cross: &CrossCache) -> Vec<f32> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &self.device);
        let hidden = self.model.decoder.hidden_cached(t, past, cache, cross);
        let [_, n, d] = hidden.dims();
        let last = hidden.slice(s![.., n - 1..n, ..]).reshape([1, d]);
        self.model.decoder.logits(last).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits")
    }
}

/// (audio file, transcript) rows of a JSONL manifest; paths are relative to its directory.
pub fn read_manifest(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let (Some(audio), Some(t)) = (row["audio"].as_str(), row["text"].as_str()) else {
            bail!("{}:{}: needs string fields \"audio\" and \"text\"", path.display(), i + 1);
        };
        out.push((base.join(audio), t.to_string()));
    }
    if out.is_empty() {
        bail!("{}: no clips", path.display());
    }
    Ok(out)
}

/// One training clip: 16 kHz samples and the decoder tokens (prefix, transcript, end).
struct Utterance {
    samples: Vec<f32>,
    tokens: Vec<usize>,
}

/// Clips with transcripts for teacher-forced training. When the encoder is frozen, its output
/// for each clip is computed once and kept (the same every epoch).
struct TranscriptExamples {
    splits: [Vec<Utterance>; 3],
    encoded: Option<[Vec<Tensor<2>>; 3]>,
    prefix_len: usize,
    pad: usize,
    n_mels: usize,
    device: Device,
}

fn slot(split: Split) -> usize {
    crate::methods::feature_extraction::slot(split)
}

impl TranscriptExamples {
    fn mel(&self, utterances: &[&Utterance]) -> Tensor<3> {
        let n_mels = self.n_mels;
        let mut out = vec![0f32; utterances.len() * n_mels * N_FRAMES];
        out.par_chunks_mut(n_mels * N_FRAMES)
            .zip(utterances.par_iter())
            .for_each(|(dst, u)| dst.copy_from_slice(&log_mel_spectrogram(&u.samples, n_mels)));
        Tensor::from_data(TensorData::new(out, [utterances.len(), n_mels, N_FRAMES]), &self.device)
    }

    /// Encoder outputs of the whole split in inference mode (a frozen encoder).
    fn encode_all(model: &Whisper, utterances: &[Utterance], n_mels: usize, device: &Device) -> Vec<Tensor<2>> {
        let this = |u: &Utterance| {
            let mel = log_mel_spectrogram(&u.samples, n_mels);
            let x = Tensor::<3>::from_data(TensorData::new(mel, [1, n_mels, N_FRAMES]), device);
            let h = model.encoder.forward(x);
            let [_, t, d] = h.dims();
            h.reshape([t, d])
        };
        utterances.iter().map(this).collect()
    }
}

impl Examples<Whisper> for TranscriptExamples {
    fn len(&self, split: Split) -> usize {
        self.splits[slot(split)].len()
    }

    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        let s = &self.splits[slot(split)];
        indices.iter().map(|&i| s[i].tokens.len() - self.prefix_len).sum::<usize>() as f64
    }

    fn loss(&self, model: &Whisper, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let s = &self.splits[slot(split)];
        let batch: Vec<&Utterance> = indices.iter().map(|&i| &s[i]).collect();
        let encoded = match &self.encoded {
            Some(cache) => Tensor::stack::<3>(indices.iter().map(|&i| cache[slot(split)][i].clone()).collect(), 0),
            None => model.encoder.forward(self.mel(&batch)),
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

/// A transcription fine-tuning run's report: the trainer's, plus the test word error rate of the
/// base model and of the fine-tuned one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TranscriptionReport {
    #[serde(flatten)]
    pub train: TrainReport,
    pub test_wer_base: Option<f64>,
    pub test_wer: Option<f64>,
}

/// Fine-tune Whisper per `recipe` (`method = "lora"` or `"full"`) on JSONL manifests with `audio`
/// and `text`; writes the adapter (peft format) and/or the model in the Hugging Face layout.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TranscriptionReport> {
    let base = crate::ops::device::select(&recipe.device)?;
    let _precision = crate::ops::context::enter(crate::ops::context::Precision::parse(&recipe.precision)?);
    let train_device = crate::ops::device::training(&base);
    let dir = WhisperDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &["config.json"])?)?;
    let cfg = &recipe.data;
    let data_dir = crate::data::dataset_dir(cfg)?;
    let base_model = Transcriber::load(&dir.dir, None, &recipe.device)?;
    let tokenizer =
        tokenizers::Tokenizer::from_file(&dir.tokenizer).map_err(|e| anyhow!("{}: {e}", dir.tokenizer.display()))?;
    let prefix = base_model.prefix.clone();
    let eos = dir.config.eos_token_id;
    let max_len = dir.config.max_target_positions;
    let read = |file: Option<&String>| -> Result<Vec<Utterance>> {
        let Some(file) = file else { return Ok(Vec::new()) };
        read_manifest(&data_dir.join(file))?
            .into_iter()
            .map(|(audio, text)| {
                let enc =
                    tokenizer.encode(format!(" {}", text.trim()), false).map_err(|e| anyhow!("tokenizing: {e}"))?;
                let mut tokens = prefix.clone();
                tokens.extend(enc.get_ids().iter().map(|&t| t as usize));
                tokens.push(eos);
                if tokens.len() > max_len {
                    bail!("{}: transcript of {} tokens exceeds the decoder's {max_len}", audio.display(), tokens.len());
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
            let (wer, _) = base_model.word_error_rate(m)?;
            tracing::info!("test WER of the base model: {wer:.4}");
            Some(wer)
        }
        None => None,
    };

    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;
    base.seed(recipe.seed);
    train_device.seed(recipe.seed);
    let (mut model, _) = dir.load(&train_device)?;
    let lora_cfg = match recipe.method {
        Method::Lora => {
            let c = recipe.lora.clone().context("method = \"lora\" needs a [lora] section")?;
            let targeted = lora::inject(&mut model, &c, &train_device)?;
            tracing::info!("LoRA r={} on {} layers", c.r, targeted.len());
            Some((c, targeted))
        }
        Method::Full => None,
        other => bail!("transcription supports lora and full (not {})", other.name()),
    };
    // A frozen encoder (no adapter on it, not full fine-tuning) gives the same output every
    // epoch: compute it once per clip.
    let encoder_frozen = lora_cfg.as_ref().is_some_and(|(_, t)| !t.iter().any(|n| n.starts_with("model.encoder.")));
    let encoded = encoder_frozen.then(|| {
        tracing::info!("encoder frozen: computing its output once per clip");
        splits.each_ref().map(|s| TranscriptExamples::encode_all(&base_model.model, s, dir.config.num_mel_bins, &base))
    });
    let examples = TranscriptExamples {
        splits,
        encoded,
        prefix_len: prefix.len(),
        pad: eos,
        n_mels: dir.config.num_mel_bins,
        device: base.clone(),
    };
    let vocab = dir.config.vocab_size;
    let trainer_cfg = crate::training::trainer::TrainerConfig::new(&recipe.training, recipe.seed, vocab, examples.len(Split::Train), show_progress);
    let is_lora = lora_cfg.is_some();
    let started = Cell::new(false);
    let set_trainable = |m: Whisper, _: usize, _: usize| {
        if started.replace(true) {
            return (m, Vec::new());
        }
        (crate::io::params::set_trainable(m, |p| !is_lora || p.contains(".lora.")), Vec::new())
    };
    let lr_scale = |_: &str| 1.0;
    let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
    let outcome = train(model, &examples, &trainer_cfg, hooks, &run, resume, &train_device)?;
    let model = outcome.best_model.valid();
    let test = (examples.len(Split::Test) > 0)
        .then(|| evaluate(&model, &examples, Split::Test, recipe.training.eval_batch_size, vocab));
    let params = crate::io::params::list_params(&model);
    let trainable_params = if is_lora {
        params.iter().filter(|p| p.path.contains(".lora.")).map(|p| p.numel()).sum()
    } else {
        count_params(&model).0
    };
    if let Some((c, _)) = &lora_cfg {
        write_adapter(&model, c, &recipe.model, &run.adapter())?;
    }
    let mut merged = model.clone();
    lora::merge(&mut merged);
    export_model(&merged, &dir, &run.model())?;
    let tuned = Transcriber::new(merged, &dir, base.clone())?;
    let test_wer = match &test_manifest {
        Some(m) => {
            let (wer, pairs) = tuned.word_error_rate(m)?;
            tracing::info!("test WER after fine-tuning: {wer:.4}");
            let lines: Vec<String> =
                pairs.iter().map(|(r, h)| serde_json::json!({"reference": r, "hypothesis": h}).to_string()).collect();
            crate::io::atomic::write_atomic(&run.root.join("test_transcripts.jsonl"), lines.join("\n").as_bytes())?;
            Some(wer)
        }
        None => None,
    };
    let state = outcome.state;
    let report = TranscriptionReport {
        train: TrainReport {
            train_examples: examples.len(Split::Train),
            total_params: count_params(&model).0,
            trainable_params,
            test,
            model_dir: if is_lora { run.adapter() } else { run.model() },
            ..TrainReport::from_run(recipe, &state, &run)
        },
        test_wer_base,
        test_wer,
    };
    run.finish(&report)?;
    Ok(report)
}

/// The adapter in peft's format (keys `base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight`, ...).
fn write_adapter(model: &Whisper, cfg: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    let tensors = lora::adapter_tensors(model, hf_key, |_| false);
    let mut config = lora::adapter_config_json(cfg, base_model, "");
    config["task_type"] = serde_json::Value::Null;
    crate::io::peft::AdapterFiles::write(dir, &config, tensors)
}

/// Words for WER: lower case, punctuation removed (apostrophes and inner hyphens kept as part of
/// a word), whitespace collapsed.
pub fn normalize_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word-level edit distance (substitutions + deletions + insertions) and the reference length.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (normalize_words(reference), normalize_words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    (prev[h.len()], r.len())
}

/// Corpus word error rate of (reference, hypothesis) pairs.
pub fn word_error_rate<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let (errors, words) = pairs.into_iter().map(|(r, h)| word_errors(r, h)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    errors as f64 / words.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate_counts_edits_after_normalising() {
        assert_eq!(
            word_errors("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
            (0, 8)
        );
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert_eq!(word_errors("a b", "a b c"), (1, 2));
        assert!((word_error_rate([("a b c d", "a x c"), ("e f", "e f")]) - 2.0 / 6.0).abs() < 1e-12);
    }
}
