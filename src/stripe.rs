//! Per-thread stripes: shared counters split so that threads write different cache lines.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Stripes per striped counter; threads beyond this many share stripes (still correct, just
/// contended).
pub(crate) const STRIPES: usize = 16;

thread_local! {
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe, handed out round-robin on first use.
#[inline]
pub(crate) fn stripe() -> usize {
    STRIPE.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
            s.set(Some(i));
            i
        }
    })
}
