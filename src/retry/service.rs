//! [`Retry`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::policy::{OomRetry, Shared};
use crate::classify::Classify;
use crate::error::InferenceError;
use crate::provenance::Annotate;
use crate::stripe::{Homed, PerThread};

/// What a retry layer's response futures share.
#[derive(Debug)]
pub(crate) struct Shares<C, D> {
    pub(crate) shared: Arc<Shared<C, D>>,
}

impl<C, D> Clone for Shares<C, D> {
    fn clone(&self) -> Self {
        Shares {
            shared: self.shared.clone(),
        }
    }
}

/// [`Shares`] on its own cache lines, as response futures hold it.
pub(crate) type Local<C, D> = Homed<Shares<C, D>>;

/// A service whose failed calls are retried; made by [`RetryLayer`](super::RetryLayer).
#[derive(Debug)]
pub struct Retry<S, C, D> {
    inner: S,
    local: PerThread<Shares<C, D>>,
}

impl<S, C, D> Retry<S, C, D> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, D>>) -> Self {
        Retry {
            inner,
            local: PerThread::new(Shares { shared }),
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

impl<S: Clone, C, D> Clone for Retry<S, C, D> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            local: self.local.clone(),
        }
    }
}

impl<S, C, D, Req> Service<Req> for Retry<S, C, D>
where
    S: Service<Req> + Clone,
    S::Response: Annotate,
    S::Error: From<InferenceError>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    D: OomRetry<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, D>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.local.shared;
        let attempts = shared.begin();
        if !shared.may_retry(&attempts) {
            return ResponseFuture::once(self.inner.call(req));
        }
        // The ready service goes with the future (its retries call it again); this service
        // keeps a fresh clone, to be made ready before its next call.
        let fresh = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, fresh);
        let retry_req = req.clone();
        let fut = svc.call(req);
        ResponseFuture::new(fut, svc, retry_req, self.local.here().clone(), attempts)
    }
}
