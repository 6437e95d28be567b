//! The `client` feature's own cost per call, on loopback against a trivial upstream (a hyper
//! server that answers every request with the same chat completion), next to a bare
//! hyper-util client doing the same work by hand in the same run: serialize the request to
//! JSON, POST it over a pooled connection, read the body, parse the answer into
//! `ChatCompletionResponse`.
//!
//! The difference is what `OpenAiClient` adds: the in-flight limit (tower's
//! `ConcurrencyLimit`), the boxed future, the headers, the two timeouts and the provenance
//! header lookup. One call at a time (`sequential`), and 16 at once on the same client
//! (`concurrent_16`, time per batch of 16), on a 2-worker runtime shared with the server.
//!
//! Run with `cargo bench --bench client --features client`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Service, ServiceExt};
use tower_inference::client::Backend;
use tower_inference::openai::{ChatCompletionRequest, ChatCompletionResponse, ChatMessage};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

/// A server on loopback that answers every request with [`ANSWER`] once it read the body.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<Incoming>| async {
                    let _ = req.into_body().collect().await;
                    let mut res =
                        http::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn request() -> ChatCompletionRequest {
    ChatCompletionRequest {
        max_tokens: Some(32),
        ..ChatCompletionRequest::new(
            "llama",
            [ChatMessage::user("What is the capital of France?")],
        )
    }
}

/// What a user would write by hand with hyper-util.
#[derive(Clone)]
struct Bare {
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    uri: http::Uri,
}

impl Bare {
    async fn call(&self, req: ChatCompletionRequest) -> ChatCompletionResponse {
        let body = serde_json::to_vec(&req).unwrap();
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = self.http.request(req).await.unwrap();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(upstream());
    let base = format!("http://{addr}/v1");
    let bare = Bare {
        http: Client::builder(TokioExecutor::new()).build_http(),
        uri: format!("{base}/chat/completions").parse().unwrap(),
    };
    let client = rt.block_on(async {
        Backend::builder(&base)
            .response_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .chat()
    });

    let mut group = c.benchmark_group("client/sequential");
    group.bench_function("bare_hyper_util", |b| {
        b.to_async(&rt).iter(|| bare.call(request()));
    });
    group.bench_function("openai_client", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = client.clone();
            async move {
                client.ready().await.unwrap();
                client.call(request()).await.unwrap()
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("client/concurrent_16");
    group.bench_function("bare_hyper_util", |b| {
        b.to_async(&rt).iter(|| {
            let calls: Vec<_> = (0..16)
                .map(|_| {
                    let bare = bare.clone();
                    tokio::spawn(async move { bare.call(request()).await })
                })
                .collect();
            async move {
                for call in calls {
                    call.await.unwrap();
                }
            }
        });
    });
    group.bench_function("openai_client", |b| {
        b.to_async(&rt).iter(|| {
            let calls: Vec<_> = (0..16)
                .map(|_| tokio::spawn(client.clone().oneshot(request())))
                .collect();
            async move {
                for call in calls {
                    call.await.unwrap().unwrap();
                }
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
