//! The loss of a model's outputs against a split's [`Targets`], and what a batch scores.
//!
//! A classifier's examples each have a class (cross-entropy over the logits); a regression's
//! each have a value (`num_labels = 1`, mean squared error of the one output, transformers'
//! `problem_type = "regression"`). A batch's loss comes back with its [`Scored`] pairs, from which
//! `trainer::evaluate` computes the split's metrics (accuracy and macro-F1, or Pearson and
//! Spearman correlations).

use crate::data::Targets;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// The (predicted, actual) pairs of a batch, for the split's metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Scored {
    /// A class per example (or per target token of a language model).
    Classes(Vec<(usize, usize)>),
    /// A value per example.
    Values(Vec<(f32, f32)>),
    /// A set of classes per example (multi-label): (predicted, actual) class ids.
    Sets(Vec<(Vec<usize>, Vec<usize>)>),
    /// Tagged words (token classification): (predicted, actual) tag per scored word, and the
    /// entity counts of seqeval's micro average.
    Tagged(TagScores),
}

/// Words and entities of tagged sentences, as seqeval counts them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagScores {
    pub words: Vec<(usize, usize)>,
    pub predicted_entities: usize,
    pub gold_entities: usize,
    pub correct_entities: usize,
}

impl TagScores {
    /// Add one sentence: the predicted and gold tags (names) of its scored words.
    pub fn add(&mut self, predicted: &[usize], gold: &[usize], names: &[String]) {
        self.words.extend(predicted.iter().copied().zip(gold.iter().copied()));
        let tags = |ids: &[usize]| ids.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>();
        let p = crate::training::metrics::entities(&tags(predicted));
        let g = crate::training::metrics::entities(&tags(gold));
        self.correct_entities += p.iter().filter(|e| g.contains(e)).count();
        self.predicted_entities += p.len();
        self.gold_entities += g.len();
    }

    pub fn extend(&mut self, other: TagScores) {
        self.words.extend(other.words);
        self.predicted_entities += other.predicted_entities;
        self.gold_entities += other.gold_entities;
        self.correct_entities += other.correct_entities;
    }
}

impl FromIterator<(usize, usize)> for Scored {
    fn from_iter<I: IntoIterator<Item = (usize, usize)>>(pairs: I) -> Self {
        Self::Classes(pairs.into_iter().collect())
    }
}

/// The loss of `outputs [b, c]` for the examples `indices`, and their scored pairs:
/// cross-entropy and argmax against classes; against values, the mean squared error of the
/// single output (`c = 1`).
pub fn loss(targets: &Targets, outputs: Tensor<2>, indices: &[usize]) -> (Tensor<1>, Scored) {
    let device = outputs.device();
    match targets {
        Targets::Classes(labels) => classification_loss(outputs, labels, indices),
        Targets::Sets { sets, num_labels } => multi_label_loss(outputs, sets, *num_labels, indices),
        Targets::Values(values) => {
            let [b, c] = outputs.dims();
            assert_eq!(c, 1, "a regression head has one output");
            let t: Vec<f32> = indices.iter().map(|&i| values[i]).collect();
            let y = Tensor::<1>::from_data(TensorData::new(t.clone(), [b]), &device);
            let predicted = outputs.reshape([b]);
            let p: Vec<f32> = predicted.clone().into_data().convert::<f32>().try_into_vec().expect("f32 data");
            let loss = (predicted - y).powi_scalar(2).mean();
            (loss, Scored::Values(p.into_iter().zip(t).collect()))
        }
    }
}

/// The loss of a classifier: cross-entropy of `logits [b, c]` against the labels of the
/// examples `indices`, and their argmax predictions.
pub fn classification_loss(logits: Tensor<2>, labels: &[usize], indices: &[usize]) -> (Tensor<1>, Scored) {
    let device = logits.device();
    let y = crate::data::batch::label_tensor(labels, indices, &device);
    let argmax: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_into_vec().expect("int data");
    let pairs = indices.iter().zip(argmax).map(|(&i, p)| (p as usize, labels[i])).collect();
    (cross_entropy(logits, y), Scored::Classes(pairs))
}

