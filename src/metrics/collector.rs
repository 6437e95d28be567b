//! [`ErrorMetrics`]: the collector, its per-stage records and its snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::topk::SpaceSaving;
use super::window::{BUCKET_SECS, RateRing, Rates};
use crate::error::ErrorKind;
use crate::event::{Event, EventSink};
use crate::provenance::{PRIMARY_TIER, Provenance, Quality};
use crate::setting;
use crate::stripe::{STRIPES, stripe};

/// Tier names a stage tracks; answers from further tiers count as `"other"`.
const MAX_TIERS: usize = 16;
/// The most error patterns a collector keeps.
const MAX_TOP_K: usize = 1_024;
/// Latency histograms per stage (threads share them round-robin): each holds 23 552 counters
/// (1 µs to 1 h at 3 significant digits, 184 KiB), so fewer than the counters' stripes.
const HISTOGRAMS: usize = 4;

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
    fn add(&self, index: usize) {
        self.0[index].0.fetch_add(1, Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed)).sum()
    }
}

/// A thread's latency histogram, on cache lines of its own.
#[repr(align(128))]
struct LatencyStripe(Mutex<Histogram<u64>>);

/// A thread's answer counts per tier slot, on cache lines of its own.
#[repr(align(128))]
struct TierStripe([AtomicU64; MAX_TIERS + 1]);

