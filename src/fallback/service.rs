//! [`Fallback`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::classify::Classify;
use crate::error::InferenceError;
use crate::provenance::Annotate;

/// What a fallback layer's response futures share; one per service clone, on cache lines of
/// its own, so futures of clones on different threads never contend on a reference count.
#[repr(align(128))]
pub(crate) struct Local<Req, Res, E, C> {
    pub(crate) shared: Arc<Shared<Req, Res, E, C>>,
}

/// A service whose failures are answered by the next tier; made by
/// [`FallbackLayer`](super::FallbackLayer).
pub struct Fallback<S, Req, Res, E, C> {
    inner: S,
    local: Arc<Local<Req, Res, E, C>>,
    /// An error the wrapped service reported from `poll_ready`: the next call falls back.
    not_ready: Option<E>,
}

impl<S, Req, Res, E, C> Fallback<S, Req, Res, E, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<Req, Res, E, C>>) -> Self {
        Fallback {
            inner,
            local: Arc::new(Local { shared }),
            not_ready: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, Req, Res, E, C> Clone for Fallback<S, Req, Res, E, C> {
    fn clone(&self) -> Self {
        Fallback::new(self.inner.clone(), self.local.shared.clone())
    }
}

impl<S: std::fmt::Debug, Req, Res, E, C> std::fmt::Debug for Fallback<S, Req, Res, E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("chain", &self.local.shared)
            .finish()
    }
}

impl<S, Req, Res, E, C> Service<Req> for Fallback<S, Req, Res, E, C>
where
    S: Service<Req, Response = Res, Error = E>,
    Req: Clone + Send + 'static,
    Res: Annotate + Send + 'static,
    E: From<InferenceError> + Send + 'static,
    C: Classify<Res, E> + Send + Sync + 'static,
{
    type Response = Res;
    type Error = E;
    type Future = ResponseFuture<S::Future, Req, Res, E, C>;

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
        let shared = &self.local.shared;
        if let Some(err) = self.not_ready.take() {
            return ResponseFuture::after_primary(self.local.clone(), req, Err(err));
        }
        let fallback_req = (!shared.tiers.is_empty()).then(|| req.clone());
        let cache_key = match &shared.cache {
            Some(cache) if shared.primary_cacheable => Some((cache.key)(&req)),
            _ => None,
        };
        let fut = self.inner.call(req);
        ResponseFuture::primary(fut, self.local.clone(), fallback_req, cache_key)
    }
}
