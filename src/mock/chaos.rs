//! [`ChaosLayer`]: fault injection for any service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::Rng;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::InferenceError;
use crate::rng::{clamp_probability, draw_rng};
use crate::setting;

#[derive(Debug)]
struct ChaosShared {
    errors: Vec<InferenceError>,
    error_rate: AtomicU64,
    latency_rate: AtomicU64,
    latency_nanos: AtomicU64,
    enabled: AtomicBool,
    seed: u64,
    calls: AtomicU64,
    injected_errors: AtomicU64,
    injected_delays: AtomicU64,
}

/// Injects errors and extra latency into the service it wraps, at rates a [`ChaosHandle`]
/// can change at run time.
///
/// With probability `error_rate` a call fails at once with one of the configured errors
/// (chosen uniformly) without reaching the inner service; otherwise, with probability
/// `latency_rate`, its answer is held back by the extra latency. Draws come from a seeded
/// generator, so the same seed and calls give the same faults.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_inference::mock::{ChaosLayer, InferenceRequest, MockGpu};
/// use tower_inference::{ErrorKind, InferenceError};
///
/// let chaos = ChaosLayer::builder()
///     .error_rate(1.0)
///     .errors([InferenceError::Overloaded { queue_depth: 9, retry_after: None }])
///     .build();
/// let handle = chaos.handle();
/// let svc = ServiceBuilder::new()
///     .layer(chaos)
///     .service(MockGpu::builder().zero_latency().build());
///
/// let err = svc.clone().oneshot(InferenceRequest::new("hi")).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Overloaded);
///
/// handle.set_error_rate(0.0);
/// assert!(svc.oneshot(InferenceRequest::new("hi")).await.is_ok());
/// assert_eq!(handle.injected_errors(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    shared: Arc<ChaosShared>,
}

impl Default for ChaosLayer {
    fn default() -> Self {
        ChaosLayer::builder().build()
    }
}

impl ChaosLayer {
    /// A builder that injects nothing until configured.
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder {
            errors: vec![InferenceError::infrastructure()],
            error_rate: 0.0,
            latency_rate: 0.0,
            latency: Duration::ZERO,
            seed: 0xC4A05,
        }
    }

    /// The handle shared by this layer and every service it builds.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Configures a [`ChaosLayer`]; every setting documents its default.
#[derive(Debug, Clone)]
pub struct ChaosBuilder {
    errors: Vec<InferenceError>,
    error_rate: f64,
    latency_rate: f64,
    latency: Duration,
    seed: u64,
}

impl ChaosBuilder {
    /// The errors to inject, one chosen uniformly per injected failure (default
    /// `[Infrastructure]`; an empty list keeps the default).
    pub fn errors(mut self, errors: impl IntoIterator<Item = InferenceError>) -> Self {
        let errors: Vec<_> = errors.into_iter().collect();
        if !errors.is_empty() {
            self.errors = errors;
        }
        self
    }

