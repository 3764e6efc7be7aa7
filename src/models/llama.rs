//! Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, ...): RMSNorm, rotary position
//! embeddings, grouped-query attention, SwiGLU feed-forward, optionally tied input/output
//! embeddings, causal attention with a KV cache for generation.
//!
//! The same file holds the families that differ from Llama in a few switches, each read from
//! `config.json` as transformers does (tiny fixtures: scripts/make_decoder_fixtures.py):
//! - Qwen2 (`model_type = "qwen2"`): biases on q/k/v (not o);
//! - Qwen3 (`"qwen3"`): RMSNorm over each head's queries and keys before RoPE (`q_norm`,
//!   `k_norm`);
//! - Mistral (`"mistral"`) and any config with `layer_types`: sliding-window attention (a query
//!   sees the last `sliding_window` positions);
//! - Gemma 3 (`"gemma3_text"`): embeddings scaled by √hidden, RMSNorms that multiply by
//!   `1 + w`, norms before and after both attention and MLP, GeGLU (tanh GELU), q/k norms,
//!   attention scaled by `query_pre_attn_scalar^-½`, sliding-window layers with their own RoPE
//!   base (`rope_parameters` per layer type), optional final logit soft-capping;
//! - Phi-3 (`"phi3"`): fused `qkv_proj` and `gate_up_proj` (what peft targets on it), RoPE on
//!   the first `partial_rotary_factor` of each head (Phi-4-mini: 0.75);
//! - GPT-2 (`"gpt2"`, config and checkpoint names in `gpt2.rs`): LayerNorm with biases,
//!   learned position embeddings (`embed_positions`) and no RoPE, fused `qkv_proj` (`c_attn`),
//!   a non-gated tanh-GELU MLP (`up_proj` = `c_fc`), biases everywhere, tied embeddings;
//! - RoPE scaling: `rope_type = "linear"` (positions divided by `factor`) and `"llama3"`
//!   (Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp
//!   between).
//!
//! Field names follow `transformers`' `LlamaForCausalLM`, so a parameter's burn path *is* its
//! checkpoint key (`model.layers.0.self_attn.q_proj.weight`; GPT-2 renames them, `gpt2.rs`);
//! dense weights are transposed.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::nn::dense::Dense;
use crate::nn::soft_prompt::SoftPrompt;
use crate::ops::attention_softmax::scaled_masked_softmax;
use crate::ops::checkpoint::{BlockFn, checkpoint};
use crate::ops::matmul::matmul;

/// Mirrors the fields of a Llama `config.json` that the architecture needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta`; 5.x writes `rope_parameters.rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or a list of ids.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// `llama`, `mistral`, `qwen2`, `qwen3` (absent: llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2's switch for `sliding_window` (false: full attention everywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Per layer, `"full_attention"` or `"sliding_attention"` (transformers 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Phi-3: the share of each head's dimensions that RoPE rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Gemma: `gelu_pytorch_tanh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores scaled by `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
}

