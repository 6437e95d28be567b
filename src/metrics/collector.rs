//! [`ErrorMetrics`]: the collector, its per-stage records and its snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::histogram::{BOUNDS, Histogram, Merged};
use super::stream::{StreamSnapshot, StreamStats};
use super::topk::SpaceSaving;
use super::window::{BUCKET_SECS, RateRing, Rates};
use crate::breaker::BreakerHandle;
use crate::degrade::DegradeHandle;
use crate::error::ErrorKind;
use crate::event::{CircuitState, Event, EventSink};
use crate::provenance::{PRIMARY_TIER, Provenance, Quality};
use crate::retry::RetryBudget;
use crate::setting;
use crate::stripe::{self, Bump, STRIPES, Stripe};

/// Tier names a stage tracks; answers from further tiers count in its overflow slot.
const MAX_TIERS: usize = 16;
/// The most error patterns a collector keeps.
const MAX_TOP_K: usize = 1_024;
/// Latency histograms per stage that a thread owns (those of the first stripes); threads on
/// further stripes share one more.
const HISTOGRAMS: usize = 4;
/// The default bound on stages per collector.
const MAX_STAGES: usize = 64;
/// The default least number of errors of a kind in the last minute for a spike.
const SPIKE_MIN_COUNT: u64 = 10;
/// Periods (10 s) in a minute.
const MINUTE: u32 = (60 / BUCKET_SECS) as u32;
/// Periods in an hour.
const HOUR: u32 = 60 * MINUTE;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A counter striped per thread, so threads never write the same cache line.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

struct Striped(Box<[Padded]>);

impl Default for Striped {
    fn default() -> Self {
        Striped((0..STRIPES).map(|_| Padded::default()).collect())
    }
}

impl Striped {
    #[inline]
    fn add(&self, stripe: Stripe) {
        self.0[stripe.index()].0.bump(1, stripe);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed)).sum()
    }
}

/// A thread's latency histograms, on cache lines of their own: the answers of the primary
/// tier, and every other call. Each call is recorded in one; every call's latency is their
/// sum. Their counts are the calls completed.
#[derive(Default)]
#[repr(align(128))]
struct LatencyStripe {
    primary: Histogram,
    other: Histogram,
}

/// A thread's answer counts per tier slot, on cache lines of its own.
#[repr(align(128))]
struct TierStripe([AtomicU64; MAX_TIERS + 1]);

