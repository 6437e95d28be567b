//! Load signals: in-flight requests, latency, and external probes, each a load in `0..=1`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::*};
use std::time::Duration;

use tokio::time::Instant;

use crate::stripe::{self, Bump, STRIPES};

/// A probe of some external load, such as GPU memory or utilisation, in `0..=1`.
pub(crate) struct Probe {
    read: Arc<dyn Fn() -> f64 + Send + Sync>,
    interval_nanos: u64,
    value: AtomicU64,
    sampled_at: AtomicU64,
    sampled: AtomicBool,
}

impl Probe {
    pub(crate) fn new(interval: Duration, read: Arc<dyn Fn() -> f64 + Send + Sync>) -> Self {
        Probe {
            read,
            interval_nanos: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            value: AtomicU64::new(0f64.to_bits()),
            sampled_at: AtomicU64::new(0),
            sampled: AtomicBool::new(false),
        }
    }

    /// The probe's load, read anew only when the last reading is `interval` old; meanwhile
    /// every call uses the last reading. One caller wins the right to read.
    fn load(&self, now_nanos: u64) -> f64 {
        let last = self.sampled_at.load(Acquire);
        let due =
            !self.sampled.load(Acquire) || now_nanos.saturating_sub(last) >= self.interval_nanos;
        if due
            && self
                .sampled_at
                .compare_exchange(last, now_nanos, AcqRel, Relaxed)
                .is_ok()
        {
            self.value.store(unit((self.read)()).to_bits(), Relaxed);
            self.sampled.store(true, Release);
        }
        f64::from_bits(self.value.load(Relaxed))
    }
}

/// A load clamped to `0..=1`; NaN is no load.
pub(crate) fn unit(load: f64) -> f64 {
    if load.is_nan() {
        0.0
    } else {
        load.clamp(0.0, 1.0)
    }
}

/// A thread's share of the in-flight count.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    /// Calls entered here minus calls that left here (a call leaves on the thread it
    /// finishes on, which may be another stripe's, so one stripe can go below zero; the sum
    /// cannot). Written only by the stripe's thread while it owns the stripe.
    in_flight: AtomicIsize,
    /// The other stripes' sum, as last read by this stripe's thread.
    others: AtomicIsize,
    /// Calls entered here, to pace the reading of the other stripes.
    calls: AtomicUsize,
}

/// A thread re-reads the other threads' in-flight counts once every this many calls.
const REFRESH_EVERY: usize = 16;

/// The signals of one degrade layer, combined by their maximum.
pub(crate) struct Signals {
    pub(crate) capacity: Option<usize>,
    stripes: Box<[Stripe]>,
    pub(crate) latency_target: Option<Duration>,
    pub(crate) latency_alpha: f64,
    /// EWMA of call latency in seconds, as `f64` bits.
    latency_ewma: AtomicU64,
    pub(crate) probes: Vec<Probe>,
    origin: Instant,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("capacity", &self.capacity)
            .field("latency_target", &self.latency_target)
            .field("probes", &self.probes.len())
            .finish()
    }
}

impl Signals {
    pub(crate) fn new(
        capacity: Option<usize>,
        latency_target: Option<Duration>,
        latency_alpha: f64,
        probes: Vec<Probe>,
    ) -> Self {
        Signals {
            capacity,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            latency_target,
            latency_alpha,
            latency_ewma: AtomicU64::new(0f64.to_bits()),
            probes,
            origin: Instant::now(),
        }
    }

    /// Counts a call in; returns the in-flight count it sees, itself included.
    ///
    /// The count is exact for calls from one thread; another thread's calls are seen as of
    /// this thread's last refresh, at most 16 of its calls ago. Each thread writes only its own
    /// cache line, so counting does not make threads contend.
    #[inline]
    pub(crate) fn enter(&self) -> usize {
        let stripe = stripe::current();
        let index = stripe.index();
        let own = &self.stripes[index];
        let mine = own.in_flight.bump(1, stripe) + 1;
        let others = if own.calls.bump(1, stripe).is_multiple_of(REFRESH_EVERY) {
            let others = self.sum_except(Some(index));
            own.others.store(others, Relaxed);
            others
        } else {
            own.others.load(Relaxed)
        };
        usize::try_from(mine + others).unwrap_or(0)
    }

    /// Counts a call out, on this thread's stripe (which need not be the one it entered on:
    /// only the sum of the stripes means anything).
    #[inline]
    pub(crate) fn leave(&self) {
        let stripe = stripe::current();
        self.stripes[stripe.index()].in_flight.bump(-1, stripe);
    }

    /// Calls in flight now, read from every stripe.
    pub(crate) fn in_flight(&self) -> usize {
        usize::try_from(self.sum_except(None)).unwrap_or(0)
    }

    fn sum_except(&self, skip: Option<usize>) -> isize {
        self.stripes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, s)| s.in_flight.load(Relaxed))
            .sum()
    }

    /// Whether calls need their start time (for the latency signal).
    pub(crate) fn timed(&self) -> bool {
        self.latency_target.is_some()
    }

    /// The combined load, counting `in_flight` requests through the layer.
    pub(crate) fn load(&self, in_flight: usize) -> f64 {
        let mut load = match self.capacity {
            Some(capacity) => unit(in_flight as f64 / capacity.max(1) as f64),
            None => 0.0,
        };
        if let Some(target) = self.latency_target {
            let ewma = f64::from_bits(self.latency_ewma.load(Relaxed));
            load = load.max(unit(ewma / target.as_secs_f64().max(f64::MIN_POSITIVE)));
        }
        if !self.probes.is_empty() {
            let now = self.nanos();
            for probe in &self.probes {
                load = load.max(probe.load(now));
            }
        }
        load
    }

    pub(crate) fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Folds one call's latency into the moving average.
    pub(crate) fn record_latency(&self, latency: Duration) {
        let sample = latency.as_secs_f64();
        let alpha = self.latency_alpha;
        let _ = self.latency_ewma.fetch_update(Relaxed, Relaxed, |bits| {
            let ewma = f64::from_bits(bits);
            Some((ewma + alpha * (sample - ewma)).to_bits())
        });
    }
}
