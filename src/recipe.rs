//! Recipes: a training run described as TOML data, with `key=value` overrides from the command
//! line (`--set training.learning_rate=3e-5`).

use crate::data::text::Columns;
use crate::models::text_classifier::Pooling;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The fine-tuning method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Backbone frozen, features computed once and cached, only the head trains.
    FeatureExtraction,
    /// Every parameter trains.
    Full,
    /// New head plus the top layers; more layers unfreeze over time; layer-wise learning rates.
    Transfer,
    /// Low-rank adapters (LoRA/DoRA) on chosen layers; the base is frozen.
    Lora,
    /// A trainable soft prompt; the base is frozen.
    PromptTuning,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::FeatureExtraction => "feature-extraction",
            Self::Full => "full",
            Self::Transfer => "transfer",
            Self::Lora => "lora",
            Self::PromptTuning => "prompt-tuning",
        }
    }

    /// Methods whose result is an adapter on a frozen base rather than a whole model.
    pub fn is_peft(self) -> bool {
        matches!(self, Self::Lora | Self::PromptTuning)
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        toml::Value::String(s.into()).try_into().map_err(|_| {
            anyhow::anyhow!("unknown method '{s}' (feature-extraction, full, transfer, lora, prompt-tuning)")
        })
    }
}

/// What the model learns to do.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Labelled texts, an encoder and a classification head (`tasks::text_classification`).
    #[default]
    TextClassification,
    /// Supervised fine-tuning of a decoder on prompts and responses (`tasks::causal_lm`).
    CausalLm,
    /// Labelled images and a pretrained CNN backbone (`tasks::image_classification`).
    ImageClassification,
    /// Labelled audio clips and a pretrained Whisper encoder (`tasks::audio_classification`).
    AudioClassification,
    /// Clips with transcripts and a pretrained Whisper model (`tasks::transcription`).
    Transcription,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub task: Task,
    pub method: Method,
    /// A model directory or a Hugging Face hub id (resolved through the hub cache).
    pub model: String,
    /// For a hub id of a GGUF repository: the file to use (like transformers' `gguf_file`).
    pub gguf_file: Option<String>,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where checkpoints, metrics, plots and the fine-tuned model go.
    pub output_dir: PathBuf,
    /// `cpu` (burn's flex backend), or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, or `bf16`: matrix products in bf16 with f32 weights, norms and optimizer state
    /// (PyTorch's autocast). See `models::precision`.
    #[serde(default = "default_precision")]
    pub precision: String,
    pub data: DataConfig,
    #[serde(default)]
    pub head: HeadConfig,
    pub training: TrainingConfig,
    #[serde(default)]
    pub transfer: TransferConfig,
    #[serde(default)]
    pub feature_extraction: FeatureExtractionConfig,
    /// Settings of `method = "lora"` (peft's `LoraConfig` fields).
    pub lora: Option<crate::methods::lora::LoraConfig>,
    /// Settings of `method = "prompt-tuning"`.
    pub prompt_tuning: Option<crate::methods::prompt_tuning::PromptTuningConfig>,
    /// Hold the frozen base's linear weights in 4 bits (with `method = "lora"`: QLoRA).
    pub quantization: Option<crate::quant::QuantConfig>,
    /// Image input settings (`task = "image-classification"`).
    #[serde(default)]
    pub image: ImageConfig,
    /// Audio input settings (`task = "audio-classification"`).
    #[serde(default)]
    pub audio: AudioConfig,
}

/// How audio clips are fed to a speech encoder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// Window length in seconds (clips are padded or cut to it): Whisper's own 30, or shorter
    /// for short clips (the encoder then sees 50 positions per second).
    #[serde(default = "default_audio_seconds")]
    pub seconds: f32,
    /// Random augmentation of training clips; absent: none.
    pub augment: Option<crate::data::audio_set::AudioAugment>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self { seconds: default_audio_seconds(), augment: None }
    }
}

fn default_audio_seconds() -> f32 {
    30.0
}

/// How images are fed to an image backbone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Input side length; default: the backbone's pretraining size (224 for ImageNet models).
    pub size: Option<usize>,
    /// Evaluation crop as a fraction of the resized short side; default: the backbone's
    /// (0.875 for ImageNet models). 1.0 keeps the whole image (e.g. Fashion-MNIST).
    pub crop_pct: Option<f32>,
    /// Without a validation file: hold out this fraction of the training images, every
    /// `round(1/f)`-th one (index ≡ k-1 mod k), so any language reproduces the split.
    #[serde(default)]
    pub validation_split: f64,
    /// Train on the first this many training images only (quick runs on a CPU).
    pub max_train_examples: Option<usize>,
    /// Random augmentation of training images; absent: none.
    pub augment: Option<crate::data::image::AugmentConfig>,
    /// BatchNorm in trainable layers: `train` (batch statistics, running averages updated, as
    /// PyTorch's `model.train()`), or `frozen` (the pretrained statistics throughout). Frozen
    /// layers always use the pretrained statistics.
    #[serde(default)]
    pub batch_norm: BatchNormMode,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    #[default]
    Train,
    Frozen,
}

