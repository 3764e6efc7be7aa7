//! Layer groups of an encoder classifier, gradual unfreezing and layer-wise learning rates.

use crate::nn::layer_group::LayerGroup;
use crate::recipe::{Method, Recipe};

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
    /// The plan for a BERT-style encoder classifier with `num_layers` layers.
    pub fn new(recipe: &Recipe, num_layers: usize) -> Self {
        let mut order = vec![LayerGroup::Head];
        order.extend((0..num_layers).rev().map(LayerGroup::Layer));
        order.push(LayerGroup::Embeddings);
        Self::for_groups(recipe, order, crate::models::text_classifier::layer_group)
    }

    /// The plan for any model: its groups top-down (head first) and how paths map to them.
    pub fn for_groups(recipe: &Recipe, order: Vec<LayerGroup>, group_of: fn(&str) -> LayerGroup) -> Self {
        let all = order.len();
        match recipe.method {
            Method::Transfer => Self {
                initial: (1 + recipe.transfer.trainable_layers).min(all),
                every_epochs: recipe.transfer.unfreeze_every_epochs.filter(|&n| n > 0),
                every_steps: recipe.transfer.unfreeze_every_steps.filter(|&n| n > 0),
                layer_lr_decay: recipe.transfer.layer_lr_decay,
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

    fn recipe(extra: &[&str]) -> Recipe {
        let base = r#"
method = "transfer"
model = "m"
output_dir = "r"
[data]
dataset = "d"
train = "t.csv"
[training]
epochs = 10
batch_size = 2
learning_rate = 1e-3
"#;
        Recipe::parse(base, &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn gradual_unfreezing_goes_top_down_with_embeddings_last() {
        let plan = TrainPlan::new(&recipe(&["transfer.trainable_layers=1", "transfer.unfreeze_every_epochs=2"]), 3);
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
        let plan = TrainPlan::new(&recipe(&["transfer.unfreeze_every_steps=5", "transfer.layer_lr_decay=0.5"]), 2);
        assert_eq!(plan.unfrozen(0, 4), 1);
        assert_eq!(plan.unfrozen(0, 5), 2);
        assert_eq!(plan.unfrozen(0, 100), 4);
        assert_eq!(plan.lr_scale("head.classifier.bias"), 1.0);
        assert_eq!(plan.lr_scale("bert.encoder.layer.1.attention.self_attn.query.weight"), 0.5);
        assert_eq!(plan.lr_scale("bert.encoder.layer.0.output.dense.bias"), 0.25);
        assert_eq!(plan.lr_scale("bert.embeddings.layer_norm.gamma"), 0.125);
    }
}
