//! The retry decision, shared by [`Retry`](super::Retry) and the tower [`RetryPolicy`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::backoff::Backoff;
use super::budget::RetryBudget;
use crate::classify::{Classify, DefaultClassifier, Outcome};
use crate::error::ErrorKind;
use crate::event::{Emitter, Event};
use crate::params::{Degrade, Scale};
use crate::provenance::Annotate;

/// The warning an answer carries after an out-of-memory retry made its request smaller.
pub const OOM_WARNING: &str =
    "reduced max_tokens (and steps, batch size, resolution) due to memory constraints";

/// What the retry layer does with a request that ran out of memory.
///
/// [`NoOomRetry`] (the default) does not retry it; [`ShrinkOnOom`] retries it once, made
/// smaller through [`Degrade`].
pub trait OomRetry<Req> {
    /// Whether an out-of-memory failure is retried at all.
    fn enabled(&self) -> bool;

    /// Makes the request smaller before its retry.
    fn shrink(&self, req: &mut Req);
}

/// Out-of-memory failures are not retried (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOomRetry;

impl<Req> OomRetry<Req> for NoOomRetry {
    fn enabled(&self) -> bool {
        false
    }

    fn shrink(&self, _req: &mut Req) {}
}

/// An out-of-memory failure is retried once, with the request degraded by a [`Scale`]
/// (by default half the tokens and steps, half the batch, half the resolution).
#[derive(Debug, Clone, Copy)]
pub struct ShrinkOnOom {
    /// How much smaller the retried request is.
    pub scale: Scale,
}

impl Default for ShrinkOnOom {
    fn default() -> Self {
        ShrinkOnOom {
            scale: Scale::new(0.5, 2.0),
        }
    }
}

impl<Req: Degrade> OomRetry<Req> for ShrinkOnOom {
    fn enabled(&self) -> bool {
        true
    }

    fn shrink(&self, req: &mut Req) {
        req.degrade(self.scale);
    }
}

/// The settings and shared state of one retry layer.
pub(crate) struct Shared<C, D> {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) classifier: C,
    pub(crate) oom: D,
    pub(crate) emitter: Emitter,
}

impl<C, D> fmt::Debug for Shared<C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetrySettings")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// One request's progress through its attempts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attempts {
    /// Retries made so far.
    retries: u32,
    /// When the first attempt started, if a deadline needs it.
    started: Option<Instant>,
    /// Whether an out-of-memory retry shrank the request.
    shrunk: bool,
    /// The budget period of the withdrawal for a retry not started yet.
    withdrawn: Option<u32>,
}

impl Attempts {
    /// When the first attempt started, if a deadline needs it.
    pub(crate) const fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The withdrawal for the retry about to start, which can no longer be refunded.
    pub(crate) fn take_withdrawal(&mut self) -> Option<u32> {
        self.withdrawn.take()
    }

    /// Calls made so far, the running one included.
    pub(crate) const fn made(&self) -> u32 {
        self.retries.saturating_add(1)
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Return the result as it is.
    Done,
    /// Try again after the delay.
    RetryAfter(Duration),
}

impl<C, D> Shared<C, D> {
    /// Starts a request: deposits into the budget and notes the time if a deadline needs it.
    #[inline]
    pub(crate) fn begin(&self) -> Attempts {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        Attempts {
            retries: 0,
            started: self.deadline.map(|_| Instant::now()),
            shrunk: false,
            withdrawn: None,
        }
    }

    /// Whether another attempt may follow the ones made so far.
    pub(crate) fn may_retry(&self, attempts: &Attempts) -> bool {
        attempts.retries + 1 < self.max_attempts
    }

    /// Decides what follows an attempt, and annotates a successful answer.
    pub(crate) fn decide<Req, Res, E>(
        &self,
        attempts: &mut Attempts,
        req: &mut Req,
        result: &mut Result<Res, E>,
    ) -> Decision
    where
        C: Classify<Res, E>,
        D: OomRetry<Req>,
        Res: Annotate,
    {
        let (kind, retry_after) = match self.classifier.classify(result.as_ref()) {
            Outcome::Success => {
                if let Ok(res) = result {
                    annotate(res, attempts);
                }
                return Decision::Done;
            }
            Outcome::Failure { kind, retry_after } => (kind, retry_after),
        };
        let decision = self.decide_failure(attempts, req, kind, retry_after);
        if decision == Decision::Done {
            // Giving up: tell an enclosing fallback layer how many backend calls were made
            // (a call an open breaker refused made none).
            let refused = u32::from(kind == ErrorKind::CircuitOpen);
            crate::tally::report(attempts.made() - refused);
        }
        decision
    }

