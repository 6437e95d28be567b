//! The metric families of an [`ErrorMetrics`] snapshot, and their Prometheus text exposition
//! (format 0.0.4). The same families feed the `prometheus-client` registry integration.

use std::fmt::Write as _;

use super::collector::{ErrorMetrics, LatencySnapshot, MetricsSnapshot, StageSnapshot};
use crate::event::CircuitState;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// One series' value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Number(f64),
    Histogram {
        /// Count per bucket, not cumulative, with finite upper bounds in seconds; the `+Inf`
        /// bucket is `count` minus their sum.
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// One series: its labels and value.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) labels: Vec<(&'static str, String)>,
    pub(crate) value: Value,
}

/// A metric family. A counter's `name` leaves out the `_total` its samples carry.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) name: String,
    pub(crate) help: &'static str,
    pub(crate) kind: Type,
    pub(crate) series: Vec<Series>,
}

/// Builds the families of a snapshot.
struct Families<'a> {
    prefix: &'a str,
    out: Vec<Family>,
}

impl Families<'_> {
    fn family(&mut self, name: &str, kind: Type, help: &'static str) -> &mut Vec<Series> {
        self.out.push(Family {
            name: format!("{}_{name}", self.prefix),
            help,
            kind,
            series: Vec::new(),
        });
        &mut self.out.last_mut().expect("just pushed").series
    }
}

/// The stage's label: `stage="name"`, or `overflow="true"` for the overflow stage (the
/// convention OpenTelemetry uses for its cardinality limit), so that no real stage name can
/// be mistaken for it.
fn stage(st: &StageSnapshot) -> (&'static str, String) {
    if st.overflow {
        ("overflow", "true".to_owned())
    } else {
        ("stage", st.stage.clone())
    }
}

