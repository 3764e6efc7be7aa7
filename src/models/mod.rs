//! Model architectures and loading them from Hugging Face model directories.

pub mod bert;
pub mod decoder;
pub mod efficientnet_lite;
pub mod encoder_family;
pub mod generation;
pub mod gguf_llama;
pub mod gpt2;
pub mod image_classifier;
pub mod llama;
pub mod mobilenet_v2;
pub mod model_dir;
pub mod resnet;
pub mod text_classifier;
pub mod whisper;

use crate::io::WeightSource;
use crate::io::params::{ParamInfo, import_params, list_params, require_all_present};
use crate::io::safetensors::HostTensor;
use crate::nn::classification_head::Pooling;
use crate::nn::conv_bn::ConvBn;
use crate::nn::dense::Dense;
use crate::nn::layer_group::LayerGroup;
use crate::nn::soft_prompt::SoftPrompt;
use anyhow::{Result, bail};
use bert::BertConfig;
use burn::prelude::*;
pub use model_dir::{Format, ModelDir};
use std::collections::BTreeSet;
use text_classifier::TextClassifier;

/// What methods see of a trainable model: the checkpoint's name of every parameter, the linear
/// layers and convolutions adapters attach to (by the checkpoint's module names, which is how
/// peft's `target_modules` name them), and the groups gradual unfreezing works in. One impl per
/// model; `methods` is written once against it and no model code mentions a method.
pub trait Adaptable: burn::module::Module + Sized {
    /// The checkpoint key of parameter `path` (`bert.encoder.layer.0.attention.self.query.weight`,
    /// `features.3.conv.1.0.weight`, ...).
    fn checkpoint_key(&self, path: &str) -> String;

    /// Linear layers by checkpoint module name (`bert.encoder.layer.0.attention.self.query`).
    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        Vec::new()
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        Vec::new()
    }

    /// The checkpoint stores linear weights as `[fan_in, fan_out]` (GPT-2's `Conv1D`), what
    /// peft's `fan_in_fan_out` says; LoRA's A and B are the same either way.
    fn fan_in_fan_out(&self) -> bool {
        false
    }

    /// The output layer among [`Self::dense_layers`] (a language model's `lm_head`, a
    /// classifier's `classifier`): what LoRA's `target_modules = "all-linear"` leaves out.
    fn output_layer(&self) -> Option<String> {
        None
    }

    /// Every convolution + BatchNorm unit, bottom-up.
    fn conv_units_mut(&mut self) -> Vec<ConvUnit<'_>> {
        Vec::new()
    }

    /// Unfreezing groups top-down: the head first (default: one group, the whole model).
    fn layer_groups(&self) -> Vec<LayerGroup> {
        vec![LayerGroup::Head]
    }

    /// The group of a parameter path (see [`Self::layer_groups`]).
    fn layer_group(_path: &str) -> LayerGroup {
        LayerGroup::Head
    }

    /// Where a soft prompt goes, for models that take one (prompt tuning).
    fn prompt_slot(&mut self) -> Option<PromptSlot<'_>> {
        None
    }

    /// Switch BatchNorm layers between updating their statistics from each training batch
    /// (`train(path of the BatchNorm)` true) and normalising with the stored running statistics.
    /// Frozen layers of a transfer-learning run keep the pretrained statistics; a layer in
    /// inference mode also skips the batch-statistics pass.
    fn set_batch_norm_training(mut self, train: &dyn Fn(&str) -> bool) -> Self {
        for u in self.conv_units_mut() {
            u.unit.bn.training = burn::module::Param::from_bool(train(&format!("{}.bn", u.path)));
        }
        self
    }
}

/// Where a model takes prompt tuning's soft prompt (`Adaptable::prompt_slot`).
pub struct PromptSlot<'a> {
    pub prompt: &'a mut Option<SoftPrompt>,
    /// The word embeddings `[vocab, hidden]` a prompt may start from.
    pub word_embeddings: Tensor<2>,
    pub num_layers: usize,
    pub num_heads: usize,
}

/// One conv + BatchNorm unit of a backbone: our parameter path (`blocks.3.layers.1`), the
/// checkpoint's module name of its convolution (`features.4.conv.1.0`), and the unit.
pub struct ConvUnit<'a> {
    pub path: String,
    pub name: String,
    pub unit: &'a mut ConvBn,
}

/// Check that every size field of a config is in `[1, max]` (a zero divides, a huge one allocates),
/// naming the field.
pub fn check_sizes(fields: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, value, max) in fields {
        anyhow::ensure!((1..=max).contains(&value), "{name} = {value}: must be between 1 and {max}");
    }
    Ok(())
}

