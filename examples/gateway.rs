//! An OpenAI-compatible inference gateway on hyper, with the whole stack in front of a mock
//! GPU.
//!
//! ```text
//! cargo run --example gateway --features mock,http,openai -- --port 8080 [--chaos]
//! ```
//!
//! Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | chat completions (OpenAI's shape) |
//! | `POST /v1/completions` | text completions |
//! | `GET /v1/models` | the models served |
//! | `GET /health/live`, `/health/ready`, `/health/inference` | health (the last runs a canary) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/primary/kill`, `/revive`, `/restart` | outage drills on the mock primary |
//! | `POST /admin/primary/break-streams`, `/mend-streams` | streams die after 3 tokens, or not |
//!
//! Both inference routes stream with `"stream": true`: OpenAI-compatible server-sent events
//! (`data: {...}` chunks, then `data: [DONE]`), with the `x-inference-*` headers sent before
//! the first chunk. A stream that fails after its first token ends with an error event
//! (which OpenAI's clients raise), never with a silently truncated answer; before its first
//! token, it falls back like any call. A client that disconnects cancels the model's work.
//!
//! Each inference route runs the recommended stack (metrics, fallback, degrade, retry,
//! breaker, timeout) over a 70B mock model; when it fails, a lighter 8B mock answers, then the
//! cache of last good answers, then a static reply. Responses say who answered in the
//! `x-inference-*` headers. Errors are OpenAI-shaped JSON (so OpenAI SDKs raise their usual
//! exceptions) with `x-request-id` and, when the stack knows one, `Retry-After`.
//!
//! Options (or the environment variable in brackets):
//!
//! - `--port N` (`GATEWAY_PORT`): the port on 127.0.0.1 (default 8080; 0 picks a free one).
//! - `--chaos`: the primary fails on a schedule: up 20 s, then 10 s in which every call fails
//!   as a lost backend connection would (with an internal address in the error's source,
//!   which logs show and responses never do), again and again.
//! - `--no-fallback`: the primary alone behind retry, breaker and timeout; its errors reach
//!   callers (for callers who would rather retry than take a lesser answer).
//! - `--load-time-ms N`: how long the primary takes to load its weights (default 1000), at
//!   start and after a restart.
//! - `--body-limit N`: the largest request body, in bytes (default 1 MiB).
//! - `--error-shape openai|native`: the JSON shape of error bodies (default `openai`).
//!
//! Ctrl-C stops accepting connections and lets requests in flight finish (for up to 30 s).
//!
//! The example is also a library for its tests (`tests/gateway.rs` starts it in-process):
//! [`Config`], [`Gateway::new`] and [`serve`] are what `main` uses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_http::trace::TraceLayer;
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::health::{Health, HealthService};
use tower_inference::metrics::ErrorMetrics;
use tower_inference::mock::{ChaosHandle, ChaosLayer, MockGpu, MockGpuHandle, StreamFault};
use tower_inference::openai::{
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, CompletionRequest,
    CompletionResponse, ModelList,
};
use tower_inference::retry::{Backoff, RetryLayer};
use tower_inference::server::{
    CorrelationLayer, DEFAULT_BODY_LIMIT, EndpointBody, ErrorResponseLayer, ErrorShape,
    JsonEndpoint, OpenAiSse, RequestError, sse_response,
};
use tower_inference::stack::InferenceStack;
use tower_inference::stream::{StreamTimeoutLayer, TokenStream};
use tower_inference::{InferenceError, Quality};

/// The primary model's name.
pub const PRIMARY: &str = "llama-70b";
/// The lighter model's name.
pub const LIGHT: &str = "llama-8b";
/// What the static tier says.
pub const STATIC_REPLY: &str = "The assistant is busy right now; please try again in a minute.";

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Whether the primary fails on a schedule.
    pub chaos: bool,
    /// Whether the lighter model, cache and static reply stand behind the primary.
    pub fallback: bool,
    /// How long the primary takes to load its weights.
    pub load_time: Duration,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// The shape of error bodies.
    pub shape: ErrorShape,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            chaos: false,
            fallback: true,
            load_time: Duration::from_secs(1),
            body_limit: DEFAULT_BODY_LIMIT,
            shape: ErrorShape::OpenAi,
        }
    }
}

