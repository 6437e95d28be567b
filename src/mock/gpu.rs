//! [`MockGpu`]: the service, its builder and its response future.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::handle::{MockGpuHandle, Shared};
use super::types::{Completion, InferenceRequest, generate_text};
use crate::error::{InferenceError, ModelFailure};
use crate::provenance::Provenance;
use crate::rng::draw_rng;
use crate::setting;

#[derive(Debug, Clone)]
pub(crate) struct MockGpuConfig {
    pub(crate) name: Cow<'static, str>,
    pub(crate) base_latency: Duration,
    pub(crate) per_token_latency: Duration,
    pub(crate) memory_capacity_mib: u64,
    pub(crate) model_memory_mib: u64,
    pub(crate) request_memory_mib: u64,
    pub(crate) kib_per_token: u64,
    pub(crate) mib_per_megapixel: u64,
    pub(crate) max_context: usize,
    pub(crate) slots: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) load_time: Duration,
    pub(crate) failure_rate: f64,
    pub(crate) hang_rate: f64,
    pub(crate) seed: u64,
    pub(crate) backpressure: bool,
    pub(crate) overload_retry_after: Duration,
}

/// Configures a [`MockGpu`]; every setting documents its default.
#[derive(Debug, Clone)]
pub struct MockGpuBuilder {
    config: MockGpuConfig,
}

impl Default for MockGpuBuilder {
    fn default() -> Self {
        MockGpuBuilder {
            config: MockGpuConfig {
                name: Cow::Borrowed("mock-gpu"),
                base_latency: Duration::from_millis(20),
                per_token_latency: Duration::from_millis(1),
                memory_capacity_mib: 24_576,
                model_memory_mib: 16_384,
                request_memory_mib: 64,
                kib_per_token: 128,
                mib_per_megapixel: 512,
                max_context: 4_096,
                slots: 4,
                queue_capacity: 32,
                load_time: Duration::ZERO,
                failure_rate: 0.0,
                hang_rate: 0.0,
                seed: 0x5EED,
                backpressure: false,
                overload_retry_after: Duration::from_secs(1),
            },
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.config.$name = $name;
            self
        }
    };
}

impl MockGpuBuilder {
    /// The model's name, reported in every [`Completion`] (default `"mock-gpu"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    setter!(
        /// Fixed latency of every call (default 20 ms).
        base_latency: Duration
    );
    setter!(
        /// Latency per generated token, multiplied by the batch size (default 1 ms).
        per_token_latency: Duration
    );

    /// No latency at all: calls answer as soon as they hold a slot (for benchmarks).
    pub fn zero_latency(self) -> Self {
        self.base_latency(Duration::ZERO)
            .per_token_latency(Duration::ZERO)
    }

    setter!(
        /// Device memory in all, in MiB (default 24 576, a 24 GiB card).
        memory_capacity_mib: u64
    );
    setter!(
        /// Memory the weights hold permanently, in MiB (default 16 384).
        model_memory_mib: u64
    );
    setter!(
        /// Fixed memory every executing request holds, in MiB (default 64).
        request_memory_mib: u64
    );
    setter!(
        /// KV-cache memory per token (prompt and generated) and batch item, in KiB (default 128).
        kib_per_token: u64
    );
    setter!(
        /// Memory per megapixel of output resolution and batch item, in MiB (default 512).
        mib_per_megapixel: u64
    );
    setter!(
        /// The context window in prompt tokens; a longer prompt is refused (default 4 096).
        max_context: usize
    );

    /// Requests that execute at once (default 4; at least 1).
    pub fn slots(mut self, slots: usize) -> Self {
        self.config.slots = setting::at_least("mock_gpu.slots", slots, 1);
        self
    }

    setter!(
        /// Requests that may wait for a slot; more are refused as overloaded (default 32).
        queue_capacity: usize
    );
    setter!(
        /// How long the weights take to load, at start and after a revive (default zero).
        load_time: Duration
    );
    /// Probability that a call fails with `ModelFailure` (default 0; clamped to `[0, 1]`,
    /// NaN taken as 0).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.config.failure_rate = setting::share("mock_gpu.failure_rate", rate, 0.0);
        self
    }

    /// Probability that a call never answers (default 0; clamped to `[0, 1]`, NaN taken as 0).
    pub fn hang_rate(mut self, rate: f64) -> Self {
        self.config.hang_rate = setting::share("mock_gpu.hang_rate", rate, 0.0);
        self
    }
    setter!(
        /// Seed of the fault and text generator; the same seed and calls give the same run
        /// (default `0x5EED`).
        seed: u64
    );
    setter!(
        /// The retry-after an `Overloaded` refusal carries (default 1 s).
        overload_retry_after: Duration
    );

    /// How a full server meets a new call (default `false`).
    ///
    /// `false`: `poll_ready` is always ready and a call that finds every slot and queue place
    /// taken fails at once with `Overloaded`, like a serving endpoint answering 429.
    /// `true`: `poll_ready` reserves a place and stays pending while none is free, the tower
    /// way of pushing back (put `tower::load_shed` above it to shed instead of wait).
    pub fn backpressure(mut self, backpressure: bool) -> Self {
        self.config.backpressure = backpressure;
        self
    }

    /// Builds the service. Its warm-up clock starts now.
    pub fn build(self) -> MockGpu {
        let shared = Arc::new(Shared::new(self.config));
        let poll_places = shared
            .config
            .backpressure
            .then(|| PollSemaphore::new(shared.places.clone()));
        MockGpu {
            shared,
            poll_places,
            reserved: None,
        }
    }
}

