//! The fallback layer's response future and the walk down the chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::ServiceExt;

use super::cache::{BoxFuture, CacheWrite};
use super::layer::Shared;
use super::service::Local;
use super::tier::TierKind;
use crate::classify::{Classify, Outcome};
use crate::error::{ErrorKind, InferenceError, TierFailure};
use crate::event::Event;
use crate::provenance::{Annotate, PRIMARY_TIER, Quality};
use crate::tally::{self, Counted};

pin_project! {
    /// The response future of [`Fallback`](super::Fallback).
    ///
    /// While the wrapped service answers, it is that service's future and a little
    /// bookkeeping; only a failure moves it onto a boxed walk down the chain.
    pub struct ResponseFuture<F, Req, Res, E, C> {
        #[pin]
        state: State<F, Res, E>,
        local: Arc<Local<Req, Res, E, C>>,
        req: Option<Req>,
        cache_key: Option<String>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res, E> {
        Primary { #[pin] fut: Counted<F> },
        Walking { fut: BoxFuture<Result<Res, E>> },
    }
}

impl<F, Req, Res, E, C> ResponseFuture<F, Req, Res, E, C> {
    pub(crate) fn primary(
        fut: F,
        local: Arc<Local<Req, Res, E, C>>,
        req: Option<Req>,
        cache_key: Option<String>,
    ) -> Self {
        ResponseFuture {
            state: State::Primary {
                fut: Counted::new(fut),
            },
            local,
            req,
            cache_key,
        }
    }
}

impl<F, Req, Res, E, C> ResponseFuture<F, Req, Res, E, C>
where
    Req: Clone + Send + 'static,
    Res: Annotate + Send + 'static,
    E: From<InferenceError> + Send + 'static,
    C: Classify<Res, E> + Send + Sync + 'static,
{
    /// A call whose primary already failed (its `poll_ready` did): walk the chain at once.
    pub(crate) fn after_primary(
        local: Arc<Local<Req, Res, E, C>>,
        req: Req,
        primary: Result<Res, E>,
    ) -> Self {
        let walk = match after(&local.shared, primary, None) {
            Next::Return(result) => Box::pin(std::future::ready(result)) as BoxFuture<_>,
            Next::Walk(walked) => Box::pin(walk(local.clone(), req, walked)),
        };
        ResponseFuture {
            state: State::Walking { fut: walk },
            local,
            req: None,
            cache_key: None,
        }
    }
}

impl<F, Req, Res, E, C> std::fmt::Debug for ResponseFuture<F, Req, Res, E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Primary { .. } => "Primary",
            State::Walking { .. } => "Walking",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

/// What follows the primary's result.
enum Next<Res, E> {
    Return(Result<Res, E>),
    /// Walk the chain.
    Walk(Walked),
}

/// The chain walked so far.
struct Walked {
    /// The tiers that failed, in order.
    failures: Vec<TierFailure>,
    /// For a caller's fault, its kind: only tiers that accept it are tried.
    caller: Option<ErrorKind>,
    /// Backend calls made by the failed tiers.
    calls: u32,
}

/// Classifies the primary's result; `reported` is the backend calls reported while it ran,
/// `None` when it was never called.
fn after<Req, Res, E, C>(
    shared: &Shared<Req, Res, E, C>,
    result: Result<Res, E>,
    reported: Option<u32>,
) -> Next<Res, E>
where
    C: Classify<Res, E>,
{
    let kind = match shared.classifier.classify(result.as_ref()) {
        Outcome::Success => return Next::Return(result),
        Outcome::Failure { kind, .. } => kind,
    };
    let caller = kind.is_caller_fault().then_some(kind);
    if shared.tiers.is_empty() || caller.is_some_and(|k| !accepted_later(shared, 0, k)) {
        return Next::Return(result);
    }
    shared.emitter.emit(&Event::TierFailed {
        tier: &shared.primary,
        kind,
    });
    Next::Walk(Walked {
        failures: vec![TierFailure::new(shared.primary.clone(), kind)],
        caller,
        calls: reported.map_or(0, |n| tally::failed_calls(n, kind)),
    })
}

/// Whether a tier at `from` or after takes requests refused with `kind`.
fn accepted_later<Req, Res, E, C>(
    shared: &Shared<Req, Res, E, C>,
    from: usize,
    kind: ErrorKind,
) -> bool {
    shared.tiers[from..]
        .iter()
        .any(|t| t.accepts.contains(&kind))
}

impl<F, Req, Res, E, C> Future for ResponseFuture<F, Req, Res, E, C>
where
    F: Future<Output = Result<Res, E>>,
    Req: Clone + Send + 'static,
    Res: Annotate + Send + 'static,
    E: From<InferenceError> + Send + 'static,
    C: Classify<Res, E> + Send + Sync + 'static,
{
    type Output = Result<Res, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { mut fut } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let reported = fut.reported();
                    let shared = &this.local.shared;
                    let walked = match after(shared, result, Some(reported)) {
                        Next::Return(mut result) => {
                            if let Ok(res) = &mut result {
                                served_primary(shared, res, this.cache_key.take());
                            }
                            return Poll::Ready(result);
                        }
                        Next::Walk(walked) => walked,
                    };
                    // A request is kept whenever a tier follows, and `after` walks only then.
                    let Some(req) = this.req.take() else {
                        return Poll::Ready(Err(exhausted(walked.failures)));
                    };
                    let walk = walk(this.local.clone(), req, walked);
                    this.state.set(State::Walking {
                        fut: Box::pin(walk),
                    });
                }
                StateProj::Walking { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

fn exhausted<E: From<InferenceError>>(tiers: Vec<TierFailure>) -> E {
    InferenceError::Exhausted { tiers }.into()
}

/// The primary answered: say so if it has a name of its own, and cache the answer.
fn served_primary<Req, Res: Annotate, E, C>(
    shared: &Shared<Req, Res, E, C>,
    res: &mut Res,
    key: Option<String>,
) {
    if shared.primary != PRIMARY_TIER {
        res.provenance_mut()
            .set_tier(shared.primary.clone(), Quality::Full)
            .set_fallback(false);
    }
    shared.emitter.emit(&Event::TierServed {
        tier: &shared.primary,
        quality: &Quality::Full,
        fallback: false,
    });
    if let Some(key) = key {
        store(shared, key, res);
    }
}

/// Stores a last-good answer; a write never delays or fails the response.
fn store<Req, Res, E, C>(shared: &Shared<Req, Res, E, C>, key: String, res: &Res) {
    let Some(cache) = &shared.cache else { return };
    // Storing takes time of its own: layers around this one read the clock afresh.
    crate::clock::moved_on();
    if !cache.guard.allows() {
        return;
    }
    match (cache.write)(key, res) {
        CacheWrite::Done(Ok(())) => cache.guard.succeeded(),
        CacheWrite::Done(Err(err)) => {
            cache.guard.failed();
            cache_failed(shared, &cache.name, "write", &err);
        }
        CacheWrite::Pending(write) => {
            let emitter = shared.emitter.clone();
            let name = cache.name.clone();
            let guard = cache.guard.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(err) = guard.run(write).await {
                            tracing::warn!(target: "tower_inference", error = %err, "fallback cache write failed");
                            emitter.emit(&Event::CacheFailed { tier: &name, operation: "write" });
                        }
                    });
                }
                Err(_) => emitter.emit(&Event::CacheFailed {
                    tier: &name,
                    operation: "write",
                }),
            }
        }
    }
}