const USAGE: &str = "usage: gateway [--port N] [--chaos] [--no-fallback] [--load-time-ms N] [--body-limit N] \
     [--error-shape openai|native]";

impl Config {
    /// The settings from the command line and the environment.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut config = Config::default();
        if let Ok(port) = std::env::var("GATEWAY_PORT") {
            config.addr.set_port(number(&port, "GATEWAY_PORT")?);
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--port" => config.addr.set_port(number(&value("--port")?, "--port")?),
                "--chaos" => config.chaos = true,
                "--no-fallback" => config.fallback = false,
                "--load-time-ms" => {
                    let ms = number(&value("--load-time-ms")?, "--load-time-ms")?;
                    config.load_time = Duration::from_millis(ms);
                }
                "--body-limit" => {
                    config.body_limit = number(&value("--body-limit")?, "--body-limit")?;
                }
                "--error-shape" => {
                    config.shape = match value("--error-shape")?.as_str() {
                        "openai" => ErrorShape::OpenAi,
                        "native" => ErrorShape::Native,
                        other => {
                            return Err(format!(
                                "--error-shape is openai or native, not {other:?}\n{USAGE}"
                            ));
                        }
                    };
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown option {other:?}\n{USAGE}")),
            }
        }
        Ok(config)
    }
}

fn number<T: std::str::FromStr>(value: &str, name: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name} takes a whole number, not {value:?}\n{USAGE}"))
}

/// A boxed response future.
type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<EndpointBody>, BoxError>> + Send>>;

/// A route's streaming stack.
type Streaming<Req> = tower::util::BoxCloneSyncService<Req, TokenStream, BoxError>;

/// The stack for one route (its fallback tiers follow: they depend on the route's types).
macro_rules! stack {
    ($metrics:expr, $route:literal) => {
        InferenceStack::new(PRIMARY)
            .metrics($metrics)
            .degrade(DegradeLayer::builder().in_flight_capacity(64))
            .retry(
                RetryLayer::builder()
                    .max_attempts(3)
                    .backoff(Backoff::new(
                        Duration::from_millis(10),
                        2.0,
                        Duration::from_millis(100),
                    ))
                    // A longer hint goes back to the caller as `Retry-After` rather than
                    // holding the request.
                    .max_retry_after(Duration::from_millis(500)),
            )
            .breaker(
                BreakerLayer::builder()
                    .name(concat!("llama-70b/", $route))
                    // Wide enough that a flaky primary (30 % of calls failing) keeps
                    // serving, even in a burst where fast failures are counted before the
                    // slower successes; an outage opens it within about 100 calls.
                    .count_window(200)
                    .minimum_calls(100)
                    .failure_rate_threshold(0.5)
                    .open_duration(Duration::from_secs(5))
                    .half_open_probes(2),
            )
            .timeout(Duration::from_secs(10))
    };
}

/// The gateway: its routes and handles on what it runs.
pub struct Gateway {
    routes: tower::util::BoxCloneSyncService<Request<Incoming>, Response<EndpointBody>, BoxError>,
    /// The primary mock GPU's controls.
    pub primary: MockGpuHandle,
    /// The lighter mock GPU's controls.
    pub light: MockGpuHandle,
    /// The metrics every stage reports to.
    pub metrics: ErrorMetrics,
    /// The fault injection in front of the primary (off unless `--chaos`).
    pub chaos: ChaosHandle,
    shape: ErrorShape,
}

