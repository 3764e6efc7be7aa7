//! A llama.cpp GGUF file seen as a Hugging Face Llama checkpoint: `config.json` fields from the
//! GGUF metadata, and tensors under transformers' names (`blk.0.attn_q.weight` →
//! `model.layers.0.self_attn.q_proj.weight`), dequantized to f32, with llama.cpp's Q/K row
//! permutation undone; and the way back, a Llama model written as llama.cpp reads it
//! ([`write_config`], [`write_tensors`]) and a LoRA adapter as a llama.cpp adapter
//! ([`write_lora`]).

use super::llama::{LlamaConfig, LlamaForCausalLM, permute_qk_rows, unpermute_qk_rows};
use crate::io::WeightSource;
use crate::io::gguf::{GgmlType, GgufFile, Value};
use crate::io::gguf_writer::GgufWriter;
use crate::io::safetensors::HostTensor;
use anyhow::{Context, Result, bail, ensure};

/// `general.architecture` values finetune reads: Llama (Mistral is written as `llama` by
/// llama.cpp's converter), Qwen2, Qwen3, Gemma 3, GPT-2 and Phi-3 (its fused `attn_qkv`, and
/// `ffn_up` holding the gate rows then the up rows; LongRoPE files are refused). Only `llama` files have their Q/K
/// rows permuted; Gemma files store every norm weight plus one (llama.cpp's `norm_shift`);
/// GPT-2 files hold the `Conv1D` weights transposed to `nn.Linear`'s layout and a copy of the
/// (tied) embedding as `output.weight`.
const LLAMA_ARCHES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3", "gpt2", "phi3"];

/// Whether finetune reads GGUF files of architecture `arch` as decoders.
pub fn reads(arch: &str) -> bool {
    LLAMA_ARCHES.contains(&arch)
}

/// Architectures finetune also writes.
const WRITTEN_ARCHES: &[&str] = &["llama", "qwen2", "qwen3"];

/// llama.cpp's Gemma 3: every sixth layer attends globally, the others through the sliding
/// window with RoPE base 10,000 (fixed in llama.cpp, not in the metadata).
const GEMMA3_GLOBAL_EVERY: usize = 6;
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10_000.0;

