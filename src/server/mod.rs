//! What a server in front of the stack needs (feature `http`): errors as HTTP responses,
//! provenance as response headers, and correlation ids.
//!
//! The three layers go around the stack (or any `Service` of `http::Request`s answering
//! `http::Response`s), outermost first:
//!
//! ```text
//! CorrelationLayer ─▶ ErrorResponseLayer ─▶ ProvenanceHeadersLayer ─▶ handler (+ the stack)
//! ```
//!
//! - [`CorrelationLayer`] gives each request a [`CorrelationId`] (the caller's
//!   `x-request-id` or `x-correlation-id`, or a new one), in the request's extensions, a
//!   `tracing` span around the call and the response's `x-request-id` header.
//! - [`ErrorResponseLayer`] answers every error with [`error_response`]: the kind's status,
//!   a JSON body in this crate's [`ErrorBody`](crate::ErrorBody) shape or OpenAI's
//!   ([`ErrorShape`]), `Retry-After` and `retry-after-ms` where known, `x-should-retry`, and
//!   the correlation id. It understands `InferenceError`s and `tower::BoxError`s holding one
//!   or tower's `Elapsed` / `Overloaded`; the text of any other error (an I/O error with an
//!   address, a client's message with a key) never reaches a body, only the logs.
//! - [`ProvenanceHeadersLayer`] writes the answer's [`Provenance`](crate::Provenance) as
//!   `x-inference-*` headers ([`write_provenance`] lists them).
//!
//! [`JsonEndpoint`] serves a typed service (such as the stack over the OpenAI types of the
//! `openai` feature) as the handler: it reads and limits the body, parses the JSON, answers
//! with JSON and provenance headers, and fails with a [`RequestError`] that the error layer
//! answers like any other error (404, 405, 413 and 400 as JSON with the correlation id).
//!
//! **Where tower-http fits.** Its `TraceLayer` goes well inside [`CorrelationLayer`] (its
//! spans then nest in the request's span; `examples/gateway.rs` does this), and its
//! compression, CORS and timeout layers compose as usual. Two of its parts are not reused,
//! for a reason: `SetRequestIdLayer` / `PropagateRequestIdLayer` handle one header, where
//! [`CorrelationLayer`] also takes `x-correlation-id`, refuses unsafe ids and opens the
//! `tracing` span; and `RequestBodyLimitLayer` answers 413 with a plain-text body, where
//! [`JsonEndpoint`]'s limit is an error like any other, with the same JSON body and id.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_inference::InferenceError;
//! use tower_inference::server::{
//!     CorrelationLayer, ErrorResponseLayer, ErrorShape, ProvenanceHeadersLayer,
//! };
//!
//! let app = ServiceBuilder::new()
//!     .layer(CorrelationLayer::new())
//!     .layer(ErrorResponseLayer::new(ErrorShape::OpenAi))
//!     .layer(ProvenanceHeadersLayer::new())
//!     .service(service_fn(|_: http::Request<String>| async {
//!         Err::<http::Response<String>, _>(InferenceError::Overloaded {
//!             queue_depth: 12,
//!             retry_after: Some(std::time::Duration::from_millis(1_500)),
//!         })
//!     }));
//! let req = http::Request::builder().header("x-request-id", "req-7").body(String::new()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "2");
//! assert_eq!(res.headers()["retry-after-ms"], "1500");
//! assert_eq!(res.headers()["x-request-id"], "req-7");
//! assert!(res.body().contains(r#""correlation_id":"req-7""#));
//! # }
//! ```

mod correlation;
mod endpoint;
mod errors;
mod headers;
mod sse;

pub use self::correlation::{
    CORRELATION_ID, Correlation, CorrelationFuture, CorrelationId, CorrelationLayer, REQUEST_ID,
};
#[cfg(feature = "client")]
pub(crate) use self::endpoint::shorten;
pub use self::endpoint::{DEFAULT_BODY_LIMIT, JsonEndpoint, JsonEndpointFuture, RequestError};
pub use self::errors::{
    ErrorResponse, ErrorResponseFuture, ErrorResponseLayer, ErrorShape, RETRY_AFTER_MS,
    SHOULD_RETRY, error_body, error_response,
};
pub use self::headers::{
    ATTEMPTS, CACHE_AGE_MS, DEGRADED, FALLBACK, FALLBACK_REASONS, ProvenanceHeaders,
    ProvenanceHeadersFuture, ProvenanceHeadersLayer, QUALITY, TIER, UPSTREAM_PREFIX,
    read_provenance, write_provenance,
};
#[cfg(feature = "openai")]
pub use self::sse::OpenAiSse;
pub use self::sse::{EndpointBody, SseFormat, sse_response};
