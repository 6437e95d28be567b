//! Zero, NaN and absurd configuration values, one row each: building never panics, calls
//! never panic, each value is adjusted as its setting documents, and the adjustment is logged
//! by a `tracing` warning naming the setting.
//!
//! In a test binary of its own, as one test: tracing caches per-callsite interest
//! process-wide, so a scoped subscriber must not race other tests.
#![cfg(feature = "mock")]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use support::{Call, Traced, backend};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::{DegradeLayer, Level};
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::health::Health;
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::mock::{ChaosLayer, InferenceRequest, MockGpu};
use tower_inference::retry::{Backoff, RetryBudget, RetryLayer};
use tower_inference::stack::InferenceStack;
use tower_inference::{CircuitState, ErrorKind, InferenceError, Scale};

const SEC: Duration = Duration::from_secs(1);

/// The settings named by the warnings `traced` recorded.
fn warned(traced: &Traced) -> Vec<String> {
    traced
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .filter_map(|e| e.field("setting").map(str::to_owned))
        .collect()
}

type Check = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One row: the settings its values must be logged under, and what it builds and checks.
struct Row {
    name: &'static str,
    settings: &'static [&'static str],
    run: fn() -> Check,
}

fn request() -> InferenceRequest {
    InferenceRequest::new("hello").max_tokens(8)
}

/// A backend for the breaker and retry rows, counting its calls.
fn counted() -> (
    Arc<AtomicUsize>,
    impl tower::Service<Call, Response = &'static str, Error = InferenceError, Future: Send>
    + Clone
    + Send,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    (calls.clone(), backend(calls))
}

