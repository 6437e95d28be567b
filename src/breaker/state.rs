//! The breaker's state machine: one atomic word, read without a lock on every call.
//!
//! The word packs the state, the half-open probe counters and an epoch that changes on every
//! transition:
//!
//! ```text
//! bits 0..3   state (closed, open, half-open, forced open, disabled)
//! bits 3..18  probes in flight (half-open)
//! bits 18..33 probes that succeeded (half-open)
//! bits 33..64 epoch
//! ```
//!
//! A closed call reads the word once when admitted and once when it completes (its outcome
//! is recorded only if the epoch has not moved on). Half-open admission is a compare-and-swap
//! on the word. Transitions take a mutex, so the open deadline and the re-open count change
//! together with the state; they happen a few times per incident, never per call.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{BreakerConfig, ProbeRule, Window};
use super::window::{Counts, Sample, SlidingWindow};
use crate::event::{CircuitState, Emitter, Event};

const TAG_BITS: u32 = 3;
const PROBE_BITS: u32 = 15;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const PROBE_MASK: u64 = (1 << PROBE_BITS) - 1;
const IN_FLIGHT_SHIFT: u32 = TAG_BITS;
const SUCCESS_SHIFT: u32 = TAG_BITS + PROBE_BITS;
const EPOCH_SHIFT: u32 = TAG_BITS + 2 * PROBE_BITS;

/// Bits per count in a probe tally (completed, failed, slow), below 25 bits of epoch.
const TALLY_BITS: u32 = 13;
const TALLY_MASK: u64 = (1 << TALLY_BITS) - 1;
const TALLY_EPOCH_MASK: u64 = (1 << (64 - 3 * TALLY_BITS)) - 1;

/// A half-open phase's probe counts under [`ProbeRule::FailureRate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    completed: u64,
    failed: u64,
    slow: u64,
}

impl Tally {
    fn unpack(word: u64, epoch: u64) -> Tally {
        if word >> (3 * TALLY_BITS) != epoch & TALLY_EPOCH_MASK {
            return Tally {
                completed: 0,
                failed: 0,
                slow: 0,
            };
        }
        Tally {
            completed: word & TALLY_MASK,
            failed: (word >> TALLY_BITS) & TALLY_MASK,
            slow: (word >> (2 * TALLY_BITS)) & TALLY_MASK,
        }
    }

    fn pack(self, epoch: u64) -> u64 {
        ((epoch & TALLY_EPOCH_MASK) << (3 * TALLY_BITS))
            | (self.slow.min(TALLY_MASK) << (2 * TALLY_BITS))
            | (self.failed.min(TALLY_MASK) << TALLY_BITS)
            | self.completed.min(TALLY_MASK)
    }
}

/// How long a caller turned away by a busy half-open breaker should wait.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

fn tag_of(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::ForcedOpen => 3,
        CircuitState::Disabled => 4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(state: CircuitState, epoch: u64) -> Self {
        Word(tag_of(state) | (epoch << EPOCH_SHIFT))
    }

    fn state(self) -> CircuitState {
        match self.0 & TAG_MASK {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::ForcedOpen,
            _ => CircuitState::Disabled,
        }
    }

    fn epoch(self) -> u64 {
        self.0 >> EPOCH_SHIFT
    }

    fn in_flight(self) -> u64 {
        (self.0 >> IN_FLIGHT_SHIFT) & PROBE_MASK
    }

    fn successes(self) -> u64 {
        (self.0 >> SUCCESS_SHIFT) & PROBE_MASK
    }

    fn with_probes(self, in_flight: u64, successes: u64) -> Self {
        let keep = self.0 & !((PROBE_MASK << IN_FLIGHT_SHIFT) | (PROBE_MASK << SUCCESS_SHIFT));
        Word(keep | (in_flight << IN_FLIGHT_SHIFT) | (successes << SUCCESS_SHIFT))
    }

    fn same_phase(self, other: Word) -> bool {
        self.state() == other.state() && self.epoch() == other.epoch()
    }
}

/// What the breaker decided for one call.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Closed: call, and record the outcome if the breaker is still in this epoch.
    Closed { epoch: u64 },
    /// Half-open: call as a probe.
    Probe(ProbePermit),
    /// Disabled: call, record nothing.
    Pass,
    /// Open (or no probe free): fail fast.
    Reject { retry_in: Duration },
}

#[derive(Debug)]
struct Transitions {
    /// Consecutive re-openings from half-open since the last close.
    reopens: u32,
}

