//! Text classification with a BERT-family encoder: the recipe for `feature-extraction`, `full`
//! and `transfer`, plus evaluation and prediction with a fine-tuned model directory.

use crate::data::batch::{collate, length_sorted};
use crate::data::text::LabelSet;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{TextData, TokenizedSplit, load_text_data};
use crate::io::hub::{self, RepoKind};
use crate::io::peft::AdapterFiles;
use crate::io::safetensors::{HostTensor, write_safetensors};
use crate::methods::TrainPlan;
use crate::methods::feature_extraction::{self, FeatureExamples, to_tensor};
use crate::methods::lora::{self, LoraConfig};
use crate::methods::prompt_tuning::{self, PromptInit, PromptTuningConfig};
use crate::nn::soft_prompt::SoftPrompt;
use crate::models::text_classifier::{self, TextClassifier};
use crate::nn::classification_head::Pooling;
use crate::nn::classification_head::ClassificationHead;
use crate::models::{Head, ModelDir, checkpoint_tensors, count_params, load_text_classifier};
use crate::methods::Method;
use crate::recipe::Recipe;
use crate::training::checkpoint::{BestSoFar, RunDir};
use crate::training::metrics::EvalMetrics;
use crate::training::trainer::{Examples, MethodHooks, Split, classification_loss, evaluate, train};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// Files a model directory needs for text classification.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// What a training run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub method: String,
    pub model: String,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub skipped_rows: usize,
    pub total_params: usize,
    pub trainable_params: usize,
    pub optimizer_steps: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub best: Option<BestSoFar>,
    pub test: Option<EvalMetrics>,
    /// Seconds of optimizer steps (forward, backward, update), excluding evaluation.
    pub train_seconds: f64,
    /// Seconds spent computing (or loading) cached features; feature extraction only.
    pub feature_seconds: Option<f64>,
    pub feature_cache_hit: Option<bool>,
    pub run_dir: PathBuf,
    pub model_dir: PathBuf,
}

impl TrainReport {
    /// The fields every task fills the same way: the recipe's method and model, the trainer's
    /// final state, the run directory (`model_dir` defaults to `run/model`). Tasks set the rest.
    pub fn from_run(recipe: &Recipe, state: &crate::training::checkpoint::TrainState, run: &RunDir) -> Self {
        Self {
            method: recipe.method.name().into(),
            model: recipe.model.clone(),
            labels: Vec::new(),
            train_examples: 0,
            skipped_rows: 0,
            total_params: 0,
            trainable_params: 0,
            optimizer_steps: state.step,
            epochs_run: state.epoch.max(1),
            stopped_early: state.stopped_early,
            best: state.best.clone(),
            test: None,
            train_seconds: state.train_seconds,
            feature_seconds: None,
            feature_cache_hit: None,
            run_dir: run.root.clone(),
            model_dir: run.model(),
        }
    }
}

/// Settings that finetune stores in a fine-tuned model's `config.json` under `"finetune"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneMeta {
    pub pooling: Pooling,
    pub max_length: usize,
    pub method: String,
    pub base_model: String,
    /// The base's linear weights were 4-bit quantized during training (QLoRA); loading the
    /// adapter quantizes the base the same way so the trained function is reproduced exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::quant::QuantConfig>,
}

/// Token batches for a model that runs the whole encoder.
struct TokenExamples<'a> {
    data: &'a TextData,
    pad_id: u32,
    device: Device,
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
    fn loss(&self, model: &TextClassifier, split: Split, indices: &[usize]) -> (Tensor<1>, Vec<(usize, usize)>) {
        let s = self.split(split).expect("split present");
        let logits = model.forward(&collate(&s.encoded, indices, self.pad_id, &self.device));
        classification_loss(logits, &s.labels, indices)
    }
    fn lengths(&self, split: Split) -> Option<Vec<usize>> {
        self.split(split).map(|s| s.encoded.iter().map(|e| e.ids.len()).collect())
    }
    fn eval_order(&self, split: Split) -> Vec<usize> {
        self.split(split).map_or_else(Vec::new, |s| length_sorted(&s.encoded))
    }
}

