//! Pointwise (1×1) and depthwise (one k×k filter per channel) convolutions with backward passes
//! of their own: MobileNetV2 and EfficientNet-Lite are nothing else past their stem.
//!
//! burn's backward passes for these are the generic ones of its autodiff: the input gradient is a
//! transposed convolution (for a depthwise one its generic per-group path) and the weight gradient
//! a convolution over permuted copies of the input and the gradient. Measured on a MobileNetV2
//! training step (Fashion-MNIST 64×64, batch 64, 2 cores; `perf`): about 40% of the step in those
//! two, a third of it in layout copies (`copy_2d_tiled`). burn-flex's depthwise forward walks
//! each channel's plane row by row, which on this network's 8×8 to 2×2 maps was 18% of the step
//! after the backward passes were replaced. Here:
//!
//! - pointwise: `Y[n] = W · X[n]`, the input gradient `Wᵀ · dY[n]` and the weight gradient
//!   `Σₙ dY[n] · X[n]ᵀ` are GEMMs straight on the NCHW buffers (transposes are strides, no
//!   copies); small maps (fewer than [`PER_IMAGE_MIN_PIXELS`] pixels) are first laid out
//!   channel-major so that the batch is one product instead of 64 skinny ones (burn-flex's own
//!   forward runs one GEMM per image, with 4 columns on a 2×2 map);
//! - depthwise: forward, input gradient and weight gradient run channels-last (the input and the
//!   gradient are transposed to `[n, h, w, c]`, the result back): every tap is then a vector
//!   multiply-add over the channels, whatever the map's size.
//!
//! The node keeps only what its gradients need: the input when the weight trains, the weight when
//! the input needs a gradient (a frozen backbone's convolutions keep no input for a weight
//! gradient). Any other convolution (the 3×3 stem, grouped, dilated) and a GPU device take burn's
//! `conv2d`. Reference test: outputs and gradients equal burn's generic path (`tests` below,
//! relative error ≤ 1e-5).

use crate::ops::buffer::for_overwrite;
use crate::ops::device::{HostAutodiffTensor, host_autodiff_tensor, host_tensor, is_host};
use crate::ops::simd::with_avx512;
use crate::ops::transpose::transpose_batched;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::sync::Arc;

/// Below this many output pixels per channel, a pointwise gradient lays the batch out
/// channel-major and runs one GEMM (64 images of a 4×4 map are 64 products with k = 16 otherwise).
pub const PER_IMAGE_MIN_PIXELS: usize = 64;

/// `conv2d(x, weight)` without bias. On the CPU in f32, pointwise and depthwise convolutions take
/// this module's passes (with or without autodiff); everything else is burn's.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    let device = x.device();
    if is_host(&device) && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let kind = Kind::of(&x.dims(), &weight.dims(), &options);
        if device.is_autodiff()
            && let Some(kind) = kind
        {
            let y = forward_tracked(host_autodiff_tensor(x), host_autodiff_tensor(weight), options, kind);
            return Tensor::from_primitive::<Autodiff<Flex>>(y);
        }
        if let Some(kind) = kind {
            let (x, weight) = (host_tensor(x).to_contiguous(), host_tensor(weight).to_contiguous());
            let g = Geometry::new(dims(&x), dims(&weight), &options);
            let y = match kind {
                Kind::Pointwise => pointwise_forward(values(&x), values(&weight), &g),
                Kind::Depthwise => {
                    depthwise_forward(&channels_last(values(&x), &g, false), &taps_major(&weight, &g), &g)
                }
            };
            return Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(
                y,
                [g.n, g.c_out, g.ho, g.wo],
            )));
        }
    }
    burn::tensor::module::conv2d(x, weight, None, options)
}

/// The convolutions this module differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1×1, stride 1, no padding, one group.
    Pointwise,
    /// One filter per channel (`groups = c_in = c_out`), any size, stride and padding.
    Depthwise,
}

