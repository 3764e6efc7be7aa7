//! LayerNorm with burn's parameter names (`gamma`, optional `beta`), so checkpoints and weight
//! maps are those of `burn::nn::LayerNorm`; its training pass on the CPU is one fused node
//! (`ops::layer_norm`: BERT's 13 layer norms per forward were ten recorded ops each).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Option<Param<Tensor<1>>>,
    epsilon: f64,
}

impl LayerNorm {
    /// γ = 1, β = 0 (PyTorch's initialisation).
    pub fn new(d_model: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: Some(Initializer::Zeros.init([d_model], device)),
            epsilon,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::ops::layer_norm::layer_norm(x, self.gamma.val(), self.beta.as_ref().map(|b| b.val()), self.epsilon)
    }
}
