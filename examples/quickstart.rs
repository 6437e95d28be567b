//! The resilience stack in front of a mock GPU-backed model.
//!
//! Run with `cargo run --example quickstart --features mock`.

use std::time::Duration;

use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::mock::ChaosLayer;
use tower_inference::mock::{Completion, InferenceRequest, MockGpu};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::{
    Classify, DefaultClassifier, Event, GenerationParams, InferenceError, ModelFailure, Quality,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let gpu = MockGpu::builder()
        .name("llama-mock-8b")
        .max_context(64)
        .base_latency(Duration::from_millis(5))
        .per_token_latency(Duration::from_micros(200))
        .build();
    let gpu_handle = gpu.handle();

    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .service(gpu);

    println!("== tower-inference quickstart: timeout -> MockGpu ==\n");
    let long_prompt = vec!["word"; 100].join(" ");
    let cases = [
        (
            "normal request",
            InferenceRequest::new("Summarise the incident report").max_tokens(32),
        ),
        (
            "prompt over the context window",
            InferenceRequest::new(long_prompt),
        ),
        (
            "out-of-memory sized (batch 64, 4096x4096)",
            InferenceRequest::new("a castle at dawn").params(
                GenerationParams::new(16)
                    .batch_size(64)
                    .resolution(4096, 4096),
            ),
        ),
        ("empty prompt", InferenceRequest::new("")),
    ];
    for (label, request) in cases {
        report(label, call(&mut svc, request).await);
    }

    gpu_handle.kill();
    report(
        "after the backend is killed",
        call(&mut svc, InferenceRequest::new("are you there?")).await,
    );
    gpu_handle.revive();
    report(
        "after it is revived",
        call(
            &mut svc,
            InferenceRequest::new("are you back?").max_tokens(8),
        )
        .await,
    );

    let stats = gpu_handle.stats();
    println!(
        "\nmock GPU: {} calls, {} succeeded, {} failed",
        stats.calls, stats.succeeded, stats.failed
    );

    breaker_drill().await;
    retry_drill().await;
    fallback_drill().await;
    degrade_drill().await;
}

/// Ramp up concurrent load in front of a mock GPU and watch the degrade layer step up its
/// level and shrink `max_tokens`; then let the load fall and watch it step down.
async fn degrade_drill() {
    println!("\n== graceful degradation: degrade -> MockGpu, ramping concurrent load ==\n");
    let gpu = MockGpu::builder()
        .name("llama-mock-8b")
        .slots(16)
        .base_latency(Duration::from_millis(20))
        .per_token_latency(Duration::ZERO)
        .build();
    let layer = DegradeLayer::builder()
        .in_flight_capacity(10)
        .hysteresis(0.1, Duration::from_millis(50))
        .event_sink(|event: &Event<'_>| {
            if let Event::LevelChanged { from, to, load } = event {
                println!("    [event] level {from} -> {to} at load {load:.2}");
            }
        })
        .build();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(gpu);

    for wave in [2, 6, 10, 3, 1] {
        let calls: Vec<_> = (0..wave)
            .map(|i| {
                let request = InferenceRequest::new(format!("request {i}")).max_tokens(200);
                tokio::spawn(svc.clone().oneshot(request))
            })
            .collect();
        let mut tokens = Vec::new();
        for call in calls {
            if let Ok(Ok(done)) = call.await {
                tokens.push(done.tokens);
            }
        }
        println!(
            "{wave:>2} concurrent requests: max_tokens served {tokens:?} (level now {})",
            handle.level()
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// Kill the primary model, then the lighter one, then ask with a warm cache, then with a
/// question the cache has never seen: each time, say which tier answered.
async fn fallback_drill() {
    println!("\n== fallback: llama-70b -> llama-8b -> rules -> cache -> static ==\n");
    let primary = MockGpu::builder()
        .name("llama-70b")
        .base_latency(Duration::from_millis(3))
        .per_token_latency(Duration::ZERO)
        .build();
    let light = MockGpu::builder()
        .name("llama-8b")
        .base_latency(Duration::from_millis(1))
        .per_token_latency(Duration::ZERO)
        .build();
    let (primary_handle, light_handle) = (primary.handle(), light.handle());
    let rules = tower::service_fn(|req: InferenceRequest| async move {
        match req.prompt.as_str() {
            "opening hours?" => Ok(Completion {
                model: "rules".into(),
                text: "We are open 9 to 5.".into(),
                tokens: 5,
                provenance: Default::default(),
            }),
            _ => Err(InferenceError::ModelFailure {
                failure: ModelFailure::InvalidOutput,
            }),
        }
    });
    let fallback = FallbackLayer::builder()
        .primary("llama-70b")
        .tier("llama-8b", Quality::Reduced, light)
        .tier("rules", Quality::Generic, rules)
        .cache(
            MemoryStore::new(10_000),
            |req: &InferenceRequest| req.prompt.clone(),
            Duration::from_secs(600),
        )
        .static_default(|_: &InferenceRequest| Completion {
            model: "static".into(),
            text: "The assistant is busy; please try again in a minute.".into(),
            tokens: 0,
            provenance: Default::default(),
        })
        .build();
    let svc = ServiceBuilder::new().layer(fallback).service(primary);

    let ask = async |label: &str, prompt: &str| {
        let request = InferenceRequest::new(prompt).max_tokens(6);
        match svc.clone().oneshot(request).await {
            Ok(done) => {
                let p = &done.provenance;
                let age = p
                    .cache_age()
                    .map(|a| format!(", {} ms old", a.as_millis()))
                    .unwrap_or_default();
                println!(
                    "{label:<34} tier {:<10} quality {:<8} fallback {:<5} from {}{age}",
                    p.tier, p.quality, p.fallback, done.model
                );
            }
            Err(err) => println!("{label:<34} error: {err}"),
        }
    };

    ask("both models up", "what is a circuit breaker?").await;
    primary_handle.kill();
    ask("primary killed", "what is a retry budget?").await;
    light_handle.kill();
    ask("both killed, a rule matches", "opening hours?").await;
    ask("both killed, warm cache", "what is a circuit breaker?").await;
    ask("both killed, nothing cached", "tell me a joke").await;
}

/// A flaky model (30 % of calls fail with a retryable error) behind the retry layer: most
/// answers come at once, the rest on a later try, and the answer says how many it took.
async fn retry_drill() {
    println!("\n== retry: retry(budget) -> chaos(30 % failures) -> MockGpu ==\n");
    let chaos = ChaosLayer::builder()
        .error_rate(0.3)
        .errors([
            InferenceError::timeout(Duration::from_secs(2)),
            InferenceError::infrastructure(),
        ])
        .seed(7)
        .build();
    let chaos_handle = chaos.handle();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::new(
            Duration::from_millis(5),
            2.0,
            Duration::from_millis(50),
        ))
        .event_sink(|event: &Event<'_>| {
            if let Event::RetryScheduled {
                attempt,
                kind,
                delay,
            } = event
            {
                println!("    [event] {kind}: attempt {attempt} in {delay:?}");
            }
        })
        .build();
    let mut svc = ServiceBuilder::new().layer(retry).layer(chaos).service(
        MockGpu::builder()
            .base_latency(Duration::from_millis(2))
            .build(),
    );

    for i in 1..=8 {
        let request = InferenceRequest::new(format!("question {i}")).max_tokens(4);
        match svc.ready().await.map(|s| s.call(request)) {
            Ok(call) => match call.await {
                Ok(done) => println!(
                    "request {i}: ok after {} attempt(s)",
                    done.provenance.attempts
                ),
                Err(err) => println!("request {i}: failed after every attempt: {err}"),
            },
            Err(err) => println!("request {i}: not ready: {err}"),
        }
    }
    println!(
        "\nchaos injected {} failures; the retry layer answered through them",
        chaos_handle.injected_errors()
    );
}

