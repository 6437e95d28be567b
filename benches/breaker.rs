//! Closed-state overhead of the circuit breaker, on one thread and on two threads sharing
//! one breaker, side by side with `tower-resilience`'s circuit breaker on the same bare
//! service, and the keyed breaker with eight keys.
//!
//! Each measurement is the time per call seen by one thread: with two threads both run the
//! same number of calls at once, so a breaker that scales perfectly shows the same time as
//! on one thread. Run with `cargo bench --bench breaker --all-features`.

mod common;

use common::{Threads, bare, per_call};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_inference::breaker::BreakerLayer;

fn breaker(c: &mut Criterion) {
    let ours = BreakerLayer::new().layer(bare());
    let theirs = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .failure_rate_threshold(0.5)
        .build()
        .expect("a valid tower-resilience configuration")
        .layer(bare());
    // Eight models behind one keyed layer: a key lookup and a coarse clock read per call.
    let keyed = BreakerLayer::keyed(|n: &u64| n % 8).layer(bare());

    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("breaker_closed/{}", threads.label()));
        group.bench_function("bare", |b| b.iter_custom(|n| per_call(&bare(), threads, n)));
        group.bench_function("tower_inference", |b| {
            b.iter_custom(|n| per_call(&ours, threads, n))
        });
        group.bench_function("tower_inference_keyed_8", |b| {
            b.iter_custom(|n| per_call(&keyed, threads, n))
        });
        group.bench_function("tower_resilience_0_13", |b| {
            b.iter_custom(|n| per_call(&theirs, threads, n))
        });
        group.finish();
    }
}

criterion_group!(benches, breaker);
criterion_main!(benches);
