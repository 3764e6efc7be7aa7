//! `C = A · B` with both operands rounded to bf16 and products summed in f32, on CPUs with
//! AVX512-BF16 (`vdpbf16ps`: 32 bf16 products into 16 f32 sums per instruction, twice the
//! multiply rate of f32 FMA on the same registers).
//!
//! This is the CPU half of bf16 autocast. burn's CPU backend multiplies bf16 tensors by converting
//! them back to f32, so autocast there was only extra conversions. Here the operands stay f32 in
//! memory (the master copies autodiff already holds) and are rounded to bf16 while being packed
//! into the kernel's layout, so a bf16 product costs no extra pass and no bf16 copy of anything.
//!
//! The structure is the usual one for a packed GEMM: `B` is packed once into panels of
//! [`NR`] columns, each thread packs blocks of [`MR`] rows of `A`, and a register-blocked kernel
//! multiplies one `MR × NR` tile at a time. `vdpbf16ps` sums *pairs* along `k`, so a packed
//! element is a `u32` holding `(x[k], x[k+1])` as two bf16 (an odd `k` is padded with zero).
//! Rounding is to nearest even, as PyTorch's `.to(torch.bfloat16)`.

use rayon::prelude::*;

/// Rows of `A` per register tile.
const MR: usize = 12;
/// Columns of `B` per register tile (two 16-lane registers).
const NR: usize = 32;
/// Rows of `A` per parallel task (its packed block stays in L2).
const MC: usize = 8 * MR;
/// `k` pairs per block: a packed `MC`-row block of `A` is `MC · KCP · 4` bytes (384 KiB).
const KCP: usize = 1024;

/// Whether this CPU has every feature the kernel and packer are compiled with (a cached lookup).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A strided f32 matrix: element `(i, j)` is `data[offset + i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatRef<'_> {
    fn transposed(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Panics unless every element lies inside `data` (the kernels index without checks).
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "bf16 gemm: view {self:?} reaches past its buffer");
        }
    }
}

/// `c [a.rows, b.cols] = a · b` (row-major, overwritten). Requires [`available`].
pub fn gemm(a: MatRef, b: MatRef, c: &mut [f32]) {
    assert!(available(), "bf16 gemm needs a CPU with AVX512-BF16");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "bf16 gemm: inner dimensions differ");
    assert_eq!(c.len(), m * n, "bf16 gemm: output size");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let pairs = k.div_ceil(2);
    let b_t = b.transposed();
    // Packed B: for each NR-column panel, `pairs × NR` u32 (column pairs along k).
    let mut packed_b = vec![0u32; n.div_ceil(NR) * pairs * NR];
    packed_b.par_chunks_mut(pairs * NR).enumerate().for_each(|(panel, out)| pack(&b_t, panel * NR, NR, 0, pairs, out));
    c.par_chunks_mut(MC * n).enumerate().for_each(|(block, c)| {
        let first_row = block * MC;
        let rows = c.len() / n;
        let row_panels = rows.div_ceil(MR);
        let mut packed_a = vec![0u32; row_panels * KCP.min(pairs) * MR];
        for p0 in (0..pairs).step_by(KCP) {
            let kp = KCP.min(pairs - p0);
            for (i, out) in packed_a.chunks_exact_mut(kp * MR).take(row_panels).enumerate() {
                pack(&a, first_row + i * MR, MR, p0, kp, out);
            }
            for (j, panel) in packed_b.chunks_exact(pairs * NR).enumerate() {
                let b_block = &panel[p0 * NR..(p0 + kp) * NR];
                let cols = NR.min(n - j * NR);
                for (i, a_block) in packed_a.chunks_exact(kp * MR).take(row_panels).enumerate() {
                    let tile = Tile { rows: MR.min(rows - i * MR), cols, ldc: n, accumulate: p0 > 0 };
                    let c_tile = &mut c[i * MR * n + j * NR..];
                    // SAFETY: `available()` was checked above; the tile lies inside `c` (rows and
                    // cols are clipped to the block) and the packed blocks hold `kp` pairs.
                    unsafe { kernel(kp, a_block, b_block, c_tile, tile) };
                }
            }
        }
    });
}

/// bf16 bits of `x` (round to nearest even) in the high half of the result; NaN stays NaN.
#[inline(always)]
fn round_to_bf16(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() { bits | 0x0040_0000 } else { bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) }
}

/// `(lo, hi)` as two bf16 in one u32, `lo` in the low half: the operand layout of `vdpbf16ps`.
#[inline(always)]
fn bf16_pair(lo: f32, hi: f32) -> u32 {
    (round_to_bf16(lo) >> 16) | (round_to_bf16(hi) & 0xFFFF_0000)
}

