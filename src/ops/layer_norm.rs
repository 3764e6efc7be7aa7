//! Layer normalisation whose training pass on the CPU is one autodiff node (the module with
//! its parameters is `nn::layer_norm::LayerNorm`).
//!
//! burn's CPU backend normalises in one fused pass when
//! nothing is tracked, but under autodiff its layer norm is recorded as ten ops (mean, subtract,
//! square, mean, add, sqrt, divide, scale, shift) whose backward passes walk the activations again
//! each; BERT has 13 of them per forward. Here training on the CPU (f32) runs one row-wise pass
//! forward, keeping the normalised rows `x̂` and `1/σ` per row, and one pass backward:
//! `dx = (g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)) / σ`, with `dγ = Σ g·x̂` and `dβ = Σ g` over rows
//! when those are trained. Elsewhere (inference, a GPU) it is burn's `layer_norm`.

use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor};
use crate::ops::simd::with_avx512;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `layer_norm(x)·γ + β` over the last axis: one fused autodiff node when training on the CPU in
/// f32, burn's `layer_norm` elsewhere (inference, a GPU).
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Option<Tensor<1>>, epsilon: f64) -> Tensor<D> {
    let device = x.device();
    let fused = device.is_autodiff() && crate::ops::device::is_host(&device) && x.dtype() == DType::F32;
    if !fused {
        return burn::tensor::module::layer_norm(x, gamma, beta, epsilon);
    }
    let dims = x.dims();
    let d = dims[D - 1];
    let beta = beta.unwrap_or_else(|| Tensor::zeros([d], &device));
    let rows = x.reshape([-1, d as i32]);
    let primitive = host_autodiff_tensor::<2>;
    let as_2d = |t: Tensor<1>| t.reshape([1, d]);
    let y = forward_tracked(primitive(rows), primitive(as_2d(gamma)), primitive(as_2d(beta)), epsilon);
    Tensor::<2>::from_primitive::<Autodiff<Flex>>(y).reshape(dims)
}

/// What the backward pass needs: `x̂` `[rows, d]`, `1/σ` per row and `γ`.
#[derive(Debug, Clone)]
struct Saved {
    normalized: FlexTensor,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

/// Rows per parallel task; the reductions over rows (dγ, dβ) are summed per task in this fixed
/// partition and then in task order, so results do not depend on scheduling.
const ROWS_PER_TASK: usize = 32;

fn host_f32(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "layer norm: expected f32");
    t.to_contiguous()
}

fn forward_tracked(
    x: HostAutodiffTensor,
    gamma: HostAutodiffTensor,
    beta: HostAutodiffTensor,
    epsilon: f64,
) -> HostAutodiffTensor {
    let prep =
        FusedLayerNorm.prepare::<NoCheckpointing>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
    let (x, gamma, beta) = (host_f32(x.primitive()), host_f32(gamma.primitive()), host_f32(beta.primitive()));
    let d = gamma.layout().shape()[1];
    let (xs, gs, bs): (&[f32], &[f32], &[f32]) = (x.storage(), gamma.storage(), beta.storage());
    let rows = xs.len() / d.max(1);
    let mut y = vec![0f32; xs.len()];
    let mut normalized = vec![0f32; xs.len()];
    let mut inv_std = vec![0f32; rows];
    if d > 0 {
        y.par_chunks_mut(ROWS_PER_TASK * d)
            .zip(normalized.par_chunks_mut(ROWS_PER_TASK * d))
            .zip(inv_std.par_chunks_mut(ROWS_PER_TASK))
            .zip(xs.par_chunks(ROWS_PER_TASK * d))
            .for_each(|(((y, n), s), x)| normalize_rows(x, gs, bs, epsilon as f32, n, s, y));
    }
    let shape = [rows, d];
    let out = FlexTensor::from_data(TensorData::new(y, shape));
    match prep {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                normalized: FlexTensor::from_data(TensorData::new(normalized, shape)),
                inv_std,
                gamma: gs.to_vec(),
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The autodiff node of the fused layer norm; parents are `x`, `γ` and `β`.
#[derive(Debug)]
struct FusedLayerNorm;

impl Backward<Flex, 3> for FusedLayerNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { normalized, inv_std, gamma } = ops.state;
        let grad = host_f32(&grads.consume::<Flex>(&ops.node));
        let [x_node, gamma_node, beta_node] = ops.parents;
        let d = gamma.len();
        let (g, xhat): (&[f32], &[f32]) = (grad.storage(), normalized.storage());
        let rows = inv_std.len();
        if let Some(node) = x_node {
            let mut dx = vec![0f32; g.len()];
            if d > 0 {
                dx.par_chunks_mut(ROWS_PER_TASK * d)
                    .zip(g.par_chunks(ROWS_PER_TASK * d).zip(xhat.par_chunks(ROWS_PER_TASK * d)))
                    .zip(inv_std.par_chunks(ROWS_PER_TASK))
                    .for_each(|((dx, (g, xhat)), s)| input_grad_rows(g, xhat, s, &gamma, dx));
            }
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [rows, d])));
        }
        if gamma_node.is_none() && beta_node.is_none() {
            return;
        }
        // Per-task partial sums of g·x̂ (for γ) and g (for β), then summed in task order.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = g
            .par_chunks(ROWS_PER_TASK * d.max(1))
            .zip(xhat.par_chunks(ROWS_PER_TASK * d.max(1)))
            .map(|(g, xhat)| {
                let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
                for (g, xhat) in g.chunks_exact(d).zip(xhat.chunks_exact(d)) {
                    for (((dg, db), &g), &xh) in dg.iter_mut().zip(db.iter_mut()).zip(g).zip(xhat) {
                        *dg += g * xh;
                        *db += g;
                    }
                }
                (dg, db)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
        for (dg, db) in &partials {
            dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
            dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dgamma, [1, d])));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dbeta, [1, d])));
        }
    }
}