impl Gateway {
    /// Builds the models, the two stacks and the routes. Call it inside a Tokio runtime.
    pub fn new(config: &Config) -> Gateway {
        let primary = MockGpu::builder()
            .name(PRIMARY)
            .slots(32)
            .queue_capacity(128)
            .base_latency(Duration::from_millis(5))
            .per_token_latency(Duration::from_micros(200))
            .load_time(config.load_time)
            .build();
        let light = MockGpu::builder()
            .name(LIGHT)
            .slots(32)
            .queue_capacity(128)
            .base_latency(Duration::from_millis(2))
            .per_token_latency(Duration::from_micros(50))
            .build();
        let metrics = ErrorMetrics::new();
        // Off until `--chaos` (or a test) turns it on: the errors a lost connection to a real
        // backend gives, with an internal address in the source.
        let chaos = ChaosLayer::builder()
            .errors([InferenceError::infrastructure_with_source(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connect to 10.0.3.7:8001 (gpu-node-3): connection refused",
                ),
            )])
            .error_rate(0.0)
            .build();

        // One route: its stack, with the fallback tiers for its request and response types,
        // over the chaos layer and the primary, served as JSON.
        macro_rules! endpoint {
            ($route:literal, $serve:ident, $req:ty, $res:ty) => {{
                let tiers = if config.fallback {
                    FallbackLayer::builder()
                        .tier(LIGHT, Quality::Reduced, light.$serve())
                        .cache(
                            MemoryStore::new(10_000),
                            <$req>::cache_key,
                            Duration::from_secs(600),
                        )
                        .static_default(|_: &$req| <$res>::from_text("static", STATIC_REPLY))
                } else {
                    FallbackLayer::builder()
                };
                let svc = ServiceBuilder::new()
                    .layer(stack!(&metrics, $route).fallback(tiers).build())
                    .layer(&chaos)
                    .service(primary.$serve());
                JsonEndpoint::new(svc)
                    .body_limit(config.body_limit)
                    .check(<$req>::validate)
            }};
        }
        // One route's streaming stack: the same layers, over the primary's streaming mode,
        // with first-token and stall timeouts; its tiers stream too.
        macro_rules! streaming {
            ($route:literal, $serve:ident, $req:ty) => {{
                let tiers = if config.fallback {
                    FallbackLayer::builder()
                        .tier(LIGHT, Quality::Reduced, light.$serve())
                        .static_default(|_: &$req| TokenStream::from_text(STATIC_REPLY))
                } else {
                    FallbackLayer::builder()
                };
                let svc = ServiceBuilder::new()
                    .layer(stack!(&metrics, $route).fallback(tiers).build())
                    .layer(&chaos)
                    .layer(
                        StreamTimeoutLayer::new()
                            .first_token(Duration::from_secs(5))
                            .stall(Duration::from_secs(2)),
                    )
                    .service(primary.$serve());
                Streaming::<$req>::new(svc)
            }};
        }
        let chat_stream = streaming!("chat-stream", chat_stream, ChatCompletionRequest);
        let completions_stream =
            streaming!("completions-stream", completions_stream, CompletionRequest);
        let chat = endpoint!("chat", chat, ChatCompletionRequest, ChatCompletionResponse);
        let completions = endpoint!(
            "completions",
            completions,
            CompletionRequest,
            CompletionResponse
        );

        let gpu = primary.handle();
        let canary_gpu = primary.chat();
        let health = Health::builder()
            // With the fallback tiers behind it, a primary still loading leaves the gateway
            // answering: degraded, not unready. Without them, it is unready.
            .check(
                "primary_loaded",
                !config.fallback,
                Duration::from_secs(1),
                {
                    let gpu = gpu.clone();
                    move || {
                        let ready = gpu.is_ready();
                        async move {
                            if ready {
                                Ok(())
                            } else {
                                Err("the primary model is loading or down".to_owned())
                            }
                        }
                    }
                },
            )
            .canary(
                ServiceBuilder::new()
                    .timeout(Duration::from_secs(2))
                    .service(canary_gpu),
                ChatCompletionRequest {
                    max_tokens: Some(4),
                    ..ChatCompletionRequest::new(PRIMARY, [ChatMessage::user("canary")])
                },
                |res: &ChatCompletionResponse| !res.choices.is_empty(),
                Duration::from_millis(500),
                Duration::from_secs(5),
            )
            .metrics(&metrics)
            .build();

