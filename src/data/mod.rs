//! Datasets: reading labelled text, tokenizing it, and batching it.

pub mod audio;
pub mod audio_set;
pub mod batch;
pub mod chat;
pub mod image;
pub mod log_mel;
pub mod sft;
pub mod tagged;
pub mod text;
pub mod tokenizer;

use crate::io::hub::{self, RepoKind};
use crate::nn::classification_head::ProblemType;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use text::{Columns, LabelSet, LabeledSplit, label_rows, read_rows};
use tokenizer::{Encoded, TextTokenizer};

/// A dataset file's text. A UTF-8 byte-order mark is dropped (spreadsheet exports add one, and
/// it would become part of the first column's name); text that is not UTF-8 is an error naming
/// the line, since guessing an encoding would silently change the labels.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    use anyhow::Context;
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        anyhow::anyhow!(
            "{}:{line}: not UTF-8 text (byte {at} is 0x{:02x}); re-save the file as UTF-8",
            path.display(),
            bytes[at]
        )
    })
}

/// A warning when a training split's classes are far from balanced (the largest at least ten
/// times the smallest, or a class without examples): accuracy then mostly measures the majority
/// class. `None` when the split is balanced enough.
pub fn class_imbalance(labels: &[usize], names: &[String], source: &std::path::Path) -> Option<String> {
    let mut counts = vec![0usize; names.len()];
    for &y in labels {
        if let Some(c) = counts.get_mut(y) {
            *c += 1;
        }
    }
    let (min, max) = (counts.iter().copied().min()?, counts.iter().copied().max()?);
    if names.len() < 2 || max < 10 * min.max(1) && min > 0 {
        return None;
    }
    let shown: Vec<String> = names.iter().zip(&counts).map(|(n, c)| format!("{n}: {c}")).collect();
    Some(format!(
        "{}: the training classes are imbalanced ({}); accuracy will mostly reflect the largest class. Watch \
         macro-F1 (in the report), rebalance, or add examples of the rare classes",
        source.display(),
        shown.join(", ")
    ))
}

/// The targets of one split, in example order.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// A class id per example.
    Classes(Vec<usize>),
    /// A value per example (regression).
    Values(Vec<f32>),
    /// A set of classes per example (multi-label), as ids into the label set.
    Sets { sets: Vec<Vec<usize>>, num_labels: usize },
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Self::Classes(c) => c.len(),
            Self::Values(v) => v.len(),
            Self::Sets { sets, .. } => sets.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The classes, for a classification split.
    pub fn classes(&self) -> Option<&[usize]> {
        match self {
            Self::Classes(c) => Some(c),
            Self::Values(_) | Self::Sets { .. } => None,
        }
    }
}

/// A tokenized split ready for batching.
#[derive(Debug, Clone)]
pub struct TokenizedSplit {
    pub name: &'static str,
    pub path: PathBuf,
    pub texts: Vec<String>,
    pub encoded: Vec<Encoded>,
    pub targets: Targets,
    pub skipped: usize,
}

impl TokenizedSplit {
    /// Tokenize a labelled split (texts, or text pairs with the second text as segment B).
    pub fn new(name: &'static str, split: LabeledSplit, tokenizer: &TextTokenizer) -> Result<Self> {
        let texts: Vec<&str> = split.texts.iter().map(String::as_str).collect();
        let encoded = match &split.pairs {
            Some(pairs) => tokenizer.encode_pairs(&texts, &pairs.iter().map(String::as_str).collect::<Vec<_>>())?,
            None => tokenizer.encode_all(&texts)?,
        };
        Ok(Self {
            name,
            path: split.path,
            encoded,
            targets: split.targets,
            skipped: split.skipped.len(),
            texts: split.texts,
        })
    }

    pub fn len(&self) -> usize {
        self.encoded.len()
    }
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }
}

/// Train / validation / test splits of a text-classification task and their label set.
#[derive(Debug, Clone)]
pub struct TextData {
    pub labels: LabelSet,
    pub train: TokenizedSplit,
    pub validation: Option<TokenizedSplit>,
    pub test: Option<TokenizedSplit>,
}

/// The directory the split files of `cfg` are relative to.
pub fn dataset_dir(cfg: &DataConfig) -> Result<PathBuf> {
    let mut files = vec![cfg.train.as_str()];
    files.extend(cfg.validation.as_deref());
    files.extend(cfg.test.as_deref());
    hub::resolve(&cfg.dataset, RepoKind::Dataset, "main", &files)
}

