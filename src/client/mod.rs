//! A backend `Service` for OpenAI-compatible inference servers (feature `client`): vLLM,
//! Hugging Face TGI, Ollama, Triton's OpenAI frontend, hosted OpenAI-compatible APIs, and
//! gateways built with this crate.
//!
//! A [`Backend`] holds one server's pooled [hyper-util] client (HTTP/1.1, or HTTP/2 by
//! prior knowledge or, with the `client-rustls` feature, over TLS by ALPN), its base URL,
//! the headers sent with every request (the API key), its timeouts and a limit on requests
//! in flight. [`Backend::chat`] and [`Backend::completions`] make an [`OpenAiClient`]: a
//! tower `Service` of [`ChatCompletionRequest`](crate::openai::ChatCompletionRequest) or
//! [`CompletionRequest`](crate::openai::CompletionRequest) that answers the typed response
//! or an [`InferenceError`](crate::InferenceError), so every layer of the crate above it
//! (retry, breaker, fallback, metrics) knows what each failure means. It is `Clone`, cheap
//! to clone, and waits in `poll_ready` when the limit is reached; use it as the primary or
//! as a fallback tier.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_inference::client::Backend;
//! use tower_inference::openai::{ChatCompletionRequest, ChatMessage};
//! use tower_inference::retry::RetryLayer;
//! use tower_inference::breaker::BreakerLayer;
//!
//! let vllm = Backend::builder("http://localhost:8000/v1")
//!     .api_key("token-abc123")
//!     .response_timeout(Duration::from_secs(30))
//!     .build()?;
//! let model = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().build())
//!     .layer(BreakerLayer::builder().build())
//!     .service(vllm.chat());
//! let answer = model
//!     .oneshot(ChatCompletionRequest::new("meta-llama/Llama-3.1-8B-Instruct", [ChatMessage::user("Hello!")]))
//!     .await?;
//! println!("{}", answer.choices[0].message.text());
//! # Ok(())
//! # }
//! ```
//!
//! # How failures are mapped
//!
//! The body of an error answer is read in whichever shape the server uses ([`ErrorFields`]
//! lists them); then [`DefaultMapper`] decides, first match wins:
//!
//! 1. A body in this crate's [`ErrorBody`](crate::ErrorBody) shape is the error it
//!    describes, figures included ([`ErrorBody::to_error`](crate::ErrorBody::to_error)); an
//!    OpenAI-shaped body whose `code` is one of [`ErrorKind`](crate::ErrorKind)'s codes is
//!    that kind (a gateway built with this crate, or OpenAI's `context_length_exceeded`).
//!    So errors survive a hop between two stacks.
//! 2. Otherwise the status, refined by the body's message, type or code:
//!
//! | status | server, condition | kind | retried |
//! |---|---|---|---|
//! | 400, 413, 422 | the prompt is over the context window, figures read from the message: vLLM 400 "This model's maximum context length is 4096 tokens. However, your prompt contains 5000 input tokens…", TGI 422 "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` tokens…", OpenAI `context_length_exceeded` | `ContextLengthExceeded` | no (caller's fault) |
//! | 400, 413, 422, other 4xx | an invalid request (vLLM 400 validation, TGI 422 validation, Triton 400 "Unknown model", Ollama 400, or a context error without figures, such as Ollama's "the prompt is longer than the context length"); the server's message is kept as the reason | `InvalidInput` | no (caller's fault) |
//! | 400 | Triton's native API before 24.01: "Exceeds maximum queue size" | `Overloaded` | yes |
//! | 404 | a model the server does not have (vLLM "The model `x` does not exist", Ollama "model 'x' not found") | `InvalidInput` | no |
//! | 404 | anything else (a wrong base URL) | `Infrastructure` | yes |
//! | 401, 403, 407 | the server refused the backend's credentials (not the caller's fault) | `Infrastructure` | yes |
//! | 408 | request timeout | `Timeout` | yes |
//! | 409 | conflict (OpenAI's SDKs retry it) | `Infrastructure` | yes |
//! | 424 | TGI: "Request failed during generation" (with "out of memory" in it: `OutOfMemory`) | `ModelFailure { Generation }` | no |
//! | 429 | TGI "Model is overloaded" (`--max-concurrent-requests` full), OpenAI's rate limit | `Overloaded` | yes |
//! | 499 | Ollama: "request canceled" | `Infrastructure` | yes |
//! | 5xx | "out of memory" in the message (CUDA OOM) | `OutOfMemory` | no (the retry layer's OOM retry asks for less) |
//! | 5xx | "loading", "not ready": weights still loading | `ModelNotReady` | yes |
//! | 5xx | the server is full: vLLM 503 "The engine is currently busy…" (`--max-num-queued-reqs`) or "…prefill token backlog limit", Triton 503 (native) or 500 (OpenAI frontend) "Exceeds maximum queue size", Ollama 503 "server busy… maximum pending requests exceeded" | `Overloaded` | yes |
//! | 504 | gateway timeout | `Timeout` | yes |
//! | 507 | insufficient storage | `OutOfMemory` | no |
//! | other 5xx | vLLM 500 "The server had an error while processing your request." (the engine died; older releases send no body), vLLM 503 "Generation is paused", TGI 500 "Incomplete generation", a proxy's 502 | `Infrastructure` | yes |
//!
//! 3. `x-should-retry` overrides the retryability of a kind read from the status (step 2;
//!    a kind named by the body in step 1 is exact) as OpenAI's SDKs do: `false` on a retryable
//!    kind makes it `CircuitOpen` (the server says a retry will not help: not retried,
//!    counted by a breaker, answered by a fallback), `true` on a kind that is not retryable
//!    (out of memory aside) makes it `Infrastructure`.
//!
//! The retry hint is `retry-after-ms` (OpenAI's, in milliseconds) if present, otherwise
//! `Retry-After` in seconds or as an HTTP date; it reaches `Overloaded`, `ModelNotReady`
//! and `CircuitOpen`, and through them the retry layer and the caller's `Retry-After`.
//! vLLM, TGI, Ollama and Triton send neither (as of their 2026 sources); the retry layer's
//! backoff then decides.
//!
//! Body shapes and messages were checked against the servers' sources: vLLM 0.33, TGI 3.3,
//! Ollama and Triton 2.73 (August 2026), OpenAI's Python SDK 3.3. A server's message may
//! change between releases; the status decides when it does not match.
//!
//! Transport failures:
//!
//! | failure | kind |
//! |---|---|
//! | connection refused, reset, DNS or TLS failure, connect timeout | `Infrastructure` |
//! | no response headers within `response_timeout` | `Timeout` (after `response_timeout`) |
//! | the body broke off | `Infrastructure` |
//! | the body did not finish within `body_timeout` | `Timeout` |
//! | a 2xx body that is not the expected JSON, or longer than `max_response_bytes` | `ModelFailure { InvalidOutput }` |
//! | a request with `"stream": true` (not sent) | `InvalidInput` |
//!
//! An `Infrastructure` error keeps its cause (the transport error, or [`UpstreamStatus`]
//! with the server's status and message) as its `source()`, for logs; the error's message,
//! and any body a server built with this crate answers with, never shows it. An
//! `InvalidInput` keeps the server's message (cut to 300 bytes), which servers write for
//! the caller.
//!
//! To change the mapping, wrap [`DefaultMapper`] in a [`MapError`] of your own and pass it
//! to [`OpenAiClient::map_errors`].
//!
//! # Provenance across hops
//!
//! When the server is itself a gateway that reports provenance (the `x-inference-*`
//! headers of [`server::write_provenance`](crate::server::write_provenance)), the answer's
//! [`Provenance::upstream`](crate::Provenance::upstream) holds what it said (its tier,
//! quality, fallback reasons, attempts, cache age), and a gateway in front writes it on as
//! `x-inference-upstream-*` headers.
//!
//! [hyper-util]: https://docs.rs/hyper-util

mod backend;
mod map;
mod route;
mod service;

pub use self::backend::{
    Backend, BackendBuilder, BuildError, DEFAULT_BODY_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RESPONSE_TIMEOUT,
};
pub use self::map::{DefaultMapper, ErrorFields, MapError, UpstreamError, UpstreamStatus};
pub use self::route::Route;
pub use self::service::{OpenAiClient, OpenAiClientFuture};
