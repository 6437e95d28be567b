//! Property test: the breaker follows a small, obviously correct reference model.
//!
//! Random configurations and random sequences of calls (success, backend failure, caller
//! fault; fast or slow; or a call that never answers, which holds a probe's place) and time
//! steps are run through the real breaker on paused time and through the model below; after
//! every step both must agree on whether the call was let through and on the state. The
//! configurations cover both probe rules and the half-open maximum wait.

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use proptest::prelude::*;
use support::{Call, backend};
use tower::{Layer, ServiceExt};
use tower_inference::breaker::{BreakerLayer, ProbeRule};
use tower_inference::{CircuitState, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Success,
    Failure,
    CallerFault,
}

#[derive(Debug, Clone)]
enum Op {
    Call {
        kind: Kind,
        millis: u64,
    },
    Advance {
        millis: u64,
    },
    /// A call that never answers: let through, it is never recorded and, as a probe, it holds
    /// its place until the half-open phase ends.
    Hang,
}

#[derive(Debug, Clone)]
struct Config {
    window: usize,
    minimum: usize,
    failure_bp: u64,
    slow_bp: u64,
    slow_after_ms: u64,
    open_ms: u64,
    growth: u32,
    cap_ms: u64,
    probes: u32,
    /// Judge probes by their failure rate (resilience4j) rather than all succeeding.
    rate_rule: bool,
    /// The longest the breaker stays half-open with every probe place taken.
    max_wait_ms: u64,
}

/// The reference: a breaker written as plainly as possible, for one call at a time.
struct Model {
    cfg: Config,
    state: CircuitState,
    window: VecDeque<(bool, bool)>,
    open_until_ms: u64,
    reopens: u32,
    probe_successes: u32,
    /// Under the rate rule: probes completed, failed and slow in this half-open phase.
    probes: (u64, u64, u64),
    /// Probes of this half-open phase that never answer.
    hung: u32,
    half_open_until_ms: u64,
}

impl Model {
    fn new(cfg: Config) -> Self {
        Model {
            cfg,
            state: CircuitState::Closed,
            window: VecDeque::new(),
            open_until_ms: 0,
            reopens: 0,
            probe_successes: 0,
            probes: (0, 0, 0),
            hung: 0,
            half_open_until_ms: 0,
        }
    }

    fn open_for_ms(&self) -> u64 {
        let mut ms = self.cfg.open_ms;
        for _ in 0..self.reopens {
            ms = ms.saturating_mul(u64::from(self.cfg.growth));
        }
        ms.min(self.cfg.cap_ms.max(self.cfg.open_ms))
    }

    fn open(&mut self, at_ms: u64) {
        self.state = CircuitState::Open;
        self.open_until_ms = at_ms + self.open_for_ms();
    }

    fn should_trip(&self) -> bool {
        let calls = self.window.len() as u64;
        let failures = self.window.iter().filter(|s| s.0).count() as u64;
        let slow = self.window.iter().filter(|s| s.1).count() as u64;
        // A minimum above the count window's size is the size.
        calls >= self.cfg.minimum.min(self.cfg.window) as u64
            && ((failures > 0 && failures * 10_000 >= self.cfg.failure_bp * calls)
                || (slow > 0 && slow * 10_000 >= self.cfg.slow_bp * calls))
    }

    /// Moves an open breaker whose time is up to half-open; then decides admission. Returns
    /// whether a call arriving now is let through.
    fn admit(&mut self, now_ms: u64) -> bool {
        if self.state == CircuitState::Open && now_ms >= self.open_until_ms {
            self.state = CircuitState::HalfOpen;
            self.probe_successes = 0;
            self.probes = (0, 0, 0);
            self.hung = 0;
            self.half_open_until_ms = now_ms + self.cfg.max_wait_ms;
        }
        match self.state {
            CircuitState::Open => false,
            CircuitState::HalfOpen => {
                let counted = if self.cfg.rate_rule {
                    self.probes.0
                } else {
                    u64::from(self.probe_successes)
                };
                if u64::from(self.hung) + counted < u64::from(self.cfg.probes) {
                    return true;
                }
                // Every place is taken (by probes that hang): past the maximum wait, the
                // call that must be refused re-opens the breaker instead.
                if now_ms >= self.half_open_until_ms {
                    self.reopens += 1;
                    self.open(now_ms);
                }
                false
            }
            _ => true,
        }
    }

    /// A call that never answers; returns whether it was let through.
    fn hang(&mut self, now_ms: u64) -> bool {
        if !self.admit(now_ms) {
            return false;
        }
        if self.state == CircuitState::HalfOpen {
            self.hung += 1;
        }
        true
    }

