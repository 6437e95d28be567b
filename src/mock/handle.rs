//! The state every clone of a [`MockGpu`](super::MockGpu) shares, and the handle to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::gpu::MockGpuConfig;
use super::stream::StreamFault;
use crate::rng::clamp_probability;
use crate::setting;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockGpuConfig,
    pub(crate) name: Arc<str>,
    /// Places in the server: execution slots plus queue positions.
    pub(crate) places: Arc<Semaphore>,
    /// Execution slots.
    pub(crate) slots: Arc<Semaphore>,
    epoch: Instant,
    ready_at_nanos: AtomicU64,
    alive: AtomicBool,
    failure_rate: AtomicU64,
    hang_rate: AtomicU64,
    slowdown: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) out_of_memory: AtomicU64,
    pub(crate) queued: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) memory_used_mib: AtomicU64,
    /// The fault every new stream meets (streaming mode).
    pub(crate) stream_fault: std::sync::Mutex<Option<StreamFault>>,
}

impl Shared {
    pub(crate) fn new(config: MockGpuConfig) -> Self {
        let shared = Shared {
            name: Arc::from(config.name.as_ref()),
            places: Arc::new(Semaphore::new(config.slots + config.queue_capacity)),
            slots: Arc::new(Semaphore::new(config.slots)),
            epoch: Instant::now(),
            ready_at_nanos: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            failure_rate: AtomicU64::new(clamp_probability(config.failure_rate).to_bits()),
            hang_rate: AtomicU64::new(clamp_probability(config.hang_rate).to_bits()),
            slowdown: AtomicU64::new(1.0f64.to_bits()),
            calls: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            out_of_memory: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            memory_used_mib: AtomicU64::new(0),
            stream_fault: std::sync::Mutex::new(None),
            config,
        };
        shared.start_loading();
        shared
    }

    fn start_loading(&self) {
        let ready_at = self.epoch.elapsed().saturating_add(self.config.load_time);
        let nanos = u64::try_from(ready_at.as_nanos()).unwrap_or(u64::MAX);
        self.ready_at_nanos.store(nanos, Relaxed);
    }

    /// Time left until the weights are loaded, or `None` once ready.
    pub(crate) fn loading_remaining(&self) -> Option<Duration> {
        let ready_at = Duration::from_nanos(self.ready_at_nanos.load(Relaxed));
        let now = self.epoch.elapsed();
        (now < ready_at).then(|| ready_at - now)
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate.load(Relaxed))
    }

    pub(crate) fn hang_rate(&self) -> f64 {
        f64::from_bits(self.hang_rate.load(Relaxed))
    }

    /// The factor the compute latency is multiplied by (1 unless slowed down).
    pub(crate) fn slowdown(&self) -> f64 {
        f64::from_bits(self.slowdown.load(Relaxed))
    }

    /// Device memory free for requests, in MiB.
    pub(crate) fn memory_budget_mib(&self) -> u64 {
        self.config
            .memory_capacity_mib
            .saturating_sub(self.config.model_memory_mib)
    }

    /// Reserves `cost` MiB if it fits; otherwise returns (used, available) in MiB.
    pub(crate) fn reserve_memory(&self, cost: u64) -> Result<(), (u64, u64)> {
        let budget = self.memory_budget_mib();
        self.memory_used_mib
            .fetch_update(Relaxed, Relaxed, |used| {
                let total = used.checked_add(cost)?;
                (total <= budget).then_some(total)
            })
            .map(drop)
            .map_err(|used| {
                (
                    used.saturating_add(self.config.model_memory_mib),
                    budget.saturating_sub(used),
                )
            })
    }
}

/// Controls and observes a [`MockGpu`](super::MockGpu) and all its clones.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::ServiceExt;
/// use tower_inference::mock::{InferenceRequest, MockGpu};
/// use tower_inference::ErrorKind;
///
/// let gpu = MockGpu::builder().zero_latency().build();
/// let handle = gpu.handle();
///
/// handle.kill();
/// let err = gpu.clone().oneshot(InferenceRequest::new("hi")).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Infrastructure);
///
/// handle.revive();
/// assert!(gpu.oneshot(InferenceRequest::new("hi")).await.is_ok());
/// assert_eq!(handle.stats().calls, 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MockGpuHandle {
    pub(crate) shared: Arc<Shared>,
}

impl MockGpuHandle {
    /// Takes the backend down: new calls fail with `Infrastructure`, and so do calls in flight
    /// when they finish.
    pub fn kill(&self) {
        self.shared.alive.store(false, Relaxed);
    }

