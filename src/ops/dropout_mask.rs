//! The dropout mask kernel: `n` values, 0 with probability `p` and `1/(1-p)` otherwise, from
//! SplitMix64 16 bits per element (see `nn::dropout` for why not burn's Bernoulli sampling).

use super::context::next_dropout_seed;
use super::rng::SplitMix64;

/// `n` values, each 0 with probability `p` and 1/(1-p) otherwise. Chunks are filled in parallel,
/// each from its own generator seeded by one draw of the shared one, so the result does not depend
/// on the number of threads.
pub fn mask(n: usize, p: f64) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let threshold = (p * 65536.0).round() as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    let base = next_dropout_seed();
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| fill_mask(chunk, base ^ (i as u64).wrapping_mul(SplitMix64::GAMMA), threshold, keep));
    out
}

/// Fills `chunk` from `SplitMix64::new(seed)`, four 16-bit draws per output: element `4k + lane`
/// is dropped when bits `16·lane..` of the generator's `k`-th output are below `threshold`.
/// SplitMix64's `k`-th output is a pure function of `seed + (k+1)·γ`, so the loop below computes
/// each one independently (the same values as calling `next_u64` in turn) and vectorizes; on
/// AVX-512 it runs 8 generators at once (was 5% of a MiniLM LoRA step as a sequential loop).
fn fill_mask(chunk: &mut [f32], seed: u64, threshold: u64, keep: f32) {
    #[inline(always)]
    fn body(chunk: &mut [f32], seed: u64, threshold: u64, keep: f32) {
        #[inline(always)]
        fn draw(seed: u64, k: usize) -> u64 {
            SplitMix64::output(seed.wrapping_add(SplitMix64::GAMMA.wrapping_mul(k as u64 + 1)))
        }
        let (quads, rest) = chunk.as_chunks_mut::<4>();
        for (k, quad) in quads.iter_mut().enumerate() {
            let bits = draw(seed, k);
            for (lane, v) in quad.iter_mut().enumerate() {
                *v = if (bits >> (16 * lane)) & 0xFFFF < threshold { 0.0 } else { keep };
            }
        }
        let bits = draw(seed, quads.len());
        for (lane, v) in rest.iter_mut().enumerate() {
            *v = if (bits >> (16 * lane)) & 0xFFFF < threshold { 0.0 } else { keep };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
        #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2")]
        fn avx512(chunk: &mut [f32], seed: u64, threshold: u64, keep: f32) {
            body(chunk, seed, threshold, keep)
        }
        // SAFETY: the CPU has the features `avx512` is compiled for (checked just above).
        return unsafe { avx512(chunk, seed, threshold, keep) };
    }
    body(chunk, seed, threshold, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::context::seed_dropout;

    #[test]
    fn mask_drops_the_right_fraction_and_rescales() {
        seed_dropout(1);
        let m = mask(100_000, 0.1);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        let mean: f64 = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        seed_dropout(1);
        assert_eq!(m, mask(100_000, 0.1));
    }

    #[test]
    fn fill_mask_draws_what_the_sequential_generator_draws() {
        let (threshold, keep) = ((0.3f64 * 65536.0).round() as u64, 1.0 / 0.7);
        for n in [1usize, 7, 64, 1001] {
            let mut rng = SplitMix64::new(42);
            let mut expected = vec![0f32; n];
            for quad in expected.chunks_mut(4) {
                let bits = rng.next_u64();
                for (lane, v) in quad.iter_mut().enumerate() {
                    *v = if (bits >> (16 * lane)) & 0xFFFF < threshold { 0.0 } else { keep };
                }
            }
            let mut got = vec![0f32; n];
            fill_mask(&mut got, 42, threshold, keep);
            assert_eq!(got, expected, "n = {n}");
        }
    }
}
