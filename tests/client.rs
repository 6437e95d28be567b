//! The `client` feature against a fake model server on loopback that replays the error
//! answers of vLLM, TGI, Ollama, Triton and OpenAI byte for byte, and the faults of a
//! network: each maps to its documented kind, and the layers above act on it.
#![cfg(feature = "client")]

#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use serde_json::{Value, json};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::client::{Backend, DefaultMapper, MapError, UpstreamError};
use tower_inference::openai::{ChatCompletionRequest, ChatMessage, CompletionRequest};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::{ErrorKind, InferenceError, ModelFailure, Quality};

use upstream::{Reply, Upstream, refused_addr};

fn chat() -> ChatCompletionRequest {
    ChatCompletionRequest::new("llama", [ChatMessage::user("hello")])
}

fn answer(text: &str) -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "llama",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "system_fingerprint": "fp-1"
    })
    .to_string()
}

fn backend(upstream: &Upstream) -> Backend {
    Backend::builder(upstream.base_url())
        .api_key("sk-test-secret")
        .build()
        .unwrap()
}

async fn call_once(upstream: &Upstream) -> Result<String, InferenceError> {
    let res = backend(upstream).chat().oneshot(chat()).await?;
    Ok(res.choices[0].message.text().into_owned())
}

#[tokio::test]
async fn sends_the_request_as_openai_sdks_do_and_reads_the_answer() {
    let upstream = Upstream::start([Reply::json(200, answer("hi there"))]).await;
    let res = backend(&upstream).chat().oneshot(chat()).await.unwrap();
    assert_eq!(res.choices[0].message.text(), "hi there");
    assert_eq!(res.usage.as_ref().unwrap().total_tokens, 5);
    // Unknown fields are kept, and no provenance headers means no upstream provenance.
    assert_eq!(res.extra["system_fingerprint"], "fp-1");
    assert!(res.provenance.upstream().is_none());

    let sent = &upstream.received()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-secret"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["model"], "llama");
    assert_eq!(body["messages"][0]["content"], "hello");
}

#[tokio::test]
async fn text_completions_go_to_their_own_path() {
    let body = json!({
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "llama",
        "choices": [{"index": 0, "text": "42", "finish_reason": "length"}]
    });
    let upstream = Upstream::start([Reply::json(200, body.to_string())]).await;
    let res = backend(&upstream)
        .completions()
        .oneshot(CompletionRequest::new("llama", "6 x 7 ="))
        .await
        .unwrap();
    assert_eq!(res.choices[0].text, "42");
    assert_eq!(upstream.received()[0].path, "/v1/completions");
}

/// One real error answer and what it must become.
struct Case {
    server: &'static str,
    reply: Reply,
    kind: ErrorKind,
    retry_after: Option<Duration>,
}

fn case(server: &'static str, reply: Reply, kind: ErrorKind) -> Case {
    Case {
        server,
        reply,
        kind,
        retry_after: None,
    }
}