/// Fine-tune per `recipe`; with `resume`, continue the run in `recipe.output_dir`.
pub fn run(recipe: &Recipe, resume: bool, show_progress: bool) -> Result<TrainReport> {
    let base = crate::ops::device::select(&recipe.device)?;
    let _precision = crate::ops::context::enter(crate::ops::context::Precision::parse(&recipe.precision)?);
    let train_device = crate::ops::device::training(&base);
    let model_dir = ModelDir::open(&hub::resolve(&recipe.model, RepoKind::Model, &recipe.revision, &MODEL_FILES)?)?;
    let tokenizer = TextTokenizer::from_file(&model_dir.tokenizer, recipe.data.max_length)?;
    let data = load_text_data(&recipe.data, None, &tokenizer)?;
    let skipped_rows = data.train.skipped
        + data.validation.as_ref().map_or(0, |s| s.skipped)
        + data.test.as_ref().map_or(0, |s| s.skipped);
    tracing::info!(
        "{} labels {:?}; {} train / {} validation / {} test examples",
        data.labels.len(),
        data.labels.names(),
        data.train.len(),
        data.validation.as_ref().map_or(0, TokenizedSplit::len),
        data.test.as_ref().map_or(0, TokenizedSplit::len)
    );

    let run = RunDir::start(&recipe.output_dir, resume, &recipe.to_toml())?;

    // Seed before building the model: the new head's initialisation is part of the run.
    base.seed(recipe.seed);
    train_device.seed(recipe.seed);
    let num_labels = data.labels.len();
    // Keep a fine-tuned checkpoint's head only when it was trained for exactly these labels.
    let head =
        if model_dir.labels()?.as_deref() == Some(data.labels.names()) { Head::FromCheckpoint } else { Head::New };
    let trainer_cfg = crate::training::trainer::TrainerConfig::new(&recipe.training, recipe.seed, num_labels, data.train.len(), show_progress);

    let eval_batch = recipe.training.eval_batch_size;
    let mut adapter: Option<AdapterSpec> = None;
    let (classifier, state, feature_info, test) = match recipe.method {
        Method::FeatureExtraction => {
            let (encoder, _) = load_text_classifier(&model_dir, num_labels, recipe.head.pooling, 0.0, head, &base)?;
            let encoder = encoder.valid();
            let slots = [Some(&data.train), data.validation.as_ref(), data.test.as_ref()];
            let present: Vec<&TokenizedSplit> = slots.iter().flatten().copied().collect();
            let key = feature_extraction::cache_key(
                &model_dir.weights,
                &model_dir.config,
                &format!("{:?}/{}", recipe.head.pooling, recipe.data.max_length),
                &present,
            )?;
            let cache_dir =
                recipe.feature_extraction.cache_dir.clone().unwrap_or_else(feature_extraction::default_cache_dir);
            let cached = feature_extraction::load_or_compute(
                &encoder,
                &present,
                &key,
                &cache_dir,
                recipe.training.eval_batch_size,
                tokenizer.pad_id(),
                &base,
                show_progress,
            )?;
            let mut features = cached.splits.iter();
            let examples = FeatureExamples {
                features: slots.map(|s| s.map(|_| to_tensor(features.next().expect("one per split"), &base))),
                labels: slots.map(|s| s.map_or_else(Vec::new, |s| s.labels.clone())),
            };
            let hidden = encoder.bert.embeddings.word_embeddings.weight.lazy_shape().as_slice()[1];
            let head = ClassificationHead::new(hidden, num_labels, recipe.head.dropout, 0.02, &train_device);
            let set_trainable = |m: ClassificationHead, _: usize, _: usize| (m, Vec::new());
            let lr_scale = |_: &str| 1.0;
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let outcome = train(head, &examples, &trainer_cfg, hooks, &run, resume, &train_device)?;
            let head = outcome.best_model.valid();
            // The test split is scored on its cached features too: the encoder never runs again.
            let test = data.test.as_ref().map(|_| evaluate(&head, &examples, Split::Test, eval_batch, num_labels));
            let mut classifier = encoder;
            classifier.head = head;
            (classifier, outcome.state, Some((cached.seconds, cached.cache_hit)), test)
        }
        Method::Full | Method::Transfer | Method::Lora | Method::PromptTuning => {
            let (mut model, report) = load_text_classifier(
                &model_dir,
                num_labels,
                recipe.head.pooling,
                recipe.head.dropout,
                head,
                &train_device,
            )?;
            if !report.initialized.is_empty() {
                tracing::info!("newly initialised: {}", report.initialized.join(", "));
            }
            adapter = attach_new_adapter(recipe, &mut model, &tokenizer, &train_device)?;
            let plan = TrainPlan::new(recipe.method, &recipe.transfer, model.layer_groups(), text_classifier::layer_group);
            let unfrozen = Cell::new(0usize);
            let set_trainable = |m: TextClassifier, epoch: usize, step: usize| {
                if let Some(a) = &adapter {
                    // Adapter methods: one fixed set of trainable parameters, set on the first call.
                    if unfrozen.replace(1) == 1 {
                        return (m, Vec::new());
                    }
                    return (crate::io::params::set_trainable(m, |p| a.is_trainable(p)), Vec::new());
                }
                let k = plan.unfrozen(epoch, step);
                let previous = unfrozen.replace(k);
                if previous == k {
                    return (m, Vec::new());
                }
                let newly = plan.order[previous.min(k)..k].iter().map(|g| g.name()).collect();
                (crate::io::params::set_trainable(m, |p| plan.is_trainable(p, k)), newly)
            };
            let lr_scale = |p: &str| plan.lr_scale(p);
            let hooks = MethodHooks { set_trainable: &set_trainable, lr_scale: &lr_scale };
            let examples = TokenExamples { data: &data, pad_id: tokenizer.pad_id(), device: base.clone() };
            let outcome = train(model, &examples, &trainer_cfg, hooks, &run, resume, &train_device)?;
            let classifier = outcome.best_model.valid();
            let test =
                data.test.as_ref().map(|_| evaluate(&classifier, &examples, Split::Test, eval_batch, num_labels));
            (classifier, outcome.state, None, test)
        }
    };
    if let Some(t) = &test {
        tracing::info!("test: loss {:.4} accuracy {:.4} macro-F1 {:.4}", t.loss, t.accuracy, t.macro_f1);
    }

    let meta = FinetuneMeta {
        pooling: recipe.head.pooling,
        max_length: recipe.data.max_length,
        method: recipe.method.name().into(),
        base_model: recipe.model.clone(),
        quantization: recipe.quantization.clone(),
    };
    let output_dir = match &adapter {
        Some(a) => {
            export_adapter(&classifier, a, &recipe.model, &data.labels, &meta, &run.adapter())?;
            run.adapter()
        }
        None => {
            export_model(&classifier, &model_dir, &data.labels, &meta, &run.model())?;
            run.model()
        }
    };
    let (total_params, trainable_params) = trainable_counts(recipe, &classifier, adapter.as_ref());
    let report = TrainReport {
        labels: data.labels.names().to_vec(),
        train_examples: data.train.len(),
        skipped_rows,
        total_params,
        trainable_params,
        test,
        feature_seconds: feature_info.map(|f| f.0),
        feature_cache_hit: feature_info.map(|f| f.1),
        model_dir: output_dir,
        ..TrainReport::from_run(recipe, &state, &run)
    };
    run.finish(&report)?;
    Ok(report)
}

