//! Latency histograms recorded with atomic counters: no lock, no allocation after creation.
//!
//! One set of counters serves two views of the same observations:
//!
//! - **Prometheus buckets** with fixed upper bounds suited to inference, from 1 ms to 120 s
//!   ([`BOUNDS`]), exported as a Prometheus `histogram` so latency aggregates across replicas
//!   (`histogram_quantile` over the sum of every replica's buckets);
//! - **fine log-linear buckets** (16 per power of two, so within 6.25 % of the value; the
//!   middle of a bucket is reported, within 3.2 %), from which the snapshot reads p50, p90
//!   and p99 without a server-side query.
//!
//! The fine buckets that a Prometheus bound falls inside are split at the bound, so each
//! Prometheus bucket is a sum of whole counters (exact), and a call costs one counter
//! increment, plus the sum and a read of the maximum.
//!
//! `hdrhistogram` is exact to 0.1 % but records through `&mut`, so a shared one needs a lock
//! on every call; the Prometheus client crates' histograms keep only the coarse buckets
//! (and `prometheus-client`'s takes a mutex per observation). The counters here are plain
//! `AtomicU64`s, 4.4 KiB per histogram.

use crate::stripe::{Bump, Stripe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the Prometheus buckets, in microseconds (`+Inf` is implied).
pub(crate) const BOUNDS: [u64; 17] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    150_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];

/// Sub-buckets per power of two (a power of two itself).
const SUB: u64 = 16;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// The exponent of the last power of two with fine buckets of its own: values up to
/// 2^37 - 1 µs ([`LONGEST`], about 38 hours) are kept apart.
const MAX_EXPONENT: u32 = 36;
const FINE: usize = ((MAX_EXPONENT - SUB_BITS + 2) as usize) * SUB as usize;

/// The fine bucket of `micros`: values under 16 have one each, then 16 per power of two.
#[inline]
fn fine_index(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exponent = (63 - micros.leading_zeros()).min(MAX_EXPONENT);
    if exponent == MAX_EXPONENT && micros >> MAX_EXPONENT > 1 {
        return FINE - 1;
    }
    let sub = (micros >> (exponent - SUB_BITS)) & (SUB - 1);
    ((exponent - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The smallest value in fine bucket `index`, and the bucket's width.
const fn fine_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, 1);
    }
    let exponent = index / SUB + SUB_BITS as u64 - 1;
    let width = 1u64 << (exponent - SUB_BITS as u64);
    ((SUB + index % SUB) * width, width)
}

/// For each fine bucket, `k + 1` when Prometheus bound `k` falls inside it (so that its
/// values above the bound count in slot `FINE + k` instead), else 0. Every Prometheus bucket
/// is then a sum of whole slots, exact, and one counter per call serves both views.
const CUTS: [u8; FINE] = {
    let mut cuts = [0u8; FINE];
    let mut k = 0;
    while k < BOUNDS.len() {
        let bound = BOUNDS[k];
        let mut index = 0;
        while index < FINE {
            let (low, width) = fine_range(index);
            // Split only when values on both sides of the bound share the bucket.
            if low <= bound && bound < low + width - 1 {
                cuts[index] = k as u8 + 1;
            }
            index += 1;
        }
        k += 1;
    }
    cuts
};

/// The longest observation kept as it is, 2^37 - 1 µs (about 38 hours).
pub(crate) const LONGEST: u64 = (1 << 37) - 1;

/// Counter slots: the fine buckets, then one for the part above each bound's cut.
const SLOTS: usize = FINE + BOUNDS.len();

/// One latency histogram.
pub(crate) struct Histogram {
    slots: [AtomicU64; SLOTS],
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            slots: [const { AtomicU64::new(0) }; SLOTS],
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// What a set of histograms holds, added up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Merged {
    slots: Vec<u64>,
    pub(crate) sum: Duration,
    pub(crate) max: Duration,
    pub(crate) count: u64,
}

/// The slot counting `micros`.
#[inline]
fn slot(micros: u64) -> usize {
    let fine = fine_index(micros);
    let cut = CUTS[fine] as usize;
    if cut != 0 && micros > BOUNDS[cut - 1] {
        FINE + cut - 1
    } else {
        fine
    }
}

impl Histogram {
    /// Records one observation of `micros` microseconds (at most [`LONGEST`]; longer ones
    /// count as that, so the sum cannot overflow).
    #[inline]
    pub(crate) fn record(&self, micros: u64, stripe: Stripe) {
        let micros = micros.min(LONGEST);
        self.slots[slot(micros)].bump(1, stripe);
        self.sum_micros.bump(micros, stripe);
        if micros > self.max_micros.load(Relaxed) {
            self.max_micros.fetch_max(micros, Relaxed);
        }
    }

