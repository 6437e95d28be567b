//! ChaosLayer: injected errors and latency at run-time rates.
#![cfg(feature = "mock")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::mock::{ChaosLayer, InferenceRequest, MockGpu};
use tower_inference::{Classify, DefaultClassifier, ErrorKind, InferenceError};

fn counting_echo(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<u32, Response = u32, Error = InferenceError, Future: Send> + Clone {
    service_fn(move |n: u32| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, InferenceError>(n) }
    })
}

#[tokio::test(start_paused = true)]
async fn injected_errors_never_reach_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::builder()
        .error_rate(1.0)
        .errors([
            InferenceError::timeout(Duration::from_secs(1)),
            InferenceError::OutOfMemory {
                used_mib: 10,
                available_mib: 0,
            },
        ])
        .build();
    let svc = ServiceBuilder::new()
        .layer(chaos.clone())
        .service(counting_echo(calls.clone()));
    let mut kinds = std::collections::BTreeSet::new();
    for n in 0..100 {
        kinds.insert(svc.clone().oneshot(n).await.unwrap_err().kind());
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [ErrorKind::Timeout, ErrorKind::OutOfMemory]
    );
    assert_eq!(chaos.handle().injected_errors(), 100);
}

#[tokio::test(start_paused = true)]
async fn error_rate_is_honoured_and_switchable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::builder().error_rate(0.3).seed(42).build();
    let handle = chaos.handle();
    let svc = ServiceBuilder::new()
        .layer(chaos)
        .service(counting_echo(calls.clone()));
    let mut failed = 0;
    for n in 0..1000 {
        if svc.clone().oneshot(n).await.is_err() {
            failed += 1;
        }
    }
    assert!(
        (250..=350).contains(&failed),
        "{failed} of 1000 at rate 0.3"
    );
    assert_eq!(handle.injected_errors(), failed);
    assert_eq!(calls.load(Ordering::Relaxed) as u64, 1000 - failed);

    handle.set_error_rate(0.0);
    for n in 0..100 {
        assert_eq!(svc.clone().oneshot(n).await.unwrap(), n);
    }
    handle.set_error_rate(1.0);
    handle.set_enabled(false);
    assert_eq!(
        svc.oneshot(5).await.unwrap(),
        5,
        "disabled: nothing injected"
    );
}

#[tokio::test(start_paused = true)]
async fn injected_latency_adds_to_the_inner_latency() {
    let gpu = MockGpu::builder()
        .base_latency(Duration::from_millis(20))
        .per_token_latency(Duration::ZERO)
        .build();
    let chaos = ChaosLayer::builder()
        .latency(1.0, Duration::from_millis(500))
        .build();
    let handle = chaos.handle();
    let svc = ServiceBuilder::new().layer(chaos).service(gpu);
    let start = Instant::now();
    svc.clone()
        .oneshot(InferenceRequest::new("hi"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(520));
    assert_eq!(handle.injected_delays(), 1);

    handle.set_latency(0.0, Duration::from_millis(500));
    let start = Instant::now();
    svc.oneshot(InferenceRequest::new("hi")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn composes_with_box_error_stacks() {
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .map_err(BoxError::from)
        .layer(
            ChaosLayer::builder()
                .error_rate(1.0)
                .errors([InferenceError::ModelNotReady { retry_after: None }])
                .build(),
        )
        .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    let err = svc.oneshot(1).await.unwrap_err();
    let outcome = Classify::<u32, BoxError>::classify(&DefaultClassifier, Err(&err));
    assert_eq!(outcome.kind(), Some(ErrorKind::ModelNotReady));
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_faults() {
    let pattern = |seed| async move {
        let svc = ServiceBuilder::new()
            .layer(ChaosLayer::builder().error_rate(0.5).seed(seed).build())
            .service(counting_echo(Arc::default()));
        let mut bits = Vec::new();
        for n in 0..64 {
            bits.push(svc.clone().oneshot(n).await.is_ok());
        }
        bits
    };
    assert_eq!(pattern(1).await, pattern(1).await);
    assert_ne!(pattern(1).await, pattern(2).await);
}