        let routes = Routes {
            chat,
            completions,
            chat_stream,
            completions_stream,
            body_limit: config.body_limit,
            health: HealthService::new(health),
            metrics: metrics.clone(),
            primary: gpu.clone(),
            models: serde_json::to_string(&ModelList::new([PRIMARY], "tower-inference"))
                .unwrap_or_default()
                .into(),
        };
        Gateway {
            routes: tower::util::BoxCloneSyncService::new(routes),
            primary: gpu,
            light: light.handle(),
            metrics,
            chaos: chaos.handle(),
            shape: config.shape,
        }
    }

    /// The whole HTTP service: correlation ids (outermost, so every log line of a request
    /// carries its id), tower-http's trace, errors as JSON (OpenAI's shape unless
    /// `--error-shape native`), and the routes.
    pub fn app(
        &self,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<
            impl http_body::Body<Data = bytes::Bytes, Error = Infallible> + Send + 'static,
        >,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        ServiceBuilder::new()
            .layer(CorrelationLayer::new())
            .layer(TraceLayer::new_for_http())
            .layer(ErrorResponseLayer::new(self.shape))
            .service(self.routes.clone())
    }
}

/// The routes: each path to its service, anything else a JSON 404 or 405.
#[derive(Clone)]
struct Routes<C, T> {
    chat: C,
    completions: T,
    chat_stream: Streaming<ChatCompletionRequest>,
    completions_stream: Streaming<CompletionRequest>,
    body_limit: usize,
    health: HealthService,
    metrics: ErrorMetrics,
    primary: MockGpuHandle,
    models: Arc<str>,
}

