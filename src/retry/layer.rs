//! [`RetryLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::policy::{NoOomRetry, RetryPolicy, Shared, ShrinkOnOom};
use super::service::Retry;
use crate::classify::DefaultClassifier;
use crate::event::{Emitter, EventSink};
use crate::params::Scale;
use crate::setting;

/// Retries what is worth retrying. See the [module docs](crate::retry).
///
/// Every service the layer makes shares its settings and its [`RetryBudget`].
#[derive(Debug)]
pub struct RetryLayer<C = DefaultClassifier, D = NoOomRetry> {
    shared: Arc<Shared<C, D>>,
}

impl<C, D> Clone for RetryLayer<C, D> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
        }
    }
}

impl RetryLayer {
    /// A retry layer with the defaults (see [`RetryBuilder`]).
    pub fn new() -> Self {
        RetryLayer::builder().build()
    }

    /// A builder, starting from the defaults.
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            max_attempts: 3,
            backoff: Backoff::default(),
            deadline: None,
            max_retry_after: Duration::from_secs(30),
            budget: Some(Arc::new(RetryBudget::default())),
            classifier: DefaultClassifier,
            oom: NoOomRetry,
            emitter: Emitter::noop(),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<C, D> RetryLayer<C, D> {
    /// The budget the layer's services share, if it has one.
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.shared.budget.as_ref()
    }
}

impl<S: Clone, C, D> Layer<S> for RetryLayer<C, D> {
    type Service = Retry<S, C, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.shared.clone())
    }
}

/// Configures a [`RetryLayer`]; every setting documents its default.
#[derive(Debug)]
pub struct RetryBuilder<C = DefaultClassifier, D = NoOomRetry> {
    max_attempts: u32,
    backoff: Backoff,
    deadline: Option<Duration>,
    max_retry_after: Duration,
    budget: Option<Arc<RetryBudget>>,
    classifier: C,
    oom: D,
    emitter: Emitter,
}

impl<C, D> RetryBuilder<C, D> {
    /// Attempts in all, the first included (default 3; 1 to 100).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = setting::clamp("retry.max_attempts", attempts, 1, 100);
        self
    }

    /// The delays between attempts (default: 100 ms doubling to 10 s, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A deadline for the whole call, from its first attempt, the attempt in flight included:
    /// when it passes, the call ends with [`InferenceError::Timeout`](crate::InferenceError)
    /// (`after` = the deadline), and no retry starts whose delay would end past it (default:
    /// none; zero is taken as none). It applies when retries are allowed (`max_attempts` above 1) and costs one
    /// timer allocation per call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        if deadline.is_zero() {
            // A zero deadline would fail every call before it starts.
            setting::warn("retry.deadline", &deadline, &"none");
            self.deadline = None;
        } else {
            self.deadline = Some(deadline);
        }
        self
    }

    /// The longest retry-after (from `Overloaded` or an HTTP `Retry-After`) honoured: a larger
    /// one replaces the computed delay, one above this is not retried at all (default 30 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The budget retries draw from; share one `Arc` between layers to give them one budget
    /// (default: a budget of its own, 10 s window, 10 retries a second, 20 % of requests).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget: only `max_attempts` bounds retries. Not for production: an outage then
    /// multiplies the load by `max_attempts`.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Where retries and budget exhaustion are reported (default: `tracing` only).
    pub fn event_sink(mut self, sink: impl EventSink) -> Self {
        self.emitter = Emitter::new(sink);
        self
    }

    /// The stack's emitter, shared as it is (no extra indirection per event).
    pub(crate) fn emitter(mut self, emitter: Emitter) -> Self {
        self.emitter = emitter;
        self
    }

    /// How results are classified (default [`DefaultClassifier`]).
    pub fn classifier<C2>(self, classifier: C2) -> RetryBuilder<C2, D> {
        self.with(|_, oom| (classifier, oom))
    }

    /// Retries an out-of-memory failure once with a smaller request (half the tokens, steps,
    /// batch and resolution, through [`Degrade`](crate::Degrade)), and says so in the
    /// answer's provenance (default: out-of-memory is not retried). Requests must implement
    /// `Degrade`.
    pub fn oom_retry(self) -> RetryBuilder<C, ShrinkOnOom> {
        self.oom_retry_with(ShrinkOnOom::default().scale)
    }

    /// Like [`oom_retry`](Self::oom_retry), shrinking the request by `scale`.
    pub fn oom_retry_with(self, scale: Scale) -> RetryBuilder<C, ShrinkOnOom> {
        self.with(|classifier, _| (classifier, ShrinkOnOom { scale }))
    }

    /// The same settings with the classifier and out-of-memory policy `f` makes of the old.
    fn with<C2, D2>(self, f: impl FnOnce(C, D) -> (C2, D2)) -> RetryBuilder<C2, D2> {
        let RetryBuilder {
            max_attempts,
            backoff,
            deadline,
            max_retry_after,
            budget,
            classifier,
            oom,
            emitter,
        } = self;
        let (classifier, oom) = f(classifier, oom);
        RetryBuilder {
            max_attempts,
            backoff,
            deadline,
            max_retry_after,
            budget,
            classifier,
            oom,
            emitter,
        }
    }

    fn shared(self) -> Arc<Shared<C, D>> {
        Arc::new(Shared {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            deadline: self.deadline,
            max_retry_after: self.max_retry_after,
            budget: self.budget,
            classifier: self.classifier,
            oom: self.oom,
            emitter: self.emitter,
        })
    }

    /// Builds the layer.
    pub fn build(self) -> RetryLayer<C, D> {
        RetryLayer {
            shared: self.shared(),
        }
    }

    /// Builds the same decisions as a [`tower::retry::Policy`], for tower's own `Retry`.
    pub fn build_policy(self) -> RetryPolicy<C, D> {
        RetryPolicy::new(self.shared())
    }
}
