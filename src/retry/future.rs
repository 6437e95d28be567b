//! The retry layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::policy::{Attempts, Decision, OomRetry};
use super::service::Local;
use crate::classify::Classify;
use crate::error::InferenceError;
use crate::provenance::Annotate;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, Req, C, D>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, S::Future>,
        // What retries need; `None` when a single attempt was allowed.
        retry: Option<RetryState<S, Req, C, D>>,
    }
}

struct RetryState<S, Req, C, D> {
    req: Req,
    local: Arc<Local<S, C, D>>,
    attempts: Attempts,
    /// With a deadline: the timer that ends the call, attempt in flight included.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S, Req, C, D> Drop for RetryState<S, Req, C, D> {
    /// A request cancelled while waiting to retry gives its withdrawal back to the budget.
    fn drop(&mut self) {
        if let Some(period) = self.attempts.take_withdrawal()
            && let Some(budget) = &self.local.shared.budget
        {
            budget.refund(period);
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        // An attempt is running.
        Calling { #[pin] fut: F },
        // Waiting out the delay before the next attempt (boxed: it is the rare path, and
        // keeping the timer out of line keeps the future small on the common one).
        Waiting { sleep: Pin<Box<Sleep>> },
        // Waiting for a fresh clone of the service to be ready for the next attempt.
        Readying { svc: S },
    }
}

impl<S: Service<Req>, Req, C, D> ResponseFuture<S, Req, C, D> {
    #[inline(always)]
    pub(crate) fn new(
        fut: S::Future,
        req: Req,
        local: Arc<Local<S, C, D>>,
        attempts: Attempts,
    ) -> Self {
        let deadline = match (local.shared.deadline, attempts.started()) {
            // `sleep` copes with a deadline too far to reach.
            (Some(limit), Some(started)) => Some(Box::pin(tokio::time::sleep(
                limit.saturating_sub(started.elapsed()),
            ))),
            _ => None,
        };
        ResponseFuture {
            state: State::Calling { fut },
            retry: Some(RetryState {
                req,
                local,
                attempts,
                deadline,
            }),
        }
    }

    pub(crate) fn once(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            retry: None,
        }
    }
}

impl<S: Service<Req>, Req, C, D> std::fmt::Debug for ResponseFuture<S, Req, C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "Calling",
            State::Waiting { .. } => "Waiting",
            State::Readying { .. } => "Readying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.retry.as_ref().map(|r| r.attempts))
            .finish()
    }
}

impl<S, Req, C, D> Future for ResponseFuture<S, Req, C, D>
where
    S: Service<Req> + Clone,
    S::Response: Annotate,
    Req: Clone,
    S::Error: From<InferenceError>,
    C: Classify<S::Response, S::Error>,
    D: OomRetry<Req>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = self.as_mut().poll_attempts(cx) {
            return Poll::Ready(out);
        }
        let this = self.project();
        if let Some(retry) = this.retry.as_mut()
            && let Some(deadline) = retry.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The deadline bounds the whole call: the attempt in flight is dropped.
            crate::tally::report(retry.attempts.made());
            let after = retry.local.shared.deadline.unwrap_or_default();
            return Poll::Ready(Err(InferenceError::timeout(after).into()));
        }
        Poll::Pending
    }
}

impl<S, Req, C, D> ResponseFuture<S, Req, C, D>
where
    S: Service<Req> + Clone,
    S::Response: Annotate,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    D: OomRetry<Req>,
{
    /// Drives the attempts, their delays and readiness.
    #[inline(always)]
    fn poll_attempts(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, S::Error>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let mut result = ready!(fut.poll(cx));
                    let Some(retry) = this.retry.as_mut() else {
                        return Poll::Ready(result);
                    };
                    let shared = &retry.local.shared;
                    match shared.decide(&mut retry.attempts, &mut retry.req, &mut result) {
                        Decision::Done => return Poll::Ready(result),
                        Decision::RetryAfter(delay) if delay.is_zero() => {
                            let svc = retry.local.retry_service();
                            this.state.set(State::Readying { svc })
                        }
                        Decision::RetryAfter(delay) => this.state.set(State::Waiting {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(retry) = this.retry.as_ref() else {
                        unreachable!("only a retrying future waits to retry");
                    };
                    let svc = retry.local.retry_service();
                    this.state.set(State::Readying { svc });
                }
                StateProj::Readying { svc } => {
                    let Some(retry) = this.retry.as_mut() else {
                        unreachable!("only a retrying future waits for readiness");
                    };
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        // The next attempt never started: only the earlier ones count.
                        crate::tally::report(retry.attempts.made() - 1);
                        return Poll::Ready(Err(e));
                    }
                    retry.attempts.take_withdrawal();
                    // An earlier attempt's end is not this one's.
                    crate::clock::moved_on();
                    let fut = svc.call(retry.req.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}
