//! A fine-tuned token classifier in use: tags and entities of texts, metrics on a tagged file.
//! [`TagExamples`] is also what `tasks::token_classification` trains and scores on.

use crate::data::batch::{collate, length_sorted};
use crate::data::tagged::{TaggedSplit, read_tagged};
use crate::data::text::LabelSet;
use crate::data::tokenizer::TextTokenizer;
use crate::io::hub::{self, RepoKind};
use crate::io::peft::AdapterFiles;
use crate::methods::lora;
use crate::models::text_classifier::{FinetuneMeta, TextClassifier};
use crate::models::{Head, ModelDir, load_token_classifier};
use crate::training::loss::{Scored, TagScores, classification_loss};
use crate::training::metrics::{EvalMetrics, entities};
use crate::training::trainer::{Examples, Split, evaluate};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Tagged sentences as batches: the loss over every word's first token, and the words' and
/// entities' scores.
pub struct TagExamples<'a> {
    pub splits: &'a [Option<TaggedSplit>; 3],
    pub names: &'a [String],
    pub pad_id: u32,
    pub device: Device,
}

impl TagExamples<'_> {
    fn split(&self, split: Split) -> Option<&TaggedSplit> {
        self.splits[split.slot()].as_ref()
    }
}

impl Examples<TextClassifier> for TagExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.split(split).map_or(0, TaggedSplit::len)
    }
    fn loss(&self, model: &TextClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let s = self.split(split).expect("split present");
        let logits = model.token_logits(&collate(&s.encoded, indices, self.pad_id, &self.device));
        let [b, l, c] = logits.dims();
        // The scored tokens (each word's first), row-major in the padded batch, per sentence.
        let (mut rows, mut tags, mut per_sentence) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &i) in indices.iter().enumerate() {
            let before = tags.len();
            for (j, &label) in s.token_labels[i].iter().enumerate().filter(|(_, l)| **l >= 0) {
                rows.push((row * l + j) as i64);
                tags.push(label as usize);
            }
            per_sentence.push(before..tags.len());
        }
        let n = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
        let selected = logits.reshape([b * l, c]).select(0, rows);
        let (loss, scored) = classification_loss(selected, &tags, &(0..n).collect::<Vec<_>>());
        let Scored::Classes(pairs) = scored else { unreachable!("classification_loss scores classes") };
        let mut scores = TagScores::default();
        for range in per_sentence {
            let (predicted, gold): (Vec<usize>, Vec<usize>) = pairs[range].iter().copied().unzip();
            scores.add(&predicted, &gold, self.names);
        }
        (loss, Scored::Tagged(scores))
    }
    /// The loss is a mean over scored words, so a batch weighs its scored words.
    fn weight(&self, split: Split, indices: &[usize]) -> f64 {
        let s = self.split(split).expect("split present");
        indices.iter().map(|&i| s.token_labels[i].iter().filter(|&&l| l >= 0).count()).sum::<usize>() as f64
    }
    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        self.split(split).map(|s| s.encoded.iter().map(|e| e.ids.len()).collect())
    }
    fn eval_order(&self, split: Split) -> Vec<usize> {
        self.split(split).map_or_else(Vec::new, |s| length_sorted(&s.encoded))
    }
}

/// The tags of one text's words and the entities they form.
#[derive(Debug, Clone, Serialize)]
pub struct TaggedText {
    pub text: String,
    /// (word, tag), words split at whitespace.
    pub words: Vec<(String, String)>,
    pub entities: Vec<Entity>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    /// First and last word (0-based, inclusive).
    pub words: (usize, usize),
}

/// A fine-tuned token classifier ready for inference.
pub struct FinetunedTokenClassifier {
    pub model: TextClassifier,
    pub labels: LabelSet,
    pub tokenizer: TextTokenizer,
    device: Device,
}

/// What `finetune.json` beside a token classifier's adapter holds.
#[derive(serde::Deserialize)]
struct AdapterNotes {
    labels: Vec<String>,
    finetune: FinetuneMeta,
}

/// Whether `model` (a directory or hub id) or the first adapter is a token classifier: a
/// `*ForTokenClassification` config, or a peft `TOKEN_CLS` adapter.
pub fn is_token_classifier(model: Option<&str>, adapters: &[PathBuf]) -> bool {
    if let Some(a) = adapters.first() {
        return AdapterFiles::read(a).is_ok_and(|f| f.config["task_type"] == "TOKEN_CLS");
    }
    let Some(dir) = model.and_then(|m| hub::resolve(m, RepoKind::Model, "main", &["config.json"]).ok()) else {
        return false;
    };
    let config: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    config
        .and_then(|c| c["architectures"].as_array().cloned())
        .is_some_and(|a| a.iter().any(|v| v.as_str().is_some_and(|s| s.ends_with("ForTokenClassification"))))
}

