//! The whole stack built by `InferenceStack`: one sink for every layer, one tier name at
//! every stage, and answers that tell how they were made.
#![cfg(feature = "mock")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::metrics::ErrorMetrics;
use tower_inference::mock::{Completion, InferenceRequest, MockGpu, MockGpuHandle};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::stack::{BACKEND_STAGE, EDGE_STAGE, InferenceStack};
use tower_inference::{CircuitState, ErrorKind, Event, PRIMARY_TIER, Quality, TierFailure};

fn gpu(name: &'static str) -> MockGpu {
    MockGpu::builder()
        .name(name)
        .base_latency(Duration::from_millis(10))
        .per_token_latency(Duration::ZERO)
        .build()
}

fn request(prompt: &str) -> InferenceRequest {
    InferenceRequest::new(prompt).max_tokens(8)
}

fn static_answer(_: &InferenceRequest) -> Completion {
    Completion {
        model: "static".into(),
        text: "please try again later".into(),
        tokens: 0,
        provenance: Default::default(),
    }
}

/// Event names a sink saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeSet<&'static str>>>);

impl Seen {
    fn sink(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |event: &Event<'_>| {
            seen.lock().unwrap().insert(event.name());
        }
    }

    fn names(&self) -> BTreeSet<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

struct Rig {
    svc: tower::util::BoxCloneService<InferenceRequest, Completion, BoxError>,
    primary: MockGpuHandle,
    light: MockGpuHandle,
    metrics: ErrorMetrics,
    seen: Seen,
    layer_breaker: tower_inference::breaker::BreakerHandle,
    layer_degrade: tower_inference::degrade::DegradeHandle,
}

/// The full stack over tower's timeout, with retries spaced 100 ms apart and a breaker that
/// opens after five failures of ten.
fn rig() -> Rig {
    let primary = gpu("llama-70b");
    let light = gpu("llama-8b");
    let (primary_handle, light_handle) = (primary.handle(), light.handle());
    let metrics = ErrorMetrics::new();
    let seen = Seen::default();
    let layer = InferenceStack::new("llama-70b")
        .metrics(&metrics)
        .event_sink(seen.sink())
        .fallback(
            FallbackLayer::builder()
                .tier("llama-8b", Quality::Reduced, light)
                .cache(
                    MemoryStore::new(100),
                    |r: &InferenceRequest| r.prompt.clone(),
                    Duration::from_secs(600),
                )
                .static_default(static_answer),
        )
        .degrade(DegradeLayer::builder().in_flight_capacity(100))
        .retry(
            RetryLayer::builder().max_attempts(3).backoff(
                Backoff::new(Duration::from_millis(100), 1.0, Duration::from_millis(100))
                    .without_jitter(),
            ),
        )
        .breaker(
            BreakerLayer::builder()
                .count_window(10)
                .minimum_calls(5)
                .open_duration(Duration::from_secs(5))
                .half_open_probes(1),
        )
        .timeout(Duration::from_secs(1))
        .build();
    assert_eq!(layer.primary(), "llama-70b");
    let layer_breaker = layer.breaker().expect("the stack has a breaker").clone();
    let layer_degrade = layer.degrade().expect("the stack degrades").clone();
    assert!(layer.retry_budget().is_some());
    let svc = ServiceBuilder::new()
        .boxed_clone()
        .layer(layer)
        .service(primary);
    Rig {
        svc,
        primary: primary_handle,
        light: light_handle,
        metrics,
        seen,
        layer_breaker,
        layer_degrade,
    }
}

#[tokio::test(start_paused = true)]
async fn one_sink_sees_events_from_every_layer() {
    let rig = rig();
    rig.svc.clone().oneshot(request("warm")).await.unwrap();
    rig.primary.kill();
    for i in 0..4 {
        rig.svc
            .clone()
            .oneshot(request(&format!("q{i}")))
            .await
            .unwrap();
    }
    assert_eq!(rig.layer_breaker.state(), CircuitState::Open);
    rig.svc
        .clone()
        .oneshot(request("after open"))
        .await
        .unwrap();
    rig.layer_degrade.force("minimal").unwrap();
    rig.svc.clone().oneshot(request("degraded")).await.unwrap();

    let seen = rig.seen.names();
    for name in [
        "tier_served",        // fallback
        "tier_failed",        // fallback
        "retry_scheduled",    // retry
        "breaker_transition", // breaker
        "call_rejected",      // breaker
        "level_changed",      // degrade
    ] {
        assert!(seen.contains(name), "the sink never saw {name}: {seen:?}");
    }
    // The metrics collector is a sink of the same layers.
    let snapshot = rig.metrics.snapshot();
    assert_eq!(
        snapshot
            .breaker_transitions
            .get(&("llama-70b".to_owned(), CircuitState::Open)),
        Some(&1)
    );
    assert!(snapshot.breaker_rejections.get("llama-70b") >= Some(&1));
    assert!(snapshot.retries.get(&ErrorKind::Infrastructure) >= Some(&1));
    assert!(
        snapshot
            .tiers_failed
            .get(&("llama-70b".to_owned(), ErrorKind::Infrastructure))
            >= Some(&1)
    );
    assert!(snapshot.tiers_served.get("llama-8b") >= Some(&1));
    assert_eq!(snapshot.degradation_level.as_deref(), Some("minimal"));
}

