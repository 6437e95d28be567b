//! [`RetryBudget`]: Finagle's retry budget, without a lock.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering::*};
use std::time::Duration;

use tokio::time::Instant;

use crate::ring::{PeriodRing, count_of, pack, period_of};
use crate::setting;
use crate::stripe::{self, STRIPES};

/// Buckets the time-to-live is cut into; the window slides a bucket at a time.
const BUCKETS: usize = 10;
/// One retry, in thousandths: percentages are kept exact to 0.1 %.
const WITHDRAWAL: u64 = 1_000;

/// A thread's deposit counters, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct Stripe(PeriodRing<BUCKETS>);

/// Events in the window of `BUCKETS` periods up to `period`.
fn in_window(ring: &PeriodRing<BUCKETS>, period: u32, skip: Option<usize>) -> u64 {
    ring.sum(period, BUCKETS as u32, skip)
}

/// A thread reads the clock once every this many deposits.
const CLOCK_EVERY: u32 = 64;

thread_local! {
    static DEPOSITS: Cell<u32> = const { Cell::new(0) };
}

/// Whether this deposit should read the clock.
fn clock_due() -> bool {
    DEPOSITS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % CLOCK_EVERY == 1
    })
}

/// A retry budget: retries may be at most a share of recent requests, plus a small reserve.
///
/// The semantics are Finagle's, as in `tower::retry::budget::TpsBudget`: every first attempt
/// **deposits**, every retry **withdraws**, and a retry is allowed only while
/// `reserve + retry_percent × deposits − withdrawals ≥ 1`, counting deposits and withdrawals
/// of the last `ttl`, with `reserve = min_per_sec × ttl`. During an outage retries therefore
/// add at most `retry_percent` to the load (plus the reserve), instead of multiplying it by
/// the number of attempts.
///
/// Unlike `TpsBudget`, which takes a mutex on every deposit and withdrawal, this budget takes
/// none: deposits go to a per-thread stripe of atomic counters (so two threads never write
/// the same cache line on the success path), and a withdrawal is a compare-and-swap that
/// re-checks the balance, so concurrent retries never overdraw it. It implements tower's
/// [`Budget`](tower::retry::budget::Budget) trait and plugs into plain `tower::retry::Retry`.
///
/// ```
/// use std::time::Duration;
/// use tower_inference::retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // 10 % of requests may be retried, plus 1 retry a second over a 10 s window.
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.1);
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let retries = (0..1_000).take_while(|_| budget.withdraw()).count();
/// assert_eq!(retries, 10 + 10); // 10 % of 100, plus the 10-retry reserve
/// # }
/// ```
pub struct RetryBudget {
    deposits: Box<[Stripe]>,
    /// The latest period any thread has read off the clock; deposits are counted in it.
    period_hint: AtomicU32,
    withdrawals: PeriodRing<BUCKETS>,
    origin: Instant,
    bucket_nanos: u64,
    reserve: u64,
    deposit_amount: u64,
    ttl: Duration,
    retry_percent: f64,
    min_per_sec: u32,
}