    /// Returns whether the call was let through.
    fn call(&mut self, now_ms: u64, kind: Kind, millis: u64) -> bool {
        if !self.admit(now_ms) {
            return false;
        }
        let end = now_ms + millis;
        let slow = millis > self.cfg.slow_after_ms;
        match (self.state, kind) {
            (CircuitState::Open, _) => unreachable!("admitted while open"),
            (_, Kind::CallerFault) => {}
            (CircuitState::HalfOpen, kind) if self.cfg.rate_rule => {
                let (completed, failed, slow_count) = &mut self.probes;
                *completed += 1;
                *failed += u64::from(kind == Kind::Failure);
                *slow_count += u64::from(slow);
                let probes = u64::from(self.cfg.probes);
                let over = |count: u64, bp: u64| count > 0 && count * 10_000 >= bp * probes;
                if over(*failed, self.cfg.failure_bp) || over(*slow_count, self.cfg.slow_bp) {
                    self.reopens += 1;
                    self.open(end);
                } else if *completed == probes {
                    self.state = CircuitState::Closed;
                    self.window.clear();
                    self.reopens = 0;
                }
            }
            (CircuitState::HalfOpen, Kind::Failure) => {
                self.reopens += 1;
                self.open(end);
            }
            (CircuitState::HalfOpen, Kind::Success) if slow => {
                self.reopens += 1;
                self.open(end);
            }
            (CircuitState::HalfOpen, Kind::Success) => {
                self.probe_successes += 1;
                if self.probe_successes == self.cfg.probes {
                    self.state = CircuitState::Closed;
                    self.window.clear();
                    self.reopens = 0;
                }
            }
            (_, kind) => {
                self.window.push_back((kind == Kind::Failure, slow));
                if self.window.len() > self.cfg.window {
                    self.window.pop_front();
                }
                if self.should_trip() {
                    self.open(end);
                }
            }
        }
        true
    }
}

fn config() -> impl Strategy<Value = Config> {
    (
        1usize..8,
        1usize..8,
        prop::sample::select(vec![2_000u64, 3_000, 5_000, 7_500, 10_000]),
        prop::sample::select(vec![3_000u64, 5_000, 10_000]),
        1u32..4,
        prop::sample::select(vec![1u32, 2, 3]),
        any::<bool>(),
        prop::sample::select(vec![1_000u64, 5_000, 20_000]),
    )
        .prop_map(
            |(window, minimum, failure_bp, slow_bp, probes, growth, rate_rule, max_wait_ms)| {
                Config {
                    window,
                    minimum,
                    failure_bp,
                    slow_bp,
                    slow_after_ms: 1_000,
                    open_ms: 5_000,
                    growth,
                    cap_ms: 30_000,
                    probes,
                    rate_rule,
                    max_wait_ms,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop::sample::select(vec![
        Kind::Success,
        Kind::Success,
        Kind::Failure,
        Kind::CallerFault,
    ]);
    prop_oneof![
        4 => (kind, prop::sample::select(vec![0u64, 0, 400, 1_000, 1_001, 2_500]))
            .prop_map(|(kind, millis)| Op::Call { kind, millis }),
        1 => (0u64..12_000).prop_map(|millis| Op::Advance { millis }),
        1 => Just(Op::Hang),
    ]
}

fn run(cfg: Config, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let layer = BreakerLayer::builder()
            .count_window(cfg.window as u32)
            .minimum_calls(cfg.minimum as u32)
            .failure_rate_threshold(cfg.failure_bp as f64 / 10_000.0)
            .slow_call_duration(Duration::from_millis(cfg.slow_after_ms))
            .slow_call_rate_threshold(cfg.slow_bp as f64 / 10_000.0)
            .open_duration(Duration::from_millis(cfg.open_ms))
            .open_duration_growth(f64::from(cfg.growth), Duration::from_millis(cfg.cap_ms))
            .half_open_probes(cfg.probes)
            .half_open_max_wait(Duration::from_millis(cfg.max_wait_ms))
            .probe_rule(if cfg.rate_rule {
                ProbeRule::FailureRate
            } else {
                ProbeRule::AllSucceed
            })
            .build();
        let handle = layer.handle();
        let svc = layer.layer(backend(Arc::default()));
        let mut model = Model::new(cfg);
        // Calls that never answer, kept alive so a probe among them holds its place.
        let mut hanging = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance { millis } => tokio::time::advance(Duration::from_millis(millis)).await,
                Op::Hang => {
                    let now_ms = start.elapsed().as_millis() as u64;
                    let expected = model.hang(now_ms);
                    let mut call = Box::pin(svc.clone().oneshot(Call::Hang));
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                    let let_through = match polled {
                        Poll::Pending => true,
                        Poll::Ready(Err(e)) if e.kind() == ErrorKind::CircuitOpen => false,
                        Poll::Ready(other) => {
                            return Err(TestCaseError::fail(format!(
                                "a hanging call answered: {other:?}"
                            )));
                        }
                    };
                    prop_assert_eq!(let_through, expected, "step {}: {:?}", step, op);
                    hanging.push(call);
                }
                Op::Call { kind, millis } => {
                    let now_ms = start.elapsed().as_millis() as u64;
                    let expected = model.call(now_ms, kind, millis);
                    let d = Duration::from_millis(millis);
                    let call = match (kind, millis) {
                        (Kind::Success, 0) => Call::Ok,
                        (Kind::Success, _) => Call::Slow(d),
                        (Kind::Failure, 0) => Call::Fail,
                        (Kind::Failure, _) => Call::SlowFail(d),
                        (Kind::CallerFault, _) => Call::Caller,
                    };
                    let result = svc.clone().oneshot(call).await;
                    let let_through =
                        !matches!(&result, Err(e) if e.kind() == ErrorKind::CircuitOpen);
                    prop_assert_eq!(let_through, expected, "step {}: {:?}", step, op);
                }
            }
            prop_assert_eq!(
                handle.state(),
                model.state,
                "state after step {}: {:?}",
                step,
                op
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(cfg in config(), ops in prop::collection::vec(op(), 1..80)) {
        run(cfg, ops)?;
    }
}
