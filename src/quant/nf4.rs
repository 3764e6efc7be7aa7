//! 4-bit NormalFloat (NF4) and FP4 blockwise quantization with double quantization, reproducing
//! bitsandbytes (`bitsandbytes.functional.quantize_4bit` / `dequantize_4bit`, CPU) bit for bit:
//!
//! - values are taken in PyTorch's row-major `[out, in]` order, split into blocks of `blocksize`
//!   (64 by default); each block is scaled by its absolute maximum;
//! - each scaled value gets the index of its nearest code value (ties to the lower one, as
//!   `torch.bucketize` against the midpoints does), two indices per byte, the first in the high
//!   nibble;
//! - double quantization stores the block maxima as 8-bit codes: their mean is subtracted
//!   (`offset`) and the rest is quantized blockwise (blocks of 256) against bitsandbytes' signed
//!   dynamic map, each block with its own f32 absmax.
//!
//! Memory per quantized parameter: 4 bits + 32/64 (absmax) = 4.5 bits, or with double
//! quantization 4 + 8/64 + 32/(64·256) ≈ 4.127 bits.

use rayon::prelude::*;

/// bitsandbytes' NF4 code (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [-1, 1].
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' FP4 code (`get_4bit_type("fp4")`, E2M1 with its own bias), by 4-bit index.
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.005_208_333_3,
    0.666_666_7,
    1.0,
    0.333_333_34,
    0.5,
    0.166_666_67,
    0.25,
    0.0,
    -0.005_208_333_3,
    -0.666_666_7,
    -1.0,
    -0.333_333_34,
    -0.5,
    -0.166_666_67,
    -0.25,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            Self::Nf4 => &NF4_CODE,
            Self::Fp4 => &FP4_CODE,
        }
    }
}

/// bitsandbytes' `create_dynamic_map(signed=True)`: 256 values, 7 exponent bits, sorted.
pub fn dynamic_map_signed() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    let max_exponent_bits = 7i32;
    for i in 0..max_exponent_bits {
        let items = (1usize << i) + 1;
        let bounds = linspace_f32(0.1, 1.0, items);
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("256 values")
}

/// `torch.linspace(start, end, steps, dtype=float32)` exactly: the first half steps up from
/// `start`, the second half steps down from `end`, each value one fused multiply-add (as the
/// vectorised CPU kernel computes it).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// Block maxima, plain or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    F32(Vec<f32>),
    /// 8-bit codes of `absmax - offset`, quantized in blocks of `blocksize` against the dynamic map
    /// with one f32 maximum per block (`absmax2`).
    Double {
        codes: Vec<u8>,
        absmax2: Vec<f32>,
        offset: f32,
        blocksize: usize,
    },
}

impl Absmax {
    /// The block maxima as f32 (decoding the double quantization).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::Double { codes, absmax2, offset, blocksize } => {
                let map = dynamic_map_signed();
                codes.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax2[i / blocksize] + offset).collect()
            }
        }
    }

    /// Bytes this representation occupies.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => 4 * v.len(),
            Self::Double { codes, absmax2, .. } => codes.len() + 4 * absmax2.len() + 4,
        }
    }
}

