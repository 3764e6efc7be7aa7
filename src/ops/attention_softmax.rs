//! Attention probabilities `softmax(scores · scale + bias)` over the last axis as one pass over
//! the scores, with a backward pass of its own.
//!
//! Through burn's tensor ops this is a scale, a broadcast add and softmax; in training burn's
//! autodiff records softmax as five ops (max, subtract, exp, sum, divide), so one attention layer
//! at batch 16 × 128 tokens walked its 3M-element score tensor about a dozen times forward and
//! backward (and kept the exponentials and sums alive for the backward pass). Here the forward is
//! one row-wise pass that keeps only the probabilities `y`, and the backward is one pass:
//! `d scores = scale · y ⊙ (g − Σⱼ gⱼ·yⱼ)`.
//!
//! The fused path runs on the CPU backend for f32 scores (with or without autodiff); elsewhere
//! (a GPU device) the same function is computed with burn's ops. `bias` is a constant (an
//! attention mask): no gradient flows into it.

use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor};
use crate::ops::simd::with_avx512;
use crate::ops::simd_math::exp_f32;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `softmax(scores · scale + bias)` along the last axis. `bias`, if any, broadcasts to `scores`
/// (each of its dimensions is 1 or the scores' size; the last is the scores' last).
pub fn scaled_masked_softmax(scores: Tensor<4>, scale: f32, bias: Option<Tensor<4>>) -> Tensor<4> {
    let device = scores.device();
    if crate::ops::device::is_host(&device) && scores.dtype() == DType::F32 {
        let bias = bias.map(|b| host_bias(b, &scores.dims()));
        if device.is_autodiff() {
            let y = forward_tracked(host_autodiff_tensor(scores), scale, bias);
            return Tensor::from_primitive::<Autodiff<Flex>>(y);
        }
        let y = forward_rows(&host_tensor(scores), scale, bias.as_ref());
        return Tensor::from_primitive::<Flex>(y);
    }
    let scaled = scores.mul_scalar(scale);
    softmax(
        match bias {
            Some(bias) => scaled + bias,
            None => scaled,
        },
        3,
    )
}

/// The bias as a contiguous f32 host tensor with its broadcast strides over the scores' first
/// three axes.
struct HostBias {
    values: FlexTensor,
    row_strides: [usize; 3],
}

fn host_bias(bias: Tensor<4>, scores: &[usize; 4]) -> HostBias {
    let dims = bias.dims();
    assert!(
        dims[3] == scores[3] && (0..3).all(|i| dims[i] == 1 || dims[i] == scores[i]),
        "attention bias {dims:?} does not broadcast to scores {scores:?}"
    );
    let bias = bias.inner().cast(DType::F32);
    let values = host_tensor(bias).to_contiguous();
    // Row `(i, j, k)` of the scores reads bias row `Σ iₐ·strideₐ`, with stride 0 on broadcast axes.
    let mut row_strides = [0; 3];
    let mut stride = 1;
    for axis in (0..3).rev() {
        if dims[axis] != 1 {
            row_strides[axis] = stride;
        }
        stride *= dims[axis];
    }
    HostBias { values, row_strides }
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

fn forward_rows(scores: &FlexTensor, scale: f32, bias: Option<&HostBias>) -> FlexTensor {
    let scores = scores.to_contiguous();
    let shape = scores.layout().shape().clone();
    let dims: [usize; 4] = [shape[0], shape[1], shape[2], shape[3]];
    let n = dims[3];
    let input: &[f32] = scores.storage();
    let mut out = vec![0f32; input.len()];
    if n > 0 {
        let bias_values: Option<&[f32]> = bias.map(|b| b.values.storage());
        out.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            for (r, y) in out.chunks_exact_mut(n).enumerate() {
                let row = first + r;
                let s = &input[row * n..(row + 1) * n];
                let b = bias.zip(bias_values).map(|(bias, values)| {
                    let (i, j, k) = (row / (dims[1] * dims[2]), (row / dims[2]) % dims[1], row % dims[2]);
                    let start = (i * bias.row_strides[0] + j * bias.row_strides[1] + k * bias.row_strides[2]) * n;
                    &values[start..start + n]
                });
                softmax_row(s, b, scale, y);
            }
        });
    }
    FlexTensor::from_data(TensorData::new(out, dims))
}

fn forward_tracked(scores: HostAutodiffTensor, scale: f32, bias: Option<HostBias>) -> HostAutodiffTensor {
    let prep = ScaledMaskedSoftmax.prepare::<NoCheckpointing>([scores.node()]).compute_bound().stateful();
    let y = forward_rows(&scores.into_primitive(), scale, bias.as_ref());
    match prep {
        OpsKind::Tracked(prep) => prep.finish((y.clone(), scale), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The autodiff node of `scaled_masked_softmax`; its state is the probabilities and the scale.
#[derive(Debug)]
struct ScaledMaskedSoftmax;

impl Backward<Flex, 1> for ScaledMaskedSoftmax {
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, scale) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let shape = y.layout().shape().clone();
            let n = shape[shape.num_dims() - 1];
            let (y, g): (&[f32], &[f32]) = (y.storage(), grad.storage());
            assert_eq!(y.len(), g.len(), "softmax backward: gradient and output sizes differ");
            let mut dx = vec![0f32; y.len()];
            if n > 0 {
                dx.par_chunks_mut(ROWS_PER_TASK * n)
                    .zip(y.par_chunks(ROWS_PER_TASK * n).zip(g.par_chunks(ROWS_PER_TASK * n)))
                    .for_each(|(dx, (y, g))| {
                        for ((dx, y), g) in dx.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(g.chunks_exact(n)) {
                            softmax_backward_row(y, g, scale, dx);
                        }
                    });
            }
            FlexTensor::from_data(TensorData::new(dx, shape))
        });
    }
}

