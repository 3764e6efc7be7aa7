//! Next-token cross-entropy fused with a tied output projection, `mean_r(logsumexp(h_r·Wᵀ) −
//! h_r·W_{t_r})`, that never holds the whole `[rows, vocab]` logits.
//!
//! Through burn's ops the loss of a causal-LM step keeps the logits of every target position,
//! their log-softmax and the gradients of both alive at once: on Gemma 3 270M (262,144-word
//! vocabulary) about 1,000 targets per batch of 8 × 256 is 1 GB per copy, several copies,
//! the largest share of the run's 12.3 GB peak (docs/BENCHMARKS.md). Here the forward pass
//! computes the logits `CHUNK` rows at a time and keeps only each row's log-sum-exp; the
//! backward pass computes each chunk's logits again (one more product with the head, ~+⅓ of
//! the head's compute) and turns them into `dlogits = (softmax − onehot) · g / rows` in place,
//! then `dh = dlogits · W` and, when the table trains (full fine-tuning), `dW += dlogitsᵀ · h`.
//! Peak memory of the loss: one chunk's logits (CHUNK × vocab f32, 256 MB at 262k words).
//!
//! The fused path runs on the CPU backend for f32 tensors in f32 runs; elsewhere (a GPU device,
//! bf16 autocast, an untied or soft-capped head) callers use the composed ops
//! (`training::trainer::cross_entropy` over the full logits).

use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor};
use crate::ops::simd::with_avx512;
use crate::ops::simd_math::exp_f32;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// Rows whose logits exist at once.
const CHUNK: usize = 256;

/// Whether [`tied_head_cross_entropy`] takes the fused path for these tensors: f32 on the CPU
/// in an f32 run (bf16 autocast keeps the composed ops, whose product is bf16).
pub fn supports(hidden: &Tensor<2>, table: &Tensor<2>) -> bool {
    crate::ops::device::is_host(&hidden.device())
        && hidden.dtype() == DType::F32
        && table.dtype() == DType::F32
        && crate::ops::context::precision() == crate::ops::context::Precision::F32
}

/// The mean cross-entropy of `targets` under `softmax(hidden · tableᵀ)` (`hidden [rows, h]`,
/// `table [vocab, h]`: a tied embedding), and each row's most likely token. Callers check
/// [`supports`] first.
pub fn tied_head_cross_entropy(hidden: Tensor<2>, table: Tensor<2>, targets: &[usize]) -> (Tensor<1>, Vec<usize>) {
    assert_eq!(hidden.dims()[0], targets.len(), "head loss: one target per row");
    if hidden.device().is_autodiff() {
        let (y, argmax) = forward_tracked(host_autodiff_tensor(hidden), host_autodiff_tensor(table), targets);
        return (Tensor::from_primitive::<Autodiff<Flex>>(y), argmax);
    }
    let (h, w) = (host_tensor(hidden), host_tensor(table));
    let (loss, _, argmax) = forward(&h, &w, targets);
    (Tensor::from_primitive::<Flex>(scalar(loss)), argmax)
}

fn scalar(v: f32) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(vec![v], [1]))
}

fn flex(t: &FlexTensor) -> Tensor<2> {
    Tensor::from_primitive::<Flex>(t.clone())
}

/// The logits of rows `rows` of `h`: `h[rows] · wᵀ` as a contiguous `[rows, vocab]` tensor.
fn logits(h: &FlexTensor, w: &FlexTensor, rows: std::ops::Range<usize>) -> FlexTensor {
    host_tensor(flex(h).slice(s![rows, ..]).matmul(flex(w).transpose())).to_contiguous()
}

/// The mean loss, each row's log-sum-exp and its argmax.
fn forward(h: &FlexTensor, w: &FlexTensor, targets: &[usize]) -> (f32, Vec<f32>, Vec<usize>) {
    let n = targets.len();
    let mut lse = vec![0f32; n];
    let mut argmax = vec![0usize; n];
    let mut total = 0f64;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let l = logits(h, w, start..end);
        let l: &[f32] = l.storage();
        let vocab = l.len() / (end - start);
        let rows: Vec<(f32, usize, f32)> = l
            .par_chunks(vocab)
            .zip(&targets[start..end])
            .map(|(row, &t)| {
                let (m, arg) = max_arg(row);
                let lse = m + sum_exp(row, m).ln();
                (lse, arg, lse - row[t])
            })
            .collect();
        for (i, (s, a, loss)) in rows.into_iter().enumerate() {
            lse[start + i] = s;
            argmax[start + i] = a;
            total += loss as f64;
        }
    }
    ((total / n.max(1) as f64) as f32, lse, argmax)
}

fn max_arg(row: &[f32]) -> (f32, usize) {
    row.iter().enumerate().fold((f32::NEG_INFINITY, 0), |(m, a), (i, &v)| if v > m { (v, i) } else { (m, a) })
}

/// Lanes of the partial sums: 16 f32 fill one AVX-512 register.
const LANES: usize = 16;

with_avx512!(sum_exp(row: &[f32], max: f32) -> f32 = sum_exp_body);
with_avx512!(softmax_minus_onehot(row: &mut [f32], lse: f32, target: usize, scale: f32) = softmax_minus_onehot_body);

