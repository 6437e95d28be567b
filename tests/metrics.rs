//! Error metrics: rates across bucket boundaries, spikes, bounded top-K, percentiles, SLA,
//! events, and the Prometheus text. Paused time.

use std::time::Duration;

mod support;

use support::all_events;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{Emitter, ErrorKind, Event, EventSink, InferenceError, Quality, Served};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// What a test call does: succeed (from a tier), or fail with a kind.
#[derive(Clone)]
enum Do {
    Answer {
        tier: &'static str,
        fallback: bool,
        after: Duration,
    },
    Fail(InferenceError),
}

fn timeout() -> Do {
    Do::Fail(InferenceError::timeout(SEC))
}

fn backend()
-> impl tower::Service<Do, Response = Served<()>, Error = InferenceError, Future: Send> + Clone {
    service_fn(|d: Do| async move {
        match d {
            Do::Answer {
                tier,
                fallback,
                after,
            } => {
                tokio::time::sleep(after).await;
                let mut s = Served::new(());
                if tier != "primary" {
                    let quality = if fallback {
                        Quality::Stale
                    } else {
                        Quality::Full
                    };
                    s.provenance.set_tier(tier, quality).set_fallback(fallback);
                }
                Ok(s)
            }
            Do::Fail(e) => Err(e),
        }
    })
}

async fn run(metrics: &ErrorMetrics, stage: &str, calls: impl IntoIterator<Item = Do>) {
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics, stage))
        .service(backend());
    for call in calls {
        let _ = svc.clone().oneshot(call).await;
    }
}

#[tokio::test(start_paused = true)]
async fn windowed_rates_across_bucket_boundaries() {
    let metrics = ErrorMetrics::new();
    run(&metrics, "edge", vec![timeout(); 5]).await;
    let rates = |m: &ErrorMetrics| m.snapshot().stages[0].rates[&ErrorKind::Timeout];

    tokio::time::advance(59 * SEC).await;
    let r = rates(&metrics);
    // A fresh stage's longer windows cover only the minute it has existed.
    assert_eq!(
        (r.per_minute_1m, r.per_minute_5m, r.per_minute_1h),
        (5.0, 5.0, 5.0),
        "{r:?}"
    );

    tokio::time::advance(4 * MIN).await;
    let r = rates(&metrics);
    assert_eq!((r.per_minute_5m, r.per_minute_1h), (1.0, 1.0), "{r:?}");
    tokio::time::advance(5 * MIN).await;
    let r = rates(&metrics);
    assert_eq!(r.per_minute_1h, 0.5, "5 errors over 10 minutes: {r:?}");
    tokio::time::advance(50 * MIN).await;
    assert!((rates(&metrics).per_minute_1h - 5.0 / 60.0).abs() < 1e-12);
}