impl Kind {
    fn of(x: &[usize; 4], w: &[usize; 4], options: &ConvOptions<2>) -> Option<Self> {
        if options.dilation != [1, 1] {
            return None;
        }
        let pointwise = w[2] == 1
            && w[3] == 1
            && options.stride == [1, 1]
            && options.padding == [(0, 0), (0, 0)]
            && options.groups == 1
            && w[1] == x[1];
        let depthwise = options.groups == x[1] && w[0] == x[1] && w[1] == 1 && x[1] > 1;
        if pointwise {
            Some(Self::Pointwise)
        } else if depthwise {
            Some(Self::Depthwise)
        } else {
            None
        }
    }
}

/// Sizes of one convolution: input `[n, c_in, h, w]`, output `[n, c_out, ho, wo]`, kernel
/// `[kh, kw]`, stride, and the padding before the first row and column.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Geometry {
    fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
        let [n, c_in, h, w] = x;
        let [c_out, _, kh, kw] = weight;
        let [(pt, pb), (pl, pr)] = options.padding;
        let [sh, sw] = options.stride;
        Self {
            n,
            c_in,
            c_out,
            h,
            w,
            ho: (h + pt + pb - kh) / sh + 1,
            wo: (w + pl + pr - kw) / sw + 1,
            kh,
            kw,
            sh,
            sw,
            pad_top: pt,
            pad_left: pl,
        }
    }

    /// The input row read by output row `oh` at tap `i`, if inside the image.
    fn input_row(&self, oh: usize, i: usize) -> Option<usize> {
        (oh * self.sh + i).checked_sub(self.pad_top).filter(|&r| r < self.h)
    }
}