/// Read and check a model's `config.json` the way loading the model would (the family is told
/// by its fields: timm's `architecture` + `pretrained_cfg`, else `model_type`); a one-line
/// description. Whisper also needs the `tokenizer.json` beside it, as loading does.
pub fn describe_config(path: &std::path::Path) -> Result<String> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    // Reading a config needs no weights: the format only tells where weights would be.
    let files = ModelDir { dir: dir.to_path_buf(), format: Format::Safetensors(dir.join("model.safetensors")) };
    anyhow::ensure!(
        path.file_name().is_some_and(|n| n == "config.json"),
        "{}: a model config is named config.json",
        path.display()
    );
    let raw = files.raw_config()?;
    if dir.join("model.bin").is_file() && !dir.join("model.safetensors").is_file() {
        // CTranslate2 writes its own config.json; the model's config comes from model.bin.
        let files = ModelDir { dir: dir.to_path_buf(), format: Format::CTranslate2(dir.join("model.bin")) };
        return Ok(format!("CTranslate2 {}", describe_whisper(&whisper::WhisperConfig::read(&files)?)));
    }
    if image_classifier::is_image_model(dir) {
        let c = image_classifier::ImageConfig::read(&files)?;
        return Ok(format!("image model config: {}, {} classes", c.architecture, c.num_classes));
    }
    Ok(match raw.get("model_type").and_then(|v| v.as_str()).unwrap_or_default() {
        t if llama::MODEL_TYPES.contains(&t) => {
            let c = decoder::config(&files)?;
            format!(
                "{t} decoder config: {} layers, hidden {}, {} heads, vocab {} ({} parameters)",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.vocab_size,
                c.parameters()
            )
        }
        "whisper" => describe_whisper(&whisper::WhisperConfig::read(&files)?),
        _ => {
            let c = BertConfig::read(&files)?;
            format!(
                "{} encoder config: {} layers, hidden {}, {} heads, vocab {} ({} parameters)",
                c.family.class_stem(),
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.vocab_size,
                c.parameters()
            )
        }
    })
}

fn describe_whisper(c: &whisper::WhisperConfig) -> String {
    format!(
        "Whisper config: d_model {}, {}+{} layers, vocab {}",
        c.d_model, c.encoder_layers, c.decoder_layers, c.vocab_size
    )
}

/// Refuse a config that describes a model far larger than its checkpoint file (`parameters` as the
/// config implies them): a corrupt or hostile config must fail here, not in an allocation of
/// terabytes. The most compact format read here stores about 4.5 bits per parameter; the bound
/// leaves 16x slack for tensors a checkpoint may omit (tied heads).
pub fn check_plausible(parameters: u128, file_bytes: u64, file: &std::path::Path) -> Result<()> {
    let limit = u128::from(file_bytes) * 32 + (1 << 20);
    anyhow::ensure!(
        parameters <= limit,
        "{}: the config describes {parameters} parameters, more than this {file_bytes}-byte checkpoint can hold; \
         the config does not belong to these weights",
        file.display()
    );
    Ok(())
}

/// What loading a checkpoint into a model did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Parameters the checkpoint lacked that were freshly initialised (a new head, a pooler).
    pub initialized: Vec<String>,
    /// Checkpoint tensors the model did not use.
    pub unused: Vec<String>,
}

/// Which classification head to use when loading a [`TextClassifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The checkpoint's head if it has one (a fine-tuned model), else a fresh one.
    FromCheckpoint,
    /// A freshly initialised head, whatever the checkpoint holds (a new task).
    New,
}

/// Build a [`TextClassifier`] from a model directory: the encoder from `model.safetensors`,
/// and the head per `head`.
pub fn load_text_classifier(
    files: &ModelDir,
    num_labels: usize,
    pooling: Pooling,
    head_dropout: f64,
    head: Head,
    device: &Device,
) -> Result<(TextClassifier, LoadReport)> {
    load_encoder_classifier(files, head, |cfg| TextClassifier::new(cfg, num_labels, pooling, head_dropout, device))
}

/// Build a token classifier (`*ForTokenClassification`: the head on every token) from a model
/// directory, the head per `head`.
pub fn load_token_classifier(
    files: &ModelDir,
    num_labels: usize,
    head_dropout: f64,
    head: Head,
    device: &Device,
) -> Result<(TextClassifier, LoadReport)> {
    load_encoder_classifier(files, head, |cfg| TextClassifier::new_per_token(cfg, num_labels, head_dropout, device))
}