/// The decoder families this file implements.
pub const MODEL_TYPES: [&str; 7] = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text", "gpt2"];

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}
fn default_init_range() -> f64 {
    0.02
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|p| p.get("full_attention").unwrap_or(p))
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    pub fn model_type(&self) -> &str {
        self.model_type.as_deref().unwrap_or("llama")
    }

    /// Biases on the q/k/v projections (Qwen2 always has them), and on o.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type() == "qwen2"
    }

    /// The attention window of layer `layer`: `Some(w)` when it attends to the last `w`
    /// positions only.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match &self.layer_types {
            Some(types) => types.get(layer).filter(|t| *t == "sliding_attention").and(self.sliding_window),
            None if self.use_sliding_window == Some(false) => None,
            None => self.sliding_window,
        }
    }

    /// The RoPE settings (`rope_parameters` in transformers 5, `rope_scaling` before; Gemma 3:
    /// one entry per layer type, the global layers' here).
    fn rope(&self) -> Option<&serde_json::Value> {
        let params = self.rope_parameters.as_ref().map(|p| p.get("full_attention").unwrap_or(p));
        params.filter(|p| p.get("rope_type").is_some_and(|t| t != "default")).or(self.rope_scaling.as_ref())
    }

    /// Gemma 3's sliding-window layers' RoPE (their own base, no scaling), if the config has
    /// RoPE parameters per layer type.
    pub fn local_inv_freq(&self) -> Option<Vec<f32>> {
        let local = self.rope_parameters.as_ref()?.get("sliding_attention")?;
        let theta = local.get("rope_theta").and_then(|v| v.as_f64()).unwrap_or(10_000.0);
        let d = self.rotary_dim();
        Some((0..d / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32).collect())
    }

    pub fn is_gemma(&self) -> bool {
        self.model_type() == "gemma3_text"
    }

    /// Phi-3's fused projections (`qkv_proj`, `gate_up_proj`).
    pub fn fused(&self) -> bool {
        self.model_type() == "phi3"
    }

    /// GPT-2: LayerNorm, learned positions, fused `c_attn`, non-gated MLP (see `gpt2.rs`).
    pub fn is_gpt2(&self) -> bool {
        self.model_type() == "gpt2"
    }

    /// The dimensions of each head that RoPE rotates (all, unless `partial_rotary_factor`).
    pub fn rotary_dim(&self) -> usize {
        let in_rope =
            self.rope_parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).and_then(|v| v.as_f64());
        let f = self.partial_rotary_factor.or(in_rope).unwrap_or(1.0);
        ((self.head_dim() as f64 * f) as usize).max(2) & !1
    }

    /// RoPE's inverse frequencies `θ^(-2i/d)` (`d` the rotary dimension), scaled as the config
    /// says.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rotary_dim();
        let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / self.rope_theta().powf((2 * i) as f64 / d as f64)).collect();
        let Some(rope) = self.rope() else { return base.iter().map(|&f| f as f32).collect() };
        let num = |k: &str, default: f64| rope.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
        let factor = num("factor", 1.0);
        match rope.get("rope_type").or_else(|| rope.get("type")).and_then(|v| v.as_str()) {
            Some("linear") => base.iter().map(|&f| (f / factor) as f32).collect(),
            Some("llama3") => {
                let (low, high) = (num("low_freq_factor", 1.0), num("high_freq_factor", 4.0));
                let old = num("original_max_position_embeddings", 8192.0);
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled as f32;
                        }
                        let smooth = (old / wavelen - low) / (high - low);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    })
                    .collect()
            }
            _ => base.iter().map(|&f| f as f32).collect(),
        }
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            _ => Vec::new(),
        }
    }

    /// The number of parameters this config describes (as the checkpoint must hold them).
    pub fn parameters(&self) -> u128 {
        let (h, i) = (self.hidden_size as u128, self.intermediate_size as u128);
        let heads = self.num_attention_heads.max(1) as u128;
        let head_dim = self.head_dim.map_or(h / heads, |d| d as u128);
        let attention = h * head_dim * (2 * heads + 2 * self.num_kv_heads() as u128);
        let heads_out = if self.tie_word_embeddings { 1 } else { 2 };
        // GPT-2: two MLP matrices, not three, and a table of learned positions.
        let (mlp, positions) = if self.is_gpt2() { (2, self.max_position_embeddings as u128 * h) } else { (3, 0) };
        heads_out * self.vocab_size as u128 * h + positions + self.num_hidden_layers as u128 * (attention + mlp * h * i)
    }

    /// Check the combinations this implementation supports, with a message a user can act on.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        super::check_sizes(&[
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_kv_heads(), 1 << 10),
            ("head_dim", self.head_dim(), 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ])?;
        let act = if self.is_gemma() {
            self.hidden_activation.as_deref().unwrap_or("gelu_pytorch_tanh")
        } else {
            &self.hidden_act
        };
        let expected = match self.model_type() {
            "gemma3_text" => "gelu_pytorch_tanh",
            "gpt2" => "gelu_new",
            _ => "silu",
        };
        ensure!(act == expected, "activation '{act}' is not supported for {} ('{expected}')", self.model_type());
        ensure!(self.attn_logit_softcapping.is_none(), "attn_logit_softcapping (Gemma 2) is not supported yet");
        ensure!(
            MODEL_TYPES.contains(&self.model_type()),
            "model_type '{}' is not a decoder finetune supports yet ({})",
            self.model_type(),
            MODEL_TYPES.join(", ")
        );
        if let Some(types) = &self.layer_types {
            ensure!(
                types.len() == self.num_hidden_layers,
                "layer_types has {} entries for {} layers",
                types.len(),
                self.num_hidden_layers
            );
            for t in types {
                ensure!(
                    matches!(t.as_str(), "full_attention" | "sliding_attention"),
                    "layer_types: '{t}' is not supported (full_attention, sliding_attention)"
                );
            }
        }
        ensure!(self.sliding_window != Some(0), "sliding_window = 0: must be at least 1 (or null)");
        if let Some(f) = self.partial_rotary_factor {
            ensure!(f > 0.0 && f <= 1.0, "partial_rotary_factor = {f}: must be in (0, 1]");
        }
        ensure!(
            self.num_attention_heads.is_multiple_of(self.num_kv_heads()),
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            self.num_attention_heads,
            self.num_kv_heads()
        );
        ensure!(
            self.is_gpt2() || self.head_dim().is_multiple_of(2),
            "head_dim {} must be even for rotary embeddings",
            self.head_dim()
        );
        let per_type = self.rope_parameters.as_ref().and_then(|p| p.get("full_attention")).into_iter();
        for rope in [self.rope_scaling.as_ref(), self.rope_parameters.as_ref()].into_iter().flatten().chain(per_type) {
            let kind = rope.get("rope_type").or_else(|| rope.get("type")).and_then(|v| v.as_str());
            ensure!(
                matches!(kind, None | Some("default" | "linear" | "llama3")),
                "rope scaling '{}' is not supported yet (default, linear, llama3)",
                kind.unwrap_or_default()
            );
            if matches!(kind, Some("linear" | "llama3")) {
                let factor = rope.get("factor").and_then(|v| v.as_f64()).unwrap_or(0.0);
                ensure!(factor > 0.0 && factor.is_finite(), "rope scaling factor {factor}: must be positive");
            }
        }
        Ok(())
    }
}

