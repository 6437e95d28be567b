//! Windowed error rates: a ring of fixed-size time buckets per error kind, updated lock-free.

use crate::ring::PeriodRing;

/// Buckets of 10 s; 360 of them span the longest window, one hour.
pub(crate) const BUCKET_SECS: u64 = 10;
const BUCKETS: usize = 360;

/// Counts per 10-second bucket over the last hour.
pub(crate) type RateRing = PeriodRing<BUCKETS>;

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
            ring.sum(now, periods, None) as f64 / minutes as f64
        };
        Rates {
            per_minute_1m: per(1),
            per_minute_5m: per(5),
            per_minute_1h: per(60),
        }
    }
}
