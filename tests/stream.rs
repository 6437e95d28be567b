//! Streamed answers: each phase (before the first token, mid-stream, stall, hang-up) through
//! each layer, on paused time.

#![cfg(feature = "mock")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::FallbackLayer;
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::mock::{InferenceRequest, MockGpu, StreamFault};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::stream::{Chunk, StreamTimeoutLayer, TokenStream};
use tower_inference::{
    Annotate, CircuitState, ErrorKind, InferenceError, ModelFailure, Quality, TimeoutPhase,
};

const MS: Duration = Duration::from_millis(1);

/// A primary: the first token after 50 ms, then one every 10 ms.
fn gpu(name: &'static str) -> MockGpu {
    MockGpu::builder()
        .name(name)
        .base_latency(50 * MS)
        .per_token_latency(10 * MS)
        .slots(4)
        .build()
}

fn ask(tokens: u32) -> InferenceRequest {
    InferenceRequest::new("tell me a story").max_tokens(tokens)
}

fn timeouts() -> StreamTimeoutLayer {
    StreamTimeoutLayer::new()
        .first_token(200 * MS)
        .stall(100 * MS)
}

async fn drain(stream: &mut TokenStream) -> (u32, Option<InferenceError>) {
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => chunks += 1,
            Err(err) => return (chunks, Some(err)),
        }
    }
    (chunks, None)
}

fn is_generation_failure(err: &InferenceError) -> bool {
    matches!(
        err,
        InferenceError::ModelFailure {
            failure: ModelFailure::Generation
        }
    )
}

// ---- the mock in streaming mode -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn mock_stream_answers_at_first_token_then_one_token_per_latency() {
    let gpu = gpu("m");
    let weights = gpu.handle().stats().memory_used_mib;
    let started = Instant::now();
    let mut stream = gpu.streaming().oneshot(ask(5)).await.unwrap();
    assert_eq!(started.elapsed(), 50 * MS, "resolves at the first token");
    assert_eq!(
        gpu.handle().stats().in_flight,
        1,
        "the stream holds its slot"
    );
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!((chunks, err.is_none()), (5, true));
    // As long as the same call unstreamed: 50 ms + 5 × 10 ms (the first token included).
    assert_eq!(started.elapsed(), gpu.latency(&ask(5)) - 10 * MS);
    let stats = gpu.handle().stats();
    assert_eq!((stats.in_flight, stats.succeeded), (0, 1));
    assert_eq!(
        stats.memory_used_mib, weights,
        "its memory is freed at its end"
    );
}

#[tokio::test(start_paused = true)]
async fn mock_stream_dropped_mid_answer_frees_its_slot_and_memory() {
    let gpu = gpu("m");
    let weights = gpu.handle().stats().memory_used_mib;
    let mut stream = gpu.streaming().oneshot(ask(50)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    stream.next().await.unwrap().unwrap();
    assert!(gpu.handle().stats().memory_used_mib > weights);
    drop(stream);
    let stats = gpu.handle().stats();
    assert_eq!(
        (stats.in_flight, stats.queued, stats.memory_used_mib),
        (0, 0, weights)
    );
    assert_eq!(
        (stats.succeeded, stats.failed),
        (0, 0),
        "a hang-up is neither"
    );
}

#[tokio::test(start_paused = true)]
async fn mock_stream_killed_mid_answer_ends_with_infrastructure() {
    let gpu = gpu("m");
    let mut stream = gpu.streaming().oneshot(ask(10)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    gpu.handle().kill();
    let (_, err) = drain(&mut stream).await;
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Infrastructure));
    assert_eq!(gpu.handle().stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn mock_stream_pause_delays_the_next_token_then_goes_on() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::PauseAfter(2, 300 * MS)));
    let started = Instant::now();
    let mut stream = gpu.streaming().oneshot(ask(4)).await.unwrap();
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!((chunks, err.is_none()), (4, true));
    assert_eq!(started.elapsed(), 50 * MS + 3 * 10 * MS + 300 * MS);
}

