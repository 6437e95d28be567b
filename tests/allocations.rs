//! The whole stack's success path allocates nothing, with names read from configuration
//! (`String`s) as well as static ones: the layers copy those names into every answer.
//!
//! This binary counts every heap allocation (a counting global allocator), so it holds this
//! one test alone.

use std::future::{Ready, ready};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::{DegradeLayer, Level};
use tower_inference::fallback::FallbackLayer;
use tower_inference::metrics::ErrorMetrics;
use tower_inference::retry::RetryLayer;
use tower_inference::stack::InferenceStack;
use tower_inference::{GenerationParams, InferenceError, Quality, Served};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

type Answer = Served<u32>;

fn model(p: GenerationParams) -> Ready<Result<Answer, InferenceError>> {
    ready(Ok(Served::new(p.max_tokens)))
}

#[test]
fn answered_calls_allocate_nothing_with_names_from_configuration() {
    // As if read from a configuration file.
    let name = |s: &str| s.to_owned();
    let metrics = ErrorMetrics::new();
    let mut svc = InferenceStack::new(name("llama-70b"))
        .metrics(&metrics)
        .fallback(
            FallbackLayer::builder()
                .tier(name("llama-8b"), Quality::Reduced, tower::service_fn(model))
                .static_default(|p: &GenerationParams| Served::new(p.max_tokens / 4)),
        )
        .degrade(DegradeLayer::builder().in_flight_capacity(1_000).levels([
            Level::new(name("whole"), 0.0, 1.0, 1.0),
            Level::new(name("half"), 0.5, 0.5, 2.0),
        ]))
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(tower::service_fn(model));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut call = async |i: u32| {
            let ready = svc.ready().await.expect("ready");
            ready.call(GenerationParams::new(64 + i % 64)).await
        };
        // Warm-up: the metrics' per-tier slots and the like are made on first use.
        let first = call(0).await.expect("an answer");
        assert_eq!(first.provenance.tier, "llama-70b");
        assert_eq!(first.provenance.degraded.as_deref(), Some("whole"));
        for i in 1..100 {
            call(i).await.expect("an answer");
        }

        let region = Region::new(GLOBAL);
        for i in 0..1_000 {
            let answer = call(i).await.expect("an answer");
            assert_eq!(answer.provenance.tier, "llama-70b");
        }
        let allocations = region.change().allocations;
        assert_eq!(allocations, 0, "heap allocations over 1 000 answered calls");
    });
}
