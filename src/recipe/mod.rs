//! Recipes: a training run described as TOML data, with `key=value` overrides from the command
//! line (`--set training.learning_rate=3e-5`).
//!
//! The schema is assembled from sections that belong to the layers reading them: `[data]` is
//! `data::DataConfig`, `[training]` is `training::config::TrainingConfig`, `[lora]` is
//! `methods::lora::LoraConfig`, and so on; each layer takes its own section, never the whole
//! recipe. What this module adds is the run's identity (task, method, model, seed, output) and
//! [`validate`](Recipe::validate), which checks everything that can be checked without reading
//! a file — which methods a task supports ([`Task::methods`]), and each section only for the tasks
//! that read it — so a bad recipe fails before anything is written.

mod validate;

use crate::data::DataConfig;
use crate::data::audio_set::AudioConfig;
use crate::data::image::ImageConfig;
use crate::methods::Method;
use crate::methods::feature_extraction::FeatureExtractionConfig;
use crate::methods::lora::LoraConfig;
use crate::methods::prompt_tuning::PromptTuningConfig;
use crate::methods::transfer::TransferConfig;
use crate::nn::classification_head::HeadConfig;
use crate::quant::QuantConfig;
use crate::training::config::TrainingConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Sentences of tagged words (named entities) and an encoder with a head on every token
    /// (`tasks::token_classification`).
    TokenClassification,
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
    /// (PyTorch's autocast). See `ops::matmul`.
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
    pub lora: Option<LoraConfig>,
    /// Settings of `method = "prompt-tuning"`.
    pub prompt_tuning: Option<PromptTuningConfig>,
    /// Hold the frozen base's linear weights in 4 bits (with `method = "lora"`: QLoRA).
    pub quantization: Option<QuantConfig>,
    /// Image input settings (`task = "image-classification"`).
    #[serde(default)]
    pub image: ImageConfig,
    /// Audio input settings (`task = "audio-classification"`).
    #[serde(default)]
    pub audio: AudioConfig,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::classification_head::Pooling;

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
}
