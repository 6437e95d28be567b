//! The memory a metrics stage holds, measured with a counting global allocator, stays under
//! the documented bound (256 KiB) whatever it records.

use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::metrics::{ErrorMetrics, MetricsLayer};
use tower_inference::{InferenceError, Served};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const BOUND: usize = 256 * 1024;

#[test]
fn a_stage_holds_less_than_its_documented_bound() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let metrics = ErrorMetrics::new();
    let region = Region::new(GLOBAL);
    let layer = MetricsLayer::new(&metrics, "edge");
    let created = region.change();
    let held = created.bytes_allocated - created.bytes_deallocated;
    assert!(held < BOUND, "a new stage holds {held} bytes");
    eprintln!("a new stage holds {held} bytes");

    // Fill it: answers, and timeouts with many distinct operations, on a few threads.
    let svc = ServiceBuilder::new()
        .layer(layer.operation(|i: &u64| format!("op-{i}")))
        .service(service_fn(|i: u64| async move {
            if i.is_multiple_of(2) {
                Ok(Served::new(()))
            } else {
                Err(InferenceError::timeout(Duration::from_millis(i)))
            }
        }));
    runtime.block_on(async {
        for i in 0..20_000u64 {
            let _ = svc.clone().oneshot(i).await;
        }
    });
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let svc = svc.clone();
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..5_000u64 {
                        let _ = svc.clone().oneshot(t * 1_000_000 + i).await;
                    }
                })
            });
        }
    });
    drop(svc);
    let filled = region.change();
    let held = filled.bytes_allocated - filled.bytes_deallocated;
    assert!(held < BOUND, "a full stage holds {held} bytes");
    eprintln!("a full stage holds {held} bytes");
    assert_eq!(metrics.snapshot().stages[0].calls, 40_000);

    // The largest pattern table asked for reserves nothing up front.
    let region = Region::new(GLOBAL);
    let largest = ErrorMetrics::with_settings(3.0, 0.9, usize::MAX);
    let _layer = MetricsLayer::new(&largest, "edge");
    let created = region.change();
    let held = created.bytes_allocated - created.bytes_deallocated;
    assert!(
        held < BOUND,
        "a new stage with the largest top-K holds {held} bytes"
    );
}
