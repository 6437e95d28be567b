//! [`Backoff`]: exponential delays between attempts, with full jitter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rand::Rng;

use crate::rng::{draw_rng, random_seed};
use crate::setting;

/// Exponential backoff with optional full jitter.
///
/// The delay before retry `n` (1 for the first retry) is `base × factor^(n-1)`, capped at
/// `cap`. With full jitter (the default) the actual delay is drawn uniformly from
/// `[0, that delay]`, which spreads the retries of many callers that failed together
/// (see "Exponential Backoff And Jitter", AWS Architecture Blog). The draws come from a
/// generator that can be seeded for reproducible runs.
///
/// tower's `ExponentialBackoff` doubles from a minimum and adds proportional jitter; this one
/// takes any factor and full jitter, which is what spreads a thundering herd best.
///
/// ```
/// use std::time::Duration;
/// use tower_inference::retry::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1)).without_jitter();
/// let delays: Vec<_> = (1..=5).map(|n| backoff.delay(n)).collect();
/// assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
/// ```
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: bool,
    seed: u64,
    draws: AtomicU64,
}

impl Clone for Backoff {
    fn clone(&self) -> Self {
        Backoff {
            draws: AtomicU64::new(self.draws.load(Relaxed)),
            ..*self
        }
    }
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 10 s, with full jitter.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10))
    }
}

impl Backoff {
    /// Delays of `base × factor^(n-1)`, capped at `cap`, with full jitter from a random seed.
    ///
    /// A factor below 1 is taken as 1, so delays never shrink; NaN or infinite is taken as 2.
    pub fn new(base: Duration, factor: f64, cap: Duration) -> Self {
        Backoff {
            base,
            factor: setting::factor("retry.backoff factor", factor, 1.0, 2.0),
            cap,
            jitter: true,
            seed: random_seed(),
            draws: AtomicU64::new(0),
        }
    }

    /// The exact exponential delays, without jitter.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Seeds the jitter generator, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.draws = AtomicU64::new(0);
        self
    }

    /// The longest delay before jitter: `base × factor^(retry-1)` capped at `cap`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(1_000) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exponent);
        if secs.is_finite() && secs < self.cap.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.cap
        }
    }

    /// The delay before retry `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let mut rng = draw_rng(self.seed, self.draws.fetch_add(1, Relaxed));
        ceiling.mul_f64(rng.random::<f64>())
    }
}
