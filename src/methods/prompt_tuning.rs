//! Prompt tuning (Lester et al. 2021) with peft's semantics: `num_virtual_tokens` trainable
//! embeddings are placed before the word embeddings (so position and token-type embeddings and
//! the embedding LayerNorm apply to them too); the attention mask is extended with ones and the
//! token types with zeros. Everything else is frozen except `modules_to_save` (the classifier).
//!
//! This file owns the method: its settings, attaching the prompt (`nn::soft_prompt`) to a model
//! that takes one (`models::Adaptable::prompt_slot`), what trains, and the adapter in peft's
//! format both ways (`prompt_embeddings`; modules to save as `base_model.<key>`).

use crate::io::params::ParamInfo;
use crate::io::peft::AdapterFiles;
use crate::io::safetensors::HostTensor;
use crate::models::{Adaptable, checkpoint_tensors};
use crate::nn::soft_prompt::SoftPrompt;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How the prompt starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// `N(0, 1)`, as `torch.nn.Embedding` (peft `RANDOM`).
    Random,
    /// The word embeddings of a text's tokens, repeated or cut to length (peft `TEXT`).
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTuningConfig {
    pub num_virtual_tokens: usize,
    #[serde(default = "default_init")]
    pub init: PromptInit,
    /// The text for `init = "text"`.
    pub init_text: Option<String>,
    /// Modules trained in full besides the prompt (the task's classifier is added, as peft
    /// does for classification).
    #[serde(default)]
    pub modules_to_save: Vec<String>,
}

impl PromptTuningConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (1..=1 << 16).contains(&self.num_virtual_tokens),
            "prompt_tuning.num_virtual_tokens = {}: must be 1 to 65536 (8 to 100 are usual)",
            self.num_virtual_tokens
        );
        if self.init == PromptInit::Text {
            anyhow::ensure!(
                self.init_text.as_deref().is_some_and(|t| !t.trim().is_empty()),
                "prompt_tuning.init = \"text\" needs a non-empty init_text"
            );
        }
        Ok(())
    }
}

fn default_init() -> PromptInit {
    PromptInit::Random
}

/// peft's key of the prompt in `adapter_model.safetensors`.
pub const PROMPT_KEY: &str = "prompt_embeddings";
/// peft's prefix for modules_to_save of a prompt-learning adapter.
pub const KEY_PREFIX: &str = "base_model.";

/// `adapter_config.json` for a prompt-tuning adapter, in peft's schema.
fn config_json(
    cfg: &PromptTuningConfig,
    hidden: usize,
    num_layers: usize,
    num_heads: usize,
    base_model: &str,
    task_type: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "PROMPT_TUNING",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "token_dim": hidden,
        "num_transformer_submodules": 1,
        "num_layers": num_layers,
        "num_attention_heads": num_heads,
        "prompt_tuning_init": match cfg.init { PromptInit::Random => "RANDOM", PromptInit::Text => "TEXT" },
        "prompt_tuning_init_text": cfg.init_text,
        "tokenizer_name_or_path": if cfg.init == PromptInit::Text { serde_json::json!(base_model) } else { serde_json::Value::Null },
        "modules_to_save": if cfg.modules_to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(cfg.modules_to_save) },
        "inference_mode": true,
        "revision": null,
    })
}

/// Attach a fresh soft prompt to `model`: random, or the word embeddings of `init_text` tokenized
/// by `tokenize` (without special tokens, as peft does).
pub fn attach<M: Adaptable>(
    model: &mut M,
    cfg: &PromptTuningConfig,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
    device: &Device,
) -> Result<()> {
    let slot = model.prompt_slot().context("this model takes no soft prompt")?;
    let hidden = slot.word_embeddings.dims()[1];
    let prompt = match cfg.init {
        PromptInit::Random => SoftPrompt::random(cfg.num_virtual_tokens, hidden, device),
        PromptInit::Text => {
            let text = cfg.init_text.as_deref().context("prompt_tuning.init = \"text\" needs init_text")?;
            SoftPrompt::from_tokens(slot.word_embeddings, &tokenize(text)?, cfg.num_virtual_tokens)?
        }
    };
    *slot.prompt = Some(prompt);
    Ok(())
}

