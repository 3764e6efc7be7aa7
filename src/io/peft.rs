//! Adapters in Hugging Face PEFT's format: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, keys as peft writes them:
//!
//! - LoRA: `base_model.model.<module>.lora_A.weight` `[r, in]`, `...lora_B.weight` `[out, r]`,
//!   DoRA `...lora_magnitude_vector` `[out]`; `modules_to_save` as `base_model.model.<key>`.
//! - prompt tuning: `prompt_embeddings` `[n, hidden]`; `modules_to_save` as `base_model.<key>`.

use crate::io::safetensors::{HostTensor, SafetensorsFile, write_safetensors};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// finetune's notes beside an adapter (labels, input settings, how the base was held); peft
/// ignores the file.
pub const NOTES_FILE: &str = "finetune.json";

/// An adapter directory read into memory.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub dir: PathBuf,
    /// `adapter_config.json` as written (unknown fields kept).
    pub config: Value,
    /// Tensors by key, as stored (PyTorch layout).
    pub tensors: BTreeMap<String, HostTensor>,
}

impl AdapterFiles {
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            let named = Self::named_adapters(dir);
            if !named.is_empty() {
                bail!(
                    "{}: holds several adapters (peft's multi-adapter layout): {}; give --adapter {}/<name> \
                     (repeat --adapter to combine several)",
                    dir.display(),
                    named.join(", "),
                    dir.display()
                );
            }
        }
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: not an adapter directory (no {CONFIG_FILE})", dir.display()))?;
        let config: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            if dir.join("adapter_model.bin").is_file() {
                bail!(
                    "{}: only adapter_model.bin (pickle) is present; save it with safe_serialization=True",
                    dir.display()
                );
            }
            bail!("{}: no {WEIGHTS_FILE}", dir.display());
        }
        let file = SafetensorsFile::open(&weights)?;
        let tensors = file.names().into_iter().map(|k| file.tensor(&k).map(|t| (k, t))).collect::<Result<_>>()?;
        Ok(Self { dir: dir.to_path_buf(), config, tensors })
    }

    /// The adapters peft's `save_pretrained` wrote beside the default one: subdirectories
    /// holding their own `adapter_config.json`, by name.
    pub fn named_adapters(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(CONFIG_FILE).is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Tensors besides the LoRA matrices (modules trained in full, biases).
    pub fn non_lora_tensors(&self) -> Vec<&str> {
        self.tensors.keys().filter(|k| !k.contains(".lora_")).map(String::as_str).collect()
    }

    pub fn peft_type(&self) -> Result<&str> {
        self.config["peft_type"].as_str().with_context(|| format!("{}/{CONFIG_FILE}: no peft_type", self.dir.display()))
    }

    pub fn base_model(&self) -> Option<&str> {
        self.config["base_model_name_or_path"].as_str().filter(|s| !s.is_empty())
    }

    /// A tensor by key, or an error naming the adapter file and the key.
    pub fn tensor(&self, key: &str) -> Result<&HostTensor> {
        self.tensors.get(key).with_context(|| format!("{}/{WEIGHTS_FILE}: missing tensor '{key}'", self.dir.display()))
    }

    /// Write `config` and `tensors` as an adapter directory (atomically per file).
    pub fn write(dir: &Path, config: &Value, tensors: Vec<(String, HostTensor)>) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
        crate::io::atomic::write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(config)?.as_bytes())
    }
}
