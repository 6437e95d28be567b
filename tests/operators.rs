//! What an on-call engineer relies on: no false spikes after a start, a bounded number of
//! stages, no real label lost to an overflow bucket, caller faults kept out of the paging
//! signals, and top-K counts exported with their possible overestimate. Paused time.

use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{InferenceError, Quality, Served};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// Calls a metrics layer named `stage` once per item: `Ok(tier)` answers from `tier`, `Err`
/// fails with the error.
async fn call(
    metrics: &ErrorMetrics,
    stage: &str,
    calls: Vec<Result<&'static str, InferenceError>>,
) {
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics, stage))
        .service(service_fn(
            |c: Result<&'static str, InferenceError>| async move {
                let tier = c?;
                let mut served = Served::new(());
                if tier != "primary" {
                    served
                        .provenance
                        .set_tier(tier, Quality::Reduced)
                        .set_fallback(true);
                }
                Ok::<_, InferenceError>(served)
            },
        ));
    for c in calls {
        let _ = svc.clone().oneshot(c).await;
    }
}

fn timeout() -> Result<&'static str, InferenceError> {
    Err(InferenceError::timeout(SEC))
}

#[tokio::test(start_paused = true)]
async fn a_single_error_in_a_fresh_process_is_no_spike() {
    let metrics = ErrorMetrics::new();
    call(&metrics, "edge", vec![timeout()]).await;
    let snapshot = metrics.snapshot();
    assert!(
        snapshot.stages[0].spikes.is_empty(),
        "{:?}",
        snapshot.stages[0].spikes
    );
    assert!(!metrics.render_prometheus().contains("_error_spike{"));
}

