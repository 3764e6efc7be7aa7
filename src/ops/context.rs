//! The compute settings a run's kernels read: the precision of matrix products and the dropout
//! generator.
//!
//! Both used to be hidden process-wide switches inside `models/`. They are settings of the run,
//! not of a layer (a model is loaded once and may be run either way), and threading them through
//! every `forward` would touch every layer of every architecture. So they live here, as one
//! explicit, per-thread context: the pipeline enters it for a run ([`enter`], restored when the
//! returned [`Scope`] drops), the trainer reseeds the dropout generator before every micro-batch
//! ([`seed_dropout`]), and `ops::matmul` / `nn::dropout` read it. A thread that never entered a
//! scope computes in f32 with a generator seeded by a fixed constant.

use anyhow::{Result, bail};
use std::cell::{Cell, RefCell};

use super::rng::SplitMix64;

/// How matrix products are computed (PyTorch's autocast, see `ops::matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Matrix products in bf16, the rest in f32.
    Bf16Autocast,
}

impl Precision {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" | "bf16-autocast" => Ok(Self::Bf16Autocast),
            other => bail!("precision = {other:?}: expected \"f32\" or \"bf16\" (bf16 matrix products, f32 weights)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16Autocast => "bf16",
        }
    }
}

thread_local! {
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::F32) };
    static DROPOUT: RefCell<Option<SplitMix64>> = const { RefCell::new(None) };
}

/// The context of one run on this thread; dropping it restores the previous settings.
#[must_use = "the settings hold only while the scope is alive"]
pub struct Scope {
    precision: Precision,
    dropout: Option<SplitMix64>,
}

/// Compute with `precision` on this thread until the returned scope drops.
pub fn enter(precision: Precision) -> Scope {
    let scope = Scope { precision: PRECISION.get(), dropout: DROPOUT.with_borrow(Clone::clone) };
    PRECISION.set(precision);
    scope
}

impl Drop for Scope {
    fn drop(&mut self) {
        PRECISION.set(self.precision);
        DROPOUT.with_borrow_mut(|d| *d = self.dropout.take());
    }
}

/// The precision of matrix products on this thread.
pub fn precision() -> Precision {
    PRECISION.get()
}

/// Reseed the dropout generator (the trainer does before every micro-batch, so runs repeat and a
/// resumed run draws the masks an uninterrupted one would).
pub fn seed_dropout(seed: u64) {
    DROPOUT.with_borrow_mut(|d| *d = Some(SplitMix64::new(seed)));
}

/// Where the dropout generator stands (opaque), for a pass that must draw the same masks again
/// later ([`restore_dropout`]; `ops::checkpoint` recomputes a block in the backward pass).
#[derive(Debug, Clone)]
pub struct DropoutState(Option<SplitMix64>);

/// The dropout generator's current state.
pub fn dropout_state() -> DropoutState {
    DropoutState(DROPOUT.with_borrow(Clone::clone))
}

/// Put the dropout generator back to `state`, returning where it stood.
pub fn restore_dropout(state: DropoutState) -> DropoutState {
    DropoutState(DROPOUT.with_borrow_mut(|d| std::mem::replace(d, state.0)))
}

/// The next draw of the dropout generator (a mask's seed).
pub fn next_dropout_seed() -> u64 {
    DROPOUT.with_borrow_mut(|d| d.get_or_insert_with(|| SplitMix64::new(0x5EED)).next_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_sets_and_restores() {
        assert_eq!(precision(), Precision::F32);
        seed_dropout(7);
        next_dropout_seed();
        {
            let _run = enter(Precision::Bf16Autocast);
            assert_eq!(precision(), Precision::Bf16Autocast);
            seed_dropout(1);
            next_dropout_seed();
        }
        assert_eq!(precision(), Precision::F32);
        // The generator continues where the scope found it: the second draw of seed 7.
        let mut expected = SplitMix64::new(7);
        expected.next_u64();
        assert_eq!(next_dropout_seed(), expected.next_u64());
    }

    #[test]
    fn parse_names() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16Autocast);
        assert_eq!(Precision::parse("f32").unwrap(), Precision::F32);
        assert!(Precision::parse("fp8").unwrap_err().to_string().contains("fp8"));
    }
}
