//! What layers report: breaker transitions, rejected calls, retries, tiers served, level changes.
//!
//! Every layer reports through one [`Event`] enum to an [`EventSink`]. The metrics collector is
//! a sink; so is any closure `Fn(&Event<'_>)`. Layers do not know about metrics, and metrics
//! does not know about layers. Every event is also a `tracing` event (target
//! `tower_inference`) with structured fields, whether or not a sink is set.
//!
//! Events borrow their names (`Event<'a>`), so reporting one allocates nothing; a sink that
//! keeps events copies what it needs.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use tower_inference::{CircuitState, Emitter, Event};
//!
//! let opened = Arc::new(AtomicUsize::new(0));
//! let counter = opened.clone();
//! let emitter = Emitter::new(move |event: &Event<'_>| {
//!     if let Event::BreakerTransition { to: CircuitState::Open, .. } = event {
//!         counter.fetch_add(1, Ordering::Relaxed);
//!     }
//! });
//!
//! emitter.emit(&Event::BreakerTransition {
//!     breaker: "llama-70b",
//!     from: CircuitState::Closed,
//!     to: CircuitState::Open,
//! });
//! assert_eq!(opened.load(Ordering::Relaxed), 1);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::provenance::Quality;

/// The state of a circuit breaker.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls pass and their outcomes are recorded.
    Closed,
    /// Calls are rejected at once until the open duration has passed.
    Open,
    /// A limited number of probe calls pass to test the backend.
    HalfOpen,
    /// Held open by the application until released.
    ForcedOpen,
    /// Held closed by the application: every call passes and nothing is recorded.
    Disabled,
}

impl CircuitState {
    /// A stable snake_case name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Something a layer did that operators may want to count or see.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A breaker changed state.
    BreakerTransition {
        /// The breaker's name.
        breaker: &'a str,
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
    },
    /// A breaker rejected a call without calling the backend.
    CallRejected {
        /// The breaker's name.
        breaker: &'a str,
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// A failed call will be tried again after `delay`.
    RetryScheduled {
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The kind of failure being retried.
        kind: ErrorKind,
        /// The wait before the attempt.
        delay: Duration,
    },
    /// A retry was wanted but the retry budget was empty; the last error is returned.
    BudgetExhausted {
        /// The kind of failure that was not retried.
        kind: ErrorKind,
    },
    /// A tier of a fallback chain answered.
    TierServed {
        /// The tier's name.
        tier: &'a str,
        /// The answer's quality.
        quality: &'a Quality,
        /// Whether it was a fallback (not the first tier).
        fallback: bool,
    },
    /// A tier of a fallback chain failed and the chain moved on.
    TierFailed {
        /// The tier's name.
        tier: &'a str,
        /// How it failed.
        kind: ErrorKind,
    },
    /// A fallback cache store failed to read or write; the response was not affected.
    CacheFailed {
        /// The cache tier's name.
        tier: &'a str,
        /// `"read"` or `"write"`.
        operation: &'static str,
    },
    /// The degradation level changed.
    LevelChanged {
        /// The level left.
        from: &'a str,
        /// The level entered.
        to: &'a str,
        /// The load that caused the change, in 0..=1.
        load: f64,
    },
}

impl Event<'_> {
    /// A stable snake_case name for the event, for logs and metric labels.
    pub const fn name(&self) -> &'static str {
        match self {
            Event::BreakerTransition { .. } => "breaker_transition",
            Event::CallRejected { .. } => "call_rejected",
            Event::RetryScheduled { .. } => "retry_scheduled",
            Event::BudgetExhausted { .. } => "budget_exhausted",
            Event::TierServed { .. } => "tier_served",
            Event::TierFailed { .. } => "tier_failed",
            Event::CacheFailed { .. } => "cache_failed",
            Event::LevelChanged { .. } => "level_changed",
        }
    }

    /// The level [`trace`](Self::trace) reports this event at.
    fn level(&self) -> tracing::Level {
        use tracing::Level;
        match *self {
            Event::BreakerTransition { .. }
            | Event::BudgetExhausted { .. }
            | Event::TierFailed { .. }
            | Event::CacheFailed { .. }
            | Event::LevelChanged { .. } => Level::WARN,
            Event::TierServed { fallback: true, .. } => Level::INFO,
            Event::CallRejected { .. } | Event::RetryScheduled { .. } => Level::DEBUG,
            Event::TierServed { .. } => Level::TRACE,
        }
    }

    fn trace(&self) {
        const T: &str = "tower_inference";
        let event = self.name();
        match *self {
            Event::BreakerTransition { breaker, from, to } => {
                tracing::warn!(target: T, event, breaker, %from, %to, "circuit breaker {from} -> {to}");
            }
            Event::CallRejected { breaker, retry_in } => {
                tracing::debug!(target: T, event, breaker, retry_in_ms = millis(retry_in), "call rejected by open breaker");
            }
            Event::RetryScheduled {
                attempt,
                kind,
                delay,
            } => {
                tracing::debug!(target: T, event, attempt, %kind, delay_ms = millis(delay), "retry scheduled");
            }
            Event::BudgetExhausted { kind } => {
                tracing::warn!(target: T, event, %kind, "retry budget exhausted");
            }
            Event::TierServed {
                tier,
                quality,
                fallback,
            } => {
                if fallback {
                    tracing::info!(target: T, event, tier, %quality, fallback, "fallback tier served");
                } else {
                    tracing::trace!(target: T, event, tier, %quality, fallback, "tier served");
                }
            }
            Event::TierFailed { tier, kind } => {
                tracing::warn!(target: T, event, tier, %kind, "tier failed");
            }
            Event::CacheFailed { tier, operation } => {
                tracing::warn!(target: T, event, tier, operation, "cache store failed");
            }
            Event::LevelChanged { from, to, load } => {
                tracing::warn!(target: T, event, from, to, load, "degradation level {from} -> {to}");
            }
        }
    }
}

/// Whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Receives the [`Event`]s layers report.
///
/// Called inline on the task that made the call: keep it fast and never block (count, push
/// to a channel, or log). Implemented for closures `Fn(&Event<'_>)` and for `Arc`s of sinks.
pub trait EventSink: Send + Sync + 'static {
    /// Handles one event.
    fn on_event(&self, event: &Event<'_>);
}

impl<F> EventSink for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

impl<T: EventSink + ?Sized> EventSink for Arc<T> {
    fn on_event(&self, event: &Event<'_>) {
        (**self).on_event(event)
    }
}

/// A sink that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn on_event(&self, _event: &Event<'_>) {}
}

/// What a layer holds to report events: an optional shared [`EventSink`] plus `tracing`.
///
/// Cheap to clone (an `Option<Arc<_>>`); the default has no sink and only traces.
#[derive(Clone, Default)]
pub struct Emitter {
    sink: Option<Arc<dyn EventSink>>,
}

impl Emitter {
    /// An emitter that reports to `sink` (and to `tracing`).
    pub fn new(sink: impl EventSink) -> Self {
        Emitter {
            sink: Some(Arc::new(sink)),
        }
    }

    /// An emitter that reports to an already shared sink.
    pub fn from_arc(sink: Arc<dyn EventSink>) -> Self {
        Emitter { sink: Some(sink) }
    }

    /// An emitter that only traces.
    pub const fn noop() -> Self {
        Emitter { sink: None }
    }

    /// Reports `event` to `tracing` and to the sink, if any.
    #[inline]
    pub fn emit(&self, event: &Event<'_>) {
        // The check `tracing`'s macros make first, made before the call: an answer's event
        // is at `TRACE`, which is seldom on.
        if event.level() <= tracing::level_filters::LevelFilter::current() {
            event.trace();
        }
        if let Some(sink) = &self.sink {
            sink.on_event(event);
        }
    }
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("sink", &self.sink.as_ref().map(|_| "dyn EventSink"))
            .finish()
    }
}