/// A parameter-efficient method's adapter, as configured.
#[derive(Debug, Clone)]
pub enum AdapterSpec {
    Lora(LoraConfig),
    Prompt(PromptTuningConfig),
}

impl AdapterSpec {
    /// Does the parameter at `path` (burn path in a [`TextClassifier`]) train?
    pub fn is_trainable(&self, path: &str) -> bool {
        let key = text_classifier::hf_key(path);
        let module = key.rsplit_once('.').map_or("", |(m, _)| m);
        match self {
            Self::Lora(cfg) => lora::is_trainable(cfg, path, module),
            Self::Prompt(cfg) => path.starts_with("prompt.") || lora::in_modules(module, &cfg.modules_to_save),
        }
    }
}

/// Attach the fresh adapter (LoRA or soft prompt) that `recipe` asks for, if any.
fn attach_new_adapter(
    recipe: &Recipe,
    model: &mut TextClassifier,
    tokenizer: &TextTokenizer,
    device: &Device,
) -> Result<Option<AdapterSpec>> {
    match recipe.method {
        Method::Lora => {
            let mut cfg = recipe.lora.clone().context("method = \"lora\" needs a [lora] section")?;
            // As peft does for sequence classification: the new head always trains and is saved.
            if !cfg.saves("classifier") {
                cfg.modules_to_save.push("classifier".into());
            }
            if let Some(q) = &recipe.quantization {
                let report = crate::methods::lora::qlora::quantize_model(model, q, |name| cfg.saves(name))?;
                tracing::info!(
                    "QLoRA: {} layers ({} parameters) quantized to {} ({:.3} bits/parameter): {:.1} MB -> {:.1} MB",
                    report.layers,
                    report.parameters,
                    q.quant_type,
                    report.bits_per_parameter(),
                    report.f32_bytes as f64 / 1e6,
                    report.quantized_bytes as f64 / 1e6
                );
            }
            let targeted = lora::inject(model, &cfg, device)?;
            tracing::info!("LoRA r={} on {} layers", cfg.r, targeted.len());
            Ok(Some(AdapterSpec::Lora(cfg)))
        }
        Method::PromptTuning => {
            let cfg =
                recipe.prompt_tuning.clone().context("method = \"prompt-tuning\" needs a [prompt_tuning] section")?;
            let hidden = model.bert.embeddings.word_embeddings.weight.lazy_shape().as_slice()[1];
            let prompt = match cfg.init {
                PromptInit::Random => SoftPrompt::random(cfg.num_virtual_tokens, hidden, device),
                PromptInit::Text => {
                    let text = cfg.init_text.as_deref().context("prompt_tuning.init = \"text\" needs init_text")?;
                    // peft tokenizes the init text without special tokens.
                    let ids = tokenizer.encode_plain(text)?;
                    SoftPrompt::from_tokens(
                        model.bert.embeddings.word_embeddings.weight.val(),
                        &ids,
                        cfg.num_virtual_tokens,
                    )?
                }
            };
            model.prompt = Some(prompt);
            Ok(Some(AdapterSpec::Prompt(cfg)))
        }
        _ => Ok(None),
    }
}