/// RMSNorm, `x / sqrt(mean(x²) + eps) · weight`, or with a bias LayerNorm (GPT-2),
/// `(x - mean) / sqrt(var + eps) · weight + bias`; computed in f32 (as transformers does).
#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub eps: f64,
    /// Gemma: the scale is `1 + weight` (the checkpoint stores the offset from 1).
    pub unit_offset: bool,
}

impl Norm {
    fn rms(dim: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Initializer::Ones.init([dim], device), bias: None, eps, unit_offset: false }
    }

    fn gemma(dim: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Initializer::Zeros.init([dim], device), bias: None, eps, unit_offset: true }
    }

    fn layer_norm(dim: usize, eps: f64, device: &Device) -> Self {
        let bias = Some(Initializer::Zeros.init([dim], device));
        Self { weight: Initializer::Ones.init([dim], device), bias, eps, unit_offset: false }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val();
        let w = if self.unit_offset { w.add_scalar(1.0) } else { w };
        match &self.bias {
            Some(b) => {
                let centred = x.clone() - x.mean_dim(D - 1);
                let std = centred.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt();
                (centred / std) * w.unsqueeze::<D>() + b.val().unsqueeze::<D>()
            }
            None => {
                let rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt();
                (x / rms) * w.unsqueeze::<D>()
            }
        }
    }
}

#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Separate projections, or Phi-3's fused `qkv_proj` (q, then k, then v rows).
    pub q_proj: Option<Dense>,
    pub k_proj: Option<Dense>,
    pub v_proj: Option<Dense>,
    pub qkv_proj: Option<Dense>,
    pub o_proj: Dense,
    /// Qwen3: RMSNorm over each head's queries / keys.
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The scale of `q·k` (`head_dim^-½`, Gemma: `query_pre_attn_scalar^-½`).
    pub scaling: f64,
}

