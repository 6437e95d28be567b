//! Error metrics for incidents: which errors, how fast, whether it is a spike, which tier is
//! answering; exported as Prometheus text or into a `prometheus-client` registry.
//!
//! An [`ErrorMetrics`] collector gathers:
//!
//! - from each [`MetricsLayer`] (one per `stage`, e.g. `"edge"` outermost for what users saw
//!   and `"backend"` innermost for what the model did): calls completed, in flight and
//!   cancelled; failures per error kind, each labelled with whose fault it was; windowed
//!   rates (errors per minute over 1 min, 5 min and 1 h, from fixed rings of 10 s buckets);
//!   spikes; the most frequent error patterns (kind × operation label, in a Space-Saving
//!   sketch of fixed size, with each count's possible overestimate); latency as a
//!   histogram (buckets from 1 ms to 120 s) with p50, p90, p99 and max, for every call and
//!   for the primary tier's answers; answers by tier; the quality SLA (the primary tier's
//!   share of answers; flagged under 90 %); the age of the last cached answer served;
//! - as an [`EventSink`](crate::EventSink) of the other layers: breaker transitions and
//!   rejections, retries, budget exhaustion, fallback tiers served and failed, cache
//!   failures and the degradation level;
//! - from the handles it watches ([`ErrorMetrics::watch_breaker`] and its siblings, which an
//!   [`InferenceStack`](crate::stack::InferenceStack) calls for its own layers): each
//!   breaker's state, the retry budget's balance, the degradation level and load; and from a
//!   [`Health`](crate::health::Health) registry given [`HealthBuilder::metrics`](crate::health::HealthBuilder::metrics),
//!   each check's latest result.
//!
//! [`ErrorMetrics::snapshot`] returns a plain serializable struct with typed keys, and
//! [`ErrorMetrics::render_prometheus`] the Prometheus text exposition, with no dependency.
//! With the `prometheus-client` feature, an `ErrorMetrics` is a `Collector` of the
//! [`prometheus-client`](https://docs.rs/prometheus-client) crate: register it in the
//! registry the application already serves, and one `/metrics` carries both. That crate is
//! the Prometheus project's own Rust client (maintained in the `prometheus` GitHub
//! organisation), follows OpenMetrics, and lets a collector encode its families at scrape
//! time, which is how these metrics are made: from a snapshot, not from a metric object per
//! series. The shipped alert rules (`prometheus/alerts.yml` in the repository) are written
//! against these families.
//!
//! # Incidents, not noise
//!
//! - **Spikes.** A kind spikes when it occurred at least 10 times in the last minute
//!   ([`spike_min_count`](ErrorMetricsBuilder::spike_min_count)) and its rate over that
//!   minute exceeds 3 × ([`spike_multiplier`](ErrorMetricsBuilder::spike_multiplier)) its
//!   rate before it, over the rest of the hour or of the time the stage has existed when
//!   shorter. The baseline needs a minute of history before the last minute, so a stage
//!   younger than two minutes never spikes: a fresh process's first errors page no one, and
//!   a steady rate never spikes.
//! - **Whose fault.** The caller's faults (`invalid_input`, `context_length_exceeded`) are
//!   counted with `fault="caller"` and never spike; server faults carry `fault="server"`.
//! - **No lost labels.** Past the bounds (16 tier names per stage, 64 stages per collector
//!   by default), counts go to an overflow series labelled `overflow="true"` in place of
//!   `tier` or `stage`, the convention of OpenTelemetry's cardinality limit: no real label
//!   value can collide with it.
//!
//! # Memory and cost
//!
//! Recording takes no lock on an answer: counters are per-thread stripes, latency goes into
//! a pair of histograms (a call is one counter in one of them, which serves both the
//! Prometheus buckets and the percentiles), error rates are atomic rings; an error also
//! takes the lock of its thread's pattern sketch. A thread owns its stripe while it lives
//! (the first 15 threads to record; later ones share one more), and the first four own a
//! pair of histograms each (the rest share a fifth pair): an owner is the only writer of
//! its counters, so it counts with a plain load and store, no atomic read-modify-write,
//! which is most of what recording an answer costs. Snapshots read and add up. Memory is
//! bounded whatever arrives: a new stage holds 98 KiB (10 rings of 360 buckets, 29 KiB;
//! 10 latency and 3 stream histograms of 4.4 KiB; per-thread counters), and
//! its pattern sketches grow with the patterns seen, up to 16 × top-K entries, reserving
//! nothing up front. Filled from five threads with 20 000 distinct error patterns at the
//! default top-K of 32 it holds 126 KiB (`tests/stage_memory.rs` measures both with a
//! counting allocator and holds them under 256 KiB). A collector holds at most 65 stages
//! (64 and the overflow one).
//!
//! `benches/metrics.rs` (criterion) measures a call through a metrics layer against the same
//! service bare; the README has the figures.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
//! use tower_inference::{ErrorKind, InferenceError, Served};
//!
//! let metrics = ErrorMetrics::new();
//! let svc = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(&metrics, "edge"))
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err(InferenceError::timeout(std::time::Duration::from_secs(1))) }
//!         else { Ok(Served::new("ok")) }
//!     }));
//! svc.clone().oneshot(false).await.unwrap();
//! let _ = svc.oneshot(true).await;
//!
//! let snapshot = metrics.snapshot();
//! assert_eq!(snapshot.stages[0].calls, 2);
//! assert_eq!(snapshot.stages[0].errors[&ErrorKind::Timeout], 1);
//! assert!(metrics.render_prometheus().contains(
//!     r#"tower_inference_errors_total{stage="edge",kind="timeout",fault="server"} 1"#
//! ));
//! # }
//! ```

mod collector;
mod histogram;
mod layer;
mod prometheus;
#[cfg(feature = "prometheus-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus-client")))]
mod registry;
mod stream;
mod topk;
mod window;

pub use self::collector::{
    Degradation, ErrorMetrics, ErrorMetricsBuilder, LatencySnapshot, MetricsSnapshot, Pattern,
    Spike, StageSnapshot,
};
pub use self::layer::{
    FromAnnotate, KeptLabel, LabelFn, Metrics, MetricsLayer, NoLabel, NoProvenance, OperationLabel,
    ReadProvenance, ResponseFuture,
};
pub use self::stream::{RateSnapshot, StreamSnapshot};
pub use self::window::Rates;
