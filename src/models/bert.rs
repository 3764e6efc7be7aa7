//! BERT-family encoders: BERT (MiniLM and other `model_type = "bert"` checkpoints), RoBERTa,
//! XLM-RoBERTa and CamemBERT, ELECTRA and DistilBERT. They are one architecture (post-LayerNorm
//! blocks of self-attention and a two-layer feed-forward) with a few switches, told by the
//! [`Family`]: RoBERTa's positions start after its padding index, DistilBERT has no token types,
//! ELECTRA projects smaller embeddings up to the hidden size. The family also names the
//! checkpoint keys and shapes the sequence-classification head.
//!
//! Field names follow BERT's Hugging Face module tree so that a parameter's burn path maps onto
//! its BERT key with three renames (see [`checkpoint_key`]): `self_attn` ↔ `self` (a Rust keyword)
//! and `layer_norm.{gamma,beta}` ↔ `LayerNorm.{weight,bias}`; dense weights are transposed.
//! [`Family::key`] renames further for the other families.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, relu, tanh};
use serde::{Deserialize, Serialize};

use super::encoder_family::Family;
use super::encoder_family::{DistilBertConfig, MODEL_TYPES};
use crate::data::batch::EncoderInput;
use crate::nn::dense::Dense;
use crate::nn::dropout::dropout;
use crate::nn::layer_norm::LayerNorm;
use crate::ops::attention_softmax::scaled_masked_softmax;
use crate::ops::matmul::matmul;

/// Mirrors the fields of a BERT `config.json` that the architecture needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// ELECTRA: the width of the embeddings when it differs from `hidden_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// Told by `model_type`, not a field of `config.json`.
    #[serde(skip)]
    pub family: Family,
}

pub(super) fn default_act() -> String {
    "gelu".into()
}
pub(super) fn default_dropout() -> f64 {
    0.1
}
pub(super) fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
pub(super) fn default_pos_type() -> String {
    "absolute".into()
}
pub(super) fn default_init_range() -> f64 {
    0.02
}

impl BertConfig {
    /// Check the combinations this implementation supports, with a message a user can act on.
    /// The config of a BERT-family model directory (`model_type = "bert"`), checked.
    pub fn read(dir: &super::ModelDir) -> anyhow::Result<Self> {
        use anyhow::Context;
        let raw = dir.raw_config()?;
        let path = dir.config_path();
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("bert").to_string();
        let Some(family) = Family::from_model_type(&model_type) else {
            anyhow::bail!(
                "{}: model_type '{model_type}' is not supported yet; finetune loads the encoders {} for classification, \
                 and the decoders {} for causal LM",
                path.display(),
                MODEL_TYPES.join(", "),
                super::llama::MODEL_TYPES.join(", ")
            );
        };
        let not_a = || format!("{}: not a {model_type} config", path.display());
        let mut cfg: BertConfig = if family == Family::DistilBert {
            serde_json::from_value::<DistilBertConfig>(raw).with_context(not_a)?.into()
        } else {
            serde_json::from_value(raw).with_context(not_a)?
        };
        cfg.family = family;
        cfg.validate().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    /// The number of parameters this config describes (as the checkpoint must hold them).
    pub fn parameters(&self) -> u128 {
        let (h, i, e) = (self.hidden_size as u128, self.intermediate_size as u128, self.embedding_width() as u128);
        let types = if self.family == Family::DistilBert { 0 } else { self.type_vocab_size };
        let embeddings = (self.vocab_size + self.max_position_embeddings + types) as u128 * e;
        let project = if e == h { 0 } else { e * h };
        embeddings + project + self.num_hidden_layers as u128 * (4 * h * h + 2 * h * i)
    }

    /// The width of the embedding tables (ELECTRA's `embedding_size`, else `hidden_size`).
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// How many positions a sequence may use: the position table less RoBERTa's offset.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings.saturating_sub(self.family.position_offset(self.pad_token_id))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        super::check_sizes(&[
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 20),
            ("type_vocab_size", self.type_vocab_size, 1 << 10),
            ("embedding_size", self.embedding_width(), 1 << 16),
        ])?;
        anyhow::ensure!(
            self.max_positions() >= 1 && self.pad_token_id < self.vocab_size,
            "pad_token_id {} must be below vocab_size {} (and, for RoBERTa, leave room in max_position_embeddings {})",
            self.pad_token_id,
            self.vocab_size,
            self.max_position_embeddings
        );
        anyhow::ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        anyhow::ensure!(
            self.position_embedding_type == "absolute",
            "position_embedding_type '{}' is not supported (only 'absolute')",
            self.position_embedding_type
        );
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }
}

