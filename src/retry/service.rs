//! [`Retry`], the service.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::policy::{OomRetry, Shared};
use crate::classify::Classify;
use crate::error::InferenceError;
use crate::provenance::Annotate;
use crate::stripe::{Homed, PerThread};

/// What a retry layer's response futures share.
pub(crate) struct Shares<S, C, D> {
    pub(crate) shared: Arc<Shared<C, D>>,
    /// The service retries call: a clone of the wrapped one, cloned again for each retry.
    /// The first attempt calls the service the caller made ready, so a call answered at the
    /// first attempt clones no service (tower's `Retry` clones one per call).
    retries: Arc<Mutex<S>>,
}

impl<S, C, D> Shares<S, C, D> {
    /// A fresh clone of the wrapped service, for a retry (to be made ready before its call).
    pub(crate) fn retry_service(&self) -> S
    where
        S: Clone,
    {
        self.retries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl<S, C, D> Clone for Shares<S, C, D> {
    fn clone(&self) -> Self {
        Shares {
            shared: self.shared.clone(),
            retries: self.retries.clone(),
        }
    }
}

impl<S, C, D> std::fmt::Debug for Shares<S, C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shares")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// [`Shares`] on its own cache lines, as response futures hold it.
pub(crate) type Local<S, C, D> = Homed<Shares<S, C, D>>;

/// A service whose failed calls are retried; made by [`RetryLayer`](super::RetryLayer).
///
/// The first attempt calls this service's wrapped service (the one made ready); each retry
/// calls a fresh clone of the service as it was wrapped, made ready first.
#[derive(Debug)]
pub struct Retry<S, C, D> {
    inner: S,
    local: PerThread<Shares<S, C, D>>,
}

impl<S: Clone, C, D> Retry<S, C, D> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, D>>) -> Self {
        Retry {
            local: PerThread::new(Shares {
                shared,
                retries: Arc::new(Mutex::new(inner.clone())),
            }),
            inner,
        }
    }
}

impl<S, C, D> Retry<S, C, D> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably. Retries call clones of the service as it was wrapped, so
    /// a change made here reaches first attempts only.
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

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.local.shared;
        let attempts = shared.begin();
        if !shared.may_retry(&attempts) {
            return ResponseFuture::once(self.inner.call(req));
        }
        let retry_req = req.clone();
        // Built in place, so the inner future is not moved once more.
        ResponseFuture::new(
            self.inner.call(req),
            retry_req,
            self.local.here().clone(),
            attempts,
        )
    }
}
