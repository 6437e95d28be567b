//! The Prometheus text passes `promtool check metrics`, with every metric family present.
//!
//! Where `promtool` is missing this test says it was skipped, unless
//! `TOWER_INFERENCE_REQUIRE_PROMTOOL` is set (CI sets it), in which case it fails.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;

use support::all_events;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{Emitter, InferenceError, Quality, Served};

#[tokio::test(start_paused = true)]
async fn promtool_accepts_a_full_snapshot() {
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge").operation(|n: &u32| format!("op \"{n}\"")))
        .service(service_fn(|n: u32| async move {
            match n % 3 {
                0 => Err(InferenceError::Timeout {
                    after: Duration::from_secs(1),
                }),
                1 => {
                    let mut s = Served::new(());
                    s.provenance.set_tier("cache", Quality::Stale);
                    Ok(s)
                }
                _ => Ok(Served::new(())),
            }
        }));
    for n in 0..30 {
        let _ = svc.clone().oneshot(n).await;
    }
    let emitter = Emitter::new(metrics.clone());
    let quality = Quality::Stale;
    for event in all_events(&quality) {
        emitter.emit(&event);
    }
    let text = metrics.render_prometheus();
    assert!(
        text.contains("tower_inference_error_spike{"),
        "a spike is present:\n{text}"
    );

    let required = std::env::var_os("TOWER_INFERENCE_REQUIRE_PROMTOOL").is_some();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if !required => {
            eprintln!(
                "skipped: promtool not found ({e}); set TOWER_INFERENCE_REQUIRE_PROMTOOL to make this a failure"
            );
            return;
        }
        Err(e) => panic!(
            "promtool is required (TOWER_INFERENCE_REQUIRE_PROMTOOL is set) but could not run: {e}"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool rejected the exposition:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