/// Packs rows `first..first + lanes` of `src` over the k pairs `p0..p0 + kp` into
/// `out[p · lanes + lane]`, with zeros past the matrix's last row or column.
fn pack(src: &MatRef, first: usize, lanes: usize, p0: usize, kp: usize, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `gemm`, the only caller, checked that the CPU has AVX-512 with BF16.
    unsafe {
        pack_avx512(src, first, lanes, p0, kp, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_body(src, first, lanes, p0, kp, out)
}

/// [`pack_body`] compiled for AVX-512 (the crate targets baseline x86-64).
///
/// # Safety
/// The CPU must have AVX512-F/BW/VL and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_avx512(src: &MatRef, first: usize, lanes: usize, p0: usize, kp: usize, out: &mut [u32]) {
    pack_body(src, first, lanes, p0, kp, out)
}

#[inline(always)]
fn pack_body(src: &MatRef, first: usize, lanes: usize, p0: usize, kp: usize, out: &mut [u32]) {
    let out = &mut out[..kp * lanes];
    let valid = lanes.min(src.rows.saturating_sub(first));
    let at = |i: usize, k: usize| src.data[src.offset + (first + i) * src.row_stride + k * src.col_stride];
    if valid < lanes {
        out.fill(0);
    }
    let (k0, k_end) = (2 * p0, (2 * (p0 + kp)).min(src.cols));
    if src.row_stride == 1 {
        // Lanes contiguous (a row-major B, a transposed A): one vector-friendly pass per pair.
        for (p, out) in out.chunks_exact_mut(lanes).enumerate() {
            let k = k0 + 2 * p;
            let lo = &src.data[src.offset + first + k * src.col_stride..][..valid];
            if k + 1 < k_end {
                let hi = &src.data[src.offset + first + (k + 1) * src.col_stride..][..valid];
                out.iter_mut().zip(lo.iter().zip(hi)).for_each(|(o, (&l, &h))| *o = bf16_pair(l, h));
            } else {
                out.iter_mut().zip(lo).for_each(|(o, &l)| *o = bf16_pair(l, 0.0));
            }
        }
    } else if src.col_stride == 1 {
        // k contiguous (a row-major A, a transposed B): pairs are adjacent in memory, so 32
        // consecutive values round to 16 packed pairs in one instruction.
        for lane in 0..valid {
            let row = &src.data[src.offset + (first + lane) * src.row_stride..][k0..k_end];
            let (blocks, tail) = row.as_chunks::<32>();
            for (b, block) in blocks.iter().enumerate() {
                let pairs = round_32(block);
                for (j, &pair) in pairs.iter().enumerate() {
                    out[(16 * b + j) * lanes + lane] = pair;
                }
            }
            let (pairs, last) = tail.as_chunks::<2>();
            let p = 16 * blocks.len();
            for (j, &[l, h]) in pairs.iter().enumerate() {
                out[(p + j) * lanes + lane] = bf16_pair(l, h);
            }
            if let [l] = last {
                out[(p + pairs.len()) * lanes + lane] = bf16_pair(*l, 0.0);
            }
        }
    } else {
        for p in 0..kp {
            let k = k0 + 2 * p;
            for lane in 0..valid {
                let hi = if k + 1 < k_end { at(lane, k + 1) } else { 0.0 };
                out[p * lanes + lane] = bf16_pair(at(lane, k), hi);
            }
        }
    }
}

/// 32 consecutive values as 16 bf16 pairs (`vcvtne2ps2bf16`, round to nearest even).
#[inline(always)]
fn round_32(block: &[f32; 32]) -> [u32; 16] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only reached from `pack_avx512`, compiled with (and run on a CPU with) AVX512-BF16.
    unsafe {
        use std::arch::x86_64::*;
        let lo = _mm512_loadu_ps(block.as_ptr());
        let hi = _mm512_loadu_ps(block.as_ptr().add(16));
        // The second operand fills the low 16 bf16 lanes.
        std::mem::transmute::<__m512bh, [u32; 16]>(_mm512_cvtne2ps_pbh(hi, lo))
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::array::from_fn(|j| bf16_pair(block[2 * j], block[2 * j + 1]))
}

/// Where one register tile goes in `C`, and how much of it is real.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    ldc: usize,
    /// Add to `C` (a later k block) instead of overwriting it.
    accumulate: bool,
}

