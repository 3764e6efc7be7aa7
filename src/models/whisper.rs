//! Whisper (encoder-decoder speech recognition) as Hugging Face `transformers` builds it
//! (`WhisperForConditionalGeneration`), with its checkpoint keys (`model.encoder.layers.0.fc1.weight`,
//! ...), plus a converter from the CTranslate2 format that faster-whisper models ship in.
//!
//! Encoder: two 1-D convolutions over the log-Mel spectrogram (the second halves the frame
//! rate, 3,000 → 1,500), GELU, fixed sinusoidal positions, pre-LayerNorm transformer layers.
//! Decoder: token and learned position embeddings, pre-LayerNorm layers with causal
//! self-attention and cross-attention to the encoder, logits through the tied token embedding.

use super::{Format, LoadReport, ModelDir, load_weights};
use crate::io::WeightSource;
use crate::io::ctranslate2::Ct2Model;
use crate::io::safetensors::{HostTensor, SafetensorsFile};
use crate::nn::dense::Dense;
use crate::nn::layer_norm::LayerNorm;
use crate::ops::attention_softmax::scaled_masked_softmax;
use crate::ops::matmul::matmul;
use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, EmbeddingConfig, PaddingConfig1d};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The fields of a Whisper `config.json` the architecture and decoding need.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhisperConfig {
    #[serde(default = "whisper")]
    pub model_type: String,
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    #[serde(default = "default_source_positions")]
    pub max_source_positions: usize,
    #[serde(default = "default_target_positions")]
    pub max_target_positions: usize,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    pub eos_token_id: usize,
    pub decoder_start_token_id: usize,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    /// Tokens never generated (generation config).
    #[serde(default)]
    pub suppress_tokens: Vec<usize>,
    /// Tokens not generated as the first token (generation config).
    #[serde(default)]
    pub begin_suppress_tokens: Vec<usize>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn whisper() -> String {
    "whisper".into()
}
fn default_source_positions() -> usize {
    1500
}
fn default_target_positions() -> usize {
    448
}
fn default_activation() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

impl WhisperConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.model_type == "whisper", "model_type '{}' is not whisper", self.model_type);
        ensure!(
            self.activation_function == "gelu",
            "activation_function '{}' is not supported (gelu)",
            self.activation_function
        );
        ensure!(!self.scale_embedding, "scale_embedding = true is not supported");
        ensure!(self.tie_word_embeddings, "untied output projections are not supported");
        super::check_sizes(&[
            ("vocab_size", self.vocab_size, 1 << 20),
            ("num_mel_bins", self.num_mel_bins, 1 << 10),
            ("d_model", self.d_model, 1 << 14),
            ("encoder_layers", self.encoder_layers, 1 << 8),
            ("decoder_layers", self.decoder_layers, 1 << 8),
            ("encoder_attention_heads", self.encoder_attention_heads, 1 << 8),
            ("decoder_attention_heads", self.decoder_attention_heads, 1 << 8),
            ("encoder_ffn_dim", self.encoder_ffn_dim, 1 << 16),
            ("decoder_ffn_dim", self.decoder_ffn_dim, 1 << 16),
            ("max_source_positions", self.max_source_positions, 1 << 16),
            ("max_target_positions", self.max_target_positions, 1 << 16),
        ])?;
        for (name, id) in [("eos_token_id", self.eos_token_id), ("decoder_start_token_id", self.decoder_start_token_id)]
        {
            ensure!(id < self.vocab_size, "{name} = {id} is outside the vocabulary of {}", self.vocab_size);
        }
        for (d, h) in [(self.d_model, self.encoder_attention_heads), (self.d_model, self.decoder_attention_heads)] {
            ensure!(h > 0 && d % h == 0, "d_model {d} is not a multiple of {h} heads");
        }
        Ok(())
    }

    /// Multilingual checkpoints have language tokens; English-only (`.en`) ones do not.
    pub fn is_multilingual(&self) -> bool {
        self.vocab_size >= 51865
    }
}

#[derive(Module, Debug)]
pub struct WhisperAttention {
    pub q_proj: Dense,
    /// No bias, as in Whisper.
    pub k_proj: Dense,
    pub v_proj: Dense,
    pub out_proj: Dense,
    #[module(skip)]
    pub num_heads: usize,
}