fn number(labels: Vec<(&'static str, String)>, value: f64) -> Series {
    Series {
        labels,
        value: Value::Number(value),
    }
}

fn histogram(labels: Vec<(&'static str, String)>, l: &LatencySnapshot) -> Series {
    let buckets = l.buckets.iter().map(|(bound, n)| (bound.as_secs_f64(), *n));
    histogram_of(labels, buckets, l.sum.as_secs_f64(), l.count)
}

/// A histogram series from cumulative `buckets` (upper bound, count at most it).
fn histogram_of(
    labels: Vec<(&'static str, String)>,
    buckets: impl Iterator<Item = (f64, u64)>,
    sum: f64,
    count: u64,
) -> Series {
    let mut below = 0;
    Series {
        labels,
        value: Value::Histogram {
            buckets: buckets
                .map(|(bound, cumulative)| {
                    let n = cumulative - below;
                    below = cumulative;
                    (bound, n)
                })
                .collect(),
            sum,
            count,
        },
    }
}

const STATES: [CircuitState; 5] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::ForcedOpen,
    CircuitState::Disabled,
];

/// Every metric family of `s`, names prefixed with `prefix`.
pub(crate) fn families(s: &MetricsSnapshot, prefix: &str) -> Vec<Family> {
    let mut f = Families {
        prefix,
        out: Vec::new(),
    };
    let stages = &s.stages;
    let each = |f: &mut Vec<Series>, value: &dyn Fn(&StageSnapshot) -> f64| {
        f.extend(stages.iter().map(|st| number(vec![stage(st)], value(st))));
    };

    each(
        f.family("calls", Type::Counter, "Calls completed, by stage."),
        &|st| st.calls as f64,
    );
    each(
        f.family(
            "calls_cancelled",
            Type::Counter,
            "Calls dropped before they completed (the caller hung up), by stage.",
        ),
        &|st| st.cancelled as f64,
    );
    each(
        f.family(
            "in_flight",
            Type::Gauge,
            "Calls started and not yet completed, by stage.",
        ),
        &|st| st.in_flight as f64,
    );

    let series = f.family(
        "errors",
        Type::Counter,
        "Failed calls, by stage, error kind and fault (caller or server).",
    );
    for st in stages {
        for (kind, n) in &st.errors {
            series.push(number(
                vec![stage(st), ("kind", kind.code().to_owned()), fault(*kind)],
                *n as f64,
            ));
        }
    }

    let series = f.family(
        "error_rate_per_minute",
        Type::Gauge,
        "Errors per minute over a trailing window (1m, 5m, 1h), or over the uptime when shorter.",
    );
    for st in stages {
        for (kind, r) in &st.rates {
            for (window, value) in [
                ("1m", r.per_minute_1m),
                ("5m", r.per_minute_5m),
                ("1h", r.per_minute_1h),
            ] {
                series.push(number(
                    vec![
                        stage(st),
                        ("kind", kind.code().to_owned()),
                        fault(*kind),
                        ("window", window.to_owned()),
                    ],
                    value,
                ));
            }
        }
    }

    let series = f.family(
        "error_spike",
        Type::Gauge,
        "1 while a server-side error kind spikes: at least the minimum count in the last minute, at a rate above the multiplier times the rate before.",
    );
    for st in stages {
        for spike in &st.spikes {
            series.push(number(
                vec![stage(st), ("kind", spike.kind.code().to_owned())],
                1.0,
            ));
        }
    }

    let pattern_labels = |st: &StageSnapshot, p: &super::collector::Pattern| {
        vec![
            stage(st),
            ("kind", p.kind.code().to_owned()),
            ("operation", p.operation.clone()),
        ]
    };
    let series = f.family(
        "error_pattern_occurrences",
        Type::Gauge,
        "Occurrences of the most frequent error patterns (kind and operation), approximate: at least the value minus the overestimate.",
    );
    for st in stages {
        for p in &st.top_patterns {
            series.push(number(pattern_labels(st, p), p.count as f64));
        }
    }
    let series = f.family(
        "error_pattern_overestimate",
        Type::Gauge,
        "How much of an error pattern's occurrences may belong to patterns it displaced.",
    );
    for st in stages {
        for p in &st.top_patterns {
            series.push(number(pattern_labels(st, p), p.overestimate as f64));
        }
    }

    let series = f.family(
        "latency_seconds",
        Type::Histogram,
        "Latency of completed calls, by stage.",
    );
    series.extend(
        stages
            .iter()
            .map(|st| histogram(vec![stage(st)], &st.latency)),
    );
    let series = f.family(
        "primary_latency_seconds",
        Type::Histogram,
        "Latency of the answers from the primary tier (not a fallback), by stage.",
    );
    series.extend(
        stages
            .iter()
            .map(|st| histogram(vec![stage(st)], &st.primary_latency)),
    );
    // A gauge, not a summary: the `prometheus-client` registry has no summary type, and
    // these are since start. Windowed percentiles come from the histogram.
    let series = f.family(
        "latency_percentile_seconds",
        Type::Gauge,
        "Latency percentiles (50, 90, 99, 100) of completed calls since start, by stage, within 3.2 %.",
    );
    for st in stages {
        let l = &st.latency;
        for (p, v) in [("50", l.p50), ("90", l.p90), ("99", l.p99), ("100", l.max)] {
            series.push(number(
                vec![stage(st), ("percentile", p.to_owned())],
                v.as_secs_f64(),
            ));
        }
    }

    // Stream series only for the stages that saw a stream, so that a service that never
    // streams exports none of them.
    let streaming: Vec<&StageSnapshot> = stages
        .iter()
        .filter(|st| st.streams.first_token.count > 0)
        .collect();
    let series = f.family(
        "stream_first_token_seconds",
        Type::Histogram,
        "Time from the call to the first chunk of the streams that started, by stage.",
    );
    series.extend(
        streaming
            .iter()
            .map(|st| histogram(vec![stage(st)], &st.streams.first_token)),
    );
    let series = f.family(
        "stream_inter_token_seconds",
        Type::Histogram,
        "Time between two chunks of a stream, by stage.",
    );
    series.extend(
        streaming
            .iter()
            .map(|st| histogram(vec![stage(st)], &st.streams.inter_token)),
    );
    let series = f.family(
        "stream_tokens_per_second",
        Type::Histogram,
        "Tokens per second after the first chunk, of the streams that finished, by stage.",
    );
    series.extend(streaming.iter().map(|st| {
        let rates = &st.streams.tokens_per_second;
        histogram_of(
            vec![stage(st)],
            rates.buckets.iter().copied(),
            rates.sum,
            rates.count,
        )
    }));
    let series = f.family(
        "streams_ended",
        Type::Counter,
        "Streams that started, by stage and how they ended: finished, failed (mid-stream), stalled (cut by the stall timeout) or cancelled (the caller hung up).",
    );
    for st in &streaming {
        let s = &st.streams;
        for (end, n) in [
            ("finished", s.finished),
            ("failed", s.failed),
            ("stalled", s.stalled),
            ("cancelled", s.cancelled),
        ] {
            series.push(number(vec![stage(st), ("end", end.to_owned())], n as f64));
        }
    }

    let series = f.family(
        "tier_answers",
        Type::Counter,
        "Answers by the tier that gave them; tiers past the first 16 names count in the series labelled overflow=\"true\".",
    );
    for st in stages {
        for (tier, n) in &st.tiers {
            series.push(number(vec![stage(st), ("tier", tier.clone())], *n as f64));
        }
        if st.tiers_overflow > 0 {
            // The overflow stage already carries `overflow="true"`.
            let mut labels = vec![stage(st)];
            if !st.overflow {
                labels.push(("overflow", "true".to_owned()));
            }
            series.push(number(labels, st.tiers_overflow as f64));
        }
    }
    each(
        f.family(
            "primary_answers",
            Type::Counter,
            "Answers from the primary tier (tier 1, not a fallback), by stage.",
        ),
        &|st| st.primary_answers as f64,
    );
    each(
        f.family(
            "full_or_reduced_answers",
            Type::Counter,
            "Answers at full or reduced quality (tier 1 or 2), by stage.",
        ),
        &|st| st.full_or_reduced_answers as f64,
    );
    each(
        f.family(
            "primary_share",
            Type::Gauge,
            "Share of answers from the primary tier since start.",
        ),
        &|st| st.primary_share,
    );
    each(
        f.family(
            "full_or_reduced_share",
            Type::Gauge,
            "Share of answers at full or reduced quality (tier 1 or 2) since start.",
        ),
        &|st| st.full_or_reduced_share,
    );
    each(
        f.family(
            "sla_breached",
            Type::Gauge,
            "1 while the primary tier's share is under the SLA.",
        ),
        &|st| f64::from(u8::from(st.sla_breached)),
    );
    let series = f.family(
        "cache_age_seconds",
        Type::Gauge,
        "Age of the cached answer last served, by stage.",
    );
    for st in stages {
        if let Some(age) = st.cache_age {
            series.push(number(vec![stage(st)], age.as_secs_f64()));
        }
    }

    let series = f.family(
        "breaker_state",
        Type::Gauge,
        "1 for each circuit breaker's current state, 0 for the others.",
    );
    for (breaker, state) in &s.breaker_states {
        for candidate in STATES {
            series.push(number(
                vec![
                    ("breaker", breaker.clone()),
                    ("state", candidate.as_str().to_owned()),
                ],
                f64::from(u8::from(candidate == *state)),
            ));
        }
    }
    let series = f.family(
        "breaker_transitions",
        Type::Counter,
        "Circuit breaker transitions, by breaker and state entered.",
    );
    for ((breaker, to), n) in &s.breaker_transitions {
        series.push(number(
            vec![("breaker", breaker.clone()), ("to", to.as_str().to_owned())],
            *n as f64,
        ));
    }
    let series = f.family(
        "breaker_rejections",
        Type::Counter,
        "Calls rejected by an open breaker.",
    );
    for (breaker, n) in &s.breaker_rejections {
        series.push(number(vec![("breaker", breaker.clone())], *n as f64));
    }
    let series = f.family(
        "retries",
        Type::Counter,
        "Retries scheduled, by the error kind retried.",
    );
    for (kind, n) in &s.retries {
        series.push(number(vec![("kind", kind.code().to_owned())], *n as f64));
    }
    f.family(
        "retry_budget_exhausted",
        Type::Counter,
        "Retries refused by an empty retry budget.",
    )
    .push(number(Vec::new(), s.budget_exhausted as f64));
    let series = f.family(
        "retry_budget_balance",
        Type::Gauge,
        "Retries each watched retry budget would allow now.",
    );
    for (budget, n) in &s.retry_budgets {
        series.push(number(vec![("budget", budget.clone())], *n as f64));
    }
    let series = f.family(
        "fallback_served",
        Type::Counter,
        "Answers from fallback tiers, by tier.",
    );
    for (tier, n) in &s.tiers_served {
        series.push(number(vec![("tier", tier.clone())], *n as f64));
    }
    let series = f.family(
        "tier_failures",
        Type::Counter,
        "Tier failures in fallback chains, by tier and error kind.",
    );
    for ((tier, kind), n) in &s.tiers_failed {
        series.push(number(
            vec![("tier", tier.clone()), ("kind", kind.code().to_owned())],
            *n as f64,
        ));
    }
    f.family(
        "cache_failures",
        Type::Counter,
        "Fallback cache store failures.",
    )
    .push(number(Vec::new(), s.cache_failures as f64));
    let series = f.family(
        "degradation_level",
        Type::Gauge,
        "1 for the current degradation level, by watched degrade layer (or, with none watched, the level last reported).",
    );
    for (degrade, d) in &s.degradation {
        series.push(number(
            vec![("degrade", degrade.clone()), ("level", d.level.clone())],
            1.0,
        ));
    }
    if let (true, Some(level)) = (s.degradation.is_empty(), &s.degradation_level) {
        series.push(number(vec![("level", level.clone())], 1.0));
    }
    let series = f.family(
        "degradation_load",
        Type::Gauge,
        "Each watched degrade layer's load, 0 to 1.",
    );
    for (degrade, d) in &s.degradation {
        series.push(number(vec![("degrade", degrade.clone())], d.load));
    }
    let series = f.family(
        "health_check_up",
        Type::Gauge,
        "1 if a health check (the inference canary included) passed its latest run, else 0.",
    );
    for (check, up) in &s.health_checks {
        series.push(number(
            vec![("check", check.clone())],
            f64::from(u8::from(*up)),
        ));
    }
    f.out
}

fn fault(kind: crate::ErrorKind) -> (&'static str, String) {
    let fault = if kind.is_caller_fault() {
        "caller"
    } else {
        "server"
    };
    ("fault", fault.to_owned())
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn sample(out: &mut String, name: &str, labels: &[(&str, String)], le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le.to_owned()));
        for (i, (key, val)) in labels.iter().chain(&le).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"");
            escape(val, out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The Prometheus text exposition of `families`.
pub(crate) fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let (name, kind) = match family.kind {
            Type::Counter => (format!("{}_total", family.name), "counter"),
            Type::Gauge => (family.name.clone(), "gauge"),
            Type::Histogram => (family.name.clone(), "histogram"),
        };
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for series in &family.series {
            match &series.value {
                Value::Number(v) => sample(&mut out, &name, &series.labels, None, *v),
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                } => {
                    let bucket = format!("{name}_bucket");
                    let mut cumulative = 0;
                    for (bound, n) in buckets {
                        cumulative += n;
                        let le = bound.to_string();
                        sample(
                            &mut out,
                            &bucket,
                            &series.labels,
                            Some(&le),
                            cumulative as f64,
                        );
                    }
                    sample(
                        &mut out,
                        &bucket,
                        &series.labels,
                        Some("+Inf"),
                        *count as f64,
                    );
                    sample(&mut out, &format!("{name}_sum"), &series.labels, None, *sum);
                    sample(
                        &mut out,
                        &format!("{name}_count"),
                        &series.labels,
                        None,
                        *count as f64,
                    );
                }
            }
        }
    }
    out
}

impl ErrorMetrics {
    /// The metrics in Prometheus text exposition format (0.0.4): every family with HELP and
    /// TYPE lines, latency as histograms, label values escaped.
    pub fn render_prometheus(&self) -> String {
        render(&families(&self.snapshot(), &self.inner.settings.prefix))
    }
}
