//! Named points where a test can make the process die as `kill -9` would, to check that a run
//! killed at the worst moment (mid-accumulation, mid-checkpoint, mid-export) resumes exactly.
//!
//! `FINETUNE_FAILPOINT=<name>[@<n>]` aborts the process (no destructors, no flushing) the `n`th
//! time (default: first) execution reaches [`hit`]`(name)`. Unset, a hit costs one atomic load.
//! Polling a child process and killing it cannot aim at a window a few microseconds wide; this
//! can, deterministically. Used by `tests/integration/training.rs`; see docs/RELIABILITY.md.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static ARMED: OnceLock<Option<(String, usize)>> = OnceLock::new();
static HITS: AtomicUsize = AtomicUsize::new(0);

/// Die here if the environment says so.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("FINETUNE_FAILPOINT").ok()?;
        let (point, n) = match spec.split_once('@') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = armed
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("failpoint {name}@{n}: aborting");
        std::process::abort();
    }
}