/// Write the adapter of a PEFT run in peft's format, plus `finetune.json` (labels, pooling).
pub fn export_adapter(
    model: &TextClassifier,
    spec: &AdapterSpec,
    base_model: &str,
    labels: &LabelSet,
    meta: &FinetuneMeta,
    dir: &Path,
) -> Result<()> {
    let (config, tensors) = match spec {
        AdapterSpec::Lora(cfg) => (
            lora::adapter_config_json(cfg, base_model, "SEQ_CLS"),
            lora::adapter_tensors(model, text_classifier::hf_key, |p| spec.is_trainable(p)),
        ),
        AdapterSpec::Prompt(cfg) => {
            let prompt = model.prompt.as_ref().context("no soft prompt attached")?;
            let p = prompt.embeddings.val();
            let [n, h] = p.dims();
            let data = p.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            let mut tensors = vec![(prompt_tuning::PROMPT_KEY.to_string(), HostTensor::new(vec![n, h], data))];
            let saved = checkpoint_tensors(model, text_classifier::hf_key, |p| {
                spec.is_trainable(&p.path) && !p.path.starts_with("prompt.")
            });
            tensors.extend(saved.into_iter().map(|(k, t)| (format!("{}{k}", prompt_tuning::KEY_PREFIX), t)));
            let cfg_json = prompt_tuning::adapter_config_json(
                cfg,
                h,
                model.bert.num_layers(),
                model.bert.encoder.layer[0].attention.self_attn.num_heads,
                base_model,
            );
            (cfg_json, tensors)
        }
    };
    AdapterFiles::write(dir, &config, tensors)?;
    let extra = serde_json::json!({ "labels": labels.names(), "finetune": meta });
    crate::io::atomic::write_atomic(&dir.join(FINETUNE_ADAPTER_FILE), serde_json::to_string_pretty(&extra)?.as_bytes())
}