fn cache_failed<Req, Res, E, C>(
    shared: &Shared<Req, Res, E, C>,
    tier: &str,
    operation: &'static str,
    err: &dyn std::error::Error,
) {
    tracing::warn!(target: "tower_inference", tier, operation, error = %err, "fallback cache store failed");
    shared.emitter.emit(&Event::CacheFailed { tier, operation });
}

/// Walks the tiers after the primary until one answers.
async fn walk<Req, Res, E, C>(
    local: Arc<Local<Req, Res, E, C>>,
    req: Req,
    walked: Walked,
) -> Result<Res, E>
where
    Req: Clone + Send + 'static,
    Res: Annotate + Send + 'static,
    E: From<InferenceError> + Send + 'static,
    C: Classify<Res, E> + Send + Sync + 'static,
{
    let shared = &local.shared;
    let Walked {
        mut failures,
        mut caller,
        mut calls,
    } = walked;
    let caller_refused = caller.is_some();
    for (index, tier) in shared.tiers.iter().enumerate() {
        // Whatever finished before this tier is no longer the moment the answer comes back.
        crate::clock::moved_on();
        if let Some(kind) = caller {
            if !tier.accepts.contains(&kind) {
                continue;
            }
            caller = None;
        }
        let mut res = match &tier.kind {
            TierKind::Service(svc) => {
                let mut counted = std::pin::pin!(Counted::new(svc.clone().oneshot(req.clone())));
                let result = counted.as_mut().await;
                let reported = counted.reported();
                match shared.classifier.classify(result.as_ref()) {
                    Outcome::Success => match result {
                        Ok(res) => {
                            let own = res.provenance().map_or(1, |p| p.attempts);
                            calls = calls.saturating_add(own);
                            res
                        }
                        Err(err) => return Err(err),
                    },
                    Outcome::Failure { kind, .. } => {
                        // Only the primary speaks for the caller: a fallback tier's own limit
                        // (a smaller context, say) moves on down the chain like any failure.
                        // When the primary refused the request as the caller's fault, a tier
                        // that accepted it and refused it too confirms that.
                        if kind.is_caller_fault() && caller_refused {
                            if !accepted_later(shared, index + 1, kind) {
                                return result;
                            }
                            caller = Some(kind);
                        }
                        shared.emitter.emit(&Event::TierFailed {
                            tier: &tier.name,
                            kind,
                        });
                        calls = calls.saturating_add(tally::failed_calls(reported, kind));
                        failures.push(TierFailure::new(tier.name.clone(), kind));
                        continue;
                    }
                }
            }
            TierKind::Cache => match serve_cached(shared, &req).await {
                Ok(res) => res,
                Err(kind) => {
                    shared.emitter.emit(&Event::TierFailed {
                        tier: &tier.name,
                        kind,
                    });
                    failures.push(TierFailure::new(tier.name.clone(), kind));
                    continue;
                }
            },
            TierKind::Static(answer) => answer(&req),
        };
        res.provenance_mut()
            .set_tier(tier.name.clone(), tier.quality.clone())
            .set_fallback(true)
            .set_attempts(calls)
            .set_failed_tiers(failures);
        shared.emitter.emit(&Event::TierServed {
            tier: &tier.name,
            quality: &tier.quality,
            fallback: true,
        });
        if tier.cacheable
            && let Some(cache) = &shared.cache
        {
            store(shared, (cache.key)(&req), &res);
        }
        return Ok(res);
    }
    Err(exhausted(failures))
}