#[tokio::test(start_paused = true)]
async fn windowed_rates_across_a_bucket_boundary() {
    let metrics = ErrorMetrics::new();
    run(
        &metrics,
        "edge",
        [Do::Fail(InferenceError::infrastructure())],
    )
    .await;
    tokio::time::advance(60 * MIN).await;
    run(&metrics, "edge", vec![timeout(); 5]).await;
    let rates = |m: &ErrorMetrics| m.snapshot().stages[0].rates[&ErrorKind::Timeout];
    tokio::time::advance(59 * SEC).await;
    let r = rates(&metrics);
    assert_eq!((r.per_minute_1m, r.per_minute_5m), (5.0, 1.0), "{r:?}");
    assert!((r.per_minute_1h - 5.0 / 60.0).abs() < 1e-12);

    tokio::time::advance(SEC).await; // their 10 s bucket has left the last minute
    let r = rates(&metrics);
    assert_eq!((r.per_minute_1m, r.per_minute_5m), (0.0, 1.0), "{r:?}");

    tokio::time::advance(4 * MIN).await;
    assert_eq!(rates(&metrics).per_minute_5m, 0.0);
    assert!(rates(&metrics).per_minute_1h > 0.0);
    tokio::time::advance(55 * MIN).await;
    assert_eq!(rates(&metrics).per_minute_1h, 0.0, "an hour later, gone");
    assert_eq!(
        metrics.snapshot().stages[0].errors[&ErrorKind::Timeout],
        5,
        "totals stay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_over_a_steady_rate_is_a_spike() {
    let metrics = ErrorMetrics::new();
    for _ in 0..59 {
        run(&metrics, "edge", [timeout()]).await;
        tokio::time::advance(MIN).await;
    }
    assert!(
        metrics.snapshot().stages[0].spikes.is_empty(),
        "one a minute for an hour is no spike"
    );
    run(&metrics, "edge", vec![timeout(); 10]).await;
    let spikes = metrics.snapshot().stages[0].spikes.clone();
    assert_eq!(spikes.len(), 1);
    let spike = spikes[0];
    assert_eq!(spike.kind, ErrorKind::Timeout);
    assert!(
        spike.per_minute_1m > spike.baseline_per_minute * 3.0,
        "{spike:?}"
    );
    assert_eq!(spike.multiplier, 3.0);
}

#[tokio::test(start_paused = true)]
async fn top_patterns_stay_bounded_and_keep_the_frequent_ones() {
    const ERRORS: u32 = 1_000_000;
    let metrics = ErrorMetrics::with_settings(3.0, 0.9, 16);
    let svc = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(&metrics, "edge").operation(|n: &u32| match n % 10 {
                0 => "hot-a".to_string(),
                1 => "hot-b".to_string(),
                _ => format!("op-{n}"),
            }),
        )
        .service(service_fn(|_: u32| async {
            Err::<Served<()>, _>(InferenceError::infrastructure())
        }));
    for n in 0..ERRORS {
        let _ = svc.clone().oneshot(n).await;
    }
    assert!(
        metrics.pattern_entries() <= 16 * 16,
        "{} entries",
        metrics.pattern_entries()
    );
    let top = metrics.snapshot().stages[0].top_patterns.clone();
    assert_eq!(top.len(), 16);
    let hot: Vec<_> = top
        .iter()
        .take(2)
        .map(|p| (p.kind.code(), p.operation.as_str()))
        .collect();
    assert!(
        hot.contains(&("infrastructure", "hot-a")) && hot.contains(&("infrastructure", "hot-b")),
        "{top:?}"
    );
    assert!(top[0].count >= u64::from(ERRORS) / 10);
}

#[tokio::test(start_paused = true)]
async fn latency_percentiles_within_histogram_precision() {
    let metrics = ErrorMetrics::new();
    let calls = (1..=1000).map(|ms| Do::Answer {
        tier: "primary",
        fallback: false,
        after: Duration::from_millis(ms),
    });
    run(&metrics, "edge", calls).await;
    let l = metrics.snapshot().stages[0].latency.clone();
    assert_eq!(l.count, 1000);
    // Percentiles are read from log-linear buckets, 16 per power of two: within 3.2 %.
    let close = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.032;
    assert!(close(l.p50, 500.0), "{l:?}");
    assert!(close(l.p90, 900.0), "{l:?}");
    assert!(close(l.p99, 990.0), "{l:?}");
    assert!(close(l.max, 1000.0), "{l:?}");
    assert_eq!(
        l.max,
        Duration::from_secs(1),
        "the slowest call is kept exactly"
    );
    assert_eq!(l.sum, Duration::from_millis(500_500), "{l:?}");
    // The Prometheus buckets count exactly: 100 calls took at most 100 ms, 150 at most 150.
    let at_most = |ms: u64| {
        l.buckets
            .iter()
            .find(|(bound, _)| *bound == Duration::from_millis(ms))
            .map(|(_, n)| *n)
    };
    assert_eq!(at_most(100), Some(100));
    assert_eq!(at_most(150), Some(150));
    assert_eq!(at_most(1_000), Some(1_000));
}

#[tokio::test(start_paused = true)]
async fn the_sla_is_flagged_when_the_primary_answers_under_90_percent() {
    for (fallbacks, breached) in [(5, false), (10, false), (11, true)] {
        let metrics = ErrorMetrics::new();
        let primary = Do::Answer {
            tier: "primary",
            fallback: false,
            after: Duration::ZERO,
        };
        let cache = Do::Answer {
            tier: "cache",
            fallback: true,
            after: Duration::ZERO,
        };
        let calls = std::iter::repeat_n(primary, 100 - fallbacks)
            .chain(std::iter::repeat_n(cache, fallbacks));
        run(&metrics, "edge", calls).await;
        let st = &metrics.snapshot().stages[0];
        assert_eq!(st.sla_breached, breached, "{fallbacks} fallbacks of 100");
        assert_eq!(st.tiers["cache"], fallbacks as u64);
        assert_eq!(st.tiers["primary"], 100 - fallbacks as u64);
    }
}

