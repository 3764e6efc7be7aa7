//! Prompt tuning (Lester et al. 2021) with peft's semantics: `num_virtual_tokens` trainable
//! embeddings are placed before the word embeddings (so position and token-type embeddings and
//! the embedding LayerNorm apply to them too); the attention mask is extended with ones and the
//! token types with zeros. Everything else is frozen except `modules_to_save` (the classifier).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The trainable prompt, `[num_virtual_tokens, hidden]` (peft's `prompt_embeddings`).
#[derive(Module, Debug)]
pub struct SoftPrompt {
    pub embeddings: Param<Tensor<2>>,
}

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
    /// Modules trained in full besides the prompt (peft adds the classifier for classification).
    #[serde(default = "default_modules_to_save")]
    pub modules_to_save: Vec<String>,
}

fn default_init() -> PromptInit {
    PromptInit::Random
}
fn default_modules_to_save() -> Vec<String> {
    vec!["classifier".into()]
}

impl SoftPrompt {
    pub fn random(n: usize, hidden: usize, device: &Device) -> Self {
        Self { embeddings: Initializer::Normal { mean: 0.0, std: 1.0 }.init([n, hidden], device) }
    }

    /// `n` rows taken from `word_embeddings [vocab, hidden]` at `token_ids`, repeated cyclically
    /// or cut (peft repeats the init text's tokens to fill `num_virtual_tokens`).
    pub fn from_tokens(word_embeddings: Tensor<2>, token_ids: &[u32], n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(!token_ids.is_empty(), "prompt_tuning.init_text tokenizes to nothing");
        let device = word_embeddings.device();
        let ids: Vec<i64> = (0..n).map(|i| token_ids[i % token_ids.len()] as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        Ok(Self { embeddings: Param::from_tensor(word_embeddings.select(0, ids).detach()) })
    }

    pub fn len(&self) -> usize {
        self.embeddings.lazy_shape().as_slice()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// peft's key of the prompt in `adapter_model.safetensors`.
pub const PROMPT_KEY: &str = "prompt_embeddings";
/// peft's prefix for modules_to_save of a prompt-learning adapter.
pub const KEY_PREFIX: &str = "base_model.";

/// `adapter_config.json` for a prompt-tuning adapter, in peft's schema.
pub fn adapter_config_json(
    cfg: &PromptTuningConfig,
    hidden: usize,
    num_layers: usize,
    num_heads: usize,
    base_model: &str,
) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "token_dim": hidden,
        "num_transformer_submodules": 1,
        "num_layers": num_layers,
        "num_attention_heads": num_heads,
        "prompt_tuning_init": match cfg.init { PromptInit::Random => "RANDOM", PromptInit::Text => "TEXT" },
        "prompt_tuning_init_text": cfg.init_text,
        "tokenizer_name_or_path": if cfg.init == PromptInit::Text { serde_json::json!(base_model) } else { serde_json::Value::Null },
        "modules_to_save": cfg.modules_to_save,
        "inference_mode": true,
        "revision": null,
    })
}