/// The feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// Exact (erf) GELU, `hidden_act = "gelu"`.
    Gelu,
    /// tanh approximation, `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
    /// The pooler's (not a `hidden_act` choice).
    Tanh,
}

impl Activation {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => anyhow::bail!("hidden_act '{other}' is not supported (gelu, gelu_new, relu)"),
        })
    }
    pub(super) fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu(x),
            Self::GeluTanh => gelu_approximate(x),
            Self::Relu => relu(x),
            Self::Tanh => tanh(x),
        }
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    /// Absent in DistilBERT.
    pub token_type_embeddings: Option<Embedding>,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
    /// ELECTRA: embedding width → hidden size, when they differ.
    pub embeddings_project: Option<Dense>,
    /// Position id of the first token (RoBERTa: `padding_idx + 1`).
    #[module(skip)]
    pub position_offset: usize,
    /// Padding id: RoBERTa gives padding tokens the position `padding_idx`.
    #[module(skip)]
    pub pad_token_id: usize,
}

#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Dense,
    pub key: Dense,
    pub value: Dense,
    pub dropout: Dropout,
    pub num_heads: usize,
}

/// Dense projection, dropout, residual add and LayerNorm (`BertSelfOutput` and `BertOutput`).
#[derive(Module, Debug)]
pub struct BertResidualOutput {
    pub dense: Dense,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_attn: BertSelfAttention,
    pub output: BertResidualOutput,
}

#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Dense,
    #[module(skip)]
    pub activation: Activation,
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertResidualOutput,
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

/// `activation(dense(h_CLS))`: the pooler of `BertModel` (tanh), or the dense layer of the other
/// families' classification heads (RoBERTa tanh, ELECTRA GELU, DistilBERT ReLU).
#[derive(Module, Debug)]
pub struct BertPooler {
    pub dense: Dense,
    #[module(skip)]
    pub activation: Activation,
}

#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub pooler: Option<BertPooler>,
    #[module(skip)]
    pub family: Family,
}

fn linear(cfg: &BertConfig, d_in: usize, d_out: usize, device: &Device) -> Dense {
    Dense::new(d_in, d_out, cfg.initializer_range, true, device)
}

fn layer_norm(cfg: &BertConfig, device: &Device) -> LayerNorm {
    LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, device)
}

fn embedding(cfg: &BertConfig, n: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(n, cfg.embedding_width())
        .with_initializer(Initializer::Normal { mean: 0.0, std: cfg.initializer_range })
        .init(device)
}

fn residual_output(cfg: &BertConfig, d_in: usize, device: &Device) -> BertResidualOutput {
    BertResidualOutput {
        dense: linear(cfg, d_in, cfg.hidden_size, device),
        layer_norm: layer_norm(cfg, device),
        dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
    }
}

