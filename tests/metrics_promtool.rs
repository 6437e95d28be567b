//! The Prometheus text passes `promtool check metrics`, with every metric family present.
//!
//! Where `promtool` is missing this test says it was skipped, unless
//! `TOWER_INFERENCE_REQUIRE_PROMTOOL` is set (CI sets it), in which case it fails.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

mod support;

use support::all_events;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::health::Health;
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::retry::RetryBudget;
use tower_inference::stream::{Chunk, TokenStream};
use tower_inference::{Emitter, InferenceError, Quality, Served};

#[tokio::test(start_paused = true)]
async fn promtool_accepts_a_full_snapshot() {
    let metrics = ErrorMetrics::builder().max_stages(1).build();
    let edge = MetricsLayer::new(&metrics, "edge").operation(|n: &u32| format!("op \"{n}\""));
    let svc = ServiceBuilder::new()
        .layer(edge)
        .service(service_fn(|n: u32| async move {
            match n % 4 {
                0 => Err(InferenceError::timeout(Duration::from_secs(1))),
                1 => {
                    let mut s = Served::new(());
                    s.provenance
                        .set_tier("cache", Quality::Stale)
                        .set_fallback(true)
                        .set_cache_age(Duration::from_secs(90));
                    Ok(s)
                }
                2 => Err(InferenceError::invalid_input("empty prompt")),
                _ => Ok(Served::new(())),
            }
        }));
    // A quiet baseline, then a burst: a spike.
    for n in 0..8 {
        let _ = svc.clone().oneshot(n).await;
    }
    tokio::time::advance(Duration::from_secs(600)).await;
    for n in 0..80 {
        let _ = svc.clone().oneshot(n).await;
    }
    // More tiers than a stage keeps apart.
    let many = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .service(service_fn(|n: u32| async move {
            let mut s = Served::new(());
            s.provenance.set_tier(format!("tier-{n}"), Quality::Minimal);
            Ok::<_, InferenceError>(s)
        }));
    for n in 0..20 {
        many.clone().oneshot(n).await.unwrap();
    }
    // A streamed answer, a token every 10 ms.
    let streamed = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .service(service_fn(|()| async {
            Ok::<_, InferenceError>(TokenStream::from_chunks(["a", " b", " c"].map(Chunk::new)))
        }));
    let mut stream = streamed.oneshot(()).await.unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    // A stage past the bound, and a call still in flight there.
    let extra = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "extra"))
        .service(service_fn(|()| {
            std::future::pending::<Result<Served<()>, InferenceError>>()
        }));
    let _in_flight = extra.oneshot(());
    let mut pending = std::pin::pin!(_in_flight);
    assert!(futures_poll_once(pending.as_mut()).await);

    let emitter = Emitter::new(metrics.clone());
    let quality = Quality::Stale;
    for event in all_events(&quality) {
        emitter.emit(&event);
    }
    metrics.watch_breaker(&BreakerLayer::new().handle());
    metrics.watch_retry_budget("llama-70b", &Arc::new(RetryBudget::default()));
    metrics.watch_degrade("llama-70b", &DegradeLayer::builder().build().handle());
    let health = Health::builder()
        .check("feature_store", false, Duration::from_secs(1), || async {
            Ok(())
        })
        .metrics(&metrics)
        .build();
    health.ready().await;

    let text = metrics.render_prometheus();
    assert!(
        text.contains("tower_inference_error_spike{"),
        "a spike is present:\n{text}"
    );
    // Every family has a sample.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "{name} has no sample:\n{text}"
        );
    }
    assert!(
        text.contains(r#"tower_inference_in_flight{overflow="true"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tower_inference_tier_answers_total{stage="edge",overflow="true"} 6"#),
        "{text}"
    );

    // Every metric the shipped alert rules use is one the crate exports.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prometheus/alerts.yml"
    ))
    .unwrap();
    let exported: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut used = 0;
    for (at, _) in rules.match_indices("tower_inference_") {
        let name: String = rules[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // A histogram is named by its family or its `_bucket` series.
        let known = [name.clone(), format!("{name}_bucket")];
        assert!(
            known.iter().any(|n| exported.contains(&n.as_str())),
            "the alert rules use {name}, which is not exported"
        );
        used += 1;
    }
    assert!(used >= 6, "{used} metric names found in the rules");

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

/// Polls `fut` once; true if it is still pending.
async fn futures_poll_once<F: Future>(fut: Pin<&mut F>) -> bool {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| Poll::Ready(fut.take().unwrap().poll(cx).is_pending())).await
}