with_avx512!(normalize_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, xhat: &mut [f32], inv_std: &mut [f32], y: &mut [f32]) = normalize_rows_body);
with_avx512!(input_grad_rows(g: &[f32], xhat: &[f32], inv_std: &[f32], gamma: &[f32], dx: &mut [f32]) = input_grad_rows_body);

/// `Σ term(i)` for `i < n`, with 16 partial sums (one AVX-512 register) so the loop vectorizes.
#[inline(always)]
fn lane_sum(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let blocks = n / LANES * LANES;
    for base in (0..blocks).step_by(LANES) {
        for (lane, acc) in acc.iter_mut().enumerate() {
            *acc += term(base + lane);
        }
    }
    acc.iter().sum::<f32>() + (blocks..n).map(term).sum::<f32>()
}

#[inline(always)]
fn normalize_rows_body(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    xhat: &mut [f32],
    inv_std: &mut [f32],
    y: &mut [f32],
) {
    let d = gamma.len();
    for (((x, xhat), y), s) in x.chunks_exact(d).zip(xhat.chunks_exact_mut(d)).zip(y.chunks_exact_mut(d)).zip(inv_std) {
        let mean = lane_sum(d, |i| x[i]) / d as f32;
        let var = lane_sum(d, |i| (x[i] - mean) * (x[i] - mean)) / d as f32;
        *s = 1.0 / (var + eps).sqrt();
        for ((((xh, y), &x), &g), &b) in xhat.iter_mut().zip(y.iter_mut()).zip(x).zip(gamma).zip(beta) {
            *xh = (x - mean) * *s;
            *y = *xh * g + b;
        }
    }
}

#[inline(always)]
fn input_grad_rows_body(g: &[f32], xhat: &[f32], inv_std: &[f32], gamma: &[f32], dx: &mut [f32]) {
    let d = gamma.len();
    for (((g, xhat), dx), &s) in g.chunks_exact(d).zip(xhat.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).zip(inv_std) {
        let mean_g = lane_sum(d, |i| g[i] * gamma[i]) / d as f32;
        let mean_gx = lane_sum(d, |i| g[i] * gamma[i] * xhat[i]) / d as f32;
        for (((dx, &g), &w), &xh) in dx.iter_mut().zip(g).zip(gamma).zip(xhat) {
            *dx = (g * w - mean_g - xh * mean_gx) * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The fused node's output and its gradients for x, γ and β equal burn's layer norm (to f32
    /// rounding), for rows that are and are not a multiple of the vector width.
    #[test]
    fn fused_layer_norm_and_its_gradients_match_burns() {
        let device = Device::flex().autodiff();
        for d in [37, 384] {
            let gamma = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &device).require_grad();
            let beta = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &device).require_grad();
            let x = Tensor::<3>::random([3, 70, d], Distribution::Normal(2.0, 3.0), &device).require_grad();
            let upstream = Tensor::<3>::random([3, 70, d], Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let y = if fused {
                    layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-12)
                } else {
                    burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-12)
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                (y, x.grad(&grads).unwrap(), gamma.grad(&grads).unwrap(), beta.grad(&grads).unwrap())
            };
            let ((y, dx, dg, db), (y0, dx0, dg0, db0)) = (run(true), run(false));
            assert!(max_abs_diff(y, y0) < 2e-5, "output, d = {d}");
            assert!(max_abs_diff(dx, dx0) < 2e-5, "dx, d = {d}");
            // Sums over 210 rows of values of order 1.
            assert!(max_abs_diff(dg, dg0) < 2e-4, "dγ, d = {d}");
            assert!(max_abs_diff(db, db0) < 2e-4, "dβ, d = {d}");
        }
    }

    /// With γ and β frozen only the input gets a gradient, and inference takes burn's fused op.
    #[test]
    fn frozen_parameters_get_no_gradient() {
        let device = Device::flex().autodiff();
        let gamma = Tensor::<1>::ones([16], &device);
        let beta = Tensor::<1>::zeros([16], &device);
        let x = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let grads = layer_norm(x.clone(), gamma.clone(), Some(beta), 1e-5).powi_scalar(2).sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(gamma.grad(&grads).is_none());
        let y = layer_norm(x.inner(), gamma.inner(), None, 1e-5);
        let mean: f32 = y.clone().mean_dim(1).abs().max().into_scalar();
        assert!(mean < 1e-5);
    }
}
