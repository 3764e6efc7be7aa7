//! The encoder families that share BERT's architecture ([`super::bert`]): which `model_type`s they
//! are, what their checkpoints call BERT's modules (`roberta.…`, DistilBERT's
//! `transformer.layer.N.attention.q_lin`, ...), how their sequence-classification heads are built
//! (BERT's pooler, RoBERTa's and ELECTRA's `classifier.dense` + `out_proj`, DistilBERT's
//! `pre_classifier`), RoBERTa's position offset, and DistilBERT's own `config.json` fields.
//! Numerics of every family: `numerics::encoder_families_match_transformers` (1e-4 against
//! transformers' classes on tiny fixtures).

use super::bert::{Activation, BertConfig, checkpoint_key};
use serde::Deserialize;

/// The encoder families this architecture covers, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Bert,
    /// RoBERTa and the checkpoints with its architecture: XLM-RoBERTa, CamemBERT.
    Roberta(RobertaKind),
    Electra,
    DistilBert,
}

/// Which class names a RoBERTa-architecture checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobertaKind {
    Roberta,
    XlmRoberta,
    Camembert,
}

/// The `model_type`s [`BertConfig::read`] accepts.
pub const MODEL_TYPES: [&str; 6] = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"];

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "bert" => Self::Bert,
            "roberta" => Self::Roberta(RobertaKind::Roberta),
            "xlm-roberta" => Self::Roberta(RobertaKind::XlmRoberta),
            "camembert" => Self::Roberta(RobertaKind::Camembert),
            "electra" => Self::Electra,
            "distilbert" => Self::DistilBert,
            _ => return None,
        })
    }

    /// The prefix of the encoder's keys in a `*ForSequenceClassification` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta(_) => "roberta",
            Self::Electra => "electra",
            Self::DistilBert => "distilbert",
        }
    }

    /// transformers' class-name stem (`{stem}Model`, `{stem}ForSequenceClassification`).
    pub fn class_stem(self) -> &'static str {
        match self {
            Self::Bert => "Bert",
            Self::Roberta(RobertaKind::Roberta) => "Roberta",
            Self::Roberta(RobertaKind::XlmRoberta) => "XLMRoberta",
            Self::Roberta(RobertaKind::Camembert) => "Camembert",
            Self::Electra => "Electra",
            Self::DistilBert => "DistilBert",
        }
    }

    /// The module of the dense layer on the first token before the classifier: BERT's pooler
    /// (part of the pretrained encoder), the others' classification heads.
    pub fn pooler_module(self) -> &'static str {
        match self {
            Self::Bert => "bert.pooler.dense",
            Self::Roberta(_) | Self::Electra => "classifier.dense",
            Self::DistilBert => "pre_classifier",
        }
    }

    /// The module of the output layer (`num_labels` logits).
    pub fn classifier_module(self) -> &'static str {
        match self {
            Self::Bert | Self::DistilBert => "classifier",
            Self::Roberta(_) | Self::Electra => "classifier.out_proj",
        }
    }

    /// The activation after the pooler's dense layer.
    pub(super) fn pooler_activation(self) -> Activation {
        match self {
            Self::Bert | Self::Roberta(_) => Activation::Tanh,
            Self::Electra => Activation::Gelu,
            Self::DistilBert => Activation::Relu,
        }
    }

    /// The first position id: RoBERTa numbers positions from `padding_idx + 1` (fairseq).
    pub fn position_offset(self, pad_token_id: usize) -> usize {
        if matches!(self, Self::Roberta(_)) { pad_token_id + 1 } else { 0 }
    }

    /// The checkpoint key of a path inside [`BertModel`] (`encoder.layer.0.attention.self_attn.query.weight`).
    pub fn key(self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("pooler.dense") {
            return format!("{}{rest}", self.pooler_module());
        }
        match self {
            Self::DistilBert => format!("distilbert.{}", distilbert_key(path)),
            Self::Electra if path.starts_with("embeddings.embeddings_project.") => {
                format!("electra.{}", &path["embeddings.".len()..])
            }
            _ => format!("{}.{}", self.prefix(), checkpoint_key(path)),
        }
    }
}

/// DistilBERT's names for BERT's modules (`transformer.layer.N.attention.q_lin`, `sa_layer_norm`,
/// `ffn.lin1`, ...).
fn distilbert_key(path: &str) -> String {
    path.replace("embeddings.layer_norm.", "embeddings.LayerNorm.")
        .replace("encoder.layer.", "transformer.layer.")
        .replace(".attention.self_attn.query.", ".attention.q_lin.")
        .replace(".attention.self_attn.key.", ".attention.k_lin.")
        .replace(".attention.self_attn.value.", ".attention.v_lin.")
        .replace(".attention.output.dense.", ".attention.out_lin.")
        .replace(".attention.output.layer_norm.", ".sa_layer_norm.")
        .replace(".intermediate.dense.", ".ffn.lin1.")
        .replace(".output.dense.", ".ffn.lin2.")
        .replace(".output.layer_norm.", ".output_layer_norm.")
        .replace(".gamma", ".weight")
        .replace(".beta", ".bias")
}

/// DistilBERT's `config.json` (`dim`, `n_layers`, `hidden_dim`, ...).
#[derive(Deserialize)]
pub(super) struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "super::bert::default_act")]
    activation: String,
    #[serde(default = "super::bert::default_dropout")]
    dropout: f64,
    #[serde(default = "super::bert::default_dropout")]
    attention_dropout: f64,
    #[serde(default = "super::bert::default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: usize,
    #[serde(default = "super::bert::default_init_range")]
    initializer_range: f64,
}

impl From<DistilBertConfig> for BertConfig {
    fn from(c: DistilBertConfig) -> Self {
        Self {
            vocab_size: c.vocab_size,
            hidden_size: c.dim,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            intermediate_size: c.hidden_dim,
            hidden_act: c.activation,
            hidden_dropout_prob: c.dropout,
            attention_probs_dropout_prob: c.attention_dropout,
            max_position_embeddings: c.max_position_embeddings,
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
            pad_token_id: c.pad_token_id,
            position_embedding_type: super::bert::default_pos_type(),
            initializer_range: c.initializer_range,
            embedding_size: None,
            family: Family::DistilBert,
        }
    }
}
