//! `tokenizer.json` via the `tokenizers` crate, with the file's own padding and truncation
//! switched off: we pad per batch (to the longest sequence) and truncate to the recipe's length.

use anyhow::{Context, Result, anyhow};
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
    /// For words given one by one (token classification): a byte-level BPE tokenizer (RoBERTa)
    /// with `add_prefix_space = true`, as transformers requires for `is_split_into_words`, so a
    /// word is tokenized as it is in running text (`Ġword`). `None`: `inner` as it is.
    words: Option<Tokenizer>,
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
        let words = with_prefix_space(&inner)?;
        Ok(Self { inner, words, pad_id })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of a token of the vocabulary (`[UNK]`), if it has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
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

    /// Tokenize a sentence given as words (token classification): the tokens, and the index of
    /// the word each token came from (`None` for special tokens).
    pub fn encode_words(&self, words: &[String]) -> Result<(Encoded, Vec<Option<u32>>)> {
        let input = tokenizers::EncodeInput::Single(words.into());
        let tokenizer = self.words.as_ref().unwrap_or(&self.inner);
        let e = tokenizer.encode(input, true).map_err(|e| anyhow!("tokenizing {words:?}: {e}"))?;
        let encoded = Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() };
        Ok((encoded, e.get_word_ids().to_vec()))
    }

    /// Tokenize text pairs (`firsts[i]`, `seconds[i]`): the tokenizer's pair template, truncation
    /// from the longer text first.
    pub fn encode_pairs(&self, firsts: &[&str], seconds: &[&str]) -> Result<Vec<Encoded>> {
        anyhow::ensure!(firsts.len() == seconds.len(), "{} texts but {} second texts", firsts.len(), seconds.len());
        let inputs: Vec<tokenizers::EncodeInput> =
            firsts.iter().zip(seconds).map(|(a, b)| ((*a).to_string(), (*b).to_string()).into()).collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
            .collect())
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

/// `tokenizer` with every byte-level pre-tokenizer set to `add_prefix_space = true`, if one was
/// not (`None` when nothing changes).
fn with_prefix_space(tokenizer: &Tokenizer) -> Result<Option<Tokenizer>> {
    fn set(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(o) if o.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") => {
                let changed = o.get("add_prefix_space") != Some(&serde_json::Value::Bool(true));
                o.insert("add_prefix_space".into(), true.into());
                changed
            }
            serde_json::Value::Object(o) => o.get_mut("pretokenizers").is_some_and(set),
            serde_json::Value::Array(a) => a.iter_mut().map(set).fold(false, |x, y| x | y),
            _ => false,
        }
    }
    let mut json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| anyhow!("serializing the tokenizer: {e}"))?)?;
    if !json.get_mut("pre_tokenizer").is_some_and(set) {
        return Ok(None);
    }
    let text = json.to_string();
    build("tokenizer.json (words)", || text.parse::<Tokenizer>()).map(Some)
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

    /// The tokenizer as `tokenizer.json` holds it.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let text = self.inner.to_string(false).map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
        Ok(serde_json::from_str(&text)?)
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
/// GGUF tokenizer metadata (`tokenizer.ggml.*`, llama.cpp's `gpt2` model) for a byte-level BPE
/// `tokenizer.json`: the tokens in id order, their types (1 normal, 3 control = special added
/// token, 4 user-defined = other added token), the merges, and `pre = "gpt-2"` (GPT-2's split
/// pattern, which byte-level BPE with the regex uses). Other tokenizer models are refused.
pub fn gguf_tokenizer_metadata(json: &serde_json::Value, w: &mut crate::io::gguf_writer::GgufWriter) -> Result<()> {
    use crate::io::gguf::{Value, ValueType};
    let model = &json["model"];
    let byte_level = |p: &serde_json::Value| {
        p["type"] == "ByteLevel"
            || p["pretokenizers"].as_array().is_some_and(|a| a.iter().any(|q| q["type"] == "ByteLevel"))
    };
    anyhow::ensure!(
        model["type"] == "BPE" && byte_level(&json["pre_tokenizer"]),
        "the tokenizer is {} with pre-tokenizer {}: finetune writes byte-level BPE tokenizers (GPT-2, Llama 3, \
         Qwen, SmolLM) to GGUF; convert this model with llama.cpp's convert_hf_to_gguf.py instead",
        model["type"],
        json["pre_tokenizer"]["type"]
    );
    let mut tokens: Vec<Option<(String, i64)>> = Vec::new();
    let mut put = |id: u64, tok: &str, ty: i64| -> Result<()> {
        let id = usize::try_from(id)?;
        anyhow::ensure!(id < 1 << 24, "token id {id} is out of range");
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in model["vocab"].as_object().context("tokenizer.json: model.vocab is not a map")? {
        put(id.as_u64().context("tokenizer.json: a vocab id is not an integer")?, tok, 1)?;
    }
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let id = t["id"].as_u64().context("tokenizer.json: an added token without an id")?;
        let content = t["content"].as_str().context("tokenizer.json: an added token without content")?;
        put(id, content, if t["special"].as_bool().unwrap_or(false) { 3 } else { 4 })?;
    }
    let missing = tokens.iter().position(Option::is_none);
    anyhow::ensure!(missing.is_none(), "tokenizer.json: no token has id {}", missing.unwrap_or(0));
    let (names, types): (Vec<Value>, Vec<Value>) =
        tokens.into_iter().flatten().map(|(t, ty)| (Value::Str(t), Value::I64(ty))).unzip();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::Str(s.clone())),
            serde_json::Value::Array(pair) => {
                Ok(Value::Str(pair.iter().map(|p| p.as_str().unwrap_or_default()).collect::<Vec<_>>().join(" ")))
            }
            other => Err(anyhow!("tokenizer.json: merge {other} is neither \"a b\" nor [\"a\", \"b\"]")),
        })
        .collect::<Result<_>>()?;
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "gpt-2");
    w.set("tokenizer.ggml.tokens", ValueType::ARRAY_STR, Value::Array(names));
    w.set("tokenizer.ggml.token_type", ValueType::ARRAY_I32, Value::Array(types));
    w.set("tokenizer.ggml.merges", ValueType::ARRAY_STR, Value::Array(merges));
    // A BOS the post-processor adds (Llama 3's template processing).
    let single = json["post_processor"]["single"].as_array().cloned().unwrap_or_default();
    let adds_bos = single.first().is_some_and(|s| s.get("SpecialToken").is_some());
    w.bool("tokenizer.ggml.add_bos_token", adds_bos);
    Ok(())
}