impl BertModel {
    /// A randomly initialised model (HF's init: N(0, initializer_range), zero bias, unit LayerNorm).
    /// Parameters are lazy, so loading a checkpoint afterwards never pays for this init.
    pub fn new(cfg: &BertConfig, with_pooler: bool, device: &Device) -> anyhow::Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let activation = Activation::parse(&cfg.hidden_act)?;
        let family = cfg.family;
        let layer = (0..cfg.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: linear(cfg, h, h, device),
                        key: linear(cfg, h, h, device),
                        value: linear(cfg, h, h, device),
                        dropout: DropoutConfig::new(cfg.attention_probs_dropout_prob).init(),
                        num_heads: cfg.num_attention_heads,
                    },
                    output: BertResidualOutput {
                        // DistilBERT has no dropout between attention and its residual.
                        dropout: DropoutConfig::new(if family == Family::DistilBert {
                            0.0
                        } else {
                            cfg.hidden_dropout_prob
                        })
                        .init(),
                        ..residual_output(cfg, h, device)
                    },
                },
                intermediate: BertIntermediate { dense: linear(cfg, h, cfg.intermediate_size, device), activation },
                output: residual_output(cfg, cfg.intermediate_size, device),
            })
            .collect();
        let e = cfg.embedding_width();
        Ok(Self {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(cfg, cfg.vocab_size, device),
                position_embeddings: embedding(cfg, cfg.max_position_embeddings, device),
                token_type_embeddings: (family != Family::DistilBert)
                    .then(|| embedding(cfg, cfg.type_vocab_size, device)),
                layer_norm: LayerNorm::new(e, cfg.layer_norm_eps, device),
                dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
                embeddings_project: (e != h).then(|| linear(cfg, e, h, device)),
                position_offset: family.position_offset(cfg.pad_token_id),
                pad_token_id: cfg.pad_token_id,
            },
            encoder: BertEncoder { layer },
            pooler: with_pooler
                .then(|| BertPooler { dense: linear(cfg, h, h, device), activation: family.pooler_activation() }),
            family,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// Last hidden states `[batch, seq, hidden]`.
    pub fn forward(&self, input: &EncoderInput) -> Tensor<3> {
        let e = &self.embeddings;
        let words = e.word_embeddings.forward(input.input_ids.clone());
        let positions = e.position_ids(&input.input_ids);
        let x = e.forward_positioned(words, positions, input.token_type_ids.clone());
        self.encoder.forward(x, input.attention_mask.clone())
    }

    /// Hidden states from word-level embeddings `[b, l, h]` (which may include soft-prompt rows).
    pub fn forward_words(&self, words: Tensor<3>, token_type_ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        let x = self.embeddings.forward_from_words(words, token_type_ids);
        self.encoder.forward(x, mask)
    }

    /// The pooler output `activation(W h_CLS + b)`; `None` when the model has no pooler.
    pub fn pool(&self, hidden: &Tensor<3>) -> Option<Tensor<2>> {
        let pooler = self.pooler.as_ref()?;
        let [b, _, h] = hidden.dims();
        let cls = hidden.clone().slice(s![.., 0..1, ..]).reshape([b, h]);
        Some(pooler.activation.apply(pooler.dense.forward(cls)))
    }
}

impl BertEmbeddings {
    /// Position ids of token ids `[b, l]`: `0..l`, or RoBERTa's (fairseq's) numbering from
    /// `padding_idx + 1` over the non-padding tokens, padding at `padding_idx`.
    pub fn position_ids(&self, input_ids: &Tensor<2, Int>) -> Tensor<2, Int> {
        let [b, l] = input_ids.dims();
        if self.position_offset == 0 {
            return Tensor::<1, Int>::arange(0..l as i64, &input_ids.device()).unsqueeze::<2>().expand([b, l]);
        }
        let real = input_ids.clone().not_equal_elem(self.pad_token_id as i64).int();
        (real.clone().cumsum(1) * real).add_scalar(self.pad_token_id as i64)
    }

    /// Add position and segment embeddings to word (or soft-prompt) embeddings `[b, l, h]`, at
    /// positions `offset..offset + l` (transformers' numbering when it is given embeddings).
    pub fn forward_from_words(&self, words: Tensor<3>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l, _] = words.dims();
        let start = self.position_offset as i64;
        let positions =
            Tensor::<1, Int>::arange(start..start + l as i64, &words.device()).unsqueeze::<2>().expand([b, l]);
        self.forward_positioned(words, positions, token_type_ids)
    }

    fn forward_positioned(
        &self,
        words: Tensor<3>,
        positions: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
    ) -> Tensor<3> {
        let mut x = words + self.position_embeddings.forward(positions);
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(token_type_ids);
        }
        let x = dropout(&self.dropout, self.layer_norm.forward(x));
        match &self.embeddings_project {
            Some(project) => project.forward(x),
            None => x,
        }
    }
}

impl BertEncoder {
    /// `mask` is `[batch, seq]` with 1 for real tokens and 0 for padding.
    pub fn forward(&self, mut x: Tensor<3>, mask: Tensor<2>) -> Tensor<3> {
        let [b, l] = mask.dims();
        // Additive bias: 0 where attended, a large negative number on padding keys.
        let bias = (mask - 1.0).mul_scalar(1e9).reshape([b, 1, 1, l]);
        for layer in &self.layer {
            x = layer.forward(x, bias.clone());
        }
        x
    }
}

