//! GPT-2 (`model_type = "gpt2"`: GPT-2, DistilGPT-2, and checkpoints trained from its class):
//! what differs from the Llama-family decoder in `llama.rs` is small enough to be switches
//! there — LayerNorm with biases instead of RMSNorm, learned position embeddings instead of
//! RoPE, one fused `c_attn` projection (q, then k, then v rows, as Phi-3's `qkv_proj`), a
//! non-gated MLP (`c_fc` → tanh GELU → `c_proj`), biases everywhere, tied output embeddings.
//! What this file holds is the rest: the `config.json` mirror (`n_embd`, `n_layer`, ...), the
//! checkpoint's own key names (`transformer.h.0.attn.c_attn.weight`), and its `Conv1D` layout.
//!
//! GPT-2's linear layers are `Conv1D` modules storing their weight as `[in, out]` (the transpose
//! of `nn.Linear`), which is what peft calls `fan_in_fan_out`. finetune's `Dense` keeps `[in, out]`
//! too, so the loader and the writer transpose these keys once more than a Linear's (a copy at
//! load/save time, never per step). LoRA's A and B are `nn.Linear`s in peft either way.
//!
//! Not implemented (refused by name): `scale_attn_by_inverse_layer_idx`,
//! `reorder_and_upcast_attn`, cross-attention, activations other than `gelu_new`. GPT-2's
//! dropouts (`resid_pdrop`, `embd_pdrop`, `attn_pdrop`) are not applied in training (LoRA's own
//! dropout is).

use super::llama::LlamaConfig;
use crate::io::WeightSource;
use crate::io::safetensors::HostTensor;
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

/// Mirrors GPT-2's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP's width (null: 4 × n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
}

