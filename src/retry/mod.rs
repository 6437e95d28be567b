//! Retries that are worth it, and never a retry storm.
//!
//! [`RetryLayer`] retries a failed call only when its [`Outcome`](crate::Outcome), from
//! [`Classify`](crate::Classify), is worth retrying: a timeout, an overload, a model still
//! loading, an infrastructure failure, and (with [`RetryBuilder::oom_retry`]) an out-of-memory
//! failure, once, with a smaller request. The caller's faults are never retried, nor is an
//! open circuit (a fallback above answers that).
//!
//! - **Attempts and time**: at most `max_attempts` calls in all, separated by
//!   exponential [`Backoff`] with full jitter. An optional deadline bounds the whole call from
//!   its first attempt, the attempt in flight included (as Envoy's route timeout includes
//!   retries): when it passes, the call ends with `InferenceError::Timeout`, and no retry
//!   starts whose delay would end past it.
//! - **Retry-After**: a failure's retry-after (from `Overloaded` or an HTTP `Retry-After`)
//!   replaces the computed delay when larger; above `max_retry_after` the call is not retried.
//! - **Budget**: every first attempt deposits into a [`RetryBudget`] shared by all clones and
//!   every retry withdraws from it; when it is empty, retries stop with the last error and a
//!   `BudgetExhausted` event. An outage therefore adds at most the budget's share of load.
//!   A request cancelled while it waits to retry gives its withdrawal back: only retries
//!   that start are paid for.
//! - **Provenance**: an answer that took more than one attempt says how many (and whether an
//!   out-of-memory retry shrank its request); events `RetryScheduled` and `BudgetExhausted`.
//!
//! Requests must be `Clone` (each attempt sends a copy); responses must implement
//! [`Annotate`](crate::Annotate).
//!
//! | setting | default |
//! |---|---|
//! | `max_attempts` | 3 (the first included) |
//! | `backoff` | 100 ms × 2ⁿ, capped at 10 s, full jitter |
//! | `deadline` | none |
//! | `max_retry_after` | 30 s |
//! | `budget` | 10 s window, 10 retries a second, 20 % of requests |
//! | out-of-memory retry | off |
//!
//! # tower's `Retry`, and why this layer does not use it
//!
//! The decisions are also a [`tower::retry::Policy`] ([`RetryPolicy`], from
//! [`RetryBuilder::build_policy`]) for use with `tower::retry::Retry`, and [`RetryBudget`]
//! implements tower's `Budget`. `RetryLayer` itself drives the same decisions with its own
//! small service, for two reasons. tower's `Retry` clones its policy, and so the `Arc` of
//! shared state it holds, for every request: with two threads that reference count is one
//! cache line both write on every call. And it clones the wrapped service for every request,
//! to keep one for the retries; `RetryLayer` calls the service the caller made ready and
//! clones one only for a retry (from a clone it keeps), so an answered call clones no service.
//! Through the whole stack the wrapped service is the breaker and a metrics stage, whose
//! clones cost reference counts of their own. `benches/retry.rs` measures both, time per
//! successful call in front of a service that answers at once (criterion means, one run,
//! 2-core x86-64 VM):
//!
//! | | 1 thread | 2 threads sharing one layer |
//! |---|---|---|
//! | bare service | 16.3 ns | 15.5 ns |
//! | `RetryLayer` (this crate) | 35.9 ns | 32.2 ns |
//! | tower `Retry` with [`RetryPolicy`] | 42.8 ns | 163.6 ns |
//! | tower `Retry` with `TpsBudget` | 67.6 ns | 325.4 ns |
//! | `tower-resilience` 0.13 retry | 88.8 ns | 381.2 ns |
//!
//! The budget's deposit is what every successful call pays for. `TpsBudget` takes a mutex
//! for it; [`RetryBudget`] writes a per-thread stripe (with a plain load and store while the
//! thread owns it) and reads the clock once every 64 deposits. Of the layer's own 20 ns,
//! about 12 are the reference count of the state its future holds (so that a retry can
//! find the service and budget even when the caller dropped its service, as `oneshot`
//! does).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_inference::retry::RetryLayer;
//! use tower_inference::{Annotate, InferenceError, Served};
//!
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let flaky = service_fn(move |prompt: &'static str| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n == 0 {
//!             Err(InferenceError::timeout(std::time::Duration::from_secs(30)))
//!         } else {
//!             Ok(Served::new(prompt.len()))
//!         }
//!     }
//! });
//! let svc = ServiceBuilder::new().layer(RetryLayer::new()).service(flaky);
//! let answer = svc.oneshot("hello").await.unwrap();
//! assert_eq!(*answer, 5);
//! assert_eq!(answer.provenance.attempts, 2);
//! # }
//! ```

mod backoff;
mod budget;
mod future;
mod layer;
mod policy;
mod service;

pub use self::backoff::Backoff;
pub use self::budget::RetryBudget;
pub use self::future::ResponseFuture;
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::policy::{NoOomRetry, OOM_WARNING, OomRetry, RetryPolicy, ShrinkOnOom};
pub use self::service::Retry;
