//! Hot loops compiled a second time for AVX-512 and chosen at run time, for the fused CPU ops
//! (`ops::attention_softmax`, `ops::layer_norm`, `ops::adamw`, the dropout mask): the crate targets
//! baseline x86-64, where those loops would run four lanes wide.

/// Compiles `$body` once more with AVX-512 enabled and picks that copy at run time when the CPU
/// has it (the crate itself targets baseline x86-64).
macro_rules! with_avx512 {
    ($name:ident($($arg:ident: $ty:ty),*) = $body:ident) => {
        $crate::ops::simd::with_avx512!($name($($arg: $ty),*) -> () = $body);
    };
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features the copy was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use with_avx512;