impl WhisperAttention {
    fn new(d: usize, heads: usize, device: &Device) -> Self {
        let std = 0.02;
        Self {
            q_proj: Dense::new(d, d, std, true, device),
            k_proj: Dense::new(d, d, std, false, device),
            v_proj: Dense::new(d, d, std, true, device),
            out_proj: Dense::new(d, d, std, true, device),
            num_heads: heads,
        }
    }

    /// The four projections under `prefix` (`...self_attn.q_proj`, ...).
    pub fn projections(&self, prefix: &str) -> Vec<(String, &Dense)> {
        let Self { q_proj, k_proj, v_proj, out_proj, .. } = self;
        [("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj), ("out_proj", out_proj)]
            .into_iter()
            .map(|(n, d)| (format!("{prefix}.{n}"), d))
            .collect()
    }

    pub fn projections_mut(&mut self, prefix: &str) -> Vec<(String, &mut Dense)> {
        let Self { q_proj, k_proj, v_proj, out_proj, .. } = self;
        [("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj), ("out_proj", out_proj)]
            .into_iter()
            .map(|(n, d)| (format!("{prefix}.{n}"), d))
            .collect()
    }

    fn split(&self, t: Tensor<3>) -> Tensor<4> {
        let [b, l, d] = t.dims();
        t.reshape([b, l, self.num_heads, d / self.num_heads]).swap_dims(1, 2)
    }

    /// Keys and values `[b, heads, s, dh]` of `source` (cached for cross-attention).
    pub fn keys_values(&self, source: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (self.split(self.k_proj.forward(source.clone())), self.split(self.v_proj.forward(source)))
    }

    /// Attend from `x [b, l, d]` to `kv`; `mask` is an additive `[l, s]` bias (causal).
    pub fn forward(&self, x: Tensor<3>, kv: (Tensor<4>, Tensor<4>), mask: Option<Tensor<2>>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let dh = d / self.num_heads;
        let q = self.split(self.q_proj.forward(x)).mul_scalar(1.0 / (dh as f64).sqrt());
        let scores = matmul(q, kv.0.swap_dims(2, 3));
        let probs = scaled_masked_softmax(scores, 1.0, mask.map(|m| m.unsqueeze::<4>()));
        let context = matmul(probs, kv.1).swap_dims(1, 2).reshape([b, l, d]);
        self.out_proj.forward(context)
    }
}

fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    LayerNorm::new(d, 1e-5, device)
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: WhisperAttention,
    pub self_attn_layer_norm: LayerNorm,
    pub fc1: Dense,
    pub fc2: Dense,
    pub final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        let x = x + self.self_attn.forward(h.clone(), self.self_attn.keys_values(h), None);
        let h = self.final_layer_norm.forward(x.clone());
        x + self.fc2.forward(gelu(self.fc1.forward(h)))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: WhisperAttention,
    pub self_attn_layer_norm: LayerNorm,
    pub encoder_attn: WhisperAttention,
    pub encoder_attn_layer_norm: LayerNorm,
    pub fc1: Dense,
    pub fc2: Dense,
    pub final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn forward(&self, x: Tensor<3>, cross: (Tensor<4>, Tensor<4>), causal: Tensor<2>) -> Tensor<3> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        let x = x + self.self_attn.forward(h.clone(), self.self_attn.keys_values(h), Some(causal));
        let h = self.encoder_attn_layer_norm.forward(x.clone());
        let x = x + self.encoder_attn.forward(h, cross, None);
        let h = self.final_layer_norm.forward(x.clone());
        x + self.fc2.forward(gelu(self.fc1.forward(h)))
    }
}

impl DecoderLayer {
    /// The layer on new positions `x [b, n, d]` given the self-attention keys/values of the
    /// positions before them (`cache`, extended in place); `mask [n, past + n]` is causal.
    fn forward_cached(
        &self,
        x: Tensor<3>,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
        cross: (Tensor<4>, Tensor<4>),
        mask: Option<Tensor<2>>,
    ) -> Tensor<3> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        let (k, v) = self.self_attn.keys_values(h.clone());
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let x = x + self.self_attn.forward(h, (k, v), mask);
        let h = self.encoder_attn_layer_norm.forward(x.clone());
        let x = x + self.encoder_attn.forward(h, cross, None);
        let h = self.final_layer_norm.forward(x.clone());
        x + self.fc2.forward(gelu(self.fc1.forward(h)))
    }
}

/// Self-attention keys and values of the tokens decoded so far, per decoder layer.
pub type SelfCache = Vec<Option<(Tensor<4>, Tensor<4>)>>;

#[derive(Module, Debug)]
pub struct WhisperEncoder {
    pub conv1: Conv1d,
    pub conv2: Conv1d,
    pub embed_positions: Embedding,
    pub layers: Vec<EncoderLayer>,
    pub layer_norm: LayerNorm,
}

impl WhisperEncoder {
    /// `mel [b, n_mels, 3000]` → hidden states `[b, 1500, d]`.
    pub fn forward(&self, mel: Tensor<3>) -> Tensor<3> {
        let x = gelu(self.conv1.forward(mel));
        let x = gelu(self.conv2.forward(x)).swap_dims(1, 2);
        let [_, frames, d] = x.dims();
        let positions = self.embed_positions.weight.val().slice(s![0..frames, ..]).reshape([1, frames, d]);
        let x = self.layers.iter().fold(x + positions, |x, l| l.forward(x));
        self.layer_norm.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct WhisperDecoder {
    pub embed_tokens: Embedding,
    pub embed_positions: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub layer_norm: LayerNorm,
}

/// Cross-attention keys and values of every decoder layer for one encoder output.
pub type CrossCache = Vec<(Tensor<4>, Tensor<4>)>;

impl WhisperDecoder {
    /// Keys and values of `encoded` for each layer's cross-attention (computed once per audio).
    pub fn cross_cache(&self, encoded: Tensor<3>) -> CrossCache {
        self.layers.iter().map(|l| l.encoder_attn.keys_values(encoded.clone())).collect()
    }

    /// `tokens [b, t]` → logits `[b, t, vocab]`.
    pub fn forward(&self, tokens: Tensor<2, Int>, cross: &CrossCache) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let hidden = self.hidden(tokens, cross);
        let d = hidden.dims()[2];
        let logits = self.logits(hidden.reshape([b * t, d]));
        let vocab = logits.dims()[1];
        logits.reshape([b, t, vocab])
    }

    /// Final hidden states `[b, t, d]` (after the last LayerNorm).
    pub fn hidden(&self, tokens: Tensor<2, Int>, cross: &CrossCache) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let device = tokens.device();
        let d = self.embed_tokens.weight.dims()[1];
        let positions = self.embed_positions.weight.val().slice(s![0..t, ..]).reshape([1, t, d]);
        let x = self.embed_tokens.forward(tokens) + positions;
        let causal = Tensor::<2>::ones([t, t], &device).triu(1).mul_scalar(-1e9);
        let x = self.layers.iter().zip(cross).fold(x, |x, (l, kv)| l.forward(x, kv.clone(), causal.clone()));
        self.layer_norm.forward(x)
    }