impl FinetunedTokenClassifier {
    /// Load a fine-tuned `*ForTokenClassification` directory (or hub id), or a base with a
    /// `TOKEN_CLS` adapter (finetune's or Python peft's; the base defaults to the adapter's).
    pub fn load(model: Option<&str>, adapter: Option<&Path>, device_name: &str) -> Result<Self> {
        let device = crate::ops::device::select(device_name)?;
        let files = adapter.map(AdapterFiles::read).transpose()?;
        let notes: Option<AdapterNotes> = match adapter.map(|a| a.join(crate::io::peft::NOTES_FILE)) {
            Some(p) if p.is_file() => {
                Some(serde_json::from_str(&std::fs::read_to_string(&p)?).with_context(|| format!("{}", p.display()))?)
            }
            _ => None,
        };
        let spec = model
            .map(str::to_string)
            .or_else(|| files.as_ref().and_then(|f| f.base_model().map(str::to_string)))
            .context("no model given (and the adapter names no base_model_name_or_path)")?;
        let base = ModelDir::open(&hub::resolve(&spec, RepoKind::Model, "main", &super::text::MODEL_FILES)?)?;
        let base_labels = base.labels()?;
        let names = match (&notes, &base_labels) {
            (Some(n), _) => n.labels.clone(),
            (None, Some(l)) => l.clone(),
            (None, None) => bail!("{}: not a token classifier (config.json has no id2label)", base.dir.display()),
        };
        let labels = LabelSet::new(names)?;
        let meta: Option<FinetuneMeta> = match &notes {
            Some(n) => Some(n.finetune.clone()),
            None => base.raw_config()?.get("finetune").map(|v| serde_json::from_value(v.clone())).transpose()?,
        };
        let positions = crate::models::bert::BertConfig::read(&base)?.max_positions();
        let max_len = meta.as_ref().map_or(512, |m| m.max_length).min(positions);
        let tokenizer = TextTokenizer::from_file(&base.tokenizer_path(), max_len)?;
        let head = if base_labels.as_deref() == Some(labels.names()) { Head::FromCheckpoint } else { Head::New };
        let (mut model, report) = load_token_classifier(&base, labels.len(), 0.0, head, &device)?;
        match &files {
            Some(files) => {
                if let Some(q) = meta.as_ref().and_then(|m| m.quantization.as_ref()) {
                    let saved: Vec<String> =
                        serde_json::from_value(files.config["modules_to_save"].clone()).unwrap_or_default();
                    lora::qlora::quantize_model(&mut model, q, |name| lora::in_modules(name, &saved))?;
                }
                anyhow::ensure!(
                    files.tensors.keys().any(|k| k.ends_with("classifier.weight")) || head == Head::FromCheckpoint,
                    "{}: the adapter has no classifier and the base has no head for these tags",
                    files.dir.display()
                );
                model = crate::methods::load_adapter(model, files, &device)?.0;
            }
            None => anyhow::ensure!(
                !report.initialized.iter().any(|p| p.starts_with("head.")),
                "{}: no trained classifier in the model",
                base.dir.display()
            ),
        }
        Ok(Self { model: model.valid(), labels, tokenizer, device })
    }

    /// Tag the words of each text (split at whitespace) and gather the entities.
    pub fn predict(&self, texts: &[String]) -> Result<Vec<TaggedText>> {
        let mut out = Vec::new();
        for text in texts {
            let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
            anyhow::ensure!(!words.is_empty(), "an empty text has no words to tag");
            let (encoded, word_ids) = self.tokenizer.encode_words(&words)?;
            let logits = self.model.token_logits(&collate(&[encoded], &[0], self.tokenizer.pad_id(), &self.device));
            let best: Vec<i64> = logits.argmax(2).into_data().convert::<i64>().try_into_vec().expect("int data");
            let mut tags = vec!["O".to_string(); words.len()];
            let mut previous = None;
            for (token, w) in word_ids.iter().enumerate() {
                if let Some(w) = *w
                    && Some(w) != previous
                {
                    tags[w as usize] = self.labels.names()[best[token] as usize].clone();
                }
                previous = *w;
            }
            let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            let entities = entities(&tag_refs)
                .into_iter()
                .map(|(kind, a, b)| Entity { kind: kind.to_string(), text: words[a..=b].join(" "), words: (a, b) })
                .collect();
            out.push(TaggedText { text: text.clone(), words: words.into_iter().zip(tags).collect(), entities });
        }
        Ok(out)
    }

    /// Metrics on a tagged file (CoNLL, or JSONL with `words_field` / `tags_field` lists).
    pub fn evaluate_file(
        &self,
        path: &Path,
        words_field: &str,
        tags_field: &str,
        batch_size: usize,
        skip_bad_rows: bool,
    ) -> Result<EvalMetrics> {
        let file = read_tagged(path, words_field, tags_field, skip_bad_rows)?;
        let split = TaggedSplit::new("test", file, &self.labels, &self.tokenizer, skip_bad_rows)?;
        let splits = [None, None, Some(split)];
        let examples = TagExamples {
            splits: &splits,
            names: self.labels.names(),
            pad_id: self.tokenizer.pad_id(),
            device: self.device.clone(),
        };
        Ok(evaluate(&self.model, &examples, Split::Test, batch_size, self.labels.len()))
    }
}
