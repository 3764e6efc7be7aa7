//! A fine-tuned text classifier in use: a fine-tuned model directory (finetune's or one
//! `transformers` wrote), or a base model plus an adapter (finetune's or Python peft's), for
//! prediction, evaluation and merging; several adapters over one base ([`AdapterSet`]); and the
//! token batches training and evaluation share ([`TokenExamples`]).

use crate::data::batch::{collate, length_sorted};
use crate::data::text::LabelSet;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{TextData, TokenizedSplit};
use crate::io::hub::{self, RepoKind};
use crate::io::peft::{AdapterFiles, NOTES_FILE};
use crate::methods::{Tuner, lora};
use crate::models::text_classifier::{FinetuneMeta, TextClassifier, save_model};
use crate::models::{Head, ModelDir, load_text_classifier};
use crate::nn::classification_head::{Pooling, ProblemType};
use crate::training::loss::{self, Scored};
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, Split, evaluate};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Files a model directory needs for text classification.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Token batches of labelled texts for a model that runs the whole encoder.
pub struct TokenExamples<'a> {
    pub data: &'a TextData,
    pub pad_id: u32,
    pub device: Device,
}

impl TokenExamples<'_> {
    fn split(&self, split: Split) -> Option<&TokenizedSplit> {
        match split {
            Split::Train => Some(&self.data.train),
            Split::Validation => self.data.validation.as_ref(),
            Split::Test => self.data.test.as_ref(),
        }
    }
}

impl Examples<TextClassifier> for TokenExamples<'_> {
    fn len(&self, split: Split) -> usize {
        self.split(split).map_or(0, TokenizedSplit::len)
    }
    fn loss(&self, model: &TextClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Scored) {
        let s = self.split(split).expect("split present");
        let logits = model.forward(&collate(&s.encoded, indices, self.pad_id, &self.device));
        loss::loss(&s.targets, logits, indices)
    }
    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        self.split(split).map(|s| s.encoded.iter().map(|e| e.ids.len()).collect())
    }
    fn eval_order(&self, split: Split) -> Vec<usize> {
        self.split(split).map_or_else(Vec::new, |s| length_sorted(&s.encoded))
    }
}

/// A fine-tuned classifier ready for inference.
pub struct FinetunedClassifier {
    pub model: TextClassifier,
    pub labels: LabelSet,
    pub tokenizer: TextTokenizer,
    pub meta: Option<FinetuneMeta>,
    /// The model directory the weights (or the adapter's base) came from.
    pub base: ModelDir,
    /// The attached adapter, if any.
    pub adapter: Option<Tuner>,
    device: Device,
}

/// One prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub text: String,
    /// The second text, for a sentence-pair model.
    pub text_pair: Option<String>,
    /// A regression's prediction (its one output); `label` and `probabilities` are then empty.
    pub score: Option<f32>,
    /// The predicted class (multi-label: every class above probability 0.5, joined with ",").
    pub label: String,
    pub probabilities: Vec<(String, f32)>,
    pub logits: Vec<f32>,
}

/// What `finetune.json` beside a text classifier's adapter holds.
#[derive(Debug, Clone, Deserialize)]
struct AdapterNotes {
    labels: Vec<String>,
    finetune: FinetuneMeta,
}

