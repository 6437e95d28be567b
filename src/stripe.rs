//! Per-thread stripes: shared counters split so that threads write different cache lines,
//! and, while a thread owns its stripe, counted without an atomic read-modify-write.
//!
//! A thread takes a stripe of its own on first use and gives it back when it exits. The
//! owner is then the only thread that writes that stripe's counters, so it counts with a
//! plain load and store ([`Bump::bump`]): no locked instruction, which is most of what a
//! counter costs (about 5 ns each on a common cloud VM, and a call through the whole stack
//! counts a dozen times). Readers add the stripes up with atomic loads. When every
//! ownable stripe is taken, further threads share the last stripe, which nobody owns, and
//! count there with atomic read-modify-writes: always correct, only slower.
//!
//! Ownership passes between threads through `OWNED` (released by the exiting thread,
//! acquired by the next owner), so a new owner's loads see the last owner's stores.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicIsize, AtomicU32, AtomicU64, AtomicUsize};

/// Stripes per striped counter.
pub(crate) const STRIPES: usize = 16;

/// The stripe threads share once every other one is owned; never owned.
const SHARED: u8 = (STRIPES - 1) as u8;

/// Marks an owned stripe in `STRIPE`.
const OWNED_FLAG: u8 = 0x80;

/// `STRIPE` before this thread's first use.
const UNSET: u8 = 0xff;

thread_local! {
    /// This thread's stripe, with [`OWNED_FLAG`] while the thread owns it.
    static STRIPE: Cell<u8> = const { Cell::new(UNSET) };
    /// Gives this thread's owned stripe back when the thread exits.
    static LEASE: Lease = const { Lease(Cell::new(None)) };
}

/// Stripes owned by a live thread, one bit each.
static OWNED: AtomicU32 = AtomicU32::new(0);

/// A thread's hold on its stripe, released when the thread exits.
struct Lease(Cell<Option<u8>>);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(index) = self.0.take() {
            // Whatever this thread counts from now on (in other thread-local destructors),
            // it counts as a sharer, before the stripe can have a new owner.
            let _ = STRIPE.try_with(|s| s.set(SHARED));
            OWNED.fetch_and(!(1 << index), Release);
        }
    }
}

/// A thread's stripe: its index, and whether the thread owns it.
///
/// Only true on the thread that read it, so it is neither `Send` nor `Sync`: it cannot be
/// kept across an `.await` of a `Send` future, nor handed to another thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stripe(u8, PhantomData<*const ()>);

impl Stripe {
    /// How a counter that every thread writes is written: as a sharer, atomically.
    pub(crate) const SHARER: Stripe = Stripe(SHARED, PhantomData);

    /// The stripe's index, below [`STRIPES`].
    #[inline]
    pub(crate) fn index(self) -> usize {
        usize::from(self.0 & !OWNED_FLAG)
    }

    /// Whether the calling thread is the only one that writes this stripe.
    #[inline]
    pub(crate) fn owned(self) -> bool {
        self.0 & OWNED_FLAG != 0
    }
}

/// This thread's stripe, taken on first use.
#[inline]
pub(crate) fn current() -> Stripe {
    let s = STRIPE.with(Cell::get);
    if s != UNSET {
        return Stripe(s, PhantomData);
    }
    let s = claim();
    STRIPE.with(|c| c.set(s));
    Stripe(s, PhantomData)
}

/// This thread's stripe index (see [`current`]).
#[inline]
pub(crate) fn stripe() -> usize {
    current().index()
}

/// Threads that own a stripe now (at least one, for the caller's sake).
#[inline]
pub(crate) fn owners() -> usize {
    (OWNED.load(Relaxed).count_ones() as usize).max(1)
}

/// Takes the lowest free stripe for this thread, else the shared one.
#[cold]
fn claim() -> u8 {
    let ownable = (1u32 << SHARED) - 1;
    let mut owned = OWNED.load(Relaxed);
    loop {
        let free = ownable & !owned;
        if free == 0 {
            return SHARED;
        }
        let index = free.trailing_zeros() as u8;
        match OWNED.compare_exchange_weak(owned, owned | 1 << index, Acquire, Relaxed) {
            Ok(_) => {
                // A thread already tearing down cannot hold a lease: it shares instead.
                return match LEASE.try_with(|l| l.0.set(Some(index))) {
                    Ok(()) => index | OWNED_FLAG,
                    Err(_) => {
                        OWNED.fetch_and(!(1 << index), Release);
                        SHARED
                    }
                };
            }
            Err(now) => owned = now,
        }
    }
}

