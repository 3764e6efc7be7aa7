//! `tokenizer.json` via the `tokenizers` crate, with the file's own padding and truncation
//! switched off: we pad per batch (to the longest sequence) and truncate to the recipe's length.

use anyhow::{Result, anyhow};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Build a tokenizer with the `tokenizers` crate, which panics on some malformed files instead of
/// returning an error (0.22.2: a `decoder` that fits none of its shapes reaches
/// `.expect("Helper")` in `decoders/mod.rs`; found by the hostile-file harness). The panic becomes
/// an error naming the file.
fn build(source: &str, f: impl FnOnce() -> tokenizers::Result<Tokenizer>) -> Result<Tokenizer> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(anyhow!("{source}: cannot load tokenizer: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow!("{source}: cannot load tokenizer: malformed tokenizer.json ({msg})"))
        }
    }
}

/// One tokenized text: ids, segment ids, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl TextTokenizer {
    /// Load `tokenizer.json`; `max_length` truncates (keeping `[CLS]`/`[SEP]`).
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        if !path.is_file() {
            anyhow::bail!(
                "missing tokenizer: {} not found (the model directory needs a tokenizer.json)",
                path.display()
            );
        }
        let mut inner = build(&path.display().to_string(), || Tokenizer::from_file(path))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let pad_id = ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        Ok(Self { inner, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let e = self.inner.encode(text, true).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
    }

    /// Token ids of `text` without special tokens (`[CLS]`, `[SEP]`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let e = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(e.get_ids().to_vec())
    }

    /// Tokenize many texts (in parallel inside the tokenizers crate).
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let inputs: Vec<tokenizers::EncodeInput> = texts.iter().map(|t| (*t).into()).collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
            .collect())
    }
}

/// A tokenizer for causal language models: no padding, no truncation, and decoding.
pub struct LmTokenizer {
    inner: Tokenizer,
}

impl LmTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            anyhow::bail!("missing tokenizer: {} not found", path.display());
        }
        let inner = build(&path.display().to_string(), || Tokenizer::from_file(path))?;
        Ok(Self::new(inner))
    }

    /// Build from a `tokenizer.json` document (e.g. one made from GGUF metadata).
    pub fn from_json(json: &serde_json::Value, source: &str) -> Result<Self> {
        let inner = build(source, || json.to_string().parse())?;
        Ok(Self::new(inner))
    }

    fn new(mut inner: Tokenizer) -> Self {
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        Self { inner }
    }

    /// Token ids of `text`; `special` adds what the tokenizer's post-processor adds (e.g. BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let e = self.inner.encode(text, special).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(e.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("decoding {ids:?}: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Save as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| anyhow!("writing {}: {e}", path.display()))
    }
}

/// `tokenizer.json` for the vocabulary a GGUF file carries (`tokenizer.ggml.*`), as
/// `transformers` converts it: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the file's
/// merges, control tokens as special tokens, a BOS token prepended when `add_bos_token` says so.
pub fn tokenizer_json_from_gguf(file: &crate::io::gguf::GgufFile) -> Result<serde_json::Value> {
    use crate::io::gguf::Value;
    use serde_json::json;
    let at = file.path().display();
    let model = file.require("tokenizer.ggml.model")?.as_str().unwrap_or_default();
    if model != "gpt2" {
        anyhow::bail!(
            "{at}: tokenizer.ggml.model is '{model}'; finetune builds byte-level BPE ('gpt2') tokenizers from GGUF \
             metadata — put the model's tokenizer.json beside the GGUF file instead"
        );
    }
    let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    if !matches!(pre, "default" | "gpt2" | "gpt-2" | "smollm" | "starcoder" | "refact") {
        anyhow::bail!(
            "{at}: pre-tokenizer '{pre}' is not one finetune knows (its split pattern differs from GPT-2's); \
             put the model's tokenizer.json beside the GGUF file"
        );
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        let values = file.require(key)?.as_array().ok_or_else(|| anyhow!("{at}: '{key}' is not an array"))?;
        values
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{at}: '{key}' holds a non-string")))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| if let Value::I64(t) = v { *t } else { v.as_u64().unwrap_or(1) as i64 }).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    // Token type 3 is a control token (<|im_start|>, <|endoftext|>), 4 a user-defined one.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| matches!(**t, 3 | 4))
        .map(|(i, (tok, t))| {
            json!({"id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *t == 3})
        })
        .collect();
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let bos = file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map(|i| i as usize);
    let mut single = Vec::new();
    let mut special_tokens = serde_json::Map::new();
    if let (true, Some(bos)) = (add_bos, bos) {
        let content = tokens.get(bos).ok_or_else(|| anyhow!("{at}: bos_token_id {bos} is out of range"))?;
        single.push(json!({"SpecialToken": {"id": content, "type_id": 0}}));
        special_tokens.insert(content.clone(), json!({"id": content, "ids": [bos], "tokens": [content]}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": special_tokens},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}