/// finetune's own notes beside a peft adapter (label names, pooling); peft ignores the file.
pub const FINETUNE_ADAPTER_FILE: &str = "finetune.json";

/// Attach an adapter written by finetune or by Python peft (LoRA, DoRA, prompt tuning).
pub fn attach_adapter(
    model: TextClassifier,
    files: &AdapterFiles,
    device: &Device,
) -> Result<(TextClassifier, AdapterSpec)> {
    match files.peft_type()? {
        "LORA" => {
            let (model, cfg) = lora::load_adapter(model, files, text_classifier::hf_key, device)?;
            Ok((model, AdapterSpec::Lora(cfg)))
        }
        "PROMPT_TUNING" => {
            let n = files.config["num_virtual_tokens"].as_u64().context("adapter_config.json: no num_virtual_tokens")?
                as usize;
            let t = files.tensor(prompt_tuning::PROMPT_KEY)?;
            let hidden = model.bert.embeddings.word_embeddings.weight.lazy_shape().as_slice()[1];
            if t.shape != [n, hidden] {
                bail!("{}: prompt_embeddings has shape {:?}, expected [{n}, {hidden}]", files.dir.display(), t.shape);
            }
            let modules_to_save: Vec<String> =
                serde_json::from_value(files.config["modules_to_save"].clone()).unwrap_or_default();
            let cfg = PromptTuningConfig {
                num_virtual_tokens: n,
                init: PromptInit::Random,
                init_text: None,
                modules_to_save: modules_to_save.clone(),
            };
            let mut model = model;
            model.prompt = Some(SoftPrompt {
                embeddings: burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(t.data.clone(), [n, hidden]),
                    device,
                )),
            });
            let mut used = std::collections::BTreeSet::from([prompt_tuning::PROMPT_KEY.to_string()]);
            let model = crate::models::import_by_key(
                model,
                &files.tensors,
                |i| format!("{}{}", prompt_tuning::KEY_PREFIX, text_classifier::hf_key(&i.path)),
                &mut used,
            )
            .with_context(|| format!("{}", files.dir.display()))?;
            let unused: Vec<&String> = files.tensors.keys().filter(|k| !used.contains(*k)).collect();
            if !unused.is_empty() {
                bail!("{}: tensors that match no layer of the model: {:?}", files.dir.display(), unused);
            }
            Ok((model, AdapterSpec::Prompt(cfg)))
        }
        other => bail!("{}: peft_type {other} is not supported (LORA, PROMPT_TUNING)", files.dir.display()),
    }
}

/// Parameter counts for the report: what the method trains at its widest point.
fn trainable_counts(recipe: &Recipe, classifier: &TextClassifier, adapter: Option<&AdapterSpec>) -> (usize, usize) {
    let (total, _) = count_params(classifier);
    if let Some(a) = adapter {
        let trainable = crate::io::params::list_params(classifier)
            .iter()
            .filter(|p| a.is_trainable(&p.path))
            .map(|p| p.numel())
            .sum();
        return (total, trainable);
    }
    let plan = TrainPlan::new(recipe.method, &recipe.transfer, classifier.layer_groups(), text_classifier::layer_group);
    let widest = plan.unfrozen(recipe.training.epochs.saturating_sub(1), usize::MAX / 2);
    let trainable = crate::io::params::list_params(classifier)
        .iter()
        .filter(|p| match recipe.method {
            Method::FeatureExtraction => p.path.starts_with("head."),
            _ => plan.is_trainable(&p.path, widest),
        })
        .map(|p| p.numel())
        .sum();
    (total, trainable)
}