/// A counter on a stripe: counted with a plain load and store by the stripe's owner, with an
/// atomic read-modify-write by a thread that shares it.
pub(crate) trait Bump {
    /// The counter's value type.
    type Value;

    /// Adds `by` (wrapping), as the thread on `stripe`; returns the previous value.
    fn bump(&self, by: Self::Value, stripe: Stripe) -> Self::Value;
}

macro_rules! bump {
    ($($atomic:ty => $value:ty),*) => {$(
        impl Bump for $atomic {
            type Value = $value;

            #[inline]
            fn bump(&self, by: $value, stripe: Stripe) -> $value {
                if stripe.owned() {
                    let old = self.load(Relaxed);
                    self.store(old.wrapping_add(by), Relaxed);
                    old
                } else {
                    self.fetch_add(by, Relaxed)
                }
            }
        }
    )*};
}

bump!(AtomicU64 => u64, AtomicUsize => usize, AtomicIsize => isize);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// A striped counter as the layers keep them: one cell per stripe.
    fn counter() -> Arc<Vec<AtomicU64>> {
        Arc::new((0..STRIPES).map(|_| AtomicU64::new(0)).collect())
    }

    fn count_on_this_thread(cells: &[AtomicU64], times: u64) {
        for _ in 0..times {
            let stripe = current();
            cells[stripe.index()].bump(1, stripe);
        }
    }

    fn total(cells: &[AtomicU64]) -> u64 {
        cells.iter().map(|c| c.load(Relaxed)).sum()
    }

    #[test]
    fn more_live_threads_than_stripes_lose_no_count() {
        const THREADS: usize = 3 * STRIPES;
        let cells = counter();
        let all_started = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (cells, all_started) = (cells.clone(), all_started.clone());
                std::thread::spawn(move || {
                    let _ = current();
                    // Every thread holds its stripe (owned or shared) before any counts.
                    all_started.wait();
                    count_on_this_thread(&cells, 20_000);
                    current().0
                })
            })
            .collect();
        // Stripes as each thread read them (a `Stripe` itself stays on its thread).
        let stripes: Vec<Stripe> = threads
            .into_iter()
            .map(|t| Stripe(t.join().unwrap(), PhantomData))
            .collect();
        assert_eq!(total(&cells), THREADS as u64 * 20_000);
        assert!(
            stripes.iter().any(|s| !s.owned()),
            "with more live threads than stripes, some share"
        );
        for owned in stripes.iter().filter(|s| s.owned()) {
            let owners = stripes.iter().filter(|s| s.0 == owned.0).count();
            assert_eq!(owners, 1, "stripe {} has one owner", owned.index());
            assert_ne!(
                owned.index(),
                usize::from(SHARED),
                "the shared stripe is never owned"
            );
        }
    }

    #[test]
    fn a_stripe_given_back_by_an_exiting_thread_keeps_its_counts_for_the_next_owner() {
        let cells = counter();
        for _ in 0..4 * STRIPES {
            let cells = cells.clone();
            std::thread::spawn(move || count_on_this_thread(&cells, 1_000))
                .join()
                .unwrap();
        }
        assert_eq!(total(&cells), 4 * STRIPES as u64 * 1_000);
    }

    #[test]
    fn a_thread_keeps_one_stripe_owned_or_else_the_shared_one() {
        let stripe = std::thread::spawn(|| {
            let first = current();
            assert_eq!(first.0, current().0, "the same stripe on every use");
            first.0
        })
        .join()
        .unwrap();
        let stripe = Stripe(stripe, PhantomData);
        // Other tests' threads may hold every ownable stripe: then this one shares, but only
        // the stripe that nobody owns.
        assert!(stripe.owned() || stripe.index() == usize::from(SHARED));
    }
}