// ---- the first-token and stall timeouts -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn first_token_timeout_fails_the_call_at_the_timeout() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::NoFirstToken));
    let svc = ServiceBuilder::new()
        .layer(timeouts())
        .service(gpu.streaming());
    let started = Instant::now();
    let err = svc.oneshot(ask(5)).await.unwrap_err();
    assert_eq!(started.elapsed(), 200 * MS);
    assert!(matches!(
        err,
        InferenceError::Timeout {
            phase: TimeoutPhase::FirstToken,
            after,
        } if after == 200 * MS
    ));
    assert_eq!(err.to_body().details["phase"], "first_token");
    assert_eq!(
        gpu.handle().stats().in_flight,
        0,
        "the dropped call freed its slot"
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_waits_for_the_first_chunk_of_a_source_that_answers_early() {
    // A source that answers at once (like a server's response headers), its first token
    // 30 ms later.
    let svc = ServiceBuilder::new()
        .layer(timeouts())
        .service(service_fn(|_: ()| async {
            Ok::<_, InferenceError>(TokenStream::new(Late {
                sleep: Box::pin(tokio::time::sleep(30 * MS)),
                sent: false,
            }))
        }));
    let started = Instant::now();
    let stream = svc.oneshot(()).await.unwrap();
    assert_eq!(started.elapsed(), 30 * MS, "resolved at the first chunk");
    assert!(stream.has_started());
    assert_eq!(stream.text().await.unwrap(), "late");
}

#[tokio::test(start_paused = true)]
async fn a_source_that_fails_before_its_first_chunk_fails_the_call() {
    let svc = ServiceBuilder::new()
        .layer(StreamTimeoutLayer::new())
        .service(service_fn(|_: ()| async {
            Ok::<_, InferenceError>(TokenStream::new(Failing))
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory);
}

#[tokio::test(start_paused = true)]
async fn stall_timeout_cuts_a_stalled_stream_at_the_timeout() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::StallAfter(3)));
    let svc = ServiceBuilder::new()
        .layer(timeouts())
        .service(gpu.streaming());
    let mut stream = svc.oneshot(ask(10)).await.unwrap();
    let mut last = Instant::now();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
        last = Instant::now();
    }
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(
        last.elapsed(),
        100 * MS,
        "cut exactly one stall timeout after the last token"
    );
    assert!(matches!(
        err,
        InferenceError::Timeout {
            phase: TimeoutPhase::Stall,
            ..
        }
    ));
    assert!(stream.next().await.is_none(), "the stream ended");
    drop(stream);
    assert_eq!(gpu.handle().stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_pause_shorter_than_the_stall_timeout_is_not_cut() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::PauseAfter(2, 80 * MS)));
    let svc = ServiceBuilder::new()
        .layer(timeouts())
        .service(gpu.streaming());
    let mut stream = svc.oneshot(ask(6)).await.unwrap();
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!((chunks, err.is_none()), (6, true));
}

#[tokio::test(start_paused = true)]
async fn tower_timeout_bounds_the_wait_for_the_first_chunk_not_the_stream() {
    let gpu = gpu("m");
    let svc = ServiceBuilder::new()
        .timeout(100 * MS)
        .service(gpu.streaming());
    // 20 tokens take 240 ms in all, past the timeout: the started stream is not cut.
    let mut stream = svc.clone().oneshot(ask(20)).await.unwrap();
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!((chunks, err.is_none()), (20, true));
    gpu.handle()
        .set_stream_fault(Some(StreamFault::NoFirstToken));
    let started = Instant::now();
    let err = svc.oneshot(ask(20)).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(started.elapsed(), 100 * MS);
}

// ---- retry ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_retries_a_failure_before_the_first_token() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let flaky = service_fn(move |_: InferenceRequest| {
        let n = counted.fetch_add(1, SeqCst);
        async move {
            if n < 2 {
                Err(InferenceError::infrastructure())
            } else {
                Ok(TokenStream::from_chunks(["a", " b"].map(Chunk::new)))
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().max_attempts(3).build())
        .service(flaky);
    let stream = svc.oneshot(ask(2)).await.unwrap();
    assert_eq!(stream.provenance().unwrap().attempts, 3);
    assert_eq!(stream.text().await.unwrap(), "a b");
}

#[tokio::test(start_paused = true)]
async fn retry_retries_a_first_token_timeout() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::NoFirstToken));
    let handle = gpu.handle();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(2)
                .backoff(Backoff::new(MS, 1.0, MS))
                .build(),
        )
        .layer(timeouts())
        .service(gpu.streaming());
    // The second attempt finds the model healthy.
    let heal = tokio::spawn(async move {
        tokio::time::sleep(150 * MS).await;
        handle.set_stream_fault(None);
    });
    let mut stream = svc.oneshot(ask(3)).await.unwrap();
    heal.await.unwrap();
    assert_eq!(stream.provenance().unwrap().attempts, 2);
    assert_eq!(drain(&mut stream).await.0, 3);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_dies_after_five_tokens_ends_with_an_error_and_is_not_retried() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::DieAfter(5)));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().max_attempts(3).build())
        .layer(timeouts())
        .service(gpu.streaming());
    let mut stream = svc.oneshot(ask(20)).await.unwrap();
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!(chunks, 5);
    assert!(is_generation_failure(&err.unwrap()));
    assert!(stream.next().await.is_none());
    assert_eq!(gpu.handle().stats().calls, 1, "never retried");
}

