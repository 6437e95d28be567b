//! A three-state circuit breaker: stop calling a failing model so it can recover.
//!
//! While the backend is healthy the breaker is **closed**: calls pass and their outcomes
//! fill a sliding window. When, over that window and with at least `minimum_calls`
//! recorded, the failure rate reaches `failure_rate_threshold` (or the slow-call rate reaches
//! `slow_call_rate_threshold`, a call slower than `slow_call_duration` being slow even if it
//! succeeded), the breaker **opens**: every call fails at once with
//! [`InferenceError::CircuitOpen`](crate::InferenceError::CircuitOpen) and its `retry_in`,
//! so a fallback above it answers immediately and the model gets room to recover.
//!
//! After `open_duration` (checked lazily on the next call; no background task) the breaker is
//! **half-open**: at most `half_open_probes` probe calls pass, the rest fail fast. When that
//! many probes succeed it closes with an empty window; any probe failure re-opens it, for an
//! open duration that can grow on each consecutive re-opening (`open_duration_growth`).
//!
//! Only the backend's faults count. Results are classified through
//! [`Classify`](crate::Classify): the caller's faults (invalid input, context too long) are
//! not recorded, nor are calls whose future was dropped before it completed; a dropped
//! probe gives its place back.
//!
//! | setting | default |
//! |---|---|
//! | window | the last 100 calls (`count_window`), or a time window (`time_window`) |
//! | `minimum_calls` | 20 |
//! | `failure_rate_threshold` | 0.5 |
//! | `slow_call_duration` | off |
//! | `slow_call_rate_threshold` | 1.0 |
//! | `open_duration` | 30 s, no growth |
//! | `half_open_probes` | 3 |
//!
//! # tower semantics
//!
//! Closed, and half-open with a free probe place, `poll_ready` drives the inner service (a
//! half-open breaker reserves its probe place in `poll_ready`). When the call will be refused,
//! `poll_ready` is ready at once and `call` fails without touching the inner service. The
//! breaker creates its error through `E: From<InferenceError>`, so it works with
//! `InferenceError` and with [`tower::BoxError`] stacks.
//!
//! # Cost
//!
//! The closed path takes no lock and, while the window is full of successes, writes no shared
//! memory at all: admitting a call is one atomic load and recording a success is three. Each
//! service clone keeps its own `Arc` for its futures, so clones on different threads never
//! contend on a reference count. Transitions take a mutex; they happen a few times per
//! incident.
//!
//! Measured by `benches/breaker.rs` (criterion, 2-core x86-64 VM), time per call through the
//! closed breaker in front of a service that answers at once, next to `tower-resilience`
//! 0.13's circuit breaker on the same service:
//!
//! | | 1 thread | 2 threads sharing one breaker |
//! |---|---|---|
//! | bare service | 15.7 ns | 15.3 ns |
//! | `tower-inference` breaker | 57.3 ns (+41.6 ns) | 54.1 ns (+38.8 ns) |
//! | `tower-resilience` 0.13 breaker | 352.9 ns (+337.2 ns) | 81.7 µs |
//!
//! The overhead is about an eighth of `tower-resilience`'s on one thread, and two threads
//! sharing one breaker see no more time per call than one thread (an earlier run measured
//! the same as with a breaker per thread); `tower-resilience` takes an async mutex on every
//! call.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_inference::breaker::BreakerLayer;
//! use tower_inference::{CircuitState, ErrorKind, InferenceError};
//!
//! let breaker = BreakerLayer::builder()
//!     .name("llama-70b")
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(0.5)
//!     .open_duration(Duration::from_secs(10))
//!     .half_open_probes(1)
//!     .build();
//! let handle = breaker.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err(InferenceError::infrastructure()) } else { Ok("ok") }
//!     }));
//!
//! for _ in 0..4 {
//!     let _ = svc.clone().oneshot(true).await;
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//! let err = svc.clone().oneshot(false).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::CircuitOpen);
//!
//! tokio::time::advance(Duration::from_secs(10)).await;
//! assert_eq!(svc.clone().oneshot(false).await.unwrap(), "ok"); // the probe
//! assert_eq!(handle.state(), CircuitState::Closed);
//! # }
//! ```

mod config;
mod future;
mod keyed;
mod layer;
mod service;
mod state;
mod window;

pub(crate) use self::config::DEFAULT_NAME;
pub use self::config::{BreakerBuilder, ProbeRule};
pub use self::future::ResponseFuture;
pub use self::keyed::{KeyedBreaker, KeyedBreakerLayer};
pub use self::layer::{BreakerHandle, BreakerLayer};
pub use self::service::Breaker;
pub use self::state::BreakerSnapshot;
