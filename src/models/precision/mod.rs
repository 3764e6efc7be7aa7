//! Mixed precision, the way PyTorch's autocast does it: matrix products run in bf16, while
//! weights, layer norms, softmax, the loss, gradients and optimizer state stay f32 (the "master
//! weights"). A product casts both operands to bf16 and its result back to f32; autodiff casts
//! the gradients the same way, so the backward products run in bf16 too.
//!
//! It is a per-thread switch, like PyTorch's autocast context, rather than a field in every layer,
//! so a model is loaded once and can be run either way; the thread that calls the model's forward
//! and backward is the one that sets it.

mod bf16_gemm;
mod host_bf16;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::FloatDType;
use std::cell::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Matrix products in bf16, the rest in f32.
    Bf16Autocast,
}

impl Precision {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" | "bf16-autocast" => Ok(Self::Bf16Autocast),
            other => bail!("precision = {other:?}: expected \"f32\" or \"bf16\" (bf16 matrix products, f32 weights)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16Autocast => "bf16",
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Set the precision every following matrix product on this thread uses.
pub fn set(precision: Precision) {
    CURRENT.with(|c| c.set(precision));
}

pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// `a · b` in the current precision; the result is always f32.
///
/// bf16 on a CPU with AVX512-BF16 runs our own kernel (`bf16_gemm`), which rounds the f32
/// operands while packing them; elsewhere (a GPU, an older CPU) the operands are cast and burn's
/// bf16 product runs (on an older CPU that is slower than f32: burn computes it in f32).
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match current() {
        Precision::F32 => a.matmul(b),
        Precision::Bf16Autocast if host_bf16::supports(&a, &b) => host_bf16::matmul(a, b),
        Precision::Bf16Autocast => a.cast(FloatDType::BF16).matmul(b.cast(FloatDType::BF16)).cast(FloatDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Distribution};

    fn max_rel_err(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale
    }

    /// bf16 products stay within bf16 rounding of f32 ones, come back as f32, and pass gradients
    /// (in f32) to both operands.
    #[test]
    fn bf16_autocast_matches_f32_within_bf16_rounding_and_trains() {
        let device = Device::flex().autodiff();
        let a = Tensor::<2>::random([32, 64], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let b = Tensor::<2>::random([64, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
        set(Precision::Bf16Autocast);
        let y16 = matmul(a.clone(), b.clone());
        set(Precision::F32);
        let y32 = matmul(a.clone(), b.clone());
        assert_eq!(y16.dtype(), DType::F32);
        let err = max_rel_err(y16.clone(), y32.clone());
        assert!(err > 0.0 && err < 2e-2, "bf16 vs f32 relative error {err}");

        let g16 = y16.sum().backward();
        let g32 = y32.sum().backward();
        for (x, name) in [(&a, "a"), (&b, "b")] {
            let (d16, d32) = (x.grad(&g16).expect(name), x.grad(&g32).expect(name));
            assert_eq!(d16.dtype(), DType::F32, "{name}");
            let err = max_rel_err(d16, d32);
            assert!(err < 2e-2, "gradient of {name}: relative error {err}");
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16Autocast);
        assert_eq!(Precision::parse("f32").unwrap(), Precision::F32);
        assert!(Precision::parse("fp8").unwrap_err().to_string().contains("fp8"));
    }
}