impl<C, T> Service<Request<Incoming>> for Routes<C, T>
where
    C: Service<Request<Full<Bytes>>, Response = Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    C::Future: Send + 'static,
    T: Service<Request<Full<Bytes>>, Response = Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    T::Future: Send + 'static,
{
    type Response = Response<EndpointBody>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each route's service is made ready in its own call (`oneshot` on a clone).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> BoxFuture {
        let post = req.method() == Method::POST;
        let get = req.method() == Method::GET;
        match req.uri().path() {
            "/v1/chat/completions" if post => inference(
                self.chat.clone(),
                self.chat_stream.clone(),
                self.body_limit,
                req,
                |req: &ChatCompletionRequest| {
                    req.validate_streamed()?;
                    let id = format!("chatcmpl-{}", next_id());
                    Ok(OpenAiSse::chat(id, req.model.clone(), req.token_budget()))
                },
            ),
            "/v1/completions" if post => inference(
                self.completions.clone(),
                self.completions_stream.clone(),
                self.body_limit,
                req,
                |req: &CompletionRequest| {
                    req.validate_streamed()?;
                    let id = format!("cmpl-{}", next_id());
                    Ok(OpenAiSse::completion(id, req.model.clone(), req.max_tokens))
                },
            ),
            "/v1/chat/completions" | "/v1/completions" => {
                refuse(RequestError::MethodNotAllowed { allow: "POST" })
            }
            "/v1/models" if get => {
                answer(StatusCode::OK, "application/json", self.models.to_string())
            }
            "/metrics" if get => answer(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render_prometheus(),
            ),
            "/health/live" | "/health/ready" | "/health/inference" if get => {
                let health = self.health.clone();
                Box::pin(async move { Ok(health.oneshot(req).await?.map(EndpointBody::from)) })
            }
            "/v1/models" | "/metrics" | "/health/live" | "/health/ready" | "/health/inference" => {
                refuse(RequestError::MethodNotAllowed { allow: "GET" })
            }
            path @ ("/admin/primary/break-streams" | "/admin/primary/mend-streams") => {
                if !post {
                    return refuse(RequestError::MethodNotAllowed { allow: "POST" });
                }
                let broken = path.ends_with("break-streams");
                let fault = broken.then_some(StreamFault::DieAfter(3));
                self.primary.set_stream_fault(fault);
                tracing::warn!(broken, "admin: primary streams");
                answer(
                    StatusCode::OK,
                    "application/json",
                    format!(r#"{{"streams_broken":{broken}}}"#),
                )
            }
            path @ ("/admin/primary/kill" | "/admin/primary/revive" | "/admin/primary/restart") => {
                if !post {
                    return refuse(RequestError::MethodNotAllowed { allow: "POST" });
                }
                let action = path.rsplit('/').next().unwrap_or_default();
                match action {
                    "kill" => self.primary.kill(),
                    "revive" => self.primary.revive(),
                    _ => {
                        self.primary.kill();
                        self.primary.revive();
                    }
                }
                tracing::warn!(action, "admin: primary model");
                answer(
                    StatusCode::OK,
                    "application/json",
                    format!(r#"{{"primary":"{action}"}}"#),
                )
            }
            _ => refuse(RequestError::NotFound),
        }
    }
}

fn refuse(err: RequestError) -> BoxFuture {
    Box::pin(async move { Err(err.into()) })
}

/// An inference route: server-sent events when the body asks for a stream (checked and
/// formatted by `sse`), else the JSON endpoint.
fn inference<J, Req>(
    json: J,
    stream: Streaming<Req>,
    limit: usize,
    req: Request<Incoming>,
    sse: fn(&Req) -> Result<OpenAiSse, InferenceError>,
) -> BoxFuture
where
    J: Service<Request<Full<Bytes>>, Response = Response<String>, Error = BoxError>
        + Send
        + 'static,
    J::Future: Send + 'static,
    Req: serde::de::DeserializeOwned + Send + 'static,
{
    Box::pin(async move {
        let (parts, bytes) = read_body(req, limit).await?;
        if let Some(req) = streamed::<Req>(&bytes) {
            let format = sse(&req)?;
            return Ok(sse_response(stream.oneshot(req).await?, format));
        }
        let res = json.oneshot(Request::from_parts(parts, Full::new(bytes)));
        Ok(res.await?.map(EndpointBody::from))
    })
}

/// A request to a streaming route whose body asks for a stream (`"stream": true`) and parses;
/// anything else goes to the JSON endpoint, which answers with the right error.
fn streamed<Req: serde::de::DeserializeOwned>(bytes: &Bytes) -> Option<Req> {
    #[derive(serde::Deserialize)]
    struct Flag {
        stream: Option<bool>,
    }
    let flag: Flag = serde_json::from_slice(bytes).ok()?;
    if flag.stream != Some(true) {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// The request's body, read up to `limit` bytes.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), RequestError> {
    let (parts, body) = req.into_parts();
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(RequestError::PayloadTooLarge { limit })
        }
        Err(_) => Err(RequestError::BodyUnreadable),
    }
}

/// A process-wide sequence number for stream ids.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> BoxFuture {
    let mut res = Response::new(EndpointBody::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Box::pin(async move { Ok(res) })
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (for up to 30 s).
pub async fn serve<S, B>(listener: TcpListener, app: S, shutdown: impl Future<Output = ()>)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors, or a connection reset before it was taken:
                        // wait a little rather than spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("requests still in flight after 30 s; stopping anyway");
        }
    }
}

/// Fails the primary on a schedule: up 20 s, down 10 s.
async fn chaos(chaos: ChaosHandle) {
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        println!("chaos: every call to the primary fails for 10 s");
        chaos.set_error_rate(1.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        println!("chaos: the primary answers again");
        chaos.set_error_rate(0.0);
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {}: {err}", config.addr);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.addr);
    let gateway = Gateway::new(&config);
    if config.chaos {
        tokio::spawn(chaos(gateway.chaos.clone()));
    }
    println!(
        "gateway listening on http://{addr} (fallback {}, chaos {})",
        if config.fallback { "on" } else { "off" },
        if config.chaos { "on" } else { "off" }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down: finishing requests in flight");
    };
    serve(listener, gateway.app(), shutdown).await;
}
