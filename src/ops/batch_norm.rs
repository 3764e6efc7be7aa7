//! BatchNorm over NCHW activations with its activation (none, ReLU, ReLU6) fused: two passes
//! forward (per-channel statistics, then `y = act(x·a + b)`), two backward (per-channel sums,
//! then the input gradient), straight on the NCHW buffer.
//!
//! burn's `batch_norm_train` computes the statistics through `swap_dims(0, 1)` + reshape, i.e. a
//! full copy of the activation for the mean, another for the variance, and two more in its
//! backward pass, plus a dozen elementwise ops; with the activation as separate ops the CNN's
//! BatchNorm + ReLU6 was ~30% of a MobileNetV2 training step (Fashion-MNIST 64×64, batch 64, 2
//! cores; `perf`, half of it in `copy_2d_tiled`). With batch statistics the gradient is PyTorch's
//! `dx = γ/σ · (g − mean(g) − x̂ · mean(g·x̂))` where `g` is the output gradient passed through the
//! activation (`lo < y < hi`, as `hardtanh_backward`); with running statistics (a frozen
//! BatchNorm, or evaluation) `dx = γ/σ · g`. γ and β get `Σ g·x̂` and `Σ g`.
//!
//! The node keeps the input (for `x̂`) and, when there is an activation, the output (its mask).
//! CPU backend, f32; elsewhere burn's ops compute the same thing. Reference test: values and
//! all three gradients equal burn's BatchNorm + clamp (`tests`, relative error ≤ 1e-4).

use crate::ops::buffer::for_overwrite;
use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor, is_host};
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

/// Which statistics normalise the input.
#[allow(clippy::large_enum_variant)] // one per call, moved once
pub enum Statistics {
    /// The batch's own (training): mean and biased variance over batch and pixels per channel.
    Batch,
    /// Stored running statistics `(mean, variance)`, `[channels]` each.
    Running(Tensor<1>, Tensor<1>),
}

/// The output and, with batch statistics, the batch's per-channel mean and biased variance
/// (detached), for the caller's running averages.
pub struct BatchNormOutput {
    pub output: Tensor<4>,
    pub batch_stats: Option<(Tensor<1>, Tensor<1>)>,
}

/// `clamp(γ · (x − mean) / √(var + eps) + β, lo, hi)` per channel of `x [n, c, h, w]`, where the
/// clamp is the activation: `(−∞, ∞)` none, `(0, ∞)` ReLU, `(0, 6)` ReLU6.
pub fn batch_norm(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    statistics: Statistics,
    eps: f64,
    (lo, hi): (f32, f32),
) -> BatchNormOutput {
    let device = x.device();
    if is_host(&device) && x.dtype() == DType::F32 {
        return host(x, gamma, beta, statistics, eps, (lo, hi));
    }
    let (y, batch_stats) = match statistics {
        Statistics::Batch => {
            let r = burn::tensor::module::batch_norm_train(x, gamma, beta, eps);
            (r.output, Some((r.mean.detach(), r.variance.detach())))
        }
        Statistics::Running(mean, var) => (burn::tensor::module::batch_norm(x, gamma, beta, mean, var, eps), None),
    };
    let output = match (lo.is_finite(), hi.is_finite()) {
        (false, false) => y,
        (true, false) => y.clamp_min(lo),
        (false, true) => y.clamp_max(hi),
        (true, true) => y.clamp(lo, hi),
    };
    BatchNormOutput { output, batch_stats }
}

/// A contiguous f32 host tensor's values.
fn values(t: &FlexTensor) -> &[f32] {
    assert!(t.is_contiguous(), "batch_norm: expected a contiguous tensor");
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

fn host_values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().expect("f32 values")
}

