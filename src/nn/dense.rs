//! The linear layer every model in finetune is built from.
//!
//! It has the same parameters as burn's `Linear` (`weight` `[in, out]`, optional `bias`), so
//! checkpoint keys map the same way, and computes `x [.., in]` as one `[rows, in] × [in, out]`
//! product: burn's `Linear` keeps the batch dimension for some shapes, which on the CPU backend
//! becomes many small products that each re-pack the weight (2× slower on MiniLM shapes).
//! Having our own type is also where parameter-efficient methods attach (LoRA wraps this layer)
//! and where a frozen weight can be held 4-bit quantized (QLoRA).

use crate::nn::lora::LoraAdapter;
use crate::ops::frozen_matmul::frozen_matmul;
use crate::ops::matmul::matmul;
use crate::quant::FrozenWeight;
use crate::quant::nf4::Quantized4bit;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use std::sync::Arc;

#[derive(Module, Debug)]
pub struct Dense {
    /// `[in, out]` (the transpose of PyTorch's `[out, in]`); empty (`[0, 0]`) when quantized.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// A LoRA/DoRA adapter, when one is attached (see `methods::lora`).
    pub lora: Option<LoraAdapter>,
    /// The frozen weight held quantized (QLoRA's NF4, or GGUF blocks). Each product dequantizes
    /// it into a temporary f32 matrix (again in backward, see `ops::frozen_matmul`): gradients reach
    /// the input (and the adapter), never the quantized weight.
    #[module(skip)]
    pub quantized: Option<Arc<FrozenWeight>>,
}

impl Dense {
    /// A layer with weights drawn from `N(0, std)` and a zero bias (the Hugging Face init).
    pub fn new(d_in: usize, d_out: usize, std: f64, bias: bool, device: &Device) -> Self {
        let init = Initializer::Normal { mean: 0.0, std };
        Self {
            weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            lora: None,
            quantized: None,
        }
    }

    pub fn d_in(&self) -> usize {
        match &self.quantized {
            Some(q) => q.shape()[1],
            None => self.weight.lazy_shape().as_slice()[0],
        }
    }

    pub fn d_out(&self) -> usize {
        match &self.quantized {
            Some(q) => q.shape()[0],
            None => self.weight.lazy_shape().as_slice()[1],
        }
    }

    /// The weight `[in, out]` the layer computes with: the parameter, or the dequantized codes.
    pub fn effective_weight(&self) -> Tensor<2> {
        let Some(q) = &self.quantized else { return self.weight.val() };
        q.to_tensor(&self.weight.lazy_device().inner())
    }

    /// Hold the weight in f32 again (a quantized layer's dequantized values); returns whether the
    /// layer was quantized.
    pub fn dequantize(&mut self) -> bool {
        if self.quantized.is_none() {
            return false;
        }
        self.weight = Param::initialized(self.weight.id, self.effective_weight());
        self.quantized = None;
        true
    }

    /// Replace the float weight by its 4-bit quantization (the layer becomes frozen).
    pub fn quantize(&mut self, quant_type: crate::quant::nf4::QuantType, blocksize: usize, double: bool) {
        let w = self.weight.val().transpose();
        let [rows, cols] = w.dims();
        let values = w.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 weight");
        let q = Quantized4bit::quantize(&values, [rows, cols], quant_type, blocksize, double);
        self.set_frozen(FrozenWeight::Nf4(q));
    }

    /// Hold the weight as `frozen` from now on (the float parameter is dropped).
    pub fn set_frozen(&mut self, frozen: FrozenWeight) {
        self.quantized = Some(Arc::new(frozen));
        let device = self.weight.lazy_device();
        self.weight = Param::initialized(self.weight.id, Tensor::zeros([0, 0], &device));
    }

    /// `x [rows, in] · W` without bias or adapter. A quantized weight goes through
    /// `ops::frozen_matmul`, whose backward does not keep the dequantized matrix.
    pub fn base_product(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.quantized {
            Some(q) => frozen_matmul(x, q),
            None => matmul(x, self.weight.val()),
        }
    }

    /// `x [.., in] → [.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let x = x.reshape([rows, d_in]);
        let mut y = self.base_product(x.clone());
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
