//! Clock readings shared by the timing layers of one stack.
//!
//! Reading the clock costs about 25 ns on a common cloud VM. A whole stack times one call at
//! several stages (the edge and backend metrics stages, the breaker's slow-call check and
//! time window, degrade's latency signal), yet a call that is answered has only two moments:
//! when it was called and when its answer came back. Layers therefore take their readings
//! here, and each moment is read once:
//!
//! - **Start.** A timing layer clears this thread's start reading ([`calling`]), calls the
//!   service it wraps, then takes the reading ([`called`]): the one a timing layer inside
//!   took in that call, else a new one, left for the timing layers around it.
//! - **End.** Likewise around a poll ([`polling`], [`polled`]): the first timing layer to
//!   see its inner future finish reads the clock; layers around it, finishing in the same
//!   poll, use that reading. A layer that goes on to other work after something finished
//!   (retry, fallback: [`moved_on`]) drops it.
//!
//! Readings are cleared before the inner call or poll, never by a guard after it: a panic
//! leaves nothing that a later reader could take, and nothing live across the inner call
//! makes the compiler move its (large) future or output once more. Results are never
//! wrapped with their reading, for the same reason.
//!
//! What this approximates: work a layer between two timing layers does synchronously in
//! `call` or in `poll` after its inner call or future returned is not counted by the outer
//! timing layer. Tower services do their work in futures, and the layers of this crate that
//! go on to more work say so, so in practice the readings agree to a few nanoseconds.
//! Readings come from [`tokio::time::Instant`], so paused time applies.

use std::cell::Cell;
use tokio::time::Instant;

thread_local! {
    /// The reading taken when the innermost timing layer's call started, since the last
    /// `calling`.
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The reading taken when the innermost timing layer's future finished in this poll.
    static FINISHED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Clears this thread's start reading before a timing layer calls inward, so that only a
/// reading taken inside that call can be reused by [`called`].
#[inline]
pub(crate) fn calling() {
    STARTED.with(|s| s.set(None));
}

/// The moment the call made since [`calling`] started: the reading a timing layer inside it
/// took, else a new one, then shared with the timing layers around this one.
#[inline]
pub(crate) fn called() -> Instant {
    STARTED.with(reuse_or_read)
}

/// Clears this thread's end reading before a timing layer polls inward, so that only a
/// reading taken inside that poll can be reused by [`polled`].
#[inline]
pub(crate) fn polling() {
    FINISHED.with(|f| f.set(None));
}

/// The moment the future polled since [`polling`] finished: the reading a timing layer
/// inside it took in that poll, else a new one, then shared with the timing layers around
/// this one. Call it only when the inner future is ready.
#[inline]
pub(crate) fn polled() -> Instant {
    FINISHED.with(reuse_or_read)
}

/// Drops this poll's end reading: the caller goes on to other work (another attempt or
/// tier), so the moment something finished earlier in the poll is no longer "now".
#[inline]
pub(crate) fn moved_on() {
    polling();
}

/// The reading in `cell`, else a new one left there.
#[inline]
fn reuse_or_read(cell: &Cell<Option<Instant>>) -> Instant {
    cell.get().unwrap_or_else(|| {
        let now = Instant::now();
        cell.set(Some(now));
        now
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A timing layer's `call` around `inner`.
    fn timed_call<R>(inner: impl FnOnce() -> R) -> (Instant, R) {
        calling();
        let out = inner();
        (called(), out)
    }

    #[tokio::test(start_paused = true)]
    async fn nested_calls_share_the_innermost_start_reading() {
        let (outer, (inner, ())) = timed_call(|| timed_call(|| ()));
        assert_eq!(outer, inner);
        tokio::time::advance(Duration::from_millis(5)).await;
        let (later, ()) = timed_call(|| ());
        assert_eq!(
            later - outer,
            Duration::from_millis(5),
            "a later call reads anew"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leftover_start_reading_is_never_reused() {
        // What a call that panicked between its inner call and `called` leaves behind.
        let call = || {
            calling();
            STARTED.with(|s| s.set(Some(Instant::now())));
            panic!("a panicking call")
        };
        assert!(std::panic::catch_unwind(call).is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        let (at, ()) = timed_call(|| ());
        assert_eq!(at, Instant::now(), "read anew, not the leftover");
    }

    /// A timing layer's poll of `inner`, which is ready.
    fn timed_poll<R>(inner: impl FnOnce() -> R) -> (Instant, R) {
        polling();
        let out = inner();
        (polled(), out)
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_reading_is_shared_outward_within_one_poll_only() {
        let (outer, (inner, ())) = timed_poll(|| timed_poll(|| ()));
        assert_eq!(inner, outer, "one reading for both");
        tokio::time::advance(Duration::from_millis(4)).await;
        let (later, ()) = timed_poll(|| ());
        assert_eq!(
            later - outer,
            Duration::from_millis(4),
            "a later poll reads anew"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_moving_on_the_layers_around_read_anew() {
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(3)).await;
        let (outer, ()) = timed_poll(|| {
            // An inner timing layer finished earlier in this poll; then the layer in between
            // went on to another tier.
            FINISHED.with(|f| f.set(Some(before)));
            moved_on();
        });
        assert_eq!(outer - before, Duration::from_millis(3));
    }
}