/// Kill the model behind a circuit breaker, watch the breaker open and fail fast, revive
/// the model, and watch half-open probes close the breaker again.
async fn breaker_drill() {
    println!("\n== circuit breaker: breaker -> timeout -> MockGpu ==\n");
    let gpu = MockGpu::builder()
        .name("llama-mock-8b")
        .base_latency(Duration::from_millis(2))
        .per_token_latency(Duration::ZERO)
        .build();
    let gpu_handle = gpu.handle();
    let breaker = BreakerLayer::builder()
        .name("llama-mock-8b")
        .count_window(20)
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .open_duration(Duration::from_millis(300))
        .half_open_probes(2)
        .event_sink(|event: &Event<'_>| {
            if let Event::BreakerTransition { breaker, from, to } = event {
                println!("    [event] breaker {breaker}: {from} -> {to}");
            }
        })
        .build();
    let breaker_handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(2))
        .service(gpu);

    let mut send = async |label: &str| {
        let result = call(&mut svc, InferenceRequest::new("status?").max_tokens(4)).await;
        let calls = gpu_handle.stats().calls;
        let state = breaker_handle.state();
        match result {
            Ok(_) => println!(
                "{label:<26} ok           (breaker {state}, backend calls so far: {calls})"
            ),
            Err(err) => {
                let kind =
                    Classify::<Completion, BoxError>::classify(&DefaultClassifier, Err(&err))
                        .kind()
                        .map_or("unknown", |k| k.code());
                println!(
                    "{label:<26} error {kind:<15} (breaker {state}, backend calls so far: {calls})"
                );
            }
        }
    };

    send("healthy").await;
    gpu_handle.kill();
    println!("  -- the backend is killed --");
    for i in 1..=7 {
        send(&format!("while down #{i}")).await;
    }
    gpu_handle.revive();
    println!("  -- the backend is revived; waiting out the open duration --");
    send("still open").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=3 {
        send(&format!("after the wait #{i}")).await;
    }
}

async fn call<S>(svc: &mut S, request: InferenceRequest) -> Result<Completion, BoxError>
where
    S: Service<InferenceRequest, Response = Completion, Error = BoxError>,
{
    svc.ready().await?.call(request).await
}

fn report(label: &str, result: Result<Completion, BoxError>) {
    match &result {
        Ok(done) => println!(
            "{label:<42} ok     {} tokens from {} (tier {}, quality {})",
            done.tokens, done.model, done.provenance.tier, done.provenance.quality
        ),
        Err(err) => {
            let outcome = Classify::<Completion, BoxError>::classify(&DefaultClassifier, Err(err));
            let Some(kind) = outcome.kind() else {
                return;
            };
            let message = match err.downcast_ref::<InferenceError>() {
                Some(e) => e.to_string(),
                None => err.to_string(),
            };
            println!(
                "{label:<42} {:<6} {} (HTTP {}, retryable: {}, caller's fault: {})\n{:<49}{message}",
                "error",
                kind,
                kind.http_status(),
                kind.is_retryable(),
                kind.is_caller_fault(),
                ""
            );
        }
    }
}
