//! `x · Wᵀ` for a frozen quantized weight `W` (`[out, in]`), with a backward pass that
//! dequantizes `W` a second time instead of keeping the f32 matrix alive until backward.
//!
//! Through burn's own `matmul`, the dequantized weight is the operand of the input gradient, so
//! autodiff holds every layer's f32 copy from the forward pass to the backward pass: during a
//! training step the whole base exists in f32 again and QLoRA saves no memory. This op is a
//! custom autodiff node (burn's backend-extension API) whose saved state is the quantized
//! weight itself (shared, not copied); its backward rebuilds the f32 matrix, uses it for
//! `grad · W`, and drops it. Nothing is saved for a weight gradient: the weight is frozen.
//!
//! It applies to f32 training on the CPU backend. Anywhere else (inference, bf16 autocast, a GPU
//! device) the plain product is used: without autodiff nothing is kept anyway.

use crate::ops::context::{self, Precision};
use crate::ops::matmul;
use crate::quant::FrozenWeight;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::{Autodiff, Backend, Flex, TensorMetadata};
use burn::prelude::*;
use std::sync::Arc;

/// `x [rows, in] · Wᵀ → [rows, out]`; gradients reach `x` only.
pub fn frozen_matmul(x: Tensor<2>, weight: &Arc<FrozenWeight>) -> Tensor<2> {
    let device = x.device();
    if uses_own_node(&x) {
        let x = crate::ops::device::host_autodiff_tensor(x);
        return Tensor::from_primitive::<Autodiff<Flex>>(forward::<Flex>(x, weight));
    }
    matmul::matmul(x, weight.to_tensor(&device.inner()))
}

/// Whether `x` takes the custom autodiff node (f32 training on the CPU backend).
fn uses_own_node(x: &Tensor<2>) -> bool {
    let device = x.device();
    device.is_autodiff()
        && crate::ops::device::is_host(&device)
        && context::precision() == Precision::F32
        && x.dtype() == burn::tensor::DType::F32
}

/// The weight as a backend tensor, `[out, in]`.
fn dequantized<B: Backend>(weight: &FrozenWeight, device: &B::Device) -> B::FloatTensorPrimitive {
    B::float_from_data(TensorData::new(weight.dequantize(), weight.shape()), device)
}

type AdTensor<B> = <Autodiff<B> as burn::backend::BackendTypes>::FloatTensorPrimitive;

fn forward<B: Backend>(x: AdTensor<B>, weight: &Arc<FrozenWeight>) -> AdTensor<B> {
    let w = dequantized::<B>(weight, &x.primitive().device());
    let prep = FrozenMatmul.prepare::<NoCheckpointing>([x.node()]).compute_bound().stateful();
    let y = B::float_matmul(x.into_primitive(), B::float_transpose(w));
    match prep {
        // The state is the shared quantized weight: a pointer, not a matrix.
        OpsKind::Tracked(prep) => prep.finish(Arc::clone(weight), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The autodiff node of `frozen_matmul`.
#[derive(Debug)]
struct FrozenMatmul;

impl<B: Backend> Backward<B, 1> for FrozenMatmul {
    type State = Arc<FrozenWeight>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            // d(x·Wᵀ)/dx applied to grad [rows, out]: grad · W, with W [out, in] rebuilt here.
            let w = dequantized::<B>(&weight, &grad.device());
            B::float_matmul(grad, w)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU training takes the node that keeps no f32 weight; inference takes the plain product.
    /// (The gradient itself is checked against the dequantized weight in the integration tests.)
    #[test]
    fn cpu_training_routes_through_the_custom_node() {
        let cpu = Device::flex();
        assert!(uses_own_node(&Tensor::<2>::zeros([2, 4], &cpu.clone().autodiff())));
        assert!(!uses_own_node(&Tensor::<2>::zeros([2, 4], &cpu)));
    }
}
