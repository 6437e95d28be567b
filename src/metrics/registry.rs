//! The collector in a `prometheus-client` registry (feature `prometheus-client`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::collector::ErrorMetrics;
use super::prometheus::{Type, Value, families};

/// Registers the crate's metrics in a [`prometheus_client`] registry, so an application that
/// already serves its own metrics from one serves these from the same `/metrics`.
///
/// Every scrape takes one [snapshot](ErrorMetrics::snapshot) and encodes the same families,
/// names and labels as [`render_prometheus`](ErrorMetrics::render_prometheus) (in the
/// registry's format, OpenMetrics text, which writes `le="1.0"` where the crate's own text
/// writes `le="1"`: Prometheus reads both as the same bound). A registry made `with_prefix`
/// adds its prefix in front of the collector's own.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
///
/// let metrics = ErrorMetrics::new();
/// let _edge = MetricsLayer::new(&metrics, "edge");
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(metrics.clone()));
///
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("tower_inference_calls_total{stage=\"edge\"} 0"));
/// ```
impl Collector for ErrorMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in families(&self.snapshot(), &self.inner.settings.prefix) {
            let kind = match family.kind {
                Type::Counter => MetricType::Counter,
                Type::Gauge => MetricType::Gauge,
                Type::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&family.name, family.help, None, kind)?;
            for series in &family.series {
                let labels: Vec<(&str, &str)> = series
                    .labels
                    .iter()
                    .map(|(key, value)| (*key, value.as_str()))
                    .collect();
                let labels = labels.as_slice();
                // A series with no labels is encoded without `{}`.
                if labels.is_empty() {
                    encode_value(&mut metric, family.kind, &series.value)?;
                } else {
                    encode_value(
                        &mut metric.encode_family(&labels)?,
                        family.kind,
                        &series.value,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    sample: &mut MetricEncoder<'_>,
    kind: Type,
    value: &Value,
) -> Result<(), std::fmt::Error> {
    match value {
        Value::Number(v) if kind == Type::Counter => {
            sample.encode_counter::<NoLabelSet, _, u64>(&(*v as u64), None)
        }
        Value::Number(v) => sample.encode_gauge(v),
        Value::Histogram {
            buckets,
            sum,
            count,
        } => {
            let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
            let mut all = buckets.clone();
            all.push((f64::INFINITY, count.saturating_sub(finite)));
            sample.encode_histogram::<NoLabelSet>(*sum, *count, &all, None)
        }
    }
}