#[tokio::test(start_paused = true)]
async fn stages_are_kept_apart() {
    let metrics = ErrorMetrics::new();
    run(&metrics, "edge", [timeout()]).await;
    run(&metrics, "backend", vec![timeout(); 3]).await;
    let s = metrics.snapshot();
    let by_stage: Vec<_> = s
        .stages
        .iter()
        .map(|st| (st.stage.as_str(), st.errors[&ErrorKind::Timeout]))
        .collect();
    assert_eq!(by_stage, [("edge", 1), ("backend", 3)]);
}

#[test]
fn events_from_other_layers_are_counted() {
    let metrics = ErrorMetrics::new();
    let emitter = Emitter::new(metrics.clone());
    let quality = Quality::Stale;
    for event in all_events(&quality) {
        emitter.emit(&event);
    }
    emitter.emit(&Event::CallRejected {
        breaker: "b",
        retry_in: SEC,
    });
    emitter.emit(&Event::TierServed {
        tier: "primary",
        quality: &Quality::Full,
        fallback: false,
    });
    let s = metrics.snapshot();
    assert_eq!(
        s.breaker_transitions[&("b".to_owned(), tower_inference::CircuitState::Open)],
        1
    );
    assert_eq!(s.breaker_rejections["b"], 2);
    assert_eq!(s.retries[&ErrorKind::Timeout], 1);
    assert_eq!(s.budget_exhausted, 1);
    assert_eq!(s.tiers_served.get("cache"), Some(&1));
    assert_eq!(
        s.tiers_served.get("primary"),
        None,
        "primary answers are counted by the metrics layer"
    );
    assert_eq!(
        s.tiers_failed[&("primary".to_owned(), ErrorKind::Infrastructure)],
        1
    );
    assert_eq!(s.cache_failures, 1);
    assert_eq!(s.degradation_level.as_deref(), Some("reduced"));
    metrics.on_event(&Event::LevelChanged {
        from: "reduced",
        to: "full",
        load: 0.1,
    });
    assert_eq!(
        metrics.snapshot().degradation_level.as_deref(),
        Some("full")
    );
}

#[tokio::test(start_paused = true)]
async fn prometheus_text_has_every_family_and_escapes_labels() {
    let metrics = ErrorMetrics::new();
    run(
        &metrics,
        "edge \"a\"\nb\\c",
        [
            timeout(),
            Do::Answer {
                tier: "primary",
                fallback: false,
                after: SEC,
            },
        ],
    )
    .await;
    let text = metrics.render_prometheus();
    for family in [
        "calls_total",
        "errors_total",
        "error_rate_per_minute",
        "error_spike",
        "error_pattern_occurrences",
        "latency_seconds",
        "tier_answers_total",
        "primary_share",
        "sla_breached",
        "breaker_transitions_total",
        "retries_total",
        "retry_budget_exhausted_total",
        "degradation_level",
    ] {
        assert!(
            text.contains(&format!("# TYPE tower_inference_{family} ")),
            "{family} missing:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP tower_inference_{family} ")),
            "{family} help missing"
        );
    }
    assert!(
        text.contains(r#"tower_inference_calls_total{stage="edge \"a\"\nb\\c"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tower_inference_latency_seconds_count{stage="edge \"a\"\nb\\c"} 2"#),
        "{text}"
    );
}

/// Threads count on stripes of their own without atomic read-modify-writes while they own
/// them; more threads than stripes must share one, and nothing may be lost either way.
#[test]
fn answers_counted_by_more_threads_than_stripes_are_all_kept() {
    const THREADS: usize = 40;
    const CALLS: u64 = 10_000;
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "threads"))
        .service(service_fn(|()| {
            std::future::ready(Ok::<_, InferenceError>(Served::new(())))
        }));
    let all_started = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (mut svc, all_started) = (svc.clone(), all_started.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    svc.ready().await.unwrap().call(()).await.unwrap();
                    all_started.wait();
                    for _ in 1..CALLS {
                        svc.ready().await.unwrap().call(()).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stage = &metrics.snapshot().stages[0];
    let total = THREADS as u64 * CALLS;
    assert_eq!(stage.calls, total);
    assert_eq!(stage.latency.count, total);
    assert_eq!(stage.primary_answers, total);
    assert_eq!(stage.full_or_reduced_answers, total);
    assert_eq!(stage.tiers.values().sum::<u64>(), total);
    assert_eq!(stage.in_flight, 0);
}
