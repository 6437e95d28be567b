//! The collector in a `prometheus-client` registry: one `/metrics` with the application's own
//! metrics and the crate's, every series of the crate's text exposition there with its value.
#![cfg(feature = "prometheus-client")]

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{InferenceError, Quality, Served};

/// Sample lines as `name{labels}` → value, labels sorted and `le` read as a number (the
/// registry writes `le="1.0"` and labels in another order; Prometheus reads them the same).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<String> = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let l = l.trim_end_matches('"');
                    match l.strip_prefix("le=\"") {
                        Some(le) if le != "+Inf" => format!("le={}", le.parse::<f64>().unwrap()),
                        _ => l.to_owned(),
                    }
                })
                .collect();
            labels.sort();
            Some((
                format!("{name}{{{}}}", labels.join(",")),
                value.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_registry_serves_the_applications_metrics_and_the_crates() {
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .service(service_fn(|n: u32| async move {
            tokio::time::sleep(Duration::from_millis(u64::from(n) * 7)).await;
            match n % 3 {
                0 => Err(InferenceError::timeout(Duration::from_secs(1))),
                1 => {
                    let mut s = Served::new(());
                    s.provenance
                        .set_tier("cache \"b\"", Quality::Stale)
                        .set_fallback(true);
                    Ok(s)
                }
                _ => Ok(Served::new(())),
            }
        }));
    for n in 0..30 {
        let _ = svc.clone().oneshot(n).await;
    }

    let mut registry = Registry::default();
    let requests: Counter = Counter::default();
    registry.register(
        "app_requests",
        "The application's own requests",
        requests.clone(),
    );
    requests.inc_by(7);
    registry.register_collector(Box::new(metrics.clone()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

    let theirs = samples(&text);
    assert_eq!(theirs.get("app_requests_total{}"), Some(&7.0), "{text}");
    let ours = samples(&metrics.render_prometheus());
    assert!(ours.len() > 60, "{} series", ours.len());
    for (series, value) in &ours {
        assert_eq!(theirs.get(series), Some(value), "{series} differs:\n{text}");
    }
    assert!(
        text.contains("# TYPE tower_inference_latency_seconds histogram"),
        "{text}"
    );
}
