//! [`Degrade`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::{InFlight, ResponseFuture};
use super::layer::Shared;
use crate::params;
use crate::provenance::Annotate;
use crate::stripe::{Homed, PerThread};

/// What a degrade layer's response futures share.
#[derive(Debug, Clone)]
pub(crate) struct Shares {
    pub(crate) shared: Arc<Shared>,
}

/// [`Shares`] on its own cache lines, as response futures hold it.
pub(crate) type Local = Homed<Shares>;

/// A service whose requests are scaled down as load rises; made by
/// [`DegradeLayer`](super::DegradeLayer).
#[derive(Debug)]
pub struct Degrade<S> {
    inner: S,
    local: PerThread<Shares>,
}

impl<S> Degrade<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Degrade {
            inner,
            local: PerThread::new(Shares { shared }),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Degrade<S> {
    fn clone(&self) -> Self {
        Degrade {
            inner: self.inner.clone(),
            local: self.local.clone(),
        }
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
        let local = self.local.here().clone();
        let in_flight = local.shared.signals.enter();
        // Leaves the in-flight count whatever happens next, a panic included.
        let guard = InFlight::new(local);
        let shared = &guard.local().shared;
        let level = shared.level(in_flight);
        let level_spec = &shared.levels.levels[level];
        if level > 0 {
            req.degrade(level_spec.scale);
        }
        let timed = shared.signals.timed();
        ResponseFuture::new(
            {
                if timed {
                    crate::clock::calling();
                }
                self.inner.call(req)
            },
            guard,
            level,
            timed.then(crate::clock::called),
        )
    }
}