fn forward_tracked(
    x: HostAutodiffTensor,
    weight: HostAutodiffTensor,
    options: ConvOptions<2>,
    kind: Kind,
) -> HostAutodiffTensor {
    let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
    let prep = Conv2dBackward.prepare::<NoCheckpointing>([x.node(), weight.node()]).compute_bound().stateful();
    let (x, weight) = (x.into_primitive(), weight.into_primitive());
    let g = Geometry::new(dims(&x), dims(&weight), &options);
    let (y, saved) = match kind {
        Kind::Pointwise => {
            let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
            let y = pointwise_forward(values(&x), values(&weight), &g);
            let y = FlexTensor::from_data(TensorData::new(y, [g.n, g.c_out, g.ho, g.wo]));
            (y, Saved::Pointwise { x: weight_tracked.then_some(x), weight: x_tracked.then_some(weight) })
        }
        Kind::Depthwise => {
            let x = Arc::new(channels_last(values(&x.to_contiguous()), &g, false));
            let w = Arc::new(taps_major(&weight, &g));
            let y = depthwise_forward(&x, &w, &g);
            let y = FlexTensor::from_data(TensorData::new(y, [g.n, g.c_out, g.ho, g.wo]));
            (y, Saved::Depthwise { x: weight_tracked.then_some(x), weight: x_tracked.then_some(w) })
        }
    };
    match prep {
        OpsKind::Tracked(prep) => prep.finish(State { saved, geometry: g }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

fn dims(t: &FlexTensor) -> [usize; 4] {
    let shape = t.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// A contiguous f32 tensor's values.
fn values(t: &FlexTensor) -> &[f32] {
    assert!(t.is_contiguous(), "conv2d: expected a contiguous tensor");
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// What the backward pass needs, per kind.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per node
enum Saved {
    /// The NCHW input (kept when the weight trains) and the weight (when the input needs a gradient).
    Pointwise { x: Option<FlexTensor>, weight: Option<FlexTensor> },
    /// The input channels-last `[n, h, w, c]` and the weight taps-major `[kh·kw, c]`, likewise.
    Depthwise { x: Option<Arc<Vec<f32>>>, weight: Option<Arc<Vec<f32>>> },
}

#[derive(Debug, Clone)]
struct State {
    saved: Saved,
    geometry: Geometry,
}

/// The autodiff node of [`conv2d`].
#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 2> for Conv2dBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let State { saved, geometry: g } = ops.state;
        let [x_node, weight_node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let dy = values(&dy);
        let (dx, dw, weight_shape) = match saved {
            Saved::Pointwise { x, weight } => {
                let dx = x_node.as_ref().map(|_| {
                    let weight = weight.expect("weight kept for the input gradient").to_contiguous();
                    pointwise_input_grad(dy, values(&weight), &g)
                });
                let dw = weight_node.as_ref().map(|_| {
                    let x = x.expect("input kept for the weight gradient").to_contiguous();
                    pointwise_weight_grad(dy, values(&x), &g)
                });
                (dx, dw, [g.c_out, g.c_in, 1, 1])
            }
            Saved::Depthwise { x, weight } => {
                let dy = channels_last(dy, &g, true);
                let dx = x_node.as_ref().map(|_| {
                    let weight = weight.expect("weight kept for the input gradient");
                    channels_first(&depthwise_input_grad(&dy, &weight, &g), g.n, g.c_in, g.h * g.w)
                });
                let dw = weight_node.as_ref().map(|_| {
                    let x = x.expect("input kept for the weight gradient");
                    // [kh·kw, c] → [c, kh·kw]
                    transpose_batched(&depthwise_weight_grad(&dy, &x, &g), 1, g.kh * g.kw, g.c_out)
                });
                (dx, dw, [g.c_out, 1, g.kh, g.kw])
            }
        };
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [g.n, g.c_in, g.h, g.w])));
        }
        if let (Some(node), Some(dw)) = (weight_node, dw) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, weight_shape)));
        }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, each given by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) {
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(m * n == 0 || last(dst_strides, m, n) < dst.len(), "gemm: destination too small");
    assert!(m * k == 0 || last(lhs_strides, m, k) < lhs.len(), "gemm: lhs too small");
    assert!(k * n == 0 || last(rhs_strides, k, n) < rhs.len(), "gemm: rhs too small");
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every element addressed by the strides lies inside its slice (asserted above), and
    // `dst` does not alias the operands (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides.1 as isize,
            dst_strides.0 as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `[n, c, p] → [c, n·p]`.
fn channel_major(t: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    for_overwrite(t.len(), |out| {
        out.par_chunks_mut((n * p).max(1)).enumerate().for_each(|(ch, row)| {
            for (img, dst) in row.chunks_exact_mut(p.max(1)).enumerate() {
                dst.copy_from_slice(&t[(img * c + ch) * p..][..dst.len()]);
            }
        })
    })
}

/// `[c, n·p] → [n, c, p]`.
fn image_major(t: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    for_overwrite(t.len(), |out| {
        out.par_chunks_mut((c * p).max(1)).enumerate().for_each(|(img, image)| {
            for (ch, dst) in image.chunks_exact_mut(p.max(1)).enumerate() {
                dst.copy_from_slice(&t[(ch * n + img) * p..][..dst.len()]);
            }
        })
    })
}

/// `Y[n] = W · X[n]` with `W [c_out, c_in]`.
fn pointwise_forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (n, ci, co, p) = (g.n, g.c_in, g.c_out, g.h * g.w);
    if n * co * p == 0 {
        return Vec::new();
    }
    if ci == 0 {
        return vec![0f32; n * co * p];
    }
    if p >= PER_IMAGE_MIN_PIXELS {
        return for_overwrite(n * co * p, |y| {
            if n < rayon::current_num_threads() {
                // Fewer images than threads (predicting one image): each product in parallel.
                for (y, x) in y.chunks_mut(co * p).zip(x.chunks(ci * p)) {
                    gemm((co, p, ci), y, (p, 1), false, w, (ci, 1), x, (p, 1), true);
                }
            } else {
                y.par_chunks_mut(co * p).zip(x.par_chunks(ci * p)).for_each(|(y, x)| {
                    gemm((co, p, ci), y, (p, 1), false, w, (ci, 1), x, (p, 1), false);
                });
            }
        });
    }
    let x = channel_major(x, n, ci, p);
    let y =
        for_overwrite(n * co * p, |y| gemm((co, n * p, ci), y, (n * p, 1), false, w, (ci, 1), &x, (n * p, 1), true));
    image_major(&y, n, co, p)
}

