//! A ring of counters by time period, updated lock-free: the retry budget's deposits and
//! withdrawals and the metrics' error rates both count events in the periods of a window.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::stripe::{Bump, Stripe};

/// `N` counters, each packed as `period << 32 | count`, so moving a counter on to a new period
/// and counting in it are single atomic operations. Period 0 means "never written"; periods
/// are numbered from 1.
pub(crate) struct PeriodRing<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for PeriodRing<N> {
    fn default() -> Self {
        PeriodRing([const { AtomicU64::new(0) }; N])
    }
}

/// Packs a period and a count into one counter word.
pub(crate) fn pack(period: u32, count: u64) -> u64 {
    (u64::from(period) << 32) | count
}

/// The period of a counter word.
pub(crate) fn period_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The count of a counter word.
pub(crate) fn count_of(word: u64) -> u64 {
    word & u64::from(u32::MAX)
}

impl<const N: usize> PeriodRing<N> {
    /// The counter that `period` counts in.
    pub(crate) fn cell(&self, period: u32) -> &AtomicU64 {
        &self.0[period as usize % N]
    }

    /// The index of the counter that `period` counts in.
    pub(crate) fn index(period: u32) -> usize {
        period as usize % N
    }

    /// Counts one event in `period`, in a ring every thread writes.
    pub(crate) fn add(&self, period: u32) {
        self.add_on(period, Stripe::SHARER);
    }

    /// Counts one event in `period`, in a ring that only the threads on `stripe` write.
    #[inline]
    pub(crate) fn add_on(&self, period: u32, stripe: Stripe) {
        let cell = self.cell(period);
        let mut current = cell.load(Relaxed);
        loop {
            let bucket = period_of(current);
            // A counter already moved on past `period` (by a thread with a fresher clock
            // reading) takes the count as it is, rather than being wound back.
            if bucket == period || (bucket != 0 && bucket.wrapping_sub(period) < u32::MAX / 2) {
                cell.bump(1, stripe);
                return;
            }
            match cell.compare_exchange_weak(current, pack(period, 1), Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Events in the `periods` periods up to and including `now`, leaving out the counter
    /// at index `skip`, if any.
    pub(crate) fn sum(&self, now: u32, periods: u32, skip: Option<usize>) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, cell)| cell.load(Relaxed))
            .filter(|&word| {
                let bucket = period_of(word);
                bucket != 0 && now.wrapping_sub(bucket) < periods
            })
            .map(count_of)
            .sum()
    }
}