impl Default for TierStripe {
    fn default() -> Self {
        TierStripe(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// No cached answer served yet.
const NO_AGE: u64 = u64::MAX;

/// Everything one metrics layer (one stage) records.
pub(crate) struct Stage {
    pub(crate) name: String,
    /// Whether this is the stage every stage past the collector's bound records into.
    overflow: bool,
    origin: Instant,
    /// The period the stage was created in: its rates cover the time since.
    created: u32,
    started: Striped,
    cancelled: Striped,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    rates: [RateRing; ErrorKind::ALL.len()],
    latency: Box<[LatencyStripe]>,
    /// Tier names, set once per slot; the last slot counts every further tier.
    tier_names: [OnceLock<String>; MAX_TIERS],
    tiers: Box<[TierStripe]>,
    full_or_reduced: Striped,
    /// The cache age of the last cached answer served, in microseconds.
    cache_age: AtomicU64,
    patterns: Box<[Mutex<SpaceSaving>]>,
    top_k: usize,
    streams: Box<StreamStats>,
}

/// The current 10-second period since `origin`, plus one (0 is "never written").
fn period(origin: Instant) -> u32 {
    (origin.elapsed().as_secs() / BUCKET_SECS) as u32 + 1
}

fn kind_index(kind: ErrorKind) -> usize {
    ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Stage {
    fn new(name: String, overflow: bool, origin: Instant, top_k: usize) -> Self {
        Stage {
            name,
            overflow,
            origin,
            created: period(origin),
            started: Striped::default(),
            cancelled: Striped::default(),
            errors: Default::default(),
            rates: Default::default(),
            latency: (0..=HISTOGRAMS).map(|_| LatencyStripe::default()).collect(),
            tier_names: Default::default(),
            tiers: (0..STRIPES).map(|_| TierStripe::default()).collect(),
            full_or_reduced: Striped::default(),
            cache_age: AtomicU64::new(NO_AGE),
            patterns: (0..STRIPES)
                .map(|_| Mutex::new(SpaceSaving::new(top_k)))
                .collect(),
            top_k,
            streams: Box::default(),
        }
    }

    /// What the stage records of streamed answers.
    pub(crate) fn streams(&self) -> &StreamStats {
        &self.streams
    }

    /// Counts a call started (for the in-flight gauge).
    #[inline]
    pub(crate) fn start(&self) {
        self.started.add(stripe::current());
    }

    /// Counts a call dropped before it completed (a caller that hung up).
    pub(crate) fn cancel(&self) {
        self.cancelled.add(stripe::current());
    }

    /// Records one completed call: its outcome, latency and, for an answer, its provenance.
    pub(crate) fn record(
        &self,
        kind: Option<ErrorKind>,
        latency: Duration,
        provenance: Option<&Provenance>,
        operation: Option<&str>,
        primary: &str,
    ) {
        let stripe = stripe::current();
        let index = stripe.index();
        let micros = micros(latency).max(1);
        // The first stripes have histograms of their own; the rest share the last one.
        let (histograms, in_histograms) = if index < HISTOGRAMS {
            (&self.latency[index], stripe)
        } else {
            (&self.latency[HISTOGRAMS], Stripe::SHARER)
        };
        match kind {
            Some(kind) => {
                let k = kind_index(kind);
                self.errors[k].fetch_add(1, Relaxed);
                self.rates[k].add(period(self.origin));
                lock(&self.patterns[index]).add_pair(kind.code(), operation.unwrap_or(&self.name));
                histograms.other.record(micros, in_histograms);
            }
            None => {
                let default = Provenance::default();
                let p = provenance.unwrap_or(&default);
                let tier = if p.tier == PRIMARY_TIER {
                    primary
                } else {
                    &p.tier
                };
                self.tiers[index].0[self.tier_slot(tier)].bump(1, stripe);
                if p.fallback {
                    histograms.other.record(micros, in_histograms);
                } else {
                    histograms.primary.record(micros, in_histograms);
                }
                if matches!(p.quality, Quality::Full | Quality::Reduced) {
                    self.full_or_reduced.add(stripe);
                }
                if let Some(age) = p.cache_age() {
                    self.cache_age
                        .store(self::micros(age).min(NO_AGE - 1), Relaxed);
                }
            }
        }
    }

    /// The slot counting `tier`: its own while fewer than `MAX_TIERS` tiers were seen, else
    /// the overflow slot.
    fn tier_slot(&self, tier: &str) -> usize {
        for (slot, name) in self.tier_names.iter().enumerate() {
            match name.get() {
                Some(n) if n == tier => return slot,
                Some(_) => {}
                None => {
                    if name.get_or_init(|| tier.to_owned()) == tier {
                        return slot;
                    }
                }
            }
        }
        MAX_TIERS
    }

    fn snapshot(&self, now: u32, settings: &Settings) -> StageSnapshot {
        let cancelled = self.cancelled.sum();
        // Periods the stage has existed in, the current one included.
        let covered = now.wrapping_sub(self.created).saturating_add(1);
        let mut errors = BTreeMap::new();
        let mut rates = BTreeMap::new();
        let mut spikes = Vec::new();
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            let count = self.errors[i].load(Relaxed);
            if count == 0 {
                continue;
            }
            errors.insert(*kind, count);
            rates.insert(*kind, Rates::of(&self.rates[i], now, covered));
            if !kind.is_caller_fault()
                && let Some(spike) = spike(&self.rates[i], now, covered, *kind, settings)
            {
                spikes.push(spike);
            }
        }
        let mut all = Merged::default();
        let mut primary_latency = Merged::default();
        for h in self.latency.iter() {
            h.primary.merge_into(&mut all);
            h.other.merge_into(&mut all);
            h.primary.merge_into(&mut primary_latency);
        }
        let calls = all.count;
        let count =
            |slot: usize| -> u64 { self.tiers.iter().map(|t| t.0[slot].load(Relaxed)).sum() };
        let mut tiers = BTreeMap::new();
        for (slot, name) in self.tier_names.iter().enumerate() {
            if let Some(name) = name.get() {
                tiers.insert(name.clone(), count(slot));
            }
        }
        let tiers_overflow = count(MAX_TIERS);
        let answers: u64 = tiers.values().sum::<u64>() + tiers_overflow;
        let share = |n: u64| {
            if answers == 0 {
                1.0
            } else {
                n as f64 / answers as f64
            }
        };
        let primary_answers = primary_latency.count;
        let full_or_reduced_answers = self.full_or_reduced.sum();
        let primary_share = share(primary_answers);
        let mut patterns: HashMap<String, (u64, u64)> = HashMap::new();
        for shard in self.patterns.iter() {
            for (key, count, over) in lock(shard).entries() {
                let entry = patterns.entry(key.to_owned()).or_default();
                entry.0 += count;
                entry.1 += over;
            }
        }
        let mut top: Vec<_> = patterns.into_iter().collect();
        top.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.top_k);
        let age = self.cache_age.load(Relaxed);
        StageSnapshot {
            stage: if self.overflow {
                String::new()
            } else {
                self.name.clone()
            },
            overflow: self.overflow,
            calls,
            in_flight: self
                .started
                .sum()
                .saturating_sub(calls)
                .saturating_sub(cancelled),
            cancelled,
            errors,
            rates,
            spikes,
            latency: LatencySnapshot::of(&all),
            primary_latency: LatencySnapshot::of(&primary_latency),
            tiers,
            tiers_overflow,
            primary_answers,
            full_or_reduced_answers,
            primary_share,
            full_or_reduced_share: share(full_or_reduced_answers),
            sla_breached: answers > 0 && primary_share < settings.sla,
            cache_age: (age != NO_AGE).then(|| Duration::from_micros(age)),
            top_patterns: top
                .into_iter()
                .filter_map(|(key, (count, overestimate))| {
                    let (code, operation) = key.split_once('|')?;
                    Some(Pattern {
                        kind: ErrorKind::from_code(code)?,
                        operation: operation.to_owned(),
                        count,
                        overestimate,
                    })
                })
                .collect(),
            streams: self.streams.snapshot(),
        }
    }

    /// Entries held by the error-pattern sketch (bounded by stripes × top-K).
    pub(crate) fn pattern_entries(&self) -> usize {
        self.patterns.iter().map(|p| lock(p).len()).sum()
    }
}

/// A spike of `kind`: at least the minimum count in the last minute, and a rate over it above
/// the multiplier times the rate before it. The rate before covers the rest of the last hour,
/// or of the time the stage has existed when shorter; with less than a minute of it (a stage
/// younger than two minutes), there is no baseline and so no spike.
fn spike(
    ring: &RateRing,
    now: u32,
    covered: u32,
    kind: ErrorKind,
    settings: &Settings,
) -> Option<Spike> {
    let minute = ring.sum(now, MINUTE, None);
    if minute < settings.spike_min_count {
        return None;
    }
    let before = covered
        .min(HOUR)
        .checked_sub(MINUTE)
        .filter(|p| *p >= MINUTE)?;
    let earlier = ring.sum(now, MINUTE + before, None).saturating_sub(minute);
    let baseline = earlier as f64 / (f64::from(before) / f64::from(MINUTE));
    let per_minute_1m = minute as f64;
    (per_minute_1m > baseline * settings.spike_multiplier).then_some(Spike {
        kind,
        per_minute_1m,
        baseline_per_minute: baseline,
        multiplier: settings.spike_multiplier,
    })
}

#[derive(Default)]
struct Reported {
    transitions: BTreeMap<(String, CircuitState), u64>,
    states: BTreeMap<String, CircuitState>,
    rejections: BTreeMap<String, u64>,
    retries: BTreeMap<ErrorKind, u64>,
    budget_exhausted: u64,
    tiers_served: BTreeMap<String, u64>,
    tiers_failed: BTreeMap<(String, ErrorKind), u64>,
    cache_failures: u64,
    level: Option<String>,
    checks: BTreeMap<String, bool>,
}

/// Handles read when a snapshot is taken.
#[derive(Default)]
struct Watched {
    breakers: BTreeMap<String, BreakerHandle>,
    budgets: BTreeMap<String, Arc<RetryBudget>>,
    degrades: BTreeMap<String, DegradeHandle>,
}

/// A collector's settings, fixed when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    spike_multiplier: f64,
    spike_min_count: u64,
    sla: f64,
    top_k: usize,
    max_stages: usize,
}

pub(crate) struct Inner {
    origin: Instant,
    stages: Mutex<Stages>,
    reported: Mutex<Reported>,
    watched: Mutex<Watched>,
    pub(crate) settings: Settings,
}

#[derive(Default)]
struct Stages {
    named: Vec<Arc<Stage>>,
    overflow: Option<Arc<Stage>>,
}

/// Collects error metrics: from [`MetricsLayer`](super::MetricsLayer)s (every call's outcome,
/// latency and tier) and, as an [`EventSink`], from the other layers (breaker transitions,
/// rejections, retries, budget exhaustion, fallback tiers, degradation level).
///
/// Cheap to clone: clones share one collector. See the [module docs](crate::metrics).
#[derive(Clone)]
pub struct ErrorMetrics {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ErrorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorMetrics")
            .field(
                "stages",
                &lock(&self.inner.stages)
                    .named
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>(),
            )
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl Default for ErrorMetrics {
    fn default() -> Self {
        ErrorMetrics::new()
    }
}

/// Configures an [`ErrorMetrics`] collector; from [`ErrorMetrics::builder`].
///
/// Out-of-range values are adjusted and logged, as every setting of the crate is (see
/// [the crate's rule](crate#configuration-values)).
#[derive(Debug, Clone)]
pub struct ErrorMetricsBuilder {
    settings: Settings,
}

impl ErrorMetricsBuilder {
    /// The prefix of every metric name (default `tower_inference`), e.g. `myapp_inference`
    /// for `myapp_inference_calls_total`. Characters a Prometheus metric name cannot hold
    /// are replaced by `_` (and a leading digit is prefixed with `_`); an empty prefix is
    /// taken as the default.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.settings.prefix = metric_prefix(prefix);
        self
    }