    /// Final hidden states `[b, n, d]` of `tokens` that follow `past` already decoded positions
    /// (whose keys/values are in `cache`, which is extended): incremental decoding.
    pub fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        past: usize,
        cache: &mut SelfCache,
        cross: &CrossCache,
    ) -> Tensor<3> {
        let [_, n] = tokens.dims();
        let device = tokens.device();
        let d = self.embed_tokens.weight.dims()[1];
        let positions = self.embed_positions.weight.val().slice(s![past..past + n, ..]).reshape([1, n, d]);
        let mut x = self.embed_tokens.forward(tokens) + positions;
        // New position i may see every past position and new positions up to itself.
        let mask = (n > 1).then(|| Tensor::<2>::ones([n, past + n], &device).triu(past as i64 + 1).mul_scalar(-1e9));
        cache.resize(self.layers.len(), None);
        for ((l, kv), c) in self.layers.iter().zip(cross).zip(cache.iter_mut()) {
            x = l.forward_cached(x, c, kv.clone(), mask.clone());
        }
        self.layer_norm.forward(x)
    }

    /// Hidden states `[n, d]` → logits `[n, vocab]` through the tied token embedding.
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        matmul(hidden, self.embed_tokens.weight.val().transpose())
    }
}

#[derive(Module, Debug)]
pub struct Whisper {
    pub encoder: WhisperEncoder,
    pub decoder: WhisperDecoder,
}