    /// Decides whether a failed attempt of `kind` is tried again, and when.
    fn decide_failure<Req>(
        &self,
        attempts: &mut Attempts,
        req: &mut Req,
        kind: ErrorKind,
        retry_after: Option<Duration>,
    ) -> Decision
    where
        D: OomRetry<Req>,
    {
        if !self.may_retry(attempts) {
            return Decision::Done;
        }
        let out_of_memory = kind == ErrorKind::OutOfMemory;
        if out_of_memory {
            if attempts.shrunk || !self.oom.enabled() {
                return Decision::Done;
            }
        } else if !kind.is_retryable() {
            return Decision::Done;
        }
        let mut delay = self.backoff.delay(attempts.retries + 1);
        if let Some(after) = retry_after {
            if after > self.max_retry_after {
                return Decision::Done;
            }
            delay = delay.max(after);
        }
        if let (Some(limit), Some(started)) = (self.deadline, attempts.started)
            && started.elapsed().saturating_add(delay) > limit
        {
            return Decision::Done;
        }
        if let Some(budget) = &self.budget {
            match budget.withdraw_in_period() {
                Some(period) => attempts.withdrawn = Some(period),
                None => {
                    self.emitter.emit(&Event::BudgetExhausted { kind });
                    return Decision::Done;
                }
            }
        }
        if out_of_memory {
            self.oom.shrink(req);
            attempts.shrunk = true;
        }
        attempts.retries += 1;
        self.emitter.emit(&Event::RetryScheduled {
            attempt: attempts.retries + 1,
            kind,
            delay,
        });
        Decision::RetryAfter(delay)
    }
}

/// Records the attempts an answer took; an answer on the first attempt is left untouched.
fn annotate<Res: Annotate>(res: &mut Res, attempts: &Attempts) {
    if attempts.retries == 0 {
        return;
    }
    let provenance = res.provenance_mut();
    provenance.set_attempts(attempts.retries + 1);
    if attempts.shrunk {
        provenance.warn(OOM_WARNING);
    }
}

/// The retry decision as a [`tower::retry::Policy`], for use with tower's own `Retry`.
///
/// Build one with [`RetryBuilder::build_policy`](super::RetryBuilder::build_policy). It makes
/// the same decisions as [`RetryLayer`](super::RetryLayer) (classification, backoff,
/// Retry-After, budget, out-of-memory retry, provenance). Two differences come from tower's
/// `Retry`: it clones the policy (an `Arc`) and the inner service for every request, and it
/// gives the policy no hook before the first attempt, so a deadline counts from the first
/// failure rather than from the first attempt, and only keeps retries from starting (it
/// cannot end an attempt in flight).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_inference::retry::RetryLayer;
/// use tower_inference::{InferenceError, Served};
///
/// let policy = RetryLayer::builder().max_attempts(2).build_policy();
/// let svc = ServiceBuilder::new()
///     .layer(tower::retry::RetryLayer::new(policy))
///     .service(service_fn(|_: ()| async { Ok::<_, InferenceError>(Served::new("ok")) }));
/// assert_eq!(*svc.oneshot(()).await.unwrap(), "ok");
/// # }
/// ```
pub struct RetryPolicy<C = DefaultClassifier, D = NoOomRetry> {
    pub(crate) shared: Arc<Shared<C, D>>,
    attempts: Attempts,
}

impl<C, D> RetryPolicy<C, D> {
    pub(crate) fn new(shared: Arc<Shared<C, D>>) -> Self {
        RetryPolicy {
            shared,
            attempts: Attempts::default(),
        }
    }
}

impl<C, D> Clone for RetryPolicy<C, D> {
    fn clone(&self) -> Self {
        RetryPolicy {
            shared: self.shared.clone(),
            attempts: self.attempts,
        }
    }
}

impl<C, D> fmt::Debug for RetryPolicy<C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("settings", &self.shared)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<Req, Res, E, C, D> tower::retry::Policy<Req, Res, E> for RetryPolicy<C, D>
where
    Req: Clone,
    Res: Annotate,
    C: Classify<Res, E>,
    D: OomRetry<Req>,
{
    type Future = Sleep;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, E>) -> Option<Sleep> {
        if self.attempts.started.is_none() && self.shared.deadline.is_some() {
            self.attempts.started = Some(Instant::now());
        }
        match self.shared.decide(&mut self.attempts, req, result) {
            Decision::Done => None,
            Decision::RetryAfter(delay) => Some(tokio::time::sleep(delay)),
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        // tower calls this on the layer's own policy before a request's first attempt (its
        // per-request copy has made no retry yet), and on the request's copy before each retry.
        if self.attempts.retries == 0
            && let Some(budget) = &self.shared.budget
        {
            budget.deposit();
        }
        Some(req.clone())
    }
}
