//! Streamed answers: resilience for token streams.
//!
//! A streaming model answers with a [`TokenStream`]: [`Chunk`]s (usually one token each)
//! and a [`Provenance`](crate::Provenance) known from the start. Streams fail in three
//! phases: **before the first token** (the model is overloaded, out of memory, slow to
//! start), **mid-stream** (it dies after some tokens) and as a **stall** (it stops sending).
//! Once a token has reached the caller, nothing can silently replace the answer: a retry or
//! a fallback would duplicate or contradict text the caller already has.
//!
//! So the rule is one line: **a streaming service's response future resolves at the first
//! chunk.** Every failure before it is the call's failure, which every layer already
//! handles; every failure after it is an `Err` item that ends the stream. The mock GPU's
//! streaming mode ([`MockGpu::streaming`](crate::mock::MockGpu::streaming)) resolves that
//! way; [`StreamTimeoutLayer`] right above any other source pulls its first chunk (and adds
//! the first-token and stall timeouts).
//!
//! | layer | before the first chunk | after it (mid-stream, stall) | caller hangs up |
//! |---|---|---|---|
//! | [`StreamTimeoutLayer`] | `first_token` timeout: `Timeout` (phase `first_token`) | `stall` timeout: the stream ends with `Timeout` (phase `stall`) | – |
//! | tower's `timeout` | bounds the wait for the first chunk (its future) | does not apply | – |
//! | [`retry`](crate::retry) | retries what is retryable, within the budget | never: the error ends the stream | – |
//! | [`fallback`](crate::fallback) | moves to the next tier, which answers with its own stream | never: the error ends the stream | – |
//! | [`breaker`](crate::breaker) | counts the failure at once | counts the stream when it ends: finished is a success, a failure (stall included) is a failure; a probe holds its slot until then | neither a success nor a failure; a probe's slot is freed |
//! | [`degrade`](crate::degrade) | scales the request, as for any call | – | – |
//! | [`metrics`](crate::metrics) | counts the failure; time to first token | inter-token latency; tokens per second; streams ended by how (finished, failed, stalled) | counted as cancelled |
//!
//! The breaker and the metrics layer recognise a `TokenStream` response by its type (the
//! check costs nothing for any other response type), so they need no configuration for
//! streams. A response type that wraps a `TokenStream` is counted when it is answered, like
//! any other response.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_inference::mock::{InferenceRequest, MockGpu, StreamFault};
//! use tower_inference::stream::StreamTimeoutLayer;
//! use tower_inference::{InferenceError, TimeoutPhase};
//!
//! let gpu = MockGpu::builder().base_latency(Duration::from_millis(50)).build();
//! let svc = ServiceBuilder::new()
//!     .layer(StreamTimeoutLayer::new().first_token(Duration::from_secs(1)).stall(Duration::from_millis(200)))
//!     .service(gpu.streaming());
//!
//! // A healthy stream: the first token after 50 ms, then one per millisecond.
//! let answer = svc.clone().oneshot(InferenceRequest::new("Hello").max_tokens(8)).await.unwrap();
//! assert_eq!(answer.text().await.unwrap().split_whitespace().count(), 8);
//!
//! // A model that stalls after 3 tokens: the stream ends with a stall timeout.
//! gpu.handle().set_stream_fault(Some(StreamFault::StallAfter(3)));
//! let mut answer = svc.oneshot(InferenceRequest::new("Hello").max_tokens(8)).await.unwrap();
//! for _ in 0..3 {
//!     answer.next().await.unwrap().unwrap();
//! }
//! let err = answer.next().await.unwrap().unwrap_err();
//! assert!(matches!(err, InferenceError::Timeout { phase: TimeoutPhase::Stall, .. }));
//! assert!(answer.next().await.is_none());
//! # }
//! ```

mod future;
mod layer;
mod token;

pub use self::future::ResponseFuture;
pub use self::layer::{StreamTimeout, StreamTimeoutLayer};
pub use self::token::{Chunk, StreamEnd, TokenStream};

pub(crate) use self::token::{Watch, as_stream};
