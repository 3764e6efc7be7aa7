//! Fine-tuning methods: which parameters train, when, and at what learning rate.
//!
//! - `full`: everything trains.
//! - `transfer`: the head and the top `trainable_layers` encoder layers train from the start;
//!   gradual unfreezing adds one layer group at a time, top-down (embeddings last), and
//!   layer-wise learning-rate decay scales each group's rate by its distance from the head.
//! - `feature-extraction`: the encoder never trains; its features are computed once and cached
//!   ([`feature_extraction`]), and only the head is trained on them.
//! - `lora`: low-rank adapters on chosen linear layers ([`lora`]); the base stays frozen.
//! - `prompt-tuning`: a trainable soft prompt before the input ([`prompt_tuning`]).

pub mod feature_extraction;
pub mod lora;
pub mod prompt_tuning;
pub mod transfer;

pub use transfer::TrainPlan;

use anyhow::Result;
use serde::{Deserialize, Serialize};

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
