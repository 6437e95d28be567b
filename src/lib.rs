//! Tower middleware that keeps AI-inference services answering when models fail.
//!
//! Inference backends fail in ways ordinary services do not: a GPU runs out of memory, a
//! model times out under load, a context is too long, a server is still loading its weights.
//! `tower-inference` gives a tower application (hyper, axum, tonic or a plain `Service`)
//! layers to stack with `ServiceBuilder` in front of such a model:
//!
//! ```text
//! request ─▶ metrics ─▶ fallback(tiers) ─▶ degrade ─▶ retry(budget) ─▶ breaker ─▶ timeout ─▶ GPU model service
//!                          │  on failure, breaker open, or exhausted retries:
//!                          ├─▶ tier 2: lighter model (its own breaker)
//!                          ├─▶ tier 3: rules
//!                          ├─▶ tier 4: last good answer from the cache
//!                          └─▶ tier 5: static default
//! ```
//!
//! Every layer speaks the same few shared abstractions:
//!
//! - [`InferenceError`] and [`ErrorKind`]: the taxonomy of failures, each kind with a stable
//!   code, an HTTP status, whether it is retryable and whether it is the caller's fault;
//! - [`Classify`] and [`Outcome`]: what a call's result means, so layers never match on a
//!   concrete error type ([`DefaultClassifier`] handles [`InferenceError`] and
//!   [`tower::BoxError`], `HttpClassifier` handles `http::Response`s);
//! - [`Provenance`] and [`Annotate`]: which tier answered, at what quality, how degraded;
//! - [`Event`] and [`EventSink`]: what layers did, for metrics and logs (also `tracing`);
//! - [`Degrade`] and [`GenerationParams`]: how a request is made cheaper.
//!
//! The layers:
//!
//! - [`breaker`]: a three-state circuit breaker (closed, open, half-open with a limited number
//!   of probes) over a count or time window, lock-free on the closed path, optionally one
//!   breaker per model key.
//! - [`retry`]: retries only what is worth retrying, with exponential backoff and full jitter,
//!   Retry-After, a deadline, a lock-free retry budget shared by all clones, and an
//!   out-of-memory retry with a smaller request.
//! - [`fallback`]: falls back through tiers (a lighter model, rules, the last good answer
//!   from a cache in memory or Redis, a static default) and says which tier answered.
//! - [`degrade`]: as load rises (in-flight requests, latency, GPU probes), scales requests
//!   down (tokens, steps, batch, resolution) through levels with hysteresis, and says so.
//! - [`metrics`]: error counts per kind, windowed rates, spike detection, bounded top error
//!   patterns, latency percentiles and the tier distribution, as Prometheus text.
//! - [`health`]: live, ready and deep-canary health checks, over HTTP with feature `http`.
//! - [`stream`]: streamed answers ([`stream::TokenStream`]): the call resolves at the first
//!   token, so retry and fallback act only before it; first-token and stall timeouts; the
//!   breaker and metrics count a stream when it ends.
//!
//! [`stack::InferenceStack`] composes them in the order above, with one event sink and one
//! primary tier name for every layer; composing them by hand with `ServiceBuilder` works as
//! well (the [`stack`] docs show both).
//!
//! Layers that must create an error ask for `E: From<InferenceError>`, which both
//! [`InferenceError`] and [`tower::BoxError`] satisfy, so they compose with tower's own
//! `timeout`, `load_shed` and `limit` layers. All timing goes through `tokio::time`, so tests
//! run on paused time.
//!
//! # Example
//!
//! tower's timeout in front of the [`mock::MockGpu`] (feature `mock`), with every failure
//! classified into the taxonomy:
//!
//! ```
//! # #[cfg(feature = "mock")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tower_inference::mock::{InferenceRequest, MockGpu};
//! use tower_inference::{Classify, DefaultClassifier, ErrorKind};
//!
//! let gpu = MockGpu::builder().max_context(8).build();
//! let svc = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(5))
//!     .service(gpu);
//!
//! let ok = svc.clone().oneshot(InferenceRequest::new("hello there").max_tokens(4)).await;
//! assert_eq!(ok.unwrap().tokens, 4);
//!
//! let too_long = InferenceRequest::new("one two three four five six seven eight nine");
//! let err: BoxError = svc.oneshot(too_long).await.unwrap_err();
//! let outcome = Classify::<(), _>::classify(&DefaultClassifier, Err(&err));
//! assert_eq!(outcome.kind(), Some(ErrorKind::ContextLengthExceeded));
//! assert!(outcome.is_caller_fault());
//! # }
//! # #[cfg(not(feature = "mock"))]
//! # fn main() {}
//! ```
//!
//! # Configuration values
//!
//! Every builder follows one rule: it never fails and never panics, at build time or later at
//! call time, whatever values it is given. A value outside a setting's documented range is
//! clamped into it, and a value that means nothing for the setting (NaN, a zero timeout) is
//! replaced by the setting's default; each setting documents its range and what it does with
//! such values. Every adjustment is logged once, when the setting is given, with
//! `tracing::warn!` naming the setting, the value given and the value used.
//!
//! # Features
//!
//! - `mock`: [`mock::MockGpu`], a realistic GPU-backed model service, and
//!   [`mock::ChaosLayer`], fault injection for any service.
//! - `http`: `HttpClassifier`, [`Annotate`] for `http::Response`,
//!   `health::HealthService`, and the `server` module: errors as HTTP responses (in this
//!   crate's shape or OpenAI's), provenance as headers, correlation ids, and
//!   `server::JsonEndpoint`, which serves a typed stack over HTTP.
//! - `openai`: `openai`, OpenAI-compatible request and response types for
//!   `/v1/chat/completions` and `/v1/completions` that the stack can degrade and annotate
//!   (with `mock`, the mock GPU serves them too).
//! - `redis`: `fallback::RedisStore`, a cache of last-good answers shared by replicas.
//! - `prometheus-client`: [`metrics::ErrorMetrics`] as a collector of the
//!   `prometheus-client` crate's registry, so one `/metrics` serves an application's own
//!   metrics and the crate's.
//!
//! # Reuse of tower
//!
//! The crate builds on tower rather than beside it: classifiers understand tower's
//! `timeout::error::Elapsed` and `load_shed::error::Overloaded`, the mock's backpressure
//! mode reserves capacity in `poll_ready` the way `tower::limit::ConcurrencyLimit` does, the
//! retry decisions are also a `tower::retry::Policy` and the retry budget a tower `Budget`.
//! Where this crate replaces a tower part, a benchmark says why: [`retry::RetryLayer`] drives
//! its policy with its own service because tower's `Retry` clones shared state per request
//! (2.2 times slower per call on two threads, `benches/retry.rs`), and its backoff adds full
//! jitter and any growth factor, which tower's `ExponentialBackoff` does not offer.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod breaker;
pub mod classify;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
mod clock;
pub mod degrade;
pub mod error;
pub mod event;
pub mod fallback;
pub mod health;
pub mod metrics;
mod name;
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub mod openai;
pub mod params;
pub mod provenance;
pub mod retry;
mod ring;
mod rng;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod server;
mod setting;
pub mod stack;
pub mod stream;
mod stripe;
mod tally;

#[cfg(feature = "mock")]
pub mod mock;

#[cfg(feature = "http")]
pub use crate::classify::HttpClassifier;
pub use crate::classify::{Classify, ClassifyError, DefaultClassifier, Outcome};
pub use crate::error::{
    ErrorBody, ErrorKind, InferenceError, ModelFailure, TierFailure, TimeoutPhase,
};
pub use crate::event::{CircuitState, Emitter, Event, EventSink, NoopSink};
pub use crate::params::{Degrade, GenerationParams, Scale};
pub use crate::provenance::{
    Annotate, MAX_FAILED_TIERS, PRIMARY_TIER, Provenance, Quality, Served,
};
