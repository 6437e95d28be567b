//! Health: status combinations, timeouts, the breaker and threshold checks, the cached canary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tower::service_fn;
use tower_inference::InferenceError;
use tower_inference::breaker::BreakerLayer;
use tower_inference::health::{Health, HealthBuilder, Status};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn with(builder: HealthBuilder, name: &'static str, critical: bool, ok: bool) -> HealthBuilder {
    builder.check(name, critical, SEC, move || async move {
        if ok {
            Ok(())
        } else {
            Err(format!("{name} is down"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn every_status_combination() {
    // critical ok, non-critical ok -> status
    let table = [
        (true, true, Status::Healthy, 200),
        (true, false, Status::Degraded, 200),
        (false, true, Status::Critical, 503),
        (false, false, Status::Critical, 503),
    ];
    for (critical_ok, optional_ok, status, http) in table {
        let health = with(
            with(Health::builder(), "model", true, critical_ok),
            "cache",
            false,
            optional_ok,
        )
        .build();
        let report = health.ready().await;
        assert_eq!(
            (report.status, report.http_status()),
            (status, http),
            "{critical_ok} {optional_ok}"
        );
        let expected_failed: Vec<&str> = [("model", critical_ok), ("cache", optional_ok)]
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(report.failed(), expected_failed);
    }
    assert_eq!(
        Health::builder().build().ready().await.status,
        Status::Healthy
    );
    assert_eq!(Health::builder().build().live().await.http_status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_times_out_has_failed() {
    let health = Health::builder()
        .check("slow", true, 100 * MS, || async {
            tokio::time::sleep(SEC).await;
            Ok(())
        })
        .build();
    let report = health.ready().await;
    assert_eq!(report.status, Status::Critical);
    assert_eq!(
        report.checks[0].message.as_deref(),
        Some("timed out after 100 ms")
    );
    assert_eq!(report.checks[0].duration_ms, 100);
}

#[tokio::test(start_paused = true)]
async fn an_open_critical_breaker_means_not_ready() {
    let layer = BreakerLayer::new();
    let health = Health::builder()
        .critical_breaker("llama_breaker", layer.handle())
        .build();
    assert_eq!(health.ready().await.status, Status::Healthy);
    layer.handle().force_open();
    let report = health.ready().await;
    assert_eq!(report.status, Status::Critical);
    assert_eq!(
        report.checks[0].message.as_deref(),
        Some("circuit breaker is forced_open")
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_over_its_threshold_fails() {
    let level = Arc::new(AtomicUsize::new(50));
    let probe = level.clone();
    let health = Health::builder()
        .threshold("gpu_memory", false, 0.95, move || {
            probe.load(SeqCst) as f64 / 100.0
        })
        .build();
    assert_eq!(health.ready().await.status, Status::Healthy);
    level.store(95, SeqCst);
    assert_eq!(
        health.ready().await.status,
        Status::Healthy,
        "at the limit is fine"
    );
    level.store(97, SeqCst);
    let report = health.ready().await;
    assert_eq!(report.status, Status::Degraded);
    assert_eq!(
        report.checks[0].message.as_deref(),
        Some("0.970 is above the limit of 0.950")
    );
}

fn canary_health(calls: Arc<AtomicUsize>, latency: Duration, answer: &'static str) -> Health {
    let model = service_fn(move |prompt: &'static str| {
        calls.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, InferenceError>(format!("{answer} {prompt}"))
        }
    });
    Health::builder()
        .canary(
            model,
            "2+2=",
            |out: &String| out.contains('4'),
            500 * MS,
            30 * SEC,
        )
        .build()
}

#[tokio::test(start_paused = true)]
async fn the_canary_is_cached_between_intervals() {
    let calls = Arc::new(AtomicUsize::new(0));
    let health = canary_health(calls.clone(), 10 * MS, "4");
    for _ in 0..5 {
        assert_eq!(health.inference().await.status, Status::Healthy);
    }
    assert_eq!(calls.load(SeqCst), 1, "one run for five asks");
    tokio::time::advance(30 * SEC).await;
    health.inference().await;
    assert_eq!(calls.load(SeqCst), 2, "a new run after the interval");
}

#[tokio::test(start_paused = true)]
async fn the_canary_fails_on_a_wrong_answer_or_a_slow_one() {
    let wrong = canary_health(Arc::default(), 10 * MS, "5")
        .inference()
        .await;
    assert_eq!(wrong.status, Status::Critical);
    assert_eq!(
        wrong.checks[0].message.as_deref(),
        Some("the canary's answer failed validation")
    );

    let slow = canary_health(Arc::default(), 600 * MS, "4")
        .inference()
        .await;
    assert_eq!(slow.status, Status::Critical);
    assert_eq!(
        slow.checks[0].message.as_deref(),
        Some("the canary took 600 ms, over the 500 ms limit")
    );

    let failing = Health::builder()
        .canary(
            service_fn(|_: ()| async { Err::<String, _>(InferenceError::infrastructure()) }),
            (),
            |_: &String| true,
            SEC,
            SEC,
        )
        .build();
    let report = failing.inference().await;
    assert_eq!(
        report.checks[0].message.as_deref(),
        Some("the canary failed: infrastructure")
    );
}

#[tokio::test(start_paused = true)]
async fn reports_serialize_to_json() {
    let report = with(Health::builder(), "cache", false, false)
        .build()
        .ready()
        .await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["checks"][0]["name"], "cache");
    assert_eq!(json["checks"][0]["passed"], false);
    assert_eq!(json["checks"][0]["message"], "cache is down");
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn health_is_served_over_http() {
    use tower::ServiceExt;
    use tower_inference::health::HealthService;

    let health = with(Health::builder(), "model", true, false).build();
    let svc = HealthService::new(health);
    let get = |path: &str| http::Request::get(path).body(()).unwrap();
    for (path, status) in [
        ("/health/live", 200),
        ("/health/ready", 503),
        ("/health/inference", 200),
        ("/nope", 404),
    ] {
        let res = svc.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json");
    }
    let post = http::Request::post("/health/ready").body(()).unwrap();
    assert_eq!(svc.oneshot(post).await.unwrap().status(), 405);
}

#[tokio::test(start_paused = true)]
async fn the_canary_reports_the_kind_of_failure_never_the_backend_text() {
    let model = service_fn(|_: &'static str| async {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect to 10.3.7.21:8000 with api_key=sk-live-123 refused",
        );
        Err::<String, _>(tower::BoxError::from(io))
    });
    let health = Health::builder()
        .canary(model, "ping", |_: &String| true, SEC, 10 * SEC)
        .build();
    let report = health.inference().await;
    assert_eq!(report.status, Status::Critical);
    let json = report.to_json();
    for secret in ["10.3.7.21", "sk-live-123", "refused", "api_key"] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }
    assert_eq!(
        report.checks[0].message.as_deref(),
        Some("the canary failed: infrastructure")
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_or_canary_fails_its_check_instead_of_panicking() {
    let model = service_fn(|_: &'static str| async {
        if true {
            panic!("the model client blew up");
        }
        Ok::<String, InferenceError>(String::new())
    });
    let health = Health::builder()
        .threshold("gpu_memory", true, 0.95, || panic!("no such device"))
        .check("feature_store", false, SEC, || async {
            panic!("bug in the check")
        })
        .canary(model, "ping", |_: &String| true, SEC, 10 * SEC)
        .build();
    for _ in 0..2 {
        let ready = health.ready().await;
        assert_eq!(ready.status, Status::Critical);
        assert_eq!(ready.failed(), ["gpu_memory", "feature_store"]);
        assert_eq!(
            ready.checks[0].message.as_deref(),
            Some("the check panicked")
        );
        let inference = health.inference().await;
        assert_eq!(inference.http_status(), 503);
        assert_eq!(inference.failed(), ["inference_canary"]);
    }
}

#[tokio::test(start_paused = true)]
async fn checks_run_concurrently_bounded_by_the_slowest_timeout() {
    let mut builder = Health::builder();
    for i in 0..10 {
        builder = builder.check(format!("hung-{i}"), false, SEC, || {
            std::future::pending::<Result<(), String>>()
        });
    }
    let health = builder
        .check("slowest", false, 2 * SEC, std::future::pending)
        .build();
    let started = tokio::time::Instant::now();
    let report = health.ready().await;
    assert_eq!(started.elapsed(), 2 * SEC);
    assert_eq!(report.failed().len(), 11);
    // Results stay in registration order.
    assert_eq!(report.checks[0].name, "hung-0");
    assert_eq!(report.checks[10].name, "slowest");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_with_a_fallback_behind_it_is_degraded_not_unready() {
    let layer = BreakerLayer::new();
    let health = Health::builder()
        .breaker("llama_breaker", layer.handle())
        .build();
    layer.handle().force_open();
    let report = health.ready().await;
    assert_eq!(report.status, Status::Degraded);
    assert_eq!(report.http_status(), 200);
    assert_eq!(report.failed(), ["llama_breaker"]);
}