// ---- fallback ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_primary_with_no_first_token_falls_back_within_the_first_token_timeout() {
    let primary = gpu("llama-70b");
    primary
        .handle()
        .set_stream_fault(Some(StreamFault::NoFirstToken));
    let light = MockGpu::builder()
        .name("llama-8b")
        .base_latency(20 * MS)
        .per_token_latency(2 * MS)
        .build();
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder()
                .primary("llama-70b")
                .tier("llama-8b", Quality::Reduced, light.streaming())
                .build(),
        )
        .layer(timeouts())
        .service(primary.streaming());
    let started = Instant::now();
    let stream = svc.oneshot(ask(4)).await.unwrap();
    assert_eq!(
        started.elapsed(),
        200 * MS + 20 * MS,
        "timeout, then the light model's first token"
    );
    let provenance = stream.provenance().unwrap().clone();
    assert_eq!(
        (provenance.tier.as_ref(), provenance.fallback),
        ("llama-8b", true)
    );
    assert_eq!(provenance.failed_tiers()[0].tier, "llama-70b");
    assert_eq!(provenance.failed_tiers()[0].kind, ErrorKind::Timeout);
    assert_eq!(stream.text().await.unwrap().split_whitespace().count(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_dies_midway_does_not_fall_back() {
    let primary = gpu("llama-70b");
    primary
        .handle()
        .set_stream_fault(Some(StreamFault::DieAfter(5)));
    let light = gpu("llama-8b");
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder()
                .primary("llama-70b")
                .tier("llama-8b", Quality::Reduced, light.streaming())
                .static_default(|_: &InferenceRequest| TokenStream::from_text("sorry"))
                .build(),
        )
        .service(primary.streaming());
    let mut stream = svc.oneshot(ask(20)).await.unwrap();
    assert_eq!(stream.provenance().unwrap().tier, "llama-70b");
    let (chunks, err) = drain(&mut stream).await;
    assert_eq!(chunks, 5);
    assert!(is_generation_failure(&err.unwrap()));
    assert_eq!(light.handle().stats().calls, 0, "no tier was tried");
}

#[tokio::test(start_paused = true)]
async fn the_static_default_answers_as_a_stream() {
    let primary = gpu("llama-70b");
    primary.handle().kill();
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder()
                .primary("llama-70b")
                .static_default(|_: &InferenceRequest| TokenStream::from_text("try again later"))
                .build(),
        )
        .service(primary.streaming());
    let stream = svc.oneshot(ask(20)).await.unwrap();
    assert_eq!(stream.provenance().unwrap().quality, Quality::Minimal);
    assert_eq!(stream.text().await.unwrap(), "try again later");
}

// ---- breaker ----------------------------------------------------------------------------

