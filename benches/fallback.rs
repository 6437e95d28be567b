//! Cost of the fallback layer when the first tier answers, next to the bare service, on one
//! thread and on two threads sharing one layer.
//!
//! Three chains: tiers after the first but no cache (the request clone a later tier might
//! need is the cost), the same with a 64-byte `String` request (what that clone costs for a
//! real prompt), and with the in-memory cache of last-good answers (a key, a response clone
//! and a store insert per answer). Run with `cargo bench --bench fallback --all-features`.

mod common;

use std::future::{Ready, ready};
use std::time::Duration;

use common::{Threads, per_call_with};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower::util::ServiceFn;
use tower_inference::fallback::{FallbackLayer, MemoryStore};
use tower_inference::{InferenceError, Quality, Served};

type Bare<Req> = ServiceFn<fn(Req) -> Ready<Result<Served<u64>, InferenceError>>>;

fn bare_u64() -> Bare<u64> {
    tower::service_fn(|n: u64| ready(Ok(Served::new(n))))
}

fn bare_string() -> Bare<String> {
    tower::service_fn(|s: String| ready(Ok(Served::new(s.len() as u64))))
}

fn prompt(i: u64) -> String {
    format!("{i:>16} summarise the incident report for the on-call engineer")
}

fn fallback(c: &mut Criterion) {
    let chain_u64 = FallbackLayer::builder()
        .tier("light", Quality::Reduced, bare_u64())
        .static_default(|_: &u64| Served::new(0))
        .build()
        .layer(bare_u64());
    let chain_string = FallbackLayer::builder()
        .tier("light", Quality::Reduced, bare_string())
        .static_default(|_: &String| Served::new(0))
        .build()
        .layer(bare_string());
    let cached = FallbackLayer::builder()
        .tier("light", Quality::Reduced, bare_u64())
        .cache(
            MemoryStore::new(10_000),
            |n: &u64| (n % 1024).to_string(),
            Duration::from_secs(60),
        )
        .static_default(|_: &u64| Served::new(0))
        .build()
        .layer(bare_u64());

    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("fallback_tier1_ok/{}", threads.label()));
        group.bench_function("bare_u64", |b| {
            b.iter_custom(|n| per_call_with(&bare_u64(), threads, n, |i| i))
        });
        group.bench_function("chain_u64", |b| {
            b.iter_custom(|n| per_call_with(&chain_u64, threads, n, |i| i))
        });
        group.bench_function("bare_string", |b| {
            b.iter_custom(|n| per_call_with(&bare_string(), threads, n, prompt))
        });
        group.bench_function("chain_string", |b| {
            b.iter_custom(|n| per_call_with(&chain_string, threads, n, prompt))
        });
        group.bench_function("chain_u64_memory_cache", |b| {
            b.iter_custom(|n| per_call_with(&cached, threads, n, |i| i))
        });
        group.finish();
    }
}

criterion_group!(benches, fallback);
criterion_main!(benches);
