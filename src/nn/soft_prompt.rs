//! Prompt tuning's layer (Lester et al. 2021): `num_virtual_tokens` trainable embeddings that a
//! model places before its word embeddings (how and where is the model's, e.g.
//! `TextClassifier::features`; how it is configured, trained and saved is `methods::prompt_tuning`).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

/// The trainable prompt, `[num_virtual_tokens, hidden]` (peft's `prompt_embeddings`).
#[derive(Module, Debug)]
pub struct SoftPrompt {
    pub embeddings: Param<Tensor<2>>,
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
