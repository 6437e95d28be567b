//! Per-chunk cost of the whole stack on a streamed answer: a stream of 1 000 chunks, all
//! ready, drained through the stack (metrics at both stages, fallback, retry, breaker, the
//! stall timeout), next to the same stream drained bare.
//!
//! The figure is the time per stream; criterion also prints chunks per second. The
//! difference over the bare stream, divided by 1 000, is the stack's cost per chunk plus its
//! per-call cost spread over the chunks (printed once before timing, with the heap
//! allocations of one stream through each, counted with `stats_alloc`).
//!
//! Run with `cargo bench --bench stream`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_inference::InferenceError;
use tower_inference::breaker::BreakerLayer;
use tower_inference::fallback::FallbackLayer;
use tower_inference::metrics::ErrorMetrics;
use tower_inference::retry::RetryLayer;
use tower_inference::stack::InferenceStack;
use tower_inference::stream::{Chunk, StreamTimeoutLayer, TokenStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const CHUNKS: usize = 1_000;

fn answer() -> TokenStream {
    TokenStream::from_chunks(std::iter::repeat_n(Chunk::new(" token"), CHUNKS))
}

async fn drain(mut stream: TokenStream) -> usize {
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += usize::from(chunk.is_ok());
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = ErrorMetrics::new();
    let stack = {
        let _guard = rt.enter();
        InferenceStack::new("model")
            .metrics(&metrics)
            .fallback(
                FallbackLayer::builder().static_default(|_: &u32| TokenStream::from_text("busy")),
            )
            .retry(RetryLayer::builder())
            .breaker(BreakerLayer::builder())
            .timeout(Duration::from_secs(30))
            .build()
    };
    let model = service_fn(|_: u32| async { Ok::<_, InferenceError>(answer()) });
    let svc = ServiceBuilder::new()
        .layer(stack)
        .layer(StreamTimeoutLayer::new().stall(Duration::from_secs(5)))
        .service(model);

    // Allocations of one stream, bare and through the stack (after a warm-up).
    rt.block_on(async {
        let mut svc = svc.clone();
        for _ in 0..100 {
            drain(svc.ready().await.unwrap().call(1).await.unwrap()).await;
        }
        let region = Region::new(GLOBAL);
        assert_eq!(drain(answer()).await, CHUNKS);
        let bare = region.change().allocations;
        let region = Region::new(GLOBAL);
        let stream: TokenStream = svc
            .ready()
            .await
            .unwrap()
            .call(1)
            .await
            .map_err(|e: BoxError| e)
            .unwrap();
        assert_eq!(drain(stream).await, CHUNKS);
        let stacked = region.change().allocations;
        println!("allocations per stream of {CHUNKS} chunks: bare {bare}, stack {stacked}");
    });

    let mut group = c.benchmark_group("stream_1000_chunks");
    group.throughput(Throughput::Elements(CHUNKS as u64));
    group.bench_function("bare", |b| b.to_async(&rt).iter(|| drain(answer())));
    group.bench_function("stack", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { drain(svc.oneshot(1).await.unwrap()).await }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
