//! The whole stack in front of a real OpenAI-compatible inference server (vLLM, TGI,
//! Ollama, Triton's OpenAI frontend, a hosted API), falling back to a second server and
//! then to a static answer.
//!
//! ```text
//! # Against your servers:
//! INFERENCE_URL=http://localhost:8000/v1 INFERENCE_MODEL=meta-llama/Llama-3.1-8B-Instruct \
//! INFERENCE_FALLBACK_URL=http://localhost:11434/v1 INFERENCE_FALLBACK_MODEL=llama3.2 \
//!     cargo run --example openai_backend --features client,mock
//!
//! # With no server: two copies of the example gateway (a mock GPU behind the stack) are
//! # started on loopback and put through an outage.
//! cargo run --example openai_backend --features client,mock
//! ```
//!
//! Environment: `INFERENCE_URL` and `INFERENCE_FALLBACK_URL` (base URLs, as OpenAI's SDKs
//! take them, usually ending in `/v1`), `INFERENCE_MODEL` and `INFERENCE_FALLBACK_MODEL`
//! (the model names to ask for), `INFERENCE_API_KEY` (sent to both as a bearer token).

#[path = "gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::client::{Backend, OpenAiClient};
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::metrics::ErrorMetrics;
use tower_inference::openai::{ChatCompletionRequest, ChatCompletionResponse, ChatMessage};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::stack::InferenceStack;
use tower_inference::{InferenceError, Quality};

const STATIC_REPLY: &str = "Our assistant is unavailable right now; please try again shortly.";

/// A client that asks for `model` whatever the caller asked for (each server names its
/// models its own way).
#[derive(Clone)]
struct AsModel {
    client: OpenAiClient<ChatCompletionRequest>,
    model: String,
}

impl Service<ChatCompletionRequest> for AsModel {
    type Response = ChatCompletionResponse;
    type Error = InferenceError;
    type Future = <OpenAiClient<ChatCompletionRequest> as Service<ChatCompletionRequest>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, mut req: ChatCompletionRequest) -> Self::Future {
        req.model.clone_from(&self.model);
        self.client.call(req)
    }
}

fn server(url: &str, model: String) -> AsModel {
    let mut builder = Backend::builder(url).response_timeout(Duration::from_secs(60));
    if let Ok(key) = std::env::var("INFERENCE_API_KEY") {
        builder = builder.api_key(key);
    }
    let backend = builder.build().unwrap_or_else(|err| {
        eprintln!("{err}");
        std::process::exit(2);
    });
    AsModel {
        client: backend.chat(),
        model,
    }
}