/// A GGUF metadata array of strings (`tokenizer.ggml.tokens`, `.merges`), or an error naming it.
fn gguf_strings(file: &crate::io::gguf::GgufFile, key: &str) -> Result<Vec<String>> {
    let at = file.path().display();
    let values = file.require(key)?.as_array().ok_or_else(|| anyhow!("{at}: '{key}' is not an array"))?;
    values
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{at}: '{key}' holds a non-string")))
        .collect()
}

/// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte), or all
/// normal when absent.
fn gguf_token_types(file: &crate::io::gguf::GgufFile, n: usize) -> Vec<i64> {
    use crate::io::gguf::Value;
    match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| if let Value::I64(t) = v { *t } else { v.as_u64().unwrap_or(1) as i64 }).collect(),
        None => vec![1; n],
    }
}

/// Which of transformers' SentencePiece builders a GGUF vocabulary goes through
/// (`integrations/gguf/gguf_tokenizer_mapping.py`).
#[derive(Clone, Copy, PartialEq)]
enum Spm {
    /// `GemmaTokenizer`: tokens of spaces respelled with `▁`, merges ranked by the token's
    /// position in the file (Gemma's scores do not follow its merge order), spaces replaced by a
    /// normalizer and split off.
    Gemma,
    /// `LlamaTokenizer` (Llama 2, TinyLlama, Mistral v0.1, ...): merges ranked by the file's
    /// scores, a `Metaspace` pre-tokenizer that prefixes the first word, the decoder strips it.
    Llama,
}

