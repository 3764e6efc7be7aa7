//! ReLU and ReLU6 (`min(max(x, 0), cap)`) as one pass forward and one pass backward.
//!
//! burn computes `clamp` as two masked fills (a comparison into a bool tensor, then a fill) and
//! its backward as two more; on a MobileNetV2 training step (Fashion-MNIST 64×64, batch 64, 2
//! cores; `perf`) ReLU6 was 15% of the time, forward and backward about equally. Here the forward
//! writes `y` in one pass and the node keeps `y` (the next layer keeps it anyway: the buffer is
//! shared) for a backward of one pass: `dx = dy` where `0 < y < cap`, else 0 — PyTorch's
//! `hardtanh_backward` / `threshold_backward` convention. NaN propagates as in PyTorch's clamp.
//!
//! On the CPU backend for f32 (with or without autodiff); elsewhere burn's `clamp` / `relu`.

use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor, is_host};
use crate::ops::simd::with_avx512;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `min(max(x, 0), cap)`: ReLU with `cap = f32::INFINITY`, ReLU6 with 6.
pub fn relu_capped<const D: usize>(x: Tensor<D>, cap: f32) -> Tensor<D> {
    let device = x.device();
    if is_host(&device) && x.dtype() == DType::F32 {
        if device.is_autodiff() {
            return Tensor::from_primitive::<Autodiff<Flex>>(forward_tracked(host_autodiff_tensor(x), cap));
        }
        return Tensor::from_primitive::<Flex>(forward(&host_tensor(x), cap));
    }
    if cap.is_infinite() { burn::tensor::activation::relu(x) } else { x.clamp(0.0, cap) }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

fn forward(x: &FlexTensor, cap: f32) -> FlexTensor {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let start = x.layout().start_offset();
    let input = &x.storage::<f32>()[start..start + x.layout().num_elements()];
    let y = crate::ops::buffer::for_overwrite(input.len(), |y| {
        y.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| clamp(x, cap, y))
    });
    FlexTensor::from_data(TensorData::new(y, shape))
}

fn forward_tracked(x: HostAutodiffTensor, cap: f32) -> HostAutodiffTensor {
    let prep = ReluCapped.prepare::<NoCheckpointing>([x.node()]).compute_bound().stateful();
    let y = forward(&x.into_primitive(), cap);
    match prep {
        OpsKind::Tracked(prep) => prep.finish((y.clone(), cap), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The autodiff node of [`relu_capped`]; its state is the output and the cap.
#[derive(Debug)]
struct ReluCapped;

impl Backward<Flex, 1> for ReluCapped {
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, cap) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let shape = y.layout().shape().clone();
            let (ys, gs) = (y.storage::<f32>(), grad.storage::<f32>());
            let (ys, gs) = (&ys[y.layout().start_offset()..], &gs[grad.layout().start_offset()..]);
            let n = shape.num_elements();
            let dx = crate::ops::buffer::for_overwrite(n, |dx| {
                dx.par_chunks_mut(CHUNK)
                    .zip(ys[..n].par_chunks(CHUNK).zip(gs[..n].par_chunks(CHUNK)))
                    .for_each(|(dx, (y, g))| pass_gradient(y, g, cap, dx))
            });
            FlexTensor::from_data(TensorData::new(dx, shape))
        });
    }
}

with_avx512!(clamp(x: &[f32], cap: f32, y: &mut [f32]) = clamp_body);
with_avx512!(pass_gradient(y: &[f32], g: &[f32], cap: f32, dx: &mut [f32]) = pass_gradient_body);

#[inline(always)]
fn clamp_body(x: &[f32], cap: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        // Comparisons with NaN are false: NaN passes through.
        *y = if x < 0.0 {
            0.0
        } else if x > cap {
            cap
        } else {
            x
        };
    }
}

#[inline(always)]
fn pass_gradient_body(y: &[f32], g: &[f32], cap: f32, dx: &mut [f32]) {
    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
        *dx = if y > 0.0 && y < cap { g } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values and gradients equal burn's `clamp` / `relu` (PyTorch's conventions: no gradient at
    /// or beyond the caps), NaN passes through, and a non-contiguous input is read correctly.
    #[test]
    fn equals_burns_clamp_and_relu() {
        let device = Device::flex().autodiff();
        let values = [-2.0f32, -0.5, 0.5, 3.0, 5.999, 6.5, 7.5, 1e9, f32::NAN, 0.25, -1e-9, 2.0];
        for cap in [6.0f32, f32::INFINITY] {
            let x = Tensor::<1>::from_floats(values, &device).reshape([3, 4]).transpose().require_grad();
            let weights =
                Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0], &device)
                    .reshape([4, 3]);
            let ours = relu_capped(x.clone(), cap);
            let reference =
                if cap.is_infinite() { burn::tensor::activation::relu(x.clone()) } else { x.clone().clamp(0.0, cap) };
            let (a, b): (Vec<f32>, Vec<f32>) =
                (ours.clone().into_data().try_to_vec().unwrap(), reference.clone().into_data().try_to_vec().unwrap());
            for (a, b) in a.iter().zip(&b) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "cap {cap}: {a} vs {b}");
            }
            // Gradients where the input is finite (burn and PyTorch differ on NaN's gradient).
            let finite = x.clone().is_nan().bool_not().float();
            let ga = (ours * weights.clone() * finite.clone()).sum().backward();
            let gb = (reference * weights * finite).sum().backward();
            let (da, db): (Vec<f32>, Vec<f32>) = (
                x.grad(&ga).unwrap().into_data().try_to_vec().unwrap(),
                x.grad(&gb).unwrap().into_data().try_to_vec().unwrap(),
            );
            assert_eq!(da, db, "cap {cap}");
        }
        // At the caps themselves PyTorch passes no gradient (`hardtanh_backward`: min < x < max).
        let x = Tensor::<1>::from_floats([0.0, 6.0, 3.0], &device).require_grad();
        let grads = relu_capped(x.clone(), 6.0).sum().backward();
        assert_eq!(x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(), vec![0.0, 0.0, 1.0]);
        let plain = relu_capped(Tensor::<1>::from_floats([-1.0, 3.0, 9.0], &Device::flex()), 6.0);
        assert_eq!(plain.into_data().try_to_vec::<f32>().unwrap(), vec![0.0, 3.0, 6.0]);
    }
}