/// The cached answer for `req`, with its age; a miss is [`ErrorKind::Exhausted`] (nothing to
/// serve), a store failure [`ErrorKind::Infrastructure`].
fn serve_cached<'a, Req, Res, E, C>(
    shared: &'a Shared<Req, Res, E, C>,
    req: &Req,
) -> impl Future<Output = Result<Res, ErrorKind>> + Send + 'a
where
    Res: Annotate + Send + 'static,
    Req: 'static,
    C: Send + Sync,
    E: Send,
{
    let read = shared.cache.as_ref().map(|cache| {
        (
            cache,
            cache
                .guard
                .allows()
                .then(|| (cache.read)(&(cache.key)(req))),
        )
    });
    async move {
        let Some((cache, read)) = read else {
            return Err(ErrorKind::Exhausted);
        };
        // A store failing of late is not asked: the tier fails at once.
        let Some(read) = read else {
            return Err(ErrorKind::Infrastructure);
        };
        match cache.guard.run(read).await {
            Ok(Some(hit)) => {
                let mut res = hit.value;
                res.provenance_mut().set_cache_age(hit.age);
                Ok(res)
            }
            Ok(None) => Err(ErrorKind::Exhausted),
            Err(err) => {
                cache_failed(shared, &cache.name, "read", &err);
                Err(ErrorKind::Infrastructure)
            }
        }
    }
}
