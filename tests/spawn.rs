//! Every layer, alone and in the whole stack, can be spawned the way servers spawn services.
//!
//! hyper, axum and tonic hand a service's calls to `tokio::spawn`, which needs the future to
//! be `Send + 'static`. The compiler proves that with every lifetime in the future's types
//! erased, so a layer whose type parameters stand for `tower::BoxError`
//! (`Box<dyn Error + Send + Sync + 'static>`) can compile alone yet fail to spawn. Each case
//! here is written out as user code is (a macro, not a generic helper whose bounds would hide
//! the problem), spawned on a multi-thread runtime: over tower's `timeout` (so `BoxError`),
//! over a plain `InferenceError` service, with the mock GPU and with a user-defined request.
#![cfg(feature = "mock")]

use std::borrow::Cow;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::mock::{ChaosLayer, Completion, InferenceRequest, MockGpu};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::stack::InferenceStack;
use tower_inference::{Degrade, GenerationParams, InferenceError, Quality, Scale, Served};

/// A request type of the user's own, with a borrowed-or-owned field.
#[derive(Debug, Clone)]
struct Prompt {
    text: Cow<'static, str>,
    params: GenerationParams,
}

impl Degrade for Prompt {
    fn degrade(&mut self, scale: Scale) {
        self.params.degrade(scale);
    }
}

fn prompt() -> Prompt {
    Prompt {
        text: Cow::Borrowed("hello"),
        params: GenerationParams::new(16),
    }
}

/// The user's model: answers with the prompt and the tokens it was allowed.
#[derive(Debug, Clone)]
struct UserModel;

impl Service<Prompt> for UserModel {
    type Response = Served<String>;
    type Error = InferenceError;
    type Future = std::future::Ready<Result<Served<String>, InferenceError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InferenceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, p: Prompt) -> Self::Future {
        std::future::ready(Ok(Served::new(format!(
            "{} ({})",
            p.text, p.params.max_tokens
        ))))
    }
}

fn user_model() -> UserModel {
    UserModel
}

fn gpu() -> MockGpu {
    MockGpu::builder()
        .base_latency(Duration::from_millis(1))
        .per_token_latency(Duration::ZERO)
        .build()
}

fn static_completion(_: &InferenceRequest) -> Completion {
    Completion {
        model: "static".into(),
        text: "try again later".into(),
        tokens: 0,
        provenance: Default::default(),
    }
}

/// Spawns tasks that call `$svc` with `oneshot` and with `ready` + `call`, holding the
/// futures across awaits, and checks every call answered.
macro_rules! spawn_calls {
    ($svc:expr, $req:expr) => {{
        let svc = $svc;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    let answer = svc.clone().oneshot($req).await;
                    assert!(answer.is_ok(), "oneshot failed: {:?}", answer.err());
                    let mut own = svc.clone();
                    let ready = own.ready().await.map_err(|_| "not ready").unwrap();
                    let answer = ready.call($req).await;
                    assert!(answer.is_ok(), "call failed: {:?}", answer.err());
                }
            }));
        }
        for task in tasks {
            task.await.expect("task panicked");
        }
    }};
}

