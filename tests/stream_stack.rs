//! Streamed answers through the whole stack: spawned on a multi-thread runtime over tower's
//! `timeout` (so `BoxError`) and over a plain `InferenceError` service, and a thousand callers
//! hanging up at random points.
#![cfg(feature = "mock")]

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::FallbackLayer;
use tower_inference::metrics::ErrorMetrics;
use tower_inference::mock::{InferenceRequest, MockGpu, StreamFault};
use tower_inference::retry::RetryLayer;
use tower_inference::stack::InferenceStack;
use tower_inference::stream::{StreamTimeoutLayer, TokenStream};
use tower_inference::{Annotate, CircuitState, InferenceError, Quality};

const MS: Duration = Duration::from_millis(1);

fn model(name: &'static str, slots: usize) -> MockGpu {
    MockGpu::builder()
        .name(name)
        .base_latency(5 * MS)
        .per_token_latency(MS)
        .slots(slots)
        .queue_capacity(2_000)
        .build()
}

fn fallback<E>(
    light: &MockGpu,
) -> tower_inference::fallback::FallbackBuilder<InferenceRequest, TokenStream, E>
where
    E: From<InferenceError> + Send + 'static,
{
    FallbackLayer::builder()
        .tier("llama-8b", Quality::Reduced, light.streaming())
        .static_default(|_: &InferenceRequest| TokenStream::from_text("busy, try again"))
}

fn timeouts() -> StreamTimeoutLayer {
    StreamTimeoutLayer::new()
        .first_token(100 * MS)
        .stall(50 * MS)
}

/// Spawns `n` streamed calls and returns the text of each, or the error that ended it.
macro_rules! spawn_calls {
    ($svc:expr, $n:expr) => {{
        let mut tasks = Vec::new();
        for i in 0..$n {
            let svc = $svc.clone();
            tasks.push(tokio::spawn(async move {
                let stream = svc
                    .oneshot(InferenceRequest::new(format!("prompt {i}")).max_tokens(8))
                    .await
                    .map_err(|e| e.to_string())?;
                let tier = stream.provenance().map(|p| p.tier.to_string());
                let text = stream.text().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((tier.unwrap_or_default(), text))
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }};
}

#[test]
fn the_whole_stack_streams_spawned_over_tower_timeout_with_box_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let primary = model("llama-70b", 64);
        let light = model("llama-8b", 64);
        let metrics = ErrorMetrics::new();
        let stack = InferenceStack::new("llama-70b")
            .metrics(&metrics)
            .fallback(fallback::<BoxError>(&light))
            .degrade(DegradeLayer::builder())
            .retry(RetryLayer::builder().max_attempts(2))
            .breaker(BreakerLayer::builder().count_window(20).minimum_calls(10))
            .timeout(Duration::from_secs(2))
            .build();
        let svc = ServiceBuilder::new()
            .layer(stack)
            .layer(timeouts())
            .service(primary.streaming());

        let answers = spawn_calls!(svc, 50);
        for answer in &answers {
            let (tier, text) = answer.as_ref().unwrap();
            assert_eq!(tier, "llama-70b");
            assert_eq!(text.split_whitespace().count(), 8);
        }
        // The primary dies: every stream still answers, from the lighter model.
        primary.handle().kill();
        let answers = spawn_calls!(svc, 50);
        for answer in &answers {
            let (tier, _) = answer.as_ref().unwrap();
            assert_eq!(tier, "llama-8b");
        }
        let snapshot = metrics.snapshot();
        let edge = snapshot.stages.iter().find(|s| s.stage == "edge").unwrap();
        assert_eq!(edge.streams.finished, 100);
        assert_eq!(edge.streams.first_token.count, 100);
        assert_eq!(primary.handle().stats().in_flight, 0);
        assert_eq!(light.handle().stats().in_flight, 0);
    });
}

#[test]
fn the_whole_stack_streams_spawned_with_inference_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let primary = model("llama-70b", 64);
        primary
            .handle()
            .set_stream_fault(Some(StreamFault::DieAfter(3)));
        let light = model("llama-8b", 64);
        let metrics = ErrorMetrics::new();
        let stack = InferenceStack::new("llama-70b")
            .metrics(&metrics)
            .fallback(fallback::<InferenceError>(&light))
            .retry(RetryLayer::builder().max_attempts(3))
            .breaker(BreakerLayer::builder().count_window(100).minimum_calls(100))
            .build();
        let svc = ServiceBuilder::new()
            .layer(stack)
            .layer(timeouts())
            .service(primary.streaming());

        // Streams that die mid-answer end with the error: not retried, not replaced.
        let answers = spawn_calls!(svc, 20);
        for answer in &answers {
            let err = answer.as_ref().unwrap_err();
            assert!(err.contains("generation"), "{err}");
        }
        assert_eq!(primary.handle().stats().calls, 20);
        assert_eq!(light.handle().stats().calls, 0);
        let snapshot = metrics.snapshot();
        let edge = snapshot.stages.iter().find(|s| s.stage == "edge").unwrap();
        assert_eq!(edge.streams.failed, 20);
    });
}

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_hanging_up_leave_no_busy_slot_and_no_probe_taken() {
    let primary = model("llama-70b", 16);
    let light = model("llama-8b", 16);
    let breaker = BreakerLayer::builder()
        .count_window(20)
        .minimum_calls(10)
        .open_duration(50 * MS)
        .half_open_probes(3);
    let stack = InferenceStack::new("llama-70b")
        .fallback(fallback::<BoxError>(&light))
        .retry(RetryLayer::builder().max_attempts(2))
        .breaker(breaker)
        .timeout(Duration::from_secs(1))
        .build();
    let handle = stack.breaker().unwrap().clone();
    let svc = ServiceBuilder::new()
        .layer(stack)
        .layer(timeouts())
        .service(primary.streaming());

    // Open the breaker, so that some of the callers below are half-open probes.
    primary.handle().kill();
    for _ in 0..20 {
        let _ = svc
            .clone()
            .oneshot(InferenceRequest::new("x").max_tokens(4))
            .await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    primary.handle().revive();

    let mut rng = SmallRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    for i in 0..1_000 {
        let svc = svc.clone();
        // Hang up anywhere: before the first token (5 ms), or after some of the 40 tokens.
        let hang_up = Duration::from_micros(rng.random_range(0..60_000));
        let start = Duration::from_micros(rng.random_range(0..100_000));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            let call = async {
                let mut stream = svc
                    .oneshot(InferenceRequest::new(format!("p{i}")).max_tokens(40))
                    .await?;
                while let Some(chunk) = stream.next().await {
                    chunk?;
                }
                Ok::<_, BoxError>(())
            };
            tokio::time::timeout(hang_up, call).await.is_err()
        }));
    }
    let mut hung_up = 0;
    for task in tasks {
        hung_up += u32::from(task.await.unwrap());
    }
    assert!(hung_up > 500, "most callers hung up mid-call: {hung_up}");
    for gpu in [&primary, &light] {
        let stats = gpu.handle().stats();
        assert_eq!((stats.in_flight, stats.queued), (0, 0), "{stats:?}");
    }
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    // No probe slot leaked: callers that finish their streams close the breaker.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        let stream = svc
            .clone()
            .oneshot(InferenceRequest::new("y").max_tokens(4))
            .await
            .unwrap();
        stream.text().await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}