impl RetryBudget {
    /// A budget over the last `ttl` (1 to 60 s) that allows `min_per_sec` retries a second
    /// whatever the traffic, plus `retry_percent` (0 to 1000, e.g. `0.1` for 10 %) of the
    /// requests.
    ///
    /// Out-of-range values are clamped into these ranges and NaN is taken as 0.2, as every
    /// setting of the crate does (see [the crate's rule](crate#configuration-values)).
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f64) -> Self {
        let ttl = setting::clamp(
            "retry_budget.ttl",
            ttl,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let retry_percent = setting::within(
            "retry_budget.retry_percent",
            retry_percent,
            0.0,
            1000.0,
            0.2,
        );
        RetryBudget::unchecked(ttl, min_per_sec, retry_percent)
    }

    fn unchecked(ttl: Duration, min_per_sec: u32, retry_percent: f64) -> Self {
        let bucket_nanos = u64::try_from(ttl.as_nanos() / BUCKETS as u128).unwrap_or(u64::MAX);
        RetryBudget {
            deposits: (0..STRIPES).map(|_| Stripe::default()).collect(),
            period_hint: AtomicU32::new(1),
            withdrawals: PeriodRing::default(),
            origin: Instant::now(),
            bucket_nanos: bucket_nanos.max(1),
            reserve: u64::from(min_per_sec)
                .saturating_mul(ttl.as_secs())
                .saturating_mul(WITHDRAWAL),
            deposit_amount: (retry_percent * WITHDRAWAL as f64).round() as u64,
            ttl,
            retry_percent,
            min_per_sec,
        }
    }

    /// The time-to-live of deposits and withdrawals.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The share of requests that may be retried.
    pub fn retry_percent(&self) -> f64 {
        self.retry_percent
    }

    /// Retries a second allowed whatever the traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// The current period number, read off the clock; 0 is reserved for "never written".
    fn period(&self) -> u32 {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let period = ((nanos / self.bucket_nanos) as u32).wrapping_add(1).max(1);
        if period > self.period_hint.load(Relaxed) {
            self.period_hint.fetch_max(period, Relaxed);
        }
        period
    }

    /// Records a first attempt. Takes no lock and, from different threads, writes different
    /// cache lines.
    ///
    /// To stay cheap, a thread reads the clock only once every 64 deposits (withdrawals
    /// always do); in between, deposits count in the latest period any thread has read. A
    /// deposit may so be counted slightly early and leave the window slightly early: the
    /// budget errs towards fewer retries, never more.
    #[inline]
    pub fn deposit(&self) {
        let period = if clock_due() {
            self.period()
        } else {
            self.period_hint.load(Relaxed)
        };
        let stripe = stripe::current();
        self.deposits[stripe.index()].0.add_on(period, stripe);
    }

    /// Takes one retry from the budget if the balance allows it.
    ///
    /// Takes no lock: the withdrawal is a compare-and-swap on the current bucket that fails,
    /// and re-checks the balance, if another retry got in first.
    pub fn withdraw(&self) -> bool {
        self.withdraw_in_period().is_some()
    }

    /// Takes one retry's worth from the budget, as [`withdraw`](Self::withdraw); returns the
    /// period it was counted in, for a [`refund`](Self::refund).
    pub(crate) fn withdraw_in_period(&self) -> Option<u32> {
        let period = self.period();
        let index = PeriodRing::<BUCKETS>::index(period);
        let available = self
            .reserve
            .saturating_add(self.deposited(period).saturating_mul(self.deposit_amount));
        // Only the current bucket can change under us within this period.
        let earlier = in_window(&self.withdrawals, period, Some(index));
        let cell = self.withdrawals.cell(period);
        let mut current = cell.load(Acquire);
        loop {
            let now = if period_of(current) == period {
                count_of(current)
            } else {
                0
            };
            let withdrawn = (earlier + now).saturating_mul(WITHDRAWAL);
            if available < withdrawn.saturating_add(WITHDRAWAL) {
                return None;
            }
            match cell.compare_exchange_weak(current, pack(period, now + 1), AcqRel, Acquire) {
                Ok(_) => return Some(period),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back a withdrawal made in `period` whose retry never started (its request was
    /// cancelled while waiting); nothing when that period has left the window.
    pub(crate) fn refund(&self, period: u32) {
        let cell = self.withdrawals.cell(period);
        let mut current = cell.load(Acquire);
        while period_of(current) == period && count_of(current) > 0 {
            let less = pack(period, count_of(current) - 1);
            match cell.compare_exchange_weak(current, less, AcqRel, Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn deposited(&self, period: u32) -> u64 {
        self.deposits
            .iter()
            .map(|stripe| in_window(&stripe.0, period, None))
            .sum()
    }

    /// Retries the budget would allow right now.
    pub fn balance(&self) -> u64 {
        let period = self.period();
        let available = self
            .reserve
            .saturating_add(self.deposited(period).saturating_mul(self.deposit_amount));
        let withdrawn = in_window(&self.withdrawals, period, None).saturating_mul(WITHDRAWAL);
        available.saturating_sub(withdrawn) / WITHDRAWAL
    }
}

impl Default for RetryBudget {
    /// Tower's and Finagle's default: a 10 s window, 10 retries a second, 20 % of requests.
    fn default() -> Self {
        RetryBudget::unchecked(Duration::from_secs(10), 10, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_percent", &self.retry_percent)
            .field("balance", &self.balance())
            .finish()
    }
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self)
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}
