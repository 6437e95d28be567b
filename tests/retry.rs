//! The retry layer: what is retried, when, how often, within what budget. Paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_inference::retry::{Backoff, RetryBudget, RetryLayer};
use tower_inference::{ErrorKind, Event, InferenceError, ModelFailure, Served};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A backend that answers each attempt from a script (the last entry repeats) and logs when
/// each attempt arrived.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Result<u32, InferenceError>>>,
    log: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

impl Scripted {
    fn new(script: Vec<Result<u32, InferenceError>>) -> Self {
        Scripted {
            script: Arc::new(script),
            log: Arc::default(),
            start: Instant::now(),
        }
    }

    fn times(&self) -> Vec<Duration> {
        self.log.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

impl Service<&'static str> for Scripted {
    type Response = Served<u32>;
    type Error = InferenceError;
    type Future = std::future::Ready<Result<Served<u32>, InferenceError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        let mut log = self.log.lock().unwrap();
        log.push(self.start.elapsed());
        let step = (log.len() - 1).min(self.script.len() - 1);
        std::future::ready(self.script[step].clone().map(Served::new))
    }
}

fn timeout() -> InferenceError {
    InferenceError::timeout(SEC)
}

fn exact(base_ms: u64) -> Backoff {
    Backoff::new(Duration::from_millis(base_ms), 2.0, 10 * SEC).without_jitter()
}