impl Whisper {
    pub fn new(cfg: &WhisperConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let conv = |c_in: usize, stride: usize| {
            Conv1dConfig::new(c_in, d, 3).with_stride(stride).with_padding(PaddingConfig1d::Explicit(1, 1)).init(device)
        };
        let embedding = |n: usize| EmbeddingConfig::new(n, d).init(device);
        let ffn = |dim: usize| (Dense::new(d, dim, 0.02, true, device), Dense::new(dim, d, 0.02, true, device));
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|_| {
                let (fc1, fc2) = ffn(cfg.encoder_ffn_dim);
                EncoderLayer {
                    self_attn: WhisperAttention::new(d, cfg.encoder_attention_heads, device),
                    self_attn_layer_norm: layer_norm(d, device),
                    fc1,
                    fc2,
                    final_layer_norm: layer_norm(d, device),
                }
            })
            .collect();
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|_| {
                let (fc1, fc2) = ffn(cfg.decoder_ffn_dim);
                DecoderLayer {
                    self_attn: WhisperAttention::new(d, cfg.decoder_attention_heads, device),
                    self_attn_layer_norm: layer_norm(d, device),
                    encoder_attn: WhisperAttention::new(d, cfg.decoder_attention_heads, device),
                    encoder_attn_layer_norm: layer_norm(d, device),
                    fc1,
                    fc2,
                    final_layer_norm: layer_norm(d, device),
                }
            })
            .collect();
        Ok(Self {
            encoder: WhisperEncoder {
                conv1: conv(cfg.num_mel_bins, 1),
                conv2: conv(d, 2),
                embed_positions: embedding(cfg.max_source_positions),
                layers: encoder_layers,
                layer_norm: layer_norm(d, device),
            },
            decoder: WhisperDecoder {
                embed_tokens: embedding(cfg.vocab_size),
                embed_positions: embedding(cfg.max_target_positions),
                layers: decoder_layers,
                layer_norm: layer_norm(d, device),
            },
        })
    }
}

/// Whisper's encoder with mean pooling over frames and a classification head, laid out as
/// `transformers`' `WhisperForAudioClassification` without its projector (keys `encoder.*`,
/// `classifier.*`).
#[derive(Module, Debug)]
pub struct WhisperAudioClassifier {
    pub encoder: WhisperEncoder,
    pub head: crate::nn::classification_head::ClassificationHead,
}

impl WhisperAudioClassifier {
    /// `mel [b, n_mels, frames]` → the encoder output averaged over time `[b, d]`.
    pub fn features(&self, mel: Tensor<3>) -> Tensor<2> {
        let h = self.encoder.forward(mel);
        let [b, _, d] = h.dims();
        h.mean_dim(1).reshape([b, d])
    }

    pub fn forward(&self, mel: Tensor<3>) -> Tensor<2> {
        self.head.forward(self.features(mel))
    }

    /// Load the encoder of a Whisper checkpoint (`model.encoder.*`) or of a fine-tuned audio
    /// classifier (`encoder.*`, with `classifier.*` when `keep_head`).
    pub fn load(
        files: &ModelDir,
        config: &WhisperConfig,
        num_labels: usize,
        dropout: f64,
        keep_head: bool,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let full = Whisper::new(config, device)?;
        let model = Self {
            encoder: full.encoder,
            head: crate::nn::classification_head::ClassificationHead::new(
                config.d_model,
                num_labels,
                dropout,
                0.02,
                device,
            ),
        };
        let weights = weights(files)?;
        let fine_tuned = weights.contains("encoder.conv1.weight");
        let (model, mut report) = load_weights(model, &weights, |info| {
            if info.path.starts_with("head.") {
                return (if keep_head { vec![classifier_checkpoint_key(&info.path)] } else { Vec::new() }, !keep_head);
            }
            let key = classifier_checkpoint_key(&info.path);
            (vec![if fine_tuned { key } else { format!("model.{key}") }], false)
        })?;
        // A speech-recognition checkpoint's decoder is not used.
        report.unused.retain(|k| !k.starts_with("model.decoder.") && k != "proj_out.weight");
        Ok((model, report))
    }
}

/// The key of a [`WhisperAudioClassifier`] parameter (`encoder.*`, `classifier.*`).
pub fn classifier_checkpoint_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("head.classifier.") {
        return format!("classifier.{rest}");
    }
    checkpoint_key(path).trim_start_matches("model.").to_string()
}

