//! [`StreamTimeoutLayer`] and [`StreamTimeout`]: the first-token and stall timeouts.

use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::token::TokenStream;
use crate::error::InferenceError;

/// Waits for a stream's first chunk under a time-to-first-token timeout, and gives the stream
/// an inter-chunk stall timeout; both fail with [`InferenceError::Timeout`] naming the phase.
///
/// Put it right above the streaming model (below the breaker and retry): its response future
/// resolves once the first chunk is here, so the layers above it retry or fall back on
/// anything that fails before the first token, and never after.
///
/// Without a first-token timeout it still pulls the first chunk, so a source that answers at
/// its response headers behaves like one that answers at its first token.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_inference::stream::{StreamTimeoutLayer, TokenStream};
/// use tower_inference::{InferenceError, TimeoutPhase};
///
/// // A model whose first token would take ten seconds.
/// let slow = service_fn(|_: &'static str| async {
///     tokio::time::sleep(Duration::from_secs(10)).await;
///     Ok::<_, InferenceError>(TokenStream::from_text("late"))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(StreamTimeoutLayer::new().first_token(Duration::from_secs(2)).stall(Duration::from_secs(1)))
///     .service(slow);
/// let err = svc.oneshot("hi").await.unwrap_err();
/// assert!(matches!(err, InferenceError::Timeout { phase: TimeoutPhase::FirstToken, .. }));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTimeoutLayer {
    first_token: Option<Duration>,
    stall: Option<Duration>,
}

impl StreamTimeoutLayer {
    /// No timeouts yet: the layer only waits for the first chunk.
    pub const fn new() -> Self {
        StreamTimeoutLayer {
            first_token: None,
            stall: None,
        }
    }

    /// The longest wait from the call to the first chunk (default: none). Past it the call
    /// fails with a [`TimeoutPhase::FirstToken`](crate::TimeoutPhase::FirstToken) timeout,
    /// which retry and fallback act on.
    pub const fn first_token(mut self, after: Duration) -> Self {
        self.first_token = Some(after);
        self
    }

    /// The longest wait for each next chunk once the stream started (default: none). Past
    /// it the stream ends with a [`TimeoutPhase::Stall`](crate::TimeoutPhase::Stall)
    /// timeout as its last item.
    pub const fn stall(mut self, after: Duration) -> Self {
        self.stall = Some(after);
        self
    }
}

impl<S> Layer<S> for StreamTimeoutLayer {
    type Service = StreamTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamTimeout {
            inner,
            config: *self,
        }
    }
}

/// The service a [`StreamTimeoutLayer`] makes.
#[derive(Debug, Clone)]
pub struct StreamTimeout<S> {
    inner: S,
    config: StreamTimeoutLayer,
}

impl<S> StreamTimeout<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for StreamTimeout<S>
where
    S: Service<Req, Response = TokenStream>,
    S::Error: From<InferenceError>,
{
    type Response = TokenStream;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(
            self.inner.call(req),
            self.config.first_token,
            self.config.stall,
        )
    }
}
