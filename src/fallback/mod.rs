//! Fall back through tiers: lighter model, rules, last good answer, static default.
//!
//! [`FallbackLayer`] keeps a service answering when its model fails. The wrapped service is
//! the first tier; the builder adds the others in the order they are tried. On a failure that
//! is the backend's (per [`Classify`](crate::Classify): a backend fault, an open circuit, a
//! timeout, an overload), the next tier is tried, and the answer says in its
//! [`Provenance`](crate::Provenance) which tier gave it, at what quality, whether it was a
//! fallback and, from the cache, how old it is.
//!
//! ```text
//! tier 1: the wrapped service (e.g. the full model behind a breaker and a timeout)
//! tier 2: a lighter model                  .tier("llama-8b", Quality::Reduced, light)
//! tier 3: rules                            .tier("rules", Quality::Generic, rules)
//! tier 4: the last good answer             .cache(MemoryStore::new(10_000), key, ttl)
//! tier 5: a static default                 .static_default(|req| ...)
//! ```
//!
//! - **Caller faults** (invalid input, context too long) from the wrapped service are returned
//!   as they are, unless a later tier [`accepts`](Tier::accepts) that kind, as LLM gateways
//!   send an over-long prompt to a larger-context model. Only the wrapped service speaks for
//!   the caller: when a *fallback* tier refuses a request the primary would take (a lighter
//!   model's smaller context), the chain moves on as for any failure.
//! - **Cache**: after a success from a cacheable tier (by default the first two), the answer
//!   is stored under `key(&request)`; the cache tier serves it when the tiers before it have
//!   failed. The store is a [`CacheStore`]: [`MemoryStore`] (bounded, on `quick_cache`) or, with
//!   the `redis` feature, `RedisStore`, so replicas share last-good answers. A write never
//!   delays or fails a response: an in-memory write is done inline, a network write on a task
//!   of its own, and a store error is an event and a log line. A failing store costs little:
//!   each read and write has its own timeout (50 ms by default), and after 5 failures in a
//!   row the store is not asked for 10 s, the cache tier failing at once meanwhile
//!   ([`cache_guard`](FallbackBuilder::cache_guard)).
//! - **All failed**: [`InferenceError::Exhausted`](crate::InferenceError::Exhausted) lists
//!   every tier tried and the kind it failed with (a cache with nothing fresh counts as
//!   `exhausted`); its message says the service is degraded, never which internals broke.
//! - **Events**: `TierServed`, `TierFailed`, `CacheFailed`.
//!
//! Requests must be `Clone` (a later tier gets a copy) and responses must implement
//! [`Annotate`](crate::Annotate) (and `Clone`, to be cached). The success path of the first
//! tier costs a request clone, a classification and an event; walking the chain is boxed,
//! as a failure path can afford.
//!
//! # Cost when the first tier answers
//!
//! `benches/fallback.rs` (criterion, 2-core x86-64 VM), time per call:
//!
//! | | 1 thread | 2 threads |
//! |---|---|---|
//! | bare service, `u64` request | 23.8 ns | 21.5 ns |
//! | chain of three tiers, no cache | 76.3 ns | 71.0 ns |
//! | bare service, 64-byte `String` request | 117.8 ns | 115.0 ns |
//! | chain of three tiers, `String` request | 159.0 ns | 172.9 ns |
//! | chain with the in-memory cache | 235.8 ns | 441.4 ns |
//!
//! The request clone cannot be avoided while a later tier might need the request (tier 1
//! consumes its copy); it is skipped when no tier follows. For a real prompt it costs about
//! as much as the rest of the layer (the `String` rows). Caching every answer is the largest
//! cost: a key, a response clone and a store insert; `quick_cache` made that 3.7 times cheaper
//! than `moka` on one thread here (875 ns).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_inference::fallback::{FallbackLayer, MemoryStore};
//! use tower_inference::{InferenceError, Quality, Served};
//!
//! let rules = service_fn(|q: String| async move {
//!     Ok::<_, InferenceError>(Served::new(format!("(rules) {q}")))
//! });
//! let fallback = FallbackLayer::builder()
//!     .tier("rules", Quality::Generic, rules)
//!     .cache(MemoryStore::new(1_000), |q: &String| q.clone(), Duration::from_secs(300))
//!     .static_default(|_: &String| Served::new("Please try again later.".to_string()))
//!     .build();
//! let model_down = service_fn(|_: String| async { Err::<Served<String>, _>(InferenceError::infrastructure()) });
//! let svc = ServiceBuilder::new().layer(fallback).service(model_down);
//!
//! let answer = svc.oneshot("hello".to_string()).await.unwrap();
//! assert_eq!(answer.value, "(rules) hello");
//! assert_eq!(answer.provenance.tier, "rules");
//! assert_eq!(answer.provenance.quality, Quality::Generic);
//! assert!(answer.provenance.fallback);
//! # }
//! ```

mod cache;
mod future;
mod guard;
mod layer;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod tier;

pub use self::cache::{BoxFuture, CacheError, CacheStore, CacheWrite, Cached, MemoryStore};
pub use self::future::ResponseFuture;
pub use self::layer::{FallbackBuilder, FallbackLayer};
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use self::service::Fallback;
pub use self::tier::Tier;