/// A matrix quantized to 4 bits, in PyTorch's `[out, in]` row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized4bit {
    pub quant_type: QuantType,
    /// `[rows, cols]` of the PyTorch-layout matrix.
    pub shape: [usize; 2],
    pub blocksize: usize,
    /// Two 4-bit indices per byte, the first in the high nibble.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl Quantized4bit {
    /// Quantize `values` (`shape`, row-major) like `quantize_4bit(..., compress_statistics=double)`.
    pub fn quantize(values: &[f32], shape: [usize; 2], quant_type: QuantType, blocksize: usize, double: bool) -> Self {
        assert_eq!(values.len(), shape[0] * shape[1], "values do not match the shape");
        let code = quant_type.code();
        // Sorted code and midpoints: the index is the number of midpoints strictly below the value.
        let mut order: Vec<usize> = (0..16).collect();
        order.sort_by(|&a, &b| code[a].total_cmp(&code[b]));
        let midpoints: Vec<f32> = order.windows(2).map(|w| (code[w[0]] + code[w[1]]) / 2.0).collect();
        let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
        let mut indices = Vec::with_capacity(values.len() + 1);
        for block in values.chunks(blocksize) {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(m);
            let inv = 1.0 / m.max(1e-38);
            for &v in block {
                let scaled = (v * inv).clamp(-1.0, 1.0);
                let bucket = midpoints.partition_point(|&b| b < scaled);
                indices.push(order[bucket] as u8);
            }
        }
        if indices.len() % 2 == 1 {
            // bitsandbytes pads an odd count with a zero value (whose index follows from 0.0).
            let bucket = midpoints.partition_point(|&b| b < 0.0);
            indices.push(order[bucket] as u8);
        }
        let packed = indices.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        let absmax = if double { double_quantize(&absmax, 256) } else { Absmax::F32(absmax) };
        Self { quant_type, shape, blocksize, packed, absmax }
    }

    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 4-bit index of element `i`.
    pub fn index(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0F }
    }

    /// Dequantize to f32 in `[rows, cols]` order (`dequantize_4bit`: code × block absmax, in f32).
    ///
    /// Runs on every forward and backward pass of a quantized layer, so it works a block at a
    /// time (one scale, whole bytes) across the thread pool rather than element by element.
    pub fn dequantize(&self) -> Vec<f32> {
        let code = self.quant_type.code();
        let absmax = self.absmax.values();
        let blocksize = self.blocksize;
        if !blocksize.is_multiple_of(2) {
            // Blocks do not start on byte boundaries.
            return (0..self.len()).map(|i| code[self.index(i) as usize] * absmax[i / blocksize]).collect();
        }
        const BLOCKS_PER_TASK: usize = 64;
        let simd = simd::available();
        let mut out = vec![0f32; self.len()];
        out.par_chunks_mut(blocksize * BLOCKS_PER_TASK).enumerate().for_each(|(task, dst)| {
            for (j, block) in dst.chunks_mut(blocksize).enumerate() {
                let b = task * BLOCKS_PER_TASK + j;
                let scale = absmax[b];
                let bytes = &self.packed[b * blocksize / 2..];
                if simd && block.len().is_multiple_of(16) {
                    // SAFETY: `available()` checked the CPU; `bytes` holds block.len() / 2 bytes.
                    unsafe { simd::dequantize_block(code, &bytes[..block.len() / 2], scale, block) };
                    continue;
                }
                let last_byte = bytes.get(block.len() / 2).copied();
                let mut pairs = block.chunks_exact_mut(2);
                for (pair, &byte) in (&mut pairs).zip(bytes) {
                    pair[0] = code[(byte >> 4) as usize] * scale;
                    pair[1] = code[(byte & 0x0F) as usize] * scale;
                }
                // An odd total length leaves one value, in the high nibble of the last byte.
                if let ([last], Some(byte)) = (pairs.into_remainder(), last_byte) {
                    *last = code[(byte >> 4) as usize] * scale;
                }
            }
        });
        out
    }

    /// Storage in bytes (packed codes plus block statistics).
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// Bits per quantized parameter, statistics included.
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.bytes() as f64 / self.len() as f64
    }
}

