//! finetune patch: element-wise f32 loops compiled for AVX-512 or AVX2 and chosen at run time.
//!
//! burn-flex is built for the baseline x86-64 target (SSE2), so a closure loop such as GELU's
//! vectorizes at most 4 lanes wide, and a closure called from inside `zip`'s loop nests is often
//! not inlined at all (GELU's backward ran one scalar call per element: 19% of a MiniLM LoRA
//! step). Each helper here compiles the same plain loop a second and third time inside functions
//! with AVX-512 / AVX2+FMA enabled, so the closure is inlined and the loop is 16 or 8 lanes wide.
//! Results are the same as the plain loop's: the compiler does not reassociate or contract f32
//! arithmetic, wider registers only run more lanes of the same operations.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

#[inline(always)]
fn map_inplace_body<F: Fn(f32) -> f32>(values: &mut [f32], op: &F) {
    for i in 0..values.len() {
        values[i] = op(values[i]);
    }
}

// The allocating bodies write into uninitialised output with a plain indexed loop: `collect()`
// would call iterator adapters that are not inlined here and so not compiled with the caller's
// instruction set.
#[inline(always)]
fn map_body<F: Fn(f32) -> f32>(src: &[f32], dst: &mut [MaybeUninit<f32>], op: &F) {
    let dst = &mut dst[..src.len()];
    for i in 0..src.len() {
        dst[i].write(op(src[i]));
    }
}

#[inline(always)]
fn zip_inplace_body<F: Fn(f32, f32) -> f32>(dst: &mut [f32], src: &[f32], op: &F) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    for i in 0..n {
        dst[i] = op(dst[i], src[i]);
    }
}

#[inline(always)]
fn zip_body<F: Fn(f32, f32) -> f32>(lhs: &[f32], rhs: &[f32], dst: &mut [MaybeUninit<f32>], op: &F) {
    let n = dst.len().min(lhs.len()).min(rhs.len());
    let (lhs, rhs, dst) = (&lhs[..n], &rhs[..n], &mut dst[..n]);
    for i in 0..n {
        dst[i].write(op(lhs[i], rhs[i]));
    }
}

/// The widest instruction set this CPU has that the helpers are compiled for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

#[inline]
fn level() -> Level {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            return Level::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Defines `$name` as a run-time dispatch over copies of `$body` compiled per instruction set.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident <$f:ident: $bound:path> ($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        fn $name<$f: $bound>($($arg: $ty,)* op: &$f) -> $ret {
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512<$f: $bound>($($arg: $ty,)* op: &$f) -> $ret {
                    $body($($arg,)* op)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$f: $bound>($($arg: $ty,)* op: &$f) -> $ret {
                    $body($($arg,)* op)
                }
                match level() {
                    // SAFETY: `level()` checked that this CPU has the enabled features.
                    Level::Avx512 => return unsafe { avx512($($arg,)* op) },
                    Level::Avx2 => return unsafe { avx2($($arg,)* op) },
                    Level::Baseline => {}
                }
            }
            $body($($arg,)* op)
        }
    };
}

dispatch!(map_inplace_serial<F: Fn(f32) -> f32>(values: &mut [f32]) -> () = map_inplace_body);
dispatch!(map_serial<F: Fn(f32) -> f32>(src: &[f32], dst: &mut [MaybeUninit<f32>]) -> () = map_body);
dispatch!(zip_inplace_serial<F: Fn(f32, f32) -> f32>(dst: &mut [f32], src: &[f32]) -> () = zip_inplace_body);
dispatch!(
    zip_serial<F: Fn(f32, f32) -> f32>(lhs: &[f32], rhs: &[f32], dst: &mut [MaybeUninit<f32>]) -> () = zip_body
);

/// Elements per parallel task; smaller tensors run on the calling thread (splitting costs more
/// than it saves below this).
#[cfg(feature = "rayon")]
const PARALLEL_CHUNK: usize = 1 << 15;

