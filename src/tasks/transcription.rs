//! Speech recognition with Whisper: greedy decoding of 30-second windows with the standard
//! token prefix, and word error rate against reference transcripts.

use crate::data::audio::{Audio, read_wav};
use crate::data::log_mel::{CHUNK_SAMPLES, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram};
use crate::models::whisper::{CrossCache, Whisper, WhisperConfig, WhisperDir, special_token};
use anyhow::{Context, Result, anyhow};
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
    pub fn load(dir: &Path, device: &str) -> Result<Self> {
        let device = crate::device::select(device)?;
        let files = WhisperDir::open(dir)?;
        let (model, _) = files.load(&device)?;
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
        let mut tokens = self.prefix.clone();
        let mut out = Vec::new();
        while tokens.len() < self.config.max_target_positions {
            let mut logits = self.next_logits(&tokens, &cross);
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
            tokens.push(next);
            out.push(next);
        }
        out
    }

    /// Logits of the token after `tokens`.
    fn next_logits(&self, tokens: &[usize], cross: &CrossCache) -> Vec<f32> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &self.device);
        let hidden = self.model.decoder.hidden(t, cross);
        let [_, n, d] = hidden.dims();
        let last = hidden.slice(s![.., n - 1..n, ..]).reshape([1, d]);
        self.model.decoder.logits(last).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits")
    }
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