/// The state every service of one breaker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BreakerConfig,
    pub(crate) emitter: Emitter,
    word: AtomicU64,
    /// When an open breaker lets probes through, in nanoseconds since `origin`.
    open_until: AtomicU64,
    /// Nanoseconds since `origin` after which a half-open breaker whose probes are all still
    /// out re-opens rather than refusing.
    half_open_until: AtomicU64,
    /// Under [`ProbeRule::FailureRate`]: the probes of one half-open phase, packed as its
    /// epoch and counts of completed, failed and slow probes.
    tally: AtomicU64,
    origin: Instant,
    window: SlidingWindow,
    transitions: Mutex<Transitions>,
}

impl Shared {
    pub(crate) fn new(mut config: BreakerConfig, emitter: Emitter) -> Self {
        if config.probe_rule == ProbeRule::FailureRate {
            config.half_open_probes = config.half_open_probes.min(TALLY_MASK as u32);
        }
        // A count window can never hold more calls than its size: a larger minimum would keep
        // the breaker closed forever, so the size is the minimum then (as in resilience4j).
        if let Window::Count { size } = config.window {
            config.minimum_calls = config.minimum_calls.min(size);
        }
        let origin = Instant::now();
        let window = match config.window {
            Window::Count { size } => SlidingWindow::count(size),
            Window::Time { duration, buckets } => SlidingWindow::time(duration, buckets, origin),
        };
        Shared {
            config,
            emitter,
            word: AtomicU64::new(Word::new(CircuitState::Closed, 0).0),
            open_until: AtomicU64::new(0),
            half_open_until: AtomicU64::new(u64::MAX),
            tally: AtomicU64::new(0),
            origin,
            window,
            transitions: Mutex::new(Transitions { reopens: 0 }),
        }
    }

    /// Whether completed calls need their start time (slow-call detection or a time window).
    pub(crate) fn needs_clock(&self) -> bool {
        self.config.slow_call_duration.is_some() || self.window.is_timed()
    }

    fn load(&self) -> Word {
        Word(self.word.load(Acquire))
    }

    /// Whether an admission decided in `poll_ready` still holds at `call`: the breaker has
    /// not changed state since (one atomic load; no write). A service made ready while closed
    /// and called after the breaker opened is decided again, so it fails fast.
    #[inline]
    pub(crate) fn still_admits(&self, admission: &Admission) -> bool {
        match admission {
            Admission::Closed { epoch } => self.load().epoch() == *epoch,
            Admission::Pass => self.load().state() == CircuitState::Disabled,
            Admission::Probe(permit) => self.load().epoch() == permit.epoch,
            Admission::Reject { .. } => true,
        }
    }

