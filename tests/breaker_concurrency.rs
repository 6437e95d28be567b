//! The breaker under real threads: probe limits hold and window counters stay consistent.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Call, backend};
use tokio::sync::{Notify, watch};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_inference::breaker::BreakerLayer;
use tower_inference::{CircuitState, ErrorKind, InferenceError};

const TASKS: usize = 64;
const ATTEMPTS: usize = 200;
const PROBES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammering_a_half_open_breaker_lets_only_the_probes_through() {
    let layer = BreakerLayer::builder()
        .count_window(1)
        .minimum_calls(1)
        .open_duration(Duration::ZERO)
        .half_open_probes(PROBES as u32)
        .build();
    let handle = layer.handle();

    let (open_gate, gate) = watch::channel(false);
    let reached = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let over_limit = Arc::new(AtomicBool::new(false));
    let inner = {
        let (reached, in_flight, over_limit) =
            (reached.clone(), in_flight.clone(), over_limit.clone());
        service_fn(move |fail: bool| {
            let mut gate = gate.clone();
            let (reached, in_flight, over_limit) =
                (reached.clone(), in_flight.clone(), over_limit.clone());
            async move {
                reached.fetch_add(1, SeqCst);
                if fail {
                    return Err(InferenceError::infrastructure());
                }
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                if now > PROBES && !*gate.borrow() {
                    over_limit.store(true, SeqCst);
                }
                let _ = gate.wait_for(|open| *open).await;
                in_flight.fetch_sub(1, SeqCst);
                Ok(())
            }
        })
    };
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    // One failure trips it; with a zero open duration the next call finds it half-open.
    assert!(svc.clone().oneshot(true).await.is_err());
    assert_eq!(handle.state(), CircuitState::Open);
    reached.store(0, SeqCst);

    // A task whose call became a probe hangs on it; every other task finishes its attempts,
    // all refused.
    let rejected = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let others_done = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (svc, rejected) = (svc.clone(), rejected.clone());
        let (finished, others_done) = (finished.clone(), others_done.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ATTEMPTS {
                match svc.clone().oneshot(false).await {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
                        rejected.fetch_add(1, SeqCst);
                    }
                }
            }
            if finished.fetch_add(1, SeqCst) + 1 == TASKS - PROBES {
                others_done.notify_one();
            }
        }));
    }

    // A guard, not a sleep: had a fourth call been let through, a fourth task would hang
    // and this would never be notified.
    tokio::time::timeout(Duration::from_secs(20), others_done.notified())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "tasks still running: {} rejected, {} reached, state {:?}",
                rejected.load(SeqCst),
                reached.load(SeqCst),
                handle.snapshot()
            )
        });
    assert_eq!(
        reached.load(SeqCst),
        PROBES,
        "only the probes reached the backend"
    );
    assert!(!over_limit.load(SeqCst));
    assert_eq!(handle.snapshot().probes_in_flight, PROBES as u32);

    open_gate.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed, "the probes succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_counters_stay_consistent_under_races() {
    let layer = BreakerLayer::builder()
        .count_window(100)
        .minimum_calls(100)
        .failure_rate_threshold(1.0)
        .build();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend(Arc::default()));

    let run = |fail_every: Option<usize>| {
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        let call = match fail_every {
                            Some(n) if (i + t) % n == 0 => Call::Fail,
                            _ => Call::Ok,
                        };
                        let _ = svc.clone().oneshot(call).await;
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap();
            }
        }
    };

    run(Some(3)).await;
    let snap = handle.snapshot();
    assert_eq!(snap.calls, 100);
    assert!(snap.failures > 10 && snap.failures < 60, "{snap:?}");
    assert_eq!(snap.state, CircuitState::Closed);

    run(None).await;
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls, snap.failures),
        (100, 0),
        "every failure slid out: {snap:?}"
    );
}