impl FinetunedClassifier {
    /// Load a fine-tuned model directory (or hub id) written by `finetune train` or by
    /// `transformers` (`BertForSequenceClassification` with `id2label`); with `adapter`, `model`
    /// is the base (default: the adapter's `base_model_name_or_path`) and the adapter (finetune's
    /// or Python peft's) is attached.
    pub fn load(
        model: Option<&str>,
        adapter: Option<&Path>,
        device_name: &str,
        max_length: Option<usize>,
    ) -> Result<Self> {
        let device = crate::ops::device::select(device_name)?;
        let adapter_files = adapter.map(AdapterFiles::read).transpose()?;
        let notes: Option<AdapterNotes> = match adapter {
            Some(dir) if dir.join(NOTES_FILE).is_file() => {
                let path = dir.join(NOTES_FILE);
                Some(
                    serde_json::from_str(&std::fs::read_to_string(&path)?)
                        .with_context(|| format!("{}", path.display()))?,
                )
            }
            _ => None,
        };
        let spec = model
            .map(str::to_string)
            .or_else(|| adapter_files.as_ref().and_then(|f| f.base_model().map(str::to_string)))
            .context("no model given (and the adapter names no base_model_name_or_path)")?;
        let base = ModelDir::open(&hub::resolve(&spec, RepoKind::Model, "main", &MODEL_FILES)?)?;
        let base_labels = base.labels()?;
        let names = match (&notes, &base_labels, &adapter_files) {
            (Some(n), _, _) => n.labels.clone(),
            (None, Some(l), _) => l.clone(),
            (None, None, Some(files)) => {
                let head = ["model.classifier", "classifier", "model.classifier.out_proj", "classifier.out_proj"]
                    .iter()
                    .find_map(|m| files.tensors.get(&format!("base_model.{m}.weight")))
                    .context("the adapter has no classifier and the base model has no id2label")?;
                (0..head.shape[0]).map(|i| format!("LABEL_{i}")).collect()
            }
            (None, None, None) => bail!(
                "{}: not a fine-tuned classifier (config.json has no id2label for a *ForSequenceClassification)",
                base.dir.display()
            ),
        };
        let meta: Option<FinetuneMeta> = match &notes {
            Some(n) => Some(n.finetune.clone()),
            None => base.raw_config()?.get("finetune").map(|v| serde_json::from_value(v.clone())).transpose()?,
        };
        let config_problem = base.raw_config()?.get("problem_type").and_then(|p| p.as_str()).map(str::to_string);
        let problem = |p: ProblemType| {
            meta.as_ref().is_some_and(|m| m.problem_type == p) || config_problem.as_deref() == Some(p.name())
        };
        let labels = if problem(ProblemType::Regression) {
            LabelSet::regression()
        } else if problem(ProblemType::MultiLabelClassification) {
            LabelSet::new(names)?.multi_label(",")
        } else {
            LabelSet::new(names)?
        };
        let pooling = meta.as_ref().map_or(Pooling::Pooler, |m| m.pooling);
        let positions = crate::models::bert::BertConfig::read(&base)?.max_positions();
        let max_len = match max_length {
            Some(n) if n > positions => {
                bail!(
                    "max_length {n} exceeds the {positions} positions {}'s position table has room for",
                    base.dir.display()
                )
            }
            Some(n) => n,
            None => meta.as_ref().map_or(512, |m| m.max_length).min(positions),
        };
        let tokenizer = TextTokenizer::from_file(&base.tokenizer_path(), max_len)?;
        let head = if base_labels.as_deref() == Some(labels.names()) { Head::FromCheckpoint } else { Head::New };
        let (model, report) = load_text_classifier(&base, labels.len(), pooling, 0.0, head, &device)?;
        let head_from_base = !report.initialized.iter().any(|p| p.starts_with("head."));
        let (model, adapter) = match &adapter_files {
            Some(files) => {
                let mut model = model;
                if let Some(q) = meta.as_ref().and_then(|m| m.quantization.as_ref()) {
                    let saved: Vec<String> =
                        serde_json::from_value(files.config["modules_to_save"].clone()).unwrap_or_default();
                    lora::qlora::quantize_model(&mut model, q, |name| lora::in_modules(name, &saved))?;
                }
                let (m, a) = crate::methods::load_adapter(model, files, &device)?;
                (m, Some(a))
            }
            None => (model, None),
        };
        let head_from_adapter = adapter_files.as_ref().is_some_and(|f| {
            let classifier = format!("{}.weight", model.bert.family.classifier_module());
            f.tensors.keys().any(|k| k.ends_with(&classifier))
        });
        if !head_from_base && !head_from_adapter {
            bail!("{}: no trained classifier head in the model or the adapter", base.dir.display());
        }
        Ok(Self { model: model.valid(), labels, tokenizer, meta, base, adapter, device })
    }