impl Default for TierStripe {
    fn default() -> Self {
        TierStripe(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Everything one metrics layer (one stage) records.
pub(crate) struct Stage {
    pub(crate) name: String,
    origin: Instant,
    calls: Striped,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    rates: [RateRing; ErrorKind::ALL.len()],
    /// Latency in microseconds, a few histograms shared round-robin by threads.
    latency: Box<[LatencyStripe]>,
    /// Tier names, set once per slot; the last slot counts every further tier.
    tier_names: [OnceLock<String>; MAX_TIERS],
    tiers: Box<[TierStripe]>,
    primary: Striped,
    full_or_reduced: Striped,
    patterns: Box<[Mutex<SpaceSaving>]>,
    top_k: usize,
}

/// Latency from 1 µs to 1 h in microseconds, to 3 significant digits (0.1 %).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// The current 10-second period since `origin`, plus one (0 is "never written").
fn period(origin: Instant) -> u32 {
    (origin.elapsed().as_secs() / BUCKET_SECS) as u32 + 1
}

fn kind_index(kind: ErrorKind) -> usize {
    ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Stage {
    fn new(name: String, origin: Instant, top_k: usize) -> Self {
        Stage {
            name,
            origin,
            calls: Striped::default(),
            errors: Default::default(),
            rates: Default::default(),
            latency: (0..STRIPES)
                .map(|_| LatencyStripe(Mutex::new(histogram())))
                .collect(),
            tier_names: Default::default(),
            tiers: (0..STRIPES).map(|_| TierStripe::default()).collect(),
            primary: Striped::default(),
            full_or_reduced: Striped::default(),
            patterns: (0..STRIPES)
                .map(|_| Mutex::new(SpaceSaving::new(top_k)))
                .collect(),
            top_k,
        }
    }

    /// Records one call: its outcome, latency and, for an answer, its provenance.
    pub(crate) fn record(
        &self,
        kind: Option<ErrorKind>,
        latency: Duration,
        provenance: Option<&Provenance>,
        operation: Option<&str>,
        primary: &str,
    ) {
        let index = stripe();
        self.calls.add(index);
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        lock(&self.latency[index % HISTOGRAMS].0).saturating_record(micros);
        match kind {
            Some(kind) => {
                let k = kind_index(kind);
                self.errors[k].fetch_add(1, Relaxed);
                self.rates[k].add(period(self.origin));
                let pattern = format!("{}|{}", kind.code(), operation.unwrap_or(&self.name));
                lock(&self.patterns[index]).add(&pattern);
            }
            None => {
                let default = Provenance::default();
                let p = provenance.unwrap_or(&default);
                let tier = if p.tier == PRIMARY_TIER {
                    primary
                } else {
                    &p.tier
                };
                self.tiers[index].0[self.tier_slot(tier)].fetch_add(1, Relaxed);
                if !p.fallback {
                    self.primary.add(index);
                }
                if matches!(p.quality, Quality::Full | Quality::Reduced) {
                    self.full_or_reduced.add(index);
                }
            }
        }
    }

    /// The slot counting `tier`: its own while fewer than `MAX_TIERS` tiers were seen, else
    /// the shared `"other"` slot.
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

    fn snapshot(&self, period: u32, spike_multiplier: f64, sla: f64) -> StageSnapshot {
        let calls = self.calls.sum();
        let mut errors = BTreeMap::new();
        let mut rates = BTreeMap::new();
        let mut spikes = Vec::new();
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            let count = self.errors[i].load(Relaxed);
            if count == 0 {
                continue;
            }
            errors.insert(kind.code(), count);
            let r = Rates::of(&self.rates[i], period);
            if r.per_minute_1m > r.per_minute_1h * spike_multiplier {
                spikes.push(Spike {
                    kind: *kind,
                    per_minute_1m: r.per_minute_1m,
                    per_minute_1h: r.per_minute_1h,
                    multiplier: spike_multiplier,
                });
            }
            rates.insert(kind.code(), r);
        }
        let mut merged = histogram();
        for h in self.latency.iter() {
            let _ = merged.add(&*lock(&h.0));
        }
        let quantile = |q| Duration::from_micros(merged.value_at_quantile(q));
        let latency = LatencySnapshot {
            count: merged.len(),
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            max: Duration::from_micros(merged.max()),
            sum: Duration::from_secs_f64(merged.mean() * merged.len() as f64 / 1e6),
        };
        let count =
            |slot: usize| -> u64 { self.tiers.iter().map(|t| t.0[slot].load(Relaxed)).sum() };
        let mut tiers = BTreeMap::new();
        for (slot, name) in self.tier_names.iter().enumerate() {
            if let Some(name) = name.get() {
                tiers.insert(name.clone(), count(slot));
            }
        }
        let other = count(MAX_TIERS);
        if other > 0 {
            tiers.insert("other".to_owned(), other);
        }
        let answers: u64 = tiers.values().sum();
        let share = |n: u64| {
            if answers == 0 {
                1.0
            } else {
                n as f64 / answers as f64
            }
        };
        let primary_share = share(self.primary.sum());
        let mut patterns: HashMap<String, u64> = HashMap::new();
        for shard in self.patterns.iter() {
            for (key, count, _) in lock(shard).entries() {
                *patterns.entry(key.to_owned()).or_default() += count;
            }
        }
        let mut top: Vec<_> = patterns.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.top_k);
        StageSnapshot {
            stage: self.name.clone(),
            calls,
            errors,
            rates,
            spikes,
            latency,
            tiers,
            primary_share,
            full_or_reduced_share: share(self.full_or_reduced.sum()),
            sla_breached: answers > 0 && primary_share < sla,
            top_patterns: top
                .into_iter()
                .map(|(key, count)| {
                    let (kind, operation) = key.split_once('|').unwrap_or((key.as_str(), ""));
                    Pattern {
                        kind: kind.to_owned(),
                        operation: operation.to_owned(),
                        count,
                    }
                })
                .collect(),
        }
    }

    /// Entries held by the error-pattern sketch (bounded by stripes × top-K).
    pub(crate) fn pattern_entries(&self) -> usize {
        self.patterns.iter().map(|p| lock(p).len()).sum()
    }
}

#[derive(Default)]
struct Reported {
    transitions: BTreeMap<(String, &'static str), u64>,
    rejections: BTreeMap<String, u64>,
    retries: BTreeMap<&'static str, u64>,
    budget_exhausted: u64,
    tiers_served: BTreeMap<String, u64>,
    tiers_failed: BTreeMap<(String, &'static str), u64>,
    cache_failures: u64,
    level: Option<String>,
}

pub(crate) struct Inner {
    origin: Instant,
    stages: Mutex<Vec<Arc<Stage>>>,
    reported: Mutex<Reported>,
    spike_multiplier: f64,
    sla: f64,
    top_k: usize,
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
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for ErrorMetrics {
    fn default() -> Self {
        ErrorMetrics::new()
    }
}

impl ErrorMetrics {
    /// A collector with the defaults: spikes at 3 × the hourly rate, a 90 % primary-tier
    /// SLA, the top 32 error patterns.
    pub fn new() -> Self {
        ErrorMetrics::with_settings(3.0, 0.9, 32)
    }

    /// A collector that reports a spike when a kind's 1-minute rate exceeds its 1-hour rate
    /// × `spike_multiplier` (at least 1; NaN or infinite is taken as 3), flags the SLA when
    /// the primary tier answers less than `sla` of the calls (0 to 1; NaN is taken as 0.9),
    /// and keeps the `top_k` most frequent error patterns (1 to 1 024).
    pub fn with_settings(spike_multiplier: f64, sla: f64, top_k: usize) -> Self {
        ErrorMetrics {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                stages: Mutex::new(Vec::new()),
                reported: Mutex::new(Reported::default()),
                spike_multiplier: setting::factor(
                    "metrics.spike_multiplier",
                    spike_multiplier,
                    1.0,
                    3.0,
                ),
                sla: setting::share("metrics.sla", sla, 0.9),
                top_k: setting::clamp("metrics.top_k", top_k, 1, MAX_TOP_K),
            }),
        }
    }

    /// The record of the stage named `name`, created on first use.
    pub(crate) fn stage(&self, name: &str) -> Arc<Stage> {
        let mut stages = lock(&self.inner.stages);
        if let Some(stage) = stages.iter().find(|s| s.name == name) {
            return stage.clone();
        }
        let stage = Arc::new(Stage::new(
            name.to_owned(),
            self.inner.origin,
            self.inner.top_k,
        ));
        stages.push(stage.clone());
        stage
    }

    /// A plain, serializable view of everything collected.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let period = period(self.inner.origin);
        let stages = lock(&self.inner.stages).clone();
        let r = lock(&self.inner.reported);
        MetricsSnapshot {
            stages: stages
                .iter()
                .map(|s| s.snapshot(period, self.inner.spike_multiplier, self.inner.sla))
                .collect(),
            breaker_transitions: r
                .transitions
                .iter()
                .map(|((b, to), n)| (format!("{b}|{to}"), *n))
                .collect(),
            breaker_rejections: r.rejections.clone(),
            retries: r.retries.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            budget_exhausted: r.budget_exhausted,
            tiers_served: r.tiers_served.clone(),
            tiers_failed: r
                .tiers_failed
                .iter()
                .map(|((t, k), n)| (format!("{t}|{k}"), *n))
                .collect(),
            cache_failures: r.cache_failures,
            degradation_level: r.level.clone(),
        }
    }

    /// Entries held by the error-pattern sketches of every stage: bounded by 16 × top-K per
    /// stage, however many distinct errors arrive.
    pub fn pattern_entries(&self) -> usize {
        lock(&self.inner.stages)
            .iter()
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
                *r.transitions
                    .entry((breaker.to_owned(), to.as_str()))
                    .or_default() += 1;
            }
            Event::CallRejected { breaker, .. } => {
                *r.rejections.entry(breaker.to_owned()).or_default() += 1;
            }
            Event::RetryScheduled { kind, .. } => *r.retries.entry(kind.code()).or_default() += 1,
            Event::BudgetExhausted { .. } => r.budget_exhausted += 1,
            Event::TierServed { tier, .. } => {
                *r.tiers_served.entry(tier.to_owned()).or_default() += 1
            }
            Event::TierFailed { tier, kind } => {
                *r.tiers_failed
                    .entry((tier.to_owned(), kind.code()))
                    .or_default() += 1;
            }
            Event::CacheFailed { .. } => r.cache_failures += 1,
            Event::LevelChanged { to, .. } => r.level = Some(to.to_owned()),
        }
    }
}