/// `dX[n] = Wᵀ · dY[n]` with `W [c_out, c_in]`.
fn pointwise_input_grad(dy: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (n, ci, co, p) = (g.n, g.c_in, g.c_out, g.h * g.w);
    let w_t = (1, ci); // Wᵀ [ci, co]: element (i, o) at o·ci + i
    if p >= PER_IMAGE_MIN_PIXELS {
        return for_overwrite(n * ci * p, |dx| {
            dx.par_chunks_mut(ci * p).zip(dy.par_chunks(co * p)).for_each(|(dx, dy)| {
                gemm((ci, p, co), dx, (p, 1), false, w, w_t, dy, (p, 1), false);
            })
        });
    }
    let dy = channel_major(dy, n, co, p);
    let dx =
        for_overwrite(n * ci * p, |dx| gemm((ci, n * p, co), dx, (n * p, 1), false, w, w_t, &dy, (n * p, 1), true));
    image_major(&dx, n, ci, p)
}

/// `dW = Σₙ dY[n] · X[n]ᵀ`, `[c_out, c_in]`.
fn pointwise_weight_grad(dy: &[f32], x: &[f32], g: &Geometry) -> Vec<f32> {
    let (n, ci, co, p) = (g.n, g.c_in, g.c_out, g.h * g.w);
    if p < PER_IMAGE_MIN_PIXELS {
        let (dy, x) = (channel_major(dy, n, co, p), channel_major(x, n, ci, p));
        let mut dw = vec![0f32; co * ci];
        gemm((co, ci, n * p), &mut dw, (ci, 1), false, &dy, (n * p, 1), &x, (1, n * p), true);
        return dw;
    }
    // One partial sum per thread over a contiguous run of images, then their sum.
    let threads = rayon::current_num_threads().clamp(1, n.max(1));
    let per_task = n.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..n.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let mut dw = vec![0f32; co * ci];
            for (i, img) in (task * per_task..((task + 1) * per_task).min(n)).enumerate() {
                let (dy, x) = (&dy[img * co * p..][..co * p], &x[img * ci * p..][..ci * p]);
                // X[n]ᵀ [p, ci]: element (q, i) at i·p + q.
                gemm((co, ci, p), &mut dw, (ci, 1), i > 0, dy, (p, 1), x, (1, p), false);
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0f32; co * ci]);
    for part in partials {
        dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    dw
}

/// `[n, c, p] → [n, p, c]` of the input (`output` false) or of an output-sized gradient.
fn channels_last(t: &[f32], g: &Geometry, output: bool) -> Vec<f32> {
    let (c, p) = if output { (g.c_out, g.ho * g.wo) } else { (g.c_in, g.h * g.w) };
    transpose_batched(t, g.n, c, p)
}

/// `[n, p, c] → [n, c, p]`.
fn channels_first(t: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    transpose_batched(t, n, p, c)
}

/// A depthwise weight `[c, 1, kh, kw]` as `[kh·kw, c]`.
fn taps_major(weight: &FlexTensor, g: &Geometry) -> Vec<f32> {
    let weight = weight.to_contiguous();
    transpose_batched(values(&weight), 1, g.c_out, g.kh * g.kw)
}

/// The taps `(i, j)` and input pixel each output pixel `(oh, ow)` reads, inside the image.
#[inline(always)]
fn for_each_tap(g: &Geometry, oh: usize, ow: usize, mut f: impl FnMut(usize, usize)) {
    for i in 0..g.kh {
        let Some(row) = g.input_row(oh, i) else { continue };
        for j in 0..g.kw {
            let Some(col) = (ow * g.sw + j).checked_sub(g.pad_left).filter(|&c| c < g.w) else { continue };
            f(i * g.kw + j, row * g.w + col);
        }
    }
}

