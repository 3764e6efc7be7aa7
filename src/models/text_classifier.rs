//! A BERT encoder with a pooling step and a classification head
//! (`BertForSequenceClassification` in Hugging Face terms, plus CLS and mean pooling).

use super::bert::{BertConfig, BertModel};
use crate::data::batch::EncoderInput;
use crate::nn::dense::Dense;
use crate::nn::classification_head::{ClassificationHead, Pooling};
use crate::nn::layer_group::LayerGroup;
use crate::nn::soft_prompt::SoftPrompt;
use burn::module::Module;
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct TextClassifier {
    pub bert: BertModel,
    pub head: ClassificationHead,
    /// A soft prompt prepended to every input (prompt tuning), when attached.
    pub prompt: Option<SoftPrompt>,
    #[module(skip)]
    pub pooling: Pooling,
}

impl TextClassifier {
    pub fn new(
        cfg: &BertConfig,
        num_labels: usize,
        pooling: Pooling,
        dropout: f64,
        device: &Device,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            bert: BertModel::new(cfg, pooling == Pooling::Pooler, device)?,
            head: ClassificationHead::new(cfg.hidden_size, num_labels, dropout, cfg.initializer_range, device),
            prompt: None,
            pooling,
        })
    }

    /// Pooled features `[batch, hidden]`: what feature extraction caches.
    pub fn features(&self, input: &EncoderInput) -> Tensor<2> {
        let Some(prompt) = &self.prompt else {
            let hidden = self.bert.forward(input);
            return pool(&self.bert, hidden, input.attention_mask.clone(), self.pooling);
        };
        // peft: prompt rows before the word embeddings, mask extended with ones, token types with 0.
        let [b, _] = input.input_ids.dims();
        let p = prompt.embeddings.val();
        let [n, h] = p.dims();
        let device = input.attention_mask.device();
        let words = self.bert.embeddings.word_embeddings.forward(input.input_ids.clone());
        let words = Tensor::cat(vec![p.unsqueeze::<3>().expand([b, n, h]), words], 1);
        let types = Tensor::cat(vec![Tensor::<2, Int>::zeros([b, n], &device), input.token_type_ids.clone()], 1);
        let mask = Tensor::cat(vec![Tensor::<2>::ones([b, n], &device), input.attention_mask.clone()], 1);
        let hidden = self.bert.forward_words(words, types, mask.clone());
        pool(&self.bert, hidden, mask, self.pooling)
    }

    pub fn forward(&self, input: &EncoderInput) -> Tensor<2> {
        self.head.forward(self.features(input))
    }

    /// The unfreezing groups, top-down: the head, the encoder layers from the top, the embeddings.
    pub fn layer_groups(&self) -> Vec<LayerGroup> {
        let mut order = vec![LayerGroup::Head];
        order.extend((0..self.bert.num_layers()).rev().map(LayerGroup::Layer));
        order.push(LayerGroup::Embeddings);
        order
    }

    /// Turn every dropout off while keeping autodiff (for gradient checks against references
    /// computed in eval mode).
    pub fn without_dropout(mut self) -> Self {
        self.head.dropout.prob = 0.0;
        self.bert.embeddings.dropout.prob = 0.0;
        for layer in self.bert.encoder.layer.iter_mut() {
            layer.attention.self_attn.dropout.prob = 0.0;
            layer.attention.output.dropout.prob = 0.0;
            layer.output.dropout.prob = 0.0;
        }
        self
    }
}

/// Reduce hidden states `[b, l, h]` to `[b, h]` with the given pooling.
pub fn pool(bert: &BertModel, hidden: Tensor<3>, mask: Tensor<2>, pooling: Pooling) -> Tensor<2> {
    let [b, _, h] = hidden.dims();
    match pooling {
        Pooling::Cls => hidden.slice(s![.., 0..1, ..]).reshape([b, h]),
        Pooling::Pooler => bert.pool(&hidden).expect("pooling = pooler needs a model with a pooler"),
        Pooling::Mean => {
            let weights = mask.unsqueeze_dim::<3>(2);
            let summed = (hidden * weights.clone()).sum_dim(1).reshape([b, h]);
            let counts = weights.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
            summed / counts
        }
    }
}

/// Hugging Face key for a parameter path of [`TextClassifier`] (`BertForSequenceClassification`
/// names: `bert.…` for the encoder, `classifier.…` for the head).
pub fn hf_key(path: &str) -> String {
    match path.strip_prefix("head.") {
        Some(rest) => rest.to_string(),
        None => super::bert::hf_key(path),
    }
}

impl super::DenseLayers for TextClassifier {
    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out: Vec<(String, &Dense)> =
            self.bert.dense_layers().into_iter().map(|(n, d)| (format!("bert.{n}"), d)).collect();
        out.push(("classifier".into(), &self.head.classifier));
        out
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let mut out: Vec<(String, &mut Dense)> =
            self.bert.dense_layers_mut().into_iter().map(|(n, d)| (format!("bert.{n}"), d)).collect();
        out.push(("classifier".into(), &mut self.head.classifier));
        out
    }
}

/// The unfreezing group of a [`TextClassifier`] parameter path: an encoder layer, the
/// embeddings, or the head (classifier and pooler).
pub fn layer_group(path: &str) -> LayerGroup {
    if let Some(rest) = path.strip_prefix("bert.encoder.layer.") {
        let index = rest.split('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        LayerGroup::Layer(index)
    } else if path.starts_with("bert.embeddings.") {
        LayerGroup::Embeddings
    } else {
        LayerGroup::Head
    }
}
