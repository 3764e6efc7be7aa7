//! Prompt tuning (Lester et al. 2021) with peft's semantics: `num_virtual_tokens` trainable
//! embeddings are placed before the word embeddings (so position and token-type embeddings and
//! the embedding LayerNorm apply to them too); the attention mask is extended with ones and the
//! token types with zeros. Everything else is frozen except `modules_to_save` (the classifier).

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
