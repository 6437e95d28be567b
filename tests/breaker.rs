//! The circuit breaker's transitions and boundaries, on paused time.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Call, backend};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_inference::breaker::{BreakerBuilder, BreakerHandle, BreakerLayer, ProbeRule};
use tower_inference::{CircuitState, ErrorKind, Event, InferenceError};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

type Svc = tower_inference::breaker::Breaker<
    tower::util::BoxCloneService<Call, &'static str, InferenceError>,
    tower_inference::DefaultClassifier,
>;

struct Rig {
    svc: Svc,
    handle: BreakerHandle,
    calls: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Rig {
    fn new(builder: BreakerBuilder) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let layer = builder
            .event_sink(move |e: &Event<'_>| {
                let line = match e {
                    Event::BreakerTransition { breaker, from, to } => {
                        format!("{breaker}: {from} -> {to}")
                    }
                    Event::CallRejected { breaker, .. } => format!("{breaker}: rejected"),
                    other => format!("{other:?}"),
                };
                sink.lock().unwrap().push(line);
            })
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(tower::util::BoxCloneService::new(backend(calls.clone())));
        Rig {
            handle: layer.handle(),
            svc,
            calls,
            events,
        }
    }

    async fn call(&self, call: Call) -> Result<&'static str, InferenceError> {
        self.svc.clone().oneshot(call).await
    }

    async fn run(&self, calls: &[Call]) {
        for call in calls {
            let _ = self.call(*call).await;
        }
    }

    fn state(&self) -> CircuitState {
        self.handle.state()
    }

    fn inner_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn transitions(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("->"))
            .cloned()
            .collect()
    }
}

fn builder() -> BreakerBuilder {
    BreakerLayer::builder()
        .name("m")
        .count_window(10)
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .open_duration(10 * SEC)
        .half_open_probes(2)
}