/// Per-channel constants of one pass.
#[derive(Debug, Clone)]
struct Channels {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

fn host(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    statistics: Statistics,
    eps: f64,
    clamp: (f32, f32),
) -> BatchNormOutput {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let (gamma_values, beta_values) = (host_values(gamma.clone()), host_values(beta.clone()));
    let autodiff = device.is_autodiff();
    let (x_node, x) = if autodiff {
        let x = host_autodiff_tensor(x);
        let node = Some(x.clone());
        (node, x.into_primitive().to_contiguous())
    } else {
        (None, host_tensor(x).to_contiguous())
    };
    let xs = values(&x);
    let plane = h * w;
    let (mean, var, batch) = match statistics {
        Statistics::Batch => {
            let (mean, var) = batch_statistics(xs, n, c, plane);
            (mean, var, true)
        }
        Statistics::Running(mean, var) => (host_values(mean), host_values(var), false),
    };
    let inv_std: Vec<f32> = var.iter().map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32).collect();
    let channels = Channels { mean: mean.clone(), inv_std, gamma: gamma_values };
    let y = for_overwrite(xs.len(), |y| {
        y.par_chunks_mut(plane.max(1)).zip(xs.par_chunks(plane.max(1))).enumerate().for_each(|(nc, (y, x))| {
            let ch = nc % c;
            let a = channels.gamma[ch] * channels.inv_std[ch];
            let b = beta_values[ch] - channels.mean[ch] * a;
            affine_clamp(x, a, b, clamp, y);
        })
    });
    let y = FlexTensor::from_data(TensorData::new(y, [n, c, h, w]));
    let batch_stats = batch.then(|| {
        let stats_device = device.clone();
        (
            Tensor::from_data(TensorData::new(mean, [c]), &stats_device),
            Tensor::from_data(TensorData::new(var, [c]), &stats_device),
        )
    });
    let output = match x_node {
        None => Tensor::from_primitive::<Flex>(y),
        Some(x_ad) => {
            let (gamma, beta) = (host_autodiff_tensor(gamma), host_autodiff_tensor(beta));
            let prep = BatchNormBackward
                .prepare::<NoCheckpointing>([x_ad.node(), gamma.node(), beta.node()])
                .compute_bound()
                .stateful();
            let activation = clamp.0.is_finite() || clamp.1.is_finite();
            let y: HostAutodiffTensor = match prep {
                OpsKind::Tracked(prep) => {
                    let state =
                        State { x, y: activation.then(|| y.clone()), channels, clamp, batch, dims: [n, c, h, w] };
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Tensor::from_primitive::<Autodiff<Flex>>(y)
        }
    };
    BatchNormOutput { output, batch_stats }
}

/// Per-channel mean and biased variance (two passes, f64 totals of f32 plane sums).
fn batch_statistics(x: &[f32], n: usize, c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let count = (n * plane).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(|img| &x[(img * c + ch) * plane..][..plane]);
            let mean = planes().map(|p| plane_sum(p) as f64).sum::<f64>() / count;
            let var = planes().map(|p| squared_deviations(p, mean as f32) as f64).sum::<f64>() / count;
            (mean as f32, var as f32)
        })
        .unzip()
}

/// Lanes of the partial sums: 16 f32 fill one AVX-512 register.
const LANES: usize = 16;

with_avx512!(plane_sum(x: &[f32]) -> f32 = plane_sum_body);
with_avx512!(squared_deviations(x: &[f32], mean: f32) -> f32 = squared_deviations_body);
with_avx512!(affine_clamp(x: &[f32], a: f32, b: f32, clamp: (f32, f32), y: &mut [f32]) = affine_clamp_body);
with_avx512!(gradient_sums(x: &[f32], y: Option<&[f32]>, dy: &[f32], mean: f32, clamp: (f32, f32)) -> (f32, f32) = gradient_sums_body);
#[rustfmt::skip]
with_avx512!(input_gradient(x: &[f32], y: Option<&[f32]>, dy: &[f32], k: [f32; 4], clamp: (f32, f32), dx: &mut [f32]) = input_gradient_body);