/// Fails `per_bucket` calls with a timeout every 10 s for `minutes`, and asserts no spike is
/// ever reported.
async fn assert_steady_rate_never_spikes(metrics: &ErrorMetrics, minutes: u32, per_bucket: usize) {
    for minute in 0..minutes {
        for _ in 0..6 {
            call(metrics, "edge", vec![timeout(); per_bucket]).await;
            tokio::time::advance(10 * SEC).await;
        }
        let spikes = metrics.snapshot().stages[0].spikes.clone();
        assert!(spikes.is_empty(), "minute {minute}: {spikes:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_steady_rate_is_never_a_spike_whatever_the_uptime() {
    // 6 errors a minute, one every 10 s.
    assert_steady_rate_never_spikes(&ErrorMetrics::new(), 90, 1).await;
    // A steady 60 a minute is no spike either, even above the minimum count.
    assert_steady_rate_never_spikes(&ErrorMetrics::new(), 10, 10).await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_over_a_quiet_baseline_is_a_spike() {
    let metrics = ErrorMetrics::new();
    // Ten quiet minutes with one error a minute, then 50 in a minute.
    for _ in 0..10 {
        call(&metrics, "edge", vec![timeout()]).await;
        tokio::time::advance(MIN).await;
    }
    call(&metrics, "edge", vec![timeout(); 50]).await;
    let spikes = metrics.snapshot().stages[0].spikes.clone();
    assert_eq!(spikes.len(), 1, "{spikes:?}");
    assert_eq!(spikes[0].kind, tower_inference::ErrorKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_burst_under_the_minimum_count_is_no_spike() {
    let metrics = ErrorMetrics::new();
    // An hour with no error, then 4 in a minute: above any multiple of a zero baseline, but
    // too few to page anyone.
    call(&metrics, "edge", vec![Ok("primary")]).await;
    tokio::time::advance(60 * MIN).await;
    call(&metrics, "edge", vec![timeout(); 4]).await;
    assert!(metrics.snapshot().stages[0].spikes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn caller_faults_are_counted_but_never_spike() {
    let metrics = ErrorMetrics::new();
    call(&metrics, "edge", vec![Ok("primary")]).await;
    tokio::time::advance(30 * MIN).await;
    let bad = || Err(InferenceError::invalid_input("empty prompt"));
    call(&metrics, "edge", (0..200).map(|_| bad()).collect()).await;
    let stage = metrics.snapshot().stages[0].clone();
    assert!(stage.spikes.is_empty(), "{:?}", stage.spikes);
    let text = metrics.render_prometheus();
    assert!(
        text.contains(
            r#"tower_inference_errors_total{stage="edge",kind="invalid_input",fault="caller"} 200"#
        ),
        "{text}"
    );
    // The same burst of server faults does spike.
    call(&metrics, "edge", vec![timeout(); 200]).await;
    assert_eq!(metrics.snapshot().stages[0].spikes.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dynamic_stage_names_are_bounded() {
    let metrics = ErrorMetrics::new();
    for i in 0..2_000 {
        call(&metrics, &format!("tenant-{i}"), vec![Ok("primary")]).await;
    }
    let snapshot = metrics.snapshot();
    assert!(
        snapshot.stages.len() <= 65,
        "{} stages",
        snapshot.stages.len()
    );
    let calls: u64 = snapshot.stages.iter().map(|s| s.calls).sum();
    assert_eq!(calls, 2_000, "no call is lost to the bound");
    assert!(snapshot.stages.last().unwrap().overflow);
    // About 55 lines a stage: bounded by the 64 stages and the overflow one.
    let lines = metrics.render_prometheus().lines().count();
    assert!(lines < 65 * 60, "{lines} lines");
}

#[tokio::test(start_paused = true)]
async fn a_tier_named_other_keeps_its_count() {
    let metrics = ErrorMetrics::new();
    let mut calls: Vec<_> = (0..100).map(|_| Ok("other")).collect();
    // 20 more tier names: 15 fit in the stage's 16 slots, 5 go to the overflow.
    for i in 0..20 {
        calls.push(Ok(&*Box::leak(format!("tier-{i}").into_boxed_str())));
    }
    call(&metrics, "edge", calls).await;
    let stage = &metrics.snapshot().stages[0];
    assert_eq!(stage.tiers.get("other"), Some(&100), "{:?}", stage.tiers);
    assert_eq!(stage.tiers_overflow, 5);
    let text = metrics.render_prometheus();
    for line in [
        r#"tower_inference_tier_answers_total{stage="edge",tier="other"} 100"#,
        r#"tower_inference_tier_answers_total{stage="edge",overflow="true"} 5"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn top_patterns_are_exported_with_their_overestimate() {
    let metrics = ErrorMetrics::with_settings(3.0, 0.9, 1);
    call(&metrics, "edge", vec![timeout(); 3]).await;
    call(
        &metrics,
        "edge",
        vec![Err(InferenceError::infrastructure()); 5],
    )
    .await;
    let text = metrics.render_prometheus();
    // One entry kept: infrastructure took the timeout's place and inherited its 3.
    assert!(
        text.contains(
            r#"tower_inference_error_pattern_occurrences{stage="edge",kind="infrastructure",operation="edge"} 8"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tower_inference_error_pattern_overestimate{stage="edge",kind="infrastructure",operation="edge"} 3"#
        ),
        "{text}"
    );
}

#[test]
fn an_absurd_top_k_is_clamped_without_reserving_memory() {
    for top_k in [0, 1_000_000, usize::MAX] {
        let metrics = ErrorMetrics::with_settings(3.0, 0.9, top_k);
        let _layer = MetricsLayer::new(&metrics, "edge");
        assert_eq!(metrics.pattern_entries(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_metric_prefix_is_configurable_and_always_a_valid_name() {
    for (given, used) in [
        ("myapp_inference", "myapp_inference"),
        ("my-app.inference", "my_app_inference"),
        ("9lives", "_9lives"),
        ("", "tower_inference"),
    ] {
        let metrics = ErrorMetrics::builder().prefix(given).build();
        call(&metrics, "edge", vec![Ok("primary")]).await;
        let text = metrics.render_prometheus();
        assert!(
            text.contains(&format!("{used}_calls_total{{stage=\"edge\"}} 1")),
            "{given}:\n{text}"
        );
        let other = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| !l.starts_with(&format!("{used}_")));
        assert_eq!(other, None, "{given}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_stage_has_no_baseline_so_no_spike() {
    // 50 errors in a stage's first minute: far above the minimum count, but nothing to
    // compare them with.
    let metrics = ErrorMetrics::builder().spike_min_count(1).build();
    call(&metrics, "edge", vec![timeout(); 50]).await;
    assert!(metrics.snapshot().stages[0].spikes.is_empty());
    // Still none a minute later: the minute before the last one is not yet a whole minute
    // of history.
    tokio::time::advance(MIN).await;
    assert!(metrics.snapshot().stages[0].spikes.is_empty());
    // Two minutes in, the first is the baseline: the same 50 again is no spike, 200 is.
    tokio::time::advance(MIN).await;
    call(&metrics, "edge", vec![timeout(); 50]).await;
    assert!(metrics.snapshot().stages[0].spikes.is_empty());
    call(&metrics, "edge", vec![timeout(); 150]).await;
    assert_eq!(metrics.snapshot().stages[0].spikes.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_steady_rate_over_the_minimum_count_is_no_spike() {
    // The steady-rate test again with every error above the minimum count: only the
    // baseline keeps a steady rate from spiking.
    let metrics = ErrorMetrics::builder().spike_min_count(1).build();
    assert_steady_rate_never_spikes(&metrics, 90, 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_counts_as_cancelled_and_leaves_nothing_in_flight() {
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .service(service_fn(|after: Duration| async move {
            tokio::time::sleep(after).await;
            Ok::<_, InferenceError>(Served::new(()))
        }));
    let slow = tokio::spawn(svc.clone().oneshot(Duration::from_secs(60)));
    tokio::task::yield_now().await;
    let stage = metrics.snapshot().stages[0].clone();
    assert_eq!((stage.in_flight, stage.calls, stage.cancelled), (1, 0, 0));
    // The caller hangs up; another call completes.
    slow.abort();
    let _ = slow.await;
    svc.oneshot(Duration::from_millis(5)).await.unwrap();
    let stage = metrics.snapshot().stages[0].clone();
    assert_eq!((stage.in_flight, stage.calls, stage.cancelled), (0, 1, 1));
    assert!(
        metrics
            .render_prometheus()
            .contains(r#"tower_inference_calls_cancelled_total{stage="edge"} 1"#)
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_stage_name_never_merges_with_the_overflow_stage() {
    let metrics = ErrorMetrics::builder().max_stages(1).build();
    call(&metrics, "", vec![Ok("primary")]).await;
    call(&metrics, "past-the-bound", vec![Ok("primary"); 2]).await;
    let text = metrics.render_prometheus();
    assert!(
        text.contains(r#"tower_inference_calls_total{stage="unnamed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tower_inference_calls_total{overflow="true"} 2"#),
        "{text}"
    );
    assert!(!text.contains(r#"stage="""#), "{text}");
}