fn default_revision() -> String {
    "main".into()
}
fn default_seed() -> u64 {
    42
}
fn default_device() -> String {
    "cpu".into()
}
fn default_precision() -> String {
    "f32".into()
}

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
}

fn default_true() -> bool {
    true
}

fn default_text_column() -> String {
    "text".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_max_length() -> usize {
    128
}

impl DataConfig {
    pub fn columns(&self) -> Columns {
        Columns { text: self.text_column.clone(), label: self.label_column.clone() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    /// Dropout before the classifier (HF: `classifier_dropout`, else `hidden_dropout_prob`).
    #[serde(default = "default_head_dropout")]
    pub dropout: f64,
}

fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_head_dropout() -> f64 {
    0.1
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { pooling: default_pooling(), dropout: default_head_dropout() }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    pub learning_rate: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Warmup as a fraction of all optimizer steps (ignored when `warmup_steps` is set).
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value; `0` disables clipping.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_accum")]
    pub grad_accum_steps: usize,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_epsilon: f64,
    /// Save a resumable checkpoint every this many optimizer steps (and at every epoch end).
    pub checkpoint_every_steps: Option<usize>,
    /// Stop after this many optimizer steps (for smoke runs).
    pub max_steps: Option<usize>,
    /// The validation metric that selects the best checkpoint and drives early stopping.
    #[serde(default = "default_metric")]
    pub metric: Metric,
    pub early_stopping: Option<EarlyStopping>,
    /// Put training examples of similar length in the same batch (transformers'
    /// `group_by_length`): less padding, so less work per epoch; batches stay shuffled.
    #[serde(default)]
    pub group_by_length: bool,
}

fn default_eval_batch() -> usize {
    64
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_warmup_ratio() -> f64 {
    0.06
}
fn default_schedule() -> Schedule {
    Schedule::Linear
}
fn default_clip() -> f64 {
    1.0
}
fn default_accum() -> usize {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_metric() -> Metric {
    Metric::Accuracy
}

/// Validation metrics that can select checkpoints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    MacroF1,
    Loss,
}

impl Metric {
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::Loss)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::MacroF1 => "macro_f1",
            Self::Loss => "loss",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Stop after this many evaluations without improvement.
    pub patience: usize,
    /// The improvement that counts (in the metric's units).
    #[serde(default)]
    pub min_delta: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Encoder layers (from the top) that train from the start, besides the head.
    #[serde(default)]
    pub trainable_layers: usize,
    /// Unfreeze one more layer group (top-down; embeddings last) every this many epochs.
    pub unfreeze_every_epochs: Option<usize>,
    /// Or every this many optimizer steps.
    pub unfreeze_every_steps: Option<usize>,
    /// Learning rate of a layer = lr × decay^(distance from the head); 1.0 disables it.
    #[serde(default = "default_lr_decay")]
    pub layer_lr_decay: f64,
}

fn default_lr_decay() -> f64 {
    1.0
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self { trainable_layers: 0, unfreeze_every_epochs: None, unfreeze_every_steps: None, layer_lr_decay: 1.0 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureExtractionConfig {
    /// Where cached features live; default `$FINETUNE_CACHE` or `~/.cache/finetune/features`.
    pub cache_dir: Option<PathBuf>,
}

impl Recipe {
    /// Read a recipe file and apply `key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        Self::parse(&text, overrides).with_context(|| format!("recipe {}", path.display()))
    }

    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text)?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let recipe: Recipe = value.try_into()?;
        recipe.validate()?;
        Ok(recipe)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.training;
        if t.epochs == 0 || t.batch_size == 0 || t.eval_batch_size == 0 || t.grad_accum_steps == 0 {
            bail!("training.epochs, batch_size, eval_batch_size and grad_accum_steps must be positive");
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            bail!("training.learning_rate must be a positive number, got {}", t.learning_rate);
        }
        if !(0.0..1.0).contains(&self.head.dropout) {
            bail!("head.dropout must be in [0, 1), got {}", self.head.dropout);
        }
        if self.transfer.unfreeze_every_epochs.is_some() && self.transfer.unfreeze_every_steps.is_some() {
            bail!("set one of transfer.unfreeze_every_epochs and transfer.unfreeze_every_steps, not both");
        }
        crate::ops::context::Precision::parse(&self.precision)?;
        if self.data.max_length < 2 {
            bail!("data.max_length must be at least 2");
        }
        if self.method == Method::Lora && self.lora.is_none() {
            bail!("method = \"lora\" needs a [lora] section (r, lora_alpha, target_modules, ...)");
        }
        if let Some(q) = &self.quantization {
            if q.keeps_file_quantization() {
                if self.task != Task::CausalLm {
                    bail!(
                        "quantization.type = \"gguf\" keeps a GGUF decoder's own quantization (task = \"causal-lm\")"
                    );
                }
            } else {
                q.validate()?;
            }
            if self.method != Method::Lora {
                bail!("[quantization] needs method = \"lora\" (QLoRA): other methods train the base weights");
            }
        }
        if !(self.audio.seconds >= 0.02 && self.audio.seconds <= 30.0) {
            bail!(
                "audio.seconds must be in [0.02, 30] (Whisper's encoder sees at most 30 s), got {}",
                self.audio.seconds
            );
        }
        if self.method == Method::PromptTuning && self.prompt_tuning.is_none() {
            bail!("method = \"prompt-tuning\" needs a [prompt_tuning] section (num_virtual_tokens, ...)");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serializes")
    }
}

/// Apply one `dotted.key=value` override; the value is parsed as TOML, else taken as a string.
pub fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) =
        assignment.split_once('=').with_context(|| format!("override '{assignment}' is not of the form key=value"))?;
    // TOML has no null: `key=null` removes the key (an optional setting or a whole table).
    let value = (raw.trim() != "null").then(|| parse_value(raw.trim()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .with_context(|| format!("override '{key}': '{}' is not a table", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            match value {
                Some(v) => table.insert(part.to_string(), v),
                None => table.remove(*part),
            };
            return Ok(());
        }
        node = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("split always yields at least one part")
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Expand a leading `~` and `${VAR}` / `${VAR:-default}` references in a path from a recipe.
pub fn expand_path(raw: &str) -> PathBuf {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        out.push_str(&std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string()));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    match out.strip_prefix("~/") {
        Some(tail) => home_dir().join(tail),
        None if out == "~" => home_dir(),
        None => PathBuf::from(out),
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
method = "transfer"
model = "sentence-transformers/all-MiniLM-L6-v2"
output_dir = "runs/x"
[data]
dataset = "finetune/movie-review-polarity"
train = "train.csv"
[training]
epochs = 2
batch_size = 16
learning_rate = 5e-5
"#;

    #[test]
    fn overrides_apply_with_types() {
        let r = Recipe::parse(
            MINIMAL,
            &[
                "training.learning_rate=1e-4".into(),
                "transfer.trainable_layers=2".into(),
                "method=full".into(),
                "training.early_stopping.patience=3".into(),
                "head.pooling=cls".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.training.learning_rate, 1e-4);
        assert_eq!(r.transfer.trainable_layers, 2);
        assert_eq!(r.method, Method::Full);
        assert_eq!(r.training.early_stopping.unwrap().patience, 3);
        assert_eq!(r.head.pooling, Pooling::Cls);
        let r =
            Recipe::parse(MINIMAL, &["image.augment.hflip=0.0".into(), "training.early_stopping.patience=3".into()])
                .unwrap();
        assert_eq!(r.image.augment.unwrap().hflip, 0.0);
        let r = Recipe::parse(
            MINIMAL,
            &["image.augment.hflip=0.0".into(), "image.augment=null".into(), "data.test=null".into()],
        )
        .unwrap();
        assert!(r.image.augment.is_none() && r.data.test.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Recipe::parse(MINIMAL, &["training.lr=1".into()]).is_err());
        assert!(Recipe::parse(MINIMAL, &["method=magic".into()]).is_err());
        assert!(Recipe::parse(MINIMAL, &["training.epochs=0".into()]).is_err());
        assert!(Recipe::parse(MINIMAL, &["nonsense".into()]).is_err());
    }

    #[test]
    fn path_expansion() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("FT_TEST_DIR", "/data") };
        assert_eq!(expand_path("${FT_TEST_DIR}/a"), PathBuf::from("/data/a"));
        assert_eq!(expand_path("${FT_UNSET_VAR:-/x}/b"), PathBuf::from("/x/b"));
        assert_eq!(expand_path("~/c"), home_dir().join("c"));
    }
}