/// Lanes of the partial sums and maxima: 16 f32 fill one AVX-512 register, and the fixed-width
/// accumulators let the compiler vectorize the reductions without reassociating a serial sum.
const LANES: usize = 16;

with_avx512!(softmax_row(s: &[f32], bias: Option<&[f32]>, scale: f32, y: &mut [f32]) = softmax_row_body);
with_avx512!(softmax_backward_row(y: &[f32], g: &[f32], scale: f32, dx: &mut [f32]) = softmax_backward_row_body);

#[inline(always)]
fn softmax_row_body(s: &[f32], bias: Option<&[f32]>, scale: f32, y: &mut [f32]) {
    match bias {
        Some(b) => y.iter_mut().zip(s).zip(b).for_each(|((y, &s), &b)| *y = s * scale + b),
        None => y.iter_mut().zip(s).for_each(|(y, &s)| *y = s * scale),
    }
    let mut max = [f32::NEG_INFINITY; LANES];
    let (blocks, rest) = y.as_chunks::<LANES>();
    for block in blocks {
        for (m, &v) in max.iter_mut().zip(block) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = rest.iter().chain(&max).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = [0f32; LANES];
    let (blocks, rest) = y.as_chunks_mut::<LANES>();
    for block in blocks {
        for (acc, v) in sum.iter_mut().zip(block) {
            *v = exp_f32(*v - max);
            *acc += *v;
        }
    }
    let mut total: f32 = sum.iter().sum();
    for v in rest {
        *v = exp_f32(*v - max);
        total += *v;
    }
    let inv = 1.0 / total;
    y.iter_mut().for_each(|v| *v *= inv);
}

#[inline(always)]
fn softmax_backward_row_body(y: &[f32], g: &[f32], scale: f32, dx: &mut [f32]) {
    let mut dot = [0f32; LANES];
    let (y_blocks, y_rest) = y.as_chunks::<LANES>();
    let (g_blocks, g_rest) = g.as_chunks::<LANES>();
    for (yb, gb) in y_blocks.iter().zip(g_blocks) {
        for ((acc, &y), &g) in dot.iter_mut().zip(yb).zip(gb) {
            *acc += y * g;
        }
    }
    let dot = dot.iter().sum::<f32>() + y_rest.iter().zip(g_rest).map(|(&y, &g)| y * g).sum::<f32>();
    dx.iter_mut().zip(y).zip(g).for_each(|((dx, &y), &g)| *dx = scale * y * (g - dot));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn composite(scores: Tensor<4>, scale: f32, bias: Option<Tensor<4>>) -> Tensor<4> {
        let scaled = scores.mul_scalar(scale);
        softmax(if let Some(b) = bias { scaled + b } else { scaled }, 3)
    }

    fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Padding masks `[b, 1, 1, n]`, causal masks `[1, 1, q, n]`, full biases and no bias: the fused
    /// probabilities and their gradient equal burn's ops (to f32 rounding), with and without
    /// autodiff, for rows that are and are not a multiple of the vector width.
    #[test]
    fn fused_softmax_and_its_gradient_match_burns_ops() {
        let device = Device::flex().autodiff();
        for n in [7, 16, 37] {
            let dims = [2, 3, 5, n];
            let scores = Tensor::<4>::random(dims, Distribution::Normal(0.0, 3.0), &device);
            let upstream = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let padding = Tensor::<4>::random([2, 1, 1, n], Distribution::Bernoulli(0.3), &device).mul_scalar(-1e9);
            let causal = Tensor::<4>::random([1, 1, 5, n], Distribution::Bernoulli(0.5), &device).mul_scalar(-1e9);
            let full = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            for bias in [None, Some(padding), Some(causal), Some(full)] {
                let run = |fused: bool| {
                    let s = scores.clone().require_grad();
                    let y = if fused {
                        scaled_masked_softmax(s.clone(), 0.3, bias.clone())
                    } else {
                        composite(s.clone(), 0.3, bias.clone())
                    };
                    let grads = (y.clone() * upstream.clone()).sum().backward();
                    (y, s.grad(&grads).expect("scores get a gradient"))
                };
                let ((y, dy), (y_ref, dy_ref)) = (run(true), run(false));
                assert!(max_abs_diff(y.clone(), y_ref.clone()) < 1e-6, "probabilities, n = {n}");
                assert!(max_abs_diff(Tensor::from_inner(dy), Tensor::from_inner(dy_ref)) < 1e-5, "gradient, n = {n}");
                let plain = scaled_masked_softmax(scores.clone().inner(), 0.3, bias.clone().map(|b| b.inner()));
                assert!(max_abs_diff(Tensor::from_inner(plain), y_ref) < 1e-6, "inference path, n = {n}");
            }
        }
    }
}
