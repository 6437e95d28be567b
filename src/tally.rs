//! Backend calls counted across layers, for [`Provenance::attempts`](crate::Provenance).
//!
//! A retry layer that gives up returns only the last error, so the number of calls it made
//! would be lost to a fallback layer above it. While a fallback layer polls a tier, it counts
//! ([`Counted`]) the calls that a retry layer giving up inside that poll adds to its thread's
//! running total ([`report`]). Tallies nest: each poll puts the total back as it found it, so
//! the calls counted inside one are not counted again by the one around it.
//!
//! Nothing is held across the inner poll (no guard, no wrapped output), so the compiler
//! neither moves the polled future's output once more nor keeps a destructor on the path. A
//! poll that panics leaves the total where the panic found it: a later tally reads only the
//! change over its own poll, so it is not miscounted, and a tally around one whose poll
//! panicked (the panic caught between them) counts the calls reported before the panic,
//! which were made.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

thread_local! {
    /// Calls reported on this thread, wrapping: tallies read differences.
    static REPORTED: Cell<u32> = const { Cell::new(0) };
}

/// Adds `calls` backend calls to this thread's running total, which the tally open on the
/// thread, if any, counts.
#[inline]
pub(crate) fn report(calls: u32) {
    REPORTED.with(|total| total.set(total.get().wrapping_add(calls)));
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

    /// The calls reported while the future ran (0 when nothing reported).
    pub(crate) fn reported(&self) -> u32 {
        self.reported
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let before = REPORTED.with(Cell::get);
        let poll = this.fut.poll(cx);
        REPORTED.with(|total| {
            let reported = total.replace(before).wrapping_sub(before);
            *this.reported = this.reported.saturating_add(reported);
        });
        poll
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Waker;

    /// A future that reports `calls` when polled, then is ready.
    fn reporting(calls: u32) -> impl Future<Output = ()> {
        poll_fn(move |_| {
            report(calls);
            Poll::Ready(())
        })
    }

    fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_tally_counts_what_was_reported_inside_its_polls_only() {
        report(7); // outside any tally: counted by none
        let mut polls = 0;
        let mut outer = std::pin::pin!(Counted::new(poll_fn(|_| {
            polls += 1;
            report(2);
            if polls < 3 {
                Poll::Pending
            } else {
                Poll::Ready("answer")
            }
        })));
        assert!(poll_once(outer.as_mut()).is_pending());
        report(5);
        assert!(poll_once(outer.as_mut()).is_pending());
        assert_eq!(poll_once(outer.as_mut()), Poll::Ready("answer"));
        assert_eq!(outer.reported(), 6, "three polls reporting two each");
    }

    #[test]
    fn nested_tallies_each_keep_their_own_calls() {
        let mut outer = std::pin::pin!(Counted::new(async {
            report(1);
            let mut inner = std::pin::pin!(Counted::new(reporting(4)));
            (&mut inner).await;
            report(2);
            inner.reported()
        }));
        assert_eq!(poll_once(outer.as_mut()), Poll::Ready(4));
        assert_eq!(
            outer.reported(),
            3,
            "the inner tally's calls are not counted twice"
        );
    }

    /// Polls a tally whose future reports `calls` and then panics; catches the panic.
    fn poll_a_tier_that_panics(calls: u32) {
        let caught = std::panic::catch_unwind(|| {
            let mut tier = std::pin::pin!(Counted::new(poll_fn(|_| -> Poll<()> {
                report(calls);
                panic!("a tier that panics")
            })));
            let _ = poll_once(tier.as_mut());
        });
        assert!(caught.is_err());
    }

    #[test]
    fn a_poll_that_panicked_leaves_no_calls_to_a_later_tally() {
        poll_a_tier_that_panics(9);
        let mut later = std::pin::pin!(Counted::new(reporting(1)));
        assert_eq!(poll_once(later.as_mut()), Poll::Ready(()));
        assert_eq!(later.reported(), 1);
    }

    #[test]
    fn a_tally_around_a_poll_that_panicked_counts_the_calls_made_before_it() {
        let mut outer = std::pin::pin!(Counted::new(poll_fn(|_| {
            report(1);
            poll_a_tier_that_panics(3);
            Poll::Ready(())
        })));
        assert_eq!(poll_once(outer.as_mut()), Poll::Ready(()));
        assert_eq!(outer.reported(), 4);
    }
}