    /// A spike is a kind whose rate over the last minute exceeds its rate before it times
    /// `multiplier` (at least 1; NaN or infinite is taken as 3; default 3).
    pub fn spike_multiplier(mut self, multiplier: f64) -> Self {
        self.settings.spike_multiplier =
            setting::factor("metrics.spike_multiplier", multiplier, 1.0, 3.0);
        self
    }

    /// The least number of errors of a kind in the last minute for a spike (at least 1;
    /// default 10), so that a handful of errors over a quiet baseline pages no one.
    pub fn spike_min_count(mut self, count: u64) -> Self {
        self.settings.spike_min_count = setting::at_least("metrics.spike_min_count", count, 1);
        self
    }

    /// The share of answers the primary tier should give (0 to 1, NaN taken as 0.9; default
    /// 0.9); [`StageSnapshot::sla_breached`] flags a stage under it.
    pub fn sla(mut self, share: f64) -> Self {
        self.settings.sla = setting::share("metrics.sla", share, 0.9);
        self
    }

    /// How many of the most frequent error patterns to keep (1 to 1 024; default 32).
    /// Memory grows with the patterns actually seen, never reserved up front.
    pub fn top_k(mut self, top_k: usize) -> Self {
        self.settings.top_k = setting::clamp("metrics.top_k", top_k, 1, MAX_TOP_K);
        self
    }

