//! [`Breaker`], the service.

use std::sync::Arc;

use crate::stripe::{Homed, PerThread};
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::state::{Admission, Shared};
use crate::classify::Classify;
use crate::error::InferenceError;

/// What a breaker's response futures need when a call completes.
#[derive(Debug, Clone)]
pub(crate) struct Shares<C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classifier: C,
}

/// [`Shares`] on its own cache lines, as response futures hold it.
pub(crate) type Local<C> = Homed<Shares<C>>;

/// A service wrapped in a circuit breaker; made by [`BreakerLayer`](super::BreakerLayer).
///
/// Clones are cheap (no allocation) and calls on different threads never touch a shared
/// reference count (see `PerThread`).
#[derive(Debug)]
pub struct Breaker<S, C> {
    inner: S,
    local: PerThread<Shares<C>>,
    admission: Option<Admission>,
}

impl<S, C> Breaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Breaker {
            inner,
            local: PerThread::new(Shares { shared, classifier }),
            admission: None,
        }
    }

    /// The handle to this breaker.
    pub fn handle(&self) -> super::BreakerHandle {
        super::BreakerHandle {
            shared: self.local.shared.clone(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for Breaker<S, C> {
    fn clone(&self) -> Self {
        Breaker {
            inner: self.inner.clone(),
            local: self.local.clone(),
            admission: None,
        }
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    S: Service<Req>,
    S::Response: 'static,
    S::Error: From<InferenceError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.admission, None | Some(Admission::Reject { .. })) {
            self.admission = Some(self.local.shared.admit());
        }
        match self.admission {
            // The call will be refused without touching the inner service.
            Some(Admission::Reject { .. }) => Poll::Ready(Ok(())),
            _ => self.inner.poll_ready(cx),
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.local.shared;
        let admission = match self.admission.take() {
            Some(admission) if shared.still_admits(&admission) => admission,
            _ => shared.admit(),
        };
        let inner = &mut self.inner;
        ResponseFuture::start(admission, self.local.here(), || inner.call(req))
    }
}
