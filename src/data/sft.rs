//! Supervised fine-tuning data for causal language models: JSONL rows in the common shapes,
//! tokenized with a mask that says which tokens the loss trains on.
//!
//! Row shapes (detected per row):
//! - chat: `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}`,
//!   rendered with the model's chat template; the loss covers the assistant turns;
//! - alpaca: `{"instruction", "input" (optional), "output"}`, as a user turn (instruction, a
//!   blank line, input) and an assistant turn;
//! - prompt/completion: `{"prompt", "completion"}`, plain text (no template), the completion
//!   followed by the end-of-sequence token; the loss covers the completion.
//!
//! With `completion_only_loss = false` every token trains. Sequences longer than `max_length`
//! are cut at the end; with packing, examples are concatenated into rows of `max_length`.

use super::chat::{ChatTemplate, Message};
use super::tokenizer::LmTokenizer;
use anyhow::{Result, anyhow, bail};
use std::path::Path;

/// One tokenized example: token ids, and which of them the loss trains on.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl SftExample {
    /// Number of next-token targets the loss sees (a token trains when it is predicted from
    /// the tokens before it, so the first token never does).
    pub fn targets(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&t| t).count()
    }
}

/// A row before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum SftRow {
    Chat(Vec<Message>),
    PromptCompletion { prompt: String, completion: String },
}

/// Parse one JSONL row (`line` is 1-based, for messages).
pub fn parse_row(value: &serde_json::Value) -> Result<SftRow> {
    let text = |key: &str| -> Result<Option<String>> {
        match value.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("field '{key}' is not a string"),
        }
    };
    if let Some(messages) = value.get("messages") {
        let messages: Vec<Message> = serde_json::from_value(messages.clone())
            .map_err(|e| anyhow!("'messages' must be a list of {{\"role\", \"content\"}} objects ({e})"))?;
        if !messages.iter().any(|m| m.role == "assistant") {
            bail!("'messages' has no assistant turn to train on");
        }
        if let Some(m) = messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
            bail!("unknown role '{}' (system, user, assistant)", m.role);
        }
        return Ok(SftRow::Chat(messages));
    }
    if let (Some(instruction), Some(output)) = (text("instruction")?, text("output")?) {
        let input = text("input")?.unwrap_or_default();
        let user = if input.trim().is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
        return Ok(SftRow::Chat(vec![Message::new("user", &user), Message::new("assistant", &output)]));
    }
    if let (Some(prompt), Some(completion)) = (text("prompt")?, text("completion")?) {
        if completion.is_empty() {
            bail!("'completion' is empty");
        }
        return Ok(SftRow::PromptCompletion { prompt, completion });
    }
    bail!("expected 'messages', 'instruction' + 'output', or 'prompt' + 'completion'")
}

/// How rows become token sequences.
pub struct SftEncoder<'a> {
    pub tokenizer: &'a LmTokenizer,
    pub template: Option<&'a ChatTemplate>,
    pub eos_id: u32,
    pub max_length: usize,
    pub completion_only_loss: bool,
}

impl SftEncoder<'_> {
    pub fn encode(&self, row: &SftRow) -> Result<SftExample> {
        let mut ids = Vec::new();
        let mut trained = Vec::new();
        let mut push = |piece: &[u32], train: bool| {
            ids.extend_from_slice(piece);
            trained.extend(std::iter::repeat_n(train || !self.completion_only_loss, piece.len()));
        };
        match row {
            SftRow::Chat(messages) => {
                let template = self
                    .template
                    .ok_or_else(|| anyhow!("the model has no chat template; use prompt/completion rows for it"))?;
                for (text, train) in template.segments(messages)? {
                    push(&self.tokenizer.encode(&text, false)?, train);
                }
            }
            SftRow::PromptCompletion { prompt, completion } => {
                push(&self.tokenizer.encode(prompt, true)?, false);
                let mut c = self.tokenizer.encode(completion, false)?;
                c.push(self.eos_id);
                push(&c, true);
            }
        }
        ids.truncate(self.max_length);
        trained.truncate(self.max_length);
        Ok(SftExample { ids, trained })
    }
}

/// A JSONL file of SFT rows, tokenized. Bad rows are errors naming `file:line`, or skipped and
/// counted with `skip_bad_rows`; rows left with nothing to train on (e.g. a prompt longer than
/// `max_length`) are dropped and counted.
pub struct SftSplit {
    pub examples: Vec<SftExample>,
    pub skipped: usize,
    pub truncated_away: usize,
}

pub fn load_jsonl(path: &Path, encoder: &SftEncoder<'_>, skip_bad_rows: bool) -> Result<SftSplit> {
    let text = super::read_text(path)?;
    let mut split = SftSplit { examples: Vec::new(), skipped: 0, truncated_away: 0 };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| anyhow!("invalid JSON ({e})"))
            .and_then(|v| parse_row(&v))
            .and_then(|row| encoder.encode(&row));
        match parsed {
            Ok(ex) if ex.targets() == 0 => split.truncated_away += 1,
            Ok(ex) => split.examples.push(ex),
            Err(e) if skip_bad_rows => {
                tracing::debug!("{}:{}: skipped: {e:#}", path.display(), i + 1);
                split.skipped += 1;
            }
            Err(e) => bail!("{}:{}: {e:#} (set data.skip_bad_rows = true to skip such rows)", path.display(), i + 1),
        }
    }
    if split.examples.is_empty() {
        bail!("{}: no usable examples", path.display());
    }
    Ok(split)
}