/// Whether prompt tuning trains `info` (checkpoint module `module`): the prompt and the modules
/// to save.
pub fn trains(cfg: &PromptTuningConfig, info: &ParamInfo, module: &str) -> bool {
    info.within("SoftPrompt") || crate::methods::lora::in_modules(module, &cfg.modules_to_save)
}

/// Write the prompt (and the modules to save) of `model` in peft's format.
pub fn save_adapter<M: Adaptable + Clone>(
    model: &M,
    cfg: &PromptTuningConfig,
    base_model: &str,
    task_type: Option<&str>,
    saved: impl Fn(&ParamInfo) -> bool,
    dir: &Path,
) -> Result<()> {
    let mut copy = model.clone();
    let slot = copy.prompt_slot().context("this model takes no soft prompt")?;
    let p = slot.prompt.as_ref().context("no soft prompt attached")?.embeddings.val();
    let [n, h] = p.dims();
    let data = p.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
    let config = config_json(cfg, h, slot.num_layers, slot.num_heads, base_model, task_type);
    let mut tensors = vec![(PROMPT_KEY.to_string(), HostTensor::new(vec![n, h], data))];
    let others = checkpoint_tensors(model, |p| model.checkpoint_key(p), |p| !p.within("SoftPrompt") && saved(p));
    tensors.extend(others.into_iter().map(|(k, t)| (format!("{KEY_PREFIX}{k}"), t)));
    AdapterFiles::write(dir, &config, tensors)
}

/// The adapter's prompt-tuning config, checked against its soft prompt.
pub fn read_config(files: &AdapterFiles) -> Result<PromptTuningConfig> {
    let n = files.config["num_virtual_tokens"]
        .as_u64()
        .with_context(|| format!("{}/adapter_config.json: no num_virtual_tokens", files.dir.display()))?;
    let modules_to_save: Vec<String> =
        serde_json::from_value(files.config["modules_to_save"].clone()).unwrap_or_default();
    let cfg = PromptTuningConfig {
        num_virtual_tokens: usize::try_from(n).unwrap_or(usize::MAX),
        init: PromptInit::Random,
        init_text: None,
        modules_to_save,
    };
    cfg.validate().with_context(|| format!("{}/adapter_config.json", files.dir.display()))?;
    let t = files.tensor(PROMPT_KEY)?;
    if t.shape.len() != 2 || t.shape[0] != cfg.num_virtual_tokens {
        bail!(
            "{}: {PROMPT_KEY} has shape {:?}, but adapter_config.json says {} virtual tokens",
            files.dir.display(),
            t.shape,
            cfg.num_virtual_tokens
        );
    }
    Ok(cfg)
}

/// Attach the prompt-tuning adapter in `files` (finetune's or Python peft's) to `model`.
pub fn load_adapter<M: Adaptable>(
    mut model: M,
    files: &AdapterFiles,
    device: &Device,
) -> Result<(M, PromptTuningConfig)> {
    let cfg = read_config(files)?;
    let n = cfg.num_virtual_tokens;
    let t = files.tensor(PROMPT_KEY)?;
    {
        let slot =
            model.prompt_slot().with_context(|| format!("{}: this model takes no soft prompt", files.dir.display()))?;
        let hidden = slot.word_embeddings.dims()[1];
        if t.shape != [n, hidden] {
            bail!("{}: prompt_embeddings has shape {:?}, expected [{n}, {hidden}]", files.dir.display(), t.shape);
        }
        *slot.prompt = Some(SoftPrompt {
            embeddings: burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(t.data.clone(), [n, hidden]),
                device,
            )),
        });
    }
    let used = std::collections::BTreeSet::from([PROMPT_KEY.to_string()]);
    Ok((super::load_saved(model, files, KEY_PREFIX, &|k| k, used)?, cfg))
}
