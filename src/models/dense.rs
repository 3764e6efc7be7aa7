//! The linear layer every model in finetune is built from.
//!
//! It has the same parameters as burn's `Linear` (`weight` `[in, out]`, optional `bias`), so
//! checkpoint keys map the same way, and computes `x [.., in]` as one `[rows, in] × [in, out]`
//! product: burn's `Linear` keeps the batch dimension for some shapes, which on the CPU backend
//! becomes many small products that each re-pack the weight (2× slower on MiniLM shapes).
//! Having our own type is also where parameter-efficient methods attach (LoRA wraps this layer).

use crate::methods::lora::LoraAdapter;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Dense {
    /// `[in, out]` (the transpose of PyTorch's `[out, in]`).
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// A LoRA/DoRA adapter, when one is attached (see `methods::lora`).
    pub lora: Option<LoraAdapter>,
}

impl Dense {
    /// A layer with weights drawn from `N(0, std)` and a zero bias (the Hugging Face init).
    pub fn new(d_in: usize, d_out: usize, std: f64, bias: bool, device: &Device) -> Self {
        let init = Initializer::Normal { mean: 0.0, std };
        Self {
            weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            lora: None,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.lazy_shape().as_slice()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.lazy_shape().as_slice()[1]
    }

    /// `x [.., in] → [.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let x = x.reshape([rows, d_in]);
        let mut y = x.clone().matmul(self.weight.val());
        if let Some(adapter) = &self.lora {
            let base = y.clone();
            y = y + adapter.forward(self, x, || base);
        }
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze::<2>();
        }
        let mut out = dims;
        out[D - 1] = self.d_out();
        y.reshape(out)
    }
}