    /// [`Self::load`] with several adapters active at once (`--adapter` repeated): with peft's
    /// semantics their LoRA updates add up (`lora::adapter::merge_all`); the classifier comes
    /// from the one adapter that trained it. One adapter (or none) is [`Self::load`].
    pub fn load_combined(
        model: Option<&str>,
        adapters: &[std::path::PathBuf],
        device_name: &str,
        max_length: Option<usize>,
    ) -> Result<Self> {
        if adapters.len() <= 1 {
            return Self::load(model, adapters.first().map(|p| p.as_path()), device_name, max_length);
        }
        let files: Vec<AdapterFiles> = adapters.iter().map(|d| AdapterFiles::read(d)).collect::<Result<_>>()?;
        let head = lora::adapter::check_combinable(&files)?.unwrap_or(0);
        let mut m = Self::load(model, Some(&adapters[head]), device_name, max_length)?;
        m.merge_adapter()?;
        let others: Vec<AdapterFiles> =
            files.into_iter().enumerate().filter(|(i, _)| *i != head).map(|(_, f)| f).collect();
        m.model = lora::adapter::merge_all(m.model.clone(), &others, &m.device)?;
        Ok(m)
    }

    /// Fold a LoRA/DoRA adapter into the base weights (prompt tuning cannot be merged).
    pub fn merge_adapter(&mut self) -> Result<usize> {
        match &self.adapter {
            Some(Tuner::Lora { .. }) => {
                let n = lora::merge(&mut self.model);
                self.adapter = None;
                Ok(n)
            }
            Some(_) => bail!("a prompt-tuning adapter cannot be merged into the weights"),
            None => bail!("no adapter to merge"),
        }
    }

    /// Write the model as a plain fine-tuned model directory (Hugging Face layout).
    pub fn save_model(&self, out: &Path) -> Result<()> {
        if self.adapter.is_some() {
            bail!("the model carries an adapter; merge it first");
        }
        let mut meta = self.meta.clone().unwrap_or(FinetuneMeta {
            pooling: self.model.pooling,
            max_length: 512,
            text_pair: false,
            problem_type: Default::default(),
            per_token: false,
            method: "merged".into(),
            base_model: self.base.dir.display().to_string(),
            quantization: None,
        });
        // A merged model is plain f32, whatever the adapter was trained over.
        meta.quantization = None;
        save_model(&self.model, &self.base, &self.labels, &meta, out)
    }

    /// Whether the model predicts a number (a regression) rather than a class.
    pub fn is_regression(&self) -> bool {
        self.labels.is_regression()
    }