/// Depthwise forward, channels-last input `[n, h, w, c]` and weight `[kh·kw, c]`, NCHW output.
fn depthwise_forward(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (c, plane, out_plane) = (g.c_in, g.h * g.w, g.ho * g.wo);
    let mut y = vec![0f32; g.n * out_plane * c];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(out_plane * c).enumerate().for_each(|(img, y)| {
        depthwise_forward_image(&x[img * plane * c..][..plane * c], w, g, y);
    });
    channels_first(&y, g.n, c, out_plane)
}

with_avx512!(depthwise_forward_image(x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]) = depthwise_forward_image_body);

#[inline(always)]
fn depthwise_forward_image_body(x: &[f32], w: &[f32], g: &Geometry, y: &mut [f32]) {
    let c = g.c_in;
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let out = &mut y[(oh * g.wo + ow) * c..][..c];
            for_each_tap(g, oh, ow, |tap, pixel| {
                let (wv, xv) = (&w[tap * c..][..c], &x[pixel * c..][..c]);
                for k in 0..c {
                    out[k] += wv[k] * xv[k];
                }
            });
        }
    }
}

/// Depthwise input gradient, channels-last: `dy [n, ho, wo, c]` → `dx [n, h, w, c]`.
fn depthwise_input_grad(dy: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let (c, plane, out_plane) = (g.c_in, g.h * g.w, g.ho * g.wo);
    let mut dx = vec![0f32; g.n * plane * c];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(plane * c).enumerate().for_each(|(img, dx)| {
        depthwise_input_grad_image(&dy[img * out_plane * c..][..out_plane * c], w, g, dx);
    });
    dx
}

with_avx512!(depthwise_input_grad_image(dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]) = depthwise_input_grad_image_body);

#[inline(always)]
fn depthwise_input_grad_image_body(dy: &[f32], w: &[f32], g: &Geometry, dx: &mut [f32]) {
    let c = g.c_in;
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let gv = &dy[(oh * g.wo + ow) * c..][..c];
            for_each_tap(g, oh, ow, |tap, pixel| {
                let (wv, d) = (&w[tap * c..][..c], &mut dx[pixel * c..][..c]);
                for k in 0..c {
                    d[k] += wv[k] * gv[k];
                }
            });
        }
    }
}