/// A gateway (examples/gateway.rs) on loopback, and how to stop it.
async fn local_gateway(fallback: bool) -> (gateway::Gateway, String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let gw = gateway::Gateway::new(&gateway::Config {
        fallback,
        load_time: Duration::ZERO,
        ..gateway::Config::default()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway::serve(listener, gw.app(), async {
        let _ = stopped.await;
    }));
    (gw, url, stop)
}

#[tokio::main]
async fn main() {
    let mut local = None;
    let (primary_url, fallback_url) = match std::env::var("INFERENCE_URL") {
        Ok(url) => (url, std::env::var("INFERENCE_FALLBACK_URL").ok()),
        Err(_) => {
            println!("INFERENCE_URL is not set: starting two example gateways on loopback\n");
            // The primary without fallback of its own, so its outage reaches this stack.
            let (first, first_url, first_stop) = local_gateway(false).await;
            let (_second, second_url, second_stop) = local_gateway(true).await;
            local = Some((first, first_stop, second_stop));
            (first_url, Some(second_url))
        }
    };
    let model = std::env::var("INFERENCE_MODEL").unwrap_or_else(|_| gateway::PRIMARY.into());
    let fallback_model =
        std::env::var("INFERENCE_FALLBACK_MODEL").unwrap_or_else(|_| model.clone());

    let metrics = ErrorMetrics::new();
    let mut tiers = FallbackLayer::builder();
    if let Some(url) = &fallback_url {
        tiers = tiers.tier(
            "fallback-server",
            Quality::Reduced,
            server(url, fallback_model),
        );
    }
    let tiers = tiers
        .cache(
            MemoryStore::new(1_000),
            ChatCompletionRequest::cache_key,
            Duration::from_secs(600),
        )
        .static_default(|_: &ChatCompletionRequest| {
            ChatCompletionResponse::from_text("static", STATIC_REPLY)
        });
    let stack = InferenceStack::new("primary-server")
        .metrics(&metrics)
        .fallback(tiers)
        .retry(RetryLayer::builder().max_attempts(3).backoff(Backoff::new(
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        )))
        .breaker(
            BreakerLayer::builder()
                .count_window(20)
                .minimum_calls(10)
                .open_duration(Duration::from_secs(10)),
        )
        .timeout(Duration::from_secs(90))
        .build();
    let svc = ServiceBuilder::new()
        .layer(stack)
        .service(server(&primary_url, model.clone()));
    println!("primary: {primary_url}");
    println!(
        "fallback: {}\n",
        fallback_url.as_deref().unwrap_or("(none)")
    );

    let ask = |question: String| {
        let svc = svc.clone();
        let model = model.clone();
        async move {
            let req = ChatCompletionRequest {
                max_tokens: Some(32),
                ..ChatCompletionRequest::new(model, [ChatMessage::user(question)])
            };
            svc.oneshot(req).await
        }
    };

    match local {
        None => {
            for question in [
                "In one sentence, what is a circuit breaker?",
                "Name three causes of GPU out-of-memory errors.",
            ] {
                report(question, ask(question.to_owned()).await);
            }
        }
        Some((first, first_stop, second_stop)) => {
            phase("both servers up", 20, &ask).await;
            println!("-- the primary server's model dies --\n");
            first.primary.kill();
            phase("primary down", 20, &ask).await;
            println!("-- the fallback server stops too --\n");
            let _ = second_stop.send(());
            let _ = first_stop.send(());
            phase(
                "both down (questions asked before come from the cache)",
                30,
                &ask,
            )
            .await;
        }
    }

    println!("-- Prometheus text (excerpt) --");
    for line in metrics.render_prometheus().lines() {
        if line.contains("tier") && !line.starts_with('#') {
            println!("{line}");
        }
    }
}

/// Sends `n` questions at once (20 distinct ones) and prints who answered.
async fn phase<F, Fut>(name: &str, n: usize, ask: &F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<ChatCompletionResponse, tower::BoxError>> + Send + 'static,
{
    let answers = futures_join(
        (0..n)
            .map(|i| ask(format!("question {}", i % 20)))
            .collect(),
    )
    .await;
    let mut by_tier: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for answer in &answers {
        match answer {
            Ok(res) => {
                let p = &res.provenance;
                let upstream = p
                    .upstream()
                    .map(|u| format!(" (upstream tier: {})", u.tier))
                    .unwrap_or_default();
                *by_tier
                    .entry(format!("{} [{}]{upstream}", p.tier, p.quality))
                    .or_default() += 1;
                for failure in p.failed_tiers() {
                    *reasons
                        .entry(format!("{}={}", failure.tier, failure.kind))
                        .or_default() += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "{name}: {} answered, {failed} failed",
        answers.len() - failed
    );
    for (tier, count) in by_tier {
        println!("  {count:>3} × {tier}");
    }
    for (reason, count) in reasons {
        println!("  fell back {count} × because {reason}");
    }
    println!();
}

/// Awaits every future (spawned, so they run at once).
async fn futures_join<Fut>(futures: Vec<Fut>) -> Vec<Fut::Output>
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("a request task panicked"));
    }
    out
}

fn report(question: &str, answer: Result<ChatCompletionResponse, tower::BoxError>) {
    match answer {
        Ok(res) => {
            let p = &res.provenance;
            println!("Q: {question}");
            println!(
                "A: {}",
                res.choices
                    .first()
                    .map(|c| c.message.text())
                    .unwrap_or_default()
            );
            println!(
                "   tier {} ({}), {} attempt(s)\n",
                p.tier, p.quality, p.attempts
            );
        }
        Err(err) => println!("Q: {question}\n   failed: {err}\n"),
    }
}
