//! Text classification (`task = "text-classification"`, the default): a BERT-family encoder and a
//! classification head over labelled texts; every method (feature extraction on cached pooled
//! features, full, transfer, LoRA/QLoRA, prompt tuning). The model is saved with
//! `BertForSequenceClassification` keys; adapters as peft's `SEQ_CLS` adapters.

use crate::data::Targets;
use crate::data::batch::{chunk, collate, length_sorted};
use crate::data::tokenizer::TextTokenizer;
use crate::data::{TextData, TokenizedSplit, load_text_data};
use crate::inference::text::{MODEL_FILES, TokenExamples};
use crate::io::hub::{self, RepoKind, sha256_file};
use crate::io::safetensors::HostTensor;
use crate::methods::Method;
use crate::models::encoder_family::Family;
use crate::models::text_classifier::{FinetuneMeta, TextClassifier, check_fits, save_model};
use crate::models::{Head, ModelDir, load_text_classifier};
use crate::nn::classification_head::{ClassificationHead, Pooling, ProblemType};
use crate::pipeline::{self, Devices, NoExtra, Task, TrainReport};
use crate::recipe::{Recipe, Task as TaskKind};
use crate::training::trainer::Examples;
use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    pipeline::run(recipe, resume, show_progress, |devices| TextClassification::prepare(recipe, devices))
}

/// A text-classification run: the base model's files, its tokenizer and the tokenized splits.
pub struct TextClassification {
    model_dir: ModelDir,
    tokenizer: TextTokenizer,
    data: TextData,
    /// The checkpoint's head if it was trained for exactly these labels, else a new one.
    head: Head,
    family: Family,
    /// What `config.json` / `finetune.json` record; `method` is filled in when saving.
    meta: FinetuneMeta,
    head_dropout: f64,
    eval_batch_size: usize,
    device: Device,
}

impl TextClassification {
    fn prepare(recipe: &Recipe, devices: &Devices) -> Result<Self> {
        let model_dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &MODEL_FILES)?)?;
        let tokenizer = TextTokenizer::from_file(&model_dir.tokenizer_path(), recipe.data.max_length)?;
        let prompt = recipe.prompt_tuning.as_ref().filter(|_| recipe.method == Method::PromptTuning);
        let family =
            check_fits(&model_dir, &tokenizer, recipe.data.max_length + prompt.map_or(0, |p| p.num_virtual_tokens))?;
        let regression = recipe.head.problem_type == ProblemType::Regression;
        let data = load_text_data(&recipe.data, recipe.head.problem_type, &tokenizer)?;
        tracing::info!(
            "{}; {} train / {} validation / {} test examples",
            if regression {
                "regression (labels are numbers)".to_string()
            } else {
                let sets = if data.labels.is_multi_label() { " (any number per example)" } else { "" };
                format!("{} labels{sets} {:?}", data.labels.len(), data.labels.names())
            },
            data.train.len(),
            data.validation.as_ref().map_or(0, TokenizedSplit::len),
            data.test.as_ref().map_or(0, TokenizedSplit::len)
        );
        let head =
            if model_dir.labels()?.as_deref() == Some(data.labels.names()) { Head::FromCheckpoint } else { Head::New };
        let meta = FinetuneMeta {
            pooling: recipe.head.pooling,
            max_length: recipe.data.max_length,
            text_pair: recipe.data.text_pair_column.is_some(),
            problem_type: recipe.head.problem_type,
            per_token: false,
            method: String::new(),
            base_model: recipe.model.clone(),
            quantization: recipe.quantization.clone(),
        };
        Ok(Self {
            model_dir,
            tokenizer,
            data,
            head,
            family,
            meta,
            head_dropout: recipe.head.dropout,
            eval_batch_size: recipe.training.eval_batch_size,
            device: devices.base.clone(),
        })
    }

    fn meta(&self, method: Method) -> FinetuneMeta {
        FinetuneMeta { method: method.name().into(), ..self.meta.clone() }
    }

    /// The present splits in order: train, validation, test.
    fn present(&self) -> Vec<&TokenizedSplit> {
        [Some(&self.data.train), self.data.validation.as_ref(), self.data.test.as_ref()].into_iter().flatten().collect()
    }

    fn split(&self, slot: usize) -> Option<&TokenizedSplit> {
        [Some(&self.data.train), self.data.validation.as_ref(), self.data.test.as_ref()][slot]
    }
}

impl Task for TextClassification {
    type Model = TextClassifier;
    type Extra = NoExtra;