/// Depthwise weight gradient `[kh·kw, c]` from channels-last `dy` and `x`: one partial sum per
/// thread over a run of images, then their sum.
fn depthwise_weight_grad(dy: &[f32], x: &[f32], g: &Geometry) -> Vec<f32> {
    let (c, plane, out_plane, taps) = (g.c_in, g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let n = g.n;
    let threads = rayon::current_num_threads().clamp(1, n.max(1));
    let per_task = n.div_ceil(threads).max(1);
    let partials: Vec<Vec<f32>> = (0..n.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let mut dw = vec![0f32; taps * c];
            for img in task * per_task..((task + 1) * per_task).min(n) {
                depthwise_weight_grad_image(
                    &dy[img * out_plane * c..][..out_plane * c],
                    &x[img * plane * c..][..plane * c],
                    g,
                    &mut dw,
                );
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0f32; taps * c]);
    for part in partials {
        dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    dw
}

with_avx512!(depthwise_weight_grad_image(dy: &[f32], x: &[f32], g: &Geometry, dw: &mut [f32]) = depthwise_weight_grad_image_body);

#[inline(always)]
fn depthwise_weight_grad_image_body(dy: &[f32], x: &[f32], g: &Geometry, dw: &mut [f32]) {
    let c = g.c_in;
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let gv = &dy[(oh * g.wo + ow) * c..][..c];
            for_each_tap(g, oh, ow, |tap, pixel| {
                let (d, xv) = (&mut dw[tap * c..][..c], &x[pixel * c..][..c]);
                for k in 0..c {
                    d[k] += gv[k] * xv[k];
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_rel_err(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale.max(1e-12)
    }

    /// Output, input gradient and weight gradient equal burn's generic convolution (forward and
    /// backward through burn's autodiff) for pointwise convolutions on large and small maps and
    /// depthwise ones with every stride, kernel and padding the CNNs here use (TF "SAME"'s
    /// asymmetric padding included).
    #[test]
    fn gradients_equal_burns_generic_convolution() {
        let device = Device::flex().autodiff();
        // (x dims, weight dims, stride, padding ((top, bottom), (left, right)), groups)
        type Case = ([usize; 4], [usize; 4], usize, [(usize, usize); 2], usize);
        let cases: [Case; 7] = [
            ([3, 8, 9, 10], [12, 8, 1, 1], 1, [(0, 0), (0, 0)], 1),
            ([5, 16, 3, 3], [8, 16, 1, 1], 1, [(0, 0), (0, 0)], 1),
            ([2, 6, 9, 11], [6, 1, 3, 3], 1, [(1, 1), (1, 1)], 6),
            ([2, 6, 9, 11], [6, 1, 3, 3], 2, [(1, 1), (1, 1)], 6),
            ([2, 4, 8, 8], [4, 1, 5, 5], 2, [(1, 2), (1, 2)], 4),
            ([2, 4, 7, 6], [4, 1, 5, 5], 1, [(2, 2), (2, 2)], 4),
            ([1, 3, 2, 2], [3, 1, 3, 3], 2, [(0, 1), (0, 1)], 3),
        ];
        for (x_dims, w_dims, stride, padding, groups) in cases {
            let x = Tensor::<4>::random(x_dims, Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<4>::random(w_dims, Distribution::Normal(0.0, 1.0), &device).require_grad();
            let options = ConvOptions::new_with_padding([stride, stride], padding, [1, 1], groups);
            assert!(Kind::of(&x_dims, &w_dims, &options).is_some(), "{x_dims:?} {w_dims:?} takes the fast path");
            let ours = conv2d(x.clone(), w.clone(), options.clone());
            let reference = burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone());
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_rel_err(ours.clone(), reference.clone()) < 1e-6);
            // Without autodiff (evaluation) the depthwise forward is ours too.
            let plain = conv2d(x.clone().inner(), w.clone().inner(), options.clone());
            assert!(max_rel_err(plain, reference.clone().inner()) < 1e-6);
            // A non-uniform upstream gradient: the loss weighs every output differently.
            let upstream = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let (g_ours, g_ref) = ((ours * upstream.clone()).sum().backward(), (reference * upstream).sum().backward());
            for (t, name) in [(&x, "input"), (&w, "weight")] {
                let (a, b) = (t.grad(&g_ours).expect(name), t.grad(&g_ref).expect(name));
                let err = max_rel_err(a, b);
                assert!(err < 1e-5, "{x_dims:?} {w_dims:?} stride {stride}: {name} gradient relative error {err}");
            }
        }
    }

    /// A frozen weight gets no gradient and the input still gets its own; a frozen input (the
    /// first layer's images) the same the other way round.
    #[test]
    fn only_tracked_operands_get_gradients() {
        let device = Device::flex().autodiff();
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let x = Tensor::<4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([3, 4, 1, 1], Distribution::Normal(0.0, 1.0), &device);
        let grads = conv2d(x.clone().require_grad(), w.clone(), options.clone()).sum().backward();
        assert!(w.grad(&grads).is_none());
        let xg = x.clone().require_grad();
        let grads = conv2d(xg.clone(), w.clone(), options.clone()).sum().backward();
        assert!(xg.grad(&grads).is_some());
        let wg = w.require_grad();
        let grads = conv2d(x.clone(), wg.clone(), options).sum().backward();
        assert!(wg.grad(&grads).is_some() && x.grad(&grads).is_none());
    }
}
