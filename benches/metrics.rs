//! Cost of recording a call in the metrics layer, on one thread and on two threads sharing one
//! collector, next to the bare service; and a stage's memory, new and after 1 000 000
//! distinct errors (bytes held, from a counting global allocator).
//!
//! Run with `cargo bench --bench metrics --all-features`.

mod common;

use std::future::{Ready, ready};

use common::{Threads, per_call_with};
use criterion::{Criterion, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::util::ServiceFn;
use tower::{Layer, Service, ServiceExt};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{InferenceError, Served};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

type Bare = ServiceFn<fn(u64) -> Ready<Result<Served<u64>, InferenceError>>>;

fn bare() -> Bare {
    tower::service_fn(|n: u64| ready(Ok(Served::new(n))))
}

fn metrics(c: &mut Criterion) {
    let collector = ErrorMetrics::new();
    let recorded = MetricsLayer::new(&collector, "edge").layer(bare());
    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("metrics_record/{}", threads.label()));
        group.bench_function("bare", |b| {
            b.iter_custom(|n| per_call_with(&bare(), threads, n, |i| i))
        });
        group.bench_function("metrics_layer", |b| {
            b.iter_custom(|n| per_call_with(&recorded, threads, n, |i| i))
        });
        group.finish();
    }
    memory_after_distinct_errors();
}

/// Sends 1 000 000 failing calls, each with an operation label never seen before, and prints
/// how many error-pattern entries the collector holds: a fixed bound, whatever the input.
fn memory_after_distinct_errors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let region = Region::new(GLOBAL);
        let collector = ErrorMetrics::new();
        let layer = MetricsLayer::new(&collector, "edge");
        let new = region.change();
        let mut svc = layer
            .operation(|n: &u64| format!("operation-{n}"))
            .layer(tower::service_fn(|_: u64| async {
                Err::<Served<()>, _>(InferenceError::infrastructure())
            }));
        for n in 0..1_000_000u64 {
            let _ = svc.ready().await.expect("ready").call(n).await;
        }
        drop(svc);
        let full = region.change();
        let held = |c: stats_alloc::Stats| c.bytes_allocated.saturating_sub(c.bytes_deallocated);
        println!(
            "metrics memory per stage: {} bytes new, {} bytes after 1 000 000 distinct errors",
            held(new),
            held(full)
        );
        let entries = collector.pattern_entries();
        let snapshot = collector.snapshot();
        println!(
            "metrics memory after 1 000 000 distinct errors: {entries} pattern entries (bound 16 x top-K = {}), {} errors counted, top pattern count {}",
            16 * 32,
            snapshot.stages[0].errors[&tower_inference::ErrorKind::Infrastructure],
            snapshot.stages[0].top_patterns[0].count,
        );
    });
}

criterion_group!(benches, metrics);
criterion_main!(benches);