    /// The most stages the collector keeps apart (1 to 1 024; default 64). A
    /// [`MetricsLayer`](super::MetricsLayer) made with a further stage name records into one
    /// overflow stage, exported with the label `overflow="true"` in place of `stage`.
    pub fn max_stages(mut self, stages: usize) -> Self {
        self.settings.max_stages = setting::clamp("metrics.max_stages", stages, 1, 1_024);
        self
    }

    /// Builds the collector.
    pub fn build(self) -> ErrorMetrics {
        ErrorMetrics {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                stages: Mutex::new(Stages::default()),
                reported: Mutex::new(Reported::default()),
                watched: Mutex::new(Watched::default()),
                settings: self.settings,
            }),
        }
    }
}

/// The default metric name prefix.
pub(crate) const DEFAULT_PREFIX: &str = "tower_inference";

/// `prefix` made a valid start of a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
fn metric_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        setting::warn("metrics.prefix", &prefix, &DEFAULT_PREFIX);
        return DEFAULT_PREFIX.to_owned();
    }
    let mut valid: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if valid.starts_with(|c: char| c.is_ascii_digit()) {
        valid.insert(0, '_');
    }
    if valid != prefix {
        setting::warn("metrics.prefix", &prefix, &valid);
    }
    valid
}

impl ErrorMetrics {
    /// A collector with the defaults: metric names prefixed `tower_inference`, spikes at
    /// 3 × the rate before and at least 10 errors a minute, a 90 % primary-tier SLA, the top
    /// 32 error patterns and at most 64 stages.
    pub fn new() -> Self {
        ErrorMetrics::builder().build()
    }

