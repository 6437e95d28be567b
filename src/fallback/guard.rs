//! [`StoreGuard`]: a cache store's own timeout and circuit breaker.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::cache::CacheError;

/// Bounds what a failing cache store costs: every read and write gets a short timeout, and
/// after `failures` failures in a row the store is not asked at all for `cooldown` (the
/// cache tier then fails at once and the chain moves on).
#[derive(Debug)]
pub(crate) struct StoreGuard {
    timeout: Duration,
    threshold: u32,
    cooldown_nanos: u64,
    origin: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `origin` (plus one) until which the store is skipped; 0 when not.
    skip_until: AtomicU64,
}

/// The defaults: 50 ms a store operation, 5 failures in a row, 10 s without the store.
pub(crate) const DEFAULT_GUARD: (Duration, u32, Duration) =
    (Duration::from_millis(50), 5, Duration::from_secs(10));

impl StoreGuard {
    pub(crate) fn new(timeout: Duration, failures: u32, cooldown: Duration) -> Self {
        StoreGuard {
            timeout,
            threshold: failures.max(1),
            cooldown_nanos: u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            skip_until: AtomicU64::new(0),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the store may be asked now (no clock reading while it is healthy).
    pub(crate) fn allows(&self) -> bool {
        let until = self.skip_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        if self.nanos().saturating_add(1) >= until {
            self.skip_until.store(0, Relaxed);
            return true;
        }
        false
    }

    /// Runs one store operation under the timeout, and counts its outcome.
    pub(crate) async fn run<T>(
        &self,
        operation: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let result = match tokio::time::timeout(self.timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::new(format!(
                "no answer from the store within {:?}",
                self.timeout
            ))),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(_) => self.failed(),
        }
        result
    }

    pub(crate) fn succeeded(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    pub(crate) fn failed(&self) {
        if self.failures.fetch_add(1, Relaxed) + 1 >= self.threshold {
            self.failures.store(0, Relaxed);
            let until = self
                .nanos()
                .saturating_add(self.cooldown_nanos)
                .saturating_add(1);
            self.skip_until.store(until, Relaxed);
            tracing::warn!(
                target: "tower_inference",
                failures = self.threshold,
                cooldown_ms = self.cooldown_nanos / 1_000_000,
                "fallback cache store failing: not asked for a while"
            );
        }
    }
}
