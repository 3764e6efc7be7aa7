//! Speech recognition with Whisper: greedy decoding of 30-second windows with the standard token
//! prefix (`<|startoftranscript|>`, language and task for a multilingual model,
//! `<|notimestamps|>`), suppressed tokens as the model's config lists them; the word error rate
//! over a manifest of clips and reference transcripts.

use crate::data::audio::{Audio, read_wav};
use crate::data::log_mel::{CHUNK_SAMPLES, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram};
use crate::models::ModelDir;
use crate::models::whisper::{CrossCache, SelfCache, Whisper, WhisperConfig, special_token};
use crate::training::metrics::word_error_rate;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
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
        let files = ModelDir::open(dir)?;
        let config = WhisperConfig::read(&files)?;
        let (mut model, _) = crate::models::whisper::load(&files, &config, &device)?;
        if let Some(a) = adapter {
            let adapter_files = crate::io::peft::AdapterFiles::read(a)?;
            model = crate::methods::lora::adapter::load_adapter(model, &adapter_files, &device)?.0;
        }
        Self::new(model, &files, config, device)
    }

    pub fn new(model: Whisper, files: &ModelDir, config: WhisperConfig, device: Device) -> Result<Self> {
        let path = files.tokenizer_path();
        let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut prefix = vec![config.decoder_start_token_id];
        if config.is_multilingual() {
            prefix.push(special_token(&path, "<|en|>")?);
            prefix.push(special_token(&path, "<|transcribe|>")?);
        }
        prefix.push(special_token(&path, "<|notimestamps|>")?);
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