    /// Adds this histogram's counts into `merged`.
    pub(crate) fn merge_into(&self, merged: &mut Merged) {
        if merged.slots.is_empty() {
            merged.slots = vec![0; SLOTS];
        }
        for (total, slot) in merged.slots.iter_mut().zip(&self.slots) {
            let n = slot.load(Relaxed);
            *total += n;
            merged.count += n;
        }
        merged.sum += Duration::from_micros(self.sum_micros.load(Relaxed));
        merged.max = merged
            .max
            .max(Duration::from_micros(self.max_micros.load(Relaxed)));
    }
}

impl Merged {
    /// The count of each fine bucket, the part above a cut added back.
    fn fine(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.slots.iter().take(FINE).enumerate().map(|(index, n)| {
            let cut = CUTS[index] as usize;
            let above = if cut == 0 {
                0
            } else {
                self.slots[FINE + cut - 1]
            };
            (index, n + above)
        })
    }

    /// The count per Prometheus bucket (not cumulative), the last one for `+Inf`.
    pub(crate) fn buckets(&self) -> [u64; BOUNDS.len() + 1] {
        let mut buckets = [0; BOUNDS.len() + 1];
        let bucket_of = |micros: u64| BOUNDS.partition_point(|&bound| bound < micros);
        for (index, n) in self.slots.iter().enumerate().filter(|(_, n)| **n > 0) {
            let bucket = if index < FINE {
                // Every value of the slot is in one bucket: the one of its lowest value.
                bucket_of(fine_range(index).0)
            } else {
                // Above bound `k`, within the bucket after it.
                index - FINE + 1
            };
            buckets[bucket] += n;
        }
        buckets
    }

    /// The value at quantile `q` (0 to 1): the middle of the fine bucket holding it, never
    /// above the largest value seen. Zero when nothing was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.fine() {
            seen += n;
            if seen >= rank {
                let (low, width) = fine_range(index);
                let middle = Duration::from_micros(low + width / 2);
                return middle.min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_tile_the_values_within_their_precision() {
        let mut last = None;
        for micros in (0..100_000u64).chain([1 << 35, (1 << 36) - 1, 1 << 36, u64::MAX]) {
            let index = fine_index(micros);
            assert!(index < FINE, "{micros}");
            let (low, width) = fine_range(index);
            if micros < 1 << 37 {
                assert!(
                    low <= micros && micros < low + width,
                    "{micros}: {low}+{width}"
                );
                assert!(width * SUB <= low.max(SUB), "{micros}: width {width}");
            }
            if let Some(previous) = last {
                assert!(index >= previous, "indices grow with the value");
            }
            last = Some(index);
        }
    }

    #[test]
    fn buckets_quantiles_sum_and_max() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000, Stripe::SHARER);
        }
        let mut merged = Merged::default();
        h.merge_into(&mut merged);
        assert_eq!(merged.count, 100);
        assert_eq!(merged.sum, Duration::from_millis(5_050));
        assert_eq!(merged.max, Duration::from_millis(100));
        // le = 1 ms holds 1 ms exactly; le = 100 ms holds 51..=100 ms after 25 and 50.
        assert_eq!(merged.buckets()[0], 1);
        let cumulative: Vec<u64> = merged
            .buckets()
            .iter()
            .scan(0, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect();
        assert_eq!(
            cumulative[BOUNDS.iter().position(|&b| b == 100_000).unwrap()],
            100
        );
        assert_eq!(
            cumulative[BOUNDS.iter().position(|&b| b == 50_000).unwrap()],
            50
        );
        for (q, exact) in [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = merged.quantile(q).as_secs_f64() * 1e3;
            assert!(
                (got - exact).abs() / exact < 0.035,
                "p{q}: {got} vs {exact}"
            );
        }
        assert_eq!(Merged::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn prometheus_buckets_are_exact_at_every_bound() {
        let h = Histogram::default();
        for bound in BOUNDS {
            h.record(bound - 1, Stripe::SHARER);
            h.record(bound, Stripe::SHARER);
            h.record(bound + 1, Stripe::SHARER);
        }
        h.record(u64::MAX, Stripe::SHARER);
        let mut merged = Merged::default();
        h.merge_into(&mut merged);
        let buckets = merged.buckets();
        // At most 1 ms: 999 and 1000 µs. Each later bucket: the value just above the bound
        // before it, and the two at most its own bound.
        assert_eq!(buckets[0], 2);
        for bucket in &buckets[1..BOUNDS.len()] {
            assert_eq!(*bucket, 3);
        }
        assert_eq!(buckets[BOUNDS.len()], 2, "above 120 s");
        assert_eq!(merged.count, 3 * BOUNDS.len() as u64 + 1);
        // The split buckets still read as one for the percentiles.
        assert_eq!(merged.max, Duration::from_micros(LONGEST), "clamped");
        // The smallest, 999 µs, reads as the middle of its fine bucket (992 to 1 023 µs).
        assert_eq!(merged.quantile(0.0), Duration::from_micros(1_008));
    }
}
