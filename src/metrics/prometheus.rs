//! Prometheus text exposition (format 0.0.4) of an [`ErrorMetrics`] snapshot.

use std::fmt::Write as _;

use super::collector::{ErrorMetrics, MetricsSnapshot};

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

const P: &str = "tower_inference";

impl ErrorMetrics {
    /// The metrics in Prometheus text exposition format, every family with HELP and TYPE lines
    /// and label values escaped.
    pub fn render_prometheus(&self) -> String {
        render(&self.snapshot())
    }
}

fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };

    let name = format!("{P}_calls_total");
    f.header(&name, "counter", "Calls completed, by stage.");
    for st in &s.stages {
        f.sample(&name, &[("stage", &st.stage)], st.calls as f64);
    }

    let name = format!("{P}_errors_total");
    f.header(&name, "counter", "Failed calls, by stage and error kind.");
    for st in &s.stages {
        for (kind, n) in &st.errors {
            f.sample(&name, &[("stage", &st.stage), ("kind", kind)], *n as f64);
        }
    }

    let name = format!("{P}_error_rate_per_minute");
    f.header(
        &name,
        "gauge",
        "Errors per minute over a trailing window (1m, 5m, 1h).",
    );
    for st in &s.stages {
        for (kind, r) in &st.rates {
            for (window, value) in [
                ("1m", r.per_minute_1m),
                ("5m", r.per_minute_5m),
                ("1h", r.per_minute_1h),
            ] {
                f.sample(
                    &name,
                    &[("stage", &st.stage), ("kind", kind), ("window", window)],
                    value,
                );
            }
        }
    }

    let name = format!("{P}_error_spike");
    f.header(
        &name,
        "gauge",
        "1 while an error kind's 1-minute rate exceeds its 1-hour rate times the spike multiplier.",
    );
    for st in &s.stages {
        for spike in &st.spikes {
            f.sample(
                &name,
                &[("stage", &st.stage), ("kind", spike.kind.code())],
                1.0,
            );
        }
    }

    let name = format!("{P}_error_pattern_occurrences");
    f.header(
        &name,
        "gauge",
        "Occurrences of the most frequent error patterns (kind and operation), approximate.",
    );
    for st in &s.stages {
        for p in &st.top_patterns {
            f.sample(
                &name,
                &[
                    ("stage", &st.stage),
                    ("kind", &p.kind),
                    ("operation", &p.operation),
                ],
                p.count as f64,
            );
        }
    }

    let name = format!("{P}_latency_seconds");
    f.header(&name, "summary", "Call latency, by stage.");
    for st in &s.stages {
        let l = &st.latency;
        for (q, v) in [
            ("0.5", l.p50),
            ("0.9", l.p90),
            ("0.99", l.p99),
            ("1", l.max),
        ] {
            f.sample(
                &name,
                &[("stage", &st.stage), ("quantile", q)],
                v.as_secs_f64(),
            );
        }
        f.sample(
            &format!("{name}_sum"),
            &[("stage", &st.stage)],
            l.sum.as_secs_f64(),
        );
        f.sample(
            &format!("{name}_count"),
            &[("stage", &st.stage)],
            l.count as f64,
        );
    }

    let name = format!("{P}_tier_answers_total");
    f.header(&name, "counter", "Answers by the tier that gave them.");
    for st in &s.stages {
        for (tier, n) in &st.tiers {
            f.sample(&name, &[("stage", &st.stage), ("tier", tier)], *n as f64);
        }
    }

    let name = format!("{P}_primary_share");
    f.header(&name, "gauge", "Share of answers from the primary tier.");
    for st in &s.stages {
        f.sample(&name, &[("stage", &st.stage)], st.primary_share);
    }
    let name = format!("{P}_full_or_reduced_share");
    f.header(
        &name,
        "gauge",
        "Share of answers at full or reduced quality (tier 1 or 2).",
    );
    for st in &s.stages {
        f.sample(&name, &[("stage", &st.stage)], st.full_or_reduced_share);
    }
    let name = format!("{P}_sla_breached");
    f.header(
        &name,
        "gauge",
        "1 while the primary tier's share is under the SLA.",
    );
    for st in &s.stages {
        f.sample(
            &name,
            &[("stage", &st.stage)],
            f64::from(u8::from(st.sla_breached)),
        );
    }

    let name = format!("{P}_breaker_transitions_total");
    f.header(
        &name,
        "counter",
        "Circuit breaker transitions, by breaker and state entered.",
    );
    for (key, n) in &s.breaker_transitions {
        let (breaker, to) = key.rsplit_once('|').unwrap_or((key.as_str(), ""));
        f.sample(&name, &[("breaker", breaker), ("to", to)], *n as f64);
    }
    let name = format!("{P}_breaker_rejections_total");
    f.header(&name, "counter", "Calls rejected by an open breaker.");
    for (breaker, n) in &s.breaker_rejections {
        f.sample(&name, &[("breaker", breaker)], *n as f64);
    }
    let name = format!("{P}_retries_total");
    f.header(
        &name,
        "counter",
        "Retries scheduled, by the error kind retried.",
    );
    for (kind, n) in &s.retries {
        f.sample(&name, &[("kind", kind)], *n as f64);
    }
    let name = format!("{P}_retry_budget_exhausted_total");
    f.header(
        &name,
        "counter",
        "Retries refused by an empty retry budget.",
    );
    f.sample(&name, &[], s.budget_exhausted as f64);
    let name = format!("{P}_fallback_served_total");
    f.header(&name, "counter", "Answers from fallback tiers, by tier.");
    for (tier, n) in &s.tiers_served {
        f.sample(&name, &[("tier", tier)], *n as f64);
    }
    let name = format!("{P}_tier_failures_total");
    f.header(
        &name,
        "counter",
        "Tier failures in fallback chains, by tier and error kind.",
    );
    for (key, n) in &s.tiers_failed {
        let (tier, kind) = key.rsplit_once('|').unwrap_or((key.as_str(), ""));
        f.sample(&name, &[("tier", tier), ("kind", kind)], *n as f64);
    }
    let name = format!("{P}_cache_failures_total");
    f.header(&name, "counter", "Fallback cache store failures.");
    f.sample(&name, &[], s.cache_failures as f64);
    let name = format!("{P}_degradation_level");
    f.header(&name, "gauge", "1 for the current degradation level.");
    if let Some(level) = &s.degradation_level {
        f.sample(&name, &[("level", level)], 1.0);
    }
    out
}