async fn trip(rig: &Rig) {
    rig.run(&[Call::Fail; 10]).await;
    assert_eq!(rig.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn defaults_suit_inference() {
    let rig = Rig::new(BreakerLayer::builder());
    rig.run(&[Call::Fail; 19]).await;
    assert_eq!(
        rig.state(),
        CircuitState::Closed,
        "fewer than 20 calls are not judged"
    );
    rig.run(&[Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    let err = rig.call(Call::Ok).await.unwrap_err();
    assert!(matches!(err, InferenceError::CircuitOpen { retry_in } if retry_in == 30 * SEC));
}

#[tokio::test(start_paused = true)]
async fn opens_at_exact_failure_threshold() {
    let rig = Rig::new(builder());
    rig.run(&[Call::Ok, Call::Ok, Call::Ok, Call::Ok, Call::Ok, Call::Ok])
        .await;
    rig.run(&[Call::Fail; 4]).await;
    assert_eq!(rig.handle.snapshot().failure_rate, 0.4);
    assert_eq!(rig.state(), CircuitState::Closed, "40 % of 10");
    rig.run(&[Call::Fail]).await;
    let snap = rig.handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (10, 5));
    assert_eq!(
        rig.state(),
        CircuitState::Open,
        "50 % of 10 is the threshold"
    );
    assert_eq!(rig.transitions(), ["m: closed -> open"]);
}

#[tokio::test(start_paused = true)]
async fn thresholds_are_exact_for_awkward_rates() {
    // 0.3 × 10 is not exactly 3 in floating point; the breaker compares in basis points.
    let rig = Rig::new(builder().failure_rate_threshold(0.3));
    rig.run(&[Call::Ok; 7]).await;
    rig.run(&[Call::Fail; 3]).await;
    assert_eq!(rig.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn judges_exactly_at_minimum_calls() {
    let rig = Rig::new(builder().minimum_calls(5));
    rig.run(&[Call::Fail; 4]).await;
    assert_eq!(rig.state(), CircuitState::Closed, "4 calls < minimum 5");
    rig.run(&[Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_reaching_the_minimum_can_open_it() {
    let rig = Rig::new(builder().minimum_calls(4));
    rig.run(&[Call::Fail, Call::Fail, Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    rig.run(&[Call::Ok]).await;
    assert_eq!(
        rig.state(),
        CircuitState::Open,
        "2 of 4 failed once the 4th call came in"
    );
}

#[tokio::test(start_paused = true)]
async fn old_failures_slide_out_of_the_count_window() {
    let rig = Rig::new(builder().count_window(4).minimum_calls(4));
    rig.run(&[Call::Fail, Call::Ok, Call::Ok, Call::Ok]).await;
    rig.run(&[Call::Ok; 4]).await;
    assert_eq!(rig.handle.snapshot().failures, 0, "the failure slid out");
    rig.run(&[Call::Fail, Call::Ok, Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    rig.run(&[Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open, "2 of the last 4");
}

#[tokio::test(start_paused = true)]
async fn open_rejects_without_calling_the_backend() {
    let rig = Rig::new(builder());
    trip(&rig).await;
    let before = rig.inner_calls();
    tokio::time::advance(3 * SEC).await;
    let err = rig.call(Call::Ok).await.unwrap_err();
    assert!(
        matches!(err, InferenceError::CircuitOpen { retry_in } if retry_in == 7 * SEC),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(rig.inner_calls(), before);
    assert!(
        rig.events
            .lock()
            .unwrap()
            .contains(&"m: rejected".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn open_duration_boundary() {
    let rig = Rig::new(builder());
    trip(&rig).await;
    tokio::time::advance(10 * SEC - MS).await;
    assert!(
        rig.call(Call::Ok).await.is_err(),
        "1 ms before the end: still open"
    );
    assert_eq!(rig.state(), CircuitState::Open);
    tokio::time::advance(MS).await;
    assert_eq!(
        rig.call(Call::Ok).await.unwrap(),
        "ok",
        "at the end: a probe passes"
    );
    assert_eq!(rig.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_the_probe_limit() {
    let rig = Rig::new(builder().half_open_probes(2));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    let before = rig.inner_calls();
    let probes: Vec<_> = (0..2)
        .map(|_| tokio::spawn(rig.svc.clone().oneshot(Call::Slow(SEC))))
        .collect();
    tokio::time::sleep(MS).await;
    assert_eq!(rig.handle.snapshot().probes_in_flight, 2);
    let err = rig.call(Call::Ok).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::CircuitOpen,
        "a third call fails fast"
    );
    assert_eq!(rig.inner_calls(), before + 2);
    for probe in probes {
        probe.await.unwrap().unwrap();
    }
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_succeeding_close_it_and_clear_the_window() {
    let rig = Rig::new(builder().half_open_probes(2));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::HalfOpen, "one probe of two");
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    let snap = rig.handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (0, 0));
    assert_eq!(
        rig.transitions(),
        [
            "m: closed -> open",
            "m: open -> half_open",
            "m: half_open -> closed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_it() {
    let rig = Rig::new(builder().half_open_probes(3));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    rig.run(&[Call::Ok, Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    let err = rig.call(Call::Ok).await.unwrap_err();
    assert!(matches!(err, InferenceError::CircuitOpen { retry_in } if retry_in == 10 * SEC));
    assert_eq!(rig.transitions().last().unwrap(), "m: half_open -> open");
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_on_reopening_up_to_the_cap_and_resets_on_close() {
    let rig = Rig::new(
        builder()
            .half_open_probes(1)
            .open_duration_growth(2.0, 30 * SEC),
    );
    trip(&rig).await;
    let retry_in = || rig.handle.snapshot().retry_in.unwrap();
    assert_eq!(retry_in(), 10 * SEC);
    for expected in [20 * SEC, 30 * SEC, 30 * SEC] {
        tokio::time::advance(retry_in()).await;
        rig.run(&[Call::Fail]).await;
        assert_eq!(rig.state(), CircuitState::Open);
        assert_eq!(retry_in(), expected);
    }
    tokio::time::advance(retry_in()).await;
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    trip(&rig).await;
    assert_eq!(retry_in(), 10 * SEC, "a close resets the growth");
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_reset() {
    let rig = Rig::new(builder());
    rig.handle.force_open();
    assert_eq!(rig.state(), CircuitState::ForcedOpen);
    tokio::time::advance(3600 * SEC).await;
    assert_eq!(
        rig.call(Call::Ok).await.unwrap_err().kind(),
        ErrorKind::CircuitOpen
    );
    assert_eq!(rig.inner_calls(), 0);
    rig.handle.reset();
    assert_eq!(rig.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(
        rig.transitions(),
        ["m: closed -> forced_open", "m: forced_open -> closed"]
    );
}

#[tokio::test(start_paused = true)]
async fn forced_closed_passes_everything_and_records_nothing() {
    let rig = Rig::new(builder());
    trip(&rig).await;
    rig.handle.force_closed();
    assert_eq!(rig.state(), CircuitState::Disabled);
    rig.run(&[Call::Fail; 50]).await;
    assert_eq!(rig.state(), CircuitState::Disabled);
    assert_eq!(rig.inner_calls(), 60);
    rig.handle.reset();
    let snap = rig.handle.snapshot();
    assert_eq!((snap.state, snap.calls), (CircuitState::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_even_when_they_succeed() {
    let rig = Rig::new(
        builder()
            .minimum_calls(4)
            .slow_call_duration(SEC)
            .slow_call_rate_threshold(0.5),
    );
    rig.run(&[Call::Ok, Call::Slow(SEC), Call::Slow(SEC + MS)])
        .await;
    let snap = rig.handle.snapshot();
    assert_eq!(
        (snap.calls, snap.slow_calls),
        (3, 1),
        "exactly the limit is not slow"
    );
    rig.run(&[Call::Slow(2 * SEC)]).await;
    assert_eq!(rig.state(), CircuitState::Open, "2 of 4 slow");
    assert_eq!(rig.handle.snapshot().slow_call_rate, 0.5);
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_is_ignored_unless_a_duration_is_set() {
    let rig = Rig::new(builder().minimum_calls(2).slow_call_rate_threshold(0.1));
    rig.run(&[Call::Slow(100 * SEC), Call::Slow(100 * SEC)])
        .await;
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn caller_faults_are_not_recorded() {
    let rig = Rig::new(builder().minimum_calls(1));
    rig.run(&[Call::Caller; 100]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    assert_eq!(rig.handle.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn ignored_kinds_are_not_recorded() {
    // `Call::Fail` fails with `Infrastructure`.
    let rig = Rig::new(builder().minimum_calls(1).ignore(ErrorKind::Infrastructure));
    rig.run(&[Call::Fail; 100]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    assert_eq!(rig.handle.snapshot().calls, 0);
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.handle.snapshot().calls, 1);

    // Ignoring another kind leaves `Infrastructure` counted.
    let rig = Rig::new(builder().minimum_calls(5).ignore(ErrorKind::Overloaded));
    rig.run(&[Call::Fail; 5]).await;
    assert_eq!(rig.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_failure_decides_nothing() {
    let rig = Rig::new(
        builder()
            .half_open_probes(1)
            .ignore(ErrorKind::Infrastructure)
            .slow_call_duration(MS)
            .slow_call_rate_threshold(0.5),
    );
    // Tripped by slow calls, as `Infrastructure` failures cannot trip it.
    rig.run(&[Call::Slow(10 * MS); 10]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    tokio::time::advance(10 * SEC).await;
    rig.run(&[Call::Fail]).await;
    assert_eq!(
        rig.state(),
        CircuitState::HalfOpen,
        "the ignored failure decided nothing"
    );
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_are_not_recorded() {
    let rig = Rig::new(builder().minimum_calls(1).failure_rate_threshold(0.01));
    let call = rig.svc.clone().oneshot(Call::Hang);
    assert!(tokio::time::timeout(SEC, call).await.is_err());
    assert_eq!(rig.handle.snapshot().calls, 0);
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_returns_its_place() {
    let rig = Rig::new(builder().half_open_probes(1));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    let probe = rig.svc.clone().oneshot(Call::Hang);
    assert!(tokio::time::timeout(SEC, probe).await.is_err());
    assert_eq!(rig.handle.snapshot().probes_in_flight, 0);
    assert_eq!(
        rig.call(Call::Ok).await.unwrap(),
        "ok",
        "the place was given back"
    );
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_caller_fault_probe_decides_nothing() {
    let rig = Rig::new(builder().half_open_probes(1));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    rig.run(&[Call::Caller]).await;
    assert_eq!(rig.state(), CircuitState::HalfOpen);
    rig.run(&[Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_reserved_probe_place_is_returned_when_the_service_is_dropped() {
    let rig = Rig::new(builder().half_open_probes(1));
    trip(&rig).await;
    tokio::time::advance(10 * SEC).await;
    let mut svc = rig.svc.clone();
    svc.ready().await.unwrap();
    assert_eq!(
        rig.handle.snapshot().probes_in_flight,
        1,
        "poll_ready reserved the probe"
    );
    drop(svc);
    assert_eq!(rig.handle.snapshot().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_calls() {
    let rig = Rig::new(builder().time_window(10 * SEC, 10).minimum_calls(3));
    rig.run(&[Call::Fail, Call::Fail]).await;
    tokio::time::advance(10 * SEC).await;
    assert_eq!(
        rig.handle.snapshot().calls,
        0,
        "both fell out of the window"
    );
    rig.run(&[Call::Fail, Call::Ok]).await;
    assert_eq!(rig.state(), CircuitState::Closed);
    tokio::time::advance(5 * SEC).await;
    rig.run(&[Call::Fail]).await;
    let snap = rig.handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (3, 2));
    assert_eq!(rig.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_spans_its_buckets_exactly() {
    let rig = Rig::new(builder().time_window(10 * SEC, 10).minimum_calls(100));
    for _ in 0..10 {
        rig.run(&[Call::Fail]).await;
        tokio::time::advance(SEC).await;
    }
    // Calls at 0..=9 s; now 10 s: the bucket of 0 s has left the window.
    assert_eq!(rig.handle.snapshot().calls, 9);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_ready_at_once_when_it_will_reject() {
    let layer = builder().build();
    layer.handle().force_open();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(NeverReady);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    assert_eq!(
        svc.call(()).await.unwrap_err().kind(),
        ErrorKind::CircuitOpen
    );

    layer.handle().reset();
    assert!(
        svc.poll_ready(&mut cx).is_pending(),
        "closed: the inner service's readiness"
    );
}

#[tokio::test(start_paused = true)]
async fn composes_with_tower_timeout_in_a_box_error_stack() {
    let layer = builder().minimum_calls(2).build();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .timeout(SEC)
        .map_err(BoxError::from)
        .service(backend(calls));
    for _ in 0..2 {
        let err = svc.clone().oneshot(Call::Hang).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>());
    }
    assert_eq!(handle.state(), CircuitState::Open, "timeouts are failures");
    let err = svc.oneshot(Call::Ok).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<InferenceError>()
            .map(InferenceError::kind),
        Some(ErrorKind::CircuitOpen)
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_isolated() {
    let layer = builder()
        .minimum_calls(2)
        .max_keys(2)
        .build_keyed(|req: &(&'static str, Call)| req.0);
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = backend(calls.clone());
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(move |(_, call): (&'static str, Call)| {
            inner.clone().oneshot(call)
        }));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("llama", Call::Fail)).await;
    }
    assert_eq!(
        svc.clone().oneshot(("mistral", Call::Ok)).await.unwrap(),
        "ok"
    );
    let llama = layer.handle(&"llama").unwrap();
    let mistral = layer.handle(&"mistral").unwrap();
    assert_eq!(llama.state(), CircuitState::Open);
    assert_eq!(mistral.state(), CircuitState::Closed);
    assert_eq!(llama.name(), "m/llama");
    let err = svc.clone().oneshot(("llama", Call::Ok)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Past max_keys, further keys share the overflow breaker: memory stays bounded.
    for key in ["a", "b", "c"] {
        let _ = svc.clone().oneshot((key, Call::Fail)).await;
    }
    assert!(layer.handle(&"a").is_none());
    assert_eq!(layer.handles().len(), 2);
    assert_eq!(layer.overflow_handle().state(), CircuitState::Open);
    assert_eq!(layer.overflow_handle().name(), "m/overflow");
}

/// An inner service that is never ready.
struct NeverReady;

impl Service<()> for NeverReady {
    type Response = ();
    type Error = InferenceError;
    type Future = std::future::Ready<Result<(), InferenceError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_count_window_smaller_than_the_minimum_still_opens() {
    // The default minimum (20 calls) is more than this window can hold: the window's size is
    // the minimum then, as in resilience4j.
    let rig = Rig::new(BreakerLayer::builder().count_window(10));
    rig.run(&[Call::Fail; 10]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    assert_eq!(rig.inner_calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_holds_half_open_only_for_the_maximum_wait() {
    let rig = Rig::new(
        BreakerLayer::builder()
            .count_window(4)
            .minimum_calls(2)
            .open_duration(5 * SEC)
            .half_open_probes(1)
            .half_open_max_wait(30 * SEC),
    );
    rig.run(&[Call::Fail, Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    tokio::time::advance(5 * SEC).await;

    // The one probe hangs.
    let hung = tokio::spawn(rig.svc.clone().oneshot(Call::Slow(3_600 * SEC)));
    tokio::task::yield_now().await;
    assert_eq!(rig.state(), CircuitState::HalfOpen);
    assert!(rig.call(Call::Ok).await.is_err(), "its slot is taken");

    tokio::time::advance(30 * SEC).await;
    let err = rig.call(Call::Ok).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(
        rig.state(),
        CircuitState::Open,
        "the wait is over: open again"
    );

    // After the open duration, a fresh probe finds the backend healthy.
    tokio::time::advance(5 * SEC).await;
    assert!(rig.call(Call::Ok).await.is_ok());
    assert_eq!(rig.state(), CircuitState::Closed);
    hung.abort();
    assert_eq!(
        rig.transitions(),
        [
            "breaker: closed -> open",
            "breaker: open -> half_open",
            "breaker: half_open -> open",
            "breaker: open -> half_open",
            "breaker: half_open -> closed",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_made_ready_while_closed_fails_fast_once_the_breaker_opened() {
    let rig = Rig::new(BreakerLayer::builder().count_window(4).minimum_calls(2));
    // Made ready while closed, and held ready (as tower's ReadyCache and Balance do).
    let mut held = rig.svc.clone();
    held.ready().await.unwrap();
    rig.run(&[Call::Fail, Call::Fail]).await;
    assert_eq!(rig.state(), CircuitState::Open);
    let before = rig.inner_calls();
    let err = held.call(Call::Ok).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(rig.inner_calls(), before, "the backend was not called");

    // The same after the application forces the breaker open.
    let rig = Rig::new(BreakerLayer::builder());
    let mut held = rig.svc.clone();
    held.ready().await.unwrap();
    rig.handle.force_open();
    assert!(held.call(Call::Ok).await.is_err());
    assert_eq!(rig.inner_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_rule_closes_when_probes_fail_below_the_threshold() {
    let builder = || {
        BreakerLayer::builder()
            .count_window(4)
            .minimum_calls(2)
            .failure_rate_threshold(0.5)
            .open_duration(5 * SEC)
            .half_open_probes(4)
    };
    let probes = [Call::Fail, Call::Ok, Call::Ok, Call::Ok];

    // The default rule: the first failed probe re-opens.
    let strict = Rig::new(builder());
    strict.run(&[Call::Fail, Call::Fail]).await;
    tokio::time::advance(5 * SEC).await;
    strict.run(&probes).await;
    assert_eq!(strict.state(), CircuitState::Open);

    // The rate rule: one failure in four probes is 25 %, under the 50 % threshold.
    let by_rate = Rig::new(builder().probe_rule(ProbeRule::FailureRate));
    by_rate.run(&[Call::Fail, Call::Fail]).await;
    tokio::time::advance(5 * SEC).await;
    by_rate.run(&probes[..3]).await;
    assert_eq!(
        by_rate.state(),
        CircuitState::HalfOpen,
        "one probe still to come"
    );
    by_rate.run(&probes[3..]).await;
    assert_eq!(by_rate.state(), CircuitState::Closed);

    // Two failures reach 50 %: it re-opens at the second, without waiting for the rest.
    let failing = Rig::new(builder().probe_rule(ProbeRule::FailureRate));
    failing.run(&[Call::Fail, Call::Fail]).await;
    tokio::time::advance(5 * SEC).await;
    failing.run(&[Call::Ok, Call::Fail, Call::Fail]).await;
    assert_eq!(failing.state(), CircuitState::Open);
}

type KeyedLayer = tower_inference::breaker::KeyedBreakerLayer<
    &'static str,
    fn(&(&'static str, Call)) -> &'static str,
>;
type KeyedSvc = tower::util::BoxCloneService<(&'static str, Call), &'static str, InferenceError>;

/// A keyed layer with room for two keys, and the service it wraps around the backend.
fn keyed_rig(builder: BreakerBuilder) -> (KeyedLayer, KeyedSvc) {
    let layer = builder
        .minimum_calls(2)
        .max_keys(2)
        .build_keyed((|req: &(&'static str, Call)| req.0) as fn(&_) -> _);
    let inner = backend(Arc::new(AtomicUsize::new(0)));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(move |(_, call): (&'static str, Call)| {
            inner.clone().oneshot(call)
        }));
    (layer, tower::util::BoxCloneService::new(svc))
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_evict_idle_keys_for_new_ones() {
    let (layer, svc) = keyed_rig(builder());
    let mut held = svc.clone();
    for key in ["old-a", "old-b"] {
        held.ready()
            .await
            .unwrap()
            .call((key, Call::Ok))
            .await
            .unwrap();
    }
    // Both keys idle past the idle timeout (10 minutes by default).
    tokio::time::advance(10 * 60 * SEC + SEC).await;

    // A broken new model trips its own breaker...
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("broken", Call::Fail)).await;
    }
    let broken = layer
        .handle(&"broken")
        .expect("a new key gets its own breaker");
    assert_eq!(broken.state(), CircuitState::Open);
    // ...and a healthy new model is not refused for it.
    assert_eq!(
        svc.clone().oneshot(("healthy", Call::Ok)).await.unwrap(),
        "ok"
    );
    assert!(layer.handle(&"healthy").is_some());
    assert_eq!(layer.overflow_handle().state(), CircuitState::Closed);
    assert_eq!(layer.handles().len(), 2, "memory stays bounded by max_keys");
    assert!(layer.handle(&"old-a").is_none());

    // A clone that cached an evicted key's breaker goes back to the registry for it.
    // The map is full of keys in use, so the call goes to the overflow breaker, not to the
    // detached one the clone had cached.
    held.ready()
        .await
        .unwrap()
        .call(("old-a", Call::Ok))
        .await
        .unwrap();
    assert_eq!(layer.overflow_handle().snapshot().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_keep_keys_in_use_and_those_held_open() {
    let (layer, svc) = keyed_rig(builder().idle_timeout(60 * SEC));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("down", Call::Fail)).await;
    }
    layer.handle(&"down").unwrap().force_open();
    // A long-lived clone keeps "busy" in use through the breaker it cached.
    let mut held = svc.clone();
    for _ in 0..10 {
        held.ready()
            .await
            .unwrap()
            .call(("busy", Call::Ok))
            .await
            .unwrap();
        tokio::time::advance(10 * SEC).await;
    }
    // "busy" was used within the idle timeout and "down" is forced open: neither goes, so
    // a new key shares the overflow breaker.
    svc.clone().oneshot(("new", Call::Ok)).await.unwrap();
    assert!(layer.handle(&"new").is_none());
    assert_eq!(layer.overflow_handle().snapshot().calls, 1);
    assert_eq!(
        layer.handle(&"down").unwrap().state(),
        CircuitState::ForcedOpen
    );

    // Once "busy" has been idle for the timeout, the next new key takes its place.
    tokio::time::advance(61 * SEC).await;
    svc.clone().oneshot(("new", Call::Ok)).await.unwrap();
    assert!(layer.handle(&"new").is_some());
    assert!(layer.handle(&"busy").is_none());
    assert!(layer.handle(&"down").is_some());
}
