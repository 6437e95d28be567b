//! Windowed error rates: a ring of fixed-size time buckets per error kind, updated lock-free.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buckets of 10 s; 360 of them span the longest window, one hour.
pub(crate) const BUCKET_SECS: u64 = 10;
const BUCKETS: usize = 360;

/// Counts per 10-second bucket over the last hour, each bucket packed as
/// `period << 32 | count` so rotating and counting are single atomic operations.
pub(crate) struct RateRing {
    buckets: Box<[AtomicU64]>,
}

impl Default for RateRing {
    fn default() -> Self {
        RateRing {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RateRing {
    /// Counts one event in `period` (10-second periods since the collector started, plus 1).
    pub(crate) fn add(&self, period: u32) {
        let cell = &self.buckets[period as usize % BUCKETS];
        let mut current = cell.load(Relaxed);
        loop {
            if (current >> 32) as u32 >= period {
                cell.fetch_add(1, Relaxed);
                return;
            }
            match cell.compare_exchange_weak(
                current,
                (u64::from(period) << 32) | 1,
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Events in the `periods` periods up to and including `now`.
    pub(crate) fn sum(&self, now: u32, periods: u32) -> u64 {
        self.buckets
            .iter()
            .map(|cell| cell.load(Relaxed))
            .filter(|word| {
                let p = (word >> 32) as u32;
                p != 0 && p <= now && now - p < periods
            })
            .map(|word| word & u64::from(u32::MAX))
            .sum()
    }
}

/// Errors per minute over the last 1, 5 and 60 minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    /// Errors per minute over the last minute.
    pub per_minute_1m: f64,
    /// Errors per minute over the last 5 minutes.
    pub per_minute_5m: f64,
    /// Errors per minute over the last hour.
    pub per_minute_1h: f64,
}

impl Rates {
    pub(crate) fn of(ring: &RateRing, now: u32) -> Self {
        let per = |minutes: u64| {
            let periods = (minutes * 60 / BUCKET_SECS) as u32;
            ring.sum(now, periods) as f64 / minutes as f64
        };
        Rates {
            per_minute_1m: per(1),
            per_minute_5m: per(5),
            per_minute_1h: per(60),
        }
    }
}