    fn nanos_since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.load().state()
    }

    /// Whether an idle keyed breaker may be dropped: it is closed, or open with its open
    /// period over (its next call would probe anyway). Half-open (probes out) and the states
    /// an operator set by hand are kept.
    pub(crate) fn evictable(&self) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => self.nanos_since_origin() >= self.open_until.load(Relaxed),
            CircuitState::HalfOpen | CircuitState::ForcedOpen | CircuitState::Disabled => false,
        }
    }

    /// Decides whether a call may go through.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let mut word = self.load();
        // An open breaker moves to half-open at most once here; then admission is decided
        // on the new word.
        for _ in 0..2 {
            match word.state() {
                CircuitState::Closed => {
                    return Admission::Closed {
                        epoch: word.epoch(),
                    };
                }
                CircuitState::Disabled => return Admission::Pass,
                CircuitState::ForcedOpen => {
                    return Admission::Reject {
                        retry_in: self.config.open_duration,
                    };
                }
                CircuitState::Open => {
                    let now = self.nanos_since_origin();
                    let until = self.open_until.load(Relaxed);
                    if now < until {
                        return Admission::Reject {
                            retry_in: Duration::from_nanos(until - now),
                        };
                    }
                    self.transition(word, CircuitState::HalfOpen);
                    word = self.load();
                }
                CircuitState::HalfOpen => return self.admit_probe(word),
            }
        }
        Admission::Reject {
            retry_in: HALF_OPEN_RETRY,
        }
    }

    /// Time until an open breaker lets a probe through.
    fn open_retry_in(&self) -> Duration {
        let until = self.open_until.load(Relaxed);
        Duration::from_nanos(until.saturating_sub(self.nanos_since_origin()))
    }

    fn admit_probe(self: &Arc<Self>, mut word: Word) -> Admission {
        let limit = u64::from(self.config.half_open_probes);
        loop {
            if word.state() != CircuitState::HalfOpen {
                return self.admit_after_race(word);
            }
            if word.in_flight() + word.successes() >= limit {
                // Every probe slot is taken. Probes that outlast the maximum wait (hung, or
                // cancelled without a word) must not hold the breaker half-open for ever.
                if self.nanos_since_origin() >= self.half_open_until.load(Relaxed) {
                    self.transition(word, CircuitState::Open);
                    return Admission::Reject {
                        retry_in: self.open_retry_in(),
                    };
                }
                return Admission::Reject {
                    retry_in: HALF_OPEN_RETRY,
                };
            }
            let next = word.with_probes(word.in_flight() + 1, word.successes());
            match self
                .word
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    return Admission::Probe(ProbePermit {
                        shared: self.clone(),
                        epoch: word.epoch(),
                        settled: false,
                    });
                }
                Err(current) => word = Word(current),
            }
        }
    }

    /// The state changed under a probe admission: decide once more, without looping.
    fn admit_after_race(&self, word: Word) -> Admission {
        match word.state() {
            CircuitState::Closed => Admission::Closed {
                epoch: word.epoch(),
            },
            CircuitState::Disabled => Admission::Pass,
            _ => Admission::Reject {
                retry_in: HALF_OPEN_RETRY,
            },
        }
    }

    /// Records a closed-state call that completed; `None` is a result that does not count.
    pub(crate) fn record_closed(&self, epoch: u64, sample: Option<Sample>, now: Option<Instant>) {
        let Some(sample) = sample else { return };
        let word = self.load();
        if word.state() != CircuitState::Closed || word.epoch() != epoch {
            return;
        }
        if let Some(counts) = self.window.record(sample, now)
            && self.should_trip(counts)
        {
            self.transition(word, CircuitState::Open);
        }
    }

    fn should_trip(&self, c: Counts) -> bool {
        let cfg = &self.config;
        if c.calls < cfg.minimum_calls || c.calls == 0 {
            return false;
        }
        let calls = u64::from(c.calls);
        let over =
            |count: u32, bp: u32| count > 0 && u64::from(count) * 10_000 >= u64::from(bp) * calls;
        over(c.failures, cfg.failure_rate_bp)
            || (cfg.slow_call_duration.is_some() && over(c.slow, cfg.slow_call_rate_bp))
    }

    /// Moves from the phase of `from` to `to`; does nothing if the breaker already left it.
    fn transition(&self, from: Word, to: CircuitState) -> bool {
        let mut transitions = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.load();
        if !current.same_phase(from) {
            return false;
        }
        self.enter(&mut transitions, from.state(), to);
        let next = Word::new(to, from.epoch().wrapping_add(1));
        // Half-open probe counters may move under us; the phase may not (we hold the lock).
        while let Err(actual) = self
            .word
            .compare_exchange_weak(current.0, next.0, AcqRel, Acquire)
        {
            current = Word(actual);
        }
        drop(transitions);
        self.report(from.state(), to);
        true
    }

    /// Forces the breaker into `to` from whatever state it is in.
    pub(crate) fn force(&self, to: CircuitState) {
        let mut transitions = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.load();
        // Entering closed clears the window and the re-open count, even from closed.
        self.enter(&mut transitions, from.state(), to);
        let next = Word::new(to, from.epoch().wrapping_add(1));
        let previous = Word(self.word.swap(next.0, AcqRel));
        drop(transitions);
        if previous.state() != to {
            self.report(previous.state(), to);
        }
    }

    /// The side effects of entering `to`, under the transition lock.
    fn enter(&self, transitions: &mut Transitions, from: CircuitState, to: CircuitState) {
        match to {
            CircuitState::Open => {
                if from == CircuitState::HalfOpen {
                    transitions.reopens = transitions.reopens.saturating_add(1);
                }
                let open_for = self.config.open_duration_after(transitions.reopens);
                let open_for = u64::try_from(open_for.as_nanos()).unwrap_or(u64::MAX);
                self.open_until
                    .store(self.nanos_since_origin().saturating_add(open_for), Relaxed);
            }
            CircuitState::Closed => {
                transitions.reopens = 0;
                self.window.reset();
            }
            CircuitState::HalfOpen => {
                let wait = self.config.half_open_max_wait;
                let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                self.half_open_until
                    .store(self.nanos_since_origin().saturating_add(wait), Relaxed);
            }
            CircuitState::ForcedOpen | CircuitState::Disabled => {}
        }
    }

    fn report(&self, from: CircuitState, to: CircuitState) {
        self.emitter.emit(&Event::BreakerTransition {
            breaker: &self.config.name,
            from,
            to,
        });
    }

    pub(crate) fn report_rejection(&self, retry_in: Duration) {
        self.emitter.emit(&Event::CallRejected {
            breaker: &self.config.name,
            retry_in,
        });
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let word = self.load();
        let counts = self.window.counts();
        let rate = |n: u32| {
            if counts.calls == 0 {
                0.0
            } else {
                f64::from(n) / f64::from(counts.calls)
            }
        };
        let retry_in = match word.state() {
            CircuitState::Open => {
                let until = self.open_until.load(Relaxed);
                Some(Duration::from_nanos(
                    until.saturating_sub(self.nanos_since_origin()),
                ))
            }
            _ => None,
        };
        BreakerSnapshot {
            state: word.state(),
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate: rate(counts.failures),
            slow_call_rate: rate(counts.slow),
            probes_in_flight: word.in_flight() as u32,
            retry_in,
        }
    }
}