/// Latency percentiles, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
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
    /// All latencies added up (from the histogram's mean).
    pub sum: Duration,
}

/// An error kind whose 1-minute rate exceeds its 1-hour rate × the multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spike {
    /// The kind spiking.
    pub kind: ErrorKind,
    /// Its rate over the last minute, per minute.
    pub per_minute_1m: f64,
    /// Its rate over the last hour, per minute.
    pub per_minute_1h: f64,
    /// The multiplier the 1-minute rate exceeds.
    pub multiplier: f64,
}

/// One of the most frequent error patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pattern {
    /// The error kind's code.
    pub kind: String,
    /// The operation label.
    pub operation: String,
    /// How often it occurred (possibly over-counted by less than total ÷ top-K).
    pub count: u64,
}

/// What one stage (one metrics layer) saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StageSnapshot {
    /// The stage's label.
    pub stage: String,
    /// Calls completed.
    pub calls: u64,
    /// Failed calls by error code.
    pub errors: BTreeMap<&'static str, u64>,
    /// Error rates by error code.
    pub rates: BTreeMap<&'static str, Rates>,
    /// Kinds spiking now.
    pub spikes: Vec<Spike>,
    /// Latency of every call.
    pub latency: LatencySnapshot,
    /// Answers by tier name.
    pub tiers: BTreeMap<String, u64>,
    /// Share of answers from the primary tier (not a fallback); 1 before any answer.
    pub primary_share: f64,
    /// Share of answers at full or reduced quality (tier 1 or 2); 1 before any answer.
    pub full_or_reduced_share: f64,
    /// Whether the primary share is under the SLA (90 % by default).
    pub sla_breached: bool,
    /// The most frequent error patterns, most frequent first.
    pub top_patterns: Vec<Pattern>,
}

/// Everything an [`ErrorMetrics`] collected.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// One entry per metrics layer stage.
    pub stages: Vec<StageSnapshot>,
    /// Breaker transitions, by `"breaker|to_state"`.
    pub breaker_transitions: BTreeMap<String, u64>,
    /// Calls rejected by an open breaker, by breaker.
    pub breaker_rejections: BTreeMap<String, u64>,
    /// Retries scheduled, by error code.
    pub retries: BTreeMap<String, u64>,
    /// Retries refused by an empty budget.
    pub budget_exhausted: u64,
    /// Fallback answers, by tier.
    pub tiers_served: BTreeMap<String, u64>,
    /// Tier failures, by `"tier|error_code"`.
    pub tiers_failed: BTreeMap<String, u64>,
    /// Cache store failures.
    pub cache_failures: u64,
    /// The current degradation level, once one was reported.
    pub degradation_level: Option<String>,
}