    /// A builder, to set the prefix, the spike rule, the SLA and the bounds.
    ///
    /// ```
    /// use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
    ///
    /// let metrics = ErrorMetrics::builder().prefix("myapp_inference").spike_min_count(20).build();
    /// let _edge = MetricsLayer::new(&metrics, "edge");
    /// assert!(metrics.render_prometheus().contains("myapp_inference_calls_total{stage=\"edge\"} 0"));
    /// ```
    pub fn builder() -> ErrorMetricsBuilder {
        ErrorMetricsBuilder {
            settings: Settings {
                prefix: DEFAULT_PREFIX.to_owned(),
                spike_multiplier: 3.0,
                spike_min_count: SPIKE_MIN_COUNT,
                sla: 0.9,
                top_k: 32,
                max_stages: MAX_STAGES,
            },
        }
    }

    /// A collector with the given spike multiplier, SLA and top-K, and the other settings at
    /// their defaults (a shortcut for the [builder](Self::builder)).
    pub fn with_settings(spike_multiplier: f64, sla: f64, top_k: usize) -> Self {
        ErrorMetrics::builder()
            .spike_multiplier(spike_multiplier)
            .sla(sla)
            .top_k(top_k)
            .build()
    }

    /// The record of the stage named `name`, created on first use; past the collector's
    /// bound on stages, the overflow stage.
    pub(crate) fn stage(&self, name: &str) -> Arc<Stage> {
        // An empty label is no label to Prometheus: it would merge with the overflow stage.
        let name = if name.is_empty() {
            setting::warn("metrics stage name", &name, &"unnamed");
            "unnamed"
        } else {
            name
        };
        let mut stages = lock(&self.inner.stages);
        if let Some(stage) = stages.named.iter().find(|s| s.name == name) {
            return stage.clone();
        }
        let (origin, top_k) = (self.inner.origin, self.inner.settings.top_k);
        if stages.named.len() >= self.inner.settings.max_stages {
            tracing::warn!(
                stage = name,
                max_stages = self.inner.settings.max_stages,
                "too many metrics stages: this one records into the overflow stage"
            );
            return stages
                .overflow
                .get_or_insert_with(|| {
                    Arc::new(Stage::new("overflow".to_owned(), true, origin, top_k))
                })
                .clone();
        }
        let stage = Arc::new(Stage::new(name.to_owned(), false, origin, top_k));
        stages.named.push(stage.clone());
        stage
    }

    /// Reports the state of `breaker` in every snapshot (the `breaker_state` gauge), from
    /// the start rather than from its first transition. An
    /// [`InferenceStack`](crate::stack::InferenceStack) does this for its breaker; a later
    /// breaker of the same name replaces an earlier one.
    pub fn watch_breaker(&self, breaker: &BreakerHandle) {
        lock(&self.inner.watched)
            .breakers
            .insert(breaker.name().to_owned(), breaker.clone());
    }