    /// Whether the model classifies text pairs.
    pub fn takes_pairs(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.text_pair)
    }

    /// Classify texts, or text pairs (`pairs[i]` the second text of `texts[i]`) for a
    /// sentence-pair model.
    pub fn predict(&self, texts: &[String], pairs: Option<&[String]>, batch_size: usize) -> Result<Vec<Prediction>> {
        match (self.takes_pairs(), pairs) {
            (true, None) => {
                bail!("this model classifies text pairs: give the second texts (--pair, or tab-separated lines)")
            }
            (false, Some(_)) => bail!("this model classifies single texts, not pairs"),
            (true, Some(p)) if p.len() != texts.len() => bail!("{} texts but {} second texts", texts.len(), p.len()),
            _ => {}
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encoded = match pairs {
            Some(p) => self.tokenizer.encode_pairs(&refs, &p.iter().map(String::as_str).collect::<Vec<_>>())?,
            None => self.tokenizer.encode_all(&refs)?,
        };
        let mut out = Vec::with_capacity(texts.len());
        let order: Vec<usize> = (0..texts.len()).collect();
        for batch in crate::data::batch::chunk(&order, batch_size) {
            let input = collate(&encoded, &batch, self.tokenizer.pad_id(), &self.device);
            let logits = self.model.forward(&input);
            let raw: Vec<f32> = logits.clone().into_data().convert::<f32>().try_into_vec().expect("f32");
            let probs = if self.labels.is_multi_label() {
                burn::tensor::activation::sigmoid(logits)
            } else {
                burn::tensor::activation::softmax(logits, 1)
            };
            let values: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec().expect("f32");
            let k = self.labels.len();
            for (row, &i) in batch.iter().enumerate() {
                let logits = raw[row * k..(row + 1) * k].to_vec();
                let (text, text_pair) = (texts[i].clone(), pairs.map(|p| p[i].clone()));
                if self.is_regression() {
                    let score = Some(logits[0]);
                    out.push(Prediction {
                        text,
                        text_pair,
                        score,
                        label: String::new(),
                        probabilities: Vec::new(),
                        logits,
                    });
                    continue;
                }
                let p = &values[row * k..(row + 1) * k];
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(j, _)| j);
                let label = if self.labels.is_multi_label() {
                    // Every label whose probability is above one half, joined with ",".
                    let names = self.labels.names();
                    (0..k).filter(|&j| p[j] > 0.5).map(|j| names[j].as_str()).collect::<Vec<_>>().join(",")
                } else {
                    self.labels.names()[best].clone()
                };
                out.push(Prediction {
                    text,
                    text_pair,
                    score: None,
                    label,
                    probabilities: self.labels.names().iter().cloned().zip(p.iter().copied()).collect(),
                    logits,
                });
            }
        }
        Ok(out)
    }

    /// Metrics on a labelled file (CSV/TSV/JSONL) with the given columns.
    pub fn evaluate_file(
        &self,
        path: &Path,
        columns: &crate::data::text::Columns,
        batch_size: usize,
        skip_bad_rows: bool,
    ) -> Result<EvalMetrics> {
        // Multi-label rows may have no label.
        let columns =
            crate::data::text::Columns { label_may_be_empty: self.labels.is_multi_label(), ..columns.clone() };
        let raw = crate::data::text::read_rows(path, &columns, skip_bad_rows)?;
        let split = crate::data::text::label_rows(raw, &self.labels, skip_bad_rows)?;
        let tokenized = TokenizedSplit::new("test", split, &self.tokenizer)?;
        let data =
            TextData { labels: self.labels.clone(), train: tokenized.clone(), validation: None, test: Some(tokenized) };
        let examples = TokenExamples { data: &data, pad_id: self.tokenizer.pad_id(), device: self.device.clone() };
        Ok(evaluate(&self.model, &examples, Split::Test, batch_size, self.labels.len()))
    }
}

/// Several adapters over one base model in one process: switching the active adapter attaches it
/// to a clone of the base, which shares the base's tensors (nothing is reloaded or copied).
pub struct AdapterSet {
    base: TextClassifier,
    adapters: std::collections::BTreeMap<String, AdapterFiles>,
    active: Option<(String, TextClassifier)>,
    device: Device,
}

impl AdapterSet {
    pub fn new(base: TextClassifier, device: &Device) -> Self {
        Self { base, adapters: Default::default(), active: None, device: device.clone() }
    }

    /// Register an adapter directory under `name` (read now, attached when activated).
    pub fn add(&mut self, name: &str, dir: &Path) -> Result<()> {
        self.adapters.insert(name.to_string(), AdapterFiles::read(dir)?);
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// Make `name` the active adapter (`None`: the bare base model).
    pub fn activate(&mut self, name: Option<&str>) -> Result<&TextClassifier> {
        let Some(name) = name else {
            self.active = None;
            return Ok(&self.base);
        };
        if self.active.as_ref().is_none_or(|(n, _)| n != name) {
            let files = self.adapters.get(name).with_context(|| format!("no adapter named '{name}'"))?;
            let (model, _) = crate::methods::load_adapter(self.base.clone(), files, &self.device)?;
            self.active = Some((name.to_string(), model.valid()));
        }
        Ok(&self.active.as_ref().expect("just set").1)
    }

    /// The model with the active adapter (or the base model).
    pub fn model(&self) -> &TextClassifier {
        self.active.as_ref().map_or(&self.base, |(_, m)| m)
    }
}
