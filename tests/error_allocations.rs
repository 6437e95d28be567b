//! A metrics stage records a failed call without allocating once the call's error pattern
//! is known, so an outage does not turn every failed attempt into a heap allocation.
//!
//! This binary counts every heap allocation (a counting global allocator), so it holds this
//! one test alone.

use std::future::{Ready, ready};
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{ErrorKind, GenerationParams, InferenceError, Served};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn timing_out(_: GenerationParams) -> Ready<Result<Served<u32>, InferenceError>> {
    ready(Err(InferenceError::timeout(Duration::from_secs(2))))
}

#[test]
fn failed_calls_with_a_known_pattern_allocate_nothing() {
    let metrics = ErrorMetrics::new();
    let mut svc = MetricsLayer::new(&metrics, "edge").layer(tower::service_fn(timing_out));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut call = async || {
            let ready = svc.ready().await.expect("ready");
            ready.call(GenerationParams::new(64)).await
        };
        // The first failure makes the pattern's entry.
        assert!(call().await.is_err());
        let region = Region::new(GLOBAL);
        for _ in 0..1_000 {
            assert!(call().await.is_err());
        }
        let allocations = region.change().allocations;
        assert_eq!(allocations, 0, "allocations over 1 000 failed calls");
    });
    let stage = &metrics.snapshot().stages[0];
    assert_eq!(stage.errors.get(&ErrorKind::Timeout), Some(&1_001));
    let top = &stage.top_patterns[0];
    assert_eq!(
        (top.kind, top.operation.as_str(), top.count),
        (ErrorKind::Timeout, "edge", 1_001)
    );
}