/// The servers' error answers, as their sources write them (see the `client` module docs).
fn cases() -> Vec<Case> {
    let vllm = |status: u16, kind: &str, message: &str| {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": kind, "param": null, "code": status}})
                .to_string(),
        )
    };
    let tgi = |status: u16, kind: &str, message: &str| {
        Reply::json(
            status,
            json!({"error": message, "error_type": kind}).to_string(),
        )
    };
    let ollama =
        |status: u16, message: &str| Reply::json(status, json!({"error": message}).to_string());
    let ollama_v1 = |status: u16, kind: &str, message: &str| {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
                .to_string(),
        )
    };
    let fastapi =
        |status: u16, detail: &str| Reply::json(status, json!({"detail": detail}).to_string());
    vec![
        // vLLM
        case("vllm context length", vllm(400, "BadRequestError",
            "This model's maximum context length is 4096 tokens. However, your prompt contains 5000 input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=5000)"),
            ErrorKind::ContextLengthExceeded),
        case("vllm (before 0.10.1) context length", Reply::json(400, json!({"object": "error",
            "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4900 in the messages, 100 in the completion). Please reduce the length of the messages or completion.",
            "type": "BadRequestError", "param": null, "code": 400}).to_string()),
            ErrorKind::ContextLengthExceeded),
        case("vllm max_tokens", vllm(400, "BadRequestError",
            "max_tokens=9000 cannot be greater than max_model_len=4096. Please request fewer output tokens. (parameter=max_tokens, value=9000)"),
            ErrorKind::InvalidInput),
        case("vllm unknown model", vllm(404, "NotFoundError",
            "The model `gpt-5` does not exist. Valid aliases: llama."), ErrorKind::InvalidInput),
        case("vllm engine dead", vllm(500, "InternalServerError",
            "The server had an error while processing your request."), ErrorKind::Infrastructure),
        case("vllm (older) engine dead, empty body",
            Reply::Answer { status: 500, headers: vec![], body: String::new() },
            ErrorKind::Infrastructure),
        case("vllm queue full", vllm(503, "Service Unavailable",
            "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance."),
            ErrorKind::Overloaded),
        case("vllm token backlog", vllm(503, "Service Unavailable",
            "The engine has reached its prefill token backlog limit. Please try again later or on a different instance."),
            ErrorKind::Overloaded),
        case("vllm CUDA OOM", vllm(500, "InternalServerError",
            "CUDA out of memory. Tried to allocate 2.00 GiB"), ErrorKind::OutOfMemory),
        // TGI
        case("tgi overloaded", tgi(429, "overloaded", "Model is overloaded"), ErrorKind::Overloaded),
        case("tgi context length", tgi(422, "validation",
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` tokens and 100 `max_new_tokens`"),
            ErrorKind::ContextLengthExceeded),
        case("tgi input length", tgi(422, "validation",
            "Input validation error: `inputs` must have less than 4000 tokens. Given: 5000"),
            ErrorKind::ContextLengthExceeded),
        case("tgi validation", tgi(422, "validation",
            "Input validation error: `temperature` must be strictly positive"), ErrorKind::InvalidInput),
        case("tgi generation", tgi(424, "generation",
            "Request failed during generation: Server error: unhandled exception"),
            ErrorKind::ModelFailure),
        case("tgi generation OOM", tgi(424, "generation",
            "Request failed during generation: Server error: CUDA out of memory"),
            ErrorKind::OutOfMemory),
        case("tgi incomplete", tgi(500, "incomplete_generation", "Incomplete generation"),
            ErrorKind::Infrastructure),
        case("tgi unhealthy", tgi(503, "healthcheck", "unhealthy"), ErrorKind::Infrastructure),
        // Ollama
        case("ollama busy", ollama(503,
            "server busy, please try again.  maximum pending requests exceeded"), ErrorKind::Overloaded),
        case("ollama /v1 busy", ollama_v1(503, "api_error",
            "server busy, please try again.  maximum pending requests exceeded"), ErrorKind::Overloaded),
        case("ollama cancelled", ollama(499, "request canceled"), ErrorKind::Infrastructure),
        case("ollama unknown model", ollama(404,
            "model \"llama9\" not found, try pulling it first"), ErrorKind::InvalidInput),
        case("ollama prompt too long", ollama_v1(400, "invalid_request_error",
            "the prompt is longer than the context length currently available to the model; shorten the prompt, adjust the context length in settings, or use a model with a longer context length"),
            ErrorKind::InvalidInput),
        // Triton
        case("triton openai frontend queue full", fastapi(500,
            "[request id: 7] Exceeds maximum queue size"), ErrorKind::Overloaded),
        case("triton native queue full", ollama(503, "Exceeds maximum queue size"),
            ErrorKind::Overloaded),
        case("triton native (23.12) queue full", ollama(400, "Exceeds maximum queue size"),
            ErrorKind::Overloaded),
        case("triton unknown model", fastapi(400, "Unknown model: gpt-5"), ErrorKind::InvalidInput),
        case("triton schema", Reply::json(422, json!({"detail": [{"loc": ["body", "messages"],
            "msg": "Field required", "type": "missing"}]}).to_string()), ErrorKind::InvalidInput),
        case("triton server error", fastapi(500, "Unknown tokenizer"), ErrorKind::Infrastructure),
        // OpenAI
        Case {
            retry_after: Some(Duration::from_millis(1_250)),
            ..case("openai rate limit", Reply::json(429, json!({"error": {
                "message": "Rate limit reached", "type": "requests", "param": null,
                "code": "rate_limit_exceeded"}}).to_string())
                .header("retry-after-ms", "1250").header("retry-after", "2"),
                ErrorKind::Overloaded)
        },
        case("openai context length", Reply::json(400, json!({"error": {
            "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 8227 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}}).to_string()), ErrorKind::ContextLengthExceeded),
        Case {
            retry_after: Some(Duration::from_secs(7)),
            ..case("openai overloaded", Reply::json(503, json!({"error": {
                "message": "The engine is currently overloaded, please try again later",
                "type": "server_error", "param": null, "code": null}}).to_string())
                .header("retry-after", "7"), ErrorKind::Overloaded)
        },
        case("conflict", vllm(409, "ConflictError", "lock timeout"), ErrorKind::Infrastructure),
        case("request timeout", Reply::json(408, "{}"), ErrorKind::Timeout),
        case("bad credentials", vllm(401, "AuthenticationError", "Invalid API key"),
            ErrorKind::Infrastructure),
        case("wrong base url", Reply::Answer { status: 404,
            headers: vec![("content-type", "text/html".into())],
            body: "<html><body>404 Not Found</body></html>".into() }, ErrorKind::Infrastructure),
        case("proxy", Reply::Answer { status: 502, headers: vec![],
            body: "Bad Gateway".into() }, ErrorKind::Infrastructure),
        case("gateway timeout", Reply::Answer { status: 504, headers: vec![],
            body: String::new() }, ErrorKind::Timeout),
        case("loading", ollama(503, "model is loading, not ready yet"), ErrorKind::ModelNotReady),
    ]
}

#[tokio::test]
async fn every_servers_error_answer_maps_to_its_documented_kind() {
    let cases = cases();
    let upstream = Upstream::start(cases.iter().map(|c| c.reply.clone())).await;
    let client = backend(&upstream).chat();
    let mut wrong = Vec::new();
    for case in &cases {
        let err = client.clone().oneshot(chat()).await.unwrap_err();
        if err.kind() != case.kind {
            wrong.push(format!(
                "{}: {:?}, expected {:?}",
                case.server,
                err.kind(),
                case.kind
            ));
        }
        if case.retry_after.is_some() && err.retry_after() != case.retry_after {
            wrong.push(format!(
                "{}: retry after {:?}",
                case.server,
                err.retry_after()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(upstream.count(), cases.len());
}

#[tokio::test]
async fn context_length_figures_are_read_from_each_servers_message() {
    let cases = cases();
    let expected = [
        ("vllm context length", 5_000, 4_096),
        ("vllm (before 0.10.1) context length", 5_000, 4_096),
        ("tgi context length", 5_000, 4_096),
        ("tgi input length", 5_000, 4_000),
        ("openai context length", 8_227, 8_192),
    ];
    for (server, input, max) in expected {
        let case = cases.iter().find(|c| c.server == server).unwrap();
        let upstream = Upstream::start([case.reply.clone()]).await;
        match call_once(&upstream).await.unwrap_err() {
            InferenceError::ContextLengthExceeded { input: i, max: m } => {
                assert_eq!((i, m), (input, max), "{server}");
            }
            other => panic!("{server}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_caller_fault_keeps_the_servers_message_and_nothing_else_does() {
    let upstream = Upstream::start([
        Reply::json(422, json!({"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"}).to_string()),
        Reply::json(500, json!({"error": "connect to 10.0.3.7:8001 failed; key sk-live-123"}).to_string()),
    ])
    .await;
    let err = call_once(&upstream).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid request: Input validation error: `temperature` must be strictly positive"
    );

    let err = call_once(&upstream).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Infrastructure);
    let body = serde_json::to_string(&err.to_body()).unwrap();
    assert!(!err.to_string().contains("10.0.3.7") && !body.contains("10.0.3.7"));
    assert!(!body.contains("sk-live-123"));
    // The server's words stay available to logs, through the source.
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        source.contains("500") && source.contains("10.0.3.7"),
        "{source}"
    );
}

#[tokio::test]
async fn should_retry_header_overrides_the_status() {
    let upstream = Upstream::start([
        Reply::json(503, "{}")
            .header("x-should-retry", "false")
            .header("retry-after", "3"),
        Reply::json(
            400,
            json!({"error": {"message": "try again", "type": "x"}}).to_string(),
        )
        .header("x-should-retry", "true"),
        Reply::json(500, json!({"error": "CUDA out of memory"}).to_string())
            .header("x-should-retry", "true"),
    ])
    .await;
    let err = call_once(&upstream).await.unwrap_err();
    assert!(
        matches!(err, InferenceError::CircuitOpen { retry_in } if retry_in == Duration::from_secs(3)),
        "{err:?}"
    );
    assert_eq!(
        call_once(&upstream).await.unwrap_err().kind(),
        ErrorKind::Infrastructure
    );
    // Out of memory stays itself: the retry layer's OOM retry asks for less.
    assert_eq!(
        call_once(&upstream).await.unwrap_err().kind(),
        ErrorKind::OutOfMemory
    );
}

#[tokio::test]
async fn retry_after_is_read_as_seconds_or_an_http_date() {
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let upstream = Upstream::start([
        Reply::json(429, "{}").header("retry-after", "1.5"),
        Reply::json(429, "{}").header("retry-after", in_a_minute),
        Reply::json(429, "{}").header("retry-after", "soon"),
    ])
    .await;
    let first = call_once(&upstream).await.unwrap_err().retry_after();
    assert_eq!(first, Some(Duration::from_millis(1_500)));
    let second = call_once(&upstream)
        .await
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(
        second > Duration::from_secs(55) && second <= Duration::from_secs(60),
        "{second:?}"
    );
    assert_eq!(call_once(&upstream).await.unwrap_err().retry_after(), None);
}

#[tokio::test]
async fn a_server_built_with_this_crate_keeps_its_errors_exactly() {
    let native = InferenceError::OutOfMemory {
        used_mib: 23_000,
        available_mib: 512,
    };
    let exhausted = InferenceError::Exhausted {
        tiers: vec![
            tower_inference::TierFailure::new("llama-70b", ErrorKind::Infrastructure),
            tower_inference::TierFailure::new("cache", ErrorKind::InvalidInput),
        ],
    };
    let upstream = Upstream::start([
        Reply::json(507, serde_json::to_string(&native.to_body()).unwrap()),
        Reply::json(503, serde_json::to_string(&exhausted.to_body()).unwrap()),
    ])
    .await;
    match call_once(&upstream).await.unwrap_err() {
        InferenceError::OutOfMemory {
            used_mib,
            available_mib,
        } => {
            assert_eq!((used_mib, available_mib), (23_000, 512));
        }
        other => panic!("{other:?}"),
    }
    match call_once(&upstream).await.unwrap_err() {
        InferenceError::Exhausted { tiers } => {
            assert_eq!(tiers.len(), 2);
            assert_eq!(tiers[0].tier, "llama-70b");
            assert_eq!(tiers[1].kind, ErrorKind::InvalidInput);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_mapper_of_ones_own_takes_its_cases_and_hands_on_the_rest() {
    let upstream = Upstream::start([Reply::json(418, "{}"), Reply::json(429, "{}")]).await;
    let mapper = |up: &UpstreamError<'_>| {
        if up.status == 418 {
            InferenceError::ModelNotReady {
                retry_after: Some(Duration::from_secs(9)),
            }
        } else {
            DefaultMapper.map_error(up)
        }
    };
    let client = backend(&upstream).chat().map_errors(mapper);
    let err = client.clone().oneshot(chat()).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(9)));
    assert_eq!(
        client.oneshot(chat()).await.unwrap_err().kind(),
        ErrorKind::Overloaded
    );
}

#[tokio::test]
async fn a_refused_connection_is_infrastructure() {
    let addr = refused_addr().await;
    let backend = Backend::builder(format!("http://{addr}/v1"))
        .build()
        .unwrap();
    let err = backend.chat().oneshot(chat()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Infrastructure);
    assert!(err.to_string().contains("unavailable"));
    assert!(!err.to_string().contains(&addr.to_string()));
}

#[tokio::test]
async fn a_body_that_breaks_off_is_infrastructure() {
    let upstream = Upstream::start([Reply::ResetMidBody]).await;
    let err = call_once(&upstream).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Infrastructure, "{err:?}");
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_infrastructure() {
    let upstream = Upstream::start([Reply::Close]).await;
    let err = call_once(&upstream).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Infrastructure, "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stalls_before_its_headers_times_out_at_the_response_timeout() {
    let upstream = Upstream::start([Reply::Stall]).await;
    let backend = Backend::builder(upstream.base_url())
        .connect_timeout(None)
        .response_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = backend.chat().oneshot(chat()).await.unwrap_err();
    assert!(
        matches!(err, InferenceError::Timeout { after, .. } if after == Duration::from_secs(30)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn an_answer_that_is_not_the_expected_json_is_invalid_output() {
    let upstream = Upstream::start([
        Reply::json(200, "<html>maintenance</html>"),
        Reply::json(200, json!({"id": "x", "choices": "none"}).to_string()),
        Reply::json(200, answer(&"x".repeat(2_000))),
    ])
    .await;
    let backend = Backend::builder(upstream.base_url())
        .max_response_bytes(1_000)
        .build()
        .unwrap();
    for _ in 0..3 {
        let err = backend.chat().oneshot(chat()).await.unwrap_err();
        assert!(
            matches!(
                err,
                InferenceError::ModelFailure {
                    failure: ModelFailure::InvalidOutput
                }
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_streamed_request_is_refused_before_anything_is_sent() {
    let upstream = Upstream::start([Reply::json(200, answer("never"))]).await;
    let req = ChatCompletionRequest {
        stream: Some(true),
        ..chat()
    };
    let err = backend(&upstream).chat().oneshot(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_when_the_in_flight_limit_is_reached() {
    let upstream = Upstream::start([Reply::Stall]).await;
    let backend = Backend::builder(upstream.base_url())
        .max_in_flight(1)
        .response_timeout(Duration::from_secs(3_600))
        .connect_timeout(None)
        .build()
        .unwrap();
    let mut first = backend.chat();
    first.ready().await.unwrap();
    let held = tokio::spawn(first.call(chat()));
    assert_eq!(backend.available_permits(), 0);

    // Every route's client shares the limit.
    let mut second = backend.completions();
    let waited = tokio::time::timeout(Duration::from_secs(1), second.ready()).await;
    assert!(
        waited.is_err(),
        "poll_ready must wait while the limit is reached"
    );

    held.abort();
    let _ = held.await;
    tokio::time::timeout(Duration::from_secs(1), second.ready())
        .await
        .expect("the permit comes back when the call ends")
        .unwrap();
}

#[tokio::test]
async fn retry_retries_tgi_overload_within_budget_and_not_a_context_error() {
    let overloaded = Reply::json(
        429,
        json!({"error": "Model is overloaded", "error_type": "overloaded"}).to_string(),
    );
    let upstream = Upstream::start([
        overloaded.clone(),
        overloaded,
        Reply::json(200, answer("at last")),
    ])
    .await;
    let retry = RetryLayer::builder().max_attempts(3).backoff(Backoff::new(
        Duration::from_millis(1),
        2.0,
        Duration::from_millis(2),
    ));
    let svc = ServiceBuilder::new()
        .layer(retry.build())
        .service(backend(&upstream).chat());
    let res = svc.clone().oneshot(chat()).await.unwrap();
    assert_eq!(res.choices[0].message.text(), "at last");
    assert_eq!(res.provenance.attempts, 3);
    assert_eq!(upstream.count(), 3);

    let context = cases()
        .into_iter()
        .find(|c| c.server == "vllm context length")
        .unwrap();
    upstream.script([context.reply]);
    let err = svc.oneshot(chat()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContextLengthExceeded);
    assert_eq!(upstream.count(), 4, "a caller's fault is sent once");
}

#[tokio::test]
async fn the_breaker_opens_on_a_dead_engine_and_stops_sending() {
    let dead = Reply::json(
        500,
        json!({"error": {"message": "The server had an error while processing your request.",
            "type": "InternalServerError", "param": null, "code": 500}})
        .to_string(),
    );
    let upstream = Upstream::start([dead]).await;
    let svc = ServiceBuilder::new()
        .layer(
            BreakerLayer::builder()
                .count_window(10)
                .minimum_calls(5)
                .failure_rate_threshold(0.5)
                .open_duration(Duration::from_secs(60))
                .build(),
        )
        .service(backend(&upstream).chat());
    let mut kinds = Vec::new();
    for _ in 0..20 {
        kinds.push(svc.clone().oneshot(chat()).await.unwrap_err().kind());
    }
    assert_eq!(upstream.count(), 5, "the breaker opened after 5 failures");
    assert!(kinds[..5].iter().all(|k| *k == ErrorKind::Infrastructure));
    assert!(kinds[5..].iter().all(|k| *k == ErrorKind::CircuitOpen));
}

#[tokio::test]
async fn context_length_does_not_trip_the_breaker() {
    let context = cases()
        .into_iter()
        .find(|c| c.server == "tgi context length")
        .unwrap();
    let upstream = Upstream::start([context.reply]).await;
    let svc = ServiceBuilder::new()
        .layer(
            BreakerLayer::builder()
                .count_window(10)
                .minimum_calls(5)
                .build(),
        )
        .service(backend(&upstream).chat());
    for _ in 0..20 {
        let err = svc.clone().oneshot(chat()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ContextLengthExceeded);
    }
    assert_eq!(upstream.count(), 20);
}

#[tokio::test]
async fn upstream_provenance_headers_are_read_into_the_answer() {
    let upstream = Upstream::start([Reply::json(200, answer("cached"))
        .header("x-inference-tier", "cache")
        .header("x-inference-quality", "stale")
        .header("x-inference-fallback", "true")
        .header("x-inference-attempts", "4")
        .header("x-inference-cache-age-ms", "1500")
        .header(
            "x-inference-fallback-reasons",
            "llama-70b=infrastructure, llama-8b=timeout",
        )])
    .await;
    let res = backend(&upstream).chat().oneshot(chat()).await.unwrap();
    let up = res.provenance.upstream().unwrap();
    assert_eq!(up.tier, "cache");
    assert_eq!(up.quality, Quality::Stale);
    assert!(up.fallback);
    assert_eq!(up.attempts, 4);
    assert_eq!(up.cache_age(), Some(Duration::from_millis(1_500)));
    assert_eq!(up.failed_tiers().len(), 2);
    assert_eq!(up.failed_tiers()[1].kind, ErrorKind::Timeout);
    // This hop's own provenance is untouched.
    assert_eq!(res.provenance.tier, "primary");
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let err = |url: &str| Backend::builder(url).build().unwrap_err().to_string();
    assert!(
        err("not a url").contains("not a URL"),
        "{}",
        err("not a url")
    );
    assert!(err("ftp://host/v1").contains("http://"));
    assert!(err("/v1").contains("http://"));
    #[cfg(not(feature = "client-rustls"))]
    assert!(err("https://api.example.com/v1").contains("client-rustls"));
    #[cfg(feature = "client-rustls")]
    assert!(
        Backend::builder("https://api.example.com/v1")
            .build()
            .is_ok()
    );
    let bad_header = Backend::builder("http://localhost:8000/v1")
        .header("bad header", "x")
        .build()
        .unwrap_err();
    assert!(bad_header.to_string().contains("header name"));
    let bad_key = Backend::builder("http://localhost:8000/v1")
        .api_key("line\nbreak")
        .build()
        .unwrap_err();
    assert!(bad_key.to_string().contains("API key"));
    assert!(!bad_key.to_string().contains("line"));
}

#[test]
fn debug_output_never_shows_the_api_key() {
    let builder = Backend::builder("http://localhost:8000/v1").api_key("sk-live-secret");
    assert!(!format!("{builder:?}").contains("sk-live-secret"));
    let backend = builder.build().unwrap();
    assert!(!format!("{backend:?}").contains("sk-live-secret"));
    assert!(!format!("{:?}", backend.chat()).contains("sk-live-secret"));
}

#[test]
fn routes_join_the_base_path_whatever_its_slashes() {
    for base in ["http://h:8000/v1", "http://h:8000/v1/"] {
        let backend = Backend::builder(base).build().unwrap();
        assert_eq!(backend.chat().uri(), "http://h:8000/v1/chat/completions");
        assert_eq!(backend.completions().uri(), "http://h:8000/v1/completions");
    }
    let root = Backend::builder("http://h:8000").build().unwrap();
    assert_eq!(root.chat().uri(), "http://h:8000/chat/completions");
}

#[tokio::test]
async fn http2_by_prior_knowledge_reaches_an_h2c_server() {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
            let version = format!("{:?}", req.version());
            async move {
                let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    answer(&version),
                )));
                res.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let backend = Backend::builder(format!("http://{addr}/v1"))
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    let res = backend.chat().oneshot(chat()).await.unwrap();
    assert_eq!(res.choices[0].message.text(), "HTTP/2.0");
}