#[inline(always)]
fn sum_exp_body(row: &[f32], max: f32) -> f32 {
    let mut sum = [0f32; LANES];
    let (blocks, rest) = row.as_chunks::<LANES>();
    for block in blocks {
        for (acc, &v) in sum.iter_mut().zip(block) {
            *acc += exp_f32(v - max);
        }
    }
    sum.iter().sum::<f32>() + rest.iter().map(|&v| exp_f32(v - max)).sum::<f32>()
}

/// `row ← (softmax(row) − onehot(target)) · scale`, with `softmax = exp(row − lse)`.
#[inline(always)]
fn softmax_minus_onehot_body(row: &mut [f32], lse: f32, target: usize, scale: f32) {
    row.iter_mut().for_each(|v| *v = exp_f32(*v - lse) * scale);
    row[target] -= scale;
}

fn forward_tracked(
    h: HostAutodiffTensor,
    w: HostAutodiffTensor,
    targets: &[usize],
) -> (HostAutodiffTensor, Vec<usize>) {
    let prep = TiedHeadLoss.prepare::<NoCheckpointing>([h.node(), w.node()]).compute_bound().stateful();
    let (h, w) = (h.into_primitive(), w.into_primitive());
    let (loss, lse, argmax) = forward(&h, &w, targets);
    let y = scalar(loss);
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish(State { h, w, lse, targets: targets.to_vec() }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (out, argmax)
}

/// What the backward pass needs: the operands (shared buffers), each row's log-sum-exp and target.
#[derive(Debug, Clone)]
struct State {
    h: FlexTensor,
    w: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<usize>,
}

#[derive(Debug)]
struct TiedHeadLoss;

impl Backward<Flex, 2> for TiedHeadLoss {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [h_node, w_node] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let (dh, dw) = gradients(&ops.state, h_node.is_some(), w_node.is_some(), g);
        if let (Some(node), Some(dh)) = (h_node, dh) {
            grads.register::<Flex>(node.id, dh);
        }
        if let (Some(node), Some(dw)) = (w_node, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// `(dh, dW)` for upstream gradient `g` (a scalar), each only when asked for.
fn gradients(s: &State, want_h: bool, want_w: bool, g: FlexTensor) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let g: &[f32] = g.storage();
    let n = s.targets.len();
    let scale = g[0] / n.max(1) as f32;
    let mut dh_chunks = Vec::new();
    let mut dw: Option<Tensor<2>> = None;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let l = logits(&s.h, &s.w, start..end);
        let shape = l.layout().shape().clone();
        let mut d: Vec<f32> = l.storage::<f32>().to_vec();
        drop(l);
        let vocab = d.len() / (end - start);
        d.par_chunks_mut(vocab).enumerate().for_each(|(i, row)| {
            softmax_minus_onehot(row, s.lse[start + i], s.targets[start + i], scale);
        });
        let d = Tensor::<2>::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(d, shape)));
        if want_h {
            dh_chunks.push(d.clone().matmul(flex(&s.w)));
        }
        if want_w {
            let part = d.transpose().matmul(flex(&s.h).slice(s![start..end, ..]));
            dw = Some(match dw {
                Some(acc) => acc + part,
                None => part,
            });
        }
    }
    let dh = want_h.then(|| host_tensor(Tensor::cat(dh_chunks, 0)));
    (dh, dw.map(host_tensor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Loss, argmax and both gradients against burn's composed ops (full logits, log-softmax,
    /// gather) on more rows than a chunk; with the table trained and frozen.
    #[test]
    fn fused_loss_and_gradients_match_the_composed_ops() {
        let device = Device::flex().autodiff();
        let (n, h, vocab) = (CHUNK + 37, 24, 301);
        let targets: Vec<usize> = (0..n).map(|i| (i * 7919) % vocab).collect();
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        for table_trains in [true, false] {
            let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let mut table = Tensor::<2>::random([vocab, h], Distribution::Normal(0.0, 0.5), &device);
            if table_trains {
                table = table.require_grad();
            }
            let (loss, argmax) = tied_head_cross_entropy(hidden.clone(), table.clone(), &targets);
            let logits = hidden.clone().matmul(table.clone().transpose());
            let want_arg: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_into_vec().unwrap();
            assert_eq!(argmax.iter().map(|&a| a as i64).collect::<Vec<_>>(), want_arg);
            let want =
                burn::tensor::activation::log_softmax(logits, 1).gather(1, y.clone().reshape([n, 1])).neg().mean();
            let (l, w): (f32, f32) = (loss.clone().into_scalar(), want.clone().into_scalar());
            assert!((l - w).abs() < 1e-5 * w.abs().max(1.0), "loss {l} vs {w}");
            let g1 = loss.mul_scalar(3.0).backward();
            let g2 = want.mul_scalar(3.0).backward();
            let diff = |a: Tensor<2>, b: Tensor<2>| -> f32 { (a - b).abs().max().into_scalar() };
            let (dh1, dh2) = (hidden.grad(&g1).unwrap(), hidden.grad(&g2).unwrap());
            assert!(diff(dh1, dh2) < 1e-6, "dh");
            if table_trains {
                let (dw1, dw2) = (table.grad(&g1).unwrap(), table.grad(&g2).unwrap());
                assert!(diff(dw1, dw2) < 1e-6, "dW");
            } else {
                assert!(table.grad(&g1).is_none(), "a frozen table gets no gradient");
            }
        }
    }
}