fn breaker() -> BreakerLayer {
    BreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(1)
        .build()
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_a_stream_when_it_ends() {
    let gpu = gpu("m");
    gpu.handle()
        .set_stream_fault(Some(StreamFault::DieAfter(2)));
    let layer = breaker();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(gpu.streaming());
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(svc.ready().await.unwrap().call(ask(10)).await.unwrap());
    }
    // Four streams started: none has ended, so none is counted yet.
    assert_eq!(handle.snapshot().calls, 0);
    assert_eq!(handle.state(), CircuitState::Closed);
    for stream in &mut streams {
        assert!(drain(stream).await.1.is_some());
    }
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "four mid-stream deaths opened it"
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_finished_streams_as_successes_and_hang_ups_as_neither() {
    let gpu = gpu("m");
    let layer = breaker();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(gpu.streaming());
    for _ in 0..3 {
        let mut stream = svc.ready().await.unwrap().call(ask(3)).await.unwrap();
        assert!(drain(&mut stream).await.1.is_none());
    }
    for _ in 0..5 {
        let mut stream = svc.ready().await.unwrap().call(ask(30)).await.unwrap();
        stream.next().await.unwrap().unwrap();
        drop(stream);
    }
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_holds_its_slot_until_the_stream_ends_and_a_hang_up_frees_it() {
    let gpu = gpu("m");
    let layer = breaker();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(gpu.streaming());
    gpu.handle()
        .set_stream_fault(Some(StreamFault::DieAfter(1)));
    for _ in 0..4 {
        let mut stream = svc.ready().await.unwrap().call(ask(5)).await.unwrap();
        drain(&mut stream).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    gpu.handle().set_stream_fault(None);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The one probe streams; while it does, its slot is taken.
    let mut probe = svc.ready().await.unwrap().call(ask(5)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let refused = svc.ready().await.unwrap().call(ask(5)).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::CircuitOpen);
    // The caller hangs up: neither success nor failure, and the slot is free again.
    probe.next().await.unwrap().unwrap();
    drop(probe);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let mut probe = svc.ready().await.unwrap().call(ask(5)).await.unwrap();
    assert!(drain(&mut probe).await.1.is_none());
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "a finished probe closes it"
    );
}

// ---- degrade ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn degrade_scales_a_streamed_request_and_says_so() {
    let gpu = gpu("m");
    let layer = DegradeLayer::builder().build();
    layer.handle().force("minimal").unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(gpu.streaming());
    let mut stream = svc.oneshot(ask(100)).await.unwrap();
    assert_eq!(
        stream.provenance().unwrap().degraded.as_deref(),
        Some("minimal")
    );
    assert_eq!(drain(&mut stream).await.0, 40, "max_tokens × 0.4");
}

// ---- metrics ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn metrics_record_first_token_inter_token_rate_and_how_streams_ended() {
    let gpu = gpu("m");
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .layer(timeouts())
        .service(gpu.streaming());

    let mut finished = svc.clone().oneshot(ask(11)).await.unwrap();
    assert_eq!(drain(&mut finished).await.0, 11);
    gpu.handle()
        .set_stream_fault(Some(StreamFault::DieAfter(3)));
    let mut failed = svc.clone().oneshot(ask(11)).await.unwrap();
    drain(&mut failed).await;
    gpu.handle()
        .set_stream_fault(Some(StreamFault::StallAfter(2)));
    let mut stalled = svc.clone().oneshot(ask(11)).await.unwrap();
    drain(&mut stalled).await;
    gpu.handle().set_stream_fault(None);
    let mut cancelled = svc.clone().oneshot(ask(11)).await.unwrap();
    cancelled.next().await.unwrap().unwrap();
    drop(cancelled);

    let snapshot = metrics.snapshot();
    let streams = &snapshot.stages[0].streams;
    assert_eq!(
        (
            streams.finished,
            streams.failed,
            streams.stalled,
            streams.cancelled
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(streams.first_token.count, 4);
    assert_eq!(streams.first_token.p50, 50 * MS);
    // 10 gaps in the finished stream, 2 in the failed one, 1 in the stalled one.
    assert_eq!(streams.inter_token.count, 13);
    assert_eq!(streams.inter_token.max, 10 * MS);
    // 10 tokens after the first in 100 ms: 100 tokens/s (within the 3.2 % of a bucket).
    assert_eq!(streams.tokens_per_second.count, 1);
    assert!(
        (streams.tokens_per_second.p50 - 100.0).abs() < 3.2,
        "{streams:?}"
    );
    let text = metrics.render_prometheus();
    for line in [
        r#"inference_stream_first_token_seconds_count{stage="edge"} 4"#,
        r#"inference_stream_inter_token_seconds_count{stage="edge"} 13"#,
        r#"inference_stream_tokens_per_second_bucket{stage="edge",le="100"} 1"#,
        r#"inference_streams_ended_total{stage="edge",end="stalled"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

// ---- helpers ----------------------------------------------------------------------------

/// One chunk after a sleep.
struct Late {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    sent: bool,
}

impl futures_core::Stream for Late {
    type Item = Result<Chunk, InferenceError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.sent {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(this.sleep.as_mut().poll(cx));
        this.sent = true;
        std::task::Poll::Ready(Some(Ok(Chunk::new("late"))))
    }
}

/// Fails before its first chunk.
struct Failing;

impl futures_core::Stream for Failing {
    type Item = Result<Chunk, InferenceError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(Some(Err(InferenceError::OutOfMemory {
            used_mib: 1,
            available_mib: 0,
        })))
    }
}
