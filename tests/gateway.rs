//! The example gateway (`examples/gateway.rs`), started in-process on `127.0.0.1:0` and called
//! over loopback with a hyper client, as a real client would call it.
#![cfg(all(feature = "mock", feature = "http", feature = "openai"))]

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_inference::server::ErrorShape;

use gateway::{Config, Gateway, LIGHT, PRIMARY, STATIC_REPLY};

/// A gateway serving on loopback, and a client for it.
struct Running {
    addr: SocketAddr,
    gateway: Gateway,
    client: Client<HttpConnector, String>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

async fn start(config: Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(&config);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve(listener, gateway.app(), async {
        let _ = stopped.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Running {
        addr,
        gateway,
        client,
        stop: Some(stop),
        server,
    }
}

fn loaded() -> Config {
    Config {
        load_time: Duration::ZERO,
        ..Config::default()
    }
}

/// A response, its body read.
struct Answer {
    res: Response<()>,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.res.status().as_u16()
    }

    fn header(&self, name: &str) -> &str {
        self.res
            .headers()
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Running {
    async fn send(&self, req: Request<String>) -> Answer {
        let res = self.client.request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            res: Response::from_parts(parts, ()),
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(
            Request::post(self.uri(path))
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(self.uri(path)).body(String::new()).unwrap())
            .await
    }

    async fn chat(&self, prompt: &str) -> Answer {
        self.post("/v1/chat/completions", &chat(prompt)).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap();
    }
}

fn chat(prompt: &str) -> Value {
    json!({
        "model": PRIMARY,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0.3,
    })
}

/// What must never reach a caller: the text of the chaos layer's source error.
const INTERNAL: [&str; 3] = ["10.0.3.7", "gpu-node-3", "connection refused"];

fn assert_no_internals(answer: &Answer) {
    for secret in INTERNAL {
        assert!(
            !answer.body.contains(secret),
            "{secret:?} leaked: {}",
            answer.body
        );
        for (name, value) in answer.res.headers() {
            let value = value.to_str().unwrap_or("");
            assert!(!value.contains(secret), "{secret:?} leaked in {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_succeeds_with_its_provenance_headers() {
    let gw = start(loaded()).await;
    let answer = gw.chat("What is a circuit breaker?").await;
    assert_eq!(answer.status(), 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), "application/json");
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], PRIMARY);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 8, "max_tokens is honoured");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert_eq!(answer.header("x-inference-tier"), PRIMARY);
    assert_eq!(answer.header("x-inference-quality"), "full");
    assert_eq!(answer.header("x-inference-fallback"), "false");
    assert_eq!(answer.header("x-inference-attempts"), "1");
    assert_eq!(answer.header("x-request-id").len(), 32);

    let answer = gw
        .post(
            "/v1/completions",
            &json!({"model": PRIMARY, "prompt": "Once upon a time", "max_tokens": 3, "n": 2}),
        )
        .await;
    assert_eq!(answer.status(), 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(answer.header("x-inference-tier"), PRIMARY);

    let models = gw.get("/v1/models").await;
    assert_eq!(models.status(), 200);
    assert_eq!(models.json()["data"][0]["id"], PRIMARY);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_prompt_is_a_400_in_both_shapes_with_the_correlation_id() {
    let long = "word ".repeat(5_000);
    for shape in [ErrorShape::OpenAi, ErrorShape::Native] {
        let gw = start(Config { shape, ..loaded() }).await;
        let answer = gw
            .send(
                Request::post(gw.uri("/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .header("x-request-id", "ticket-42")
                    .body(chat(&long).to_string())
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status(), 400, "{}", answer.body);
        assert_eq!(answer.header("x-request-id"), "ticket-42");
        assert_eq!(answer.header("x-should-retry"), "false");
        let body = answer.json();
        match shape {
            ErrorShape::OpenAi => {
                assert_eq!(body["error"]["code"], "context_length_exceeded");
                assert_eq!(body["error"]["type"], "invalid_request_error");
                assert_eq!(body["error"]["correlation_id"], "ticket-42");
            }
            _ => {
                assert_eq!(body["code"], "context_length_exceeded");
                assert_eq!(body["retryable"], false);
                assert_eq!(body["details"]["max_tokens"], 4_096);
                assert_eq!(body["correlation_id"], "ticket-42");
            }
        }
        // A caller's fault is not the model's: no fallback tier is asked.
        assert_eq!(gw.gateway.light.stats().calls, 0);
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_that_say_what_to_fix() {
    let gw = start(Config {
        body_limit: 4_096,
        ..loaded()
    })
    .await;
    let post = |body: String, content_type: &str| {
        Request::post(gw.uri("/v1/chat/completions"))
            .header("content-type", content_type)
            .body(body)
            .unwrap()
    };

    let too_big = gw
        .send(post(
            chat(&"x".repeat(5_000)).to_string(),
            "application/json",
        ))
        .await;
    assert_eq!(too_big.status(), 413);
    assert_eq!(too_big.json()["error"]["code"], "payload_too_large");
    assert!(
        too_big.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096 bytes")
    );

    let malformed = gw
        .send(post(
            r#"{"model": "llama-70b", "messages": ["#.into(),
            "application/json",
        ))
        .await;
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json()["error"]["code"], "malformed_json");

    let missing = gw
        .send(post(r#"{"model": "llama-70b"}"#.into(), "application/json"))
        .await;
    assert_eq!(missing.status(), 400);
    assert!(
        missing.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `messages`"),
        "{}",
        missing.body
    );

    let form = gw
        .send(post(
            "model=llama-70b".into(),
            "application/x-www-form-urlencoded",
        ))
        .await;
    assert_eq!(form.status(), 400);
    assert_eq!(form.json()["error"]["code"], "not_json");

    let invalid = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": PRIMARY, "messages": [], "max_tokens": 8}),
        )
        .await;
    assert_eq!(invalid.status(), 400);
    assert_eq!(invalid.json()["error"]["code"], "invalid_input");

    let streaming = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": PRIMARY, "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 2}),
        )
        .await;
    assert_eq!(streaming.status(), 400, "a stream has one choice");
    assert!(
        streaming.body.contains("set `n` to 1"),
        "{}",
        streaming.body
    );

    let unknown = gw.get("/v2/everything").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json()["error"]["code"], "not_found");

    let wrong_method = gw.get("/v1/chat/completions").await;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.header("allow"), "POST");
    assert_eq!(wrong_method.json()["error"]["code"], "method_not_allowed");

    for answer in [&too_big, &malformed, &form, &unknown, &wrong_method] {
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(
            answer.json()["error"]["correlation_id"],
            answer.header("x-request-id")
        );
    }
    // None of it reached a model.
    assert_eq!(gw.gateway.primary.stats().calls, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_primary_fails_the_lighter_model_then_the_cache_then_the_static_reply_answer() {
    let gw = start(loaded()).await;
    assert_eq!(gw.chat("remember me").await.status(), 200);

    // Every call to the primary fails with an error whose source names an internal host.
    gw.gateway.chaos.set_error_rate(1.0);
    let answer = gw.chat("remember me").await;
    assert_eq!(answer.status(), 200, "{}", answer.body);
    assert_eq!(answer.json()["model"], LIGHT);
    assert_eq!(answer.header("x-inference-tier"), LIGHT);
    assert_eq!(answer.header("x-inference-quality"), "reduced");
    assert_eq!(answer.header("x-inference-fallback"), "true");
    assert_eq!(
        answer.header("x-inference-fallback-reasons"),
        "llama-70b=infrastructure"
    );
    assert_eq!(answer.header("x-inference-attempts"), "4");
    assert_no_internals(&answer);

    // The lighter model dies too: the cache has this question's last good answer.
    gw.gateway.light.kill();
    let cached = gw.chat("remember me").await;
    assert_eq!(cached.status(), 200, "{}", cached.body);
    assert_eq!(cached.header("x-inference-tier"), "cache");
    assert_eq!(cached.header("x-inference-quality"), "stale");
    assert!(!cached.header("x-inference-cache-age-ms").is_empty());
    assert_no_internals(&cached);

    // A question never answered: only the static reply is left.
    let fallback = gw.chat("a brand new question").await;
    assert_eq!(fallback.status(), 200, "{}", fallback.body);
    assert_eq!(fallback.header("x-inference-tier"), "static");
    assert_eq!(fallback.header("x-inference-quality"), "minimal");
    assert_eq!(
        fallback.json()["choices"][0]["message"]["content"],
        STATIC_REPLY
    );
    assert_no_internals(&fallback);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_an_outage_is_a_503_that_says_when_to_retry_and_never_why() {
    let gw = start(Config {
        fallback: false,
        ..loaded()
    })
    .await;
    gw.gateway.chaos.set_error_rate(1.0);

    let first = gw.chat("hello").await;
    assert_eq!(first.status(), 503, "{}", first.body);
    assert_eq!(first.json()["error"]["code"], "infrastructure");
    assert_eq!(first.json()["error"]["type"], "server_error");
    assert_eq!(first.header("x-should-retry"), "true");
    assert_no_internals(&first);

    // Failures open the breaker: calls fail fast with how long until it probes again.
    let mut open = None;
    for _ in 0..100 {
        let answer = gw.chat("hello").await;
        assert_eq!(answer.status(), 503, "{}", answer.body);
        assert_no_internals(&answer);
        if answer.json()["error"]["code"] == "circuit_open" {
            open = Some(answer);
            break;
        }
    }
    let open = open.expect("the breaker opened within 100 calls");
    let retry_after: u64 = open.header("retry-after").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "retry-after {retry_after}");
    let retry_after_ms: u64 = open.header("retry-after-ms").parse().unwrap();
    assert!(retry_after_ms <= 5_000);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loading_its_weights_is_a_503_with_retry_after_not_a_held_request() {
    let gw = start(Config {
        fallback: false,
        load_time: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.body.contains("primary_loaded"));

    let answer = gw.chat("hello").await;
    assert_eq!(answer.status(), 503, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "model_not_ready");
    let retry_after: u64 = answer.header("retry-after").parse().unwrap();
    assert!(
        (55..=60).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert_eq!(answer.header("x-should-retry"), "true");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fallback_tiers_a_loading_primary_is_degraded_not_unready() {
    let gw = start(Config {
        load_time: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status(), 200, "{}", ready.body);
    assert_eq!(ready.json()["status"], "degraded");
    assert!(ready.body.contains("primary_loaded"));
    assert_eq!(gw.chat("hello").await.status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let gw = start(loaded()).await;
    assert_eq!(gw.chat("count me").await.status(), 200);
    assert_eq!(gw.get("/health/live").await.status(), 200);
    assert_eq!(gw.get("/health/ready").await.status(), 200);
    let canary = gw.get("/health/inference").await;
    assert_eq!(canary.status(), 200, "{}", canary.body);
    let metrics = gw.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    for line in [
        r#"tower_inference_health_check_up{check="primary_loaded"} 1"#,
        r#"tower_inference_health_check_up{check="inference_canary"} 1"#,
        r#"tower_inference_breaker_state{breaker="llama-70b/chat",state="closed"} 1"#,
        r#"tower_inference_in_flight{stage="edge"} 0"#,
        // Each route's stack has its own budget, named as its breaker.
        r#"tower_inference_retry_budget_balance{budget="llama-70b/chat"} "#,
        r#"tower_inference_retry_budget_balance{budget="llama-70b/completions"} "#,
        r#"tower_inference_degradation_level{degrade="llama-70b/chat",level="full"} 1"#,
        r#"tower_inference_degradation_level{degrade="llama-70b/completions",level="full"} 1"#,
    ] {
        assert!(metrics.body.contains(line), "{line}:\n{}", metrics.body);
    }
    assert!(
        metrics
            .body
            .contains(r#"tower_inference_calls_total{stage="edge"} 1"#),
        "{}",
        metrics.body
    );
    let post = gw.post("/metrics", &json!({})).await;
    assert_eq!(post.status(), 405);
    assert_eq!(post.header("allow"), "GET");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let gw = start(loaded()).await;
    // About a second of generation: 5 ms + 5 000 tokens × 200 µs.
    let slow = json!({"model": PRIMARY, "messages": [{"role": "user", "content": "go"}], "max_tokens": 5_000});
    let request = gw.client.request(
        Request::post(gw.uri("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(slow.to_string())
            .unwrap(),
    );
    let in_flight = tokio::spawn(request);
    while gw.gateway.primary.stats().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    let addr = gw.addr;
    gw.stop().await;
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200, "the request in flight was answered");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4_096 - 1);
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_an_overloaded_primary_is_a_429_with_retry_after() {
    let gw = start(Config {
        fallback: false,
        ..loaded()
    })
    .await;
    // Calls that never finish fill the primary's 32 slots and the 128 places of its queue.
    gw.gateway.primary.set_hang_rate(1.0);
    let hung: Vec<_> = (0..160)
        .map(|i| {
            let req = Request::post(gw.uri("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(chat(&format!("question {i}")).to_string())
                .unwrap();
            tokio::spawn(gw.client.request(req))
        })
        .collect();
    let full = async {
        loop {
            let stats = gw.gateway.primary.stats();
            if stats.in_flight == 32 && stats.queued == 128 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), full)
        .await
        .expect("the primary filled up");

    let answer = gw.chat("one more").await;
    assert_eq!(answer.status(), 429, "{}", answer.body);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "overloaded");
    assert_eq!(error["type"], "rate_limit_error");
    // The mock asks for a second, longer than the gateway holds a request: the caller is told.
    assert_eq!(answer.header("retry-after"), "1");
    assert_eq!(answer.header("retry-after-ms"), "1000");
    assert_eq!(answer.header("x-should-retry"), "true");

    // The callers give up: their calls are dropped, and with them the primary's places.
    for call in hung {
        call.abort();
    }
    let primary = gw.gateway.primary.clone();
    gw.stop().await;
    let stats = primary.stats();
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
}

/// The `data:` payloads of a server-sent-events body.
fn sse_events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect()
}

fn streamed(prompt: &str, tokens: u32) -> Value {
    json!({
        "model": PRIMARY,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "stream": true,
    })
}

#[tokio::test]
async fn stream_true_answers_with_openai_server_sent_events() {
    let gw = start(loaded()).await;
    let answer = gw.post("/v1/chat/completions", &streamed("Hello", 6)).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("content-type"), "text/event-stream");
    assert_eq!(answer.header("x-inference-tier"), PRIMARY);
    let events = sse_events(&answer.body);
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", answer.body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks.len(),
        7,
        "six tokens and the finish: {}",
        answer.body
    );
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 6);
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));

    // Text completions stream too.
    let body = json!({"model": PRIMARY, "prompt": "Once", "max_tokens": 3, "stream": true});
    let answer = gw.post("/v1/completions", &body).await;
    let events = sse_events(&answer.body);
    assert_eq!(events.len(), 3 + 1 + 1, "{}", answer.body);
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_that_dies_midway_ends_with_an_error_event_and_no_done() {
    let gw = start(loaded()).await;
    gw.post("/admin/primary/break-streams", &json!({})).await;
    let answer = gw
        .post("/v1/chat/completions", &streamed("Hello", 20))
        .await;
    assert_eq!(
        answer.status(),
        200,
        "the status was sent with the first token"
    );
    let events = sse_events(&answer.body);
    assert_eq!(events.len(), 3 + 1, "{}", answer.body);
    let error: Value = serde_json::from_str(events[3]).unwrap();
    assert_eq!(error["error"]["code"], "model_failure");
    assert!(!answer.body.contains("[DONE]"));
    // Not retried, not replaced by the lighter model.
    assert_eq!(gw.gateway.light.stats().calls, 0);

    // A stream that cannot start falls back like any call.
    gw.post("/admin/primary/mend-streams", &json!({})).await;
    gw.gateway.primary.kill();
    let answer = gw.post("/v1/chat/completions", &streamed("Hello", 4)).await;
    assert_eq!(answer.header("x-inference-tier"), LIGHT);
    assert!(
        answer
            .header("x-inference-fallback-reasons")
            .contains("llama-70b=")
    );
    assert_eq!(sse_events(&answer.body).last(), Some(&"[DONE]"));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_the_model() {
    let gw = start(loaded()).await;
    let req = Request::post(gw.uri("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(streamed("Tell me everything", 2_000).to_string())
        .unwrap();
    let res = gw.client.request(req).await.unwrap();
    assert_eq!(gw.gateway.primary.stats().in_flight, 1);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    // The server sees the closed connection and drops the stream.
    for _ in 0..200 {
        if gw.gateway.primary.stats().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.gateway.primary.stats().in_flight, 0);
    let text = gw.get("/metrics").await.body;
    assert!(
        text.contains(r#"inference_streams_ended_total{stage="edge",end="cancelled"} 1"#),
        "{text}"
    );
    gw.stop().await;
}