/// The Llama configuration a GGUF file describes.
pub fn config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.require("general.architecture")?.as_str().unwrap_or_default().to_string();
    if !LLAMA_ARCHES.contains(&arch.as_str()) {
        bail!(
            "{}: general.architecture is '{arch}'; finetune reads GGUF files of the architectures {}",
            file.path().display(),
            LLAMA_ARCHES.join(", ")
        );
    }
    let num = |key: &str| -> Result<usize> {
        let full = format!("{arch}.{key}");
        file.require(&full)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| anyhow::anyhow!("{}: metadata '{full}' is not an integer", file.path().display()))
    };
    let opt_f64 = |key: &str| file.get(&format!("{arch}.{key}")).and_then(Value::as_f64);
    let token = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_u64).map(|v| v as u32);
    let vocab_size = || match num("vocab_size") {
        Ok(v) => Ok(v),
        Err(_) => file.info("token_embd.weight").map(|i| i.shape[0]),
    };
    if arch == "gpt2" {
        let cfg = super::gpt2::Gpt2Config::from_json(serde_json::json!({
            "vocab_size": vocab_size()?,
            "n_positions": num("context_length")?,
            "n_embd": num("embedding_length")?,
            "n_layer": num("block_count")?,
            "n_head": num("attention.head_count")?,
            "n_inner": num("feed_forward_length")?,
            "layer_norm_epsilon": opt_f64("attention.layer_norm_epsilon").unwrap_or(1e-5),
            "bos_token_id": token("bos_token_id"),
            "eos_token_id": token("eos_token_id"),
        }))
        .with_context(|| file.path().display().to_string())?;
        return checked(cfg.to_decoder(), file, &arch);
    }
    let scaling = file.get(&format!("{arch}.rope.scaling.type")).and_then(Value::as_str).filter(|k| *k != "none");
    let gemma = arch == "gemma3";
    let phi3 = arch == "phi3";
    anyhow::ensure!(
        !file.tensors.contains_key("rope_factors_long.weight"),
        "{}: LongRoPE scaling (rope_factors_long) is not supported yet",
        file.path().display()
    );
    match scaling {
        Some("linear") if gemma => {}
        Some(kind) => bail!("{}: rope scaling '{kind}' is not supported yet", file.path().display()),
        None => {}
    }
    let heads = num("attention.head_count")?;
    let hidden = num("embedding_length")?;
    // Qwen3 states the head size as the key length; Llama as the rotary dimension.
    let head_dim = match phi3 {
        // Phi-3's rotary dimension is a share of the head, not its size.
        true => None,
        false => num("attention.key_length")
            .or_else(|_| num("rope.dimension_count"))
            .ok()
            .filter(|&d| heads == 0 || d != hidden / heads),
    };
    let partial_rotary_factor = match (phi3, num("rope.dimension_count")) {
        (true, Ok(d)) if heads > 0 && d != hidden / heads => Some(d as f64 / (hidden / heads) as f64),
        _ => None,
    };
    let vocab_size = vocab_size()?;
    let blocks = num("block_count")?;
    let theta = opt_f64("rope.freq_base").unwrap_or(10_000.0);
    // Gemma 3's layer pattern and RoPE per layer type, as transformers' config holds them.
    let (layer_types, rope_parameters, sliding_window) = if gemma {
        let global = match scaling {
            Some(kind) => serde_json::json!({"rope_type": kind, "rope_theta": theta,
                "factor": opt_f64("rope.scaling.factor").unwrap_or(1.0)}),
            None => serde_json::json!({"rope_type": "default", "rope_theta": theta}),
        };
        let types = (0..blocks)
            .map(|i| {
                if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 { "full_attention" } else { "sliding_attention" }.to_string()
            })
            .collect();
        let rope = serde_json::json!({"full_attention": global,
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE}});
        (Some(types), Some(rope), num("attention.sliding_window").ok())
    } else if phi3 {
        (None, None, num("attention.sliding_window").ok())
    } else {
        (None, None, None)
    };
    let cfg = LlamaConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: num("feed_forward_length")?,
        num_hidden_layers: blocks,
        num_attention_heads: heads,
        num_key_value_heads: Some(num("attention.head_count_kv").unwrap_or(heads)),
        head_dim,
        rms_norm_eps: opt_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: Some(theta),
        rope_parameters,
        rope_scaling: None,
        max_position_embeddings: num("context_length").unwrap_or(2048),
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        hidden_act: "silu".into(),
        // Qwen2's q/k/v biases come with its model type; `attention_bias` is o's too.
        attention_bias: file.tensors.contains_key("blk.0.attn_output.bias")
            || (arch == "llama" && file.tensors.contains_key("blk.0.attn_q.bias")),
        mlp_bias: false,
        bos_token_id: token("bos_token_id"),
        eos_token_id: token("eos_token_id").map(Into::into),
        pad_token_id: token("padding_token_id"),
        initializer_range: 0.02,
        model_type: Some(if gemma { "gemma3_text".into() } else { arch.clone() }),
        sliding_window,
        use_sliding_window: None,
        layer_types,
        partial_rotary_factor,
        hidden_activation: gemma.then(|| "gelu_pytorch_tanh".into()),
        // llama.cpp scales Gemma 3's queries by the key length (true of every size but 27B).
        query_pre_attn_scalar: if gemma { head_dim.or(Some(hidden / heads.max(1))).map(|d| d as f64) } else { None },
        final_logit_softcapping: opt_f64("final_logit_softcapping"),
        attn_logit_softcapping: None,
    };
    checked(cfg, file, &arch)
}

/// The config, valid, and with as many blocks as the file holds.
fn checked(cfg: LlamaConfig, file: &GgufFile, arch: &str) -> Result<LlamaConfig> {
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", file.path().display()))?;
    // Every block the metadata counts must be in the file (and no more): a wrong count is a
    // corrupt file, not a model to build.
    let last = cfg.num_hidden_layers - 1;
    anyhow::ensure!(
        file.tensors.contains_key(&format!("blk.{last}.attn_norm.weight"))
            && !file.tensors.contains_key(&format!("blk.{}.attn_norm.weight", last + 1)),
        "{}: metadata '{arch}.block_count' = {} does not match the blocks in the file",
        file.path().display(),
        cfg.num_hidden_layers
    );
    Ok(cfg)
}