fn default_positions() -> usize {
    1024
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn default_dropout() -> f64 {
    0.1
}

impl Gpt2Config {
    /// Parse `config.json`, refusing what this implementation does not compute.
    pub fn from_json(raw: serde_json::Value) -> Result<Self> {
        let cfg: Self = serde_json::from_value(raw).context("not a GPT-2 config")?;
        ensure!(
            matches!(cfg.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh"),
            "activation_function '{}' is not supported for gpt2 (gelu_new)",
            cfg.activation_function
        );
        ensure!(cfg.scale_attn_weights, "scale_attn_weights = false is not supported");
        ensure!(!cfg.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx = true is not supported");
        ensure!(!cfg.reorder_and_upcast_attn, "reorder_and_upcast_attn = true is not supported");
        ensure!(!cfg.add_cross_attention, "add_cross_attention = true (an encoder-decoder GPT-2) is not supported");
        ensure!(cfg.tie_word_embeddings, "tie_word_embeddings = false is not supported for gpt2");
        Ok(cfg)
    }

    /// The decoder config `llama.rs` builds the model from.
    pub fn to_decoder(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            intermediate_size: self.n_inner.unwrap_or(4 * self.n_embd),
            num_hidden_layers: self.n_layer,
            num_attention_heads: self.n_head,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: self.layer_norm_epsilon,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            max_position_embeddings: self.n_positions,
            tie_word_embeddings: true,
            hidden_act: "gelu_new".into(),
            attention_bias: true,
            mlp_bias: true,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id.clone(),
            pad_token_id: None,
            initializer_range: self.initializer_range,
            model_type: Some("gpt2".into()),
            sliding_window: None,
            use_sliding_window: None,
            layer_types: None,
            partial_rotary_factor: None,
            hidden_activation: None,
            query_pre_attn_scalar: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
        }
    }

    /// GPT-2's `config.json` for a decoder config made by [`Self::to_decoder`].
    pub fn from_decoder(cfg: &LlamaConfig) -> Self {
        Self {
            vocab_size: cfg.vocab_size,
            n_positions: cfg.max_position_embeddings,
            n_embd: cfg.hidden_size,
            n_layer: cfg.num_hidden_layers,
            n_head: cfg.num_attention_heads,
            n_inner: Some(cfg.intermediate_size),
            activation_function: default_activation(),
            layer_norm_epsilon: cfg.rms_norm_eps,
            initializer_range: cfg.initializer_range,
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id.clone(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            add_cross_attention: false,
            tie_word_embeddings: true,
            resid_pdrop: default_dropout(),
            embd_pdrop: default_dropout(),
            attn_pdrop: default_dropout(),
        }
    }
}

/// burn path (Llama names, as `llama.rs` builds the model) → GPT-2 checkpoint key, for whole
/// parameter paths and module paths alike.
pub fn checkpoint_key(path: &str) -> String {
    const LAYER: [(&str, &str); 6] = [
        ("self_attn.qkv_proj", "attn.c_attn"),
        ("self_attn.o_proj", "attn.c_proj"),
        ("mlp.up_proj", "mlp.c_fc"),
        ("mlp.down_proj", "mlp.c_proj"),
        ("input_layernorm", "ln_1"),
        ("post_attention_layernorm", "ln_2"),
    ];
    const MODEL: [(&str, &str); 3] = [
        ("model.embed_tokens", "transformer.wte"),
        ("model.embed_positions", "transformer.wpe"),
        ("model.norm", "transformer.ln_f"),
    ];
    if let Some(rest) = path.strip_prefix("model.layers.") {
        let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
        return format!("transformer.h.{layer}.{}", renamed(rest, &LAYER));
    }
    renamed(path, &MODEL)
}

/// `path` with the first matching prefix of `table` replaced (unchanged if none matches).
fn renamed(path: &str, table: &[(&str, &str)]) -> String {
    table
        .iter()
        .find_map(|(ours, theirs)| path.strip_prefix(ours).map(|tail| format!("{theirs}{tail}")))
        .unwrap_or_else(|| path.to_string())
}

/// The keys a parameter may have in a file: `transformer.`-prefixed (`GPT2LMHeadModel`) or not
/// (a bare `GPT2Model`, as the original `gpt2` checkpoint was saved).
pub fn candidate_keys(path: &str) -> Vec<String> {
    let key = checkpoint_key(path);
    let bare = key.strip_prefix("transformer.").map(str::to_string);
    std::iter::once(key).chain(bare).collect()
}

/// A `Conv1D` weight (`[in, out]` in the file).
pub fn is_conv1d_weight(key: &str) -> bool {
    [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"]
        .iter()
        .any(|s| key.ends_with(s))
}

/// Buffers old GPT-2 checkpoints carry that are not parameters (the causal mask).
pub fn is_buffer(key: &str) -> bool {
    key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias")
}

/// A checkpoint seen with its `Conv1D` weights in `nn.Linear`'s `[out, in]` layout, so the
/// generic loader (which transposes Linear weights into `Dense`'s `[in, out]`) reads them right.
pub struct Conv1dAsLinear<'a, S: WeightSource>(pub &'a S);

impl<S: WeightSource> WeightSource for Conv1dAsLinear<'_, S> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn contains(&self, key: &str) -> bool {
        self.0.contains(key)
    }
    fn names(&self) -> Vec<String> {
        self.0.names()
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        if is_conv1d_weight(key) && expected.len() == 2 {
            return Ok(self.0.tensor_with_shape(key, &[expected[1], expected[0]])?.transpose2());
        }
        self.0.tensor_with_shape(key, expected)
    }
}

/// Checkpoint tensors in `nn.Linear` layout → GPT-2's (`Conv1D` weights transposed back).
pub fn to_conv1d_layout(tensors: Vec<(String, HostTensor)>) -> Vec<(String, HostTensor)> {
    tensors.into_iter().map(|(k, t)| if is_conv1d_weight(&k) { (k, t.transpose2()) } else { (k, t) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_transformers_gpt2() {
        assert_eq!(checkpoint_key("model.layers.3.self_attn.qkv_proj.weight"), "transformer.h.3.attn.c_attn.weight");
        assert_eq!(checkpoint_key("model.layers.0.self_attn.o_proj"), "transformer.h.0.attn.c_proj");
        assert_eq!(checkpoint_key("model.layers.11.mlp.up_proj.bias"), "transformer.h.11.mlp.c_fc.bias");
        assert_eq!(checkpoint_key("model.layers.1.mlp.down_proj.weight"), "transformer.h.1.mlp.c_proj.weight");
        assert_eq!(checkpoint_key("model.layers.1.input_layernorm.bias"), "transformer.h.1.ln_1.bias");
        assert_eq!(checkpoint_key("model.layers.1.post_attention_layernorm.weight"), "transformer.h.1.ln_2.weight");
        assert_eq!(checkpoint_key("model.embed_positions.weight"), "transformer.wpe.weight");
        assert_eq!(checkpoint_key("model.norm.bias"), "transformer.ln_f.bias");
        assert_eq!(candidate_keys("model.embed_tokens.weight"), ["transformer.wte.weight", "wte.weight"]);
        assert!(is_conv1d_weight("transformer.h.0.mlp.c_proj.weight"));
        assert!(!is_conv1d_weight("transformer.h.0.mlp.c_proj.bias") && !is_conv1d_weight("transformer.wte.weight"));
    }

    #[test]
    fn refuses_what_it_does_not_compute() {
        let base = serde_json::json!({"vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2});
        assert!(Gpt2Config::from_json(base.clone()).is_ok());
        for (k, v) in [
            ("activation_function", serde_json::json!("relu")),
            ("scale_attn_by_inverse_layer_idx", serde_json::json!(true)),
            ("reorder_and_upcast_attn", serde_json::json!(true)),
            ("add_cross_attention", serde_json::json!(true)),
        ] {
            let mut c = base.clone();
            c[k] = v;
            let e = Gpt2Config::from_json(c).unwrap_err().to_string();
            assert!(e.contains(k), "{k}: {e}");
        }
    }
}