/// The block decoder with AVX-512: sixteen 4-bit indices become sixteen code values in one
/// `vpermps` against the 16-entry code held in a register. Dequantizing runs on every forward
/// and backward pass of a quantized layer (three times per layer and step with gradient
/// checkpointing), where the scalar table lookups cost SmolLM2's QLoRA recipe about 1 s per step
/// (docs/BENCHMARKS.md "LLM memory"). The scalar loop above is the fallback and the reference
/// (`blockwise_dequantize_equals_the_elementwise_definition` runs both where AVX-512 exists).
mod simd {
    /// Whether this CPU runs [`dequantize_block`].
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `out[i] = code[index i] · scale` for the indices packed in `bytes` (high nibble first);
    /// `out.len()` is a multiple of 16 and `bytes.len() == out.len() / 2`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F ([`available`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,sse4.1")]
    pub unsafe fn dequantize_block(code: &[f32; 16], bytes: &[u8], scale: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        assert!(out.len().is_multiple_of(16) && bytes.len() * 2 == out.len());
        let table = unsafe { _mm512_loadu_ps(code.as_ptr()) };
        let scale = _mm512_set1_ps(scale);
        let low = _mm_set1_epi16(0x0F);
        for (dst, src) in out.chunks_exact_mut(16).zip(bytes.chunks_exact(8)) {
            // SAFETY: `src` has 8 bytes, `dst` 16 floats (chunks_exact).
            unsafe {
                let packed = _mm_loadl_epi64(src.as_ptr() as *const __m128i);
                let wide = _mm_cvtepu8_epi16(packed);
                // Byte 2k holds byte k's high nibble, byte 2k + 1 its low nibble.
                let pairs = _mm_or_si128(_mm_srli_epi16(wide, 4), _mm_slli_epi16(_mm_and_si128(wide, low), 8));
                let values = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(pairs), table);
                _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_mul_ps(values, scale));
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn dequantize_block(_: &[f32; 16], _: &[u8], _: f32, _: &mut [f32]) {
        unreachable!("available() is false off x86-64")
    }
}

/// bitsandbytes' double quantization of block maxima: subtract the mean, then 8-bit blockwise
/// quantization (blocks of `blocksize`) against the signed dynamic map, done the way its CPU kernel
/// does it (see `BinnedCodeLookup`) so that the codes are bit-identical.
pub fn double_quantize(absmax: &[f32], blocksize: usize) -> Absmax {
    let offset = torch_sum_f32(absmax) / absmax.len() as f32;
    let lookup = BinnedCodeLookup::new(&dynamic_map_signed());
    let mut codes = Vec::with_capacity(absmax.len());
    let mut absmax2 = Vec::with_capacity(absmax.len().div_ceil(blocksize));
    for block in absmax.chunks(blocksize) {
        let centered: Vec<f32> = block.iter().map(|&v| v - offset).collect();
        let m = centered.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax2.push(m);
        if m == 0.0 {
            codes.extend(std::iter::repeat_n(0, centered.len()));
            continue;
        }
        let inv = 1.0 / m;
        codes.extend(centered.iter().map(|&v| lookup.code(v * inv)));
    }
    Absmax::Double { codes, absmax2, offset, blocksize }
}

/// The 8-bit code search of bitsandbytes' CPU kernel (`csrc/cpu_ops.cpp`, `quantize_cpu`, since
/// 0.50.1): rather than searching the 256 codes for the nearest, it splits [-1, 1] into 65,536
/// equal bins and reads each bin's code from a table built with the midpoints between codes.
/// Near zero the dynamic map's codes are closer together than one bin (2/65535), so the code it
/// picks is not always the nearest; a nearest-code search differs from bitsandbytes in about 0.5%
/// of the codes of real MiniLM block maxima. The float operations below follow the C++ one for one.
struct BinnedCodeLookup {
    table: Vec<u8>,
}

impl BinnedCodeLookup {
    const BINS: usize = 65_536;

    fn new(code: &[f32; 256]) -> Self {
        let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut index = 0;
        let table = (0..Self::BINS)
            .map(|bin| {
                let value = -1.0 + (2.0 * bin as f32) / (Self::BINS - 1) as f32;
                while index < midpoints.len() && midpoints[index] < value {
                    index += 1;
                }
                index as u8
            })
            .collect();
        Self { table }
    }