const LAYER_MODULES: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.qkv_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.gate_up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

/// The GGUF name of a transformers Llama parameter, and whether its rows need un-permuting
/// (with how many heads: llama.cpp permutes Q/K rows for the `llama` architecture only).
pub fn gguf_name(key: &str, cfg: &LlamaConfig) -> Option<(String, Option<usize>)> {
    let fixed = match key {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.embed_positions.weight" => Some("position_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "model.norm.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), None));
    }
    let rest = key.strip_prefix("model.layers.")?;
    let (layer, param) = rest.split_once('.')?;
    let (module, kind) = param.rsplit_once('.')?;
    let permuted = matches!(cfg.model_type(), "llama" | "mistral");
    let gemma = cfg.is_gemma();
    let (name, heads) = match module {
        "self_attn.q_proj" => ("attn_q", permuted.then_some(cfg.num_attention_heads)),
        "self_attn.k_proj" => ("attn_k", permuted.then_some(cfg.num_kv_heads())),
        "self_attn.q_norm" => ("attn_q_norm", None),
        "self_attn.k_norm" => ("attn_k_norm", None),
        "self_attn.v_proj" => ("attn_v", None),
        "self_attn.qkv_proj" => ("attn_qkv", None),
        "self_attn.o_proj" => ("attn_output", None),
        "mlp.gate_proj" => ("ffn_gate", None),
        // Phi-3 stores its fused gate and up rows where the others store up.
        "mlp.up_proj" if !cfg.fused() => ("ffn_up", None),
        "mlp.gate_up_proj" if cfg.fused() => ("ffn_up", None),
        "mlp.down_proj" => ("ffn_down", None),
        "input_layernorm" => ("attn_norm", None),
        // Gemma normalises the attention output here; the MLP input norm is `ffn_norm`.
        "post_attention_layernorm" if gemma => ("post_attention_norm", None),
        "post_attention_layernorm" => ("ffn_norm", None),
        "pre_feedforward_layernorm" if gemma => ("ffn_norm", None),
        "post_feedforward_layernorm" if gemma => ("post_ffw_norm", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}.{kind}"), heads))
}

/// A GGUF file read through transformers' parameter names.
pub struct GgufLlama<'a> {
    pub file: &'a GgufFile,
    pub cfg: LlamaConfig,
}

impl<'a> GgufLlama<'a> {
    pub fn new(file: &'a GgufFile) -> Result<Self> {
        Ok(Self { cfg: config(file)?, file })
    }
}

impl WeightSource for GgufLlama<'_> {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn contains(&self, key: &str) -> bool {
        gguf_name(key, &self.cfg).is_some_and(|(n, _)| self.file.tensors.contains_key(&n))
    }

    /// Every tensor of the file under its transformers name (its GGUF name if it has none).
    fn names(&self) -> Vec<String> {
        let mut hf: std::collections::BTreeMap<String, String> = [
            "model.embed_tokens.weight",
            "model.embed_positions.weight",
            "model.norm.weight",
            "model.norm.bias",
            "lm_head.weight",
        ]
        .iter()
        .map(|k| k.to_string())
        .chain((0..self.cfg.num_hidden_layers).flat_map(|i| {
            LAYER_MODULES.iter().flat_map(move |m| ["weight", "bias"].map(|k| format!("model.layers.{i}.{m}.{k}")))
        }))
        .filter_map(|key| gguf_name(&key, &self.cfg).map(|(g, _)| (g, key)))
        .collect();
        self.file.tensors.keys().map(|g| hf.remove(g).unwrap_or_else(|| g.clone())).collect()
    }

    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let Some((name, heads)) = gguf_name(key, &self.cfg) else {
            bail!("{}: no GGUF tensor corresponds to '{key}'", self.describe());
        };
        let (shape, mut data) = self.file.tensor_f32(&name)?;
        if shape != expected {
            bail!(
                "{}: shape mismatch for '{name}' ('{key}'): file has {shape:?}, model expects {expected:?}",
                self.describe()
            );
        }
        if let Some(heads) = heads {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            data = unpermute_qk_rows(&data, shape[0], cols, heads);
        }
        if self.cfg.is_gemma() && name.ends_with("norm.weight") {
            // llama.cpp stores Gemma's `1 + w`; the model holds `w`.
            data.iter_mut().for_each(|v| *v -= 1.0);
        }
        Ok(HostTensor::new(shape, data))
    }
}

