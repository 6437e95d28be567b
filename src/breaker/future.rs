//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::service::Local;
use super::state::{Admission, ProbePermit, Shared};
use super::window::Sample;
use crate::classify::{Classify, Outcome};
use crate::error::InferenceError;
use crate::stream::{StreamEnd, Watch};

/// How a completed call is to be recorded.
#[derive(Debug)]
enum Ticket {
    Closed { epoch: u64 },
    Probe(ProbePermit),
}

impl Ticket {
    fn settle(self, shared: &Shared, sample: Option<Sample>, now: Option<Instant>) {
        match self {
            Ticket::Closed { epoch } => shared.record_closed(epoch, sample, now),
            Ticket::Probe(permit) => permit.complete(sample),
        }
    }
}

/// A started stream's ticket, settled when the stream ends.
struct StreamTicket {
    shared: Arc<Shared>,
    ticket: Ticket,
    /// Whether the first chunk was slow (a stream's slow call).
    slow: bool,
}

impl Watch for StreamTicket {
    fn end(self: Box<Self>, end: StreamEnd) {
        let failure = match end {
            StreamEnd::Finished { .. } => false,
            StreamEnd::Failed { kind, .. } if !self.shared.config.ignores(kind) => true,
            // An ignored kind decides nothing; a caller that hung up neither (a probe's
            // slot is freed as its permit drops).
            StreamEnd::Failed { .. } | StreamEnd::Cancelled { .. } => return,
        };
        let sample = Some(Sample {
            failure,
            slow: self.slow,
        });
        let now = self.shared.needs_clock().then(Instant::now);
        self.ticket.settle(&self.shared, sample, now);
    }
}

pin_project! {
    /// The response future of [`Breaker`](super::Breaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        // Admitted: the outcome is recorded when the call completes.
        Called {
            #[pin]
            fut: F,
            local: Arc<Local<C>>,
            ticket: Option<Ticket>,
            started: Option<Instant>,
        },
        // Disabled breaker: the call is not recorded.
        Passed {
            #[pin]
            fut: F,
        },
        // Refused without calling the inner service; the error is made when polled.
        Rejected {
            retry_in: Duration,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    /// Starts a call as `admission` says: refused, passed unrecorded, or called and recorded.
    /// `call` runs only when the inner service is to be called.
    #[inline(always)]
    pub(crate) fn start(
        admission: Admission,
        local: &Arc<Local<C>>,
        call: impl FnOnce() -> F,
    ) -> Self {
        let shared = &local.shared;
        let ticket = match admission {
            Admission::Reject { retry_in } => {
                shared.report_rejection(retry_in);
                return ResponseFuture::rejected(retry_in);
            }
            Admission::Pass => return ResponseFuture::passed(call()),
            Admission::Closed { epoch } => Ticket::Closed { epoch },
            Admission::Probe(permit) => Ticket::Probe(permit),
        };
        let timed = shared.needs_clock();
        ResponseFuture::called(
            {
                if timed {
                    crate::clock::calling();
                }
                call()
            },
            local.clone(),
            ticket,
            timed.then(crate::clock::called),
        )
    }

    fn called(fut: F, local: Arc<Local<C>>, ticket: Ticket, started: Option<Instant>) -> Self {
        ResponseFuture {
            state: State::Called {
                fut,
                local,
                ticket: Some(ticket),
                started,
            },
        }
    }

    fn passed(fut: F) -> Self {
        ResponseFuture {
            state: State::Passed { fut },
        }
    }

    fn rejected(retry_in: Duration) -> Self {
        ResponseFuture {
            state: State::Rejected { retry_in },
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "Called",
            State::Passed { .. } => "Passed",
            State::Rejected { .. } => "Rejected",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    T: 'static,
    E: From<InferenceError>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                fut,
                local,
                ticket,
                started,
            } => {
                if started.is_some() {
                    crate::clock::polling();
                }
                let mut result = ready!(fut.poll(cx));
                let now = started.map(|_| crate::clock::polled());
                if let Some(ticket) = ticket.take() {
                    let shared = &local.shared;
                    let slow = match (started, now, shared.config.slow_call_duration) {
                        (Some(start), Some(now), Some(limit)) => {
                            now.saturating_duration_since(*start) > limit
                        }
                        _ => false,
                    };
                    let outcome = local.classifier.classify(result.as_ref());
                    // A stream that started is counted when it ends.
                    if outcome.is_success()
                        && let Ok(res) = &mut result
                        && let Some(stream) = crate::stream::as_stream(res)
                    {
                        stream.watch(Box::new(StreamTicket {
                            shared: shared.clone(),
                            ticket,
                            slow,
                        }));
                        return Poll::Ready(result);
                    }
                    let sample = match outcome {
                        Outcome::Success => Some(Sample {
                            failure: false,
                            slow,
                        }),
                        Outcome::Failure { kind, .. } if shared.config.ignores(kind) => None,
                        Outcome::Failure { .. } => Some(Sample {
                            failure: true,
                            slow,
                        }),
                    };
                    ticket.settle(shared, sample, now);
                }
                Poll::Ready(result)
            }
            StateProj::Passed { fut } => fut.poll(cx),
            StateProj::Rejected { retry_in } => Poll::Ready(Err(InferenceError::CircuitOpen {
                retry_in: *retry_in,
            }
            .into())),
        }
    }
}
