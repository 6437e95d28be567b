//! Backend calls counted across layers, for [`Provenance::attempts`](crate::Provenance).
//!
//! A retry layer that gives up returns only the last error, so the number of calls it made
//! would be lost to a fallback layer above it. While a fallback layer polls a tier, it opens a
//! tally on its thread ([`Counted`]); a retry layer that gives up inside that poll adds its
//! calls to it ([`report`]). Outside a tally, reporting does nothing. Tallies nest: each poll
//! saves the enclosing one and restores it after.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

thread_local! {
    static TALLY: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Adds `calls` backend calls to the tally open on this thread, if any.
#[inline]
pub(crate) fn report(calls: u32) {
    TALLY.with(|tally| {
        if let Some(n) = tally.get() {
            tally.set(Some(n.saturating_add(calls)));
        }
    });
}

/// Restores the enclosing tally when a poll ends, even by a panic.
struct Restore(Option<u32>);

impl Drop for Restore {
    fn drop(&mut self) {
        TALLY.with(|tally| tally.set(self.0));
    }
}

pin_project! {
    /// A future whose polls count the backend calls reported inside them.
    pub(crate) struct Counted<F> {
        #[pin]
        fut: F,
        reported: u32,
    }
}

impl<F> Counted<F> {
    pub(crate) fn new(fut: F) -> Self {
        Counted { fut, reported: 0 }
    }
}

impl<F: Future> Future for Counted<F> {
    /// The future's output and the calls reported while it ran (0 when nothing reported).
    type Output = (F::Output, u32);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let restore = Restore(TALLY.with(|tally| tally.replace(Some(0))));
        let poll = this.fut.poll(cx);
        let reported = TALLY.with(|tally| tally.get()).unwrap_or(0);
        drop(restore);
        *this.reported = this.reported.saturating_add(reported);
        poll.map(|out| (out, *this.reported))
    }
}

/// Backend calls a tier made when it failed with `kind`: what it reported, else one, or none
/// when an open breaker refused the call.
pub(crate) fn failed_calls(reported: u32, kind: crate::ErrorKind) -> u32 {
    match (reported, kind) {
        (0, crate::ErrorKind::CircuitOpen) => 0,
        (0, _) => 1,
        (n, _) => n,
    }
}
