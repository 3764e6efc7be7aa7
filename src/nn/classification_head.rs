//! The head of every classifier here: dropout, then a linear layer from pooled features to label
//! logits (`classifier` in Hugging Face and torchvision checkpoints).

use super::dense::Dense;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;

/// Dropout then a linear layer from features to label logits.
#[derive(Module, Debug)]
pub struct ClassificationHead {
    pub dropout: Dropout,
    pub classifier: Dense,
}

impl ClassificationHead {
    pub fn new(hidden: usize, num_labels: usize, dropout: f64, init_std: f64, device: &Device) -> Self {
        Self {
            dropout: DropoutConfig::new(dropout).init(),
            classifier: Dense::new(hidden, num_labels, init_std, true, device),
        }
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.d_out()
    }

    /// `features [batch, hidden]` → logits `[batch, labels]`.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.classifier.forward(super::dropout::dropout(&self.dropout, features))
    }
}
