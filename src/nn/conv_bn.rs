//! The unit every CNN backbone here is built from: a convolution without bias, BatchNorm, and
//! an optional activation, with an optional LoRA adapter on the convolution.

use crate::nn::conv_lora::{ConvLoraAdapter, same_padding};
use crate::ops::batch_norm::{Statistics, batch_norm};
use crate::ops::conv2d::conv2d;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Linear (a projection, or a conv whose ReLU comes after a residual sum).
    None,
    Relu,
    Relu6,
}

impl Activation {
    /// The activation as a clamp `(lo, hi)` of its input.
    pub fn clamp(self) -> (f32, f32) {
        match self {
            Self::None => (f32::NEG_INFINITY, f32::INFINITY),
            Self::Relu => (0.0, f32::INFINITY),
            Self::Relu6 => (0.0, 6.0),
        }
    }
}

/// `activation(bn(x))` through `ops::batch_norm` (one fused op), behaving as burn's
/// `BatchNorm::forward`: batch statistics when the layer trains on an autodiff device, the running
/// ones otherwise. The running averages are updated as PyTorch does (`momentum` is the new
/// batch's weight; the variance entering the average is the unbiased one).
pub fn batch_norm_activation(bn: &BatchNorm, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    let device = x.device();
    let [n, _, h, w] = x.dims();
    let statistics = if device.is_autodiff() && bn.training.is_enabled() {
        Statistics::Batch
    } else {
        Statistics::Running(bn.running_mean.value().to_device(&device), bn.running_var.value().to_device(&device))
    };
    let out = batch_norm(x, bn.gamma.val(), bn.beta.val(), statistics, bn.epsilon, activation.clamp());
    if let Some((mean, var)) = out.batch_stats {
        let count = (n * h * w) as f64;
        let unbiased = var.mul_scalar(count / (count - 1.0).max(1.0));
        let m = bn.momentum;
        let average =
            |old: Tensor<1>, new: Tensor<1>| old.to_device(&device).mul_scalar(1.0 - m).add(new.mul_scalar(m)).detach();
        bn.running_mean.update(average(bn.running_mean.value_sync(), mean));
        bn.running_var.update(average(bn.running_var.value_sync(), unbiased));
    }
    out.output
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `(kernel - 1) / 2` on every side, as PyTorch models declare it.
    Symmetric,
    /// TensorFlow's "SAME": output size `ceil(input / stride)`, the odd pixel of padding at the
    /// bottom/right (models ported from TensorFlow, e.g. EfficientNet).
    TfSame,
}

/// The shape of one conv + BatchNorm unit.
#[derive(Debug, Clone, Copy)]
pub struct ConvBnSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    /// 1 for a dense convolution, `c_in` for a depthwise one.
    pub groups: usize,
    pub activation: Activation,
    pub padding: Padding,
    pub bn_eps: f64,
    /// PyTorch's convention: the weight of the new batch in the running statistics.
    pub bn_momentum: f64,
}

impl ConvBnSpec {
    /// A dense `kernel`×`kernel` convolution with PyTorch's defaults (symmetric padding,
    /// BatchNorm eps 1e-5, momentum 0.1).
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, activation: Activation) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            groups: 1,
            activation,
            padding: Padding::Symmetric,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        }
    }

    pub fn depthwise(self) -> Self {
        Self { groups: self.c_in, ..self }
    }

    pub fn init(self, device: &Device) -> ConvBn {
        let padding = match self.padding {
            Padding::Symmetric => {
                let p = (self.kernel - 1) / 2;
                PaddingConfig2d::Explicit(p, p, p, p)
            }
            Padding::TfSame => PaddingConfig2d::Same,
        };
        let conv = Conv2dConfig::new([self.c_in, self.c_out], [self.kernel, self.kernel])
            .with_stride([self.stride, self.stride])
            .with_padding(padding)
            .with_groups(self.groups)
            .with_bias(false)
            .init(device);
        let bn =
            BatchNormConfig::new(self.c_out).with_epsilon(self.bn_eps).with_momentum(self.bn_momentum).init(device);
        ConvBn { conv, lora: None, bn, activation: self.activation }
    }
}

#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    /// A LoRA adapter on the convolution, when one is attached (see `nn::conv_lora`; attached by `methods::lora`).
    pub lora: Option<ConvLoraAdapter>,
    pub bn: BatchNorm,
    #[module(skip)]
    pub activation: Activation,
}

impl ConvBn {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let z = match &self.lora {
            Some(lora) => conv_forward(&self.conv, x.clone()) + lora.forward(x),
            None => conv_forward(&self.conv, x),
        };
        batch_norm_activation(&self.bn, z, self.activation)
    }

    /// Batch statistics in training (`train` true) or the stored running statistics.
    pub fn set_batch_norm_training(mut self, train: bool) -> Self {
        self.bn.training = burn::module::Param::from_bool(train);
        self
    }
}

/// `conv.forward(x)` for a convolution without bias, through `ops::conv2d` (its own backward
/// pass for pointwise and depthwise convolutions).
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    debug_assert!(conv.bias.is_none(), "conv_forward: ConvBn convolutions have no bias");
    let [_, _, h, w] = x.dims();
    let [kh, kw] = conv.kernel_size;
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => [same_padding(kh, conv.stride[0], h), same_padding(kw, conv.stride[1], w)],
    };
    conv2d(x, conv.weight.val(), ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups))
}

/// A PyTorch BatchNorm key for burn's parameter name (`gamma` is PyTorch's `weight`, `beta` its
/// `bias`; the running statistics keep their names).
pub fn batch_norm_leaf(leaf: &str) -> &str {
    match leaf {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// The PyTorch key of a `ConvBn` parameter path `rest` (`conv.weight`, `bn.gamma`, ...) when the
/// convolution is called `conv` and its BatchNorm `bn` in the checkpoint. LoRA paths are ours.
pub fn conv_bn_key(rest: &str, conv: &str, bn: &str) -> String {
    match rest.split_once('.') {
        Some(("conv", leaf)) => format!("{conv}.{leaf}"),
        Some(("bn", leaf)) => format!("{bn}.{}", batch_norm_leaf(leaf)),
        _ => rest.to_string(),
    }
}

/// How BatchNorm layers behave while their layer trains (`image.batch_norm` in a recipe).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    #[default]
    Train,
    Frozen,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TF "SAME" padding puts the odd pixel after: a 3×3 stride-2 conv on 4×4 reads rows 0..=4
    /// with row 4 padding, so the first output sees no padding at the top.
    #[test]
    fn tf_same_padding_is_asymmetric_like_tensorflow() {
        let device = Device::default();
        let mut spec = ConvBnSpec::new(1, 1, 3, 2, Activation::None);
        spec.padding = Padding::TfSame;
        let cb = spec.init(&device);
        let w = Tensor::<4>::ones([1, 1, 3, 3], &device);
        let conv = Conv2d { weight: burn::module::Param::from_tensor(w), ..cb.conv };
        let x = Tensor::<4>::ones([1, 1, 4, 4], &device);
        let y: Vec<f32> = conv.forward(x).into_data().try_into_vec().unwrap();
        // Output 2×2: the top-left window is fully inside (9), the right/bottom ones see padding.
        assert_eq!(y, vec![9.0, 6.0, 6.0, 4.0]);
    }
}