impl super::Adaptable for WhisperAudioClassifier {
    fn checkpoint_key(&self, path: &str) -> String {
        classifier_checkpoint_key(path)
    }

    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out = Vec::new();
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let p = format!("encoder.layers.{i}");
            let a = &l.self_attn;
            for (n, d) in
                [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("out_proj", &a.out_proj)]
            {
                out.push((format!("{p}.self_attn.{n}"), d));
            }
            out.push((format!("{p}.fc1"), &l.fc1));
            out.push((format!("{p}.fc2"), &l.fc2));
        }
        out
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let mut out = Vec::new();
        for (i, l) in self.encoder.layers.iter_mut().enumerate() {
            let p = format!("encoder.layers.{i}");
            out.extend(l.self_attn.projections_mut(&format!("{p}.self_attn")));
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        out
    }
}

impl super::Adaptable for Whisper {
    fn checkpoint_key(&self, path: &str) -> String {
        checkpoint_key(path)
    }

    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out = Vec::new();
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let p = format!("model.encoder.layers.{i}");
            out.extend(l.self_attn.projections(&format!("{p}.self_attn")));
            out.push((format!("{p}.fc1"), &l.fc1));
            out.push((format!("{p}.fc2"), &l.fc2));
        }
        for (i, l) in self.decoder.layers.iter().enumerate() {
            let p = format!("model.decoder.layers.{i}");
            out.extend(l.self_attn.projections(&format!("{p}.self_attn")));
            out.extend(l.encoder_attn.projections(&format!("{p}.encoder_attn")));
            out.push((format!("{p}.fc1"), &l.fc1));
            out.push((format!("{p}.fc2"), &l.fc2));
        }
        out
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let mut out = Vec::new();
        for (i, l) in self.encoder.layers.iter_mut().enumerate() {
            let p = format!("model.encoder.layers.{i}");
            out.extend(l.self_attn.projections_mut(&format!("{p}.self_attn")));
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        for (i, l) in self.decoder.layers.iter_mut().enumerate() {
            let p = format!("model.decoder.layers.{i}");
            out.extend(l.self_attn.projections_mut(&format!("{p}.self_attn")));
            out.extend(l.encoder_attn.projections_mut(&format!("{p}.encoder_attn")));
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        out
    }
}

/// The Hugging Face key of a parameter path inside [`Whisper`].
pub fn checkpoint_key(path: &str) -> String {
    format!(
        "model.{}",
        path.replace("layer_norm.gamma", "layer_norm.weight").replace("layer_norm.beta", "layer_norm.bias")
    )
}

impl WhisperConfig {
    /// The config of a Whisper model: `config.json` (with `generation_config.json`'s suppression
    /// lists), or derived from a CTranslate2 `model.bin`. `tokenizer.json` must be beside it.
    pub fn read(dir: &ModelDir) -> Result<Self> {
        let tokenizer = dir.tokenizer_path();
        ensure!(tokenizer.is_file(), "{}: no tokenizer.json next to the model", dir.dir.display());
        match &dir.format {
            Format::CTranslate2(_) => ct2_config(&Ct2Model::open(&dir.dir)?, &tokenizer),
            Format::Safetensors(_) => {
                let config_path = dir.config_path();
                let text = std::fs::read_to_string(&config_path)
                    .with_context(|| format!("reading {}", config_path.display()))?;
                let mut config: WhisperConfig = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a Whisper config", config_path.display()))?;
                // transformers keeps the suppression lists in generation_config.json.
                if let Ok(text) = std::fs::read_to_string(dir.dir.join("generation_config.json")) {
                    let g: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    let ids = |k: &str| -> Option<Vec<usize>> { serde_json::from_value(g.get(k)?.clone()).ok() };
                    if config.suppress_tokens.is_empty() {
                        config.suppress_tokens = ids("suppress_tokens").unwrap_or_default();
                    }
                    if config.begin_suppress_tokens.is_empty() {
                        config.begin_suppress_tokens = ids("begin_suppress_tokens").unwrap_or_default();
                    }
                }
                config.validate().with_context(|| config_path.display().to_string())?;
                Ok(config)
            }
            _ => bail!("{}: a Whisper model is model.safetensors or CTranslate2's model.bin", dir.dir.display()),
        }
    }
}

/// The checkpoint tensors of a Whisper model under Hugging Face keys.
pub fn weights(dir: &ModelDir) -> Result<Box<dyn WeightSource>> {
    Ok(match &dir.format {
        Format::CTranslate2(path) => Box::new(HostWeights {
            describe: path.display().to_string(),
            tensors: ct2_tensors(&Ct2Model::open(&dir.dir)?)?,
        }),
        _ => Box::new(dir.weights()?),
    })
}