/// Read, label and tokenize the splits named in `cfg`: labels are classes (`cfg.labels`, else
/// the training split's), sets of classes, or numbers, as `problem` says.
pub fn load_text_data(cfg: &DataConfig, problem: ProblemType, tokenizer: &TextTokenizer) -> Result<TextData> {
    let dir = dataset_dir(cfg)?;
    let columns = Columns { label_may_be_empty: problem == ProblemType::MultiLabelClassification, ..cfg.columns() };
    let raw_train = read_rows(&dir.join(&cfg.train), &columns, cfg.skip_bad_rows)?;
    let labels = match (problem, &cfg.labels) {
        (ProblemType::Regression, _) => LabelSet::regression(),
        (ProblemType::MultiLabelClassification, Some(names)) => {
            LabelSet::new(names.clone())?.multi_label(&cfg.label_separator)
        }
        (ProblemType::MultiLabelClassification, None) => LabelSet::infer_sets(&raw_train.rows, &cfg.label_separator)?,
        (_, Some(names)) => LabelSet::new(names.clone())?,
        (_, None) => LabelSet::infer(&raw_train.rows)?,
    };
    let tokenize = |name: &'static str, split: LabeledSplit| -> Result<TokenizedSplit> {
        if !split.skipped.is_empty() {
            tracing::warn!("{}: skipped {} bad row(s)", split.path.display(), split.skipped.len());
        }
        TokenizedSplit::new(name, split, tokenizer)
    };
    let train = tokenize("train", label_rows(raw_train, &labels, cfg.skip_bad_rows)?)?;
    if let Some(w) = train.targets.classes().and_then(|c| class_imbalance(c, labels.names(), &train.path)) {
        tracing::warn!("{w}");
    }
    let other = |file: &Option<String>, name: &'static str| -> Result<Option<TokenizedSplit>> {
        file.as_ref()
            .map(|f| {
                let raw = read_rows(&dir.join(f), &columns, cfg.skip_bad_rows)?;
                tokenize(name, label_rows(raw, &labels, cfg.skip_bad_rows)?)
            })
            .transpose()
    };
    let validation = other(&cfg.validation, "validation")?;
    let test = other(&cfg.test, "test")?;
    Ok(TextData { labels, train, validation, test })
}

/// Class names: `data.labels`, else `labels.txt` in the dataset directory (one per line, in
/// label order), else `infer()` (e.g. the training split's class folders).
pub fn label_names_for(
    cfg: &DataConfig,
    dir: &std::path::Path,
    infer: impl FnOnce() -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    Ok(match &cfg.labels {
        Some(l) => l.clone(),
        None if dir.join("labels.txt").is_file() => read_text(&dir.join("labels.txt"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => infer()?,
    })
}

/// `[data]` in a recipe: where the examples are and how they are read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset hub id (`finetune/movie-review-polarity`) resolved through the hub cache, or
    /// a local directory; split file names below are relative to it.
    pub dataset: String,
    pub train: String,
    pub validation: Option<String>,
    pub test: Option<String>,
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Sentence-pair classification (NLI, paraphrase): the column of the second text, encoded
    /// as the tokenizer's second segment (`[SEP]` between, token type 1 where the model has
    /// token types).
    #[serde(default)]
    pub text_pair_column: Option<String>,
    /// Multi-label data: what separates the labels of one row in a CSV/TSV cell (a JSONL row
    /// may hold a list instead).
    #[serde(default = "default_label_separator")]
    pub label_separator: String,
    /// Label names in id order; inferred (sorted) from the training split when absent.
    pub labels: Option<Vec<String>>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Causal LM: train only on completions / assistant turns (the prompt is context).
    #[serde(default = "default_true")]
    pub completion_only_loss: bool,
    /// Causal LM: concatenate training examples into rows of `max_length` tokens.
    #[serde(default)]
    pub packing: bool,
    /// Causal LM: a Jinja chat template file to render conversations with, for a model that
    /// ships none (a base model) or to replace its own. It is saved beside the adapter.
    #[serde(default)]
    pub chat_template: Option<std::path::PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_separator() -> String {
    ",".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_max_length() -> usize {
    128
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.max_length >= 2, "data.max_length = {}: must be at least 2", self.max_length);
        anyhow::ensure!(!self.train.trim().is_empty(), "data.train is empty: name the training file");
        if let Some(t) = &self.chat_template {
            anyhow::ensure!(t.is_file(), "data.chat_template = {}: no such file", t.display());
        }
        Ok(())
    }

    pub fn columns(&self) -> Columns {
        Columns {
            text: self.text_column.clone(),
            label: self.label_column.clone(),
            pair: self.text_pair_column.clone(),
            label_may_be_empty: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_imbalance_warns_at_ten_to_one_or_an_empty_class() {
        let names: Vec<String> = ["neg", "pos", "mixed"].map(String::from).to_vec();
        let at = std::path::Path::new("train.csv");
        let split = |n: [usize; 3]| -> Vec<usize> { (0..3).flat_map(|c| std::iter::repeat_n(c, n[c])).collect() };
        assert_eq!(class_imbalance(&split([50, 40, 30]), &names, at), None);
        assert_eq!(class_imbalance(&split([90, 10, 10]), &names, at), None);
        let w = class_imbalance(&split([198, 2, 20]), &names, at).unwrap();
        assert!(w.contains("train.csv") && w.contains("neg: 198, pos: 2, mixed: 20"), "{w}");
        assert!(class_imbalance(&split([5, 5, 0]), &names, at).unwrap().contains("mixed: 0"));
    }
}
