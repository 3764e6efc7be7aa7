//! The unit every CNN backbone here is built from: a convolution without bias, BatchNorm, and
//! an optional activation, with an optional LoRA adapter on the convolution.

use crate::nn::conv_lora::ConvLoraAdapter;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Linear (a projection, or a conv whose ReLU comes after a residual sum).
    None,
    Relu,
    Relu6,
}

impl Activation {
    pub fn apply(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::None => x,
            Self::Relu => burn::tensor::activation::relu(x),
            Self::Relu6 => x.clamp(0.0, 6.0),
        }
    }
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
            Some(lora) => self.conv.forward(x.clone()) + lora.forward(x),
            None => self.conv.forward(x),
        };
        self.activation.apply(self.bn.forward(z))
    }

    /// Batch statistics in training (`train` true) or the stored running statistics.
    pub fn set_batch_norm_training(mut self, train: bool) -> Self {
        self.bn.training = burn::module::Param::from_bool(train);
        self
    }
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
