//! Success-path cost of the whole stack and of each layer in it, on one thread and on two
//! threads sharing one stack, side by side with `tower-resilience` 0.13's retry + circuit
//! breaker stack, all in front of the same bare service (`GenerationParams` in,
//! `Served<u32>` out, answered at once).
//!
//! Each figure is the time per call one thread sees (with two threads, both make the same
//! number of calls at once, each on its own clone, so a stack that scales shows the same
//! time as on one thread). Before timing, every contestant's heap allocations per call are
//! counted with a counting global allocator (`stats_alloc`) over 10 000 calls on a thread of
//! its own (as the timed calls run), after a warm-up, and printed.
//!
//! A second harness checks the figures that matter most (bare, whole stack, the peer): one
//! and two tasks spawned on a single two-worker multi-thread runtime, as a hyper or axum
//! server runs them, each calling its own clone (`stack_success/{1,2}_task_2_workers`).
//!
//! A baseline of the layering itself: six pass-through layers (`six_empty_layers`), as many
//! as the whole stack has, each holding an `Arc` that its future clones and touches once, as
//! every layer of the stack does. What the whole stack costs beyond it is the layers' work.
//! One such layer (`one_empty_layer`) is the least any stack whose calls keep its state
//! alive can cost: the difference between the two is what layering six times costs over
//! doing the same work in one layer.
//!
//! What each layer adds to the stack, as opposed to what it costs alone: the whole stack with
//! that one layer left out (`stack_without/1_thread/<layer>`, the metrics "layer" being both
//! of its stages), on one thread.
//!
//! Run with `cargo bench --bench stack --all-features`.

mod common;

use std::future::{Ready, ready};
use std::time::Duration;

use common::{Threads, per_call_on_workers, per_call_with};
use criterion::{Criterion, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tower_inference::breaker::BreakerLayer;
use tower_inference::degrade::DegradeLayer;
use tower_inference::fallback::{FallbackBuilder, FallbackLayer};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::retry::RetryLayer;
use tower_inference::stack::InferenceStack;
use tower_inference::{GenerationParams, InferenceError, Quality, Served};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

type Answer = Served<u32>;
type Bare = tower::util::ServiceFn<fn(GenerationParams) -> Ready<Result<Answer, InferenceError>>>;

fn bare() -> Bare {
    tower::service_fn(|p: GenerationParams| ready(Ok(Served::new(p.max_tokens))))
}

fn request(i: u64) -> GenerationParams {
    GenerationParams::new(64 + (i % 64) as u32)
}

/// Heap allocations per call on the success path, over `calls` calls after a warm-up, on a
/// thread of its own (as the timing harness calls), with a clone made on this thread.
fn allocations_per_call<S>(svc: &S, calls: u64) -> f64
where
    S: Service<GenerationParams> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    std::thread::spawn(move || {
        common::runtime().block_on(async {
            for i in 0..1_000 {
                svc.ready().await.unwrap().call(request(i)).await.unwrap();
            }
            let region = Region::new(GLOBAL);
            for i in 0..calls {
                svc.ready().await.unwrap().call(request(i)).await.unwrap();
            }
            region.change().allocations as f64 / calls as f64
        })
    })
    .join()
    .expect("the counting thread")
}

/// A layer that does nothing but what every layer of the stack does at the least: its future
/// wraps the inner one and holds a clone of the layer's shared state, touched once at the end.
mod empty {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::task::{Context, Poll, ready};

    #[derive(Clone, Default)]
    pub struct EmptyLayer(Arc<AtomicU64>);

    impl<S> tower::Layer<S> for EmptyLayer {
        type Service = Empty<S>;

        fn layer(&self, inner: S) -> Empty<S> {
            Empty {
                inner,
                shared: self.0.clone(),
            }
        }
    }

    #[derive(Clone)]
    pub struct Empty<S> {
        inner: S,
        shared: Arc<AtomicU64>,
    }

    impl<S: tower::Service<R>, R> tower::Service<R> for Empty<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = EmptyFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: R) -> Self::Future {
            EmptyFuture {
                fut: self.inner.call(req),
                shared: self.shared.clone(),
            }
        }
    }

    pin_project_lite::pin_project! {
        pub struct EmptyFuture<F> {
            #[pin]
            fut: F,
            shared: Arc<AtomicU64>,
        }
    }

    impl<F: Future> Future for EmptyFuture<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let out = ready!(this.fut.poll(cx));
            this.shared.fetch_add(1, Relaxed);
            Poll::Ready(out)
        }
    }
}

/// A lighter tier and a static default behind the primary.
fn fallback<E: From<InferenceError> + 'static>() -> FallbackBuilder<GenerationParams, Answer, E> {
    FallbackLayer::builder()
        .tier("light", Quality::Reduced, bare())
        .static_default(|p: &GenerationParams| Served::new(p.max_tokens / 4))
}

