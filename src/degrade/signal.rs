//! Load signals: in-flight requests, latency, and external probes, each a load in `0..=1`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering::*};
use std::time::Duration;

use tokio::time::Instant;

use crate::stripe::{self, STRIPES};

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

/// A thread's share of the in-flight count, written only by the thread that owns the stripe.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    /// Calls entered here minus calls that left here (a call leaves on the thread it
    /// finishes on, which may be another stripe's, so one stripe can go below zero; the sum
    /// cannot).
    in_flight: AtomicIsize,
    /// The part of `in_flight` already added to the shared total.
    published: AtomicIsize,
}

/// The in-flight total every thread reads, on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Total(AtomicIsize);

/// The count a call sees is within this share of the capacity of the exact one.
const ERROR_SHARE: usize = 16;

/// Threads that can own a stripe (and so hold part of their count back from the total).
const OWNERS: usize = STRIPES - 1;

/// The signals of one degrade layer, combined by their maximum.
pub(crate) struct Signals {
    pub(crate) capacity: Option<usize>,
    stripes: Box<[Stripe]>,
    total: Total,
    /// What the threads that own a stripe may hold back from the total, together: a
    /// `1 / ERROR_SHARE` of the capacity, shared equally between them.
    held_back: usize,
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
            stripes: (0..OWNERS).map(|_| Stripe::default()).collect(),
            total: Total::default(),
            // With no capacity the count is only read by `in_flight`, which sums every stripe.
            held_back: capacity.map_or(usize::MAX, |c| c / ERROR_SHARE),
            latency_target,
            latency_alpha,
            latency_ewma: AtomicU64::new(0f64.to_bits()),
            probes,
            origin: Instant::now(),
        }
    }

    /// Whether a thread whose count is `unpublished` from what it added to the total last
    /// must add it now: when it holds back more than its share of `held_back`.
    #[inline]
    fn must_publish(&self, unpublished: isize) -> bool {
        unpublished.unsigned_abs().saturating_mul(stripe::owners()) > self.held_back
    }

    /// Counts a call in; returns the in-flight count it sees, itself included.
    ///
    /// The count is exact for this thread's calls. The threads that own a stripe hold back
    /// from the shared total at most `held_back` between them, so the count is within a
    /// `1 / ERROR_SHARE` of the capacity of the exact one however fast or slow calls come
    /// (exact below a capacity of 16; while threads come or go, a thread may hold back its
    /// share as it was until its count next changes). A thread writes only its own cache
    /// line until its count has moved by its share, then adds that to the total.
    #[inline]
    pub(crate) fn enter(&self) -> usize {
        let stripe = stripe::current();
        let total = if stripe.owned() {
            let own = &self.stripes[stripe.index()];
            let mine = own.in_flight.load(Relaxed) + 1;
            own.in_flight.store(mine, Relaxed);
            let unpublished = mine - own.published.load(Relaxed);
            if self.must_publish(unpublished) {
                own.published.store(mine, Relaxed);
                self.total.0.fetch_add(unpublished, Relaxed) + unpublished
            } else {
                self.total.0.load(Relaxed) + unpublished
            }
        } else {
            self.total.0.fetch_add(1, Relaxed) + 1
        };
        // What others hold back can make the total look lower than this call alone.
        usize::try_from(total).unwrap_or(0).max(1)
    }

    /// Counts a call out, on this thread's stripe (which need not be the one it entered on:
    /// only the sum means anything).
    #[inline]
    pub(crate) fn leave(&self) {
        let stripe = stripe::current();
        if !stripe.owned() {
            self.total.0.fetch_sub(1, Relaxed);
            return;
        }
        let own = &self.stripes[stripe.index()];
        let mine = own.in_flight.load(Relaxed) - 1;
        own.in_flight.store(mine, Relaxed);
        let unpublished = mine - own.published.load(Relaxed);
        if self.must_publish(unpublished) {
            own.published.store(mine, Relaxed);
            self.total.0.fetch_add(unpublished, Relaxed);
        }
    }

    /// Calls in flight now: the shared total and what each stripe holds back from it. Exact
    /// when no call is entering or leaving; a thread adding to the total during the read
    /// can make it off by what that thread held back.
    pub(crate) fn in_flight(&self) -> usize {
        let held_back: isize = self
            .stripes
            .iter()
            .map(|s| s.in_flight.load(Relaxed) - s.published.load(Relaxed))
            .sum();
        usize::try_from(self.total.0.load(Relaxed) + held_back).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(capacity: usize) -> Arc<Signals> {
        Arc::new(Signals::new(Some(capacity), None, 0.2, Vec::new()))
    }

    /// Runs `f` on a thread of its own, which owns a stripe unless 15 threads already do;
    /// returns what `f` returned and whether the thread owned one.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, bool) {
        std::thread::spawn(move || (f(), stripe::current().owned()))
            .join()
            .expect("the thread")
    }

    #[test]
    fn below_a_capacity_of_16_every_count_is_exact() {
        let signals = signals(15);
        let other = signals.clone();
        on_thread(move || {
            for _ in 0..5 {
                other.enter();
            }
        });
        let seen: Vec<usize> = (0..3).map(|_| signals.enter()).collect();
        assert_eq!(
            seen,
            [6, 7, 8],
            "the other thread's five calls are all seen"
        );
        signals.leave();
        assert_eq!(signals.in_flight(), 7);
    }

    #[test]
    fn a_thread_holds_back_its_share_and_the_sum_stays_exact() {
        // 625 held back at most between the owners: at least 41 each, with 15 owners.
        let signals = signals(10_000);
        let (entered, entered_rx) = std::sync::mpsc::channel();
        let (looked, looked_rx) = std::sync::mpsc::channel::<()>();
        let other = signals.clone();
        let thread = std::thread::spawn(move || {
            let last = (0..30).map(|_| other.enter()).max();
            entered.send((last, stripe::current().owned())).unwrap();
            // Keeps its stripe (and what it holds back) until the test has looked.
            looked_rx.recv().unwrap();
        });
        let (last, owned) = entered_rx.recv().unwrap();
        assert_eq!(last, Some(30), "a thread sees all of its own calls");
        let seen = signals.enter();
        if owned {
            assert_eq!(seen, 1, "the other thread's 30 calls are held back");
        } else {
            assert_eq!(
                seen, 31,
                "a thread with no stripe adds every call to the total"
            );
        }
        assert_eq!(signals.in_flight(), 31, "the sum reads what is held back");
        looked.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(
            signals.in_flight(),
            31,
            "a stripe keeps its count when its thread exits"
        );

        // Every call leaves on a third thread: its stripe goes below zero, the sum does not.
        let other = signals.clone();
        on_thread(move || (0..31).for_each(|_| other.leave()));
        assert_eq!(signals.in_flight(), 0);
        signals.enter();
        assert_eq!(signals.in_flight(), 1);
    }

    #[test]
    fn a_thread_adds_its_count_once_it_moved_by_its_share() {
        let signals = signals(160); // 10 held back at most between the owners
        let other = signals.clone();
        on_thread(move || {
            for _ in 0..100 {
                other.enter();
            }
        });
        let seen = signals.enter();
        assert!(
            (101 - 10..=101).contains(&seen),
            "within 10 of the 101 in flight: saw {seen}"
        );
    }

    #[test]
    fn many_threads_entering_and_leaving_leave_nothing_in_flight() {
        let signals = signals(100_000);
        let threads: Vec<_> = (0..24)
            .map(|t| {
                let signals = signals.clone();
                std::thread::spawn(move || {
                    let mut staying = 0;
                    for i in 0..10_000 {
                        let seen = signals.enter();
                        assert!(seen > staying, "a call sees itself and its thread's calls");
                        // A third of the calls stay in flight, to leave at the end on
                        // another thread, as a task that moved would.
                        if (i + t) % 3 != 0 {
                            signals.leave();
                        } else {
                            staying += 1;
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let entered_only: usize = (0..24)
            .map(|t| (0..10_000).filter(|i| (i + t) % 3 == 0).count())
            .sum();
        assert_eq!(signals.in_flight(), entered_only);
        let other = signals.clone();
        on_thread(move || (0..entered_only).for_each(|_| other.leave()));
        assert_eq!(signals.in_flight(), 0);
    }
}
