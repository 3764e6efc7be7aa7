//! A BERT-family encoder with a classification head: over the pooled sequence
//! (`BertForSequenceClassification`, `RobertaForSequenceClassification`, ... in Hugging Face
//! terms, plus CLS and mean pooling), or over every token (`*ForTokenClassification`,
//! `per_token`: named entities).

use super::bert::{BertConfig, BertModel};
use super::encoder_family::Family;
use crate::data::batch::EncoderInput;
use crate::nn::classification_head::{ClassificationHead, Pooling, ProblemType};
use crate::nn::dense::Dense;
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
    /// The head classifies every token (`*ForTokenClassification`) rather than the sequence.
    #[module(skip)]
    pub per_token: bool,
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
            per_token: false,
        })
    }

    /// A token classifier: the head on every token's hidden state (no pooling, no pooler).
    pub fn new_per_token(cfg: &BertConfig, num_labels: usize, dropout: f64, device: &Device) -> anyhow::Result<Self> {
        Ok(Self { per_token: true, ..Self::new(cfg, num_labels, Pooling::Mean, dropout, device)? })
    }

    /// Logits of every token `[batch, seq, labels]` (a token classifier).
    pub fn token_logits(&self, input: &EncoderInput) -> Tensor<3> {
        let hidden = self.bert.forward(input);
        let [b, l, h] = hidden.dims();
        let logits = self.head.forward(hidden.reshape([b * l, h]));
        let c = logits.dims()[1];
        logits.reshape([b, l, c])
    }

    /// The module of the output layer under transformers' names: the family's sequence
    /// classifier (`classifier`, `classifier.out_proj`), or `classifier` for a token classifier.
    pub fn classifier_module(&self) -> &'static str {
        if self.per_token { "classifier" } else { self.bert.family.classifier_module() }
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

/// Hugging Face key for a parameter path of [`TextClassifier`] in the family's
/// `*ForSequenceClassification` names: `bert.…`/`roberta.…`/... for the encoder, the family's
/// classifier (`classifier`, `classifier.out_proj`) for the head.
pub fn checkpoint_key(family: Family, per_token: bool, path: &str) -> String {
    if let Some(rest) = path.strip_prefix("head.classifier") {
        return format!("{}{rest}", if per_token { "classifier" } else { family.classifier_module() });
    }
    match path.strip_prefix("bert.") {
        Some(rest) => family.key(rest),
        None => path.to_string(),
    }
}

impl super::Adaptable for TextClassifier {
    fn checkpoint_key(&self, path: &str) -> String {
        checkpoint_key(self.bert.family, self.per_token, path)
    }

    fn layer_groups(&self) -> Vec<LayerGroup> {
        TextClassifier::layer_groups(self)
    }

    fn layer_group(path: &str) -> LayerGroup {
        layer_group(path)
    }

    fn prompt_slot(&mut self) -> Option<super::PromptSlot<'_>> {
        Some(super::PromptSlot {
            word_embeddings: self.bert.embeddings.word_embeddings.weight.val(),
            num_layers: self.bert.num_layers(),
            num_heads: self.bert.encoder.layer[0].attention.self_attn.num_heads,
            prompt: &mut self.prompt,
        })
    }

    fn dense_layers(&self) -> Vec<(String, &Dense)> {
        let mut out = self.bert.dense_layers();
        out.push((self.classifier_module().into(), &self.head.classifier));
        out
    }
    fn output_layer(&self) -> Option<String> {
        Some(self.classifier_module().into())
    }
    fn dense_layers_mut(&mut self) -> Vec<(String, &mut Dense)> {
        let classifier = self.classifier_module();
        let mut out = self.bert.dense_layers_mut();
        out.push((classifier.into(), &mut self.head.classifier));
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

/// The recipe's sequences fit the model's position table (`data.max_length`, plus a soft prompt's
/// tokens) and the tokenizer's ids fit its embedding table; checked before anything is written.
/// The model's family.
pub fn check_fits(
    model_dir: &super::ModelDir,
    tokenizer: &crate::data::tokenizer::TextTokenizer,
    positions: usize,
) -> anyhow::Result<Family> {
    let cfg = BertConfig::read(model_dir)?;
    anyhow::ensure!(
        positions <= cfg.max_positions(),
        "data.max_length (with any soft-prompt tokens) needs {positions} positions but {} has room for {} \
         (max_position_embeddings = {}): lower data.max_length",
        model_dir.config_path().display(),
        cfg.max_positions(),
        cfg.max_position_embeddings
    );
    anyhow::ensure!(
        tokenizer.vocab_size() <= cfg.vocab_size,
        "{}: the tokenizer has {} tokens but the model's embedding table has {} (vocab_size): it does not belong to this model",
        model_dir.tokenizer_path().display(),
        tokenizer.vocab_size(),
        cfg.vocab_size
    );
    Ok(cfg.family)
}

fn is_classification(p: &ProblemType) -> bool {
    *p == ProblemType::SingleLabelClassification
}

/// Settings that finetune stores in a fine-tuned model's `config.json` under `"finetune"`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FinetuneMeta {
    pub pooling: Pooling,
    pub max_length: usize,
    /// The model classifies text pairs (`data.text_pair_column`): inputs are two texts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_pair: bool,
    /// A regression (one output, its value the prediction) or a classifier.
    #[serde(default, skip_serializing_if = "is_classification")]
    pub problem_type: ProblemType,
    /// A token classifier (`*ForTokenClassification`): a tag per word.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_token: bool,
    pub method: String,
    pub base_model: String,
    /// The base's linear weights were 4-bit quantized during training (QLoRA); loading the
    /// adapter quantizes the base the same way so the trained function is reproduced exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::quant::QuantConfig>,
}