/// A SentencePiece-BPE vocabulary from GGUF metadata (`tokenizer.ggml.model = "llama"`) as a
/// `tokenizer.json`, the way transformers' GGUF loader builds it: the file has no merges, so
/// they are rebuilt from the vocabulary (`generate_merges`) — every split of a token into two
/// tokens, best first by the token's rank, then the longer halves, ties in file order; control
/// tokens (and the unknown/bos/eos tokens) added as special, user-defined ones as plain added
/// tokens; byte fallback; `<bos>` prepended when `add_bos_token` (the default).
fn sentencepiece_tokenizer_json(file: &crate::io::gguf::GgufFile, flavor: Spm) -> Result<serde_json::Value> {
    use crate::io::gguf::Value;
    use serde_json::json;
    use std::collections::HashMap;
    let at = file.path().display();
    let original = gguf_strings(file, "tokenizer.ggml.tokens")?;
    let types = gguf_token_types(file, original.len());
    anyhow::ensure!(types.len() == original.len(), "{at}: {} token types for {} tokens", types.len(), original.len());
    // Gemma files store tokens of spaces as spaces; its tokenizer looks them up as `▁`s.
    let respell = |t: &String| match flavor {
        Spm::Gemma if t.contains(' ') && t.trim().is_empty() => "\u{2581}".repeat(t.chars().count()),
        _ => t.clone(),
    };
    let tokens: Vec<String> = original.iter().map(respell).collect();
    // The rank of each token (higher is merged first): Gemma's `-position`, else its score.
    let scores: Vec<f64> = match flavor {
        Spm::Gemma => (0..tokens.len()).map(|i| -(i as f64)).collect(),
        Spm::Llama => {
            let s = match file.require("tokenizer.ggml.scores")? {
                Value::Array(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect::<Vec<f64>>(),
                _ => anyhow::bail!("{at}: tokenizer.ggml.scores is not an array"),
            };
            anyhow::ensure!(s.len() == tokens.len(), "{at}: {} token scores for {} tokens", s.len(), tokens.len());
            s
        }
    };
    // A token's id is its last position (a Python dict built in order), its rank the last one's
    // too; iteration follows first appearance.
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for merge in &order {
        let score = scores[vocab[merge]];
        let start = merges.len();
        for (split, _) in merge.char_indices().skip(1) {
            let (l, r) = merge.split_at(split);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
    }
    // Best first: the highest rank, then the longer halves (a stable sort: ties keep their order).
    let len = |s: &str| s.chars().count();
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| (len(b.0), len(b.1)).cmp(&(len(a.0), len(a.1)))));
    let merges: Vec<[&str; 2]> = merges.into_iter().map(|(l, r, _)| [l, r]).collect();
    let token = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_u64).map(|i| i as usize);
    let named = [token("unknown_token_id"), token("bos_token_id"), token("eos_token_id")];
    let added: Vec<serde_json::Value> = original
        .iter()
        .zip(&types)
        .enumerate()
        // Control (3) and user-defined (4) tokens; one respelled out of the vocabulary (spaces) is
        // left to the model, as transformers leaves it.
        .filter(|(i, (t, ty))| (matches!(**ty, 3 | 4) || named.contains(&Some(*i))) && vocab.contains_key(t.as_str()))
        .map(|(i, (t, ty))| {
            json!({"id": vocab[t.as_str()], "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty != 4 || named.contains(&Some(i))})
        })
        .collect();
    let vocab_json: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let name = |id: Option<usize>| id.and_then(|i| tokens.get(i)).cloned();
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(true);
    let post = match name(token("bos_token_id")).filter(|_| add_bos) {
        Some(bos) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [token("bos_token_id")], "tokens": [bos]}}}),
        None => serde_json::Value::Null,
    };
    let replace = json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "});
    let (normalizer, pre_tokenizer, decoder, unk) = match flavor {
        Spm::Gemma => (
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            json!({"type": "Sequence", "decoders": [replace, {"type": "ByteFallback"}, {"type": "Fuse"}]}),
            json!(name(token("unknown_token_id")).unwrap_or_else(|| "<unk>".into())),
        ),
        Spm::Llama => (
            serde_json::Value::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [replace, {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            serde_json::Value::Null,
        ),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_json, "merges": merges}
    }))
}

/// The split pattern of a byte-level BPE vocabulary's pre-tokenizer (`tokenizer.ggml.pre`), as
/// transformers' GGUF loader maps llama.cpp's names (`GGUF_PRE_TOKENIZER_SPLITS`): Llama 3's
/// (digits in threes) and Qwen2's (digits one by one).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

pub fn tokenizer_json_from_gguf(file: &crate::io::gguf::GgufFile) -> Result<serde_json::Value> {
    use crate::io::gguf::Value;
    use serde_json::json;
    let at = file.path().display();
    let model = file.require("tokenizer.ggml.model")?.as_str().unwrap_or_default();
    let arch = file.get("general.architecture").and_then(Value::as_str).unwrap_or_default();
    if model == "llama" {
        let flavor = if matches!(arch, "gemma" | "gemma2" | "gemma3") { Spm::Gemma } else { Spm::Llama };
        return sentencepiece_tokenizer_json(file, flavor);
    }
    if model != "gpt2" {
        anyhow::bail!(
            "{at}: tokenizer.ggml.model is '{model}'; finetune builds byte-level BPE ('gpt2') and SentencePiece \
             ('llama') tokenizers from GGUF metadata — put the model's tokenizer.json beside the GGUF file instead"
        );
    }
    let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" | "smollm" | "starcoder" | "refact" => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
        _ => match split_regex(pre) {
            Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            None => anyhow::bail!(
                "{at}: pre-tokenizer '{pre}' is not one finetune knows (gpt-2, smollm, starcoder, refact, qwen2, \
                 llama-bpe and their aliases); put the model's tokenizer.json beside the GGUF file"
            ),
        },
    };
    let tokens = gguf_strings(file, "tokenizer.ggml.tokens")?;
    let merges = gguf_strings(file, "tokenizer.ggml.merges")?;
    let types = gguf_token_types(file, tokens.len());
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
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": special_tokens},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}
