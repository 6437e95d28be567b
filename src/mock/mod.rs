//! A realistic stand-in for a GPU-backed model, and a fault-injection layer (feature `mock`).
//!
//! [`MockGpu`] is a `tower::Service<InferenceRequest>` that behaves like a model server, so
//! examples, tests and benchmarks can exercise the resilience layers without an accelerator.
//! Everything runs on `tokio::time` and a seeded generator, so a test on paused time sees
//! the same latencies and faults on every run.
//!
//! What it models:
//!
//! - **Latency**: base + per-token cost × generated tokens × batch size.
//! - **Device memory**: a capacity, the weights' share, and a per-request cost from the
//!   parameters (KV cache per token, memory per megapixel). A request that does not fit fails
//!   with `OutOfMemory { used_mib, available_mib }`; one that fits exactly succeeds.
//! - **Context window**: a prompt longer than `max_context` fails with
//!   `ContextLengthExceeded`. Generation stops where the context ends.
//! - **Slots and queue**: a fixed number of requests execute at once and a bounded number
//!   wait; past that a call is refused with `Overloaded { queue_depth, retry_after }` (or, with
//!   [`MockGpuBuilder::backpressure`], `poll_ready` stays pending until a place frees up).
//! - **Warm-up**: `ModelNotReady` until the load time has passed, at start and after a revive.
//! - **Faults**: a failure probability (`ModelFailure`, NaN output) and a hang probability
//!   (the call never answers and holds its slot and memory until dropped, so timeouts are
//!   testable).
//! - **Control**: a [`MockGpuHandle`] shared by all clones kills and revives the backend,
//!   slows it down (a brownout), changes fault rates at run time and reads its stats (calls,
//!   in flight, queued, memory, out-of-memory failures, utilisation).
//!
//! Input is checked before it is queued: an empty prompt or zero parameters are
//! `InvalidInput`, and huge parameters saturate into an out-of-memory answer, never a panic.
//!
//! [`ChaosLayer`] injects chosen errors and extra latency into any service.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_inference::mock::{InferenceRequest, MockGpu};
//!
//! let gpu = MockGpu::builder()
//!     .base_latency(Duration::from_millis(10))
//!     .per_token_latency(Duration::from_millis(2))
//!     .build();
//!
//! let started = tokio::time::Instant::now();
//! let completion = gpu.oneshot(InferenceRequest::new("write a haiku").max_tokens(17)).await.unwrap();
//! assert_eq!(completion.tokens, 17);
//! assert_eq!(started.elapsed(), Duration::from_millis(10 + 2 * 17));
//! # }
//! ```

mod chaos;
mod gpu;
mod handle;
#[cfg(feature = "openai")]
mod openai;
mod stream;
mod types;

pub use self::chaos::{Chaos, ChaosBuilder, ChaosFuture, ChaosHandle, ChaosLayer};
pub use self::gpu::{MockGpu, MockGpuBuilder, MockGpuFuture};
pub use self::handle::{MockGpuHandle, MockGpuStats};
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub use self::openai::{MockOpenAiFuture, OpenAiGpu, OpenAiGpuStream};
pub use self::stream::{MockGpuStream, StreamFault};
pub use self::types::{Completion, InferenceRequest};