    /// Reports the balance of `budget` (the retries it would allow now) under `name` in every
    /// snapshot; a later budget under the same name replaces an earlier one. An
    /// [`InferenceStack`](crate::stack::InferenceStack) does this for its budget, under its
    /// breaker's name.
    pub fn watch_retry_budget(&self, name: impl Into<String>, budget: &Arc<RetryBudget>) {
        lock(&self.inner.watched)
            .budgets
            .insert(name.into(), budget.clone());
    }

    /// Reports the level and load of `degrade` under `name` in every snapshot; a later degrade
    /// layer under the same name replaces an earlier one. An
    /// [`InferenceStack`](crate::stack::InferenceStack) does this for its degrade layer, under
    /// its breaker's name.
    pub fn watch_degrade(&self, name: impl Into<String>, degrade: &DegradeHandle) {
        lock(&self.inner.watched)
            .degrades
            .insert(name.into(), degrade.clone());
    }

    /// Records a health check's latest result (the `health_check_up` gauge).
    pub(crate) fn record_check(&self, check: &str, passed: bool) {
        let mut r = lock(&self.inner.reported);
        match r.checks.get_mut(check) {
            Some(up) => *up = passed,
            None => {
                r.checks.insert(check.to_owned(), passed);
            }
        }
    }

    /// A plain, serializable view of everything collected.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let now = period(self.inner.origin);
        let stages: Vec<Arc<Stage>> = {
            let stages = lock(&self.inner.stages);
            stages
                .named
                .iter()
                .chain(&stages.overflow)
                .cloned()
                .collect()
        };
        let settings = &self.inner.settings;
        // Stages first: the events' lock is not held while they are read.
        let stages = stages.iter().map(|s| s.snapshot(now, settings)).collect();
        let (breakers, budgets, degradation) = {
            let w = lock(&self.inner.watched);
            (
                w.breakers
                    .iter()
                    .map(|(name, handle)| (name.clone(), handle.state()))
                    .collect::<Vec<_>>(),
                w.budgets
                    .iter()
                    .map(|(name, budget)| (name.clone(), budget.balance()))
                    .collect(),
                w.degrades
                    .iter()
                    .map(|(name, d)| {
                        let level = d.level().to_owned();
                        (
                            name.clone(),
                            Degradation {
                                level,
                                load: d.load(),
                            },
                        )
                    })
                    .collect(),
            )
        };
        let r = lock(&self.inner.reported);
        let mut breaker_states = r.states.clone();
        breaker_states.extend(breakers);
        MetricsSnapshot {
            stages,
            breaker_transitions: r.transitions.clone(),
            breaker_states,
            breaker_rejections: r.rejections.clone(),
            retries: r.retries.clone(),
            budget_exhausted: r.budget_exhausted,
            retry_budgets: budgets,
            tiers_served: r.tiers_served.clone(),
            tiers_failed: r.tiers_failed.clone(),
            cache_failures: r.cache_failures,
            degradation_level: r.level.clone(),
            degradation,
            health_checks: r.checks.clone(),
        }
    }

    /// Entries held by the error-pattern sketches of every stage: bounded by 16 × top-K per
    /// stage, however many distinct errors arrive.
    pub fn pattern_entries(&self) -> usize {
        let stages = lock(&self.inner.stages);
        stages
            .named
            .iter()
            .chain(&stages.overflow)
            .map(|s| s.pattern_entries())
            .sum()
    }
}

