//! Mixed precision, the way PyTorch's autocast does it: matrix products run in bf16, while
//! weights, layer norms, softmax, the loss, gradients and optimizer state stay f32 (the "master
//! weights"). A product casts both operands to bf16 and its result back to f32; autodiff casts
//! the gradients the same way, so the backward products run in bf16 too.
//!
//! The precision is the run's setting in `ops::context` (a model is loaded once and can be run
//! either way). Measured (docs/BENCHMARKS.md, round 4): with our AVX512-BF16 kernel a MiniLM LoRA
//! step is 1.74x faster than PyTorch fp32. On CPUs without those instructions burn computes the
//! cast product in f32, slower than plain f32, so f32 stays the default.

use super::bf16_matmul;
use super::context::{Precision, precision};
use burn::prelude::*;
use burn::tensor::FloatDType;

/// `a · b` in the current precision; the result is always f32.
///
/// bf16 on a CPU with AVX512-BF16 runs our own kernel (`bf16_gemm`), which rounds the f32
/// operands while packing them; elsewhere (a GPU, an older CPU) the operands are cast and burn's
/// bf16 product runs (on an older CPU that is slower than f32: burn computes it in f32).
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match precision() {
        Precision::F32 => a.matmul(b),
        Precision::Bf16Autocast if bf16_matmul::supports(&a, &b) => bf16_matmul::matmul(a, b),
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
        let y16 = {
            let _bf16 = super::super::context::enter(Precision::Bf16Autocast);
            matmul(a.clone(), b.clone())
        };
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
}
