//! LoRA for a 2-D convolution, as peft's `lora.Conv2d`: `y = conv(x) + scale · B(A(dropout(x)))`
//! where `A` is a convolution with the base's kernel, stride and padding into `r` channels and `B`
//! a 1×1 convolution back to the output channels. Grouped (depthwise) convolutions are not
//! adapted. Weights keep peft's layout: `lora_A.weight [r, in, kh, kw]`, `lora_B.weight [out, r, 1, 1]`.

use super::dropout::dropout;
use super::lora::LoraInit;
use crate::ops::conv2d::conv2d;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

#[derive(Module, Debug)]
pub struct ConvLoraAdapter {
    pub a: Param<Tensor<4>>,
    pub b: Param<Tensor<4>>,
    pub dropout: Dropout,
    pub scale: f64,
    #[module(skip)]
    pub stride: [usize; 2],
    /// Symmetric padding `[h, w]`, or `None` for TensorFlow "SAME" padding (computed per input).
    #[module(skip)]
    pub padding: Option<[usize; 2]>,
}

impl ConvLoraAdapter {
    /// A fresh adapter for `base` (which must not be grouped), `B` zero.
    pub fn new(base: &Conv2d, r: usize, scale: f64, dropout_p: f64, init: LoraInit, device: &Device) -> Self {
        let [c_out, c_in, kh, kw] = base.weight.dims();
        let fan_in = (c_in * kh * kw) as f64;
        let a_init = match init {
            LoraInit::Gaussian => Initializer::Normal { mean: 0.0, std: 1.0 / r as f64 },
            LoraInit::Kaiming => Initializer::Uniform { min: -1.0 / fan_in.sqrt(), max: 1.0 / fan_in.sqrt() },
        };
        let padding = match base.padding.clone() {
            burn::nn::PaddingConfig2d::Explicit(top, left, _, _) => Some([top, left]),
            burn::nn::PaddingConfig2d::Valid => Some([0, 0]),
            burn::nn::PaddingConfig2d::Same => None,
        };
        Self {
            a: a_init.init([r, c_in, kh, kw], device),
            b: Initializer::Zeros.init([c_out, r, 1, 1], device),
            dropout: DropoutConfig::new(dropout_p).init(),
            scale,
            stride: base.stride,
            padding,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The adapter's contribution to the base convolution's output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = dropout(&self.dropout, x);
        let [_, _, kh, kw] = self.a.dims();
        let [_, _, h, w] = x.dims();
        let pads = match self.padding {
            Some([ph, pw]) => [(ph, ph), (pw, pw)],
            None => [same_padding(kh, self.stride[0], h), same_padding(kw, self.stride[1], w)],
        };
        let h = conv2d(x, self.a.val(), ConvOptions::new_with_padding(self.stride, pads, [1, 1], 1));
        conv2d(h, self.b.val(), ConvOptions::new([1, 1], [0, 0], [1, 1], 1)).mul_scalar(self.scale)
    }

    /// `scale · B·A` as a kernel `[out, in, kh, kw]`: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<4> {
        let [r, c_in, kh, kw] = self.a.dims();
        let [c_out, _, _, _] = self.b.dims();
        let a = self.a.val().reshape([r, c_in * kh * kw]);
        let b = self.b.val().reshape([c_out, r]);
        b.matmul(a).reshape([c_out, c_in, kh, kw]).mul_scalar(self.scale)
    }
}

/// TensorFlow "SAME" padding (before, after) of one dimension, as the base convolution pads.
pub(crate) fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let total = ((size.div_ceil(stride) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}
