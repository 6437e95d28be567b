//! Helpers shared by the benchmarks: a bare service and a per-call timer for 1 or 2 threads.
#![allow(dead_code)]

use std::future::{Ready, ready};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn, util::ServiceFn};
use tower_inference::InferenceError;

/// The cheapest possible inference service: answers its request at once.
pub type Bare = ServiceFn<fn(u64) -> Ready<Result<u64, InferenceError>>>;

/// A service that answers at once, the baseline a layer's overhead is measured against.
pub fn bare() -> Bare {
    service_fn(|n: u64| ready(Ok(n)))
}

/// A current-thread runtime with a timer, as each benchmark thread runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

/// How many threads call one shared service at once.
#[derive(Debug, Clone, Copy)]
pub enum Threads {
    One,
    Two,
}

impl Threads {
    pub fn label(self) -> &'static str {
        match self {
            Threads::One => "1_thread",
            Threads::Two => "2_threads",
        }
    }

    fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::Two => 2,
        }
    }
}

/// Runs `iters` calls on each of `threads` threads, each with its own clone of `svc` and its
/// own current-thread runtime, all started together; returns the wall time, i.e. the time
/// per call one thread sees, times `iters`.
pub fn per_call<S>(svc: &S, threads: Threads, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    per_call_with(svc, threads, iters, |i| i)
}

/// Like [`per_call`], with request `i` made by `request(i)`.
pub fn per_call_with<S, Req: 'static>(
    svc: &S,
    threads: Threads,
    iters: u64,
    request: fn(u64) -> Req,
) -> Duration
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let n = threads.count();
    let barrier = Arc::new(Barrier::new(n + 1));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                runtime().block_on(async {
                    barrier.wait();
                    calls(&mut svc, iters, request).await;
                });
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for worker in workers {
        worker.join().expect("a benchmark thread");
    }
    start.elapsed()
}

/// The second harness: `tasks` tasks spawned on one multi-thread runtime with two workers (as
/// a hyper or axum server runs), each calling its own clone of `svc` `iters` times after all
/// have started; returns the longest task's time, i.e. the time per call one task sees,
/// times `iters`. It checks figures of [`per_call_with`], whose threads each run a
/// current-thread runtime.
pub fn per_call_on_workers<S, Req: 'static>(
    svc: &S,
    tasks: usize,
    iters: u64,
    request: fn(u64) -> Req,
) -> Duration
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let start = Arc::new(tokio::sync::Barrier::new(tasks));
    runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = svc.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let began = Instant::now();
                    calls(&mut svc, iters, request).await;
                    began.elapsed()
                })
            })
            .collect();
        let mut longest = Duration::ZERO;
        for handle in handles {
            longest = longest.max(handle.await.expect("a benchmark task"));
        }
        longest
    })
}

/// Makes `iters` calls in a row, each once the service is ready, as both harnesses time them.
async fn calls<S, Req>(svc: &mut S, iters: u64, request: fn(u64) -> Req)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    for i in 0..iters {
        let ready = svc.ready().await.expect("ready");
        std::hint::black_box(ready.call(request(i)).await.is_ok());
    }
}
