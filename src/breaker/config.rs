//! The breaker's configuration and its builder.

use std::borrow::Cow;
use std::time::Duration;

use crate::classify::DefaultClassifier;
use crate::error::ErrorKind;
use crate::event::{Emitter, EventSink};
use crate::setting;

use super::keyed::KeyedBreakerLayer;
use super::layer::BreakerLayer;

/// Which calls the breaker's failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// The last `size` recorded calls (default, with 100).
    Count {
        /// Calls kept.
        size: u32,
    },
    /// The calls recorded in the last `duration`, kept in `buckets` rotating buckets.
    Time {
        /// The window's span.
        duration: Duration,
        /// How many buckets the span is cut into (the window slides a bucket at a time).
        buckets: u32,
    },
}

/// Counts above this are clamped (the window packs its counters into one word).
pub(crate) const MAX_WINDOW_CALLS: u32 = (1 << 20) - 1;
/// Probes above this are clamped (the state word packs probe counters).
pub(crate) const MAX_PROBES: u32 = (1 << 15) - 1;
/// Keyed breakers: at most this many keys have a breaker of their own.
const MAX_KEYS: usize = 1 << 16;

#[derive(Debug, Clone)]
pub(crate) struct BreakerConfig {
    pub(crate) name: Cow<'static, str>,
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    /// Failure-rate threshold in basis points (1/100 of a percent), so boundaries are exact.
    pub(crate) failure_rate_bp: u32,
    pub(crate) slow_call_rate_bp: u32,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) open_duration: Duration,
    pub(crate) open_growth: f64,
    pub(crate) max_open_duration: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) half_open_max_wait: Duration,
    pub(crate) probe_rule: ProbeRule,
    /// Error kinds recorded neither as failures nor as successes, one bit per kind.
    pub(crate) ignored: u32,
}

impl BreakerConfig {
    /// Whether failures of `kind` are left out of the record.
    pub(crate) fn ignores(&self, kind: ErrorKind) -> bool {
        kind.is_caller_fault() || self.ignored & kind_bit(kind) != 0
    }
}

fn kind_bit(kind: ErrorKind) -> u32 {
    1 << (kind as u32 % 32)
}

/// How a half-open breaker judges its probes.
///
/// The default, [`AllSucceed`](ProbeRule::AllSucceed), is the stricter: a model that fails
/// even one probe right after an outage is seldom healthy yet, and each failed probe on a GPU
/// costs a slot that real traffic needs. [`FailureRate`](ProbeRule::FailureRate) is
/// resilience4j's rule: it suits a backend with a steady share of failures (a flaky model
/// that is nonetheless up), which the strict rule would keep re-opening although the closed
/// state tolerates that share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProbeRule {
    /// The first failed (or slow) probe re-opens the breaker; `half_open_probes` successes
    /// close it.
    #[default]
    AllSucceed,
    /// The probes' failure rate (and slow-call rate) is compared with the breaker's
    /// thresholds: it re-opens as soon as enough probes failed to reach a threshold, and
    /// closes once all `half_open_probes` probes completed below both.
    FailureRate,
}

/// A breaker's name when its builder gives none.
pub(crate) const DEFAULT_NAME: &str = "breaker";

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            name: Cow::Borrowed(DEFAULT_NAME),
            window: Window::Count { size: 100 },
            minimum_calls: 20,
            failure_rate_bp: 5_000,
            slow_call_rate_bp: 10_000,
            slow_call_duration: None,
            open_duration: Duration::from_secs(30),
            open_growth: 1.0,
            max_open_duration: Duration::from_secs(30),
            half_open_probes: 3,
            half_open_max_wait: Duration::from_secs(60),
            probe_rule: ProbeRule::AllSucceed,
            ignored: 0,
        }
    }
}

impl BreakerConfig {
    /// The open duration after `reopens` consecutive re-openings: base × growth^reopens,
    /// capped.
    pub(crate) fn open_duration_after(&self, reopens: u32) -> Duration {
        if self.open_growth <= 1.0 || reopens == 0 {
            return self.open_duration;
        }
        let factor = self.open_growth.powi(reopens.min(1_000) as i32);
        let secs = self.open_duration.as_secs_f64() * factor;
        let cap = self.max_open_duration.max(self.open_duration);
        if secs.is_finite() && secs < cap.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            cap
        }
    }
}