/// Write a fine-tuned model directory: `model.safetensors` with the family's
/// `*ForSequenceClassification` keys, `config.json` with `id2label`/`label2id` (and our pooling under `"finetune"`), and the
/// tokenizer files of the base model.
///
/// With the pooler (`BertForSequenceClassification`'s own pooling) `transformers` computes our
/// logits. With mean or CLS pooling it cannot: `BertForSequenceClassification` would always
/// apply a pooler (initialised at random, as the checkpoint has none), so the config does not
/// claim that class (`architectures = ["BertModel"]`: loading it for sequence classification
/// warns that the head is new) and the directory is also a sentence-transformers model
/// (`modules.json`: Transformer → Pooling → Dense with the classifier as an identity-activated
/// layer) whose `encode` returns our logits (docs/text.md has the snippet).
pub fn save_model(
    model: &TextClassifier,
    base: &super::ModelDir,
    labels: &crate::data::text::LabelSet,
    meta: &FinetuneMeta,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let (family, per_token) = (model.bert.family, model.per_token);
    let tensors = super::checkpoint_tensors(model, |p| checkpoint_key(family, per_token, p), |_| true);
    let mut config = base.raw_config()?;
    let obj = config.as_object_mut().context("config.json is not an object")?;
    let id2label: serde_json::Map<String, serde_json::Value> =
        labels.names().iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
    let label2id: serde_json::Map<String, serde_json::Value> =
        labels.names().iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
    let pooler = model.pooling == crate::nn::classification_head::Pooling::Pooler;
    let stem = family.class_stem();
    let architecture = match (per_token, pooler) {
        (true, _) => format!("{stem}ForTokenClassification"),
        (false, true) => format!("{stem}ForSequenceClassification"),
        (false, false) => format!("{stem}Model"),
    };
    obj.insert("architectures".into(), serde_json::json!([architecture]));
    obj.insert("id2label".into(), id2label.into());
    obj.insert("label2id".into(), label2id.into());
    obj.insert("num_labels".into(), labels.len().into());
    // transformers' loss follows `problem_type` (MSE for "regression", as trained here).
    if !per_token {
        obj.insert("problem_type".into(), meta.problem_type.name().into());
    }
    obj.insert("finetune".into(), serde_json::to_value(meta)?);
    crate::io::atomic::replace_dir_atomic(out, |dir| {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        crate::io::safetensors::write_safetensors(&dir.join("model.safetensors"), &tensors, Some(metadata))?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
            let src = base.dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, dir.join(f)).with_context(|| format!("copying {}", src.display()))?;
            }
        }
        if !pooler && !per_token {
            write_sentence_transformers(dir, model.pooling, &tensors, family.classifier_module(), meta.max_length)?;
        }
        Ok(())
    })
}

/// The sentence-transformers modules that compute a mean- or CLS-pooled classifier's logits.
fn write_sentence_transformers(
    dir: &std::path::Path,
    pooling: crate::nn::classification_head::Pooling,
    tensors: &[(String, crate::io::safetensors::HostTensor)],
    classifier: &str,
    max_length: usize,
) -> anyhow::Result<()> {
    use crate::nn::classification_head::Pooling;
    use anyhow::Context;
    let find =
        |k: &str| tensors.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).with_context(|| format!("no {k}"));
    let (w, b) = (find(&format!("{classifier}.weight"))?, find(&format!("{classifier}.bias"))?);
    let (labels, hidden) = (w.shape[0], w.shape[1]);
    let json = |path: std::path::PathBuf, v: serde_json::Value| -> anyhow::Result<()> {
        std::fs::create_dir_all(path.parent().expect("inside the directory"))?;
        std::fs::write(&path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", path.display()))
    };
    json(
        dir.join("modules.json"),
        serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        ]),
    )?;
    json(
        dir.join("sentence_bert_config.json"),
        serde_json::json!({"max_seq_length": max_length, "do_lower_case": false}),
    )?;
    json(
        dir.join("1_Pooling/config.json"),
        serde_json::json!({
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": pooling == Pooling::Cls,
            "pooling_mode_mean_tokens": pooling == Pooling::Mean,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true
        }),
    )?;
    json(
        dir.join("2_Dense/config.json"),
        serde_json::json!({"in_features": hidden, "out_features": labels, "bias": true,
                           "activation_function": "torch.nn.modules.linear.Identity"}),
    )?;
    crate::io::safetensors::write_safetensors(
        &dir.join("2_Dense/model.safetensors"),
        &[("linear.weight".to_string(), w), ("linear.bias".to_string(), b)],
        None,
    )
}
