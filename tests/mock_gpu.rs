//! MockGpu behaviours on paused time.
#![cfg(feature = "mock")]

use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_inference::mock::{InferenceRequest, MockGpu};
use tower_inference::{ErrorKind, GenerationParams, InferenceError, ModelFailure, Quality};

const MS: Duration = Duration::from_millis(1);

fn req(words: usize, max_tokens: u32) -> InferenceRequest {
    InferenceRequest::new(vec!["word"; words].join(" ")).max_tokens(max_tokens)
}

#[tokio::test(start_paused = true)]
async fn latency_is_base_plus_tokens_times_batch() {
    let gpu = MockGpu::builder()
        .base_latency(10 * MS)
        .per_token_latency(2 * MS)
        .build();
    for (max_tokens, batch) in [(1, 1), (50, 1), (50, 4)] {
        let request =
            req(3, max_tokens).params(GenerationParams::new(max_tokens).batch_size(batch));
        let expected = gpu.latency(&request);
        assert_eq!(expected, 10 * MS + 2 * MS * max_tokens * batch);
        let start = Instant::now();
        let done = gpu.clone().oneshot(request).await.unwrap();
        assert_eq!(start.elapsed(), expected);
        assert_eq!(done.tokens, max_tokens);
        assert_eq!(done.text.split(' ').count(), max_tokens as usize);
        assert_eq!(&*done.model, "mock-gpu");
        assert_eq!(done.provenance.quality, Quality::Full);
    }
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_run() {
    let run = |seed| async move {
        let gpu = MockGpu::builder()
            .zero_latency()
            .failure_rate(0.5)
            .seed(seed)
            .build();
        let mut outcomes = Vec::new();
        for _ in 0..64 {
            outcomes.push(match gpu.clone().oneshot(req(2, 8)).await {
                Ok(c) => c.text,
                Err(e) => e.kind().to_string(),
            });
        }
        outcomes
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert_ne!(a, run(8).await);
    let failures = a.iter().filter(|o| *o == "model_failure").count();
    assert!(
        (16..=48).contains(&failures),
        "{failures} of 64 failed at rate 0.5"
    );
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_exactly_at_capacity() {
    let probe = MockGpu::default();
    let request = req(100, 400).params(GenerationParams::new(400).batch_size(2));
    let cost = probe.memory_cost_mib(&request);
    // 64 MiB fixed + (100 + 400) tokens × 2 × 128 KiB = 64 + 125 MiB.
    assert_eq!(cost, 189);

    let fits = MockGpu::builder()
        .model_memory_mib(1000)
        .memory_capacity_mib(1000 + cost)
        .build();
    assert!(fits.oneshot(request.clone()).await.is_ok());

    let short = MockGpu::builder()
        .model_memory_mib(1000)
        .memory_capacity_mib(1000 + cost - 1)
        .build();
    let handle = short.handle();
    let err = short.oneshot(request).await.unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::OutOfMemory { used_mib: 1000, available_mib } if available_mib == cost - 1
        ),
        "{err:?}"
    );
    let stats = handle.stats();
    assert_eq!((stats.failed, stats.out_of_memory), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn slowdown_stretches_compute_and_holds_the_slot() {
    let gpu = MockGpu::builder()
        .base_latency(10 * MS)
        .per_token_latency(MS)
        .slots(1)
        .build();
    let handle = gpu.handle();
    let request = req(3, 10);
    assert_eq!(gpu.latency(&request), 20 * MS);

    handle.set_slowdown(5.0);
    assert_eq!(gpu.latency(&request), 100 * MS);
    // Two calls on one slot: the second waits for the first's slowed compute.
    let start = Instant::now();
    let (a, b) = tokio::join!(
        gpu.clone().oneshot(request.clone()),
        gpu.clone().oneshot(request.clone())
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(start.elapsed(), 200 * MS);

    handle.set_slowdown(1.0);
    let start = Instant::now();
    gpu.clone().oneshot(request.clone()).await.unwrap();
    assert_eq!(start.elapsed(), 20 * MS);

    // Out-of-range factors are clamped, NaN restores the configured speed.
    handle.set_slowdown(0.0);
    assert_eq!(gpu.latency(&request), Duration::from_micros(200));
    handle.set_slowdown(f64::NAN);
    assert_eq!(gpu.latency(&request), 20 * MS);
    handle.set_slowdown(f64::INFINITY);
    assert_eq!(gpu.latency(&request), 20 * MS * 1000);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_memory() {
    let gpu = MockGpu::builder()
        .base_latency(100 * MS)
        .per_token_latency(Duration::ZERO)
        .model_memory_mib(0)
        .request_memory_mib(600)
        .kib_per_token(0)
        .memory_capacity_mib(1000)
        .build();
    let handle = gpu.handle();
    let first = tokio::spawn(gpu.clone().oneshot(req(1, 1)));
    tokio::time::sleep(MS).await;
    assert_eq!(handle.stats().memory_used_mib, 600);
    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::OutOfMemory {
                used_mib: 600,
                available_mib: 400
            }
        ),
        "{err:?}"
    );
    first.await.unwrap().unwrap();
    assert_eq!(handle.stats().memory_used_mib, 0, "memory is released");
    assert!(gpu.oneshot(req(1, 1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn image_requests_cost_memory_per_megapixel() {
    let gpu = MockGpu::builder()
        .kib_per_token(0)
        .request_memory_mib(0)
        .mib_per_megapixel(512)
        .build();
    let image = InferenceRequest::new("a cat").params(
        GenerationParams::new(1)
            .resolution(1000, 1000)
            .batch_size(3),
    );
    assert_eq!(gpu.memory_cost_mib(&image), 1536);
}

#[tokio::test(start_paused = true)]
async fn context_limit() {
    let gpu = MockGpu::builder().zero_latency().max_context(10).build();
    let at_limit = gpu.clone().oneshot(req(10, 5)).await.unwrap();
    assert_eq!(at_limit.tokens, 0, "no room left to generate");
    let near = gpu.clone().oneshot(req(8, 5)).await.unwrap();
    assert_eq!(near.tokens, 2, "generation stops at the end of the context");
    let err = gpu.oneshot(req(11, 5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::ContextLengthExceeded { input: 11, max: 10 }
        ),
        "{err:?}"
    );
    assert!(err.kind().is_caller_fault());
}

#[tokio::test(start_paused = true)]
async fn queue_full_is_overloaded() {
    let gpu = MockGpu::builder()
        .base_latency(100 * MS)
        .per_token_latency(Duration::ZERO)
        .slots(1)
        .queue_capacity(1)
        .overload_retry_after(Duration::from_secs(2))
        .build();
    let handle = gpu.handle();
    let running = tokio::spawn(gpu.clone().oneshot(req(1, 1)));
    let waiting = tokio::spawn(gpu.clone().oneshot(req(1, 1)));
    tokio::time::sleep(MS).await;
    let stats = handle.stats();
    assert_eq!((stats.in_flight, stats.queued), (1, 1));
    assert_eq!(stats.utilisation, 1.0);

    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::Overloaded { queue_depth: 1, retry_after: Some(d) } if d == Duration::from_secs(2)
        ),
        "{err:?}"
    );

    let start = Instant::now();
    running.await.unwrap().unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        199 * MS,
        "the queued call ran after the first (from 100 ms to 200 ms)"
    );
    assert!(gpu.oneshot(req(1, 1)).await.is_ok(), "room again");
    let stats = handle.stats();
    assert_eq!((stats.calls, stats.succeeded, stats.failed), (4, 3, 1));
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_is_honest_in_poll_ready() {
    let gpu = MockGpu::builder()
        .base_latency(100 * MS)
        .per_token_latency(Duration::ZERO)
        .slots(1)
        .queue_capacity(0)
        .backpressure(true)
        .build();
    let mut first = gpu.clone();
    let call = first.ready().await.unwrap().call(req(1, 1));
    let running = tokio::spawn(call);

    let mut second = gpu.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(second.poll_ready(&mut cx).is_pending(), "no place: pending");

    let start = Instant::now();
    let done = second.ready().await.unwrap().call(req(1, 1)).await;
    assert!(done.is_ok());
    assert_eq!(
        start.elapsed(),
        200 * MS,
        "waited for the first call, then ran"
    );
    running.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn warm_up_boundary() {
    let gpu = MockGpu::builder()
        .zero_latency()
        .load_time(Duration::from_secs(10))
        .build();
    let handle = gpu.handle();
    tokio::time::advance(Duration::from_secs(10) - MS).await;
    assert!(!handle.is_ready());
    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert!(
        matches!(err, InferenceError::ModelNotReady { retry_after: Some(d) } if d == MS),
        "{err:?}"
    );
    assert!(err.kind().is_retryable());
    tokio::time::advance(MS).await;
    assert!(handle.is_ready());
    assert!(gpu.oneshot(req(1, 1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn kill_and_revive() {
    let gpu = MockGpu::builder()
        .base_latency(100 * MS)
        .per_token_latency(Duration::ZERO)
        .load_time(Duration::from_secs(5))
        .build();
    let handle = gpu.handle();
    tokio::time::advance(Duration::from_secs(5)).await;
    let in_flight = tokio::spawn(gpu.clone().oneshot(req(1, 1)));
    tokio::time::sleep(10 * MS).await;

    handle.kill();
    assert!(!handle.is_alive());
    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Infrastructure);
    let err = in_flight.await.unwrap().unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Infrastructure,
        "a call in flight dies with the backend"
    );

    handle.revive();
    assert!(
        handle.is_alive() && !handle.is_ready(),
        "a revived backend reloads its weights"
    );
    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelNotReady);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(gpu.oneshot(req(1, 1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn hang_is_cut_by_a_timeout_and_frees_the_slot() {
    let gpu = MockGpu::builder()
        .zero_latency()
        .hang_rate(1.0)
        .slots(1)
        .queue_capacity(0)
        .build();
    let handle = gpu.handle();
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(3))
        .service(gpu);
    let start = Instant::now();
    let err = svc.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let stats = handle.stats();
    assert_eq!(
        (stats.in_flight, stats.queued, stats.memory_used_mib),
        (0, 0, 16_384)
    );

    handle.set_hang_rate(0.0);
    assert!(
        svc.oneshot(req(1, 1)).await.is_ok(),
        "the hung call's slot was released"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_set_at_run_time() {
    let gpu = MockGpu::builder().zero_latency().build();
    let handle = gpu.handle();
    assert!(gpu.clone().oneshot(req(1, 1)).await.is_ok());
    handle.set_failure_rate(1.0);
    let err = gpu.clone().oneshot(req(1, 1)).await.unwrap_err();
    assert!(matches!(
        err,
        InferenceError::ModelFailure {
            failure: ModelFailure::NanOutput
        }
    ));
    handle.set_failure_rate(f64::NAN);
    assert!(gpu.oneshot(req(1, 1)).await.is_ok(), "NaN is read as 0");
}

#[tokio::test(start_paused = true)]
async fn no_panic_on_any_input() {
    let gpu = MockGpu::builder().zero_latency().build();
    let cases: Vec<(InferenceRequest, Option<ErrorKind>)> = vec![
        (InferenceRequest::new(""), Some(ErrorKind::InvalidInput)),
        (
            InferenceRequest::new("   \n\t"),
            Some(ErrorKind::InvalidInput),
        ),
        (req(1, 0), Some(ErrorKind::InvalidInput)),
        (
            req(1, 1).params(GenerationParams::new(1).batch_size(0)),
            Some(ErrorKind::InvalidInput),
        ),
        (
            req(1, 1).params(GenerationParams::new(1).steps(0)),
            Some(ErrorKind::InvalidInput),
        ),
        (
            req(1, 1).params(GenerationParams::new(1).resolution(0, 0)),
            Some(ErrorKind::InvalidInput),
        ),
        (req(5000, 1), Some(ErrorKind::ContextLengthExceeded)),
        (req(1, u32::MAX), None),
        (
            req(1, u32::MAX).params(GenerationParams::new(u32::MAX).batch_size(u32::MAX)),
            Some(ErrorKind::OutOfMemory),
        ),
        (
            req(1, 1).params(
                GenerationParams::new(1)
                    .resolution(u32::MAX, u32::MAX)
                    .batch_size(u32::MAX)
                    .steps(u32::MAX),
            ),
            Some(ErrorKind::OutOfMemory),
        ),
        (InferenceRequest::new("ünïcødé 🚀 prompt"), None),
    ];
    for (request, expected) in cases {
        let result = gpu.clone().oneshot(request.clone()).await;
        assert_eq!(
            result.as_ref().err().map(InferenceError::kind),
            expected,
            "{request:?}"
        );
    }
    let huge = gpu.clone().oneshot(req(1, u32::MAX)).await.unwrap();
    assert_eq!(huge.tokens, 4095, "bounded by the context window");
}

#[tokio::test(start_paused = true)]
async fn stats_report_memory_and_utilisation() {
    let gpu = MockGpu::builder()
        .base_latency(50 * MS)
        .per_token_latency(Duration::ZERO)
        .slots(4)
        .memory_capacity_mib(2000)
        .model_memory_mib(1000)
        .request_memory_mib(100)
        .kib_per_token(0)
        .build();
    let handle = gpu.handle();
    assert_eq!(handle.memory_utilisation(), 0.5);
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(gpu.clone().oneshot(req(1, 1))))
        .collect();
    tokio::time::sleep(MS).await;
    let stats = handle.stats();
    assert_eq!(stats.in_flight, 3);
    assert_eq!(stats.utilisation, 0.75);
    assert_eq!(stats.memory_used_mib, 1300);
    assert_eq!(handle.memory_utilisation(), 0.65);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.utilisation(), 0.0);
}