/// A Whisper model with its pretrained weights.
pub fn load(dir: &ModelDir, config: &WhisperConfig, device: &Device) -> Result<(Whisper, LoadReport)> {
    let model = Whisper::new(config, device)?;
    let (model, mut report) = load_weights(model, &weights(dir)?, |info| (vec![checkpoint_key(&info.path)], false))?;
    // The output projection is tied to the token embedding.
    report.unused.retain(|k| k != "proj_out.weight");
    Ok((model, report))
}

/// Tensors held in memory (a converted checkpoint).
pub struct HostWeights {
    pub describe: String,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl WeightSource for HostWeights {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.tensors.get(key).with_context(|| format!("{}: no tensor '{key}'", self.describe))?;
        ensure!(t.shape == expected, "{}: '{key}' has shape {:?}, expected {expected:?}", self.describe, t.shape);
        Ok(t.clone())
    }
}

/// The id of a special token in `tokenizer.json`.
pub fn special_token(tokenizer: &Path, content: &str) -> Result<usize> {
    let text = std::fs::read_to_string(tokenizer).with_context(|| format!("reading {}", tokenizer.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", tokenizer.display()))?;
    v["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["content"] == content))
        .and_then(|t| t["id"].as_u64())
        .map(|id| id as usize)
        .with_context(|| format!("{}: no special token {content}", tokenizer.display()))
}

/// The Hugging Face config of a CTranslate2 Whisper model: sizes from its variables, flags
/// checked against what this implementation computes, suppression lists from its config.json.
fn ct2_config(m: &Ct2Model, tokenizer: &Path) -> Result<WhisperConfig> {
    ensure!(m.spec == "WhisperSpec", "{}: spec '{}' is not WhisperSpec", m.path.display(), m.spec);
    for (flag, want) in
        [("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0), ("decoder/activation", 3)]
    {
        if m.variables.contains_key(flag) {
            let got = m.scalar(flag)?;
            ensure!(
                got == want,
                "{}: {flag} = {got}; Whisper as converted by CTranslate2 has {want}",
                m.path.display()
            );
        }
    }
    let count = |prefix: &str| {
        (0..).take_while(|i| m.variables.contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))).count()
    };
    let shape = |name: &str| {
        m.variables.get(name).map(|v| v.shape.clone()).with_context(|| format!("{}: no '{name}'", m.path.display()))
    };
    let embed = shape("decoder/embeddings/weight")?;
    let conv1 = shape("encoder/conv1/weight")?;
    let extra: serde_json::Value = std::fs::read_to_string(m.path.with_file_name("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let ids = |k: &str| -> Vec<usize> { serde_json::from_value(extra[k].clone()).unwrap_or_default() };
    let eos = special_token(tokenizer, "<|endoftext|>")?;
    let sot = special_token(tokenizer, "<|startoftranscript|>")?;
    let config = WhisperConfig {
        model_type: "whisper".into(),
        vocab_size: embed[0],
        num_mel_bins: conv1[1],
        d_model: embed[1],
        encoder_layers: count("encoder"),
        encoder_attention_heads: m.scalar("encoder/num_heads")? as usize,
        decoder_layers: count("decoder"),
        decoder_attention_heads: m.scalar("decoder/num_heads")? as usize,
        encoder_ffn_dim: shape("encoder/layer_0/ffn/linear_0/weight")?[0],
        decoder_ffn_dim: shape("decoder/layer_0/ffn/linear_0/weight")?[0],
        max_source_positions: shape("encoder/position_encodings/encodings")?[0],
        max_target_positions: shape("decoder/position_encodings/encodings")?[0],
        activation_function: "gelu".into(),
        scale_embedding: false,
        eos_token_id: eos,
        decoder_start_token_id: sot,
        pad_token_id: Some(eos),
        bos_token_id: Some(eos),
        suppress_tokens: ids("suppress_ids"),
        begin_suppress_tokens: ids("suppress_ids_begin"),
        tie_word_embeddings: true,
    };
    config.validate()?;
    Ok(config)
}

/// A CTranslate2 Whisper model's tensors under Hugging Face keys: fused q/k/v (self-attention)
/// and k/v (cross-attention) projections split, keys without bias (CTranslate2 stores a zero
/// one, which is checked), LayerNorm and FFN names mapped.
pub fn ct2_tensors(m: &Ct2Model) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    let rows = |t: &HostTensor, from: usize, n: usize| -> HostTensor {
        let cols: usize = t.shape[1..].iter().product();
        let mut shape = t.shape.clone();
        shape[0] = n;
        HostTensor::new(shape, t.data[from * cols..(from + n) * cols].to_vec())
    };
    let mut put = |key: String, t: HostTensor| {
        out.insert(key, t);
    };
    let norm = |src: &str, dst: &str, put: &mut dyn FnMut(String, HostTensor)| -> Result<()> {
        put(format!("{dst}.weight"), m.tensor(&format!("{src}/gamma"))?);
        put(format!("{dst}.bias"), m.tensor(&format!("{src}/beta"))?);
        Ok(())
    };
    let linear = |src: &str, dst: &str, put: &mut dyn FnMut(String, HostTensor)| -> Result<()> {
        put(format!("{dst}.weight"), m.tensor(&format!("{src}/weight"))?);
        put(format!("{dst}.bias"), m.tensor(&format!("{src}/bias"))?);
        Ok(())
    };
    // Split a fused projection into `names` (each d rows); a `k_proj` keeps no bias, and its
    // bias in the file must be zero.
    let split = |src: &str, dst: &str, names: &[&str], put: &mut dyn FnMut(String, HostTensor)| -> Result<()> {
        let w = m.tensor(&format!("{src}/weight"))?;
        let b = m.tensor(&format!("{src}/bias"))?;
        let d = w.shape[0] / names.len();
        for (i, name) in names.iter().enumerate() {
            put(format!("{dst}.{name}.weight"), rows(&w, i * d, d));
            let bias = rows(&b, i * d, d);
            if *name == "k_proj" {
                ensure!(bias.data.iter().all(|v| *v == 0.0), "{src}: non-zero key bias; Whisper's keys have none");
            } else {
                put(format!("{dst}.{name}.bias"), bias);
            }
        }
        Ok(())
    };
    for side in ["encoder", "decoder"] {
        let n =
            (0..).take_while(|i| m.variables.contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight"))).count();
        ensure!(n > 0, "{}: no {side} layers", m.path.display());
        for i in 0..n {
            let (s, d) = (format!("{side}/layer_{i}"), format!("model.{side}.layers.{i}"));
            norm(&format!("{s}/self_attention/layer_norm"), &format!("{d}.self_attn_layer_norm"), &mut put)?;
            split(
                &format!("{s}/self_attention/linear_0"),
                &format!("{d}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
                &mut put,
            )?;
            linear(&format!("{s}/self_attention/linear_1"), &format!("{d}.self_attn.out_proj"), &mut put)?;
            if side == "decoder" {
                norm(&format!("{s}/attention/layer_norm"), &format!("{d}.encoder_attn_layer_norm"), &mut put)?;
                linear(&format!("{s}/attention/linear_0"), &format!("{d}.encoder_attn.q_proj"), &mut put)?;
                split(
                    &format!("{s}/attention/linear_1"),
                    &format!("{d}.encoder_attn"),
                    &["k_proj", "v_proj"],
                    &mut put,
                )?;
                linear(&format!("{s}/attention/linear_2"), &format!("{d}.encoder_attn.out_proj"), &mut put)?;
            }
            norm(&format!("{s}/ffn/layer_norm"), &format!("{d}.final_layer_norm"), &mut put)?;
            linear(&format!("{s}/ffn/linear_0"), &format!("{d}.fc1"), &mut put)?;
            linear(&format!("{s}/ffn/linear_1"), &format!("{d}.fc2"), &mut put)?;
        }
        norm(&format!("{side}/layer_norm"), &format!("model.{side}.layer_norm"), &mut put)?;
        put(format!("model.{side}.embed_positions.weight"), m.tensor(&format!("{side}/position_encodings/encodings"))?);
    }
    for conv in ["conv1", "conv2"] {
        linear(&format!("encoder/{conv}"), &format!("model.encoder.{conv}"), &mut put)?;
    }
    put("model.decoder.embed_tokens.weight".into(), m.tensor("decoder/embeddings/weight")?);
    Ok(out)
}

/// Write a Hugging Face Whisper directory from any Whisper model (CTranslate2's included):
/// `config.json`, `generation_config.json`, `preprocessor_config.json`, `model.safetensors`,
/// `tokenizer.json`.
pub fn convert(src: &ModelDir, config: &WhisperConfig, out: &Path) -> Result<()> {
    let tensors: Vec<(String, HostTensor)> = match &src.format {
        Format::CTranslate2(_) => ct2_tensors(&Ct2Model::open(&src.dir)?)?.into_iter().collect(),
        _ => {
            let f = SafetensorsFile::open(&src.weights_path())?;
            f.names().into_iter().map(|n| f.tensor(&n).map(|t| (n, t))).collect::<Result<_>>()?
        }
    };
    write_hf_dir(src, config, out, &tensors)
}

/// A model in memory (e.g. fine-tuned, adapters merged) as a Hugging Face directory next to the
/// configuration and tokenizer of `src`.
pub fn save_model(model: &Whisper, src: &ModelDir, config: &WhisperConfig, out: &Path) -> Result<()> {
    write_hf_dir(src, config, out, &super::checkpoint_tensors(model, checkpoint_key, |_| true))
}

fn write_hf_dir(src: &ModelDir, c: &WhisperConfig, out: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = serde_json::to_value(c)?;
    config["architectures"] = serde_json::json!(["WhisperForConditionalGeneration"]);
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        crate::io::atomic::write_atomic(&out.join(name), serde_json::to_string_pretty(v)?.as_bytes())
    };
    write("config.json", &config)?;
    write(
        "generation_config.json",
        &serde_json::json!({
            "decoder_start_token_id": c.decoder_start_token_id,
            "eos_token_id": c.eos_token_id,
            "pad_token_id": c.pad_token_id,
            "bos_token_id": c.bos_token_id,
            "suppress_tokens": c.suppress_tokens,
            "begin_suppress_tokens": c.begin_suppress_tokens,
            "no_timestamps_token_id": special_token(&src.tokenizer_path(), "<|notimestamps|>")?,
            "max_length": c.max_target_positions,
            "is_multilingual": c.is_multilingual(),
        }),
    )?;
    write(
        "preprocessor_config.json",
        &serde_json::json!({
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": c.num_mel_bins,
            "sampling_rate": crate::data::log_mel::SAMPLE_RATE,
            "hop_length": crate::data::log_mel::HOP,
            "n_fft": crate::data::log_mel::N_FFT,
            "chunk_length": 30,
            "n_samples": crate::data::log_mel::CHUNK_SAMPLES,
            "nb_max_frames": crate::data::log_mel::N_FRAMES,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": false,
        }),
    )?;
    crate::io::safetensors::write_safetensors(&out.join("model.safetensors"), tensors, None)?;
    if src.tokenizer_path() != out.join("tokenizer.json") {
        std::fs::copy(src.tokenizer_path(), out.join("tokenizer.json")).context("copying tokenizer.json")?;
    }
    Ok(())
}

/// Write a fine-tuned audio classifier: `config.json` (the base's Whisper config with `id2label`
/// and what finetune did), `model.safetensors` (`encoder.*`, `classifier.*`), `tokenizer.json`.
pub fn save_classifier(
    model: &WhisperAudioClassifier,
    base: &ModelDir,
    base_config: &WhisperConfig,
    labels: &[String],
    meta: serde_json::Value,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = serde_json::to_value(base_config)?;
    config["architectures"] = serde_json::json!(["WhisperForAudioClassification"]);
    config["id2label"] = labels.iter().enumerate().map(|(i, l)| (i.to_string(), serde_json::json!(l))).collect();
    config["label2id"] = labels.iter().enumerate().map(|(i, l)| (l.clone(), serde_json::json!(i))).collect();
    config["finetune"] = meta;
    crate::io::atomic::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    crate::io::safetensors::write_safetensors(
        &out.join("model.safetensors"),
        &super::checkpoint_tensors(model, classifier_checkpoint_key, |_| true),
        None,
    )?;
    std::fs::copy(base.tokenizer_path(), out.join("tokenizer.json")).context("copying tokenizer.json")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keys_rename_layer_norms_only() {
        assert_eq!(
            checkpoint_key("encoder.layers.0.self_attn_layer_norm.gamma"),
            "model.encoder.layers.0.self_attn_layer_norm.weight"
        );
        assert_eq!(checkpoint_key("decoder.layer_norm.beta"), "model.decoder.layer_norm.bias");
        assert_eq!(
            checkpoint_key("decoder.layers.1.encoder_attn.k_proj.weight"),
            "model.decoder.layers.1.encoder_attn.k_proj.weight"
        );
    }
}