#[tokio::test(start_paused = true)]
async fn the_collector_watches_the_stacks_breaker_budget_and_degrade_layer() {
    let rig = rig();
    // Before any call or transition, the gauges are there.
    let snapshot = rig.metrics.snapshot();
    assert_eq!(
        snapshot.breaker_states.get("llama-70b"),
        Some(&CircuitState::Closed)
    );
    assert_eq!(snapshot.retry_budgets.get("llama-70b"), Some(&100));
    let degradation = &snapshot.degradation["llama-70b"];
    assert_eq!(
        (degradation.level.as_str(), degradation.load),
        ("full", 0.0)
    );
    let text = rig.metrics.render_prometheus();
    for line in [
        r#"tower_inference_breaker_state{breaker="llama-70b",state="closed"} 1"#,
        r#"tower_inference_breaker_state{breaker="llama-70b",state="open"} 0"#,
        r#"tower_inference_retry_budget_balance{budget="llama-70b"} 100"#,
        r#"tower_inference_degradation_level{degrade="llama-70b",level="full"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    rig.primary.kill();
    for i in 0..4 {
        rig.svc
            .clone()
            .oneshot(request(&format!("q{i}")))
            .await
            .unwrap();
    }
    let snapshot = rig.metrics.snapshot();
    assert_eq!(
        snapshot.breaker_states.get("llama-70b"),
        Some(&CircuitState::Open)
    );
    // Retries drew on the budget.
    assert!(snapshot.retry_budgets["llama-70b"] < 100, "{snapshot:?}");
    let text = rig.metrics.render_prometheus();
    assert!(text.contains(r#"tower_inference_breaker_state{breaker="llama-70b",state="open"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn tier_labels_agree_across_stages() {
    let rig = rig();
    for i in 0..3 {
        rig.svc
            .clone()
            .oneshot(request(&format!("q{i}")))
            .await
            .unwrap();
    }
    let snapshot = rig.metrics.snapshot();
    let stage = |name: &str| {
        snapshot
            .stages
            .iter()
            .find(|s| s.stage == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
            .clone()
    };
    let (edge, backend) = (stage(EDGE_STAGE), stage(BACKEND_STAGE));
    assert_eq!(edge.tiers.get("llama-70b"), Some(&3));
    assert_eq!(backend.tiers.get("llama-70b"), Some(&3));
    assert!(!edge.tiers.contains_key(PRIMARY_TIER));
    assert!(!backend.tiers.contains_key(PRIMARY_TIER));
    let text = rig.metrics.render_prometheus();
    assert!(!text.contains(r#"tier="primary""#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn provenance_tells_attempts_and_why_it_fell_back() {
    let rig = rig();
    let first = rig.svc.clone().oneshot(request("first")).await.unwrap();
    assert_eq!(first.provenance.tier, "llama-70b");
    assert_eq!(first.provenance.attempts, 1);
    assert!(first.provenance.failed_tiers().is_empty());
    assert!(!first.provenance.fallback);

    rig.primary.kill();
    let answer = rig.svc.clone().oneshot(request("second")).await.unwrap();
    assert_eq!(answer.provenance.tier, "llama-8b");
    assert_eq!(answer.provenance.quality, Quality::Reduced);
    assert!(answer.provenance.fallback);
    // Three calls to the dead primary, then one to the lighter model.
    assert_eq!(answer.provenance.attempts, 4);
    assert_eq!(
        answer.provenance.failed_tiers(),
        vec![TierFailure::new("llama-70b", ErrorKind::Infrastructure)]
    );

    // Both models down: the cache answers "first", tried after two failed tiers.
    rig.light.kill();
    let cached = rig.svc.clone().oneshot(request("first")).await.unwrap();
    assert_eq!(cached.provenance.tier, "cache");
    assert_eq!(cached.text, first.text);
    let failed: Vec<_> = cached
        .provenance
        .failed_tiers()
        .iter()
        .map(|f| f.tier.as_ref())
        .collect();
    assert_eq!(failed, ["llama-70b", "llama-8b"]);
    assert!(cached.provenance.attempts >= 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_costs_no_backend_call() {
    let rig = rig();
    rig.layer_breaker.force_open();
    let before = rig.primary.stats().calls;
    let answer = rig.svc.clone().oneshot(request("q")).await.unwrap();
    assert_eq!(rig.primary.stats().calls, before);
    assert_eq!(answer.provenance.tier, "llama-8b");
    // Only the lighter model was called.
    assert_eq!(answer.provenance.attempts, 1);
    assert_eq!(
        answer.provenance.failed_tiers(),
        vec![TierFailure::new("llama-70b", ErrorKind::CircuitOpen)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_left_out_layer_is_not_there() {
    let metrics = ErrorMetrics::new();
    let primary = gpu("solo");
    let handle = primary.handle();
    let layer = InferenceStack::new("solo").metrics(&metrics).build();
    assert!(layer.breaker().is_none());
    assert!(layer.degrade().is_none());
    assert!(layer.retry_budget().is_none());
    let svc = ServiceBuilder::new().layer(layer).service(primary);
    handle.kill();
    let err = svc.oneshot(request("q")).await.unwrap_err();
    // No retry, no fallback, no timeout: one call, and the model's own error type.
    assert_eq!(handle.stats().calls, 1);
    assert_eq!(err.kind(), ErrorKind::Infrastructure);
    assert_eq!(metrics.snapshot().stages.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_named_breaker_keeps_its_name() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let names = seen.clone();
    let layer = InferenceStack::new("llama-70b")
        .event_sink(move |event: &Event<'_>| {
            if let Event::BreakerTransition { breaker, .. } = event {
                names.lock().unwrap().push(breaker.to_string());
            }
        })
        .breaker(BreakerLayer::builder().name("gpu-pool-a"))
        .build();
    layer.breaker().unwrap().force_open();
    assert_eq!(layer.breaker().unwrap().name(), "gpu-pool-a");
    assert_eq!(seen.lock().unwrap().as_slice(), ["gpu-pool-a"]);
    let unnamed = InferenceStack::new("llama-70b")
        .breaker(BreakerLayer::builder())
        .build();
    assert_eq!(unnamed.breaker().unwrap().name(), "llama-70b");
}

#[tokio::test(start_paused = true)]
async fn each_stage_times_its_own_part_of_the_call() {
    let rig = rig();
    let stage = |name: &str| {
        rig.metrics
            .snapshot()
            .stages
            .into_iter()
            .find(|s| s.stage == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
            .latency
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    rig.svc.clone().oneshot(request("first")).await.unwrap();
    let (edge, backend) = (stage(EDGE_STAGE), stage(BACKEND_STAGE));
    assert!((ms(edge.max) - 10.0).abs() < 0.1, "{edge:?}");
    assert!((ms(backend.max) - 10.0).abs() < 0.1, "{backend:?}");

    // Three failed attempts 100 ms apart, then the lighter model's 10 ms: the edge waited
    // 210 ms, while no single backend attempt took longer than the first call's 10 ms.
    rig.primary.kill();
    let answer = rig.svc.clone().oneshot(request("second")).await.unwrap();
    assert_eq!(answer.provenance.tier, "llama-8b");
    let (edge, backend) = (stage(EDGE_STAGE), stage(BACKEND_STAGE));
    assert_eq!(backend.count, 4);
    assert!((ms(backend.max) - 10.0).abs() < 0.1, "{backend:?}");
    assert_eq!(edge.count, 2);
    assert!((ms(edge.max) - 210.0).abs() < 0.5, "{edge:?}");
}

#[tokio::test(start_paused = true)]
async fn without_a_fallback_layer_answers_still_carry_the_stacks_tier_name() {
    let metrics = ErrorMetrics::new();
    let layer = InferenceStack::new("solo")
        .metrics(&metrics)
        .retry(RetryLayer::builder())
        .build();
    let answer = ServiceBuilder::new()
        .layer(layer)
        .service(gpu("solo"))
        .oneshot(request("q"))
        .await
        .unwrap();
    assert_eq!(answer.provenance.tier, "solo");
    assert!(!answer.provenance.fallback);
    let edge = metrics
        .snapshot()
        .stages
        .into_iter()
        .find(|s| s.stage == EDGE_STAGE);
    assert_eq!(edge.unwrap().tiers.get("solo"), Some(&1));

    // A tier the model named itself is left as it is.
    let named = tower::service_fn(|_: InferenceRequest| async {
        let mut answer = static_answer(&request("q"));
        answer.provenance.tier = "model-said".into();
        Ok::<_, tower_inference::InferenceError>(answer)
    });
    let answer = ServiceBuilder::new()
        .layer(InferenceStack::new("solo").metrics(&metrics).build())
        .service(named)
        .oneshot(request("q"))
        .await
        .unwrap();
    assert_eq!(answer.provenance.tier, "model-said");
}
