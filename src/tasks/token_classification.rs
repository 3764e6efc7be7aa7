//! Token classification (`task = "token-classification"`): named entities and other per-word
//! tags. A BERT-family encoder with a classifier on every token (`*ForTokenClassification`),
//! trained on the first sub-token of each word as transformers' `run_ner.py` does, scored by
//! seqeval's entity precision, recall and F1 and by word accuracy. Methods: full, transfer,
//! LoRA/QLoRA. The model is saved with `*ForTokenClassification` keys and `id2label`; adapters as
//! peft's `TOKEN_CLS` adapters.

use crate::data::tagged::{TaggedSplit, fields, infer_tags, read_tagged};
use crate::data::text::LabelSet;
use crate::data::tokenizer::TextTokenizer;
use crate::inference::text::MODEL_FILES;
use crate::inference::tokens::TagExamples;
use crate::io::hub::{self, RepoKind};
use crate::methods::Method;
use crate::models::text_classifier::{FinetuneMeta, TextClassifier, check_fits, save_model};
use crate::models::{Head, ModelDir, load_token_classifier};
use crate::pipeline::{self, Devices, NoExtra, Task, TrainReport};
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::trainer::Examples;
use anyhow::Result;
use burn::prelude::*;
use std::path::Path;

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    pipeline::run(recipe, resume, show_progress, |devices| TokenClassification::prepare(recipe, devices))
}

/// A token-classification run: the base model's files, its tokenizer, the tag set and the
/// tokenized splits (train, validation, test).
pub struct TokenClassification {
    model_dir: ModelDir,
    tokenizer: TextTokenizer,
    labels: LabelSet,
    splits: [Option<TaggedSplit>; 3],
    head: Head,
    meta: FinetuneMeta,
    head_dropout: f64,
    device: Device,
}

impl TokenClassification {
    fn prepare(recipe: &Recipe, devices: &Devices) -> Result<Self> {
        let model_dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &MODEL_FILES)?)?;
        let tokenizer = TextTokenizer::from_file(&model_dir.tokenizer_path(), recipe.data.max_length)?;
        check_fits(&model_dir, &tokenizer, recipe.data.max_length)?;
        let (cfg, dir) = (&recipe.data, crate::data::dataset_dir(&recipe.data)?);
        let (words, tags) = fields(&cfg.text_column, &cfg.label_column);
        let read = |file: &str| read_tagged(&dir.join(file), words, tags, cfg.skip_bad_rows);
        let train = read(&cfg.train)?;
        let labels = match &cfg.labels {
            Some(names) => LabelSet::new(names.clone())?,
            None => infer_tags(&train.sentences)?,
        };
        let split = |name: &'static str, file| TaggedSplit::new(name, file, &labels, &tokenizer, cfg.skip_bad_rows);
        let splits = [
            Some(split("train", train)?),
            cfg.validation.as_deref().map(|f| split("validation", read(f)?)).transpose()?,
            cfg.test.as_deref().map(|f| split("test", read(f)?)).transpose()?,
        ];
        let count = |i: usize| splits[i].as_ref().map_or(0, TaggedSplit::len);
        tracing::info!(
            "{} tags {:?}; {} train / {} validation / {} test sentences",
            labels.len(),
            labels.names(),
            count(0),
            count(1),
            count(2)
        );
        let head =
            if model_dir.labels()?.as_deref() == Some(labels.names()) { Head::FromCheckpoint } else { Head::New };
        let meta = FinetuneMeta {
            pooling: recipe.head.pooling,
            max_length: cfg.max_length,
            text_pair: false,
            problem_type: Default::default(),
            per_token: true,
            method: String::new(),
            base_model: recipe.model.clone(),
            quantization: recipe.quantization.clone(),
        };
        let device = devices.base.clone();
        Ok(Self { model_dir, tokenizer, labels, splits, head, meta, head_dropout: recipe.head.dropout, device })
    }

    fn meta(&self, method: Method) -> FinetuneMeta {
        FinetuneMeta { method: method.name().into(), ..self.meta.clone() }
    }
}

impl Task for TokenClassification {
    type Model = TextClassifier;
    type Extra = NoExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::TokenClassification
    }
    fn num_outputs(&self) -> usize {
        self.labels.len()
    }
    fn labels(&self) -> Vec<String> {
        self.labels.names().to_vec()
    }
    fn train_len(&self) -> usize {
        self.splits[0].as_ref().map_or(0, TaggedSplit::len)
    }
    fn skipped_rows(&self) -> usize {
        self.splits.iter().flatten().map(|s| s.skipped).sum()
    }
    fn head_modules(&self) -> Vec<String> {
        vec!["classifier".into()]
    }
    fn peft_task_type(&self) -> Option<&'static str> {
        Some("TOKEN_CLS")
    }
    fn load_model(&mut self, device: &Device) -> Result<TextClassifier> {
        let (model, report) =
            load_token_classifier(&self.model_dir, self.labels.len(), self.head_dropout, self.head, device)?;
        if !report.initialized.is_empty() {
            tracing::info!("newly initialised: {}", report.initialized.join(", "));
        }
        Ok(model)
    }
    fn examples<'a>(&'a self, _model: &TextClassifier) -> Box<dyn Examples<TextClassifier> + 'a> {
        Box::new(TagExamples {
            splits: &self.splits,
            names: self.labels.names(),
            pad_id: self.tokenizer.pad_id(),
            device: self.device.clone(),
        })
    }
    fn save_model(&self, model: &TextClassifier, method: Method, dir: &Path) -> Result<()> {
        save_model(model, &self.model_dir, &self.labels, &self.meta(method), dir)
    }
    fn adapter_notes(&self, method: Method) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "labels": self.labels.names(), "finetune": self.meta(method) }))
    }
}
