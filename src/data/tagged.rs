//! Token-classification data (named entities, BIO tags): sentences of words, one tag per word.
//!
//! Two formats: CoNLL (`.conll`, `.txt`, `.bio`, `.tsv`: a word and its tag per line, the tag in
//! the last whitespace-separated column, a blank line between sentences, `-DOCSTART-` lines
//! skipped) and JSON Lines (a list of words in `data.text_column` and a list of tags in
//! `data.label_column`, e.g. `tokens` / `ner_tags`; tags as names, or as ids into `data.labels`).
//!
//! Words become sub-word tokens as transformers' `run_ner.py` does: the first token of a word
//! carries the word's tag, its other tokens and the special tokens are ignored by the loss, and
//! a word cut off by `max_length` is not scored. Entity-level scores follow seqeval
//! (`training::metrics::entities`).

use super::text::{BadRow, LabelSet};
use super::tokenizer::{Encoded, TextTokenizer};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// One sentence: its words and their tags.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    /// 1-based line where the sentence starts.
    pub line: usize,
}

/// The JSONL fields of a tagged file's words and tags: the recipe's `text_column` and
/// `label_column`, with their defaults (`text`, `label`) read as `tokens` and `ner_tags`, the
/// names Hugging Face datasets give them. (CoNLL files have no field names.)
pub fn fields<'a>(text_column: &'a str, label_column: &'a str) -> (&'a str, &'a str) {
    (
        if text_column == "text" { "tokens" } else { text_column },
        if label_column == "label" { "ner_tags" } else { label_column },
    )
}

/// The sentences of one file.
#[derive(Debug, Clone)]
pub struct TaggedFile {
    pub path: PathBuf,
    pub sentences: Vec<TaggedSentence>,
    pub skipped: Vec<BadRow>,
}

/// Read a CoNLL or JSON Lines file of tagged sentences; `columns` name the JSON fields.
pub fn read_tagged(path: &Path, words_field: &str, tags_field: &str, skip_bad_rows: bool) -> Result<TaggedFile> {
    let text = super::read_text(path)?;
    let mut out = TaggedFile { path: path.to_path_buf(), sentences: Vec::new(), skipped: Vec::new() };
    let mut bad = |line: usize, reason: String| -> Result<()> {
        if skip_bad_rows {
            out.skipped.push(BadRow { line, reason });
            Ok(())
        } else {
            bail!("{}:{line}: {reason} (set skip_bad_rows = true to skip and count such rows)", path.display())
        }
    };
    let mut sentences = Vec::new();
    let is_jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "ndjson"));
    if is_jsonl {
        for (line, value) in super::text::json_lines(&text) {
            let value = match value {
                Ok(v) => v,
                Err(reason) => {
                    bad(line, reason)?;
                    continue;
                }
            };
            let list = |field: &str| -> Result<Vec<String>, String> {
                let items = value.get(field).and_then(|v| v.as_array()).ok_or(format!("no list '{field}'"))?;
                Ok(items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect())
            };
            match (list(words_field), list(tags_field)) {
                (Ok(words), Ok(tags)) => match check_sentence(&words, &tags) {
                    Ok(()) => sentences.push(TaggedSentence { words, tags, line }),
                    Err(reason) => bad(line, reason)?,
                },
                (Err(reason), _) | (_, Err(reason)) => bad(line, reason)?,
            }
        }
    } else {
        let mut current = TaggedSentence { words: Vec::new(), tags: Vec::new(), line: 1 };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fields: Vec<&str> = raw.split_whitespace().collect();
            if fields.is_empty() {
                if !current.words.is_empty() {
                    sentences.push(std::mem::replace(
                        &mut current,
                        TaggedSentence { words: Vec::new(), tags: Vec::new(), line: line + 1 },
                    ));
                } else {
                    current.line = line + 1;
                }
                continue;
            }
            if fields[0] == "-DOCSTART-" {
                continue;
            }
            if fields.len() < 2 {
                bad(line, format!("expected a word and its tag, found {raw:?}"))?;
                continue;
            }
            if current.words.is_empty() {
                current.line = line;
            }
            current.words.push(fields[0].to_string());
            current.tags.push(fields[fields.len() - 1].to_string());
        }
        if !current.words.is_empty() {
            sentences.push(current);
        }
    }
    if sentences.is_empty() {
        bail!("{}: no usable sentences (empty dataset)", path.display());
    }
    out.sentences = sentences;
    Ok(out)
}

fn check_sentence(words: &[String], tags: &[String]) -> Result<(), String> {
    if words.is_empty() {
        return Err("an empty sentence".into());
    }
    if words.len() != tags.len() {
        return Err(format!("{} words but {} tags", words.len(), tags.len()));
    }
    if words.iter().any(|w| w.trim().is_empty()) {
        return Err("an empty word".into());
    }
    Ok(())
}

