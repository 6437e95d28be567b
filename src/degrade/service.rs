//! [`Degrade`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{InFlight, ResponseFuture};
use super::layer::Shared;
use crate::params;
use crate::provenance::Annotate;

/// What a degrade layer's response futures share; one per service clone, on cache lines of
/// its own, so futures of clones on different threads never contend on a reference count.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Local {
    pub(crate) shared: Arc<Shared>,
}

/// A service whose requests are scaled down as load rises; made by
/// [`DegradeLayer`](super::DegradeLayer).
#[derive(Debug)]
pub struct Degrade<S> {
    inner: S,
    local: Arc<Local>,
}

impl<S> Degrade<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Degrade {
            inner,
            local: Arc::new(Local { shared }),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Degrade<S> {
    fn clone(&self) -> Self {
        Degrade::new(self.inner.clone(), self.local.shared.clone())
    }
}

impl<S, Req> Service<Req> for Degrade<S>
where
    S: Service<Req>,
    S::Response: Annotate,
    Req: params::Degrade,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let shared = &self.local.shared;
        let (stripe, in_flight) = shared.signals.enter();
        let guard = InFlight::new(self.local.clone(), stripe);
        let level = shared.level(in_flight);
        let level_spec = &shared.levels.levels[level];
        if level > 0 {
            req.degrade(level_spec.scale);
        }
        let started = shared.signals.timed().then(Instant::now);
        ResponseFuture::new(self.inner.call(req), guard, level, started)
    }
}