/// A `tower::Service` that behaves like a GPU-backed model.
///
/// See the [module docs](crate::mock) for what it models. Clones share one device: its
/// slots, queue, memory and [`MockGpuHandle`].
#[derive(Debug)]
pub struct MockGpu {
    shared: Arc<Shared>,
    poll_places: Option<PollSemaphore>,
    reserved: Option<OwnedSemaphorePermit>,
}

impl Clone for MockGpu {
    fn clone(&self) -> Self {
        MockGpu {
            shared: self.shared.clone(),
            poll_places: self.poll_places.clone(),
            reserved: None,
        }
    }
}

impl Default for MockGpu {
    fn default() -> Self {
        MockGpu::builder().build()
    }
}

impl MockGpu {
    /// A builder with the defaults.
    pub fn builder() -> MockGpuBuilder {
        MockGpuBuilder::default()
    }

    /// The handle shared by every clone.
    pub fn handle(&self) -> MockGpuHandle {
        MockGpuHandle {
            shared: self.shared.clone(),
        }
    }

    /// Tokens the request would generate: `max_tokens`, or what is left of the context.
    pub fn generated_tokens(&self, req: &InferenceRequest) -> u32 {
        let left = self
            .shared
            .config
            .max_context
            .saturating_sub(req.prompt_tokens());
        req.params
            .max_tokens
            .min(u32::try_from(left).unwrap_or(u32::MAX))
    }