/// Write a fine-tuned model directory: `model.safetensors` with `BertForSequenceClassification`
/// keys, `config.json` with `id2label`/`label2id` (and our pooling under `"finetune"`), and the
/// tokenizer files of the base model.
pub fn export_model(
    model: &TextClassifier,
    base: &ModelDir,
    labels: &LabelSet,
    meta: &FinetuneMeta,
    out: &Path,
) -> Result<()> {
    let tensors = checkpoint_tensors(model, text_classifier::hf_key, |_| true);
    let mut config = base.raw_config()?;
    let obj = config.as_object_mut().context("config.json is not an object")?;
    let id2label: serde_json::Map<String, serde_json::Value> =
        labels.names().iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
    let label2id: serde_json::Map<String, serde_json::Value> =
        labels.names().iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
    obj.insert("architectures".into(), serde_json::json!(["BertForSequenceClassification"]));
    obj.insert("id2label".into(), id2label.into());
    obj.insert("label2id".into(), label2id.into());
    obj.insert("num_labels".into(), labels.len().into());
    obj.insert("finetune".into(), serde_json::to_value(meta)?);
    crate::io::atomic::replace_dir_atomic(out, |dir| {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("model.safetensors"), &tensors, Some(metadata))?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
            let src = base.dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, dir.join(f)).with_context(|| format!("copying {}", src.display()))?;
            }
        }
        Ok(())
    })
}

/// A fine-tuned classifier ready for inference: a fine-tuned model directory, or a base model
/// plus an adapter.
pub struct FinetunedClassifier {
    pub model: TextClassifier,
    pub labels: LabelSet,
    pub tokenizer: TextTokenizer,
    pub meta: Option<FinetuneMeta>,
    /// The model directory the weights (or the adapter's base) came from.
    pub base: ModelDir,
    pub adapter: Option<AdapterSpec>,
    device: Device,
}

/// One prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub text: String,
    pub label: String,
    pub probabilities: Vec<(String, f32)>,
    pub logits: Vec<f32>,
}