#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Separate, or Phi-3's fused `gate_up_proj` (gate rows, then up rows); GPT-2 has no
    /// gate (`up_proj` alone is `c_fc`).
    pub gate_proj: Option<Dense>,
    pub up_proj: Option<Dense>,
    pub gate_up_proj: Option<Dense>,
    pub down_proj: Dense,
    /// Gemma's GeGLU (tanh-approximated GELU) instead of SwiGLU.
    pub gelu: bool,
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`).
fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let inner =
        (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.clone().mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

impl LlamaAttention {
    /// The linear layers by their checkpoint names, in checkpoint order.
    fn projections(&self) -> Vec<(&'static str, &Dense)> {
        [("q_proj", &self.q_proj), ("k_proj", &self.k_proj), ("v_proj", &self.v_proj), ("qkv_proj", &self.qkv_proj)]
            .into_iter()
            .filter_map(|(n, d)| d.as_ref().map(|d| (n, d)))
            .chain([("o_proj", &self.o_proj)])
            .collect()
    }
    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Dense)> {
        [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("qkv_proj", &mut self.qkv_proj),
        ]
        .into_iter()
        .filter_map(|(n, d)| d.as_mut().map(|d| (n, d)))
        .chain([("o_proj", &mut self.o_proj)])
        .collect()
    }
}

impl LlamaMlp {
    fn projections(&self) -> Vec<(&'static str, &Dense)> {
        [("gate_proj", &self.gate_proj), ("up_proj", &self.up_proj), ("gate_up_proj", &self.gate_up_proj)]
            .into_iter()
            .filter_map(|(n, d)| d.as_ref().map(|d| (n, d)))
            .chain([("down_proj", &self.down_proj)])
            .collect()
    }
    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Dense)> {
        [("gate_proj", &mut self.gate_proj), ("up_proj", &mut self.up_proj), ("gate_up_proj", &mut self.gate_up_proj)]
            .into_iter()
            .filter_map(|(n, d)| d.as_mut().map(|d| (n, d)))
            .chain([("down_proj", &mut self.down_proj)])
            .collect()
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), _, _) => {
                let both = fused.forward(x);
                let [b, l, two] = both.dims();
                (both.clone().slice(s![0..b, 0..l, 0..two / 2]), both.slice(s![0..b, 0..l, two / 2..two]))
            }
            (None, Some(g), Some(u)) => (g.forward(x.clone()), u.forward(x)),
            (None, None, Some(u)) => return self.down_proj.forward(gelu_tanh(u.forward(x))),
            _ => unreachable!("an MLP has an up projection"),
        };
        let gate = if self.gelu { gelu_tanh(gate) } else { silu(gate) };
        self.down_proj.forward(gate * up)
    }
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    pub self_attn: LlamaAttention,
    pub mlp: LlamaMlp,
    pub input_layernorm: Norm,
    pub post_attention_layernorm: Norm,
    /// Attend to the last `w` positions only (sliding-window layers).
    pub window: Option<usize>,
    /// Gemma: norms around the MLP (and `post_attention_layernorm` then normalises the
    /// attention output instead of the MLP input).
    pub pre_feedforward_layernorm: Option<Norm>,
    pub post_feedforward_layernorm: Option<Norm>,
    /// Gemma 3: this layer uses the sliding-window RoPE base.
    pub local_rope: bool,
}

#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    /// GPT-2's learned position embeddings (the others use RoPE).
    pub embed_positions: Option<Embedding>,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: Norm,
}

#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// `None` when the output projection is the (tied) input embedding.
    pub lm_head: Option<Dense>,
    /// RoPE's inverse frequencies, scaling applied.
    pub inv_freq: Vec<f32>,
    /// Prompt tuning: virtual tokens before the input (peft's `CAUSAL_LM` prompt tuning: they
    /// take positions `0..n`, the text follows; outputs are the text's positions only).
    pub prompt: Option<SoftPrompt>,
    /// Gemma: word embeddings are multiplied by √hidden.
    pub embed_scale: f64,
    /// Gemma 3: the sliding-window layers' RoPE frequencies.
    pub local_inv_freq: Option<Vec<f32>>,
    /// `tanh(logits / c) · c` when set.
    pub final_softcap: Option<f64>,
    /// GPT-2: checkpoint keys are GPT-2's (`gpt2::checkpoint_key`), its linear layers `Conv1D`s.
    pub gpt2: bool,
    /// Training: each decoder layer keeps only its input and is computed again in the backward
    /// pass (`ops::checkpoint`; `[training] gradient_checkpointing`).
    pub gradient_checkpointing: bool,
}

/// Keys and values of the positions seen so far, per layer (`[batch, kv_heads, t, head_dim]`).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// cos/sin tables `[1, 1, len, head_dim]` for positions `start..start + len`, as transformers
/// builds them (`inv_freq = θ^(-2i/d)`, the two halves repeated).
#[derive(Clone)]
struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    /// Tables for each row of a left-padded batch: row `r`'s positions are shifted back by its
    /// padding `pad[r]` (transformers' `position_ids = cumsum(mask) - 1`), `[b, 1, len, d]`.
    fn rows(inv_freq: &[f32], start: usize, len: usize, pad: &[usize], device: &Device) -> Self {
        let head_dim = 2 * inv_freq.len();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in pad {
            for pos in start..start + len {
                let pos = pos.saturating_sub(p);
                for _half in 0..2 {
                    for f in inv_freq {
                        let angle = pos as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [pad.len(), 1, len, head_dim]), device);
        Self { cos: t(cos), sin: t(sin) }
    }

    fn new(inv_freq: &[f32], start: usize, len: usize, device: &Device) -> Self {
        let head_dim = 2 * inv_freq.len();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for p in start..start + len {
            for _half in 0..2 {
                for f in inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, len, head_dim]), device);
        Self { cos: t(cos), sin: t(sin) }
    }

    /// `x·cos + rotate_half(x)·sin` for `x [b, heads, len, head_dim]`, on the first
    /// rotary dimensions only when they are fewer than the head's (partial RoPE).
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, d] = x.dims();
        let r = self.cos.dims()[3];
        if r < d {
            let pass = x.clone().slice(s![.., .., .., r..d]);
            return Tensor::cat(vec![self.apply(x.slice(s![.., .., .., 0..r])), pass], 3);
        }
        let x1 = x.clone().slice(s![.., .., .., 0..d / 2]);
        let x2 = x.clone().slice(s![.., .., .., d / 2..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Position ids `[b, len]` of positions `start..start + len` (learned position embeddings);
/// row `r` of a left-padded batch is shifted back by its padding `pad[r]`, as for RoPE.
fn positions(b: usize, start: usize, len: usize, pad: Option<&[usize]>, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..b)
        .flat_map(|r| {
            let p = pad.map_or(0, |p| p[r]);
            (start..start + len).map(move |pos| pos.saturating_sub(p) as i64)
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [b, len]), device)
}

/// Additive causal mask `[1, 1, len, start + len]`: query `i` (at position `start + i`) sees keys
/// `0..=start + i`, and with a `window` only the last `window` of them (transformers:
/// `q - k < window`).
fn causal_bias(start: usize, len: usize, window: Option<usize>, device: &Device) -> Tensor<4> {
    let total = start + len;
    let mut bias = vec![0f32; len * total];
    for i in 0..len {
        let q = start + i;
        for j in 0..total {
            if j > q || window.is_some_and(|w| q - j >= w) {
                bias[i * total + j] = -1e9;
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [1, 1, len, total]), device)
}

/// [`causal_bias`] for a left-padded batch: row `r` also hides its first `pad[r]` keys (the
/// padding), `[b, 1, len, start + len]`.
fn padded_causal_bias(start: usize, len: usize, window: Option<usize>, pad: &[usize], device: &Device) -> Tensor<4> {
    let causal = causal_bias(start, len, window, device);
    let total = start + len;
    let mut hide = vec![0f32; pad.len() * len * total];
    for (r, &p) in pad.iter().enumerate() {
        for i in 0..len {
            for j in 0..p.min(total) {
                hide[(r * len + i) * total + j] = -1e9;
            }
        }
    }
    causal + Tensor::from_data(TensorData::new(hide, [pad.len(), 1, len, total]), device)
}

impl LlamaForCausalLM {
    /// A randomly initialised model (transformers' init: N(0, initializer_range), unit norms).
    /// Parameters are lazy, so loading a checkpoint afterwards never pays for this init.
    pub fn new(cfg: &LlamaConfig, device: &Device) -> anyhow::Result<Self> {
        cfg.validate()?;
        let (h, dh) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let std = cfg.initializer_range;
        let dense = |i: usize, o: usize, bias: bool| Dense::new(i, o, std, bias, device);
        let gemma = cfg.is_gemma();
        let qk_norm = matches!(cfg.model_type(), "qwen3" | "gemma3_text");
        let gpt2 = cfg.is_gpt2();
        let norm = |d: usize| match () {
            _ if gemma => Norm::gemma(d, cfg.rms_norm_eps, device),
            _ if gpt2 => Norm::layer_norm(d, cfg.rms_norm_eps, device),
            _ => Norm::rms(d, cfg.rms_norm_eps, device),
        };
        let scaling = cfg.query_pre_attn_scalar.unwrap_or(dh as f64).powf(-0.5);
        let (fused, split) = (cfg.fused() || gpt2, !cfg.fused() && !gpt2);
        let i_size = cfg.intermediate_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: split.then(|| dense(h, nh * dh, cfg.qkv_bias())),
                    k_proj: split.then(|| dense(h, nkv * dh, cfg.qkv_bias())),
                    v_proj: split.then(|| dense(h, nkv * dh, cfg.qkv_bias())),
                    qkv_proj: fused.then(|| dense(h, (nh + 2 * nkv) * dh, cfg.qkv_bias())),
                    o_proj: dense(nh * dh, h, cfg.attention_bias),
                    q_norm: qk_norm.then(|| norm(dh)),
                    k_norm: qk_norm.then(|| norm(dh)),
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: dh,
                    scaling,
                },
                mlp: LlamaMlp {
                    gate_proj: split.then(|| dense(h, i_size, cfg.mlp_bias)),
                    up_proj: (split || gpt2).then(|| dense(h, i_size, cfg.mlp_bias)),
                    gate_up_proj: (fused && !gpt2).then(|| dense(h, 2 * i_size, cfg.mlp_bias)),
                    down_proj: dense(i_size, h, cfg.mlp_bias),
                    gelu: gemma,
                },
                input_layernorm: norm(h),
                post_attention_layernorm: norm(h),
                window: cfg.window(i),
                pre_feedforward_layernorm: gemma.then(|| norm(h)),
                post_feedforward_layernorm: gemma.then(|| norm(h)),
                local_rope: cfg.window(i).is_some() && cfg.local_inv_freq().is_some(),
            })
            .collect();
        Ok(Self {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(cfg.vocab_size, h)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device),
                embed_positions: gpt2.then(|| {
                    EmbeddingConfig::new(cfg.max_position_embeddings, h)
                        .with_initializer(Initializer::Normal { mean: 0.0, std })
                        .init(device)
                }),
                layers,
                norm: norm(h),
            },
            lm_head: (!cfg.tie_word_embeddings).then(|| dense(h, cfg.vocab_size, false)),
            inv_freq: if gpt2 { Vec::new() } else { cfg.inv_freq() },
            prompt: None,
            embed_scale: if gemma { (h as f32).sqrt() as f64 } else { 1.0 },
            local_inv_freq: cfg.local_inv_freq(),
            final_softcap: cfg.final_logit_softcapping,
            gpt2,
            gradient_checkpointing: false,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape().as_slice()[0]
    }

    /// The positions a sequence may take (soft prompt included) where they are a learned table
    /// (GPT-2); RoPE models have no hard limit.
    pub fn max_positions(&self) -> Option<usize> {
        self.model.embed_positions.as_ref().map(|e| e.weight.lazy_shape().as_slice()[0])
    }

    /// The tokens a soft prompt puts before each sequence.
    pub fn virtual_tokens(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.embeddings.dims()[0])
    }

    /// How many tokens may follow a prompt of `prompt_len` tokens (at most `wanted`): a learned
    /// position table ends somewhere.
    pub fn room_after(&self, prompt_len: usize, wanted: usize) -> usize {
        match self.max_positions() {
            // The last token chosen needs no position of its own.
            Some(n) => wanted.min((n + 1).saturating_sub(prompt_len + self.virtual_tokens())),
            None => wanted,
        }
    }

    /// Final hidden states `[batch, len, hidden]` (after the last RMSNorm) of `ids [batch, len]`.
    /// With a cache, `ids` continue the cached positions and the cache is extended.
    pub fn hidden(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.hidden_padded(ids, cache, None)
    }

    /// [`Self::hidden`] for a batch whose rows are left-padded by `pad[r]` tokens (batched
    /// generation): padding is masked out of attention and each row's positions start at its
    /// first real token, as transformers does.
    pub fn hidden_padded(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>, pad: Option<&[usize]>) -> Tensor<3> {
        let pad = pad.filter(|p| p.iter().any(|&n| n > 0));
        let [b, mut len] = ids.dims();
        let device = ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.model.embed_tokens.forward(ids);
        if self.embed_scale != 1.0 {
            x = x.mul_scalar(self.embed_scale as f32);
        }
        // A soft prompt goes before the first chunk of a sequence (a cache continues after it).
        let virtual_tokens = match &self.prompt {
            Some(p) if start == 0 => {
                let [n, h] = p.embeddings.dims();
                x = Tensor::cat(vec![p.embeddings.val().unsqueeze::<3>().expand([b, n, h]), x], 1);
                len += n;
                n
            }
            _ => 0,
        };
        if let Some(table) = &self.model.embed_positions {
            x = x + table.forward(positions(b, start, len, pad, &device));
        }
        let make_rope = |inv_freq: &[f32]| match pad {
            Some(p) => Rope::rows(inv_freq, start, len, p, &device),
            None => Rope::new(inv_freq, start, len, &device),
        };
        let rope = (!self.inv_freq.is_empty()).then(|| make_rope(&self.inv_freq));
        let local_rope = self.local_inv_freq.as_deref().map(make_rope);
        let rope_of = |layer: &LlamaDecoderLayer| match (&local_rope, layer.local_rope) {
            (Some(r), true) => Some(r),
            _ => rope.as_ref(),
        };
        // One mask per distinct window (full attention: None).
        let mut masks: Vec<(Option<usize>, Tensor<4>)> = Vec::new();
        for layer in &self.model.layers {
            if !masks.iter().any(|(w, _)| *w == layer.window) {
                let bias = match pad {
                    Some(p) => padded_causal_bias(start, len, layer.window, p, &device),
                    None => causal_bias(start, len, layer.window, &device),
                };
                masks.push((layer.window, bias));
            }
        }
        let mask = |w: Option<usize>| &masks.iter().find(|(x, _)| *x == w).expect("built above").1;
        match cache {
            Some(cache) => {
                cache.layers.resize_with(self.model.layers.len(), || None);
                for (layer, kv) in self.model.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, rope_of(layer), mask(layer.window), Some(kv));
                }
            }
            None if self.gradient_checkpointing => {
                for layer in &self.model.layers {
                    let (rope, mask) = (rope_of(layer).cloned(), mask(layer.window).clone());
                    let f: BlockFn<LlamaDecoderLayer> =
                        Arc::new(move |layer, x| layer.forward(x, rope.as_ref(), &mask, None));
                    x = checkpoint(layer, x, f);
                }
            }
            None => {
                for layer in &self.model.layers {
                    x = layer.forward(x, rope_of(layer), mask(layer.window), None);
                }
            }
        }
        if virtual_tokens > 0 {
            let h = x.dims()[2];
            x = x.slice(s![.., virtual_tokens..len, 0..h]);
        }
        self.model.norm.forward(x)
    }

    /// Next-token logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => matmul(hidden, self.model.embed_tokens.weight.val().transpose()),
        };
        match self.final_softcap {
            Some(c) => logits.div_scalar(c as f32).tanh().mul_scalar(c as f32),
            None => logits,
        }
    }

    /// The output projection's `[vocab, hidden]` table when the logits are exactly
    /// `hidden · tableᵀ` (tied embeddings, no soft-capping): what a fused loss can take instead
    /// of [`Self::logits`].
    pub fn tied_output_table(&self) -> Option<Tensor<2>> {
        match (&self.lm_head, self.final_softcap) {
            (None, None) => Some(self.model.embed_tokens.weight.val()),
            _ => None,
        }
    }

    /// Logits `[batch, len, vocab]` of every position.
    pub fn forward(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let hidden = self.hidden(ids, cache);
        let [b, l, h] = hidden.dims();
        let logits = self.logits(hidden.reshape([b * l, h]));
        let v = logits.dims()[1];
        logits.reshape([b, l, v])
    }
}

impl LlamaDecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&Rope>,
        bias: &Tensor<4>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let attention = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, bias, cache);
        match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            // Gemma: every sublayer normalised on the way in and on the way out.
            (Some(pre), Some(post)) => {
                let attended = x + self.post_attention_layernorm.forward(attention);
                attended.clone() + post.forward(self.mlp.forward(pre.forward(attended)))
            }
            _ => {
                let attended = x + attention;
                let normed = self.post_attention_layernorm.forward(attended.clone());
                attended + self.mlp.forward(normed)
            }
        }
    }
}

impl LlamaAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&Rope>,
        bias: &Tensor<4>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let (nh, nkv, dh) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, l, n, dh]).swap_dims(1, 2);
        let norm = |n: &Option<Norm>, t: Tensor<4>| match n {
            Some(n) => n.forward(t),
            None => t,
        };
        let (q, k, v) = match (&self.qkv_proj, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(fused), ..) => {
                let all = fused.forward(x);
                let (qe, ke) = (nh * dh, (nh + nkv) * dh);
                let total = all.dims()[2];
                (
                    all.clone().slice(s![0..b, 0..l, 0..qe]),
                    all.clone().slice(s![0..b, 0..l, qe..ke]),
                    all.slice(s![0..b, 0..l, ke..total]),
                )
            }
            (None, Some(q), Some(k), Some(v)) => (q.forward(x.clone()), k.forward(x.clone()), v.forward(x)),
            _ => unreachable!("attention has q, k and v projections"),
        };
        let rotate = |t: Tensor<4>| match rope {
            Some(r) => r.apply(t),
            None => t,
        };
        let q = rotate(norm(&self.q_norm, heads(q, nh)));
        let mut k = rotate(norm(&self.k_norm, heads(k, nkv)));
        let mut v = heads(v, nkv);
        if let Some(slot) = cache {
            if let Some((k0, v0)) = slot.take() {
                k = Tensor::cat(vec![k0, k], 2);
                v = Tensor::cat(vec![v0, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let total = k.dims()[2];
        // Grouped-query attention without copying keys/values per query head: the `nh / nkv`
        // query heads that share a key/value head are stacked along the sequence axis.
        let group = nh / nkv;
        let q = q.reshape([b, nkv, group * l, dh]);
        let scores = matmul(q, k.swap_dims(2, 3)).reshape([b, nh, l, total]);
        let probs = scaled_masked_softmax(scores, self.scaling as f32, Some(bias.clone()));
        let probs = probs.reshape([b, nkv, group * l, total]);
        let context = matmul(probs, v).reshape([b, nh, l, dh]).swap_dims(1, 2).reshape([b, l, nh * dh]);
        self.o_proj.forward(context)
    }
}

impl super::Adaptable for LlamaForCausalLM {
    fn checkpoint_key(&self, path: &str) -> String {
        family_key(self.gpt2, path)
    }

    fn fan_in_fan_out(&self) -> bool {
        self.gpt2
    }

    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let key = |m: &str, n: &str| self.checkpoint_key(&format!("{p}.{m}.{n}"));
            out.extend(l.self_attn.projections().into_iter().map(|(n, d)| (key("self_attn", n), d)));
            out.extend(l.mlp.projections().into_iter().map(|(n, d)| (key("mlp", n), d)));
        }
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".into(), head));
        }
        out
    }
    fn output_layer(&self) -> Option<String> {
        Some("lm_head".into())
    }
    fn prompt_slot(&mut self) -> Option<super::PromptSlot<'_>> {
        Some(super::PromptSlot {
            word_embeddings: self.model.embed_tokens.weight.val(),
            num_layers: self.model.layers.len(),
            num_heads: self.model.layers.first().map_or(1, |l| l.self_attn.num_heads),
            prompt: &mut self.prompt,
        })
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let mut out = Vec::new();
        let gpt2 = self.gpt2;
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let key = |m: &str, n: &str| family_key(gpt2, &format!("{p}.{m}.{n}"));
            out.extend(l.self_attn.projections_mut().into_iter().map(|(n, d)| (key("self_attn", n), d)));
            out.extend(l.mlp.projections_mut().into_iter().map(|(n, d)| (key("mlp", n), d)));
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".into(), head));
        }
        out
    }
}

/// The checkpoint key of a burn path: GPT-2's own names, the same path for the others.
fn family_key(gpt2: bool, path: &str) -> String {
    if gpt2 { super::gpt2::checkpoint_key(path) } else { checkpoint_key(path) }
}

/// The Hugging Face key of a parameter given its burn path (they are the same by construction).
pub fn checkpoint_key(path: &str) -> String {
    path.to_string()
}

/// Rows of llama.cpp's Q/K projections are permuted so that the two rotary halves interleave
/// (`convert_hf_to_gguf.py`'s `permute`); this undoes it for an `[out, in]` matrix, giving
/// transformers' layout: within each head, row `2j + i` of the file becomes row `i·d/2 + j`.
pub fn unpermute_qk_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    unpermuted_row_order(rows, heads).iter().flat_map(|&src| &data[src * cols..(src + 1) * cols]).copied().collect()
}

/// transformers' Q/K rows `[rows, cols]` in llama.cpp's interleaved order (what
/// `convert_hf_to_gguf.py`'s `permute` does; the inverse of [`unpermute_qk_rows`]).
pub fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (hf_row, gguf_row) in unpermuted_row_order(rows, heads).into_iter().enumerate() {
        out[gguf_row * cols..(gguf_row + 1) * cols].copy_from_slice(&data[hf_row * cols..(hf_row + 1) * cols]);
    }
    out
}

/// For each row of transformers' layout, the row of llama.cpp's layout it comes from.
pub fn unpermuted_row_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                order[h * 2 * half + i * half + j] = h * 2 * half + 2 * j + i;
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2) — row h·d + 2j + i holds the
        // original row h·d + i·d/2 + j.
        let (heads, d, cols) = (3, 8, 2);
        let rows = heads * d;
        let original: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; original.len()];
        for h in 0..heads {
            for j in 0..d / 2 {
                for i in 0..2 {
                    let src = h * d + i * d / 2 + j;
                    let dst = h * d + 2 * j + i;
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&original[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_qk_rows(&permuted, rows, cols, heads), original);
    }

    #[test]
    fn config_reads_both_rope_theta_spellings_and_rejects_unknown_scaling() {
        let base = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1});
        let mut v4 = base.clone();
        v4["rope_theta"] = 500000.0.into();
        let c: LlamaConfig = serde_json::from_value(v4).unwrap();
        assert_eq!(c.rope_theta(), 500000.0);
        let mut v5 = base.clone();
        v5["rope_parameters"] = serde_json::json!({"rope_theta": 100000.0, "rope_type": "default"});
        let c: LlamaConfig = serde_json::from_value(v5).unwrap();
        assert_eq!(c.rope_theta(), 100000.0);
        c.validate().unwrap();
        let mut scaled = base;
        scaled["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 8.0});
        let c: LlamaConfig = serde_json::from_value(scaled).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("yarn"));
    }
}