/// One test per layer, over the mock GPU behind tower's timeout and over the user's model.
macro_rules! each_layer {
    ($($name:ident => $layer:expr, $user_layer:expr;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_tower_timeout_with_box_error() {
                let svc = ServiceBuilder::new()
                    .layer($layer)
                    .timeout(Duration::from_secs(1))
                    .service(gpu());
                spawn_calls!(svc, InferenceRequest::new("hi").max_tokens(4));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_inference_error_service() {
                let svc = ServiceBuilder::new().layer($layer).service(gpu());
                spawn_calls!(svc, InferenceRequest::new("hi").max_tokens(4));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn user_request_over_tower_timeout() {
                let svc = ServiceBuilder::new()
                    .layer($user_layer)
                    .timeout(Duration::from_secs(1))
                    .service(user_model());
                spawn_calls!(svc, prompt());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn user_request_over_inference_error_service() {
                let svc = ServiceBuilder::new().layer($user_layer).service(user_model());
                spawn_calls!(svc, prompt());
            }
        }
    )*};
}

each_layer! {
    breaker => BreakerLayer::new(), BreakerLayer::new();
    keyed_breaker =>
        BreakerLayer::keyed(|r: &InferenceRequest| r.prompt.len()),
        BreakerLayer::keyed(|p: &Prompt| p.text.len());
    retry => RetryLayer::new(), RetryLayer::new();
    degrade => DegradeLayer::builder().in_flight_capacity(8).build(),
        DegradeLayer::builder().in_flight_capacity(8).build();
    metrics => MetricsLayer::new(&ErrorMetrics::new(), "edge"),
        MetricsLayer::new(&ErrorMetrics::new(), "edge");
    chaos => ChaosLayer::builder().build(), ChaosLayer::builder().build();
    fallback_static => FallbackLayer::builder().static_default(static_completion).build(),
        FallbackLayer::builder().static_default(|p: &Prompt| Served::new(p.text.to_string())).build();
    fallback_tiers => FallbackLayer::builder()
            .tier("light", Quality::Reduced, gpu())
            .cache(MemoryStore::new(16), |r: &InferenceRequest| r.prompt.clone(), Duration::from_secs(60))
            .static_default(static_completion)
            .build(),
        FallbackLayer::builder()
            .tier("light", Quality::Reduced, user_model())
            .cache(MemoryStore::new(16), |p: &Prompt| p.text.to_string(), Duration::from_secs(60))
            .build();
}

/// Every layer by hand, in the recommended order, with `ServiceBuilder`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_stack_by_hand_over_tower_timeout() {
    let metrics = ErrorMetrics::new();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics, "edge"))
        .layer(
            FallbackLayer::builder()
                .tier("light", Quality::Reduced, gpu())
                .cache(
                    MemoryStore::new(16),
                    |r: &InferenceRequest| r.prompt.clone(),
                    Duration::from_secs(60),
                )
                .static_default(static_completion)
                .event_sink(metrics.clone())
                .build(),
        )
        .layer(DegradeLayer::builder().in_flight_capacity(8).build())
        .layer(RetryLayer::new())
        .layer(BreakerLayer::new())
        .layer(MetricsLayer::new(&metrics, "backend"))
        .timeout(Duration::from_secs(1))
        .service(gpu());
    spawn_calls!(svc, InferenceRequest::new("hi").max_tokens(4));
    assert_eq!(metrics.snapshot().stages[0].calls, 24);
}

/// The whole stack over tower's timeout and a primary that fails a third of its calls,
/// spawned: the retries (each on a fresh clone of the breaker and backend stage, taken on a
/// worker thread) and the fallback run across both workers, and every call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_stack_retries_and_falls_back_when_spawned_over_tower_timeout() {
    let metrics = ErrorMetrics::new();
    let chaos = ChaosLayer::builder().error_rate(0.33).seed(7).build();
    let injected = chaos.handle();
    let layer = InferenceStack::new("big")
        .metrics(&metrics)
        .fallback(FallbackLayer::builder().tier("light", Quality::Reduced, gpu()))
        .retry(RetryLayer::builder().max_attempts(3).backoff(Backoff::new(
            Duration::ZERO,
            2.0,
            Duration::ZERO,
        )))
        // Opens only if every call in its window fails: every retry reaches the backend.
        .breaker(BreakerLayer::builder().failure_rate_threshold(1.0))
        .timeout(Duration::from_secs(1))
        .build();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(chaos.layer(gpu()));
    error_type::<_, _, BoxError>(&svc);
    spawn_calls!(svc, InferenceRequest::new("hi").max_tokens(4));
    let snapshot = metrics.snapshot();
    let calls = |stage: &str| {
        snapshot
            .stages
            .iter()
            .find(|s| s.stage == stage)
            .map_or(0, |s| s.calls)
    };
    assert_eq!(calls("edge"), 24, "every call answered once");
    let retries: u64 = snapshot.retries.values().sum();
    assert!(injected.injected_errors() > 0, "the primary failed");
    assert!(retries > 0, "failed attempts were retried");
    assert_eq!(
        calls("backend"),
        24 + retries,
        "each retry was one more backend call"
    );
    // Counted on both workers' stripes: nothing lost, nothing left in flight.
    for stage in &snapshot.stages {
        assert_eq!(stage.latency.count, stage.calls, "{}", stage.stage);
        assert_eq!(stage.in_flight, 0, "{}", stage.stage);
    }
    let edge = snapshot.stages.iter().find(|s| s.stage == "edge").unwrap();
    assert_eq!(edge.tiers.values().sum::<u64>(), 24, "every answer by tier");
}