/// llama.cpp's `general.file_type` for a file whose matrices are stored as `ty`.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 8,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4K => 15,
        GgmlType::Q6K => 18,
        GgmlType::Bf16 => 32,
    }
}

/// The `llama.*` metadata (and special token ids) describing `cfg`, with the names and types
/// llama.cpp's loader reads.
pub fn write_config(w: &mut GgufWriter, cfg: &LlamaConfig) -> Result<()> {
    let arch = cfg.model_type();
    ensure!(
        WRITTEN_ARCHES.contains(&arch)
            && cfg.layer_types.as_ref().is_none_or(|t| t.iter().all(|l| l == "full_attention"))
            && (arch != "llama" || cfg.sliding_window.is_none()),
        "model_type '{arch}': finetune writes GGUF for {} (without sliding-window layers) \
         (convert this one with llama.cpp's convert_hf_to_gguf.py from a merged Hugging Face directory: finetune merge)",
        WRITTEN_ARCHES.join(", ")
    );
    ensure!(
        cfg.rope_scaling.is_none()
            && cfg.rope_parameters.as_ref().is_none_or(|p| p.get("rope_type").is_none_or(|t| t == "default")),
        "this model scales RoPE; finetune writes GGUF for unscaled RoPE only (convert with llama.cpp's convert_hf_to_gguf.py)"
    );
    let n = |v: usize| u32::try_from(v).context("a size beyond u32");
    let key = |k: &str| format!("{arch}.{k}");
    w.str("general.architecture", arch);
    w.u32(&key("context_length"), n(cfg.max_position_embeddings)?);
    w.u32(&key("embedding_length"), n(cfg.hidden_size)?);
    w.u32(&key("block_count"), n(cfg.num_hidden_layers)?);
    w.u32(&key("feed_forward_length"), n(cfg.intermediate_size)?);
    w.u32(&key("rope.dimension_count"), n(cfg.head_dim())?);
    w.u32(&key("attention.head_count"), n(cfg.num_attention_heads)?);
    w.u32(&key("attention.head_count_kv"), n(cfg.num_kv_heads())?);
    if cfg.head_dim() != cfg.hidden_size / cfg.num_attention_heads {
        w.u32(&key("attention.key_length"), n(cfg.head_dim())?);
        w.u32(&key("attention.value_length"), n(cfg.head_dim())?);
    }
    w.f32(&key("attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps as f32);
    w.f32(&key("rope.freq_base"), cfg.rope_theta() as f32);
    w.u32(&key("vocab_size"), n(cfg.vocab_size)?);
    if let Some(b) = cfg.bos_token_id {
        w.u32("tokenizer.ggml.bos_token_id", b);
    }
    if let Some(&e) = cfg.eos_token_ids().first() {
        w.u32("tokenizer.ggml.eos_token_id", e);
    }
    if let Some(p) = cfg.pad_token_id {
        w.u32("tokenizer.ggml.padding_token_id", p);
    }
    Ok(())
}

/// Every parameter of `model` under its llama.cpp name: matrices encoded as `ty` (F16 where a
/// row does not hold whole blocks of `ty`, as llama.cpp's converter falls back), norms and
/// biases as F32, Q/K rows in llama.cpp's interleaved order. Frozen quantized layers must have
/// been turned back into float weights first.
pub fn write_tensors(w: &mut GgufWriter, model: &LlamaForCausalLM, cfg: &LlamaConfig, ty: GgmlType) -> Result<()> {
    let tensors = super::checkpoint_tensors(model, super::llama::checkpoint_key, |_| true);
    for (key, t) in tensors {
        let (name, heads) = gguf_name(&key, cfg).with_context(|| format!("'{key}' has no llama.cpp name"))?;
        ensure!(!t.shape.contains(&0), "'{key}' holds no values (a layer still held quantized?)");
        let cols = if t.shape.len() == 2 { t.shape[1] } else { t.shape[0] };
        let data = match heads {
            Some(h) => permute_qk_rows(&t.data, t.shape[0], cols, h),
            None => t.data,
        };
        let chosen = match t.shape.len() {
            2 if cols.is_multiple_of(ty.block().0) => ty,
            2 => GgmlType::F16,
            _ => GgmlType::F32,
        };
        let bytes = crate::quant::ggml::encode(chosen, &data, cols)?;
        w.tensor(&name, &t.shape, chosen, bytes)?;
    }
    Ok(())
}

/// One LoRA-adapted linear layer for a llama.cpp adapter: its transformers module name
/// (`model.layers.0.self_attn.q_proj`), `A [r, in]` and `B [out, r]` as peft stores them, and the
/// scale of `B·A`.
pub struct LoraLayer<'a> {
    pub module: &'a str,
    pub a: &'a HostTensor,
    pub b: &'a HostTensor,
    pub scale: f64,
}

/// Write adapters as llama.cpp's LoRA GGUF (`general.type = "adapter"`, `adapter.type = "lora"`,
/// tensors `<base tensor>.lora_a [r, in]` and `.lora_b [out, r]`, F32). llama.cpp scales each
/// layer by `adapter.lora.alpha / r`: when every layer's scale × rank is the same, that is the
/// alpha written and B is stored as trained; otherwise (rank or alpha patterns) each B carries
/// its own correction. Q/K rows of B are permuted as llama.cpp permutes the base weights.
pub fn write_lora(w: &mut GgufWriter, cfg: &LlamaConfig, layers: &[LoraLayer<'_>]) -> Result<()> {
    ensure!(!layers.is_empty(), "the adapter has no LoRA layers");
    ensure!(
        WRITTEN_ARCHES.contains(&cfg.model_type()) || cfg.model_type() == "mistral",
        "model_type '{}': finetune writes llama.cpp adapters for {}",
        cfg.model_type(),
        WRITTEN_ARCHES.join(", ")
    );
    let products: Vec<f64> = layers.iter().map(|l| l.scale * l.a.shape[0] as f64).collect();
    let alpha = products[0];
    w.str("general.architecture", if cfg.model_type() == "mistral" { "llama" } else { cfg.model_type() });
    w.str("general.type", "adapter");
    w.str("adapter.type", "lora");
    w.f32("adapter.lora.alpha", alpha as f32);
    for (layer, product) in layers.iter().zip(&products) {
        let weight = format!("{}.weight", layer.module);
        let (name, heads) = gguf_name(&weight, cfg).with_context(|| {
            format!("{}: llama.cpp has no tensor for this layer (LoRA on it cannot be exported)", layer.module)
        })?;
        let (r, d_in) = (layer.a.shape[0], layer.a.shape[1]);
        let d_out = layer.b.shape[0];
        ensure!(
            layer.b.shape == [d_out, r],
            "{}: lora_B has shape {:?}, lora_A {:?}",
            layer.module,
            layer.b.shape,
            layer.a.shape
        );
        let correction = (product / alpha) as f32;
        let mut b: Vec<f32> = layer.b.data.iter().map(|v| v * correction).collect();
        if let Some(h) = heads {
            b = permute_qk_rows(&b, d_out, r, h);
        }
        w.tensor(
            &format!("{name}.lora_a"),
            &[r, d_in],
            GgmlType::F32,
            crate::quant::ggml::encode(GgmlType::F32, &layer.a.data, d_in)?,
        )?;
        w.tensor(
            &format!("{name}.lora_b"),
            &[d_out, r],
            GgmlType::F32,
            crate::quant::ggml::encode(GgmlType::F32, &b, r)?,
        )?;
    }
    Ok(())
}
