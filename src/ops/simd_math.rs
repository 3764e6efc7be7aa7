//! Branch-free f32 transcendental functions, so that loops over them vectorize.
//!
//! `exp_f32` is the same function (bit for bit) as the one finetune's burn-flex patch gives burn's
//! own `exp`, softmax and GELU (`patches/burn-flex.patch`): the fused attention softmax must round
//! exactly as burn's softmax does. It is kept here so that finetune's code never depends on a
//! symbol that exists only in a patch. Measured: libm's scalar `expf` was 16% of a Whisper
//! transcription (the 1500×1500 softmax); this one vectorizes 16 lanes wide on AVX-512.

/// e^x for f32, branch-free (Cephes' `expf`: 2^n · p(r), |r| ≤ ln2/2; within 2 ulp); 0 below
/// e^-87, +inf above e^88, NaN kept.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let c = x.clamp(-87.0, 88.0);
    // Round to nearest integer with the 1.5·2^23 trick (vectorizes without SSE4.1 `round`).
    let n = (c * core::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = c - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let scaled = y * f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    /// Within 2 ulp-ish of f64 over the range, and bit-identical to burn's (patched) `exp`, which
    /// the fused softmax must match.
    #[test]
    fn exp_matches_f64_and_burns_exp_bit_for_bit() {
        let xs: Vec<f32> = (0..20_001).map(|i| -90.0 + i as f32 * 0.009).collect();
        for &x in &xs {
            let (got, want) = (super::exp_f32(x), (x as f64).exp());
            if x < -87.0 {
                assert_eq!(got, 0.0);
            } else if x > 88.0 {
                assert_eq!(got, f32::INFINITY);
            } else {
                assert!(((got as f64 - want) / want).abs() < 3e-7, "exp({x}) = {got}, f64 {want}");
            }
        }
        let t = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &Device::flex());
        let burn: Vec<f32> = t.exp().into_data().try_into_vec().unwrap();
        for (x, b) in xs.iter().zip(burn) {
            assert_eq!(super::exp_f32(*x).to_bits(), b.to_bits(), "exp({x})");
        }
    }
}
