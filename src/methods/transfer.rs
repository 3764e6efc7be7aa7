//! Layer groups of an encoder classifier, gradual unfreezing and layer-wise learning rates.

use super::Method;
use crate::nn::layer_group::LayerGroup;
use serde::{Deserialize, Serialize};

/// `[transfer]` in a recipe: what trains from the start and how the rest unfreezes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Encoder layers (from the top) that train from the start, besides the head.
    #[serde(default)]
    pub trainable_layers: usize,
    /// Unfreeze one more layer group (top-down; embeddings last) every this many epochs.
    pub unfreeze_every_epochs: Option<usize>,
    /// Or every this many optimizer steps.
    pub unfreeze_every_steps: Option<usize>,
    /// Learning rate of a layer = lr × decay^(distance from the head); 1.0 disables it.
    #[serde(default = "default_lr_decay")]
    pub layer_lr_decay: f64,
}

fn default_lr_decay() -> f64 {
    1.0
}

impl TransferConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            self.unfreeze_every_epochs.is_none() || self.unfreeze_every_steps.is_none(),
            "set one of transfer.unfreeze_every_epochs and transfer.unfreeze_every_steps, not both"
        );
        for (key, v) in
            [("unfreeze_every_epochs", self.unfreeze_every_epochs), ("unfreeze_every_steps", self.unfreeze_every_steps)]
        {
            ensure!(
                v.is_none_or(|v| v >= 1),
                "transfer.{key} = 0: must be at least 1 (leave it out to keep the groups fixed)"
            );
        }
        ensure!(
            self.layer_lr_decay > 0.0 && self.layer_lr_decay <= 1.0,
            "transfer.layer_lr_decay = {}: must be in (0, 1] (1 turns it off)",
            self.layer_lr_decay
        );
        Ok(())
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self { trainable_layers: 0, unfreeze_every_epochs: None, unfreeze_every_steps: None, layer_lr_decay: 1.0 }
    }
}

/// How many groups train at a given point of training, and their learning-rate multipliers.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    /// All groups, top-down.
    pub order: Vec<LayerGroup>,
    /// Groups trainable from the start.
    pub initial: usize,
    pub every_epochs: Option<usize>,
    pub every_steps: Option<usize>,
    pub layer_lr_decay: f64,
    /// The group of a parameter path.
    pub group_of: fn(&str) -> LayerGroup,
}

impl TrainPlan {
    /// The plan of `method` for a model with these groups (top-down, head first) and this map
    /// from parameter paths to groups.
    pub fn new(method: Method, cfg: &TransferConfig, order: Vec<LayerGroup>, group_of: fn(&str) -> LayerGroup) -> Self {
        let all = order.len();
        match method {
            Method::Transfer => Self {
                initial: (1 + cfg.trainable_layers).min(all),
                every_epochs: cfg.unfreeze_every_epochs.filter(|&n| n > 0),
                every_steps: cfg.unfreeze_every_steps.filter(|&n| n > 0),
                layer_lr_decay: cfg.layer_lr_decay,
                order,
                group_of,
            },
            Method::Full => {
                Self { initial: all, every_epochs: None, every_steps: None, layer_lr_decay: 1.0, order, group_of }
            }
            // The head-only plan; adapter methods decide trainability themselves.
            Method::FeatureExtraction | Method::Lora | Method::PromptTuning => {
                Self { initial: 1, every_epochs: None, every_steps: None, layer_lr_decay: 1.0, order, group_of }
            }
        }
    }

    /// Number of groups (from the top) trainable during `epoch` at optimizer step `step`.
    pub fn unfrozen(&self, epoch: usize, step: usize) -> usize {
        let extra = match (self.every_epochs, self.every_steps) {
            (Some(n), _) => epoch / n,
            (_, Some(n)) => step / n,
            _ => 0,
        };
        (self.initial + extra).min(self.order.len())
    }

    pub fn is_trainable(&self, path: &str, unfrozen: usize) -> bool {
        let group = (self.group_of)(path);
        self.order[..unfrozen].contains(&group)
    }

    /// Learning-rate multiplier: `decay^depth`, depth 0 for the head, 1 for the top layer, ...
    pub fn lr_scale(&self, path: &str) -> f64 {
        let group = (self.group_of)(path);
        let depth = self.order.iter().position(|g| *g == group).unwrap_or(0);
        self.layer_lr_decay.powi(depth as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of a 3-layer (or `n`-layer) BERT classifier.
    fn bert_plan(cfg: TransferConfig, n: usize) -> TrainPlan {
        let mut order = vec![LayerGroup::Head];
        order.extend((0..n).rev().map(LayerGroup::Layer));
        order.push(LayerGroup::Embeddings);
        TrainPlan::new(Method::Transfer, &cfg, order, crate::models::text_classifier::layer_group)
    }

    #[test]
    fn gradual_unfreezing_goes_top_down_with_embeddings_last() {
        let plan =
            bert_plan(TransferConfig { trainable_layers: 1, unfreeze_every_epochs: Some(2), ..Default::default() }, 3);
        let groups_at = |epoch| plan.order[..plan.unfrozen(epoch, 0)].to_vec();
        use LayerGroup::*;
        assert_eq!(groups_at(0), vec![Head, Layer(2)]);
        assert_eq!(groups_at(1), vec![Head, Layer(2)]);
        assert_eq!(groups_at(2), vec![Head, Layer(2), Layer(1)]);
        assert_eq!(groups_at(4), vec![Head, Layer(2), Layer(1), Layer(0)]);
        assert_eq!(groups_at(6), vec![Head, Layer(2), Layer(1), Layer(0), Embeddings]);
        assert_eq!(groups_at(9).len(), 5);
        assert!(plan.is_trainable("head.classifier.weight", 1));
        assert!(plan.is_trainable("bert.pooler.dense.weight", 1));
        assert!(!plan.is_trainable("bert.encoder.layer.2.output.dense.weight", 1));
        assert!(plan.is_trainable("bert.encoder.layer.2.output.dense.weight", 2));
        assert!(!plan.is_trainable("bert.embeddings.word_embeddings.weight", 4));
    }

    #[test]
    fn step_based_unfreezing_and_layer_lr_decay() {
        let plan =
            bert_plan(TransferConfig { unfreeze_every_steps: Some(5), layer_lr_decay: 0.5, ..Default::default() }, 2);
        assert_eq!(plan.unfrozen(0, 4), 1);
        assert_eq!(plan.unfrozen(0, 5), 2);
        assert_eq!(plan.unfrozen(0, 100), 4);
        assert_eq!(plan.lr_scale("head.classifier.bias"), 1.0);
        assert_eq!(plan.lr_scale("bert.encoder.layer.1.attention.self_attn.query.weight"), 0.5);
        assert_eq!(plan.lr_scale("bert.encoder.layer.0.output.dense.bias"), 0.25);
        assert_eq!(plan.lr_scale("bert.embeddings.layer_norm.gamma"), 0.125);
    }
}