/// `Σ x`.
#[inline(always)]
fn plane_sum_body(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `Σ (x − mean)²`.
#[inline(always)]
fn squared_deviations_body(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            let d = chunk[l] - mean;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>()
}

#[inline(always)]
fn clamp_value(v: f32, (lo, hi): (f32, f32)) -> f32 {
    // Comparisons with NaN are false: NaN passes through.
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

#[inline(always)]
fn affine_clamp_body(x: &[f32], a: f32, b: f32, clamp: (f32, f32), y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = clamp_value(x * a + b, clamp);
    }
}

/// The output gradient passed through the activation: `dy` where `lo < y < hi`, else 0.
#[inline(always)]
fn through_activation(dy: f32, y: f32, (lo, hi): (f32, f32)) -> f32 {
    if y > lo && y < hi { dy } else { 0.0 }
}

/// `(Σ g, Σ g·(x − mean))` over one plane, `g` the gradient through the activation (`y` given)
/// or the output gradient itself.
#[inline(always)]
fn gradient_sums_body(x: &[f32], y: Option<&[f32]>, dy: &[f32], mean: f32, clamp: (f32, f32)) -> (f32, f32) {
    let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
    let (mut tg, mut tgx) = (0f32, 0f32);
    let (xc, dyc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xr, dyr) = (xc.remainder(), dyc.remainder());
    match y {
        Some(y) => {
            let yc = y.chunks_exact(LANES);
            let yr = yc.remainder();
            for ((x, dy), y) in xc.zip(dyc).zip(yc) {
                for l in 0..LANES {
                    let g = through_activation(dy[l], y[l], clamp);
                    sg[l] += g;
                    sgx[l] += g * (x[l] - mean);
                }
            }
            for ((&x, &dy), &y) in xr.iter().zip(dyr).zip(yr) {
                let g = through_activation(dy, y, clamp);
                tg += g;
                tgx += g * (x - mean);
            }
        }
        None => {
            for (x, dy) in xc.zip(dyc) {
                for l in 0..LANES {
                    sg[l] += dy[l];
                    sgx[l] += dy[l] * (x[l] - mean);
                }
            }
            for (&x, &dy) in xr.iter().zip(dyr) {
                tg += dy;
                tgx += dy * (x - mean);
            }
        }
    }
    (tg + sg.iter().sum::<f32>(), tgx + sgx.iter().sum::<f32>())
}

/// `dx = s·(g − m_g − (x − mean)·m_gx)` with `k = [s, m_g, m_gx, mean]`.
#[inline(always)]
fn input_gradient_body(x: &[f32], y: Option<&[f32]>, dy: &[f32], k: [f32; 4], clamp: (f32, f32), dx: &mut [f32]) {
    let [s, m_g, m_gx, mean] = k;
    match y {
        Some(y) => {
            for (((dx, &x), &dy), &y) in dx.iter_mut().zip(x).zip(dy).zip(y) {
                *dx = s * (through_activation(dy, y, clamp) - m_g - (x - mean) * m_gx);
            }
        }
        None => {
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                *dx = s * (dy - m_g - (x - mean) * m_gx);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    /// The output, when an activation clamps it (its mask).
    y: Option<FlexTensor>,
    channels: Channels,
    clamp: (f32, f32),
    /// Batch statistics (their gradient terms apply) or running ones.
    batch: bool,
    dims: [usize; 4],
}

/// The autodiff node of [`batch_norm`]; parents: input, γ, β.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let State { x, y, channels, clamp, batch, dims: [n, c, h, w] } = ops.state;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [x_node, gamma_node, beta_node] = ops.parents;
        let (xs, dys, ys) = (values(&x), values(&dy), y.as_ref().map(values));
        let plane = h * w;
        let at = |img: usize, ch: usize| (img * c + ch) * plane..(img * c + ch + 1) * plane;
        // Per channel: Σ g and Σ g·(x − mean).
        let (sum_g, sum_gx): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut tg, mut tgx) = (0f64, 0f64);
                for img in 0..n {
                    let r = at(img, ch);
                    let (g, gx) =
                        gradient_sums(&xs[r.clone()], ys.map(|y| &y[r.clone()]), &dys[r], channels.mean[ch], clamp);
                    tg += g as f64;
                    tgx += gx as f64;
                }
                (tg as f32, tgx as f32)
            })
            .unzip();
        if let Some(node) = x_node {
            let count = (n * plane).max(1) as f32;
            let dx = for_overwrite(xs.len(), |dx| {
                dx.par_chunks_mut(plane.max(1)).enumerate().for_each(|(nc, dx)| {
                    let (ch, r) = (nc % c, nc * plane..(nc + 1) * plane);
                    let inv_std = channels.inv_std[ch];
                    let k = if batch {
                        // mean(g·x̂)·inv_std multiplies (x − mean): x̂ = (x − mean)·inv_std.
                        [
                            channels.gamma[ch] * inv_std,
                            sum_g[ch] / count,
                            sum_gx[ch] / count * inv_std * inv_std,
                            channels.mean[ch],
                        ]
                    } else {
                        [channels.gamma[ch] * inv_std, 0.0, 0.0, channels.mean[ch]]
                    };
                    input_gradient(&xs[r.clone()], ys.map(|y| &y[r.clone()]), &dys[r], k, clamp, dx);
                })
            });
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [n, c, h, w])));
        }
        if let Some(node) = gamma_node {
            let d_gamma: Vec<f32> = sum_gx.iter().zip(&channels.inv_std).map(|(s, i)| s * i).collect();
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d_gamma, [c])));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(sum_g, [c])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale.max(1e-12)
    }

    /// Output, batch statistics and the gradients of the input, γ and β equal burn's BatchNorm
    /// followed by burn's clamp, with batch and with running statistics, for each activation.
    #[test]
    fn equals_burns_batch_norm_and_clamp() {
        let device = Device::flex().autodiff();
        for (lo, hi) in [(f32::NEG_INFINITY, f32::INFINITY), (0.0, f32::INFINITY), (0.0, 6.0)] {
            for batch in [true, false] {
                let x = Tensor::<4>::random([3, 5, 6, 7], Distribution::Normal(1.0, 3.0), &device).require_grad();
                let gamma = Tensor::<1>::random([5], Distribution::Normal(1.0, 0.5), &device).require_grad();
                let beta = Tensor::<1>::random([5], Distribution::Normal(0.5, 1.0), &device).require_grad();
                let running = || {
                    (
                        Tensor::<1>::from_floats([0.5, -1.0, 2.0, 0.0, 1.0], &device),
                        Tensor::<1>::from_floats([4.0, 0.25, 9.0, 1.0, 2.0], &device),
                    )
                };
                let statistics = if batch { Statistics::Batch } else { Statistics::Running(running().0, running().1) };
                let ours = batch_norm(x.clone(), gamma.clone(), beta.clone(), statistics, 1e-5, (lo, hi));
                let (reference, stats) = if batch {
                    let r = burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                    (r.output, Some((r.mean, r.variance)))
                } else {
                    let (m, v) = running();
                    (burn::tensor::module::batch_norm(x.clone(), gamma.clone(), beta.clone(), m, v, 1e-5), None)
                };
                let reference = match (lo.is_finite(), hi.is_finite()) {
                    (false, _) => reference,
                    (true, false) => reference.clamp_min(lo),
                    (true, true) => reference.clamp(lo, hi),
                };
                let case = format!("clamp ({lo}, {hi}), batch statistics {batch}");
                assert!(max_rel_err(ours.output.clone(), reference.clone()) < 1e-5, "{case}: output");
                match (ours.batch_stats, stats) {
                    (Some((m, v)), Some((rm, rv))) => {
                        assert!(max_rel_err(m, rm) < 1e-5 && max_rel_err(v, rv) < 1e-5, "{case}: statistics");
                    }
                    (None, None) => {}
                    _ => panic!("{case}: batch statistics returned when they should not be, or the reverse"),
                }
                let upstream = Tensor::<4>::random([3, 5, 6, 7], Distribution::Normal(0.0, 1.0), &device);
                let ga = (ours.output * upstream.clone()).sum().backward();
                let gb = (reference * upstream).sum().backward();
                let err = max_rel_err(x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
                assert!(err < 1e-4, "{case}: input gradient {err}");
                let err = max_rel_err(gamma.grad(&ga).unwrap(), gamma.grad(&gb).unwrap());
                assert!(err < 1e-4, "{case}: gamma gradient {err}");
                let err = max_rel_err(beta.grad(&ga).unwrap(), beta.grad(&gb).unwrap());
                assert!(err < 1e-4, "{case}: beta gradient {err}");
            }
        }
    }
}
