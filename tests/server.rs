//! The server layers: errors as responses in both shapes, provenance headers, correlation ids;
//! alone and around the whole stack, spawned on a multi-thread runtime.
#![cfg(all(feature = "http", feature = "mock"))]

mod support;

use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::Value;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::fallback::FallbackLayer;
use tower_inference::mock::{Completion, InferenceRequest, MockGpu};
use tower_inference::server::{
    CorrelationId, CorrelationLayer, ErrorResponseLayer, ErrorShape, JsonEndpoint,
    ProvenanceHeadersLayer, RequestError, error_response,
};
use tower_inference::stack::InferenceStack;
use tower_inference::{ErrorKind, InferenceError, ModelFailure};

const SECRET: &str = "connect to 10.1.2.3:8000 failed (api_key=sk-live-123)";

fn json(res: &Response<String>) -> Value {
    serde_json::from_str(res.body()).expect("a JSON body")
}

/// One error of each kind, the infrastructure one holding a secret in its source.
fn every_error() -> Vec<InferenceError> {
    let mut errors = support::one_of_each();
    for err in &mut errors {
        if err.kind() == ErrorKind::Infrastructure {
            *err = InferenceError::infrastructure_with_source(std::io::Error::other(SECRET));
        }
    }
    errors
}

#[test]
fn every_kind_answers_its_status_in_both_shapes_with_the_correlation_id() {
    for err in every_error() {
        let kind = err.kind();
        let boxed: BoxError = Box::new(err.clone());
        for (err, name) in [
            (&err as &(dyn std::error::Error + 'static), "InferenceError"),
            (boxed.as_ref(), "BoxError"),
        ] {
            let native: Response<String> = error_response(err, ErrorShape::Native, Some("id-1"));
            let openai: Response<String> = error_response(err, ErrorShape::OpenAi, Some("id-1"));
            for res in [&native, &openai] {
                assert_eq!(
                    res.status().as_u16(),
                    kind.http_status(),
                    "{kind} as {name}"
                );
                assert_eq!(res.headers()["content-type"], "application/json");
                assert_eq!(res.headers()["x-request-id"], "id-1");
                assert!(!res.body().contains("10.1.2.3") && !res.body().contains("sk-live"));
            }
            let body = json(&native);
            assert_eq!(body["code"], kind.code());
            assert_eq!(body["correlation_id"], "id-1");
            assert_eq!(body["retryable"], kind.is_retryable());
            let body = json(&openai);
            assert_eq!(body["error"]["code"], kind.code());
            assert_eq!(body["error"]["correlation_id"], "id-1");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(body["error"].get("param").is_some());
            let want_type = match kind {
                ErrorKind::InvalidInput | ErrorKind::ContextLengthExceeded => {
                    "invalid_request_error"
                }
                ErrorKind::Overloaded => "rate_limit_error",
                _ => "server_error",
            };
            assert_eq!(body["error"]["type"], want_type, "{kind}");
        }
    }
}

#[test]
fn retry_headers_say_when_and_whether() {
    let not_ready = InferenceError::ModelNotReady {
        retry_after: Some(Duration::from_millis(2_500)),
    };
    let res: Response<String> = error_response(&not_ready, ErrorShape::Native, None);
    assert_eq!(res.headers()["retry-after"], "3", "rounded up");
    assert_eq!(res.headers()["retry-after-ms"], "2500");
    assert_eq!(res.headers()["x-should-retry"], "true");
    assert!(res.headers().get("x-request-id").is_none());

    // Milliseconds round up too: a client that waits what it is told is never early.
    let almost = InferenceError::ModelNotReady {
        retry_after: Some(Duration::from_micros(1_499_001)),
    };
    let res: Response<String> = error_response(&almost, ErrorShape::Native, None);
    assert_eq!(res.headers()["retry-after-ms"], "1500");
    assert_eq!(res.headers()["retry-after"], "2");

    // An open breaker is not retryable at once, but its wait is known: retry after it.
    let open = InferenceError::CircuitOpen {
        retry_in: Duration::MAX,
    };
    let res: Response<String> = error_response(&open, ErrorShape::Native, None);
    assert_eq!(res.headers()["retry-after"], u64::MAX.to_string().as_str());
    assert_eq!(res.headers()["x-should-retry"], "true");

    // The caller's fault, or a failure retrying cannot fix, says so to OpenAI's SDKs.
    for err in [
        InferenceError::ContextLengthExceeded { input: 2, max: 1 },
        InferenceError::ModelFailure {
            failure: ModelFailure::InvalidOutput,
        },
    ] {
        let res: Response<String> = error_response(&err, ErrorShape::OpenAi, None);
        assert_eq!(res.headers()["x-should-retry"], "false", "{err}");
        assert!(res.headers().get("retry-after").is_none());
    }
}

#[test]
fn errors_that_are_not_ours_are_classified_and_never_quoted() {
    let cases: Vec<(BoxError, StatusCode, &str)> = vec![
        (
            Box::new(tower::timeout::error::Elapsed::new()),
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
        ),
        (
            Box::new(tower::load_shed::error::Overloaded::new()),
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
        ),
        (
            Box::new(std::io::Error::other(SECRET)),
            StatusCode::SERVICE_UNAVAILABLE,
            "infrastructure",
        ),
        (
            SECRET.into(),
            StatusCode::SERVICE_UNAVAILABLE,
            "infrastructure",
        ),
    ];
    for (err, status, code) in cases {
        for shape in [ErrorShape::Native, ErrorShape::OpenAi] {
            let res: Response<String> = error_response(err.as_ref(), shape, Some("x"));
            assert_eq!(res.status(), status);
            assert!(res.body().contains(code), "{}", res.body());
            assert!(!res.body().contains("10.1.2.3"), "{}", res.body());
            assert!(!res.body().contains("sk-live"), "{}", res.body());
        }
    }
}

/// A handler that answers with the request's correlation id, as its extensions hold it.
fn echo_id() -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    service_fn(|req: Request<String>| async move {
        let id = req
            .extensions()
            .get::<CorrelationId>()
            .map(|id| id.to_string());
        let header = req.headers().get("x-request-id").cloned();
        assert_eq!(
            id.as_deref(),
            header.as_ref().and_then(|h| h.to_str().ok()),
            "the request's header agrees with its extensions"
        );
        Ok(Response::new(id.unwrap_or_default()))
    })
}

#[tokio::test]
async fn correlation_ids_come_from_the_caller_or_are_made() {
    let svc = CorrelationLayer::new();
    let svc = tower::Layer::layer(&svc, echo_id());
    let call = |headers: Vec<(&'static str, String)>| {
        let svc = svc.clone();
        async move {
            let mut req = Request::builder();
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let res = svc.oneshot(req.body(String::new()).unwrap()).await.unwrap();
            let header = res.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert_eq!(&header, res.body(), "echoed on the response");
            header
        }
    };
    assert_eq!(call(vec![("x-request-id", "r-1".into())]).await, "r-1");
    assert_eq!(call(vec![("x-correlation-id", "c-1".into())]).await, "c-1");
    assert_eq!(
        call(vec![
            ("x-request-id", "r-2".into()),
            ("x-correlation-id", "c-2".into())
        ])
        .await,
        "r-2"
    );
    // Ids unsafe to log or echo are replaced; a usable second header is taken instead.
    assert_eq!(
        call(vec![
            ("x-request-id", "has space".into()),
            ("x-correlation-id", "c-3".into())
        ])
        .await,
        "c-3"
    );
    let made = [
        call(vec![]).await,
        call(vec![("x-request-id", "x".repeat(129))]).await,
        call(vec![("x-request-id", "a\"b c".into())]).await,
    ];
    for id in &made {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(made[0], made[1]);
    assert_eq!(
        call(vec![("x-request-id", "x".repeat(128))]).await.len(),
        128
    );
}

/// The app a server runs: the three server layers around the whole stack over tower's timeout
/// (so `BoxError`), in front of a mock GPU, with a static last resort.
fn app(
    gpu: MockGpu,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let stack = ServiceBuilder::new()
        .layer(
            InferenceStack::new("gpu")
                .fallback(
                    FallbackLayer::builder().static_default(|_: &InferenceRequest| Completion {
                        model: "static".into(),
                        text: "try again later".into(),
                        tokens: 0,
                        provenance: Default::default(),
                    }),
                )
                .timeout(Duration::from_secs(5))
                .build(),
        )
        .service(gpu);
    ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .layer(ErrorResponseLayer::new(ErrorShape::OpenAi))
        .layer(ProvenanceHeadersLayer::new())
        .map_request(|req: Request<String>| InferenceRequest::new(req.into_body()).max_tokens(4))
        .map_response(|answer: Completion| {
            let mut res = Response::new(answer.text);
            res.extensions_mut().insert(answer.provenance);
            res
        })
        .service(stack)
}

fn post(prompt: &str) -> Request<String> {
    Request::builder()
        .method("POST")
        .header("x-request-id", "drill-1")
        .body(prompt.to_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_the_whole_stack_spawned() {
    let gpu = MockGpu::builder().zero_latency().max_context(8).build();
    let handle = gpu.handle();
    let app = app(gpu);

    let res = tokio::spawn(app.clone().oneshot(post("hello there")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-inference-tier"], "gpu");
    assert_eq!(res.headers()["x-inference-quality"], "full");
    assert_eq!(res.headers()["x-inference-fallback"], "false");
    assert_eq!(res.headers()["x-inference-attempts"], "1");
    assert_eq!(res.headers()["x-request-id"], "drill-1");
    assert!(res.headers().get("x-inference-fallback-reasons").is_none());

    // The caller's fault is answered as such, in OpenAI's shape, with the id.
    let long = "one two three four five six seven eight nine ten";
    let res = tokio::spawn(app.clone().oneshot(post(long)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 400);
    let body = json(&res);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["correlation_id"], "drill-1");
    assert_eq!(res.headers()["x-request-id"], "drill-1");

    // The model dies: the static tier answers, and the headers say why.
    handle.kill();
    let res = tokio::spawn(app.clone().oneshot(post("hello there")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body(), "try again later");
    assert_eq!(res.headers()["x-inference-tier"], "static");
    assert_eq!(res.headers()["x-inference-quality"], "minimal");
    assert_eq!(res.headers()["x-inference-fallback"], "true");
    assert_eq!(
        res.headers()["x-inference-fallback-reasons"],
        "gpu=infrastructure"
    );
}

#[tokio::test]
async fn a_service_that_fails_to_get_ready_is_answered_not_dropped() {
    #[derive(Clone)]
    struct Broken;
    impl tower::Service<Request<String>> for Broken {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<String>, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err(SECRET.into()))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            unreachable!("never ready, never called")
        }
    }
    let svc = ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .layer(ErrorResponseLayer::default())
        .service(Broken);
    let res = svc.oneshot(post("hi")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(json(&res)["code"], "infrastructure");
    assert_eq!(json(&res)["correlation_id"], "drill-1");
    assert!(!res.body().contains("sk-live"));
}

/// A request body sent in `chunks` chunks of `size` bytes with no length known in advance,
/// which ends with an error when `broken`.
struct Chunked {
    chunks: usize,
    size: usize,
    broken: bool,
}

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        if self.chunks == 0 {
            return std::task::Poll::Ready(
                self.broken
                    .then(|| Err(std::io::Error::other("connection reset by 10.9.9.9"))),
            );
        }
        self.chunks -= 1;
        let chunk = bytes::Bytes::from(vec![b' '; self.size]);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

fn echo_endpoint() -> impl tower::Service<
    Request<Chunked>,
    Response = Response<String>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    let echo =
        service_fn(
            |v: Value| async move { Ok::<_, InferenceError>(tower_inference::Served::new(v)) },
        );
    ServiceBuilder::new()
        .layer(ErrorResponseLayer::new(ErrorShape::Native))
        .service(JsonEndpoint::new(echo).body_limit(1_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_length_is_limited_while_it_is_read() {
    let req = |chunks, broken| {
        Request::post("/")
            .body(Chunked {
                chunks,
                size: 100,
                broken,
            })
            .unwrap()
    };
    // 2 000 bytes, no content-length: refused once 1 000 have been read.
    let res = tokio::spawn(echo_endpoint().oneshot(req(20, false)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&res)["code"], "payload_too_large");
    assert_eq!(json(&res)["details"]["limit_bytes"], 1_000);

    // A body that breaks off is the caller's problem, said without the transport's words.
    let res = echo_endpoint().oneshot(req(2, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(&res)["code"], "body_unreadable");
    assert!(!res.body().contains("10.9.9.9"));

    // Within the limit, whitespace only: not JSON.
    let res = echo_endpoint().oneshot(req(2, false)).await.unwrap();
    assert_eq!(json(&res)["code"], "malformed_json");
}

#[tokio::test]
async fn json_is_recognised_by_its_media_type() {
    let app = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new(ErrorShape::OpenAi))
        .service(JsonEndpoint::new(service_fn(|v: Value| async move {
            Ok::<_, InferenceError>(tower_inference::Served::new(v))
        })));
    for (content_type, ok) in [
        (Some("application/json"), true),
        (Some("Application/JSON; charset=utf-8"), true),
        (Some("application/vnd.api+json"), true),
        (None, true),
        (Some("text/plain"), false),
        (Some("application/x-www-form-urlencoded"), false),
        (Some("json"), false),
    ] {
        let mut req = Request::post("/").body(r#"{"a":1}"#.to_owned()).unwrap();
        if let Some(value) = content_type {
            req.headers_mut()
                .insert("content-type", value.parse().unwrap());
        }
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status() == 200, ok, "{content_type:?}: {}", res.body());
        if !ok {
            assert_eq!(res.status(), 400);
            assert_eq!(json(&res)["error"]["code"], "not_json");
        }
    }
}

#[test]
fn request_errors_answer_with_their_status_code_and_allow() {
    let cases = [
        (RequestError::NotFound, 404, "not_found"),
        (
            RequestError::MethodNotAllowed { allow: "GET, HEAD" },
            405,
            "method_not_allowed",
        ),
        (
            RequestError::PayloadTooLarge { limit: 10 },
            413,
            "payload_too_large",
        ),
        (RequestError::NotJson, 400, "not_json"),
        (
            RequestError::MalformedJson {
                reason: "expected value at line 1 column 1".into(),
            },
            400,
            "malformed_json",
        ),
        (RequestError::BodyUnreadable, 400, "body_unreadable"),
    ];
    for (err, status, code) in cases {
        for shape in [ErrorShape::Native, ErrorShape::OpenAi] {
            // Boxed, as a service's `BoxError` carries it.
            let boxed: BoxError = err.clone().into();
            let res: Response<String> = error_response(boxed.as_ref(), shape, Some("r-1"));
            assert_eq!(res.status(), status, "{err:?}");
            assert_eq!(res.headers()["x-should-retry"], "false");
            let body = json(&res);
            let body = if shape == ErrorShape::OpenAi {
                assert_eq!(body["error"]["type"], "invalid_request_error");
                body["error"].clone()
            } else {
                body
            };
            assert_eq!(body["code"], code);
            assert_eq!(body["message"], err.to_string());
            assert_eq!(body["correlation_id"], "r-1");
        }
    }
    let res: Response<String> = error_response(
        &RequestError::MethodNotAllowed { allow: "GET, HEAD" },
        ErrorShape::Native,
        None,
    );
    assert_eq!(res.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn a_parser_message_quoting_a_large_body_is_cut_short() {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[allow(dead_code)]
        n: u32,
    }
    let app = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new(ErrorShape::Native))
        .service(JsonEndpoint::new(service_fn(|_: Typed| async {
            Ok::<_, InferenceError>(tower_inference::Served::new(0))
        })));
    // serde quotes the string it did not expect: all 50 000 characters of it.
    let body = format!(r#"{{"n": "{}"}}"#, "é".repeat(50_000));
    let res = app
        .oneshot(Request::post("/").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let message = json(&res)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("invalid type: string"), "{message}");
    assert!(message.ends_with('…'), "{message}");
    assert!(message.len() < 300, "{} bytes", message.len());
}