/// Concatenate examples (in order) into rows of exactly `max_length` tokens (the last may be
/// shorter), keeping each token's loss mask; rows left without a target are dropped.
pub fn pack(examples: &[SftExample], max_length: usize) -> Vec<SftExample> {
    let mut out = Vec::new();
    let mut current = SftExample { ids: Vec::new(), trained: Vec::new() };
    for ex in examples {
        for (&id, &t) in ex.ids.iter().zip(&ex.trained) {
            current.ids.push(id);
            current.trained.push(t);
            if current.ids.len() == max_length {
                let row = std::mem::replace(&mut current, SftExample { ids: Vec::new(), trained: Vec::new() });
                // A row of context only (a long prompt) has nothing to train on.
                if row.targets() > 0 {
                    out.push(row);
                }
            }
        }
    }
    if current.targets() > 0 {
        out.push(current);
    }
    out
}

/// Up to `n` (first user turn, first assistant turn) pairs from a held-out file.
pub fn sample_prompts(dir: &Path, file: Option<&String>, n: usize) -> Result<Vec<(String, String)>> {
    let Some(file) = file else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(dir.join(file))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(row) =
            serde_json::from_str::<serde_json::Value>(line).map_err(anyhow::Error::from).and_then(|v| parse_row(&v))
        else {
            continue;
        };
        let pair = match row {
            SftRow::Chat(m) => {
                let q = m.iter().find(|m| m.role == "user").map(|m| m.content.clone());
                let a = m.iter().find(|m| m.role == "assistant").map(|m| m.content.clone());
                q.zip(a)
            }
            SftRow::PromptCompletion { prompt, completion } => Some((prompt, completion)),
        };
        out.extend(pair);
        if out.len() == n {
            break;
        }
    }
    Ok(out)
}

/// Next-token targets of a batch padded to `len`: (row · len + position) of each position that
/// predicts a trained token, and the token it must predict.
pub fn next_token_targets(batch: &[&SftExample], len: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut rows, mut ids) = (Vec::new(), Vec::new());
    for (b, ex) in batch.iter().enumerate() {
        for p in 1..ex.ids.len() {
            if ex.trained[p] {
                rows.push((b * len + p - 1) as i64);
                ids.push(ex.ids[p] as i64);
            }
        }
    }
    (rows, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detects_row_shapes() {
        let chat = parse_row(
            &json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        );
        assert_eq!(chat.unwrap(), SftRow::Chat(vec![Message::new("user", "hi"), Message::new("assistant", "yo")]));
        let alpaca = parse_row(&json!({"instruction": "Add", "input": "1+1", "output": "2"})).unwrap();
        assert_eq!(alpaca, SftRow::Chat(vec![Message::new("user", "Add\n\n1+1"), Message::new("assistant", "2")]));
        let pc = parse_row(&json!({"prompt": "Q: x\nA:", "completion": " y"})).unwrap();
        assert_eq!(pc, SftRow::PromptCompletion { prompt: "Q: x\nA:".into(), completion: " y".into() });
        for (bad, why) in [
            (json!({"text": "x"}), "expected 'messages'"),
            (json!({"messages": [{"role": "user", "content": "x"}]}), "no assistant turn"),
            (
                json!({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                "unknown role 'bot'",
            ),
            (json!({"prompt": "x", "completion": ""}), "'completion' is empty"),
            (json!({"prompt": 3, "completion": "y"}), "'prompt' is not a string"),
        ] {
            let err = parse_row(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn packing_keeps_masks_and_fills_rows() {
        let ex = |n: u32, t: bool| SftExample { ids: (0..n).collect(), trained: vec![t; n as usize] };
        let packed = pack(&[ex(3, true), ex(4, false), ex(3, true)], 4);
        assert_eq!(packed.len(), 3);
        assert_eq!(pack(&[ex(3, true), ex(8, false), ex(2, true)], 4).len(), 2, "the all-context row is dropped");
        assert_eq!(packed[0].ids, vec![0, 1, 2, 0]);
        assert_eq!(packed[0].trained, vec![true, true, true, false]);
        assert_eq!(packed[1].ids, vec![1, 2, 3, 0]);
        assert_eq!(packed[2].ids, vec![1, 2]);
        assert_eq!(packed[2].targets(), 1);
    }

    fn word_tokenizer() -> LmTokenizer {
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "</s>": 1, "q": 2, "a": 3}, "unk_token": "[UNK]"}
        });
        LmTokenizer::from_json(&json, "test").unwrap()
    }

    /// Bad rows name file:line (or are skipped and counted); rows whose prompt fills max_length
    /// have nothing to train on and are dropped and counted; completions end with EOS.
    #[test]
    fn jsonl_errors_name_the_line_and_masks_cover_completions() {
        let tok = word_tokenizer();
        let enc = SftEncoder { tokenizer: &tok, template: None, eos_id: 1, max_length: 4, completion_only_loss: true };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        let rows = [
            r#"{"prompt": "q q", "completion": "a"}"#,
            r#"{"prompt": "q", "completion": "#,
            r#"{"prompt": "q q q q q", "completion": "a"}"#,
        ];
        std::fs::write(&path, rows.join("\n")).unwrap();
        let err = load_jsonl(&path, &enc, false).err().unwrap().to_string();
        assert!(err.contains("train.jsonl:2") && err.contains("invalid JSON"), "{err}");
        let split = load_jsonl(&path, &enc, true).unwrap();
        assert_eq!((split.examples.len(), split.skipped, split.truncated_away), (1, 1, 1));
        assert_eq!(split.examples[0], SftExample { ids: vec![2, 2, 3, 1], trained: vec![false, false, true, true] });
        let chat = SftRow::Chat(vec![Message::new("user", "q"), Message::new("assistant", "a")]);
        assert!(enc.encode(&chat).unwrap_err().to_string().contains("no chat template"));
    }
}