fn calls(counter: &AtomicUsize) -> usize {
    counter.load(std::sync::atomic::Ordering::SeqCst)
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "breaker: zero window and zero minimum open on the first failure",
            settings: &["breaker.count_window", "breaker.minimum_calls"],
            run: || {
                Box::pin(async {
                    let layer = BreakerLayer::builder()
                        .count_window(0)
                        .minimum_calls(0)
                        .build();
                    let (_, inner) = counted();
                    let svc = layer.layer(inner);
                    let _ = svc.clone().oneshot(Call::Fail).await;
                    assert_eq!(layer.handle().state(), CircuitState::Open);
                })
            },
        },
        Row {
            name: "breaker: NaN threshold is the default, 7.0 is 1.0",
            settings: &[
                "breaker.failure_rate_threshold",
                "breaker.slow_call_rate_threshold",
            ],
            run: || {
                Box::pin(async {
                    let layer = BreakerLayer::builder()
                        .count_window(2)
                        .minimum_calls(2)
                        .failure_rate_threshold(f64::NAN)
                        .slow_call_rate_threshold(7.0)
                        .build();
                    let (_, inner) = counted();
                    let svc = layer.layer(inner);
                    let _ = svc.clone().oneshot(Call::Fail).await;
                    let _ = svc.clone().oneshot(Call::Ok).await;
                    // 1 failure in 2 calls reaches the default 0.5.
                    assert_eq!(layer.handle().state(), CircuitState::Open);
                })
            },
        },
        Row {
            name: "breaker: zero probes, zero open duration, zero waits, NaN growth",
            settings: &[
                "breaker.half_open_probes",
                "breaker.open_duration",
                "breaker.half_open_max_wait",
                "breaker.open_duration_growth",
                "breaker.slow_call_duration",
                "breaker.time_window",
                "breaker.time_window buckets",
            ],
            run: || {
                Box::pin(async {
                    let layer = BreakerLayer::builder()
                        .time_window(Duration::ZERO, 0)
                        .minimum_calls(1)
                        .half_open_probes(0)
                        .open_duration(Duration::ZERO)
                        .half_open_max_wait(Duration::ZERO)
                        .open_duration_growth(f64::NAN, Duration::ZERO)
                        .slow_call_duration(Duration::ZERO)
                        .build();
                    let (counter, inner) = counted();
                    let svc = layer.layer(inner);
                    let _ = svc.clone().oneshot(Call::Fail).await;
                    assert_eq!(layer.handle().state(), CircuitState::Open);
                    // Open for at least 1 ms: the next call is refused, not let through.
                    let err = svc.clone().oneshot(Call::Ok).await.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
                    assert_eq!(calls(&counter), 1);
                    // Then one probe (not zero) closes it.
                    tokio::time::advance(Duration::from_millis(1)).await;
                    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");
                    assert_eq!(layer.handle().state(), CircuitState::Closed);
                })
            },
        },
        Row {
            name: "breaker: zero and huge max_keys, zero idle timeout",
            settings: &["breaker.max_keys", "breaker.idle_timeout"],
            run: || {
                Box::pin(async {
                    let one = BreakerLayer::builder()
                        .max_keys(0)
                        .idle_timeout(Duration::ZERO)
                        .build_keyed(|c: &Call| *c == Call::Ok);
                    let (_, inner) = counted();
                    let svc = one.layer(inner.clone());
                    svc.clone().oneshot(Call::Ok).await.unwrap();
                    let _ = svc.clone().oneshot(Call::Fail).await;
                    assert_eq!(one.handles().len(), 1);
                    let many = BreakerLayer::builder()
                        .max_keys(usize::MAX)
                        .build_keyed(|c: &Call| format!("{c:?}"));
                    let svc = many.layer(inner);
                    svc.oneshot(Call::Ok).await.unwrap();
                    assert_eq!(many.handles().len(), 1);
                })
            },
        },
        Row {
            name: "retry: zero attempts is one, zero deadline is none, infinite factor",
            settings: &[
                "retry.max_attempts",
                "retry.deadline",
                "retry.backoff factor",
            ],
            run: || {
                Box::pin(async {
                    let gpu = MockGpu::builder().zero_latency().build();
                    let handle = gpu.handle();
                    handle.kill();
                    let once = RetryLayer::builder()
                        .max_attempts(0)
                        .build()
                        .layer(gpu.clone());
                    let _ = once.oneshot(request()).await;
                    assert_eq!(handle.stats().calls, 1);

                    let svc = RetryLayer::builder()
                        .max_attempts(u32::MAX)
                        .deadline(Duration::ZERO)
                        .backoff(Backoff::new(Duration::ZERO, f64::INFINITY, Duration::MAX))
                        .without_budget()
                        .build()
                        .layer(gpu);
                    // Capped at 100 attempts, with no deadline failing the call at once.
                    let err = svc.oneshot(request()).await.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::Infrastructure);
                    assert_eq!(handle.stats().calls, 1 + 100);
                })
            },
        },
        Row {
            name: "retry budget: zero ttl and NaN percent",
            settings: &["retry_budget.ttl", "retry_budget.retry_percent"],
            run: || {
                Box::pin(async {
                    let budget = RetryBudget::new(Duration::ZERO, 0, f64::NAN);
                    assert_eq!(budget.ttl(), SEC);
                    assert_eq!(budget.retry_percent(), 0.2);
                    for _ in 0..10 {
                        budget.deposit();
                    }
                    assert!(budget.withdraw());
                })
            },
        },
        Row {
            name: "degrade: zero capacity, zero latency target, NaN alpha and margin",
            settings: &[
                "degrade.in_flight_capacity",
                "degrade.latency_target",
                "degrade.latency_target alpha",
                "degrade.hysteresis margin",
                "degrade level threshold",
                "scale quality",
                "scale speed",
            ],
            run: || {
                Box::pin(async {
                    let layer = DegradeLayer::builder()
                        .in_flight_capacity(0)
                        .latency_target(Duration::ZERO, f64::NAN)
                        .hysteresis(f64::NAN, Duration::MAX)
                        .levels([
                            Level::new("full", 0.0, 1.0, 1.0),
                            Level::new("odd", f64::NAN, f64::NAN, -5.0),
                        ])
                        .build();
                    let svc = layer.layer(MockGpu::builder().zero_latency().build());
                    let served = svc.oneshot(request()).await.unwrap();
                    assert!(served.tokens >= 1);
                })
            },
        },
        Row {
            name: "fallback: zero ttl, zero store size, zero guard",
            settings: &[
                "fallback.cache ttl",
                "memory_store.max_entries",
                "fallback.cache_guard timeout",
                "fallback.cache_guard failures",
            ],
            run: || {
                Box::pin(async {
                    let primary = MockGpu::builder().zero_latency().build();
                    let handle = primary.handle();
                    let layer = FallbackLayer::builder()
                        .cache(
                            MemoryStore::new(0),
                            |r: &InferenceRequest| r.prompt.clone(),
                            Duration::ZERO,
                        )
                        .cache_guard(Duration::ZERO, 0, Duration::MAX)
                        .build();
                    let svc = layer.layer(primary);
                    svc.clone().oneshot(request()).await.unwrap();
                    handle.kill();
                    // The answer is kept for 1 ms, not for nothing.
                    let served = svc.oneshot(request()).await.unwrap();
                    assert_eq!(served.provenance.tier, "cache");
                })
            },
        },
        Row {
            name: "metrics: NaN multiplier, SLA of 7, top_k of usize::MAX",
            settings: &["metrics.spike_multiplier", "metrics.sla", "metrics.top_k"],
            run: || {
                Box::pin(async {
                    let metrics = ErrorMetrics::with_settings(f64::NAN, 7.0, usize::MAX);
                    let gpu = MockGpu::builder().zero_latency().build();
                    let svc = MetricsLayer::new(&metrics, "edge").layer(gpu);
                    svc.oneshot(request()).await.unwrap();
                    assert!(metrics.render_prometheus().contains("edge"));
                })
            },
        },
        Row {
            name: "health: a zero check timeout is one second",
            settings: &["health check timeout"],
            run: || {
                Box::pin(async {
                    let health = Health::builder()
                        .check("db", true, Duration::ZERO, || async { Ok(()) })
                        .build();
                    assert_eq!(health.ready().await.http_status(), 200);
                })
            },
        },
        Row {
            name: "stack: a zero timeout is 1 ms",
            settings: &["stack.timeout"],
            run: || {
                Box::pin(async {
                    let gpu = MockGpu::builder().zero_latency().build();
                    let svc = ServiceBuilder::new()
                        .layer(InferenceStack::new("m").timeout(Duration::ZERO).build())
                        .service(gpu);
                    assert!(svc.oneshot(request()).await.is_ok());
                })
            },
        },
        Row {
            name: "mock: zero slots, NaN and huge rates",
            settings: &[
                "mock_gpu.slots",
                "mock_gpu.failure_rate",
                "mock_gpu.hang_rate",
                "chaos.error_rate",
                "chaos.latency rate",
            ],
            run: || {
                Box::pin(async {
                    let gpu = MockGpu::builder()
                        .zero_latency()
                        .slots(0)
                        .failure_rate(f64::NAN)
                        .hang_rate(-3.0)
                        .build();
                    let chaos = ChaosLayer::builder()
                        .error_rate(2.0)
                        .latency(f64::NAN, SEC)
                        .build();
                    assert!(gpu.clone().oneshot(request()).await.is_ok());
                    // An error rate of 2 is 1: every call fails.
                    assert!(chaos.layer(gpu).oneshot(request()).await.is_err());
                })
            },
        },
        Row {
            name: "scale: out-of-range factors are clamped",
            settings: &["scale quality", "scale speed"],
            run: || {
                Box::pin(async {
                    let scale = Scale::new(0.0, f64::INFINITY);
                    assert_eq!((scale.quality(), scale.speed()), (0.01, 1000.0));
                })
            },
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn absurd_settings_never_panic_are_clamped_and_logged() {
    let mut failures = Vec::new();
    for row in rows() {
        let warnings = Traced::default();
        let _guard = tracing::subscriber::set_default(warnings.clone());
        // Spawned (on this thread: the runtime is current-thread) so a panic is caught and
        // named instead of ending the table.
        let outcome = tokio::spawn((row.run)()).await;
        drop(_guard);
        if let Err(e) = outcome {
            failures.push(format!("{}: panicked ({e})", row.name));
            continue;
        }
        let seen = warned(&warnings);
        for setting in row.settings {
            if !seen.iter().any(|s| s == setting) {
                failures.push(format!(
                    "{}: no warning for {setting} (saw {seen:?})",
                    row.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Values in range are not logged.
    let warnings = Traced::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        let _ = BreakerLayer::builder()
            .count_window(10)
            .minimum_calls(5)
            .failure_rate_threshold(0.3)
            .half_open_probes(2)
            .open_duration(SEC)
            .build();
        let _ = RetryLayer::builder().max_attempts(3).deadline(SEC).build();
        let _ = RetryBudget::new(10 * SEC, 1, 0.1);
        let _ = ErrorMetrics::with_settings(3.0, 0.9, 32);
    });
    assert_eq!(warned(&warnings), Vec::<String>::new());
}
