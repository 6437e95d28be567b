//! Per-call cost of the degrade layer at full level and while degraded, on one thread and on
//! two threads sharing one layer, next to the bare service.
//!
//! The layers have an in-flight capacity of 1 000; two more at full level have capacities of
//! 64 and 16, where threads hold back less of their in-flight counts from the shared total
//! (at 16, with more than one thread, none: every call adds to it and leaves from it).
//!
//! Run with `cargo bench --bench degrade --all-features`.

mod common;

use std::future::{Ready, ready};

use common::{Threads, per_call_with};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower::util::ServiceFn;
use tower_inference::degrade::DegradeLayer;
use tower_inference::{GenerationParams, InferenceError, Served};

type Bare = ServiceFn<fn(GenerationParams) -> Ready<Result<Served<u32>, InferenceError>>>;

fn bare() -> Bare {
    tower::service_fn(|p: GenerationParams| ready(Ok(Served::new(p.max_tokens))))
}

fn params(i: u64) -> GenerationParams {
    GenerationParams::new(256 + (i % 7) as u32).steps(30)
}

fn degrade(c: &mut Criterion) {
    let full = DegradeLayer::builder().in_flight_capacity(1_000).build();
    let full_svc = full.layer(bare());
    let degraded = DegradeLayer::builder().in_flight_capacity(1_000).build();
    degraded.handle().force("reduced").expect("a default level");
    let degraded_svc = degraded.layer(bare());
    let small = |capacity| {
        DegradeLayer::builder()
            .in_flight_capacity(capacity)
            .build()
            .layer(bare())
    };
    let (capacity_64, capacity_16) = (small(64), small(16));

    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("degrade/{}", threads.label()));
        group.bench_function("bare", |b| {
            b.iter_custom(|n| per_call_with(&bare(), threads, n, params))
        });
        group.bench_function("full_level", |b| {
            b.iter_custom(|n| per_call_with(&full_svc, threads, n, params))
        });
        group.bench_function("degraded", |b| {
            b.iter_custom(|n| per_call_with(&degraded_svc, threads, n, params))
        });
        group.bench_function("full_level_capacity_64", |b| {
            b.iter_custom(|n| per_call_with(&capacity_64, threads, n, params))
        });
        group.bench_function("full_level_capacity_16", |b| {
            b.iter_custom(|n| per_call_with(&capacity_16, threads, n, params))
        });
        group.finish();
    }
}

criterion_group!(benches, degrade);
criterion_main!(benches);
