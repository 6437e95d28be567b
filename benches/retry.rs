//! Success-path overhead of the retry layer, on one thread and on two threads sharing one
//! layer (and budget), side by side with tower's `Retry` (with `TpsBudget`, and with this
//! crate's policy) and `tower-resilience`'s retry, all in front of the same bare service.
//!
//! Run with `cargo bench --bench retry --all-features`.

mod common;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use common::{Threads, per_call};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::ServiceFn;
use tower_inference::retry::RetryLayer;
use tower_inference::{InferenceError, Served};

type Bare = ServiceFn<fn(u64) -> Ready<Result<Served<u64>, InferenceError>>>;

fn bare() -> Bare {
    tower::service_fn(|n: u64| ready(Ok(Served::new(n))))
}

/// The policy tower's budget documentation describes: deposit on success, withdraw to retry.
#[derive(Clone)]
struct TpsPolicy(Arc<TpsBudget>);

impl<Res, E> tower::retry::Policy<u64, Res, E> for TpsPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn retry(c: &mut Criterion) {
    let ours = RetryLayer::new().layer(bare());
    let tower_ours =
        tower::retry::RetryLayer::new(RetryLayer::builder().build_policy()).layer(bare());
    let tower_tps = tower::retry::RetryLayer::new(TpsPolicy(Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        10,
        0.2,
    ))))
    .layer(bare());
    let resilience =
        tower_resilience::retry::RetryLayer::<u64, Served<u64>, InferenceError>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(100))
            .build()
            .layer(bare());

    for threads in [Threads::One, Threads::Two] {
        let mut group = c.benchmark_group(format!("retry_success/{}", threads.label()));
        group.bench_function("bare", |b| b.iter_custom(|n| per_call(&bare(), threads, n)));
        group.bench_function("tower_inference", |b| {
            b.iter_custom(|n| per_call(&ours, threads, n))
        });
        group.bench_function("tower_retry_with_our_policy", |b| {
            b.iter_custom(|n| per_call(&tower_ours, threads, n))
        });
        group.bench_function("tower_retry_tps_budget", |b| {
            b.iter_custom(|n| per_call(&tower_tps, threads, n))
        });
        group.bench_function("tower_resilience_0_13", |b| {
            b.iter_custom(|n| per_call(&resilience, threads, n))
        });
        group.finish();
    }
}

criterion_group!(benches, retry);
criterion_main!(benches);