/// One `MR × NR` tile: `C += A_block · B_block` over `kp` pairs.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16; `a` holds `kp · MR` and `b` `kp · NR` packed
/// pairs; `c` holds `(tile.rows − 1) · ldc + tile.cols` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(kp: usize, a: &[u32], b: &[u32], c: &mut [f32], tile: Tile) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    debug_assert!(tile.rows >= 1 && c.len() >= (tile.rows - 1) * tile.ldc + tile.cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        // SAFETY: p < kp, within the packed blocks (caller's contract).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
            }
        }
    }
    let masks = [lane_mask(tile.cols), lane_mask(tile.cols.saturating_sub(16))];
    for (i, acc) in acc.iter().enumerate().take(tile.rows) {
        for (half, (&sum, &mask)) in acc.iter().zip(&masks).enumerate() {
            // SAFETY: the mask limits the store to the tile's `cols` real columns of row i.
            unsafe {
                let out = c.as_mut_ptr().add(i * tile.ldc + 16 * half);
                let sum = if tile.accumulate { _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, out)) } else { sum };
                _mm512_mask_storeu_ps(out, mask, sum);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: &[u32], _: &[u32], _: &mut [f32], _: Tile) {
    unreachable!("bf16 gemm is only built for x86-64 (callers check `available`)")
}

/// The first `n` (at most 16) of 16 lanes.
#[cfg(target_arch = "x86_64")]
fn lane_mask(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// For tests: whether the kernel cannot run on this CPU, saying so (the tests that need it return
/// early there rather than fail).
#[cfg(test)]
pub(super) fn unavailable_in_tests() -> bool {
    let missing = !available();
    if missing {
        eprintln!("this CPU has no AVX512-BF16; the bf16 kernel is not exercised here");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> f32 {
        f32::from_bits(round_to_bf16(x) & 0xFFFF_0000)
    }

    /// f64 reference of the same product on bf16-rounded operands.
    fn reference(a: &MatRef, b: &MatRef) -> Vec<f32> {
        let at = |m: &MatRef, i: usize, j: usize| bf16(m.data[m.offset + i * m.row_stride + j * m.col_stride]) as f64;
        let mut c = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|k| at(a, i, k) * at(b, k, j)).sum::<f64>() as f32;
            }
        }
        c
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even_like_torch() {
        assert_eq!(bf16(1.0), 1.0);
        // 1 + 2⁻⁸ lies halfway between bf16 neighbours 1 and 1 + 2⁻⁷: ties go to the even one.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(bf16(f32::NAN).is_nan());
        assert_eq!(bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(bf16_pair(1.0, -2.0), 0xC000_3F80);
    }

    /// Every layout the packer has a path for, odd sizes that leave partial tiles and an odd k,
    /// and k long enough to take two k blocks: equal to the f64 product of the rounded operands
    /// up to f32 summation error.
    #[test]
    fn products_match_a_reference_on_rounded_operands() {
        if unavailable_in_tests() {
            return;
        }
        for &(m, k, n) in &[(1, 1, 1), (13, 7, 33), (40, 64, 70), (100, 2 * KCP * 2 + 3, 17)] {
            let (da, db) = (values(m * k, 1), values(k * n, 2));
            // a row-major or column-major, b row-major or column-major, and one padded stride.
            let a_views = [
                MatRef { data: &da, offset: 0, rows: m, cols: k, row_stride: k, col_stride: 1 },
                MatRef { data: &da, offset: 0, rows: m, cols: k, row_stride: 1, col_stride: m },
            ];
            let b_views = [
                MatRef { data: &db, offset: 0, rows: k, cols: n, row_stride: n, col_stride: 1 },
                MatRef { data: &db, offset: 0, rows: k, cols: n, row_stride: 1, col_stride: k },
            ];
            let padded: Vec<f32> = (0..m * (k + 3))
                .map(|i| if i % (k + 3) < k { da[i / (k + 3) * k + i % (k + 3)] } else { 9.0 })
                .collect();
            let strided = MatRef { data: &padded, offset: 0, rows: m, cols: k, row_stride: k + 3, col_stride: 1 };
            for a in a_views.iter().chain([&strided]) {
                for b in &b_views {
                    let mut c = vec![f32::NAN; m * n];
                    gemm(*a, *b, &mut c);
                    let want = reference(a, b);
                    let tol = 1e-5 * (k as f32).sqrt().max(1.0);
                    for (i, (got, want)) in c.iter().zip(&want).enumerate() {
                        assert!((got - want).abs() <= tol, "{m}x{k}x{n} {a:?} element {i}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// A general-stride view (neither stride 1) goes through the generic packer.
    #[test]
    fn general_strides() {
        if unavailable_in_tests() {
            return;
        }
        let data = values(2 * 5 * 9, 3);
        let a = MatRef { data: &data, offset: 1, rows: 5, cols: 9, row_stride: 2, col_stride: 10 };
        let b_data = values(9 * 3, 4);
        let b = MatRef { data: &b_data, offset: 0, rows: 9, cols: 3, row_stride: 3, col_stride: 1 };
        let mut c = vec![0f32; 15];
        gemm(a, b, &mut c);
        for (got, want) in c.iter().zip(reference(&a, &b)) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
