//! Graceful degradation: as load rises, make requests cheaper instead of letting the GPU fall
//! over, and tell the caller.
//!
//! [`DegradeLayer`] reads a load in `0..=1` from its signals, combined by their maximum:
//!
//! - **in flight**: requests through the layer against a capacity (counted by the layer
//!   itself, with one atomic counter);
//! - **latency**: an exponentially weighted moving average of call latency against a target;
//! - **probes**: any closure, such as the mock GPU's memory or utilisation from its handle or
//!   a real GPU probe, read at most once per configured interval, never on every call.
//!
//! The load picks a [`Level`]. By default `full` below 0.7, `reduced` from 0.7 (quality 0.7,
//! speed 1.5) and `minimal` from 0.9 (quality 0.4, speed 3.0). **Hysteresis**: the layer steps
//! up as soon as a threshold is crossed, and steps down only when the load has stayed below
//! the threshold minus a margin (default 0.1) for a dwell time (default 10 s), so a load that
//! oscillates around a threshold changes the level at most once per dwell time. A quiet spell
//! counts as time below: after a dwell with no call, the first call is served at the level the
//! load now warrants, not at the level the last spike left. (A latency signal's moving average
//! learns only from calls, so it still needs a few calls to come down after the spell.)
//!
//! At a level other than the lowest, each request is scaled with [`Degrade`](crate::Degrade)
//! (for [`GenerationParams`](crate::GenerationParams): fewer tokens and steps, smaller batches,
//! lower resolution, never below their floors). Requests that do not implement `Degrade`
//! cannot use this layer: that is a compile error, not a silent no-op. Every answer's
//! [`Provenance`](crate::Provenance) names the level it was served at, and a degraded one
//! carries [`DEGRADED_WARNING`]. Level changes are reported as `LevelChanged` events; a
//! [`DegradeHandle`] reads the level and load, and forces a level for drills.
//!
//! | setting | default |
//! |---|---|
//! | signals | none (configure at least one) |
//! | levels | full < 0.7 ≤ reduced < 0.9 ≤ minimal |
//! | hysteresis | margin 0.1, dwell 10 s |
//! | latency EWMA weight | 0.2 |
//!
//! # Cost
//!
//! The in-flight count is striped per thread: a call writes only its own thread's cache line
//! (with a plain load and store while the thread owns its stripe, as the first 15 threads
//! do; threads beyond them count on a shared total, atomically). A call sees the shared total
//! plus its own thread's count. A thread adds its count to the total only once the count has
//! moved by its share of `capacity / 16` (shared equally between the threads that own a
//! stripe), so the count a call sees is within 1/16 of the capacity of the exact one, however
//! fast or slow calls come. The handle's [`in_flight`](DegradeHandle::in_flight) reads the
//! total and every stripe: it is exact when no call is entering or leaving.
//!
//! Below a capacity of 16 (or 16 × the threads counting), a thread holds nothing back: every
//! call adds to the shared total and leaves from it, so threads calling at once contend for
//! its cache line. That is the price of an exact count where one call is a large share of
//! the capacity, paid only at call rates far beyond what so small a backend serves.
//!
//! `benches/degrade.rs` (criterion, 2-core x86-64 VM), time per call in front of a service
//! that answers at once:
//!
//! | | 1 thread | 2 threads sharing one layer |
//! |---|---|---|
//! | bare service | 22.8 ns | 21.9 ns |
//! | full level, capacity 1 000 | 48.3 ns | 45.9 ns |
//! | degraded (`reduced`), capacity 1 000 | 74.4 ns | 71.1 ns |
//! | full level, capacity 64 | 47.8 ns | 46.3 ns |
//! | full level, capacity 16 | 57.3 ns | 281.3 ns |
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_inference::degrade::DegradeLayer;
//! use tower_inference::{GenerationParams, InferenceError, Served};
//!
//! let layer = DegradeLayer::builder().in_flight_capacity(16).build();
//! let handle = layer.handle();
//! let model = service_fn(|p: GenerationParams| async move {
//!     Ok::<_, InferenceError>(Served::new(p.max_tokens))
//! });
//! let svc = ServiceBuilder::new().layer(layer).service(model);
//!
//! let answer = svc.clone().oneshot(GenerationParams::new(500)).await.unwrap();
//! assert_eq!(*answer, 500);
//! assert_eq!(answer.provenance.degraded.as_deref(), Some("full"));
//!
//! handle.force("reduced").unwrap(); // a drill
//! let answer = svc.oneshot(GenerationParams::new(500)).await.unwrap();
//! assert_eq!(*answer, 350);
//! assert_eq!(answer.provenance.degraded.as_deref(), Some("reduced"));
//! # }
//! ```

mod future;
mod layer;
mod level;
mod service;
mod signal;

pub use self::future::{DEGRADED_WARNING, ResponseFuture};
pub use self::layer::{DegradeBuilder, DegradeHandle, DegradeLayer};
pub use self::level::Level;
pub use self::service::Degrade;
