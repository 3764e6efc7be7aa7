//! Settings of the host allocator (mimalloc, the global allocator of the `finetune` binary and of
//! `finetune-bench`).

/// mimalloc's `mi_option_purge_decommits` (its `mimalloc.h`, enum `mi_option_e`).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Let mimalloc purge freed memory with `MADV_FREE` (a "reset") instead of decommitting it.
///
/// A training step frees and allocates the same large activation buffers again every second or
/// so. Decommitted pages come back as page faults and kernel-zeroed pages on their next use:
/// ~93,000 faults in a 9-step MiniLM full fine-tuning run and 5–7% of the step in
/// `clear_page_erms`. Reset pages stay mapped until the kernel needs the memory, so reuse costs
/// nothing: ~9,000 faults, 11–14% less time per full step, peak RSS +3% (reset pages still count
/// until reclaimed). docs/BENCHMARKS.md, "Performance levers, round 3".
pub fn reuse_freed_pages() {
    // SAFETY: setting an option is allowed at any time; mimalloc reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is purge_decommits': on by default (1), off once set here.
    #[test]
    fn purge_option_is_set() {
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DECOMMITS) };
        assert!(before == 1 || before == 0, "option 5 is not mimalloc's purge_decommits (value {before})");
        reuse_freed_pages();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DECOMMITS) }, 0);
    }
}
