//! The response future of [`StreamTimeout`](super::StreamTimeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::token::TokenStream;
use crate::error::{InferenceError, TimeoutPhase};

pin_project! {
    /// Resolves once the stream's first chunk is here, or fails when it does not come in time.
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        // The stream, once the inner future answered, while its first chunk is awaited.
        stream: Option<TokenStream>,
        deadline: Option<(Duration, Pin<Box<Sleep>>)>,
        stall: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(fut: F, first_token: Option<Duration>, stall: Option<Duration>) -> Self {
        ResponseFuture {
            fut,
            stream: None,
            deadline: first_token.map(|after| (after, Box::pin(tokio::time::sleep(after)))),
            stall,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("answered", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<TokenStream, E>>,
    E: From<InferenceError>,
{
    type Output = Result<TokenStream, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.stream.is_none() {
            match this.fut.poll(cx) {
                Poll::Ready(Ok(stream)) => *this.stream = Some(stream),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
        }
        if let Some(mut stream) = this.stream.take() {
            match stream.poll_first(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(after) = *this.stall {
                        stream.stall_timeout(after);
                    }
                    return Poll::Ready(Ok(stream));
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                Poll::Pending => *this.stream = Some(stream),
            }
        }
        if let Some((after, sleep)) = this.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            *this.stream = None;
            return Poll::Ready(Err(InferenceError::Timeout {
                after: *after,
                phase: TimeoutPhase::FirstToken,
            }
            .into()));
        }
        Poll::Pending
    }
}