    /// Device memory the request holds while it executes, in MiB.
    pub fn memory_cost_mib(&self, req: &InferenceRequest) -> u64 {
        let c = &self.shared.config;
        let batch = u128::from(req.params.batch_size);
        let tokens = req.prompt_tokens() as u128 + u128::from(self.generated_tokens(req));
        let kv_mib = (tokens * batch * u128::from(c.kib_per_token)).div_ceil(1024);
        let pixels = req
            .params
            .resolution
            .map_or(0, |(w, h)| u128::from(w) * u128::from(h));
        let image_mib = (pixels * batch * u128::from(c.mib_per_megapixel)).div_ceil(1_000_000);
        let total = u128::from(c.request_memory_mib) + kv_mib + image_mib;
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// How long the request computes once it holds a slot:
    /// base + per-token × generated tokens × batch size, times the slowdown set with
    /// [`MockGpuHandle::set_slowdown`].
    pub fn latency(&self, req: &InferenceRequest) -> Duration {
        let c = &self.shared.config;
        let work = self
            .generated_tokens(req)
            .saturating_mul(req.params.batch_size.max(1));
        let nominal = c
            .per_token_latency
            .checked_mul(work)
            .and_then(|t| t.checked_add(c.base_latency))
            .unwrap_or(Duration::MAX);
        let slowdown = self.shared.slowdown();
        if slowdown == 1.0 {
            nominal
        } else {
            Duration::try_from_secs_f64(nominal.as_secs_f64() * slowdown).unwrap_or(Duration::MAX)
        }
    }

    /// The checks a serving endpoint makes before it queues a request.
    pub(super) fn admit(
        &mut self,
        req: &InferenceRequest,
    ) -> Result<(OwnedSemaphorePermit, Gauge), InferenceError> {
        let shared = &self.shared;
        if !shared.is_alive() {
            return Err(InferenceError::infrastructure());
        }
        if let Some(remaining) = shared.loading_remaining() {
            return Err(InferenceError::ModelNotReady {
                retry_after: Some(remaining),
            });
        }
        if req.prompt.trim().is_empty() {
            return Err(InferenceError::invalid_input(
                "the prompt must not be empty",
            ));
        }
        req.params.validate()?;
        let input = req.prompt_tokens();
        if input > shared.config.max_context {
            return Err(InferenceError::ContextLengthExceeded {
                input,
                max: shared.config.max_context,
            });
        }
        let place = match self.reserved.take() {
            Some(place) => place,
            None => shared.places.clone().try_acquire_owned().map_err(|_| {
                InferenceError::Overloaded {
                    queue_depth: shared.queued.load(Relaxed),
                    retry_after: Some(shared.config.overload_retry_after),
                }
            })?,
        };
        Ok((place, Gauge::enter(shared, |s| &s.queued)))
    }
}

impl Service<InferenceRequest> for MockGpu {
    type Response = Completion;
    type Error = InferenceError;
    type Future = MockGpuFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Some(places) = &mut self.poll_places else {
            return Poll::Ready(Ok(()));
        };
        if self.reserved.is_none() {
            match places.poll_acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(permit)) => self.reserved = Some(permit),
                Poll::Ready(None) => return Poll::Ready(Err(InferenceError::infrastructure())),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: InferenceRequest) -> Self::Future {
        let n = self.shared.calls.fetch_add(1, Relaxed);
        match self.admit(&req) {
            Err(err) => {
                self.shared.failed.fetch_add(1, Relaxed);
                MockGpuFuture::done(Err(err))
            }
            Ok((place, queued)) => {
                let job = Job {
                    generated: self.generated_tokens(&req),
                    cost_mib: self.memory_cost_mib(&req),
                    latency: self.latency(&req),
                    shared: self.shared.clone(),
                    n,
                };
                MockGpuFuture::running(Box::pin(job.run(place, queued)))
            }
        }
    }
}

/// One admitted request, with its costs worked out.
struct Job {
    shared: Arc<Shared>,
    generated: u32,
    cost_mib: u64,
    latency: Duration,
    n: u64,
}

impl Job {
    async fn run(
        self,
        _place: OwnedSemaphorePermit,
        queued: Gauge,
    ) -> Result<Completion, InferenceError> {
        let result = self.execute(queued).await;
        let counter = if result.is_ok() {
            &self.shared.succeeded
        } else {
            &self.shared.failed
        };
        counter.fetch_add(1, Relaxed);
        result
    }

    async fn execute(&self, queued: Gauge) -> Result<Completion, InferenceError> {
        let shared = &self.shared;
        let (_held, mut rng) =
            occupy(shared, queued, self.cost_mib, self.latency, self.n, false).await?;
        Ok(Completion {
            model: shared.name.clone(),
            text: generate_text(self.generated, &mut rng),
            tokens: self.generated,
            provenance: Provenance::default(),
        })
    }
}