    fn kind(&self) -> TaskKind {
        TaskKind::TextClassification
    }
    fn num_outputs(&self) -> usize {
        self.data.labels.len()
    }
    fn labels(&self) -> Vec<String> {
        self.data.labels.names().to_vec()
    }
    fn train_len(&self) -> usize {
        self.data.train.len()
    }
    fn skipped_rows(&self) -> usize {
        self.present().iter().map(|s| s.skipped).sum()
    }
    fn head_modules(&self) -> Vec<String> {
        // peft's SEQ_CLS default saves "classifier"; DistilBERT's pre_classifier is a new layer
        // of the head too (random in a base checkpoint), so it trains and travels with it.
        let mut modules = vec!["classifier".to_string()];
        if self.family == Family::DistilBert && self.meta.pooling == Pooling::Pooler {
            modules.insert(0, Family::DistilBert.pooler_module().into());
        }
        modules
    }
    fn peft_task_type(&self) -> Option<&'static str> {
        Some("SEQ_CLS")
    }
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        // peft tokenizes a prompt's init text without special tokens.
        self.tokenizer.encode_plain(text)
    }

    fn load_model(&mut self, device: &Device) -> Result<TextClassifier> {
        let (model, report) = load_text_classifier(
            &self.model_dir,
            self.num_outputs(),
            self.meta.pooling,
            self.head_dropout,
            self.head,
            device,
        )?;
        if !report.initialized.is_empty() {
            tracing::info!("newly initialised: {}", report.initialized.join(", "));
        }
        Ok(model)
    }

    fn examples<'a>(&'a self, _model: &TextClassifier) -> Box<dyn Examples<TextClassifier> + 'a> {
        Box::new(TokenExamples { data: &self.data, pad_id: self.tokenizer.pad_id(), device: self.device.clone() })
    }

    fn save_model(&self, model: &TextClassifier, method: Method, dir: &Path) -> Result<()> {
        save_model(model, &self.model_dir, &self.data.labels, &self.meta(method), dir)
    }

    fn adapter_notes(&self, method: Method) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "labels": self.data.labels.names(), "finetune": self.meta(method) }))
    }
    fn adapter_files(&self) -> Vec<(&'static str, String)> {
        let pooling = self.meta.pooling;
        if pooling == Pooling::Pooler {
            return Vec::new();
        }
        tracing::warn!(
            "head.pooling = {pooling:?}: peft + BertForSequenceClassification apply a pooler instead; \
             the adapter's README.md and the merged model/ (a sentence-transformers directory) say how to reproduce it"
        );
        vec![(
            "README.md",
            format!(
                "# finetune adapter ({pooling:?} pooling)\n\n\
             This adapter was trained with `head.pooling = \"{}\"`. Loaded with peft onto\n\
             `BertForSequenceClassification`, it would pass the [CLS] state through BERT's pooler (tanh(dense))\n\
             instead, and give other probabilities. To reproduce finetune's outputs in Python, merge it\n\
             (`finetune merge --adapter THIS_DIR --out merged/`): `merged/` is also a sentence-transformers\n\
             model whose `SentenceTransformer(\"merged\").encode(texts)` returns finetune's logits (see\n\
             docs/text.md, \"Using the fine-tuned model from Python\").\n",
                if pooling == Pooling::Mean { "mean" } else { "cls" }
            ),
        )]
    }
    fn frozen_model(&mut self, device: &Device) -> Result<TextClassifier> {
        let (model, _) =
            load_text_classifier(&self.model_dir, self.num_outputs(), self.meta.pooling, 0.0, self.head, device)?;
        Ok(model.valid())
    }
    fn head_mut(model: &mut TextClassifier) -> &mut ClassificationHead {
        &mut model.head
    }
    fn feature_splits(&self) -> Vec<(&'static str, usize)> {
        self.present().iter().map(|s| (s.name, s.len())).collect()
    }
    fn split_targets(&self, slot: usize) -> Option<Targets> {
        self.split(slot).map(|s| s.targets.clone())
    }

    /// The weights and config, the pooling and length, and the exact token ids of every split.
    fn feature_cache_key(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"finetune-features-v1\0");
        h.update(sha256_file(&self.model_dir.weights_path())?.as_bytes());
        h.update(std::fs::read(self.model_dir.config_path())?);
        h.update(format!("{:?}/{}", self.meta.pooling, self.meta.max_length).as_bytes());
        for s in self.present() {
            h.update(s.name.as_bytes());
            h.update((s.encoded.len() as u64).to_le_bytes());
            for e in &s.encoded {
                h.update((e.ids.len() as u32).to_le_bytes());
                for (&id, &ty) in e.ids.iter().zip(&e.type_ids) {
                    h.update(id.to_le_bytes());
                    h.update(ty.to_le_bytes());
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Pooled features in split order, batches of similar length.
    fn compute_features(
        &self,
        model: &TextClassifier,
        i: usize,
        progress: &indicatif::ProgressBar,
    ) -> Result<HostTensor> {
        let split = self.present()[i];
        let n = split.len();
        let mut hidden = 0;
        let mut out = Vec::new();
        for batch in chunk(&length_sorted(&split.encoded), self.eval_batch_size) {
            let f = model.features(&collate(&split.encoded, &batch, self.tokenizer.pad_id(), &self.device));
            let [b, h] = f.dims();
            if out.is_empty() {
                hidden = h;
                out = vec![0f32; n * h];
            }
            let values: Vec<f32> = f.into_data().convert::<f32>().try_into_vec().expect("f32 features");
            for (row, &i) in batch.iter().enumerate() {
                out[i * h..(i + 1) * h].copy_from_slice(&values[row * h..(row + 1) * h]);
            }
            progress.inc(b as u64);
        }
        Ok(HostTensor::new(vec![n, hidden], out))
    }
}
