//! The degrade layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::service::Local;
use crate::provenance::Annotate;

/// The warning a degraded answer carries.
pub const DEGRADED_WARNING: &str =
    "Service is running in reduced quality mode due to high system load";

/// Counts a call in flight until its future completes or is dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    local: Arc<Local>,
}

impl InFlight {
    pub(crate) fn new(local: Arc<Local>) -> Self {
        InFlight { local }
    }

    pub(crate) fn local(&self) -> &Local {
        &self.local
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.local.shared.signals.leave();
    }
}

pin_project! {
    /// The response future of [`Degrade`](super::Degrade).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        guard: InFlight,
        level: usize,
        started: Option<Instant>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(fut: F, guard: InFlight, level: usize, started: Option<Instant>) -> Self {
        ResponseFuture {
            fut,
            guard,
            level,
            started,
        }
    }
}

impl<F, T: Annotate, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let shared = &this.guard.local.shared;
        if this.started.is_some() {
            crate::clock::polling();
        }
        let mut result = ready!(this.fut.poll(cx));
        if let Some(started) = this.started.take() {
            let now = crate::clock::polled();
            shared
                .signals
                .record_latency(now.saturating_duration_since(started));
        }
        if let Ok(res) = &mut result {
            let provenance = res.provenance_mut();
            provenance.set_degraded(shared.levels.levels[*this.level].name.clone());
            if *this.level > 0 {
                provenance.warn(DEGRADED_WARNING);
            }
        }
        Poll::Ready(result)
    }
}