fn stack(c: &mut Criterion) {
    let metrics = ErrorMetrics::new();

    let breaker = BreakerLayer::new().layer(bare());
    let retry = RetryLayer::new().layer(bare());
    let degrade = DegradeLayer::builder()
        .in_flight_capacity(1_000)
        .build()
        .layer(bare());
    let fallback_alone = fallback().build().layer(bare());
    let metrics_alone = MetricsLayer::new(&metrics, "alone").layer(bare());
    let whole = InferenceStack::new("primary-model")
        .metrics(&metrics)
        .fallback(fallback())
        .degrade(DegradeLayer::builder().in_flight_capacity(1_000))
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(bare());
    let empty = empty::EmptyLayer::default();
    let one_empty = empty.clone().layer(bare());
    let six_empty = tower::ServiceBuilder::new()
        .layer(empty.clone())
        .layer(empty.clone())
        .layer(empty.clone())
        .layer(empty.clone())
        .layer(empty.clone())
        .layer(empty)
        .service(bare());
    let bare_timeout = tower::timeout::TimeoutLayer::new(Duration::from_secs(5)).layer(bare());
    let whole_timeout = InferenceStack::new("primary-model")
        .metrics(&metrics)
        .fallback(fallback())
        .degrade(DegradeLayer::builder().in_flight_capacity(1_000))
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .timeout(Duration::from_secs(5))
        .build()
        .layer(bare());
    let resilience = tower::ServiceBuilder::new()
        .layer(
            tower_resilience::retry::RetryLayer::<
                GenerationParams,
                Answer,
                tower_resilience::circuitbreaker::CircuitBreakerError<InferenceError>,
            >::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(100))
            .build(),
        )
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .sliding_window_size(100)
                .minimum_number_of_calls(20)
                .failure_rate_threshold(0.5)
                .build()
                .expect("a valid tower-resilience configuration"),
        )
        .service(bare());

    println!("\nheap allocations per call, success path (10 000 calls, one thread):");
    let count = |name: &str, allocations: f64| println!("  {name:<28} {allocations:.2}");
    count("bare", allocations_per_call(&bare(), 10_000));
    count("breaker", allocations_per_call(&breaker, 10_000));
    count("retry", allocations_per_call(&retry, 10_000));
    count("degrade", allocations_per_call(&degrade, 10_000));
    count("fallback", allocations_per_call(&fallback_alone, 10_000));
    count("metrics", allocations_per_call(&metrics_alone, 10_000));
    count("whole stack", allocations_per_call(&whole, 10_000));
    count("one empty layer", allocations_per_call(&one_empty, 10_000));
    count("six empty layers", allocations_per_call(&six_empty, 10_000));
    count(
        "bare + tower timeout",
        allocations_per_call(&bare_timeout, 10_000),
    );
    count(
        "whole stack + tower timeout",
        allocations_per_call(&whole_timeout, 10_000),
    );
    count(
        "tower-resilience retry+cb",
        allocations_per_call(&resilience, 10_000),
    );
    println!();

    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("stack_success/{}", threads.label()));
        macro_rules! contestant {
            ($name:literal, $svc:expr) => {
                group.bench_function($name, |b| {
                    b.iter_custom(|n| per_call_with(&$svc, threads, n, request))
                });
            };
        }
        contestant!("bare", bare());
        contestant!("breaker", breaker);
        contestant!("retry", retry);
        contestant!("degrade", degrade);
        contestant!("fallback", fallback_alone);
        contestant!("metrics", metrics_alone);
        contestant!("whole_stack", whole);
        contestant!("one_empty_layer", one_empty);
        contestant!("six_empty_layers", six_empty);
        contestant!("bare_tower_timeout", bare_timeout);
        contestant!("whole_stack_tower_timeout", whole_timeout);
        contestant!("tower_resilience_0_13_retry_cb", resilience);
        group.finish();
    }

    // What each layer adds to the stack: the whole stack with that one layer left out.
    let stack = || InferenceStack::new("primary-model");
    let degrade_builder = || DegradeLayer::builder().in_flight_capacity(1_000);
    let without_metrics = stack()
        .fallback(fallback())
        .degrade(degrade_builder())
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(bare());
    let without_fallback = stack()
        .metrics(&metrics)
        .degrade(degrade_builder())
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(bare());
    let without_degrade = stack()
        .metrics(&metrics)
        .fallback(fallback())
        .retry(RetryLayer::builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(bare());
    let without_retry = stack()
        .metrics(&metrics)
        .fallback(fallback())
        .degrade(degrade_builder())
        .breaker(BreakerLayer::builder())
        .build()
        .layer(bare());
    let without_breaker = stack()
        .metrics(&metrics)
        .fallback(fallback())
        .degrade(degrade_builder())
        .retry(RetryLayer::builder())
        .build()
        .layer(bare());
    {
        let threads = Threads::One;
        let mut group = c.benchmark_group(format!("stack_without/{}", threads.label()));
        macro_rules! contestant {
            ($name:literal, $svc:expr) => {
                group.bench_function($name, |b| {
                    b.iter_custom(|n| per_call_with(&$svc, threads, n, request))
                });
            };
        }
        contestant!("whole_stack", whole);
        contestant!("metrics", without_metrics);
        contestant!("fallback", without_fallback);
        contestant!("degrade", without_degrade);
        contestant!("retry", without_retry);
        contestant!("breaker", without_breaker);
        group.finish();
    }

    // The second harness: tasks on one two-worker multi-thread runtime, as a server runs.
    for tasks in [1, 2] {
        let mut group = c.benchmark_group(format!("stack_success/{tasks}_task_2_workers"));
        macro_rules! contestant {
            ($name:literal, $svc:expr) => {
                group.bench_function($name, |b| {
                    b.iter_custom(|n| per_call_on_workers(&$svc, tasks, n, request))
                });
            };
        }
        contestant!("bare", bare());
        contestant!("whole_stack", whole);
        contestant!("whole_stack_tower_timeout", whole_timeout);
        contestant!("tower_resilience_0_13_retry_cb", resilience);
        group.finish();
    }
}

criterion_group!(benches, stack);
criterion_main!(benches);