/// A share in `[0, 1]` (already checked) in basis points.
fn basis_points(rate: f64) -> u32 {
    (rate * 10_000.0).round() as u32
}

/// Configures a [`BreakerLayer`]. Every setting documents its default; the defaults suit
/// an inference backend (a window of 100 calls, at least 20 before judging, 50 % failures
/// trip it, 30 s open, 3 probes).
#[derive(Debug, Clone)]
pub struct BreakerBuilder<C = DefaultClassifier> {
    pub(crate) config: BreakerConfig,
    pub(crate) classifier: C,
    pub(crate) emitter: Emitter,
    pub(crate) max_keys: usize,
    pub(crate) idle_timeout: Duration,
}

/// How long a keyed breaker may go unused before a new key may take its place.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for BreakerBuilder {
    fn default() -> Self {
        BreakerBuilder {
            config: BreakerConfig::default(),
            classifier: DefaultClassifier,
            emitter: Emitter::noop(),
            max_keys: 64,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl<C> BreakerBuilder<C> {
    /// The breaker's name, in events, logs and metrics (default `"breaker"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// A count-based window of the last `size` calls (the default, with 100; 1 to 1 048 575).
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = Window::Count {
            size: setting::clamp("breaker.count_window", size, 1, MAX_WINDOW_CALLS),
        };
        self
    }

    /// A time-based window of the calls in the last `duration`, kept in `buckets` buckets
    /// (default: count-based). A zero duration is taken as one second; buckets are 1 to 1 024.
    pub fn time_window(mut self, duration: Duration, buckets: u32) -> Self {
        self.config.window = Window::Time {
            duration: setting::nonzero("breaker.time_window", duration, Duration::from_secs(1)),
            buckets: setting::clamp("breaker.time_window buckets", buckets, 1, 1_024),
        };
        self
    }

    /// Calls the window must hold before the breaker judges it (default 20; at least 1; with a
    /// count window, at most the window's size, which is the minimum when this is larger).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls =
            setting::clamp("breaker.minimum_calls", calls, 1, MAX_WINDOW_CALLS);
        self
    }

    /// Share of failed calls, in `[0, 1]`, at or above which the breaker opens (default 0.5;
    /// NaN is taken as the default).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_bp =
            basis_points(setting::share("breaker.failure_rate_threshold", rate, 0.5));
        self
    }

    /// Calls slower than `duration` count as slow, even when they succeed (default: off; at
    /// least 1 µs).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(setting::at_least(
            "breaker.slow_call_duration",
            duration,
            Duration::from_micros(1),
        ));
        self
    }

    /// Share of slow calls, in `[0, 1]`, at or above which the breaker opens (default 1.0;
    /// NaN is taken as the default; only used with
    /// [`slow_call_duration`](Self::slow_call_duration)).
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.config.slow_call_rate_bp = basis_points(setting::share(
            "breaker.slow_call_rate_threshold",
            rate,
            1.0,
        ));
        self
    }

    /// How long the breaker stays open before it lets probes through (default 30 s; at least
    /// 1 ms, as in resilience4j).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.config.open_duration =
            setting::at_least("breaker.open_duration", duration, Duration::from_millis(1));
        self
    }

    /// Grows the open duration by `factor` on each consecutive re-opening, up to `max`; a
    /// close resets it (default: no growth; a factor below 1 is taken as 1, NaN or infinite
    /// as 1; a `max` below the open duration is the open duration).
    pub fn open_duration_growth(mut self, factor: f64, max: Duration) -> Self {
        self.config.open_growth = setting::factor("breaker.open_duration_growth", factor, 1.0, 1.0);
        self.config.max_open_duration = max;
        self
    }

    /// The longest the breaker stays half-open waiting for its probes (default 60 s; zero is
    /// taken as the default). A probe that hangs holds its slot; once this long has passed
    /// since the breaker went half-open, the next call it must refuse re-opens it instead,
    /// and after the open duration it probes afresh (resilience4j's
    /// `maxWaitDurationInHalfOpenState`, bounded by default here). Give it more than the
    /// slowest answer a probe may take.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.config.half_open_max_wait =
            setting::nonzero("breaker.half_open_max_wait", wait, Duration::from_secs(60));
        self
    }

    /// How the probes are judged (default [`ProbeRule::AllSucceed`]).
    pub fn probe_rule(mut self, rule: ProbeRule) -> Self {
        self.config.probe_rule = rule;
        self
    }

    /// Probe calls let through when half-open; that many successes close the breaker
    /// (default 3; 1 to 32 767; with [`ProbeRule::FailureRate`], at most 8 191).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes =
            setting::clamp("breaker.half_open_probes", probes, 1, MAX_PROBES);
        self
    }

    /// Records failures of `kind` neither as failures nor as successes, as the caller's faults
    /// never are (resilience4j's `ignoreExceptions`); call once per kind (default: none).
    ///
    /// The case for it is [`ErrorKind::Overloaded`] in front of a fallback: a server that
    /// sheds load answers at once and is alive, and opening the breaker on its refusals idles a
    /// primary that still serves its full capacity. In the load drill at 4× the primary's
    /// capacity (`BENCHMARKS.md`), a breaker that counts them left the primary 9 % of the
    /// answers; one that ignores them, 43 %. A dead or dying server still opens it: it fails
    /// with `Infrastructure`, `Timeout` or `ModelFailure`, which are counted.
    ///
    /// ```
    /// use tower_inference::ErrorKind;
    /// use tower_inference::breaker::BreakerLayer;
    ///
    /// let layer = BreakerLayer::builder().ignore(ErrorKind::Overloaded).build();
    /// # let _ = layer;
    /// ```
    pub fn ignore(mut self, kind: ErrorKind) -> Self {
        self.config.ignored |= kind_bit(kind);
        self
    }

    /// Where transitions and rejections are reported (default: `tracing` only).
    pub fn event_sink(mut self, sink: impl EventSink) -> Self {
        self.emitter = Emitter::new(sink);
        self
    }

    /// The stack's emitter, shared as it is (no extra indirection per event).
    pub(crate) fn emitter(mut self, emitter: Emitter) -> Self {
        self.emitter = emitter;
        self
    }

    /// How call results are classified (default [`DefaultClassifier`]). Only backend faults
    /// count as failures; the caller's faults are not recorded.
    pub fn classifier<C2>(self, classifier: C2) -> BreakerBuilder<C2> {
        BreakerBuilder {
            config: self.config,
            classifier,
            emitter: self.emitter,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
        }
    }

    /// For keyed breakers: the most keys that get a breaker of their own (default 64; 1 to
    /// 65 536). When every place is taken, a new key takes the place of a key idle for
    /// [`idle_timeout`](Self::idle_timeout); if none is, its calls share one overflow breaker.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = setting::clamp("breaker.max_keys", max_keys, 1, MAX_KEYS);
        self
    }

    /// For keyed breakers: how long a key's breaker may go without a call before a new key
    /// may take its place (default 10 minutes; zero is taken as the default). Only a closed
    /// breaker, or an open one whose open period is over, is dropped: a half-open breaker and
    /// one forced open or disabled through its handle keep their place. A dropped key that
    /// comes back gets a fresh, closed breaker.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = setting::nonzero("breaker.idle_timeout", idle, DEFAULT_IDLE_TIMEOUT);
        self
    }

    /// Builds a keyed layer: one breaker per key, the key taken from each request by `key_fn`
    /// (a model or backend name). See [`KeyedBreakerLayer`].
    pub fn build_keyed<K, F>(self, key_fn: F) -> KeyedBreakerLayer<K, F, C> {
        KeyedBreakerLayer::from_builder(self, key_fn)
    }

    /// Builds the layer. Every service it makes shares one breaker.
    pub fn build(self) -> BreakerLayer<C> {
        BreakerLayer::from_builder(self)
    }
}