/// The loss of a multi-label classifier: binary cross-entropy of each of `logits [b, c]` against
/// whether the class is in the example's set (mean over all b × c, PyTorch's
/// `BCEWithLogitsLoss`), and the predicted sets (probability above 0.5: logit above 0).
pub fn multi_label_loss(
    logits: Tensor<2>,
    sets: &[Vec<usize>],
    num_labels: usize,
    indices: &[usize],
) -> (Tensor<1>, Scored) {
    let [b, c] = logits.dims();
    assert_eq!(c, num_labels, "one output per label");
    let mut y = vec![0f32; b * c];
    for (row, &i) in indices.iter().enumerate() {
        for &k in &sets[i] {
            y[row * c + k] = 1.0;
        }
    }
    let values: Vec<f32> = logits.clone().into_data().convert::<f32>().try_into_vec().expect("f32 data");
    let scored = indices
        .iter()
        .enumerate()
        .map(|(row, &i)| ((0..c).filter(|&k| values[row * c + k] > 0.0).collect(), sets[i].clone()))
        .collect();
    let y = Tensor::<2>::from_data(TensorData::new(y, [b, c]), &logits.device());
    // softplus(x) - x y = -[y log σ(x) + (1-y) log(1-σ(x))], its gradient σ(x) - y everywhere
    // (max(x, 0) + log(1 + exp(-|x|)) is the same value but gives 1 - y at x = 0).
    let loss = burn::tensor::activation::softplus(logits.clone(), 1.0) - logits * y;
    (loss.mean(), Scored::Sets(scored))
}

/// Mean cross-entropy of `logits [b, c]` against `labels [b]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    logp.gather(1, labels.reshape([b, 1])).neg().mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_cross_entropy_matches_pytorch() {
        // torch.nn.BCEWithLogitsLoss()(x, y) and its gradient (torch 2.15), for these values.
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, -1.0, 0.5, -3.0, 0.0, 1.5], [2, 3]), &device)
            .require_grad();
        let sets = vec![vec![0, 2], vec![1]];
        let (loss, scored) = multi_label_loss(x.clone(), &sets, 3, &[0, 1]);
        assert!((loss.clone().into_scalar::<f32>() - 0.559_569_06).abs() < 1e-6, "{}", loss.into_scalar::<f32>());
        assert_eq!(scored, Scored::Sets(vec![(vec![0, 2], vec![0, 2]), (vec![2], vec![1])]));
        let (loss, _) = multi_label_loss(x.clone(), &sets, 3, &[0, 1]);
        let g: Vec<f32> = x.grad(&loss.backward()).unwrap().into_data().convert::<f32>().try_into_vec().unwrap();
        let want = [-0.019_867_16, 0.044_823_57, -0.062_923_44, 0.007_904_31, -0.083_333_34, 0.136_262_4];
        for (got, want) in g.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn mean_squared_error_and_its_gradient() {
        let device = Device::flex().autodiff();
        let outputs = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0], [3, 1]), &device).require_grad();
        let targets = Targets::Values(vec![9.0, 1.0, 0.0, 2.5]);
        let (loss, scored) = super::loss(&targets, outputs.clone(), &[1, 2, 3]);
        // (0.5-1)^2 + (-1-0)^2 + (2-2.5)^2 = 1.5, mean 0.5; d/do = 2 (o - t) / 3.
        assert!((loss.clone().into_scalar::<f32>() - 0.5).abs() < 1e-6);
        assert_eq!(scored, Scored::Values(vec![(0.5, 1.0), (-1.0, 0.0), (2.0, 2.5)]));
        let grads = loss.backward();
        let g: Vec<f32> = outputs.grad(&grads).unwrap().into_data().convert::<f32>().try_into_vec().unwrap();
        for (got, want) in g.iter().zip([-1.0 / 3.0, -2.0 / 3.0, -1.0 / 3.0]) {
            assert!((got - want).abs() < 1e-6, "{g:?}");
        }
    }
}