/// A half-open probe's claim on one of the probe places; returned if the call is dropped.
#[derive(Debug)]
pub(crate) struct ProbePermit {
    shared: Arc<Shared>,
    epoch: u64,
    settled: bool,
}

impl ProbePermit {
    /// Settles the probe with its result; `None` (a result that does not count) just frees
    /// the place.
    pub(crate) fn complete(mut self, sample: Option<Sample>) {
        self.settled = true;
        if let (ProbeRule::FailureRate, Some(sample)) = (self.shared.config.probe_rule, sample) {
            self.complete_by_rate(sample);
            return;
        }
        match sample {
            None => self.release(false),
            Some(s) if s.failure || s.slow => {
                let word = self.shared.load();
                if word.state() == CircuitState::HalfOpen && word.epoch() == self.epoch {
                    self.shared.transition(word, CircuitState::Open);
                }
            }
            Some(_) => self.release(true),
        }
    }

    /// [`ProbeRule::FailureRate`]: counts the probe, frees its place (keeping it counted as
    /// completed), and decides once the outcome is certain.
    fn complete_by_rate(&self, sample: Sample) {
        let shared = &self.shared;
        let mut current = shared.tally.load(Acquire);
        let tally = loop {
            let mut tally = Tally::unpack(current, self.epoch);
            tally.completed += 1;
            tally.failed += u64::from(sample.failure);
            tally.slow += u64::from(sample.slow);
            match shared.tally.compare_exchange_weak(
                current,
                tally.pack(self.epoch),
                AcqRel,
                Acquire,
            ) {
                Ok(_) => break tally,
                Err(actual) => current = actual,
            }
        };
        let Some(word) = self.free_place(true) else {
            return;
        };
        let cfg = &shared.config;
        let probes = u64::from(cfg.half_open_probes);
        let over = |count: u64, bp: u32| count > 0 && count * 10_000 >= u64::from(bp) * probes;
        if over(tally.failed, cfg.failure_rate_bp)
            || (cfg.slow_call_duration.is_some() && over(tally.slow, cfg.slow_call_rate_bp))
        {
            shared.transition(word, CircuitState::Open);
        } else if tally.completed >= probes {
            shared.transition(word, CircuitState::Closed);
        }
    }

    /// Frees the probe's place, counting it as completed when `counted`; the word it left,
    /// or `None` when the breaker already left this half-open phase.
    fn free_place(&self, counted: bool) -> Option<Word> {
        let shared = &self.shared;
        let mut word = shared.load();
        loop {
            if word.state() != CircuitState::HalfOpen || word.epoch() != self.epoch {
                return None;
            }
            let successes = word.successes() + u64::from(counted);
            let next = word.with_probes(word.in_flight().saturating_sub(1), successes);
            match shared
                .word
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => return Some(next),
                Err(current) => word = Word(current),
            }
        }
    }

    fn release(&self, succeeded: bool) {
        let Some(word) = self.free_place(succeeded) else {
            return;
        };
        if succeeded && word.successes() >= u64::from(self.shared.config.half_open_probes) {
            self.shared.transition(word, CircuitState::Closed);
        }
    }
}

impl Drop for ProbePermit {
    fn drop(&mut self) {
        if !self.settled {
            self.release(false);
        }
    }
}

/// A point-in-time view of a breaker, from [`BreakerHandle::snapshot`](super::BreakerHandle::snapshot).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The current state.
    pub state: CircuitState,
    /// Calls in the window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Failures over calls in the window (0 when empty).
    pub failure_rate: f64,
    /// Slow calls over calls in the window (0 when empty).
    pub slow_call_rate: f64,
    /// Probes running now (half-open).
    pub probes_in_flight: u32,
    /// When open: time until probes are let through.
    pub retry_in: Option<Duration>,
}
