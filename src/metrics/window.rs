//! Windowed error rates: a ring of fixed-size time buckets per error kind, updated lock-free.

use crate::ring::PeriodRing;

/// Buckets of 10 s; 360 of them span the longest window, one hour.
pub(crate) const BUCKET_SECS: u64 = 10;
const BUCKETS: usize = 360;

/// Counts per 10-second bucket over the last hour.
pub(crate) type RateRing = PeriodRing<BUCKETS>;

/// Errors per minute over the last 1, 5 and 60 minutes; a window longer than the time its
/// stage has existed is divided by that time (at least a minute), not by the window's length,
/// so rates read right from the start.
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
    /// The rates in `ring` at period `now`, for a stage that has existed for `covered`
    /// periods (the current one included).
    pub(crate) fn of(ring: &RateRing, now: u32, covered: u32) -> Self {
        let minute = (60 / BUCKET_SECS) as u32;
        let per = |minutes: u32| {
            let periods = minutes * minute;
            let spanned = periods.min(covered).max(minute);
            ring.sum(now, periods, None) as f64 * f64::from(minute) / f64::from(spanned)
        };
        Rates {
            per_minute_1m: per(1),
            per_minute_5m: per(5),
            per_minute_1h: per(60),
        }
    }
}
