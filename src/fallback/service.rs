//! [`Fallback`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::classify::{Classify, DefaultClassifier};
use crate::error::InferenceError;
use crate::provenance::Annotate;
use crate::stripe::{Homed, PerThread};

/// What a fallback layer's response futures share.
pub(crate) struct Shares<Req, Res, E, C> {
    pub(crate) shared: Arc<Shared<Req, Res, E, C>>,
}

impl<Req, Res, E, C> Clone for Shares<Req, Res, E, C> {
    fn clone(&self) -> Self {
        Shares {
            shared: self.shared.clone(),
        }
    }
}

/// [`Shares`] on its own cache lines, as response futures hold it.
pub(crate) type Local<Req, Res, E, C> = Homed<Shares<Req, Res, E, C>>;

/// A service whose failures are answered by the next tier; made by
/// [`FallbackLayer`](super::FallbackLayer).
///
/// Its type names the wrapped service and the request, never the response or error types:
/// those are the wrapped service's (`S::Response`, `S::Error`). A type parameter for the
/// error would break `tokio::spawn` of a future that holds this service's call (e.g.
/// `svc.oneshot(req)` in a spawned task) when the error is `tower::BoxError`: the compiler
/// checks such a future's `Send` with every lifetime in its types erased, and an `E` parameter
/// standing for `Box<dyn Error + Send + Sync + 'static>` could then no longer be proved equal
/// to the wrapped service's `'static` error type. Naming the error through `S` keeps the
/// `'static`.
pub struct Fallback<S, Req, C = DefaultClassifier>
where
    S: Service<Req>,
{
    inner: S,
    local: PerThread<Shares<Req, S::Response, S::Error, C>>,
    /// An error the wrapped service reported from `poll_ready`: the next call falls back.
    not_ready: Option<S::Error>,
}

impl<S: Service<Req>, Req, C> Fallback<S, Req, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<Req, S::Response, S::Error, C>>) -> Self {
        Fallback {
            inner,
            local: PerThread::new(Shares { shared }),
            not_ready: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Service<Req> + Clone, Req, C> Clone for Fallback<S, Req, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            local: self.local.clone(),
            not_ready: None,
        }
    }
}

impl<S: Service<Req> + std::fmt::Debug, Req, C> std::fmt::Debug for Fallback<S, Req, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("chain", &self.local.shared)
            .finish()
    }
}

impl<S, Req, C> Service<Req> for Fallback<S, Req, C>
where
    S: Service<Req>,
    Req: Clone + Send + 'static,
    S::Response: Annotate + Send + 'static,
    S::Error: From<InferenceError> + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Req, S::Response, S::Error, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) if !self.local.shared.tiers.is_empty() => {
                self.not_ready = Some(e);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let local = self.local.here().clone();
        let shared = &local.shared;
        if let Some(err) = self.not_ready.take() {
            return ResponseFuture::after_primary(local, req, Err(err));
        }
        let fallback_req = (!shared.tiers.is_empty()).then(|| req.clone());
        let cache_key = match &shared.cache {
            Some(cache) if shared.primary_cacheable => Some((cache.key)(&req)),
            _ => None,
        };
        let fut = self.inner.call(req);
        ResponseFuture::primary(fut, local, fallback_req, cache_key)
    }
}