/// Checks a service's error type at compile time.
fn error_type<S: Service<R, Error = E>, R, E>(_: &S) {}

/// The whole stack from the builder, over every kind of backend.
macro_rules! whole_stack {
    ($($name:ident: $model:expr, $req:expr, $tier:expr, $key:expr;)*) => {$(
        mod $name {
            use super::*;

            macro_rules! stack {
                () => {
                    InferenceStack::new("big")
                        .metrics(&ErrorMetrics::new())
                        .fallback(
                            FallbackLayer::builder()
                                .tier("light", Quality::Reduced, $tier)
                                .cache(MemoryStore::new(16), $key, Duration::from_secs(60)),
                        )
                        .degrade(DegradeLayer::builder().in_flight_capacity(8))
                        .retry(RetryLayer::builder())
                        .breaker(BreakerLayer::builder())
                };
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_tower_timeout_with_box_error() {
                let svc = ServiceBuilder::new()
                    .layer(stack!().timeout(Duration::from_secs(1)).build())
                    .service($model);
                error_type::<_, _, BoxError>(&svc);
                spawn_calls!(svc, $req);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_inference_error_service() {
                let svc = ServiceBuilder::new().layer(stack!().build()).service($model);
                error_type::<_, _, InferenceError>(&svc);
                spawn_calls!(svc, $req);
            }
        }
    )*};
}

whole_stack! {
    stack_gpu: gpu(), InferenceRequest::new("hi").max_tokens(4),
        gpu(), |r: &InferenceRequest| r.prompt.clone();
    stack_user_request: user_model(), prompt(),
        user_model(), |p: &Prompt| p.text.to_string();
}

/// A stack with no fallback layer: its backend metrics stage names the answers, spawned over
/// tower's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_without_fallback_over_tower_timeout_names_its_answers() {
    let layer = InferenceStack::new("big")
        .metrics(&ErrorMetrics::new())
        .degrade(DegradeLayer::builder().in_flight_capacity(8))
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .timeout(Duration::from_secs(1))
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(gpu());
    error_type::<_, _, BoxError>(&svc);
    spawn_calls!(svc.clone(), InferenceRequest::new("hi").max_tokens(4));
    let answer = tokio::spawn(svc.oneshot(InferenceRequest::new("hi").max_tokens(4)))
        .await
        .expect("task")
        .expect("an answer");
    assert_eq!(answer.provenance.tier, "big");
}

#[cfg(feature = "client")]
#[path = "support/upstream.rs"]
mod upstream;

/// An OpenAI-compatible server on loopback that always answers, and the client to it.
#[cfg(feature = "client")]
async fn openai_client() -> tower_inference::client::OpenAiClient<ChatCompletionRequest> {
    let answer = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    });
    let server = upstream::Upstream::start([upstream::Reply::json(200, answer.to_string())]).await;
    tower_inference::client::Backend::builder(server.base_url())
        .build()
        .unwrap()
        .chat()
}

#[cfg(feature = "client")]
use tower_inference::openai::{ChatCompletionRequest, ChatMessage};

#[cfg(feature = "client")]
whole_stack! {
    stack_openai_client: openai_client().await,
        ChatCompletionRequest::new("llama", [ChatMessage::user("hi")]),
        openai_client().await, |r: &ChatCompletionRequest| r.cache_key();
}
