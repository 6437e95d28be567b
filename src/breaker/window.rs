//! Sliding windows of call outcomes, updated without a lock.
//!
//! The count-based window is a ring of one byte per call plus two counters. A success that
//! lands in a window already full of successes changes nothing, so it is not written at all:
//! the healthy closed path only reads shared memory and two cores never fight over a cache line.
//!
//! The time-based window is a ring of buckets with atomic counters; only moving on to a new
//! bucket (once per bucket span) takes a lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

use tokio::time::Instant;

/// One recorded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Sample {
    fn is_clean(self) -> bool {
        !self.failure && !self.slow
    }

    fn encode(self) -> u8 {
        RECORDED | (u8::from(self.failure) << 1) | (u8::from(self.slow) << 2)
    }
}

const RECORDED: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

/// What a window holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

pub(crate) enum SlidingWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

impl std::fmt::Debug for SlidingWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlidingWindow::Count(w) => write!(f, "CountWindow({})", w.slots.len()),
            SlidingWindow::Time(w) => write!(f, "TimeWindow({} buckets)", w.buckets.len()),
        }
    }
}

impl SlidingWindow {
    pub(crate) fn count(size: u32) -> Self {
        SlidingWindow::Count(CountWindow {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        })
    }

    pub(crate) fn time(duration: Duration, buckets: u32, origin: Instant) -> Self {
        let buckets = buckets.max(1);
        let span = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        SlidingWindow::Time(TimeWindow {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            bucket_nanos: (span / u64::from(buckets)).max(1),
            origin,
            rotate: Mutex::new(()),
        })
    }

    /// Whether the window needs the time of each call.
    pub(crate) fn is_timed(&self) -> bool {
        matches!(self, SlidingWindow::Time(_))
    }

    /// Records a call; returns the counts after it, or `None` if nothing could change.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, now: Option<Instant>) -> Option<Counts> {
        match self {
            SlidingWindow::Count(w) => w.record(sample),
            SlidingWindow::Time(w) => Some(w.record(sample, now.unwrap_or_else(Instant::now))),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        match self {
            SlidingWindow::Count(w) => w.counts(),
            SlidingWindow::Time(w) => w.counts(Instant::now()),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            SlidingWindow::Count(w) => w.reset(),
            SlidingWindow::Time(w) => w.reset(),
        }
    }
}

pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    /// Failures and slow calls in the ring. Updated after the slot swap, so a racing reader
    /// may see one too few for a moment (never too many: a window never opens early).
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn size(&self) -> u64 {
        self.slots.len() as u64
    }

    #[inline]
    fn record(&self, sample: Sample) -> Option<Counts> {
        if sample.is_clean()
            && self.failures.load(Relaxed) == 0
            && self.slow.load(Relaxed) == 0
            && self.head.load(Relaxed) >= self.size()
        {
            // A success evicting a success from a full window of successes.
            return None;
        }
        let index = self.head.fetch_add(1, Relaxed) % self.size();
        let old = self.slots[index as usize].swap(sample.encode(), Relaxed);
        adjust(&self.failures, old & FAILURE != 0, sample.failure);
        adjust(&self.slow, old & SLOW != 0, sample.slow);
        Some(self.counts())
    }

    fn counts(&self) -> Counts {
        Counts {
            calls: self.head.load(Relaxed).min(self.size()) as u32,
            failures: clamp_transient(self.failures.load(Relaxed)),
            slow: clamp_transient(self.slow.load(Relaxed)),
        }
    }

    fn reset(&self) {
        self.head.store(0, Relaxed);
        for slot in self.slots.iter() {
            slot.store(0, Relaxed);
        }
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Relaxed);
        }
        (true, false) => {
            counter.fetch_sub(1, Relaxed);
        }
        _ => {}
    }
}

/// A counter that a racing decrement took below zero for a moment reads as zero.
fn clamp_transient(value: u32) -> u32 {
    if value > u32::MAX / 2 { 0 } else { value }
}

#[derive(Default)]
struct Bucket {
    /// The bucket's period number plus one; zero when empty.
    period: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
    origin: Instant,
    rotate: Mutex<()>,
}

impl TimeWindow {
    fn period(&self, now: Instant) -> u64 {
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        nanos / self.bucket_nanos + 1
    }

    fn record(&self, sample: Sample, now: Instant) -> Counts {
        let period = self.period(now);
        let bucket = &self.buckets[(period % self.buckets.len() as u64) as usize];
        let current = bucket.period.load(Acquire);
        if current != period {
            if current > period {
                // A call from a period the window has already moved past.
                return self.counts(now);
            }
            let _guard = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
            if bucket.period.load(Acquire) != period {
                bucket.calls.store(0, Relaxed);
                bucket.failures.store(0, Relaxed);
                bucket.slow.store(0, Relaxed);
                bucket.period.store(period, Release);
            }
        }
        bucket.calls.fetch_add(1, Relaxed);
        if sample.failure {
            bucket.failures.fetch_add(1, Relaxed);
        }
        if sample.slow {
            bucket.slow.fetch_add(1, Relaxed);
        }
        self.counts(now)
    }

    fn counts(&self, now: Instant) -> Counts {
        let period = self.period(now);
        let oldest = period.saturating_sub(self.buckets.len() as u64 - 1);
        let mut counts = Counts::default();
        for bucket in self.buckets.iter() {
            let p = bucket.period.load(Acquire);
            if p >= oldest && p <= period && p != 0 {
                counts.calls = counts.calls.saturating_add(bucket.calls.load(Relaxed));
                counts.failures = counts
                    .failures
                    .saturating_add(bucket.failures.load(Relaxed));
                counts.slow = counts.slow.saturating_add(bucket.slow.load(Relaxed));
            }
        }
        counts
    }

    fn reset(&self) {
        let _guard = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
        for bucket in self.buckets.iter() {
            bucket.period.store(0, Release);
        }
    }
}