impl BertLayer {
    pub fn forward(&self, x: Tensor<3>, attention_bias: Tensor<4>) -> Tensor<3> {
        let context = self.attention.self_attn.forward(x.clone(), attention_bias);
        let attended = self.attention.output.forward(context, x);
        let inner = self.intermediate.activation.apply(self.intermediate.dense.forward(attended.clone()));
        self.output.forward(inner, attended)
    }
}

impl BertSelfAttention {
    pub fn forward(&self, x: Tensor<3>, attention_bias: Tensor<4>) -> Tensor<3> {
        let [b, l, h] = x.dims();
        let heads = self.num_heads;
        let dh = h / heads;
        let split = |t: Tensor<3>| t.reshape([b, l, heads, dh]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        let scores = matmul(q, k.swap_dims(2, 3));
        let probs = scaled_masked_softmax(scores, 1.0 / (dh as f32).sqrt(), Some(attention_bias));
        let probs = dropout(&self.dropout, probs);
        matmul(probs, v).swap_dims(1, 2).reshape([b, l, h])
    }
}

impl BertResidualOutput {
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm.forward(dropout(&self.dropout, self.dense.forward(x)) + residual)
    }
}

/// Linear layers by checkpoint module name (`roberta.encoder.layer.0.attention.self.query`,
/// `distilbert.transformer.layer.0.attention.q_lin`, `classifier.dense`, ...).
impl BertModel {
    pub fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out: Vec<(String, &Dense)> = Vec::new();
        if let Some(d) = &self.embeddings.embeddings_project {
            out.push(("embeddings.embeddings_project".into(), d));
        }
        for (i, l) in self.encoder.layer.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            out.push((format!("{p}.attention.self_attn.query"), &l.attention.self_attn.query));
            out.push((format!("{p}.attention.self_attn.key"), &l.attention.self_attn.key));
            out.push((format!("{p}.attention.self_attn.value"), &l.attention.self_attn.value));
            out.push((format!("{p}.attention.output.dense"), &l.attention.output.dense));
            out.push((format!("{p}.intermediate.dense"), &l.intermediate.dense));
            out.push((format!("{p}.output.dense"), &l.output.dense));
        }
        if let Some(p) = &self.pooler {
            out.push(("pooler.dense".into(), &p.dense));
        }
        out.into_iter().map(|(p, d)| (self.module_name(&p), d)).collect()
    }
    pub fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let family = self.family;
        let mut out: Vec<(String, &mut Dense)> = Vec::new();
        if let Some(d) = &mut self.embeddings.embeddings_project {
            out.push(("embeddings.embeddings_project".into(), d));
        }
        for (i, l) in self.encoder.layer.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            out.push((format!("{p}.attention.self_attn.query"), &mut l.attention.self_attn.query));
            out.push((format!("{p}.attention.self_attn.key"), &mut l.attention.self_attn.key));
            out.push((format!("{p}.attention.self_attn.value"), &mut l.attention.self_attn.value));
            out.push((format!("{p}.attention.output.dense"), &mut l.attention.output.dense));
            out.push((format!("{p}.intermediate.dense"), &mut l.intermediate.dense));
            out.push((format!("{p}.output.dense"), &mut l.output.dense));
        }
        if let Some(p) = &mut self.pooler {
            out.push(("pooler.dense".into(), &mut p.dense));
        }
        out.into_iter().map(|(p, d)| (module_name(family, &p), d)).collect()
    }

    /// The checkpoint module name of a module path inside the model.
    pub fn module_name(&self, path: &str) -> String {
        module_name(self.family, path)
    }
}

fn module_name(family: Family, path: &str) -> String {
    let key = family.key(&format!("{path}.weight"));
    key.strip_suffix(".weight").unwrap_or(&key).to_string()
}

/// The Hugging Face key of a parameter given its path inside [`BertModel`].
pub fn checkpoint_key(path: &str) -> String {
    path.replace("self_attn.", "self.")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias")
}

/// The key older (TF-converted) BERT checkpoints use for the same parameter, if it differs.
pub fn legacy_checkpoint_key(path: &str) -> Option<String> {
    path.contains("layer_norm.").then(|| {
        path.replace("self_attn.", "self.")
            .replace("layer_norm.gamma", "LayerNorm.gamma")
            .replace("layer_norm.beta", "LayerNorm.beta")
    })
}