fn load_encoder_classifier(
    files: &ModelDir,
    head: Head,
    build: impl FnOnce(&BertConfig) -> Result<TextClassifier>,
) -> Result<(TextClassifier, LoadReport)> {
    let cfg = BertConfig::read(files)?;
    let path = files.weights_path();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    check_plausible(cfg.parameters(), size, &path)?;
    let weights = files.weights()?;
    let model = build(&cfg)?;
    let per_token = model.per_token;
    load_weights(model, &weights, |info| {
        if head == Head::New && info.path.starts_with("head.") {
            return (Vec::new(), true);
        }
        let key = text_classifier::checkpoint_key(cfg.family, per_token, &info.path);
        let mut candidates = vec![key.clone()];
        // A bare encoder (`BertModel.save_pretrained`) has its keys without the prefix.
        if let Some(bare) = key.strip_prefix(cfg.family.prefix()).and_then(|k| k.strip_prefix('.')) {
            candidates.push(bare.to_string());
            if let Some(legacy) =
                bert::legacy_checkpoint_key(bare).filter(|_| cfg.family == encoder_family::Family::Bert)
            {
                candidates.push(format!("bert.{legacy}"));
                candidates.push(legacy);
            }
        }
        let optional = info.path.starts_with("head.") || info.path.starts_with("bert.pooler.");
        (candidates, optional)
    })
}

/// Load every parameter of `model` from `file`. `keys(info)` gives the candidate checkpoint keys
/// (first match wins) and whether the parameter may be absent (then it keeps its initialisation).
pub fn load_weights<M: burn::module::Module>(
    model: M,
    file: &impl WeightSource,
    keys: impl Fn(&ParamInfo) -> (Vec<String>, bool),
) -> Result<(M, LoadReport)> {
    let mut report = LoadReport::default();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    let model = import_params(model, |info| {
        let (candidates, optional) = keys(info);
        let Some(key) = candidates.iter().find(|k| file.contains(k)) else {
            if optional {
                report.initialized.push(info.path.clone());
            } else {
                missing.push(candidates.first().cloned().unwrap_or_else(|| info.path.clone()));
            }
            return Ok(None);
        };
        used.insert(key.clone());
        let expected = checkpoint_shape(info);
        let t = file.tensor_with_shape(key, &expected)?;
        report.loaded += 1;
        Ok(Some(if info.is_linear_weight() { t.transpose2() } else { t }))
    })?;
    require_all_present(&file.describe(), &missing)?;
    report.unused = file.names().into_iter().filter(|n| !used.contains(n)).collect();
    Ok((model, report))
}

/// Load the parameters whose checkpoint key (`key(info)`) is present in `tensors` (PyTorch layout),
/// recording the keys used; other parameters keep their values.
pub fn import_by_key<M: burn::module::Module>(
    model: M,
    tensors: &std::collections::BTreeMap<String, HostTensor>,
    key: impl Fn(&ParamInfo) -> String,
    used: &mut BTreeSet<String>,
) -> Result<M> {
    import_params(model, |info| {
        let k = key(info);
        let Some(t) = tensors.get(&k) else { return Ok(None) };
        let expected = checkpoint_shape(info);
        if t.shape != expected {
            bail!("shape mismatch for '{k}': file has {:?}, model expects {:?}", t.shape, expected);
        }
        used.insert(k);
        Ok(Some(if info.is_linear_weight() { t.transpose2() } else { t.clone() }))
    })
}

/// The shape a parameter has in a PyTorch-convention checkpoint.
pub fn checkpoint_shape(info: &ParamInfo) -> Vec<usize> {
    if info.is_linear_weight() { vec![info.shape[1], info.shape[0]] } else { info.shape.clone() }
}

/// The parameters of `model` as PyTorch-convention tensors keyed by `key(path)`.
pub fn checkpoint_tensors<M: burn::module::Module>(
    model: &M,
    key: impl Fn(&str) -> String,
    keep: impl Fn(&ParamInfo) -> bool,
) -> Vec<(String, HostTensor)> {
    crate::io::params::export_params(model, keep)
        .into_iter()
        .map(|(info, t)| (key(&info.path), if info.is_linear_weight() { t.transpose2() } else { t }))
        .collect()
}

/// Parameter counts of a model, total and trainable.
pub fn count_params<M: burn::module::Module>(model: &M) -> (usize, usize) {
    let params = list_params(model);
    let total = params.iter().map(ParamInfo::numel).sum();
    let trainable = params.iter().filter(|p| p.trainable).map(ParamInfo::numel).sum();
    (total, trainable)
}
