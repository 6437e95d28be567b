//! Baselines every layer is compared to: the bare cost of calling `MockGpu` with zero latency,
//! and the cost of classifying an outcome.
//!
//! Run with `cargo bench --bench overhead --all-features`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{BoxError, ServiceExt};
use tower_inference::mock::{InferenceRequest, MockGpu};
use tower_inference::{Classify, DefaultClassifier, HttpClassifier, InferenceError};

fn mock_gpu(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let gpu = rt.block_on(async { MockGpu::builder().zero_latency().build() });
    let request = InferenceRequest::new("benchmark the bare service").max_tokens(4);

    let mut group = c.benchmark_group("mock_gpu");
    group.bench_function("call_zero_latency", |b| {
        b.to_async(&rt).iter(|| {
            let svc = gpu.clone();
            let req = request.clone();
            async move { black_box(svc.oneshot(req).await.is_ok()) }
        })
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let timeout = InferenceError::timeout(Duration::from_secs(1));
    let boxed: BoxError = timeout.clone().into();
    let unknown: BoxError = "connection reset".into();
    let elapsed: BoxError = tower::timeout::error::Elapsed::new().into();
    let http_503 = http::Response::builder()
        .status(503)
        .header("retry-after", "2")
        .body(())
        .expect("a response");
    let http_200 = http::Response::new(());

    let mut group = c.benchmark_group("classify");
    group.bench_function("inference_error", |b| {
        b.iter(|| Classify::<(), _>::classify(&DefaultClassifier, Err(black_box(&timeout))))
    });
    group.bench_function("box_error_downcast", |b| {
        b.iter(|| Classify::<(), _>::classify(&DefaultClassifier, Err(black_box(&boxed))))
    });
    group.bench_function("box_error_tower_elapsed", |b| {
        b.iter(|| Classify::<(), _>::classify(&DefaultClassifier, Err(black_box(&elapsed))))
    });
    group.bench_function("box_error_unknown", |b| {
        b.iter(|| Classify::<(), _>::classify(&DefaultClassifier, Err(black_box(&unknown))))
    });
    group.bench_function("http_200", |b| {
        b.iter(|| {
            Classify::<_, InferenceError>::classify(&HttpClassifier, Ok(black_box(&http_200)))
        })
    });
    group.bench_function("http_503_retry_after", |b| {
        b.iter(|| {
            Classify::<_, InferenceError>::classify(&HttpClassifier, Ok(black_box(&http_503)))
        })
    });
    group.finish();
}

criterion_group!(benches, mock_gpu, classify);
criterion_main!(benches);
