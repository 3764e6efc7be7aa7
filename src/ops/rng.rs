//! SplitMix64: the one random generator finetune draws from (shuffles, dropout masks, image and
//! audio augmentation, sampling). Tiny and portable: every draw is a pure function of the seed and
//! the draw's index, so a resumed run replays exactly what an uninterrupted one would have drawn,
//! and any language can reproduce a split or a shuffle.

#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The step added to the state before each output.
    pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        Self::output(self.0)
    }

    /// The output for an already advanced state: the `k`-th draw (from 1) of `new(seed)` is
    /// `output(seed + k·GAMMA)`, so draws can be computed independently (and vectorized).
    #[inline(always)]
    pub fn output(state: u64) -> u64 {
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (rejection sampling, no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}
