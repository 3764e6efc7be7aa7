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

#[inline(always)]
fn map_inplace_body<F: Fn(f32) -> f32>(values: &mut [f32], op: &F) {
    for i in 0..values.len() {
        values[i] = op(values[i]);
    }
}

// The allocating bodies write into the vector's spare capacity with a plain indexed loop:
// `collect()` would call iterator adapters that are not inlined here and so not compiled with
// this function's instruction set.
#[inline(always)]
fn map_body<F: Fn(f32) -> f32>(src: &[f32], op: &F) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    let dst = &mut out.spare_capacity_mut()[..src.len()];
    for i in 0..src.len() {
        dst[i].write(op(src[i]));
    }
    // SAFETY: the loop initialised the first `src.len()` elements.
    unsafe { out.set_len(src.len()) };
    out
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
fn zip_body<F: Fn(f32, f32) -> f32>(lhs: &[f32], rhs: &[f32], op: &F) -> Vec<f32> {
    let n = lhs.len().min(rhs.len());
    let (lhs, rhs) = (&lhs[..n], &rhs[..n]);
    let mut out = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    for i in 0..n {
        dst[i].write(op(lhs[i], rhs[i]));
    }
    // SAFETY: the loop initialised the first `n` elements.
    unsafe { out.set_len(n) };
    out
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
        pub fn $name<$f: $bound>($($arg: $ty,)* op: $f) -> $ret {
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
                    Level::Avx512 => return unsafe { avx512($($arg,)* &op) },
                    Level::Avx2 => return unsafe { avx2($($arg,)* &op) },
                    Level::Baseline => {}
                }
            }
            $body($($arg,)* &op)
        }
    };
}

dispatch!(
    /// `values[i] = op(values[i])`.
    map_inplace_f32<F: Fn(f32) -> f32>(values: &mut [f32]) -> () = map_inplace_body
);
dispatch!(
    /// `op` of each element of `src`, in a new vector.
    map_f32<F: Fn(f32) -> f32>(src: &[f32]) -> Vec<f32> = map_body
);
dispatch!(
    /// `dst[i] = op(dst[i], src[i])` over the shorter of the two.
    zip_inplace_f32<F: Fn(f32, f32) -> f32>(dst: &mut [f32], src: &[f32]) -> () = zip_inplace_body
);
dispatch!(
    /// `op(lhs[i], rhs[i])` over the shorter of the two, in a new vector.
    zip_f32<F: Fn(f32, f32) -> f32>(lhs: &[f32], rhs: &[f32]) -> Vec<f32> = zip_body
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_loops_equal_the_plain_loop() {
        let a: Vec<f32> = (0..1037).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let b: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.37).sin()).collect();
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