impl EventSink for ErrorMetrics {
    fn on_event(&self, event: &Event<'_>) {
        // Fallback tiers report every answer; the metrics layer counts answers by tier, so
        // only fallback answers are kept here, and without a lock on the primary's path.
        if let Event::TierServed {
            fallback: false, ..
        } = event
        {
            return;
        }
        let mut r = lock(&self.inner.reported);
        match *event {
            Event::BreakerTransition { breaker, to, .. } => {
                *r.transitions.entry((breaker.to_owned(), to)).or_default() += 1;
                r.states.insert(breaker.to_owned(), to);
            }
            Event::CallRejected { breaker, .. } => {
                *r.rejections.entry(breaker.to_owned()).or_default() += 1;
            }
            Event::RetryScheduled { kind, .. } => *r.retries.entry(kind).or_default() += 1,
            Event::BudgetExhausted { .. } => r.budget_exhausted += 1,
            Event::TierServed { tier, .. } => {
                *r.tiers_served.entry(tier.to_owned()).or_default() += 1
            }
            Event::TierFailed { tier, kind } => {
                *r.tiers_failed.entry((tier.to_owned(), kind)).or_default() += 1;
            }
            Event::CacheFailed { .. } => r.cache_failures += 1,
            Event::LevelChanged { to, .. } => r.level = Some(to.to_owned()),
        }
    }
}

/// A watched degrade layer's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Degradation {
    /// The current level's name.
    pub level: String,
    /// The load now, in 0..=1.
    pub load: f64,
}

/// Latency of a stage's calls: Prometheus buckets, and percentiles read from finer buckets
/// (within 3.2 %).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySnapshot {
    /// Calls measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest call.
    pub max: Duration,
    /// All latencies added up.
    pub sum: Duration,
    /// Calls that took at most each bucket's upper bound (cumulative, as Prometheus counts
    /// them), for the bounds 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, 100 ms, 150 ms,
    /// 250 ms, 500 ms, 1 s, 2.5 s, 5 s, 10 s, 30 s, 60 s and 120 s; `count` is the `+Inf`
    /// bucket.
    pub buckets: Vec<(Duration, u64)>,
}

impl LatencySnapshot {
    pub(crate) fn of(merged: &Merged) -> Self {
        let mut total = 0;
        LatencySnapshot {
            count: merged.count,
            p50: merged.quantile(0.5),
            p90: merged.quantile(0.9),
            p99: merged.quantile(0.99),
            max: merged.max,
            sum: merged.sum,
            buckets: BOUNDS
                .iter()
                .zip(&merged.buckets())
                .map(|(bound, n)| {
                    total += n;
                    (Duration::from_micros(*bound), total)
                })
                .collect(),
        }
    }
}

/// A server-side error kind whose count over the last minute is at least the minimum and
/// whose rate exceeds its rate before (over the rest of the hour) × the multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spike {
    /// The kind spiking.
    pub kind: ErrorKind,
    /// Its rate over the last minute, per minute.
    pub per_minute_1m: f64,
    /// Its rate before the last minute, per minute: over the rest of the last hour, or of the
    /// time since the stage was created when shorter.
    pub baseline_per_minute: f64,
    /// The multiplier the 1-minute rate exceeds.
    pub multiplier: f64,
}

/// One of the most frequent error patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pattern {
    /// The error kind.
    pub kind: ErrorKind,
    /// The operation label.
    pub operation: String,
    /// How often it occurred, as the sketches count it: possibly over-counted by up to
    /// [`overestimate`](Self::overestimate), and possibly under-counted when one thread's
    /// sketch dropped it (each thread keeps its own table of top-K).
    pub count: u64,
    /// How much of `count` may belong to patterns it displaced from the bounded tables: the
    /// pattern occurred at least `count - overestimate` times.
    pub overestimate: u64,
}