/// Every tag of `sentences`, sorted (as transformers' `run_ner.py` orders an inferred label list).
pub fn infer_tags(sentences: &[TaggedSentence]) -> Result<LabelSet> {
    let set: std::collections::BTreeSet<&str> =
        sentences.iter().flat_map(|s| s.tags.iter().map(String::as_str)).collect();
    LabelSet::new(set.into_iter().map(str::to_string).collect())
}

/// A tokenized split: per sentence its tokens, the label of each token (`-1`: not scored), and
/// the gold tag ids of the words that kept a token.
#[derive(Debug, Clone)]
pub struct TaggedSplit {
    pub name: &'static str,
    pub path: PathBuf,
    pub encoded: Vec<Encoded>,
    pub token_labels: Vec<Vec<i64>>,
    pub words: Vec<Vec<String>>,
    pub skipped: usize,
}

impl TaggedSplit {
    /// Tokenize `file`'s sentences with `labels` (a tag that is not a label, or a number outside
    /// them, is a bad sentence).
    pub fn new(
        name: &'static str,
        file: TaggedFile,
        labels: &LabelSet,
        tokenizer: &TextTokenizer,
        skip_bad_rows: bool,
    ) -> Result<Self> {
        let mut out = Self {
            name,
            path: file.path.clone(),
            encoded: Vec::new(),
            token_labels: Vec::new(),
            words: Vec::new(),
            skipped: file.skipped.len(),
        };
        for s in file.sentences {
            let ids: Result<Vec<usize>, String> = s
                .tags
                .iter()
                .map(|t| {
                    labels
                        .id(t)
                        .or_else(|| t.parse::<usize>().ok().filter(|&i| i < labels.len()))
                        .ok_or_else(|| format!("unknown tag '{t}' (labels: {})", labels.names().join(", ")))
                })
                .collect();
            let tag_ids = match ids {
                Ok(ids) => ids,
                Err(reason) if skip_bad_rows => {
                    out.skipped += 1;
                    tracing::debug!("{}:{}: {reason}", file.path.display(), s.line);
                    continue;
                }
                Err(reason) => bail!(
                    "{}:{}: {reason} (set skip_bad_rows = true to skip and count such rows)",
                    file.path.display(),
                    s.line
                ),
            };
            let (encoded, word_ids) =
                tokenizer.encode_words(&s.words).with_context(|| format!("{}:{}", file.path.display(), s.line))?;
            out.token_labels.push(first_token_labels(&word_ids, &tag_ids));
            out.encoded.push(encoded);
            out.words.push(s.words);
        }
        if out.encoded.is_empty() {
            bail!("{}: no usable sentences", out.path.display());
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.encoded.len()
    }
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }
}

/// Each token's label: the word's tag on the word's first token, `-1` elsewhere (special tokens,
/// continuation tokens).
pub fn first_token_labels(word_ids: &[Option<u32>], tags: &[usize]) -> Vec<i64> {
    let mut previous = None;
    word_ids
        .iter()
        .map(|w| {
            let label = match *w {
                Some(w) if Some(w) != previous => tags.get(w as usize).map_or(-1, |&t| t as i64),
                _ => -1,
            };
            previous = *w;
            label
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conll_and_jsonl_read_alike_and_bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let conll = d.path().join("a.conll");
        std::fs::write(&conll, "-DOCSTART- O\n\nEmpire B-facility\nState I-facility\n\nhi O\nthere\n").unwrap();
        let err = read_tagged(&conll, "tokens", "tags", false).unwrap_err().to_string();
        assert!(err.contains("a.conll:7") && err.contains("a word and its tag"), "{err}");
        let f = read_tagged(&conll, "tokens", "tags", true).unwrap();
        assert_eq!(f.sentences.len(), 2);
        assert_eq!((f.sentences[0].words.join(" "), f.sentences[0].line), ("Empire State".to_string(), 3));
        let jsonl = d.path().join("a.jsonl");
        std::fs::write(
            &jsonl,
            "{\"tokens\":[\"Empire\",\"State\"],\"tags\":[\"B-facility\",\"I-facility\"]}\n{\"tokens\":[\"a\"],\"tags\":[]}\n",
        )
        .unwrap();
        let err = read_tagged(&jsonl, "tokens", "tags", false).unwrap_err().to_string();
        assert!(err.contains("a.jsonl:2") && err.contains("1 words but 0 tags"), "{err}");
        let j = read_tagged(&jsonl, "tokens", "tags", true).unwrap();
        assert_eq!(j.sentences[0].tags, f.sentences[0].tags);
    }

    #[test]
    fn first_sub_token_carries_the_tag() {
        // [CLS] Em ##pire State [SEP]
        let word_ids = [None, Some(0), Some(0), Some(1), None];
        assert_eq!(first_token_labels(&word_ids, &[2, 1]), vec![-1, 2, -1, 1, -1]);
    }
}
