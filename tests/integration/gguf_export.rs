//! Export to llama.cpp's GGUF (`finetune export`): a LoRA adapter as a llama.cpp adapter, and the
//! merged model with its tokenizer, read back here. llama.cpp itself is checked outside CI by
//! `scripts/check_gguf_export.py` (docs/BENCHMARKS.md).

use super::common::*;
use burn::prelude::*;
use finetune::inference::gguf_export::{export_adapter, export_model};
use finetune::inference::lm::load_with_adapter;
use finetune::io::gguf::{GgmlType, GgufFile, Value};
use finetune::io::peft::AdapterFiles;
use finetune::models::ModelDir;
use finetune::models::decoder;
use finetune::models::llama::unpermute_qk_rows;
use std::path::{Path, PathBuf};

/// A byte-level BPE tokenizer for the tiny Llama's 96 ids: `<pad>`, `<s>`, `</s>`, the space
/// (`Ġ`) and 92 printable characters, no merges.
fn byte_level_tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let mut tokens = vec!["<pad>".to_string(), "<s>".into(), "</s>".into(), "Ġ".into()];
    tokens.extend((33u8..125).map(|c| (c as char).to_string()));
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i.into());
    }
    let special = |id: usize, content: &str| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// The tiny Llama with that tokenizer, and peft's adapter for it without the fully trained
/// lm_head (llama.cpp adapters carry LoRA matrices only).
fn tiny_base_and_adapter(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("tiny-llama");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), base.join(f)).unwrap();
    }
    std::fs::write(base.join("tokenizer.json"), byte_level_tokenizer().to_string()).unwrap();
    let mut files = AdapterFiles::read(&fixtures().join("peft/llama-lora")).unwrap();
    files.tensors.retain(|k, _| k.contains(".lora_"));
    files.config["modules_to_save"] = serde_json::Value::Null;
    let adapter = dir.join("adapter");
    AdapterFiles::write(&adapter, &files.config, files.tensors.into_iter().collect()).unwrap();
    (base, adapter)
}

fn logits(model: &finetune::models::llama::LlamaForCausalLM, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len();
    values(model.forward(Tensor::from_data(TensorData::new(ids, [1, n]), device), None))
}

/// The adapter: llama.cpp's metadata and tensor names, `lora_a [r, in]` / `lora_b [out, r]`,
/// and `alpha / r · B·A` (Q/K rows back in transformers' order) equal to peft's update.
#[test]
fn lora_adapter_exports_as_a_llama_cpp_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, adapter) = tiny_base_and_adapter(tmp.path());
    let out = tmp.path().join("adapter.gguf");
    let written = export_adapter(&base, &adapter, &out).unwrap();
    assert_eq!(written.tensors, 28, "14 layers × (lora_a, lora_b)");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.metadata["general.type"], Value::Str("adapter".into()));
    assert_eq!(g.metadata["adapter.type"], Value::Str("lora".into()));
    assert_eq!(g.metadata["general.architecture"], Value::Str("llama".into()));
    let alpha = g.metadata["adapter.lora.alpha"].as_f64().unwrap();
    assert_eq!(alpha, 8.0);
    let peft = AdapterFiles::read(&adapter).unwrap();
    let cfg = decoder::config(&ModelDir::open(&base).unwrap()).unwrap();
    for (gguf, module, heads) in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj", Some(cfg.num_attention_heads)),
        ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj", Some(cfg.num_kv_heads())),
        ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj", None),
    ] {
        let (a_shape, a) = g.tensor_f32(&format!("{gguf}.lora_a")).unwrap();
        let (b_shape, mut b) = g.tensor_f32(&format!("{gguf}.lora_b")).unwrap();
        let (r, d_in, d_out) = (a_shape[0], a_shape[1], b_shape[0]);
        assert_eq!(b_shape, [d_out, r]);
        if let Some(h) = heads {
            b = unpermute_qk_rows(&b, d_out, r, h);
        }
        let pa = &peft.tensors[&format!("base_model.model.{module}.lora_A.weight")];
        let pb = &peft.tensors[&format!("base_model.model.{module}.lora_B.weight")];
        let delta = |a: &[f32], b: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; d_out * d_in];
            for o in 0..d_out {
                for i in 0..d_in {
                    out[o * d_in + i] =
                        (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum::<f32>() * (alpha / r as f64) as f32;
                }
            }
            out
        };
        let d = max_abs_diff(&delta(&a, &b), &delta(&pa.data, &pb.data));
        assert!(d < 1e-6, "{module}: llama.cpp's update differs from peft's by {d}");
    }
    // What llama.cpp cannot hold is refused by name, before anything is written.
    let refused = tmp.path().join("refused.gguf");
    let err = export_adapter(&base, &fixtures().join("peft/llama-lora"), &refused).unwrap_err().to_string();
    assert!(err.contains("lm_head") && err.contains("--merge"), "{err}");
    assert!(!refused.exists());
}