/// What one stage (one metrics layer) saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StageSnapshot {
    /// The stage's label; empty for the overflow stage.
    pub stage: String,
    /// Whether this is the overflow stage, which counts every stage past the collector's
    /// bound ([`ErrorMetricsBuilder::max_stages`]).
    pub overflow: bool,
    /// Calls completed.
    pub calls: u64,
    /// Calls started and neither completed nor dropped yet.
    pub in_flight: u64,
    /// Calls dropped before they completed (their callers hung up); counted in no other
    /// figure.
    pub cancelled: u64,
    /// Failed calls by kind, the caller's faults included.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Error rates by kind, over the time the stage has existed when shorter than a window.
    pub rates: BTreeMap<ErrorKind, Rates>,
    /// Server-side kinds spiking now (a caller's fault never spikes).
    pub spikes: Vec<Spike>,
    /// Latency of every completed call.
    pub latency: LatencySnapshot,
    /// Latency of the answers from the primary tier (not a fallback).
    pub primary_latency: LatencySnapshot,
    /// Answers by tier name, for the first 16 tier names seen.
    pub tiers: BTreeMap<String, u64>,
    /// Answers from tiers past the first 16 names.
    pub tiers_overflow: u64,
    /// Answers from the primary tier (not a fallback).
    pub primary_answers: u64,
    /// Answers at full or reduced quality (tier 1 or 2).
    pub full_or_reduced_answers: u64,
    /// Share of answers from the primary tier; 1 before any answer.
    pub primary_share: f64,
    /// Share of answers at full or reduced quality; 1 before any answer.
    pub full_or_reduced_share: f64,
    /// Whether the primary share is under the SLA (90 % by default).
    pub sla_breached: bool,
    /// The age of the cached answer last served, once one was.
    pub cache_age: Option<Duration>,
    /// The most frequent error patterns, most frequent first.
    pub top_patterns: Vec<Pattern>,
    /// Streamed answers: time to first token, inter-token latency, tokens per second and
    /// how streams ended.
    pub streams: StreamSnapshot,
}

impl StageSnapshot {
    /// Failed calls that were the server's fault (what pages an operator).
    pub fn server_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(kind, _)| !kind.is_caller_fault())
            .map(|(_, n)| n)
            .sum()
    }

    /// Failed calls that were the caller's fault (bad input, a prompt too long).
    pub fn caller_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(kind, _)| kind.is_caller_fault())
            .map(|(_, n)| n)
            .sum()
    }
}

/// Everything an [`ErrorMetrics`] collected.
///
/// Maps keyed by two things serialize as lists of objects (e.g. `breaker_transitions` as
/// `[{"breaker":"llama","to":"open","count":1}]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// One entry per metrics layer stage, the overflow stage last.
    pub stages: Vec<StageSnapshot>,
    /// Circuit breaker transitions, by breaker and state entered.
    #[serde(serialize_with = "transitions")]
    pub breaker_transitions: BTreeMap<(String, CircuitState), u64>,
    /// Each breaker's state: watched ones as read now, others as their last transition left
    /// them.
    pub breaker_states: BTreeMap<String, CircuitState>,
    /// Calls rejected by an open breaker, by breaker.
    pub breaker_rejections: BTreeMap<String, u64>,
    /// Retries scheduled, by the kind retried.
    pub retries: BTreeMap<ErrorKind, u64>,
    /// Retries refused by an empty budget.
    pub budget_exhausted: u64,
    /// Watched retry budgets' balances: the retries each would allow now.
    pub retry_budgets: BTreeMap<String, u64>,
    /// Fallback answers, by tier.
    pub tiers_served: BTreeMap<String, u64>,
    /// Tier failures in fallback chains, by tier and kind.
    #[serde(serialize_with = "tier_failures")]
    pub tiers_failed: BTreeMap<(String, ErrorKind), u64>,
    /// Cache store failures.
    pub cache_failures: u64,
    /// The degradation level last reported by any degrade layer's events.
    pub degradation_level: Option<String>,
    /// Each watched degrade layer's level and load now, by name.
    pub degradation: BTreeMap<String, Degradation>,
    /// Health checks' latest results (passed or not), when a
    /// [`Health`](crate::health::Health) registry reports to this collector.
    pub health_checks: BTreeMap<String, bool>,
}

fn transitions<S: Serializer>(
    map: &BTreeMap<(String, CircuitState), u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Transition<'a> {
        breaker: &'a str,
        to: CircuitState,
        count: u64,
    }
    serializer.collect_seq(map.iter().map(|((breaker, to), count)| Transition {
        breaker,
        to: *to,
        count: *count,
    }))
}

fn tier_failures<S: Serializer>(
    map: &BTreeMap<(String, ErrorKind), u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct TierFailure<'a> {
        tier: &'a str,
        kind: ErrorKind,
        count: u64,
    }
    serializer.collect_seq(map.iter().map(|((tier, kind), count)| TierFailure {
        tier,
        kind: *kind,
        count: *count,
    }))
}
