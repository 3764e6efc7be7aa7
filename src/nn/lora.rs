//! The LoRA adapter of one linear layer: `y = base(x) + scale · dropout(x) · A · B`, computed as
//! two thin products (never by forming `W + BA`), plus DoRA's magnitude rescaling.

use crate::nn::dense::Dense;
use crate::nn::dropout::dropout;
use crate::ops::matmul::matmul;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::prelude::*;

/// Low-rank update of a `Dense` layer. Shapes follow burn's `[in, out]` convention: `a` is
/// `[in, r]` (peft's `lora_A.weight` transposed), `b` is `[r, out]` (`lora_B.weight` transposed).
#[derive(Module, Debug)]
pub struct LoraAdapter {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    /// DoRA: the per-output-feature magnitude `m` (`lora_magnitude_vector`), `[out]`.
    pub magnitude: Option<Param<Tensor<1>>>,
    pub dropout: Dropout,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
}

/// How `A` starts (`B` always starts at zero, so the adapted model starts equal to the base).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoraInit {
    /// `A ~ N(0, 1/r)` (peft `init_lora_weights = "gaussian"`).
    Gaussian,
    /// Kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(in), 1/sqrt(in))` (peft's default, `true`).
    Kaiming,
}

impl LoraAdapter {
    /// A fresh adapter for `base` of rank `r`.
    pub fn new(
        base: &Dense,
        r: usize,
        scale: f64,
        dropout_p: f64,
        init: LoraInit,
        dora: bool,
        device: &Device,
    ) -> Self {
        let (d_in, d_out) = (base.d_in(), base.d_out());
        let a_init = match init {
            LoraInit::Gaussian => Initializer::Normal { mean: 0.0, std: 1.0 / r as f64 },
            LoraInit::Kaiming => {
                let bound = 1.0 / (d_in as f64).sqrt();
                Initializer::Uniform { min: -bound, max: bound }
            }
        };
        let mut adapter = Self {
            a: a_init.init([d_in, r], device),
            b: Initializer::Zeros.init([r, d_out], device),
            magnitude: None,
            dropout: DropoutConfig::new(dropout_p).init(),
            scale,
        };
        if dora {
            // m starts as the column norms of the adapted weight (= the base weight, as B = 0).
            adapter.magnitude = Some(Param::from_tensor(adapter.weight_norm(base).detach()));
        }
        adapter
    }

    pub fn rank(&self) -> usize {
        self.a.lazy_shape().as_slice()[1]
    }

    /// `scale · A · B`, `[in, out]`: what merging adds to the base weight (LoRA only).
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// `‖W + scale·BA‖` per output feature, `[out]`, without gradient (DoRA §4.3 treats it as a
    /// constant, as peft does).
    fn weight_norm(&self, base: &Dense) -> Tensor<1> {
        let w = base.effective_weight().detach() + self.delta().detach();
        w.square().sum_dim(0).sqrt().squeeze_dim::<1>(0)
    }

    /// The adapter's contribution for `x [rows, in]` given the base layer's output without bias
    /// `base_out [rows, out]`; the caller adds it to the full base output.
    pub fn forward(&self, base: &Dense, x: Tensor<2>, base_out_no_bias: impl FnOnce() -> Tensor<2>) -> Tensor<2> {
        let dropped = dropout(&self.dropout, x.clone());
        let lora = matmul(matmul(dropped.clone(), self.a.val()), self.b.val()).mul_scalar(self.scale);
        let Some(m) = &self.magnitude else {
            return lora;
        };
        // DoRA (peft's formulation): (m/‖W+ΔW‖ − 1)·base(x) + (m/‖W+ΔW‖)·scale·B A x, where base(x)
        // is recomputed on the dropped-out input when dropout is active.
        let mag_scale = (m.val() / self.weight_norm(base)).unsqueeze::<2>();
        let base_out = if self.dropout.prob > 0.0 && self.dropout.training.is_enabled() && x.device().is_autodiff() {
            base.base_product(dropped)
        } else {
            base_out_no_bias()
        };
        base_out * (mag_scale.clone() - 1.0) + lora * mag_scale
    }

    /// The weight that merging this adapter into `base` produces, `[in, out]`.
    pub fn merged_weight(&self, base: &Dense) -> Tensor<2> {
        let w = base.effective_weight() + self.delta();
        match &self.magnitude {
            None => w,
            Some(m) => {
                let norm = w.clone().square().sum_dim(0).sqrt();
                w * (m.val().unsqueeze::<2>() / norm)
            }
        }
    }
}
