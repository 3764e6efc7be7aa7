//! The head of every classifier here: dropout, then a linear layer from pooled features to label
//! logits (`classifier` in Hugging Face and torchvision checkpoints).

use super::dense::Dense;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

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

/// How a sequence of hidden states becomes one feature vector.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The `[CLS]` hidden state as is.
    Cls,
    /// Mean over real (unpadded) tokens; what sentence-transformers models are trained for.
    Mean,
    /// `BertPooler`: tanh(dense(h_CLS)), as `BertForSequenceClassification` does.
    Pooler,
}

impl std::str::FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "cls" => Self::Cls,
            "mean" => Self::Mean,
            "pooler" => Self::Pooler,
            other => anyhow::bail!("unknown pooling '{other}' (cls, mean, pooler)"),
        })
    }
}

/// `[head]` in a recipe: how a classifier pools its features and the dropout before its linear layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    /// Dropout before the classifier (HF: `classifier_dropout`, else `hidden_dropout_prob`).
    #[serde(default = "default_head_dropout")]
    pub dropout: f64,
    /// transformers' `problem_type`: one class per example (cross-entropy), or a number
    /// (`"regression"`: one output, mean squared error; labels are numbers).
    #[serde(default)]
    pub problem_type: ProblemType,
}

/// What a head predicts, with transformers' names (`config.json`'s `problem_type`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    #[default]
    SingleLabelClassification,
    Regression,
    /// Any number of classes per example: one sigmoid per class, binary cross-entropy, a class
    /// is predicted when its probability is above 0.5.
    MultiLabelClassification,
}

impl ProblemType {
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleLabelClassification => "single_label_classification",
            Self::Regression => "regression",
            Self::MultiLabelClassification => "multi_label_classification",
        }
    }
}

fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_head_dropout() -> f64 {
    0.1
}

impl HeadConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..1.0).contains(&self.dropout), "head.dropout = {}: must be in [0, 1)", self.dropout);
        Ok(())
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { pooling: default_pooling(), dropout: default_head_dropout(), problem_type: ProblemType::default() }
    }
}
