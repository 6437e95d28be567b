//! Two hops: an edge (the stack over the `client` feature's `OpenAiClient`) in front of the
//! example gateway (the stack over a mock GPU), each served as HTTP. Answers, errors and
//! `Retry-After` survive the hop, and the edge sees what the gateway said of its answer.
#![cfg(all(
    feature = "mock",
    feature = "http",
    feature = "openai",
    feature = "client"
))]

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::time::Duration;

use http::Request;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::client::Backend;
use tower_inference::openai::ChatCompletionRequest;
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::server::{ErrorResponseLayer, ErrorShape, JsonEndpoint};
use tower_inference::stack::InferenceStack;

use gateway::{Config, Gateway, LIGHT, PRIMARY};

/// The gateway on loopback, with a way to stop it.
struct Inner {
    gateway: Gateway,
    base_url: String,
    stop: oneshot::Sender<()>,
}

async fn inner(config: Config) -> Inner {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let gateway = Gateway::new(&config);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway::serve(listener, gateway.app(), async {
        let _ = stopped.await;
    }));
    Inner {
        gateway,
        base_url,
        stop,
    }
}

fn loaded() -> Config {
    Config {
        load_time: Duration::ZERO,
        ..Config::default()
    }
}

/// The edge: errors as JSON in `shape`, the chat endpoint, the stack (retry and breaker;
/// no fallback, so the gateway's errors reach the caller), the client.
fn edge(
    base_url: &str,
    shape: ErrorShape,
) -> impl tower::Service<
    Request<String>,
    Response = http::Response<String>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    let backend = Backend::builder(base_url).build().unwrap();
    let stack = InferenceStack::new("gateway")
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::new(
                    Duration::from_millis(1),
                    2.0,
                    Duration::from_millis(4),
                ))
                .max_retry_after(Duration::from_millis(100)),
        )
        // Slower to open than the gateway's (100 calls), so the gateway's answers are seen.
        .breaker(
            BreakerLayer::builder()
                .count_window(1_000)
                .minimum_calls(1_000),
        )
        .build();
    let svc = ServiceBuilder::new().layer(stack).service(backend.chat());
    ServiceBuilder::new()
        .layer(ErrorResponseLayer::new(shape))
        .service(JsonEndpoint::<_, ChatCompletionRequest>::new(svc))
}

/// Sends a chat completion to the edge; the status, headers and JSON body of the answer.
async fn ask<S>(edge: S, prompt: &str) -> (u16, http::HeaderMap, Value)
where
    S: tower::Service<Request<String>, Response = http::Response<String>>,
    S::Error: Into<BoxError> + std::fmt::Debug,
{
    let body = json!({
        "model": PRIMARY,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8
    });
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let res = edge.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, parts.headers, json)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_crosses_both_hops_with_the_inner_provenance() {
    let inner = inner(loaded()).await;
    let (status, headers, body) = ask(edge(&inner.base_url, ErrorShape::OpenAi), "hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], PRIMARY);
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    // This hop answered from its primary (the gateway) ...
    assert_eq!(header(&headers, "x-inference-attempts"), "1");
    // ... which answered from its own primary, at full quality.
    assert_eq!(header(&headers, "x-inference-upstream-tier"), PRIMARY);
    assert_eq!(header(&headers, "x-inference-upstream-quality"), "full");
    assert_eq!(header(&headers, "x-inference-upstream-fallback"), "false");
    let _ = inner.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_sees_why_the_gateway_fell_back() {
    let inner = inner(loaded()).await;
    inner.gateway.chaos.set_error_rate(1.0);
    let (status, headers, body) = ask(edge(&inner.base_url, ErrorShape::OpenAi), "hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], LIGHT);
    assert_eq!(header(&headers, "x-inference-upstream-tier"), LIGHT);
    assert_eq!(header(&headers, "x-inference-upstream-quality"), "reduced");
    assert_eq!(header(&headers, "x-inference-upstream-fallback"), "true");
    assert_eq!(
        header(&headers, "x-inference-upstream-fallback-reasons"),
        "llama-70b=infrastructure"
    );
    assert_eq!(header(&headers, "x-inference-upstream-attempts"), "4");
    // The edge's own hop succeeded at once: the gateway answered.
    assert_eq!(header(&headers, "x-inference-attempts"), "1");
    let _ = inner.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_prompt_is_a_400_at_the_edge_with_the_figures_and_no_retry() {
    let inner = inner(loaded()).await;
    let long = "word ".repeat(5_000);
    let (status, headers, body) = ask(edge(&inner.base_url, ErrorShape::Native), &long).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "context_length_exceeded");
    assert_eq!(body["details"]["max_tokens"], 4_096);
    assert!(body["details"]["input_tokens"].as_u64().unwrap() > 4_096);
    assert_eq!(header(&headers, "x-should-retry"), "false");
    // Sent once: a caller's fault is not retried at either hop, nor does the gateway fall
    // back for it.
    assert_eq!(inner.gateway.primary.stats().calls, 1);
    assert_eq!(inner.gateway.light.stats().calls, 0);
    let _ = inner.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_model_is_a_503_with_retry_after_at_the_edge() {
    let inner = inner(Config {
        fallback: false,
        load_time: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let (status, headers, body) = ask(edge(&inner.base_url, ErrorShape::OpenAi), "hello").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_not_ready");
    let retry_after: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!(
        (55..=60).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let retry_after_ms: u64 = header(&headers, "retry-after-ms").parse().unwrap();
    assert!(retry_after_ms > 55_000 && retry_after_ms <= 60_000);
    let _ = inner.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_at_the_gateway_is_circuit_open_at_the_edge() {
    let inner = inner(Config {
        fallback: false,
        ..loaded()
    })
    .await;
    inner.gateway.chaos.set_error_rate(1.0);
    let edge = edge(&inner.base_url, ErrorShape::OpenAi);
    let mut open = None;
    for _ in 0..100 {
        let (status, headers, body) = ask(edge.clone(), "hello").await;
        assert_eq!(status, 503, "{body}");
        assert!(!body.to_string().contains("10.0.3.7"));
        if body["error"]["code"] == "circuit_open" {
            open = Some(headers);
            break;
        }
    }
    let headers = open.expect("the gateway's breaker opened within 100 calls");
    let retry_after: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "retry-after {retry_after}");
    // Worth retrying once the breaker's time is up, as the gateway said.
    assert_eq!(header(&headers, "x-should-retry"), "true");
    let _ = inner.stop.send(());
}
