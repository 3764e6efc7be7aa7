//! Batched 2-D transposes of f32 matrices, for layout changes between NCHW and channels-last
//! (`ops::conv2d`'s depthwise convolutions).
//!
//! A scalar element-by-element transpose stores with a stride of a whole row; on a MobileNetV2
//! training step (64×64, batch 64, 2 cores; `perf`) the depthwise convolutions' layout changes
//! written that way took 17% of the step. Here 8×8 blocks go through AVX registers (eight row
//! loads, the unpack/shuffle/permute network, eight row stores); edges and CPUs without AVX use
//! the scalar loop. Test: equal to the scalar transpose for shapes with and without edges.

use rayon::prelude::*;

/// Each of the `n` row-major `[rows, cols]` matrices in `src`, transposed to `[cols, rows]`.
pub fn transpose_batched(src: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
    let size = rows * cols;
    assert_eq!(src.len(), n * size, "transpose: {} values for {n} matrices of {rows}×{cols}", src.len());
    if size == 0 {
        return Vec::new();
    }
    crate::ops::buffer::for_overwrite(n * size, |out| {
        out.par_chunks_mut(size).zip(src.par_chunks(size)).for_each(|(dst, src)| transpose(src, rows, cols, dst))
    })
}

/// `dst [cols, rows] = srcᵀ` for `src [rows, cols]`.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        let (full_rows, full_cols) = (rows / 8 * 8, cols / 8 * 8);
        for r in (0..full_rows).step_by(8) {
            for c in (0..full_cols).step_by(8) {
                // SAFETY: the block's 8 rows of 8 values lie inside `src` (r + 7 < rows,
                // c + 7 < cols) and its 8 columns inside `dst`; the CPU has AVX.
                unsafe { transpose8x8(src.as_ptr().add(r * cols + c), cols, dst.as_mut_ptr().add(c * rows + r), rows) };
            }
        }
        scalar(src, rows, cols, dst, 0..full_rows, full_cols..cols);
        scalar(src, rows, cols, dst, full_rows..rows, 0..cols);
        return;
    }
    scalar(src, rows, cols, dst, 0..rows, 0..cols);
}

fn scalar(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    row_range: std::ops::Range<usize>,
    col_range: std::ops::Range<usize>,
) {
    for r in row_range {
        for c in col_range.clone() {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// One 8×8 block: rows `src + k·src_stride` become columns of `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees 8 readable rows of 8 floats at `src` and 8 writable rows at `dst`.
    unsafe {
        let r = |k: usize| _mm256_loadu_ps(src.add(k * src_stride));
        let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
        let t0 = _mm256_unpacklo_ps(r0, r1);
        let t1 = _mm256_unpackhi_ps(r0, r1);
        let t2 = _mm256_unpacklo_ps(r2, r3);
        let t3 = _mm256_unpackhi_ps(r2, r3);
        let t4 = _mm256_unpacklo_ps(r4, r5);
        let t5 = _mm256_unpackhi_ps(r4, r5);
        let t6 = _mm256_unpacklo_ps(r6, r7);
        let t7 = _mm256_unpackhi_ps(r6, r7);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let w = |k: usize, v: __m256| _mm256_storeu_ps(dst.add(k * dst_stride), v);
        w(0, _mm256_permute2f128_ps::<0x20>(s0, s4));
        w(1, _mm256_permute2f128_ps::<0x20>(s1, s5));
        w(2, _mm256_permute2f128_ps::<0x20>(s2, s6));
        w(3, _mm256_permute2f128_ps::<0x20>(s3, s7));
        w(4, _mm256_permute2f128_ps::<0x31>(s0, s4));
        w(5, _mm256_permute2f128_ps::<0x31>(s1, s5));
        w(6, _mm256_permute2f128_ps::<0x31>(s2, s6));
        w(7, _mm256_permute2f128_ps::<0x31>(s3, s7));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_scalar_transpose() {
        for (n, rows, cols) in [(2, 16, 24), (3, 13, 9), (1, 8, 8), (2, 96, 4), (1, 4, 96), (2, 5, 3), (1, 0, 7)] {
            let src: Vec<f32> = (0..n * rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let ours = transpose_batched(&src, n, rows, cols);
            let mut expected = vec![0f32; src.len()];
            for m in 0..n {
                for r in 0..rows {
                    for c in 0..cols {
                        expected[m * rows * cols + c * rows + r] = src[m * rows * cols + r * cols + c];
                    }
                }
            }
            assert_eq!(ours, expected, "{n} × {rows}×{cols}");
        }
    }
}