/// What an executing request holds: its slot, its place in the in-flight count and its
/// device memory, all freed when it is dropped.
pub(super) struct Held {
    _slot: OwnedSemaphorePermit,
    _running: Gauge,
    _memory: Memory,
}

/// Waits for a slot and device memory, then computes for `latency`, drawing the request's
/// faults (a hang, when drawn or when `hang` says so, never ends); what the request holds,
/// and its generator for the answer's text.
pub(super) async fn occupy(
    shared: &Arc<Shared>,
    queued: Gauge,
    cost_mib: u64,
    latency: Duration,
    n: u64,
    hang: bool,
) -> Result<(Held, SmallRng), InferenceError> {
    let slot = shared
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| InferenceError::infrastructure())?;
    drop(queued);
    let running = Gauge::enter(shared, |s| &s.in_flight);
    shared
        .reserve_memory(cost_mib)
        .map_err(|(used_mib, available_mib)| {
            shared.out_of_memory.fetch_add(1, Relaxed);
            InferenceError::OutOfMemory {
                used_mib,
                available_mib,
            }
        })?;
    let held = Held {
        _slot: slot,
        _running: running,
        _memory: Memory {
            shared: shared.clone(),
            mib: cost_mib,
        },
    };
    let mut rng = draw_rng(shared.config.seed, n);
    if rng.random::<f64>() < shared.hang_rate() || hang {
        std::future::pending::<()>().await;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !shared.is_alive() {
        return Err(InferenceError::infrastructure());
    }
    if rng.random::<f64>() < shared.failure_rate() {
        return Err(InferenceError::ModelFailure {
            failure: ModelFailure::NanOutput,
        });
    }
    Ok((held, rng))
}

/// Counts a request in a gauge (queued or in flight) for as long as it lives.
pub(super) struct Gauge {
    shared: Arc<Shared>,
    gauge: fn(&Shared) -> &AtomicUsize,
}

impl Gauge {
    pub(super) fn enter(shared: &Arc<Shared>, gauge: fn(&Shared) -> &AtomicUsize) -> Self {
        gauge(shared).fetch_add(1, Relaxed);
        Gauge {
            shared: shared.clone(),
            gauge,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.gauge)(&self.shared).fetch_sub(1, Relaxed);
    }
}

/// Device memory a request holds until it finishes or is dropped.
struct Memory {
    shared: Arc<Shared>,
    mib: u64,
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.shared.memory_used_mib.fetch_sub(self.mib, Relaxed);
    }
}

type BoxedRun = Pin<Box<dyn Future<Output = Result<Completion, InferenceError>> + Send>>;

pin_project! {
    /// The response future of [`MockGpu`].
    ///
    /// A refused call is answered at once without allocating; an admitted one runs boxed (the
    /// mock's own cost, which the `overhead` benchmark measures as the baseline).
    pub struct MockGpuFuture {
        state: State,
    }
}

enum State {
    /// Refused at admission.
    Done(Option<Result<Completion, InferenceError>>),
    /// Admitted: queued or executing.
    Running(BoxedRun),
}

impl MockGpuFuture {
    fn done(result: Result<Completion, InferenceError>) -> Self {
        MockGpuFuture {
            state: State::Done(Some(result)),
        }
    }

    fn running(fut: BoxedRun) -> Self {
        MockGpuFuture {
            state: State::Running(fut),
        }
    }
}

impl std::fmt::Debug for MockGpuFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Done(_) => "Done",
            State::Running(_) => "Running",
        };
        f.debug_tuple("MockGpuFuture").field(&state).finish()
    }
}

impl Future for MockGpuFuture {
    type Output = Result<Completion, InferenceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state {
            State::Done(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(InferenceError::infrastructure())),
            ),
            State::Running(fut) => fut.as_mut().poll(cx),
        }
    }
}