/// What `finetune.json` beside an adapter holds.
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
            Some(dir) if dir.join(FINETUNE_ADAPTER_FILE).is_file() => {
                let path = dir.join(FINETUNE_ADAPTER_FILE);
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
                let head = ["base_model.model.classifier.weight", "base_model.classifier.weight"]
                    .iter()
                    .find_map(|k| files.tensors.get(*k))
                    .context("the adapter has no classifier and the base model has no id2label")?;
                (0..head.shape[0]).map(|i| format!("LABEL_{i}")).collect()
            }
            (None, None, None) => bail!(
                "{}: not a fine-tuned classifier (config.json has no id2label for a *ForSequenceClassification)",
                base.dir.display()
            ),
        };
        let labels = LabelSet::new(names)?;
        let meta: Option<FinetuneMeta> = match &notes {
            Some(n) => Some(n.finetune.clone()),
            None => base.raw_config()?.get("finetune").map(|v| serde_json::from_value(v.clone())).transpose()?,
        };
        let pooling = meta.as_ref().map_or(Pooling::Pooler, |m| m.pooling);
        let max_len = max_length.or(meta.as_ref().map(|m| m.max_length)).unwrap_or(512);
        let tokenizer = TextTokenizer::from_file(&base.tokenizer, max_len)?;
        let head = if base_labels.as_deref() == Some(labels.names()) { Head::FromCheckpoint } else { Head::New };
        let (model, report) = load_text_classifier(&base, labels.len(), pooling, 0.0, head, &device)?;
        let head_from_base = !report.initialized.iter().any(|p| p.starts_with("head."));
        let (model, adapter) = match &adapter_files {
            Some(files) => {
                let mut model = model;
                if let Some(q) = meta.as_ref().and_then(|m| m.quantization.as_ref()) {
                    let saved: Vec<String> =
                        serde_json::from_value(files.config["modules_to_save"].clone()).unwrap_or_default();
                    crate::methods::lora::qlora::quantize_model(&mut model, q, |name| lora::in_modules(name, &saved))?;
                }
                let (m, a) = attach_adapter(model, files, &device)?;
                (m, Some(a))
            }
            None => (model, None),
        };
        let head_from_adapter =
            adapter_files.as_ref().is_some_and(|f| f.tensors.keys().any(|k| k.ends_with("classifier.weight")));
        if !head_from_base && !head_from_adapter {
            bail!("{}: no trained classifier head in the model or the adapter", base.dir.display());
        }
        Ok(Self { model: model.valid(), labels, tokenizer, meta, base, adapter, device })
    }

    /// Fold a LoRA/DoRA adapter into the base weights (prompt tuning cannot be merged).
    pub fn merge_adapter(&mut self) -> Result<usize> {
        match &self.adapter {
            Some(AdapterSpec::Lora(_)) => {
                let n = lora::merge(&mut self.model);
                self.adapter = None;
                Ok(n)
            }
            Some(AdapterSpec::Prompt(_)) => bail!("a prompt-tuning adapter cannot be merged into the weights"),
            None => bail!("no adapter to merge"),
        }
    }

    /// Write the model as a plain fine-tuned model directory (Hugging Face layout).
    pub fn save(&self, out: &Path) -> Result<()> {
        if self.adapter.is_some() {
            bail!("the model carries an adapter; merge it first");
        }
        let mut meta = self.meta.clone().unwrap_or(FinetuneMeta {
            pooling: self.model.pooling,
            max_length: 512,
            method: "merged".into(),
            base_model: self.base.dir.display().to_string(),
            quantization: None,
        });
        // A merged model is plain f32, whatever the adapter was trained over.
        meta.quantization = None;
        export_model(&self.model, &self.base, &self.labels, &meta, out)
    }

    pub fn predict(&self, texts: &[String], batch_size: usize) -> Result<Vec<Prediction>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encoded = self.tokenizer.encode_all(&refs)?;
        let mut out = Vec::with_capacity(texts.len());
        let order: Vec<usize> = (0..texts.len()).collect();
        for batch in crate::data::batch::chunk(&order, batch_size) {
            let input = collate(&encoded, &batch, self.tokenizer.pad_id(), &self.device);
            let logits = self.model.forward(&input);
            let raw: Vec<f32> = logits.clone().into_data().convert::<f32>().try_into_vec().expect("f32");
            let probs = burn::tensor::activation::softmax(logits, 1);
            let values: Vec<f32> = probs.into_data().convert::<f32>().try_into_vec().expect("f32");
            let k = self.labels.len();
            for (row, &i) in batch.iter().enumerate() {
                let p = &values[row * k..(row + 1) * k];
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(j, _)| j);
                out.push(Prediction {
                    text: texts[i].clone(),
                    label: self.labels.names()[best].clone(),
                    probabilities: self.labels.names().iter().cloned().zip(p.iter().copied()).collect(),
                    logits: raw[row * k..(row + 1) * k].to_vec(),
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
        let raw = crate::data::text::read_rows(path, columns, skip_bad_rows)?;
        let split = crate::data::text::label_rows(raw, &self.labels, skip_bad_rows)?;
        let refs: Vec<&str> = split.texts.iter().map(String::as_str).collect();
        let encoded = self.tokenizer.encode_all(&refs)?;
        let tokenized = TokenizedSplit {
            name: "test",
            path: split.path,
            texts: split.texts.clone(),
            encoded,
            labels: split.labels,
            skipped: split.skipped.len(),
        };
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
            let (model, _) = attach_adapter(self.base.clone(), files, &self.device)?;
            self.active = Some((name.to_string(), model.valid()));
        }
        Ok(&self.active.as_ref().expect("just set").1)
    }

    /// The model with the active adapter (or the base model).
    pub fn model(&self) -> &TextClassifier {
        self.active.as_ref().map_or(&self.base, |(_, m)| m)
    }
}
