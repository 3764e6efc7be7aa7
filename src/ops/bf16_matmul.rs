//! bf16 autocast products on the CPU, as one autodiff node over [`bf16_gemm`].
//!
//! Forward `C = A·B`, backward `dA = G·Bᵀ` and `dB = Aᵀ·G`, all three with bf16 operands and f32
//! sums, like PyTorch's autocast. The node keeps the f32 operands it needs for backward (each only
//! when the other side is trained; they are shared buffers, not copies) and hands the kernel
//! transposed views, so nothing is cast, copied or transposed in memory.

use super::bf16_gemm::{self, MatRef};
use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// Whether `a · b` can take this path: CPU tensors in f32, the same batch dimensions (no
/// broadcasting between operands), and a CPU with AVX512-BF16.
pub fn supports<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> bool {
    crate::ops::device::is_host(&a.device())
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.dims()[..D - 2] == b.dims()[..D - 2]
        && bf16_gemm::available()
}

/// `a · b` with bf16 operands and f32 sums; callers check [`supports`] first.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if a.device().is_autodiff() {
        let y = forward_tracked(host_autodiff_tensor(a), host_autodiff_tensor(b));
        return Tensor::from_primitive::<Autodiff<Flex>>(y);
    }
    Tensor::from_primitive::<Flex>(product(&host_tensor(a), &host_tensor(b)))
}

fn forward_tracked(a: HostAutodiffTensor, b: HostAutodiffTensor) -> HostAutodiffTensor {
    let (a_trained, b_trained) = (a.is_tracked(), b.is_tracked());
    let prep = Bf16Matmul.prepare::<NoCheckpointing>([a.node(), b.node()]).compute_bound().stateful();
    let (a, b) = (a.into_primitive(), b.into_primitive());
    let y = product(&a, &b);
    match prep {
        // dA needs B and dB needs A: keep each only when the other side is trained.
        OpsKind::Tracked(prep) => prep.finish((b_trained.then_some(a), a_trained.then_some(b)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The autodiff node; its state is `(A, B)`, each kept only if the other operand's gradient is
/// needed.
#[derive(Debug)]
struct Bf16Matmul;

impl Backward<Flex, 2> for Bf16Matmul {
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        binary::<Flex, _, _>(
            ops.parents,
            ops.node,
            grads,
            |g| product(&g, &transposed(b.expect("B is kept when A is trained"))),
            |g| product(&transposed(a.expect("A is kept when B is trained")), &g),
        );
    }
}

/// The same buffer with its last two axes swapped (a view).
fn transposed(t: FlexTensor) -> FlexTensor {
    let d = t.layout().num_dims();
    let layout = t.layout().transpose(d - 2, d - 1);
    t.with_layout(layout)
}

/// `a [.., m, k] · b [.., k, n]` (same leading dimensions) as a new contiguous f32 tensor.
fn product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (a, b) = (viewable(a), viewable(b));
    let (sa, sb) = (a.layout().shape().clone(), b.layout().shape().clone());
    let d = sa.num_dims();
    let (m, k, n) = (sa[d - 2], sa[d - 1], sb[d - 1]);
    assert_eq!(sb[d - 2], k, "bf16 matmul: inner dimensions {sa:?} · {sb:?}");
    let batch_dims: Vec<usize> = (0..d - 2).map(|i| sa[i]).collect();
    let batches: usize = batch_dims.iter().product();
    let mut out = vec![0f32; batches * m * n];
    if m * n > 0 {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| bf16_gemm::gemm(view(&a, &batch_dims, i), view(&b, &batch_dims, i), c));
    }
    let mut shape = batch_dims;
    shape.extend([m, n]);
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// Matrix number `batch` (row-major order over `batch_dims`) of `t`'s last two axes.
fn view<'a>(t: &'a FlexTensor, batch_dims: &[usize], batch: usize) -> MatRef<'a> {
    let layout = t.layout();
    let (shape, strides, d) = (layout.shape(), layout.strides(), layout.num_dims());
    let (mut offset, mut rest) = (layout.start_offset(), batch);
    for (axis, &size) in batch_dims.iter().enumerate().rev() {
        offset += (rest % size) * strides[axis] as usize;
        rest /= size;
    }
    let (rows, cols) = (shape[d - 2], shape[d - 1]);
    let (row_stride, col_stride) = (strides[d - 2] as usize, strides[d - 1] as usize);
    MatRef { data: t.storage(), offset, rows, cols, row_stride, col_stride }
}

/// `t` as f32 with non-negative strides (a view when it already is; a copy otherwise).
fn viewable(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "bf16 matmul: expected f32 operands");
    if t.layout().has_positive_strides() { t.clone() } else { t.to_contiguous() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Forward and both gradients against burn's f32 product of the bf16-rounded operands, on a
    /// batched product with a transposed operand (the attention shape) and a plain 2-D one.
    #[test]
    fn node_matches_f32_products_of_rounded_operands() {
        if bf16_gemm::unavailable_in_tests() {
            return;
        }
        let device = Device::flex().autodiff();
        let round = |t: Tensor<4>| t.cast(burn::tensor::FloatDType::BF16).cast(burn::tensor::FloatDType::F32);
        let a = Tensor::<4>::random([2, 3, 17, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let k = Tensor::<4>::random([2, 3, 19, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weights = Tensor::<4>::random([2, 3, 17, 19], Distribution::Normal(0.0, 1.0), &device);
        let y = matmul(a.clone(), k.clone().swap_dims(2, 3));
        let want = round(a.clone()).matmul(round(k.clone()).swap_dims(2, 3));
        assert!(max_diff(y.clone().inner(), want.inner()) < 1e-4);
        let grads = (y * weights.clone()).sum().backward();
        // dA = G·K and dK = Gᵀ·A with G = weights, rounded the same way the node rounds.
        let g = round(weights);
        let da = g.clone().matmul(round(k.clone()));
        let dk = g.swap_dims(2, 3).matmul(round(a.clone()));
        assert!(max_diff(a.grad(&grads).unwrap(), da.inner()) < 1e-4);
        assert!(max_diff(k.grad(&grads).unwrap(), dk.inner()) < 1e-4);
    }

    /// A frozen operand gets no gradient and the trained one still does.
    #[test]
    fn frozen_operand_gets_no_gradient() {
        if bf16_gemm::unavailable_in_tests() {
            return;
        }
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([5, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let w = Tensor::<2>::random([6, 3], Distribution::Normal(0.0, 1.0), &device);
        let grads = matmul(x.clone(), w.clone()).sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(w.grad(&grads).is_none());
    }
}