    /// Brings the backend back. Like a restarted server, it loads its weights again: calls fail
    /// with `ModelNotReady` for the configured load time.
    pub fn revive(&self) {
        self.shared.start_loading();
        self.shared.alive.store(true, Relaxed);
    }

    /// Whether the backend is up (it may still be loading).
    pub fn is_alive(&self) -> bool {
        self.shared.is_alive()
    }

    /// Whether the backend is up and its weights are loaded.
    pub fn is_ready(&self) -> bool {
        self.shared.is_alive() && self.shared.loading_remaining().is_none()
    }

    /// Sets the probability, clamped to `[0, 1]`, that a call fails with `ModelFailure`.
    pub fn set_failure_rate(&self, rate: f64) {
        self.shared
            .failure_rate
            .store(clamp_probability(rate).to_bits(), Relaxed);
    }

    /// Sets the probability, clamped to `[0, 1]`, that a call never answers.
    pub fn set_hang_rate(&self, rate: f64) {
        self.shared
            .hang_rate
            .store(clamp_probability(rate).to_bits(), Relaxed);
    }

    /// Makes every call admitted from now on compute `factor` times as long (a brownout:
    /// thermal throttling, a noisy neighbour, a degraded interconnect); `1.0` restores the
    /// configured speed. Slower calls hold their slots longer, so capacity falls by the
    /// same factor. The factor is clamped to `[0.01, 1000]`; NaN is taken as 1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tower::ServiceExt;
    /// use tower_inference::mock::{InferenceRequest, MockGpu};
    ///
    /// let gpu = MockGpu::builder().zero_latency().base_latency(Duration::from_millis(10)).build();
    /// gpu.handle().set_slowdown(5.0);
    /// let started = tokio::time::Instant::now();
    /// gpu.oneshot(InferenceRequest::new("hi")).await.unwrap();
    /// assert_eq!(started.elapsed(), Duration::from_millis(50));
    /// # }
    /// ```
    pub fn set_slowdown(&self, factor: f64) {
        let factor = setting::within("mock_gpu.slowdown", factor, 0.01, 1000.0, 1.0);
        self.shared.slowdown.store(factor.to_bits(), Relaxed);
    }

    /// Sets the fault every stream started from now on meets, in streaming mode
    /// ([`MockGpu::streaming`](super::MockGpu::streaming)); `None` clears it.
    pub fn set_stream_fault(&self, fault: Option<StreamFault>) {
        *self
            .shared
            .stream_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// A snapshot of the backend's counters and gauges.
    pub fn stats(&self) -> MockGpuStats {
        let s = &self.shared;
        let in_flight = s.in_flight.load(Relaxed);
        let memory_used_mib = s
            .memory_used_mib
            .load(Relaxed)
            .saturating_add(s.config.model_memory_mib);
        MockGpuStats {
            calls: s.calls.load(Relaxed),
            succeeded: s.succeeded.load(Relaxed),
            failed: s.failed.load(Relaxed),
            out_of_memory: s.out_of_memory.load(Relaxed),
            in_flight,
            queued: s.queued.load(Relaxed),
            memory_used_mib,
            memory_capacity_mib: s.config.memory_capacity_mib,
            utilisation: ratio(in_flight as f64, s.config.slots as f64),
            memory_utilisation: ratio(memory_used_mib as f64, s.config.memory_capacity_mib as f64),
        }
    }

    /// Execution slots in use, in `0..=1`: a load signal for the degrade layer.
    pub fn utilisation(&self) -> f64 {
        self.stats().utilisation
    }

    /// Device memory in use (weights included), in `0..=1`: a load signal for the degrade layer.
    pub fn memory_utilisation(&self) -> f64 {
        self.stats().memory_utilisation
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        1.0
    } else {
        (part / whole).clamp(0.0, 1.0)
    }
}

/// Counters and gauges of a [`MockGpu`](super::MockGpu), read through [`MockGpuHandle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct MockGpuStats {
    /// Calls received, rejected ones included.
    pub calls: u64,
    /// Calls answered successfully.
    pub succeeded: u64,
    /// Calls answered with an error.
    pub failed: u64,
    /// Calls that failed with `OutOfMemory` (counted in `failed` too).
    pub out_of_memory: u64,
    /// Requests executing on the device.
    pub in_flight: usize,
    /// Requests waiting for an execution slot.
    pub queued: usize,
    /// Device memory in use, weights included, in MiB.
    pub memory_used_mib: u64,
    /// Device memory in all, in MiB.
    pub memory_capacity_mib: u64,
    /// Execution slots in use, in `0..=1`.
    pub utilisation: f64,
    /// Device memory in use, in `0..=1`.
    pub memory_utilisation: f64,
}