/// `values[i] = op(values[i])`.
pub fn map_inplace_f32<F: Fn(f32) -> f32 + Sync>(values: &mut [f32], op: F) {
    #[cfg(feature = "rayon")]
    if values.len() >= 2 * PARALLEL_CHUNK {
        use rayon::prelude::*;
        values.par_chunks_mut(PARALLEL_CHUNK).for_each(|chunk| map_inplace_serial(chunk, &op));
        return;
    }
    map_inplace_serial(values, &op)
}

/// `op` of each element of `src`, in a new vector.
pub fn map_f32<F: Fn(f32) -> f32 + Sync>(src: &[f32], op: F) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    let dst = &mut out.spare_capacity_mut()[..src.len()];
    #[cfg(feature = "rayon")]
    if src.len() >= 2 * PARALLEL_CHUNK {
        use rayon::prelude::*;
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(src.par_chunks(PARALLEL_CHUNK))
            .for_each(|(d, s)| map_serial(s, d, &op));
    } else {
        map_serial(src, dst, &op);
    }
    #[cfg(not(feature = "rayon"))]
    map_serial(src, dst, &op);
    // SAFETY: `map_serial` initialised every element of `dst`, the first `src.len()`.
    unsafe { out.set_len(src.len()) };
    out
}

/// `dst[i] = op(dst[i], src[i])`; the slices have the same length.
pub fn zip_inplace_f32<F: Fn(f32, f32) -> f32 + Sync>(dst: &mut [f32], src: &[f32], op: F) {
    assert_eq!(dst.len(), src.len(), "zip_inplace_f32: length mismatch");
    #[cfg(feature = "rayon")]
    if dst.len() >= 2 * PARALLEL_CHUNK {
        use rayon::prelude::*;
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(src.par_chunks(PARALLEL_CHUNK))
            .for_each(|(d, s)| zip_inplace_serial(d, s, &op));
        return;
    }
    zip_inplace_serial(dst, src, &op)
}

/// `op(lhs[i], rhs[i])` in a new vector; the slices have the same length.
pub fn zip_f32<F: Fn(f32, f32) -> f32 + Sync>(lhs: &[f32], rhs: &[f32], op: F) -> Vec<f32> {
    assert_eq!(lhs.len(), rhs.len(), "zip_f32: length mismatch");
    let n = lhs.len();
    let mut out = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    #[cfg(feature = "rayon")]
    if n >= 2 * PARALLEL_CHUNK {
        use rayon::prelude::*;
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(lhs.par_chunks(PARALLEL_CHUNK).zip(rhs.par_chunks(PARALLEL_CHUNK)))
            .for_each(|(d, (l, r))| zip_serial(l, r, d, &op));
    } else {
        zip_serial(lhs, rhs, dst, &op);
    }
    #[cfg(not(feature = "rayon"))]
    zip_serial(lhs, rhs, dst, &op);
    // SAFETY: `zip_serial` initialised every element of `dst`, the first `n`.
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_loops_equal_the_plain_loop() {
        let a: Vec<f32> = (0..200_037).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let b: Vec<f32> = (0..200_037).map(|i| (i as f32 * 0.37).sin()).collect();
        let f = |x: f32| crate::ops::unary::erf_f32(x) * x + 1.0;
        let g = |x: f32, y: f32| x * crate::ops::unary::exp_f32(-y * y) - y;
        let mut inplace = a.clone();
        map_inplace_f32(&mut inplace, f);
        let expected: Vec<f32> = a.iter().map(|&x| f(x)).collect();
        assert_eq!(inplace, expected);
        assert_eq!(map_f32(&a, f), expected);
        let expected: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| g(x, y)).collect();
        let mut inplace = a.clone();
        zip_inplace_f32(&mut inplace, &b, g);
        assert_eq!(inplace, expected);
        assert_eq!(zip_f32(&a, &b, g), expected);
    }
}