#[tokio::test(start_paused = true)]
async fn exact_delay_sequence_without_jitter() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let backend = Scripted::new(vec![Err(timeout())]);
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(4)
                .backoff(exact(100))
                .without_budget()
                .event_sink(move |e: &Event<'_>| {
                    if let Event::RetryScheduled {
                        attempt,
                        kind,
                        delay,
                    } = e
                    {
                        sink.lock().unwrap().push((*attempt, *kind, *delay));
                    }
                })
                .build(),
        )
        .service(backend.clone());
    let err = svc.oneshot("q").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "the last error is returned");
    assert_eq!(
        backend.times(),
        [0, 100, 300, 700].map(Duration::from_millis)
    );
    assert_eq!(
        *events.lock().unwrap(),
        [
            (2, ErrorKind::Timeout, 100 * MS),
            (3, ErrorKind::Timeout, 200 * MS),
            (4, ErrorKind::Timeout, 400 * MS)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped() {
    let backoff = Backoff::new(SEC, 3.0, 5 * SEC).without_jitter();
    let delays: Vec<_> = (1..=6).map(|n| backoff.delay(n)).collect();
    assert_eq!(delays, [1, 3, 5, 5, 5, 5].map(Duration::from_secs));
    assert_eq!(
        Backoff::new(SEC, f64::NAN, 5 * SEC)
            .without_jitter()
            .delay(2),
        2 * SEC,
        "a NaN factor is the default, 2"
    );
    assert_eq!(
        Backoff::new(SEC, 10.0, 5 * SEC)
            .without_jitter()
            .delay(u32::MAX),
        5 * SEC
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_stays_within_bounds_and_is_reproducible() {
    let backoff = Backoff::new(100 * MS, 2.0, 10 * SEC).seed(7);
    let same = Backoff::new(100 * MS, 2.0, 10 * SEC).seed(7);
    let mut distinct = std::collections::BTreeSet::new();
    for retry in 1..=5u32 {
        for _ in 0..200 {
            let d = backoff.delay(retry);
            assert!(
                d <= backoff.ceiling(retry),
                "{d:?} over {:?}",
                backoff.ceiling(retry)
            );
            assert_eq!(d, same.delay(retry), "same seed, same draws");
            distinct.insert(d);
        }
    }
    assert!(
        distinct.len() > 900,
        "jitter spreads delays: {} distinct of 1000",
        distinct.len()
    );
}

#[tokio::test(start_paused = true)]
async fn non_retryable_failures_call_the_service_once() {
    let failures = [
        InferenceError::invalid_input("bad"),
        InferenceError::ContextLengthExceeded { input: 10, max: 5 },
        InferenceError::CircuitOpen { retry_in: SEC },
        InferenceError::ModelFailure {
            failure: ModelFailure::NanOutput,
        },
        InferenceError::OutOfMemory {
            used_mib: 1,
            available_mib: 0,
        },
        InferenceError::Exhausted { tiers: vec![] },
    ];
    for failure in failures {
        let kind = failure.kind();
        let backend = Scripted::new(vec![Err(failure)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(backend.clone());
        assert_eq!(svc.oneshot("q").await.unwrap_err().kind(), kind);
        assert_eq!(backend.calls(), 1, "{kind} is not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried() {
    for failure in [
        timeout(),
        InferenceError::infrastructure(),
        InferenceError::ModelNotReady { retry_after: None },
        InferenceError::Overloaded {
            queue_depth: 3,
            retry_after: None,
        },
    ] {
        let backend = Scripted::new(vec![Err(failure), Ok(7)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new())
            .service(backend.clone());
        let answer = svc.oneshot("q").await.unwrap();
        assert_eq!((*answer, answer.provenance.attempts), (7, 2));
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_answer_is_left_untouched() {
    let backend = Scripted::new(vec![Ok(1)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(backend);
    let answer = svc.oneshot("q").await.unwrap();
    assert_eq!(answer.provenance, Default::default());
}

#[tokio::test(start_paused = true)]
async fn the_longer_of_backoff_and_retry_after_wins() {
    // backoff base, retry-after -> when the retry starts
    for (base_ms, after, expected) in [(100, 2 * SEC, 2 * SEC), (300, 50 * MS, 300 * MS)] {
        let overloaded = InferenceError::Overloaded {
            queue_depth: 9,
            retry_after: Some(after),
        };
        let backend = Scripted::new(vec![Err(overloaded), Ok(1)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::builder().backoff(exact(base_ms)).build())
            .service(backend.clone());
        svc.oneshot("q").await.unwrap();
        assert_eq!(
            backend.times(),
            [Duration::ZERO, expected],
            "backoff {base_ms} ms, retry-after {after:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_above_the_cap_is_not_retried() {
    for (after, calls) in [(30 * SEC, 2), (30 * SEC + MS, 1)] {
        let overloaded = InferenceError::Overloaded {
            queue_depth: 9,
            retry_after: Some(after),
        };
        let backend = Scripted::new(vec![Err(overloaded), Ok(1)]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::builder().max_retry_after(30 * SEC).build())
            .service(backend.clone());
        let _ = svc.oneshot("q").await;
        assert_eq!(backend.calls(), calls, "retry-after {after:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_stops_attempts_whose_delay_would_end_past_it() {
    // Attempts at 0 and 400 ms; the next would start at 1200 ms, past the 1 s deadline.
    let backend = Scripted::new(vec![Err(timeout())]);
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(10)
                .backoff(exact(400))
                .deadline(SEC)
                .without_budget()
                .build(),
        )
        .service(backend.clone());
    let _ = svc.oneshot("q").await;
    assert_eq!(backend.times(), [Duration::ZERO, 400 * MS]);

    // A retry ending exactly at the deadline still starts.
    let backend = Scripted::new(vec![Err(timeout())]);
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(10)
                .backoff(exact(400))
                .deadline(1200 * MS)
                .without_budget()
                .build(),
        )
        .service(backend.clone());
    let _ = svc.oneshot("q").await;
    assert_eq!(backend.times(), [0, 400, 1200].map(Duration::from_millis));
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_returns_the_last_error_and_says_so() {
    let exhausted = Arc::new(Mutex::new(0));
    let sink = exhausted.clone();
    // No reserve and no share of deposits: nothing may be retried.
    let budget = Arc::new(RetryBudget::new(10 * SEC, 0, 0.0));
    let backend = Scripted::new(vec![Err(timeout())]);
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .budget(budget)
                .event_sink(move |e: &Event<'_>| {
                    if matches!(
                        e,
                        Event::BudgetExhausted {
                            kind: ErrorKind::Timeout
                        }
                    ) {
                        *sink.lock().unwrap() += 1;
                    }
                })
                .build(),
        )
        .service(backend.clone());
    assert_eq!(
        svc.oneshot("q").await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(backend.calls(), 1);
    assert_eq!(*exhausted.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn single_attempt_layers_pass_through() {
    let backend = Scripted::new(vec![Err(timeout()), Ok(1)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().max_attempts(1).build())
        .service(backend.clone());
    assert!(svc.oneshot("q").await.is_err());
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn works_as_a_tower_retry_policy() {
    let budget = Arc::new(RetryBudget::new(10 * SEC, 0, 1.0));
    let backend = Scripted::new(vec![Err(timeout()), Ok(3)]);
    let policy = RetryLayer::builder()
        .backoff(exact(100))
        .budget(budget.clone())
        .build_policy();
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(policy))
        .service(backend.clone());
    let answer = svc.clone().oneshot("q").await.unwrap();
    assert_eq!((*answer, answer.provenance.attempts), (3, 2));
    assert_eq!(backend.times(), [Duration::ZERO, 100 * MS]);
    // One deposit (the first attempt) and one withdrawal (the retry).
    assert_eq!(budget.balance(), 0);
    svc.oneshot("q").await.unwrap();
    assert_eq!(budget.balance(), 1, "a second request deposited once");
}

/// Ready once; every later `poll_ready` fails. Every call times out.
#[derive(Clone, Default)]
struct ReadyOnce(Arc<Mutex<(usize, usize)>>);

impl Service<&'static str> for ReadyOnce {
    type Response = Served<u32>;
    type Error = InferenceError;
    type Future = std::future::Ready<Result<Served<u32>, InferenceError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        let mut counts = self.0.lock().unwrap();
        counts.0 += 1;
        std::task::Poll::Ready(if counts.0 == 1 {
            Ok(())
        } else {
            Err(InferenceError::infrastructure())
        })
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        self.0.lock().unwrap().1 += 1;
        std::future::ready(Err(timeout()))
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_from_poll_ready_ends_the_retries() {
    let backend = ReadyOnce::default();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::builder().backoff(exact(1)).build())
        .service(backend.clone());
    let err = svc.oneshot("q").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Infrastructure,
        "the readiness error is returned"
    );
    assert_eq!(
        *backend.0.lock().unwrap(),
        (2, 1),
        "two readiness checks, one call"
    );
}

/// Counts its clones, and the readiness checks and calls each clone saw (by clone number, 0
/// the original); fails every call while `failing` is set.
#[derive(Default)]
struct CountedClones {
    id: usize,
    log: Arc<Mutex<CloneLog>>,
}

#[derive(Default, Debug, PartialEq)]
struct CloneLog {
    failing: bool,
    clones: usize,
    ready: Vec<usize>,
    called: Vec<usize>,
}

impl Clone for CountedClones {
    fn clone(&self) -> Self {
        let mut log = self.log.lock().unwrap();
        log.clones += 1;
        CountedClones {
            id: log.clones,
            log: self.log.clone(),
        }
    }
}

impl Service<&'static str> for CountedClones {
    type Response = Served<u32>;
    type Error = InferenceError;
    type Future = std::future::Ready<Result<Served<u32>, InferenceError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InferenceError>> {
        self.log.lock().unwrap().ready.push(self.id);
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        let mut log = self.log.lock().unwrap();
        log.called.push(self.id);
        std::future::ready(if log.failing {
            Err(timeout())
        } else {
            Ok(Served::new(1))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_answered_call_clones_no_service_and_each_retry_calls_a_fresh_ready_clone() {
    let backend = CountedClones::default();
    let log = backend.log.clone();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(exact(1))
                .build(),
        )
        .service(backend);
    assert_eq!(
        log.lock().unwrap().clones,
        1,
        "the layer keeps one clone for retries"
    );

    for _ in 0..3 {
        svc.ready().await.unwrap().call("q").await.unwrap();
    }
    let answered = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(answered.clones, 1, "answered calls clone no service");
    assert_eq!(answered.ready, [0, 0, 0]);
    assert_eq!(
        answered.called,
        [0, 0, 0],
        "each call went to the service made ready"
    );

    // Clone numbers start afresh: the retries' clones are 1 and 2.
    log.lock().unwrap().failing = true;
    svc.ready().await.unwrap().call("q").await.unwrap_err();
    let retried = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(retried.clones, 2, "one clone per retry");
    assert_eq!(
        retried.ready,
        [0, 1, 2],
        "each retry's clone is made ready first"
    );
    assert_eq!(retried.called, [0, 1, 2]);
}

#[cfg(feature = "mock")]
mod with_mock_gpu {
    use super::*;
    use tower_inference::mock::{ChaosLayer, InferenceRequest, MockGpu};
    use tower_inference::retry::OOM_WARNING;
    use tower_inference::{Annotate, GenerationParams};

    fn gpu_fitting(mib: u64) -> MockGpu {
        MockGpu::builder()
            .zero_latency()
            .model_memory_mib(0)
            .request_memory_mib(0)
            .kib_per_token(1024)
            .memory_capacity_mib(mib)
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn oom_retry_sends_a_smaller_request_exactly_once() {
        // 1 prompt token + 100 generated = 101 MiB; halved: 1 + 50 = 51 MiB.
        let gpu = gpu_fitting(60);
        let handle = gpu.handle();
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::builder().oom_retry().build())
            .service(gpu);
        let answer = svc
            .oneshot(InferenceRequest::new("q").max_tokens(100))
            .await
            .unwrap();
        assert_eq!(answer.tokens, 50);
        let p = answer.provenance().unwrap();
        assert_eq!(p.attempts, 2);
        assert_eq!(p.warnings(), [OOM_WARNING]);
        assert_eq!(handle.stats().calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn oom_retry_is_not_repeated_when_the_smaller_request_fails_too() {
        let gpu = gpu_fitting(40);
        let handle = gpu.handle();
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::builder().max_attempts(5).oom_retry().build())
            .service(gpu);
        let err = svc
            .oneshot(InferenceRequest::new("q").max_tokens(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfMemory);
        assert_eq!(handle.stats().calls, 2, "one smaller retry, then the error");
    }

    #[tokio::test(start_paused = true)]
    async fn oom_is_not_retried_unless_asked() {
        let gpu = gpu_fitting(60);
        let handle = gpu.handle();
        let svc = ServiceBuilder::new().layer(RetryLayer::new()).service(gpu);
        let request = InferenceRequest::new("q").params(GenerationParams::new(100));
        assert_eq!(
            svc.oneshot(request).await.unwrap_err().kind(),
            ErrorKind::OutOfMemory
        );
        assert_eq!(handle.stats().calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_storm_is_bounded_by_the_budget() {
        const REQUESTS: usize = 10_000;
        let gpu = MockGpu::builder()
            .zero_latency()
            .queue_capacity(2 * REQUESTS)
            .build();
        let handle = gpu.handle();
        // 10 % of requests, plus 1 retry a second over 10 s: a reserve of 10.
        let budget = Arc::new(RetryBudget::new(10 * SEC, 1, 0.1));
        let svc = ServiceBuilder::new()
            .layer(
                RetryLayer::builder()
                    .max_attempts(3)
                    .backoff(exact(10))
                    .budget(budget)
                    .build(),
            )
            .service(gpu);

        let run = |svc: tower_inference::retry::Retry<MockGpu, _, _>| async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..REQUESTS {
                let svc = svc.clone();
                tasks.spawn(async move {
                    svc.oneshot(InferenceRequest::new(format!("request {i}")).max_tokens(2))
                        .await
                });
            }
            let mut ok = 0;
            while let Some(result) = tasks.join_next().await {
                ok += usize::from(result.unwrap().is_ok());
            }
            ok
        };

        handle.kill();
        assert_eq!(run(svc.clone()).await, 0);
        let attempts = handle.stats().calls as usize;
        assert!(attempts >= REQUESTS);
        assert!(
            attempts <= REQUESTS + REQUESTS / 10 + 10,
            "{attempts} attempts for {REQUESTS} requests"
        );

        handle.revive();
        assert_eq!(
            run(svc).await,
            REQUESTS,
            "every request succeeds once the model is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flaky_model_is_answered_on_a_later_try() {
        let chaos = ChaosLayer::builder()
            .error_rate(0.3)
            .errors([
                InferenceError::infrastructure(),
                InferenceError::timeout(SEC),
            ])
            .seed(3)
            .build();
        let svc = ServiceBuilder::new()
            .layer(
                RetryLayer::builder()
                    .max_attempts(4)
                    .backoff(exact(10))
                    .without_budget()
                    .build(),
            )
            .layer(chaos.clone())
            .service(MockGpu::builder().zero_latency().build());
        let (mut retried, mut failed, mut failed_attempts) = (0, 0, 0);
        for i in 0..200 {
            match svc
                .clone()
                .oneshot(InferenceRequest::new(format!("q{i}")))
                .await
            {
                Ok(answer) => {
                    let attempts = answer.provenance.attempts;
                    retried += usize::from(attempts > 1);
                    failed_attempts += u64::from(attempts - 1);
                }
                Err(_) => {
                    failed += 1;
                    failed_attempts += 4;
                }
            }
        }
        assert!(retried > 40, "{retried} of 200 answered on a later try");
        assert!(
            failed <= 4,
            "{failed} of 200 failed 4 times at a 30 % failure rate"
        );
        assert_eq!(
            chaos.handle().injected_errors(),
            failed_attempts,
            "every injected failure was retried or returned"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_while_waiting_to_retry_refunds_the_budget() {
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 1, 0.0));
    assert_eq!(budget.balance(), 10);
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(
                    Backoff::new(Duration::from_secs(1), 1.0, Duration::from_secs(1))
                        .without_jitter(),
                )
                .budget(budget.clone())
                .build(),
        )
        .service(tower::service_fn(|_: u32| async {
            Err::<Served<u32>, _>(InferenceError::infrastructure())
        }));
    for _ in 0..5 {
        // The first attempt fails at once; the retry waits 1 s; the caller gives up after 0.5 s.
        let call = tokio::time::timeout(Duration::from_millis(500), svc.clone().oneshot(7));
        assert!(
            call.await.is_err(),
            "the caller gave up while the retry waited"
        );
    }
    assert_eq!(budget.balance(), 10, "every withdrawal was given back");

    // A retry that did run keeps its withdrawal.
    let _ = svc.clone().oneshot(7).await;
    assert_eq!(budget.balance(), 8);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_attempt_in_flight() {
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .deadline(SEC_1)
                .build(),
        )
        .service(tower::service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, InferenceError>(Served::new(1u32))
        }));
    let started = Instant::now();
    let err = svc.oneshot(7).await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        SEC_1,
        "ended at the deadline, not after 10 s"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(matches!(err, InferenceError::Timeout { after, .. } if after == SEC_1));
}

const SEC_1: Duration = Duration::from_secs(1);