    /// The code of a value already scaled to [-1, 1] by its block maximum.
    fn code(&self, scaled: f32) -> u8 {
        let scaled = scaled.clamp(-1.0, 1.0);
        // Truncation towards zero, as the C++ cast to uint16_t (`as` saturates, same range).
        let bin = ((scaled + 1.0) * 0.5 * (Self::BINS - 1) as f32 + 0.5) as u16;
        self.table[bin as usize]
    }
}

/// `torch.sum` of a contiguous f32 vector on the CPU, in the same order: 8-lane vectors summed
/// by PyTorch's cascade (`SumKernel.cpp`: 4 interleaved rows, 4 levels), the scalar tail, then the
/// lanes. bitsandbytes' offset is `absmax.mean()` = this sum / n; matching its last bit needs the
/// same summation order (checked against PyTorch 2.15 on this project's x86-64 machines; a build
/// reducing with other vector widths could differ by an ulp).
pub fn torch_sum_f32(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    type V = [f32; LANES];
    let add = |a: &mut V, b: &V| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
    let vectors: Vec<V> = values.chunks_exact(LANES).map(|c| c.try_into().expect("16 lanes")).collect();
    let vec_size = vectors.len();
    // row_sum with ilp = 4: rows of 4 vectors summed by multi_row_sum, the leftovers into row 0.
    let size_ilp = vec_size / 4;
    let level_power = 4.max(ceil_log2(size_ilp) / 4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; 4]; 4];
    let mut i = 0;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for k in 0..4 {
                add(&mut acc[0][k], &vectors[i * 4 + k]);
            }
            i += 1;
        }
        for j in 1..4 {
            for k in 0..4 {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; LANES];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for k in 0..4 {
            add(&mut acc[0][k], &vectors[i * 4 + k]);
        }
        i += 1;
    }
    for j in 1..4 {
        for k in 0..4 {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    let mut partial = acc[0];
    for v in &vectors[size_ilp * 4..] {
        add(&mut partial[0], v);
    }
    for k in 1..4 {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    let mut total = 0f32;
    for &v in &values[vec_size * LANES..] {
        total += v;
    }
    for lane in partial[0] {
        total += lane;
    }
    total
}

fn ceil_log2(x: usize) -> usize {
    if x <= 1 { 0 } else { (usize::BITS - (x - 1).leading_zeros()) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-at-a-time dequantization (with AVX-512, the `vpermps` decoder for whole blocks of
    /// 16k values) equals the element-by-element definition bit for bit, for partial last blocks,
    /// odd lengths, odd block sizes, double-quantized statistics and both codes.
    #[test]
    fn blockwise_dequantize_equals_the_elementwise_definition() {
        for (len, blocksize, double, ty) in [
            (64 * 300 + 7, 64, true, QuantType::Nf4),
            (1001, 16, false, QuantType::Nf4),
            (99, 3, false, QuantType::Nf4),
            (4096, 64, false, QuantType::Nf4),
            (128 * 40, 128, true, QuantType::Fp4),
            (32 * 33 + 16, 32, false, QuantType::Fp4),
        ] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
            let q = Quantized4bit::quantize(&values, [1, len], ty, blocksize, double);
            let (code, absmax) = (q.quant_type.code(), q.absmax.values());
            let expected: Vec<f32> = (0..len).map(|i| code[q.index(i) as usize] * absmax[i / blocksize]).collect();
            assert_eq!(q.dequantize(), expected, "len {len}, blocksize {blocksize}");
        }
    }

    #[test]
    fn nf4_roundtrip_error_is_bounded_by_the_code_gaps() {
        let values: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let q = Quantized4bit::quantize(&values, [4, 64], QuantType::Nf4, 64, false);
        let d = q.dequantize();
        for (a, b) in values.iter().zip(&d) {
            assert!((a - b).abs() <= 0.17, "{a} vs {b}");
        }
        assert_eq!(q.packed.len(), 128);
        assert!((q.bits_per_parameter() - 4.5).abs() < 1e-9);
    }

    #[test]
    fn double_quantization_costs_about_4_13_bits() {
        let values: Vec<f32> = (0..64 * 1024).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
        let q = Quantized4bit::quantize(&values, [256, 256], QuantType::Nf4, 64, true);
        let bits = q.bits_per_parameter();
        assert!(bits > 4.12 && bits < 4.14, "{bits}");
        let plain = Quantized4bit::quantize(&values, [256, 256], QuantType::Nf4, 64, false);
        let (a, b) = (q.absmax.values(), plain.absmax.values());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 0.01 * y.abs() + 1e-3, "{x} vs {y}");
        }
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map_signed();
        assert_eq!(m[255], 1.0);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert!((m[0] + 0.992_968_7).abs() < 1e-6);
    }
}