    /// Probability that a call fails with an injected error (default 0; clamped to `[0, 1]`).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = setting::share("chaos.error_rate", rate, 0.0);
        self
    }

    /// Probability that an answer is delayed by `extra` (default 0; clamped to `[0, 1]`).
    pub fn latency(mut self, rate: f64, extra: Duration) -> Self {
        self.latency_rate = setting::share("chaos.latency rate", rate, 0.0);
        self.latency = extra;
        self
    }

    /// Seed of the generator that decides which calls are hit (default `0xC4A05`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> ChaosLayer {
        ChaosLayer {
            shared: Arc::new(ChaosShared {
                errors: self.errors,
                error_rate: AtomicU64::new(self.error_rate.to_bits()),
                latency_rate: AtomicU64::new(self.latency_rate.to_bits()),
                latency_nanos: AtomicU64::new(nanos(self.latency)),
                enabled: AtomicBool::new(true),
                seed: self.seed,
                calls: AtomicU64::new(0),
                injected_errors: AtomicU64::new(0),
                injected_delays: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for ChaosLayer {
    type Service = Chaos<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos {
            inner,
            shared: self.shared.clone(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Changes a [`ChaosLayer`]'s rates at run time and counts what it injected.
#[derive(Debug, Clone)]
pub struct ChaosHandle {
    shared: Arc<ChaosShared>,
}

impl ChaosHandle {
    /// Sets the probability of an injected error (clamped to `[0, 1]`).
    pub fn set_error_rate(&self, rate: f64) {
        self.shared
            .error_rate
            .store(clamp_probability(rate).to_bits(), Relaxed);
    }

    /// Sets the probability and size of injected latency.
    pub fn set_latency(&self, rate: f64, extra: Duration) {
        self.shared.latency_nanos.store(nanos(extra), Relaxed);
        self.shared
            .latency_rate
            .store(clamp_probability(rate).to_bits(), Relaxed);
    }

    /// Turns injection on or off without forgetting the rates.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Relaxed);
    }

    /// Calls failed by injection so far.
    pub fn injected_errors(&self) -> u64 {
        self.shared.injected_errors.load(Relaxed)
    }

    /// Calls delayed by injection so far.
    pub fn injected_delays(&self) -> u64 {
        self.shared.injected_delays.load(Relaxed)
    }
}

/// The service a [`ChaosLayer`] builds.
#[derive(Debug, Clone)]
pub struct Chaos<S> {
    inner: S,
    shared: Arc<ChaosShared>,
}

impl<S, Req> Service<Req> for Chaos<S>
where
    S: Service<Req>,
    S::Error: From<InferenceError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ChaosFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let s = &*self.shared;
        if !s.enabled.load(Relaxed) {
            return ChaosFuture::passed(self.inner.call(req), Duration::ZERO);
        }
        let mut rng = draw_rng(s.seed, s.calls.fetch_add(1, Relaxed));
        if rng.random::<f64>() < f64::from_bits(s.error_rate.load(Relaxed)) {
            s.injected_errors.fetch_add(1, Relaxed);
            let error = s.errors[rng.random_range(0..s.errors.len())].clone();
            return ChaosFuture::injected(error.into());
        }
        let mut delay = Duration::ZERO;
        if rng.random::<f64>() < f64::from_bits(s.latency_rate.load(Relaxed)) {
            delay = Duration::from_nanos(s.latency_nanos.load(Relaxed));
            s.injected_delays
                .fetch_add(u64::from(!delay.is_zero()), Relaxed);
        }
        ChaosFuture::passed(self.inner.call(req), delay)
    }
}

pin_project! {
    /// The response future of [`Chaos`].
    pub struct ChaosFuture<F, T, E> {
        #[pin]
        state: ChaosState<F, T, E>,
    }
}

pin_project! {
    #[project = ChaosProj]
    enum ChaosState<F, T, E> {
        // An injected failure, answered without calling the inner service.
        Injected { error: Option<E> },
        // The inner call, its answer held back by `delay` once it arrives.
        Passed {
            #[pin]
            fut: F,
            delay: Duration,
            #[pin]
            sleep: Option<Sleep>,
            output: Option<Result<T, E>>,
        },
    }
}

impl<F, T, E> ChaosFuture<F, T, E> {
    fn injected(error: E) -> Self {
        ChaosFuture {
            state: ChaosState::Injected { error: Some(error) },
        }
    }

    fn passed(fut: F, delay: Duration) -> Self {
        ChaosFuture {
            state: ChaosState::Passed {
                fut,
                delay,
                sleep: None,
                output: None,
            },
        }
    }
}

impl<F, T, E> std::fmt::Debug for ChaosFuture<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            ChaosState::Injected { .. } => "Injected",
            ChaosState::Passed { .. } => "Passed",
        };
        f.debug_tuple("ChaosFuture").field(&state).finish()
    }
}

impl<F, T, E> Future for ChaosFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<InferenceError>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ChaosProj::Injected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| InferenceError::infrastructure().into()))),
            ChaosProj::Passed {
                fut,
                delay,
                mut sleep,
                output,
            } => {
                if output.is_none() {
                    let result = ready!(fut.poll(cx));
                    if delay.is_zero() {
                        return Poll::Ready(result);
                    }
                    *output = Some(result);
                    sleep.set(Some(tokio::time::sleep(*delay)));
                }
                if let Some(sleep) = sleep.as_pin_mut() {
                    ready!(sleep.poll(cx));
                }
                Poll::Ready(
                    output
                        .take()
                        .unwrap_or_else(|| Err(InferenceError::infrastructure().into())),
                )
            }
        }
    }
}
