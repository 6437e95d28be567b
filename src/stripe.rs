//! Per-thread stripes: shared counters split so that threads write different cache lines.

use std::cell::Cell;
use std::sync::Arc;
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

/// What a layer's response futures share, owned by one thread's stripe and on cache lines of
/// its own.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Homed<T> {
    home: usize,
    value: T,
}

impl<T> Homed<T> {
    pub(crate) fn new(value: T) -> Self {
        Homed {
            home: stripe(),
            value,
        }
    }
}

impl<T> std::ops::Deref for Homed<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A service's handle on what its response futures share.
///
/// Each response future holds an `Arc` of it, so its reference count is written twice a call.
/// Shared by every clone of a service, that count would be one cache line that all threads
/// calling the service contend on; one per clone, every clone would allocate (and a retry
/// layer clones the services under it on every call). So clones made on the `Arc`'s home
/// thread share it, and a clone made, or a service called, on another thread makes a new one
/// there first: calls never allocate on the thread a service lives on, and never share a
/// count with calls on another thread.
#[derive(Debug)]
pub(crate) struct PerThread<T>(Arc<Homed<T>>);

impl<T> PerThread<T> {
    pub(crate) fn new(value: T) -> Self {
        PerThread(Arc::new(Homed::new(value)))
    }

    /// The shared part for a future made on this thread.
    #[inline]
    pub(crate) fn here(&mut self) -> &Arc<Homed<T>>
    where
        T: Clone,
    {
        let stripe = stripe();
        if self.0.home != stripe {
            self.0 = Arc::new(Homed {
                home: stripe,
                value: self.0.value.clone(),
            });
        }
        &self.0
    }
}

impl<T: Clone> Clone for PerThread<T> {
    /// Shares the `Arc` when cloned on its home thread, else makes one homed here (a clone is
    /// usually called where it is made: a retry layer clones its inner service per call).
    fn clone(&self) -> Self {
        if self.0.home == stripe() {
            PerThread(self.0.clone())
        } else {
            PerThread::new(self.0.value.clone())
        }
    }
}

impl<T> std::ops::Deref for PerThread<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0.value
    }
}