/// The merged model: F32 gives base + adapter's logits (1e-5) when finetune reads the file back
/// as a GGUF model, Q8_0 and Q4_0 within their rounding; the tokenizer written from
/// tokenizer.json encodes as the original does.
#[test]
fn merged_model_exports_as_gguf_with_its_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, adapter) = tiny_base_and_adapter(tmp.path());
    let device = Device::flex();
    let lm = load_with_adapter(&base, Some(&adapter), &device).unwrap();
    let text = "Hello, tiny llama! 42";
    let ids = lm.tokenizer.encode(text, false).unwrap();
    let want = logits(&lm.model, &ids, &device);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (ty, tol) in [(GgmlType::F32, 1e-5), (GgmlType::Q8_0, 0.02 * scale), (GgmlType::Q4_0, 0.3 * scale)] {
        let out = tmp.path().join(format!("merged-{}.gguf", ty.name()));
        let written = export_model(&base, std::slice::from_ref(&adapter), &out, ty).unwrap();
        assert_eq!(written.merged_layers, 14);
        let files = ModelDir::open(&out).unwrap();
        let g = files.gguf().unwrap();
        assert_eq!(g.metadata["tokenizer.ggml.model"], Value::Str("gpt2".into()));
        assert_eq!(g.info("blk.0.attn_q.weight").unwrap().ggml_type, ty);
        assert_eq!(g.info("blk.0.attn_norm.weight").unwrap().ggml_type, GgmlType::F32);
        let (model, cfg, report) = decoder::load(&files, &device).unwrap();
        assert!(report.initialized.is_empty(), "{report:?}");
        assert_eq!(cfg.num_key_value_heads, lm.cfg.num_key_value_heads);
        let tokenizer = decoder::tokenizer(&files).unwrap();
        assert_eq!(tokenizer.encode(text, false).unwrap(), ids, "the exported tokenizer encodes differently");
        let d = max_abs_diff(&logits(&model, &ids, &device), &want);
        assert!(d <= tol, "{}: logits differ from base + adapter by {d} (tolerance {tol})", ty.name());
    }
}

/// The real SmolLM2 GGUF (Q4_1) re-exported keeps its tokenizer, chat template and metadata;
/// as F16 its logits equal the Q4_1 model's up to f16 rounding, as Q8_0 within Q8_0's.
#[test]
fn smollm2_reexports_with_its_metadata() {
    let Some(path) = super::causal_lm::smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (a, _, _) = decoder::load(&ModelDir::open(&path).unwrap(), &device).unwrap();
    let ids = [1u32, 504, 3458, 282, 4649, 314];
    let la = logits(&a, &ids, &device);
    let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (ty, tol) in [(GgmlType::F16, 0.002), (GgmlType::Q8_0, 0.04)] {
        let out = tmp.path().join(format!("smollm2-{}.gguf", ty.name()));
        export_model(&path, &[], &out, ty).unwrap();
        let (b, _, _) = decoder::load(&ModelDir::open(&out).unwrap(), &device).unwrap();
        let d = max_abs_diff(&la, &logits(&b, &ids, &device));
        eprintln!("SmolLM2 re-exported as {}: max |logit difference| {d} (max |logit| {scale})", ty.name());
        assert!(d < tol * scale, "{} re-export moved logits by {d} (max |logit| {scale})", ty.name());
    }
    let out = tmp.path().join("smollm2-Q8_0.gguf");
    let (src, dst) = (GgufFile::open(&path).unwrap(), GgufFile::open(&out).unwrap());
    for key in ["tokenizer.chat_template", "tokenizer.ggml.pre", "tokenizer.ggml.merges", "llama.rope.freq_base"] {
        assert_eq!(src.metadata[key], dst.metadata[key], "{key}");
        assert_eq!(src.metadata_types[key], dst.metadata_types[key], "{key}");
    }
    assert_eq!(dst.metadata["general.file_type"], Value::U64(7));
}

/// Qwen2 and Qwen3 (tiny fixtures from transformers) exported as GGUF under their own llama.cpp
/// architectures (no Q/K permutation, q/k norms as `attn_q_norm`/`attn_k_norm`, Qwen3's head size
/// as `attention.key_length`) read back with the Hugging Face directory's logits.
#[test]
fn qwen_families_export_and_read_back_as_gguf() {
    let device = Device::flex();
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join(name);
        std::fs::create_dir_all(&base).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixtures().join("decoders").join(name).join(f), base.join(f)).unwrap();
        }
        std::fs::write(base.join("tokenizer.json"), byte_level_tokenizer().to_string()).unwrap();
        let out = tmp.path().join("model.gguf");
        export_model(&base, &[], &out, GgmlType::F32).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let arch = name.trim_start_matches("tiny-");
        assert_eq!(g.metadata["general.architecture"], Value::Str(arch.into()));
        let (hf, hf_cfg, _) = decoder::load(&ModelDir::open(&base).unwrap(), &device).unwrap();
        let (gguf, gguf_cfg, report) = decoder::load(&ModelDir::open(&out).unwrap(), &device).unwrap();
        assert!(report.initialized.is_empty() && report.unused.is_empty(), "{name}: {report:?}");
        assert_eq!((gguf_cfg.head_dim(), gguf_cfg.qkv_bias()), (hf_cfg.head_dim(), hf_cfg.qkv_bias()), "{name}");
        let ids = [5u32, 17, 33, 60, 2, 91, 40];
        let d = max_abs_diff(&logits(&gguf, &ids, &device), &logits(&hf, &ids, &device));
        assert!(d < 1e-5, "{name}: GGUF-loaded logits differ from the HF directory's by {d}");
    }
}
